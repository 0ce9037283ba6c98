"""Inference and serving: formulas against hand computations, the vLLM budget, the CLI.

Hand figures come from the cited layouts (vLLM ``awq.py``/``gptq.py``/``fp8.py``
``create_weights``; the KV cache ``2 x layers x kv_heads x head_dim x bytes`` per token) and
from the models' published shapes, never from the code's own output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramcalc import catalog, cli, estimate
from vramcalc.enums import WeightFormat
from vramcalc.formulas.inference import kv_bytes_per_token, weight_format_bytes
from vramcalc.specs import EstimateRequest

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")


# ----------------------------------------------------------------------------- formulas


def test_kv_cache_gqa_by_hand() -> None:
    # Llama-3.1-8B: 32 layers, 8 KV heads (GQA 32q/8kv), head_dim 128, bf16:
    # 2 (K, V) x 32 x 8 x 128 x 2 B = 131,072 B per token (128 KiB)
    assert kv_bytes_per_token(32, 8, 128, 2) == 131_072
    r = estimate(model="llama-3.1-8b", task="infer", dtype="bf16", prompt_len=1000)
    # prefill of 1,000 tokens, one token generated: the cache holds 1,000 tokens; each of the
    # 64 K/V tensors is 8 x 1000 x 128 x 2 = 2,048,000 B (a multiple of 512)
    assert r.peak.phase.value == "prefill"
    assert r.details["activations/kv_cache"] == 64 * 2_048_000 == 1000 * 131_072


def test_kv_cache_fp8_halves_vllm_per_token() -> None:
    base = dict(model="llama-3.1-8b", task="infer", dtype="bf16", engine="vllm", gpu="h100-sxm")
    a = estimate(**base).serving
    b = estimate(**base, kv_dtype="fp8").serving
    assert a is not None and b is not None
    assert a.kv_bytes_per_token == 131_072
    assert b.kv_bytes_per_token == 65_536


def test_awq_gptq_fp8_storage_by_hand() -> None:
    # a 4096 x 4096 linear, 4 bit, group 128: 32 groups along the input
    # AWQ: qweight int32 [4096, 512] = 8,388,608; qzeros int32 [32, 512] = 65,536;
    #      scales fp16 [32, 4096] = 262,144
    assert weight_format_bytes(4096, 4096, WeightFormat.AWQ) == 8_388_608 + 65_536 + 262_144
    # GPTQ: qweight int32 [512, 4096] = 8,388,608; qzeros 65,536; scales 262,144;
    #       g_idx int32 [4096] = 16,384
    assert weight_format_bytes(4096, 4096, WeightFormat.GPTQ) == (
        8_388_608 + 65_536 + 262_144 + 16_384
    )
    # FP8: one byte per weight + two fp32 scalars (weight_scale, input_scale), 512 B blocks
    assert weight_format_bytes(4096, 4096, WeightFormat.FP8) == 16_777_216 + 2 * 512


def test_awq_model_weights_about_a_quarter() -> None:
    bf16 = estimate(model="llama-2-7b", task="infer", dtype="bf16")
    awq = estimate(model="llama-2-7b", task="infer", dtype="bf16", weights="awq")
    # Llama-2-7B: 6.48B linear weights in the blocks -> 4.125 bits each (4 + 16/128 for the
    # fp16 scale + 4/128 zeros ~ 4.16 b); 0.26B embedding + head stay bf16
    lin = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    other = 2 * 32000 * 4096 + 32 * 2 * 4096 + 4096
    expect = lin * (4 + 16 / 128 + 4 / 128) / 8 + other * 2
    got = awq.details["params/awq"] + awq.details["params/16bit"]
    assert abs(got - expect) / expect < 0.002
    assert bf16.details["params/16bit"] == 2 * (lin + other)


def test_generate_decode_dominates_long_generation() -> None:
    short = estimate(model="gpt2", task="infer", dtype="bf16", prompt_len=1000, new_tokens=1)
    long = estimate(model="gpt2", task="infer", dtype="bf16", prompt_len=8, new_tokens=1000)
    assert short.peak.phase.value == "prefill"
    assert long.peak.phase.value == "decode"
    # GPT-2: 12 layers, 12 heads x 64 (MHA), bf16: 36,864 B per token; the last decode step
    # holds 8 + 1000 - 1 = 1007 tokens (24 tensors of 12 x 1007 x 64 x 2 = 1,546,752 B)
    assert long.details["activations/kv_cache"] == 24 * 1_546_752


def test_logits_only_last_position() -> None:
    # generate's logits_to_keep=1: the prefill logits are B x V, not B x P x V
    r = estimate(model="gpt2", task="infer", dtype="fp32", prompt_len=1000, batch_size=4)
    assert r.details.get("activations/logits", 0) < 4 * 50257 * 8 + 4096


# ----------------------------------------------------------------------------- vLLM budget


def test_vllm_budget_arithmetic() -> None:
    r = estimate(
        model="llama-3.1-8b", task="infer", dtype="bf16", engine="vllm", gpu="h100-sxm",
        max_model_len=32768, prompt_len=8192, new_tokens=1024, concurrency=32,
    )  # fmt: skip
    s = r.serving
    assert s is not None
    gpu = catalog.gpu("h100-sxm")
    assert s.budget_bytes == int(0.9 * gpu.memory_bytes)
    # Llama-3.1-8B: 8,030,261,248 parameters in bf16
    assert s.weights_bytes == 2 * 8_030_261_248
    assert s.block_size == 16
    block_bytes = 16 * 131_072
    rest = (
        s.budget_bytes
        - s.weights_bytes
        - s.activation_peak_bytes
        - s.cuda_graph_bytes
        - s.non_torch_bytes
    )
    assert s.kv_blocks == rest // block_bytes
    assert s.kv_cache_bytes == s.kv_blocks * block_bytes
    # H100 (>= 70 GiB, not an A100): vllm serve defaults 8192 tokens / 1024 sequences
    assert (s.max_num_batched_tokens, s.max_num_seqs) == (8192, 1024)
    assert s.request_len == 9216
    assert s.max_concurrency == s.kv_blocks // (9216 // 16)
    assert s.max_model_len_fit == min(s.kv_blocks * 16, 131072)
    assert s.fits


def test_vllm_a100_defaults_and_overflow() -> None:
    r = estimate(model="llama-2-70b", task="infer", dtype="bf16", engine="vllm", gpu="a100-80gb")
    s = r.serving
    assert s is not None
    assert (s.max_num_batched_tokens, s.max_num_seqs) == (2048, 256)
    assert not s.fits and s.kv_blocks == 0 and "exceed" in (s.reason or "")
    tp = estimate(
        model="llama-2-70b", task="infer", dtype="bf16", engine="vllm", gpu="a100-80gb",
        tp=4, gpus=4,
    ).serving  # fmt: skip
    assert tp is not None and tp.fits
    # 80 layers x 8 KV heads / 4 ranks = 2 per rank x 128 x 2 (K, V) x 2 B
    assert tp.kv_bytes_per_token == 2 * 80 * 2 * 128 * 2


@settings(max_examples=25, deadline=None)
@given(
    u1=st.floats(0.5, 0.95),
    du=st.floats(0.0, 0.05),
    l1=st.integers(16, 60_000),
    dl=st.integers(0, 60_000),
)
def test_vllm_monotone(u1: float, du: float, l1: int, dl: int) -> None:
    base = dict(model="qwen2.5-7b", task="infer", dtype="bf16", engine="vllm", gpu="h100-sxm")
    a = estimate(**base, gpu_memory_utilization=u1, prompt_len=l1, new_tokens=1).serving
    b = estimate(**base, gpu_memory_utilization=u1 + du, prompt_len=l1, new_tokens=1).serving
    c = estimate(**base, gpu_memory_utilization=u1, prompt_len=l1 + dl, new_tokens=1).serving
    assert a is not None and b is not None and c is not None
    assert b.kv_blocks >= a.kv_blocks  # higher utilization never lowers the KV blocks
    assert c.max_concurrency <= a.max_concurrency  # longer sequences never fit more of them


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 8),
    db=st.integers(0, 8),
    # gpt2 holds 1024 positions: prompt + new tokens stay within it for every call below
    p=st.integers(1, 400),
    dp=st.integers(0, 300),
    n=st.integers(1, 300),
    dn=st.integers(0, 300),
)
def test_generate_monotone(b: int, db: int, p: int, dp: int, n: int, dn: int) -> None:
    def peak(**kw: int) -> int:
        return estimate(model="gpt2", task="infer", dtype="bf16", **kw).peak.allocated_bytes

    a = peak(batch_size=b, prompt_len=p, new_tokens=n)
    assert peak(batch_size=b + db, prompt_len=p, new_tokens=n) >= a
    assert peak(batch_size=b, prompt_len=p + dp, new_tokens=n) >= a
    assert peak(batch_size=b, prompt_len=p, new_tokens=n + dn) >= a


# ----------------------------------------------------------------------------- request


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"task": "train", "prompt_len": 5}, "--prompt-len"),
        ({"task": "train", "engine": "vllm"}, "--engine"),
        ({"task": "infer", "grad_ckpt": True}, "--grad-ckpt"),
        ({"task": "infer", "lora": {}}, "--lora"),
        ({"task": "infer", "concurrency": 4}, "--concurrency"),
        ({"task": "infer", "max_model_len": 4096}, "--max-model-len"),
        ({"task": "infer", "kv_dtype": "fp8"}, "fp8"),
        ({"task": "infer", "engine": "vllm"}, "--gpu"),
        ({"task": "infer", "engine": "vllm", "gpu": "h100-sxm", "batch_size": 4}, "--concurrency"),
        ({"task": "infer", "quant": "nf4", "weights": "awq"}, "one weight format"),
        ({"task": "infer", "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ],
)
def test_request_refuses(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        EstimateRequest(model="gpt2", **fields)  # type: ignore[arg-type]


def test_infer_alias_and_inference_kept() -> None:
    assert EstimateRequest(model="gpt2", task="infer").task.value == "inference"
    assert EstimateRequest(model="gpt2", task="inference").task.value == "inference"


# ----------------------------------------------------------------------------- CLI


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


_VLLM_GPT2 = ["gpt2", "--task", "infer", "--engine", "vllm", "--gpu", "h100-sxm"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["gpt2", "--task", "infer", "--prompt-len", "1000", "--new-tokens", "100"], "1024"),
        (["gpt2", "--task", "inferr"], "infer"),
        (["gpt2", "--task", "infer", "--grad-ckpt"], "--grad-ckpt"),
        (["gpt2", "--task", "infer", "--engine", "vlm"], "vllm"),
        (["gpt2", "--task", "infer", "--weights", "awk"], "awq"),
        (["gpt2", "--task", "infer", "--kv-dtype", "fp4"], "fp8"),
        (["gpt2", "--prompt-len", "8"], "--task infer"),
        (["gpt2", "--task", "infer", "--concurrency", "8"], "--engine vllm"),
        ([*_VLLM_GPT2, "--max-model-len", "4096"], "max_position_embeddings"),
    ],
)
def test_cli_errors(capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    code, out, err = _run(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err


def test_cli_hf_generate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "llama-3.1-8b", "--task", "infer", "--dtype", "bf16", "--prompt-len", "1000",
        "--new-tokens", "1", "--json",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["peak"]["phase"] == "prefill"
    assert data["details"]["activations/kv_cache"] == 1000 * 131_072
    assert data["serving"] is None


def test_cli_vllm_golden(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["qwen2.5-7b", "--task", "infer", "--dtype", "bf16", "--engine", "vllm", "--gpu",
            "h100-sxm", "--prompt-len", "8192", "--new-tokens", "1024", "--concurrency", "32",
            "--max-model-len", "32768"]  # fmt: skip
    code, out, _ = _run(capsys, *args)
    assert code == 0
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "vLLM budget per GPU" in out and "Concurrent sequences of 9,216 tokens" in out
    code, js, _ = _run(capsys, *args, "--json")
    s = json.loads(js)["serving"]
    assert f"{s['kv_blocks']:,} blocks x 16 tokens" in out
    assert f": {s['max_concurrency']:,} (asked 32)" in out
    path = GOLDEN / "qwen25_7b_vllm_h100.txt"
    import os

    if os.environ.get("VRAMCALC_UPDATE_GOLDEN") or not path.exists():
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")


def test_cli_flags_reach_request() -> None:
    ns = cli._estimate_parser().parse_args(
        ["gpt2", "--task", "infer", "--prompt-len", "7", "--new-tokens", "9", "--kv-dtype",
         "bf16", "--weights", "gptq", "--engine", "vllm", "--gpu", "h100-sxm",
         "--gpu-memory-utilization", "0.8", "--max-num-batched-tokens", "4096",
         "--max-model-len", "512", "--concurrency", "3"]
    )  # fmt: skip
    req = cli.build_request(ns)
    assert (req.task.value, req.prompt_len, req.new_tokens) == ("inference", 7, 9)
    assert (req.kv_dtype.value, req.weights, req.engine.value) == ("bf16", "gptq", "vllm")
    assert (req.gpu_memory_utilization, req.max_num_batched_tokens) == (0.8, 4096)
    assert (req.max_model_len, req.concurrency) == (512, 3)
