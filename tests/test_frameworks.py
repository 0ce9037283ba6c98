"""Framework profiles and memory features (issue 10): data, hooks, entry points.

Expected values are hand derivations from the frameworks' source (cited per test), not the
engine's output; the traced checks are in ``tests/validation/test_framework_grid.py``.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from vramcalc import estimate
from vramcalc.formulas.activations import liger_chunk_rows
from vramcalc.frameworks import profile, profiles, resolve_recipe
from vramcalc.specs import FEATURES, FRAMEWORKS, EstimateRequest

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "vocab_size": 16000, "max_position_embeddings": 4096, "tie_word_embeddings": False,
}  # fmt: skip


def test_every_framework_has_a_sourced_row() -> None:
    rows = json.loads(
        resources.files("vramcalc").joinpath("data", "frameworks.json").read_text("utf-8")
    )["frameworks"]
    assert set(rows) == set(FRAMEWORKS)
    for name, row in rows.items():
        assert row["source"].strip(), name
        for part in ("implementation", "loss", "load", "recipe", "peak_reset"):
            assert row[part]["source"].strip(), (name, part)
        assert row["loss"]["default"] in row["loss"]["accepted"], name
        for feature, why in row["features"].items():
            assert feature in FEATURES and why.strip(), (name, feature)
    assert [p.name for p in profiles()] == list(FRAMEWORKS)


def test_litgpt_recipe_from_its_source() -> None:
    # litgpt 0.5.13 finetune/lora.py: lm_head_chunk_size=128 -> ceil(S / 128) chunks;
    # lightning BitsandbytesPrecision: lm_head quantized, bnb.nf4 without double quant
    rc = resolve_recipe(EstimateRequest(model="gpt2", framework="litgpt", seq_len=1000))
    assert (rc.loss, rc.loss_chunks) == ("chunked", 8)
    assert not rc.logits_fp32 and rc.hold_logits and rc.qkv_fused
    assert rc.adapter_dtype == "base" and rc.gelu_tanh == "fused"
    assert rc.quant_lm_head and not rc.double_quant and rc.peak_reset == "never"
    hf = resolve_recipe(EstimateRequest(model="gpt2"))
    assert (hf.loss, hf.loss_chunks, hf.logits_fp32, hf.adapter_dtype) == (
        "full",
        1,
        True,
        "autocast",
    )


def test_liger_switches_kernels_and_loss() -> None:
    rc = resolve_recipe(EstimateRequest(model="gpt2", liger=True))
    assert (rc.norm_impl, rc.swiglu_impl, rc.loss) == ("liger", "fused", "fused_linear")
    assert resolve_recipe(EstimateRequest(model="gpt2", liger=True, loss="full")).loss == "full"


def test_liger_chunk_rows_by_hand() -> None:
    # Liger 0.5 fused_linear_cross_entropy_forward: inc_factor = cdiv(V, H) = cdiv(32000,
    # 4096) = 8; chunk_size = next_power_of_2(cdiv(BT, 8)): BT = 4096 -> 512, 1000 -> 128
    assert liger_chunk_rows(4096, 4096, 32000) == 512
    assert liger_chunk_rows(1000, 4096, 32000) == 128


def test_litgpt_nf4_storage_without_double_quant() -> None:
    # bitsandbytes quantize_4bit(compress_statistics=False): packed uint8 (n/2 bytes), one
    # fp32 absmax per 64 values, the 16-entry fp32 code; all linears incl. lm_head, the
    # embedding and norms in bf16 (no prepare_model_for_kbit_training)
    rep = estimate(model=TINY, framework="litgpt", dtype="bf16", qlora={"r": 8})

    def blk(n: int) -> int:
        return -(-n // 512) * 512

    def nf4(n: int) -> int:
        return blk(n // 2) + blk(n // 64 * 4) + blk(64)

    H, V, inter = 256, 16000, 688
    per_layer = 4 * nf4(H * H) + 3 * nf4(H * inter)
    quantized = 2 * per_layer + nf4(V * H)
    assert rep.details["params/nf4"] == quantized
    assert rep.details["params/16bit"] >= blk(V * H * 2)  # the embedding stays bf16


def test_adapters_in_base_dtype_halve_adapter_bytes() -> None:
    # litgpt lora.py: lora_A/lora_B cast with the module (bf16); PEFT keeps them fp32
    kw = {"model": TINY, "dtype": "bf16", "lora": {"r": 8, "targets": "q_proj+v_proj"}}
    lit = estimate(framework="litgpt", **kw).details
    hf = estimate(**kw).details
    assert lit["params/adapters_16bit"] * 2 == hf["params/adapters_fp32"]


def test_offloading_lowers_the_peak_and_says_so() -> None:
    kw = {"model": TINY, "dtype": "bf16", "batch_size": 8, "seq_len": 1024}
    base = estimate(**kw).peak.allocated_bytes
    off = estimate(activation_offload=True, **kw)
    assert off.peak.allocated_bytes < base
    assert any("activation offload" in n for n in off.notes)
    ck = {"framework": "unsloth", "grad_ckpt": True, **kw}
    assert (
        estimate(checkpoint_offload=True, **ck).peak.allocated_bytes
        <= estimate(**ck).peak.allocated_bytes
    )


def test_compile_is_a_stated_approximation() -> None:
    rep = estimate(model=TINY, compile=True)
    assert any("--compile is an approximation" in n for n in rep.notes)
    assert rep.peak.allocated_bytes == estimate(model=TINY).peak.allocated_bytes


def test_torchtune_compiled_chunked_loss_keeps_16bit_chunks() -> None:
    # compile_loss compiles compute_cross_entropy: no fp32 log-softmax kept (the CPU Inductor
    # probe, tests/validation/test_compile_ce_probe.py, checks the terms); the full loss and
    # eager mode are unchanged, and the note says which part of --compile is modelled
    kw = {"model": TINY, "framework": "torchtune", "dtype": "bf16", "lora": {"r": 8}}
    eager = estimate(**kw)
    comp = estimate(compile=True, **kw)
    assert comp.peak.allocated_bytes < eager.peak.allocated_bytes
    assert not any("--compile is an approximation" in n for n in comp.notes)
    assert any("compiled chunked cross-entropy is modelled" in n for n in comp.notes)
    full = {**kw, "loss": "full"}
    compiled_full = estimate(compile=True, **full).peak.allocated_bytes
    assert compiled_full == estimate(**full).peak.allocated_bytes


def test_untraced_profile_says_so() -> None:
    rep = estimate(model=TINY, framework="unsloth", dtype="bf16", lora={"r": 8})
    assert any("not traced" in n for n in rep.notes)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_every_profile_estimates(name: str) -> None:
    rep = estimate(model=TINY, framework=name, dtype="bf16", lora={"r": 8})
    assert rep.peak.allocated_bytes > 0
    assert profile(name).name == name


def test_cli_takes_the_framework_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from vramcalc.cli import run

    rc = run(["gpt2", "--framework", "litgpt", "--loss-chunks", "4", "--dtype", "bf16", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert any("framework litgpt" in n for n in out["notes"])


def test_api_takes_the_framework_fields() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.app import create_app

    client = TestClient(create_app())
    ok = client.post("/v1/estimate", json={"model": "gpt2", "framework": "litgpt", "dtype": "bf16"})
    assert ok.status_code == 200, ok.text
    bad = client.post("/v1/estimate", json={"model": "gpt2", "framework": "hf", "compile": 1})
    assert 400 <= bad.status_code < 500


def test_web_page_has_every_framework_control() -> None:
    html = (REPO / "api" / "static" / "index.html").read_text("utf-8")
    js = (REPO / "api" / "static" / "app.js").read_text("utf-8")
    for name in ("framework", "loss", "loss_chunks", *FEATURES):
        assert re.search(rf'id="{name}"', html), name
        assert f'"{name}"' in js, name
    for fw in FRAMEWORKS:
        assert f'value="{fw}"' in html
