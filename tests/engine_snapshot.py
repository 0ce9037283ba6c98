"""Reports of the engine over generated layouts, stored to prove that a speed-up changes nothing.

``tests/data/engine_snapshot.jsonl`` holds, for each request, either the error the engine
raised or a SHA-256 of the whole JSON report (every field but ``version``, in the report's own
key order) with the peak's figures for a readable failure. The requests are drawn by
hypothesis (derandomized) over the layouts of issue 8: tp / sp / pp (1F1B, interleaved) /
cp / ep / dp over nodes, no engine / DDP / ZeRO 1-3 with offload / FSDP1 and FSDP2 with their
strategies, reshard and offload; full, LoRA and QLoRA; dtypes, mixed precision, checkpointing;
dense GQA, MoE, sliding-window, encoder-decoder and MHA models, and the 405B benchmark config.

The stored results were computed by the engine *before* the per-stage / per-kind caching of
the estimate path (commit 1b1ec03, the merge of arch-attn), so ``tests/test_engine_snapshot.py``
checks the optimized path against the straightforward one. A change meant to move estimates
regenerates the file (``python -m tests.engine_snapshot --write``, from a clean checkout: the
first line records its commit and the hypothesis version) and says so in the CHANGELOG's
"Estimates changed".
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PATH = Path(__file__).parent / "data" / "engine_snapshot.jsonl"
N_EXAMPLES = 700

LLAMA_405B = {
    "model_type": "llama",
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_hidden_layers": 126,
    "num_attention_heads": 128,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
}
SMALL_MOE = {
    "model_type": "mixtral",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 8000,
    "max_position_embeddings": 4096,
}
# (model, largest tp dividing its heads and KV heads, experts, encoder-decoder, max seq_len)
MODELS: list[tuple[str | dict[str, Any], int, int, bool, int]] = [
    ("llama-3.1-8b", 8, 0, False, 8192),  # GQA
    ("mixtral-8x7b", 8, 8, False, 8192),  # MoE
    ("qwen3-30b-a3b", 4, 128, False, 8192),  # MoE, qk-norm
    ("gemma-2-2b", 4, 0, False, 8192),  # sliding windows, soft-capping
    ("llama-4-scout-17b-16e", 8, 16, False, 8192),  # chunked attention, interleaved MoE
    ("gpt2", 4, 0, False, 1024),  # MHA, learned positions, tied head
    ("t5-small", 8, 0, True, 2048),  # encoder-decoder
    ("tinyllama-1.1b", 4, 0, False, 2048),
    (SMALL_MOE, 4, 8, False, 4096),
    (LLAMA_405B, 8, 0, False, 8192),
]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One estimate request over the layouts and training options (mostly valid)."""
    model, max_tp, experts, enc_dec, max_seq = draw(st.sampled_from(MODELS))
    req: dict[str, Any] = {"model": model}
    tp = draw(st.sampled_from([t for t in (1, 1, 2, 4, 8) if t <= max_tp]))
    pp = 1 if enc_dec else draw(st.sampled_from([1, 1, 2, 3, 4, 8]))
    cp = draw(st.sampled_from([1, 1, 2]))
    dp = draw(st.sampled_from([1, 2, 4]))
    ep = draw(st.sampled_from([e for e in (1, 2, 4) if (dp * cp) % e == 0])) if experts else 1
    nodes = draw(st.sampled_from([1, 1, 2]))
    world = tp * pp * cp * dp
    if world % nodes:
        nodes = 1
    req.update(gpus=world // nodes, nodes=nodes, tp=tp, pp=pp, cp=cp, ep=ep)
    if tp > 1 and draw(st.booleans()):
        req["sequence_parallel"] = True
    if pp > 1 and draw(st.integers(0, 3)) == 0:
        req["pp_schedule"] = "interleaved"
        req["pp_virtual_stages"] = 2
    engine = draw(st.sampled_from(["none", "zero", "fsdp", "fsdp"]))
    if engine == "zero":
        req["zero"] = draw(st.sampled_from([1, 2, 3]))
        if draw(st.integers(0, 3)) == 0:
            req["offload_optimizer"] = "cpu"
        if req["zero"] == 3 and draw(st.integers(0, 3)) == 0:
            req["offload_param"] = "cpu"
    elif engine == "fsdp":
        strategies = ["full_shard", "full_shard", "shard_grad_op"]
        req["fsdp"] = draw(st.sampled_from(strategies + (["hybrid_shard"] if nodes > 1 else [])))
        req["fsdp_version"] = draw(st.sampled_from([1, 2]))
        if draw(st.integers(0, 4)) == 0:
            req["fsdp_offload"] = True
        if req["fsdp"] == "full_shard" and draw(st.integers(0, 3)) == 0:
            req["fsdp_reshard_after_forward"] = False
        if req["fsdp_version"] == 1 and draw(st.integers(0, 3)) == 0:
            req["fsdp_backward_prefetch"] = draw(st.sampled_from(["backward_post", "none"]))
    peft = draw(st.sampled_from(["full", "lora", "lora", "qlora"]))
    if peft == "lora":
        targets = draw(st.sampled_from(["default", "qv", "all-linear"]))
        req["lora"] = {"r": draw(st.sampled_from([8, 16]))}
        if targets == "qv" or (targets == "default" and experts):
            req["lora"]["targets"] = ["q_proj", "v_proj"] if not enc_dec else ["q", "v"]
        elif targets == "all-linear":
            req["lora"]["targets"] = "all-linear"
    elif peft == "qlora":
        req["qlora"] = {"r": 16, "targets": "all-linear"}
    precision = draw(st.sampled_from(["fp32", "bf16", "bf16", "fp32+bf16"]))
    if precision == "bf16":
        req["dtype"] = "bf16"
    elif precision == "fp32+bf16":
        req["mixed_precision"] = "bf16"
    req["grad_ckpt"] = draw(st.booleans())
    req["seq_len"] = draw(st.sampled_from([s for s in (128, 512, 2048, 8192) if s <= max_seq]))
    req["batch_size"] = draw(st.integers(1, 4))
    req["grad_accum"] = draw(st.sampled_from([1, 2, 8, 16]))
    if draw(st.integers(0, 5)) == 0:
        req["optim"] = draw(st.sampled_from(["adamw_8bit", "sgd", "adafactor"]))
    if draw(st.integers(0, 5)) == 0:
        req["attn"] = draw(st.sampled_from(["eager", "sdpa"]))
    if draw(st.integers(0, 5)) == 0:
        req["gpu"] = "h100-80gb"
    if tp == pp == cp == 1 and not enc_dec and draw(st.integers(0, 4)) == 0:
        req["trainer"] = "dpo"
    if draw(st.integers(0, 9)) == 0:
        req["task"] = "infer"
        for k in ("lora", "qlora", "grad_ckpt", "grad_accum", "zero", "optim", "trainer"):
            req.pop(k, None)
        for k in [k for k in req if k.startswith(("fsdp", "offload_"))]:
            del req[k]
    return req


# fixed cases next to the drawn ones: benchmarks/bench_engine.py's, and options the draw
# reaches rarely (hybrid sharding, preference trainers, deep pipelines of the 405B model)
EXTRA: list[dict[str, Any]] = [
    {"model": "gpt2-medium", "optim": "adamw_8bit", "lora": {"r": 16}},
    {"model": "llama-2-7b", "dtype": "bf16", "grad_ckpt": True, "seq_len": 4096,
     "qlora": {"r": 64, "targets": "all-linear"}},
    {"model": LLAMA_405B, "dtype": "bf16", "seq_len": 8192, "grad_accum": 16, "gpus": 8,
     "nodes": 16, "tp": 8, "sequence_parallel": True, "pp": 4, "fsdp": "full_shard",
     "grad_ckpt": True},
    {"model": LLAMA_405B, "dtype": "bf16", "seq_len": 8192, "grad_accum": 16, "gpus": 8,
     "nodes": 16, "tp": 8, "sequence_parallel": True, "pp": 4, "fsdp": "full_shard"},
    {"model": LLAMA_405B, "dtype": "bf16", "seq_len": 4096, "grad_accum": 8, "gpus": 8,
     "nodes": 16, "tp": 8, "pp": 6, "pp_schedule": "interleaved", "pp_virtual_stages": 3,
     "zero": 1, "grad_ckpt": True},
    {"model": LLAMA_405B, "dtype": "bf16", "seq_len": 8192, "grad_accum": 2, "gpus": 8,
     "nodes": 32, "tp": 8, "pp": 16, "cp": 2, "fsdp": "hybrid_shard", "lora": {"r": 16}},
    {"model": "meta-llama/Llama-3.1-70B", "zero": 3, "gpus": 8, "nodes": 8,
     "mixed_precision": "bf16"},
    {"model": "llama-3.1-8b", "dtype": "bf16", "gpus": 8, "nodes": 2, "fsdp": "hybrid_shard",
     "fsdp_version": 1, "lora": {"r": 8}},
    {"model": "llama-3.1-8b", "dtype": "bf16", "gpus": 4, "fsdp": "full_shard",
     "trainer": "dpo", "lora": {"r": 8}},
    {"model": "mixtral-8x7b", "dtype": "bf16", "gpus": 8, "nodes": 4, "tp": 2, "pp": 4,
     "ep": 4, "fsdp": "full_shard", "grad_accum": 8, "seq_len": 4096, "grad_ckpt": True},
]  # fmt: skip


def digest(report: Any) -> str:
    """SHA-256 of the report's JSON (without ``version``), in the report's key order."""
    text = json.dumps(report.model_dump(mode="json", exclude={"version"}))
    return hashlib.sha256(text.encode()).hexdigest()


def run(req: dict[str, Any]) -> dict[str, Any]:
    """Estimate one request: its digest and peak, or the error it raised."""
    import vramcalc
    from vramcalc.errors import VramcalcError

    try:
        report = vramcalc.estimate(req)
    except (VramcalcError, ValueError) as exc:
        return {"request": req, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "request": req,
        "device_bytes": report.peak.device_bytes,
        "allocated_bytes": report.peak.allocated_bytes,
        "event": report.peak.event,
        "stage": report.layout.peak_stage if report.layout is not None else None,
        "sha256": digest(report),
    }


def draw_requests(n: int = N_EXAMPLES) -> list[dict[str, Any]]:
    """``EXTRA`` and the derandomized hypothesis draw of ``n`` requests (duplicates dropped)."""
    out: list[dict[str, Any]] = list(EXTRA)
    seen = {json.dumps(r, sort_keys=True) for r in out}

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def collect(req: dict[str, Any]) -> None:
        key = json.dumps(req, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(req)

    collect()
    return out


def _lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PATH.read_text("utf-8").splitlines() if line]


def load() -> list[dict[str, Any]]:
    """The stored rows (without the first line's ``meta``)."""
    return [r for r in _lines() if "meta" not in r]


def meta() -> dict[str, Any]:
    """The commit whose engine wrote the digests and the hypothesis version that drew them."""
    first: dict[str, Any] = _lines()[0]["meta"]
    return first


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        print("usage: python -m tests.engine_snapshot --write", file=sys.stderr)
        return 2
    import subprocess

    import hypothesis

    rows = [run(r) for r in draw_requests()]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    first = {"meta": {"engine_commit": head or None, "hypothesis": hypothesis.__version__}}
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text("".join(json.dumps(r) + "\n" for r in [first, *rows]), "utf-8")
    ok = sum("sha256" in r for r in rows)
    print(f"{len(rows)} requests ({ok} estimates, {len(rows) - ok} refused) -> {PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
