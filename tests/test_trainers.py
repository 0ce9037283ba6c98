"""``--trainer``: which models TRL holds, how the batch is shaped, the report rows.

Expected values are derived by hand from TRL 1.16.0's code (``trl/trainer/dpo_trainer.py``
``__init__`` reference loading, ``DataCollatorForPreference`` stacking chosen and rejected,
``trl/models/utils.py`` ``prepare_deepspeed``/``prepare_fsdp``), not from the engine's output.
The traced accuracy is in ``tests/validation/test_trl_trace.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import vramcalc
from vramcalc.enums import Trainer
from vramcalc.formulas.trainers import trainer_plan
from vramcalc.specs import PeftSpec, TrainerSpec

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 8192,
    "max_position_embeddings": 2048,
}
LORA = PeftSpec(method="lora", r=8, alpha=8.0, targets=("q_proj", "v_proj"))


@pytest.mark.parametrize(
    ("trainer", "peft", "opts", "kind", "rows"),
    [
        # full fine-tuning without ref_model: a copy loaded from the same checkpoint
        ("dpo", None, {}, "copy", 8),
        # PEFT without ref_model: the base with the adapters disabled
        ("dpo", LORA, {}, "adapter_disabled", 8),
        ("dpo", LORA, {"ref_model": "copy"}, "copy", 8),
        ("dpo", None, {"precompute_ref_log_probs": True}, "precomputed", 0),
        ("kto", LORA, {}, "adapter_disabled", 4),
        ("orpo", None, {}, "none", 0),
        ("simpo", LORA, {}, "none", 0),
        ("cpo", None, {}, "none", 0),
        ("reward", None, {}, "none", 0),
        # GRPO: a reference only when beta > 0 (TRL's default beta is 0.0)
        ("grpo", LORA, {}, "none", 0),
        ("grpo", None, {"beta": 0.04}, "copy", 4),
    ],
)
def test_reference_kind_and_rows(
    trainer: str, peft: PeftSpec | None, opts: dict[str, Any], kind: str, rows: int
) -> None:
    plan = trainer_plan(TrainerSpec(name=Trainer(trainer), **opts), peft, 4)
    assert plan.reference_kind == kind
    assert plan.reference_rows == rows


def test_paired_trainers_double_the_forward_batch() -> None:
    # DataCollatorForPreference stacks [chosen, rejected]: B pairs are 2B rows
    for name in ("dpo", "orpo", "simpo", "cpo", "reward"):
        assert trainer_plan(TrainerSpec(name=Trainer(name)), None, 3).forward_rows == 6
    assert trainer_plan(TrainerSpec(name=Trainer.KTO), None, 3).forward_rows == 3
    assert trainer_plan(TrainerSpec(name=Trainer.KTO), None, 3).kl_rows == 3


def test_dpo_blocks_see_twice_the_rows() -> None:
    # the decoder blocks of DPO with B pairs save what an SFT step with 2B rows saves (rows of
    # one length: no padding mask)
    dpo = vramcalc.estimate(
        model=LLAMA, trainer="dpo", lora={"r": 8}, batch_size=2, seq_len=128, padded_batch=False
    )
    sft = vramcalc.estimate(model=LLAMA, lora={"r": 8}, batch_size=4, seq_len=128)
    full = {k for k in sft.details if k.startswith("activations/")} - {
        "activations/logits", "activations/temporaries", "activations/norms",
    }  # fmt: skip
    for key in sorted(full):
        assert dpo.details.get(key) == sft.details[key], key
    # the fused LM head never materialises the (2B x S x V) logits
    assert "activations/logits" not in dpo.details


def test_padded_batch_masks_every_sdpa_layer() -> None:
    # TRL pads pairs to the longest row: transformers builds the 4-D mask, repeats the K/V
    # heads (sdpa_attention.py use_gqa_in_sdpa) and SDPA saves a rows x S x S bias per layer
    kw: dict[str, Any] = {"model": "llama-3.1-8b", "trainer": "dpo", "dtype": "bf16"}
    kw.update(lora={"r": 16}, batch_size=4, seq_len=1024)
    padded = vramcalc.estimate(**kw)
    plain = vramcalc.estimate(**kw, padded_batch=False)
    rows, S, L = 8, 1024, 32
    heads, kvh, hd = 32, 8, 128
    bias = L * rows * S * S * 2
    kv_repeat = L * 2 * rows * S * (heads - kvh) * hd * 2
    grew = padded.details["activations/attention"] - plain.details["activations/attention"]
    assert grew == bias + kv_repeat
    assert any("padded batch" in n for n in padded.notes)
    # eager and flash-attention-2 do not change with padding
    for attn in ("eager", "flash_attention_2"):
        a = vramcalc.estimate(**kw, attn=attn)
        b = vramcalc.estimate(**kw, attn=attn, padded_batch=False)
        assert a.peak.allocated_bytes == b.peak.allocated_bytes


def _params(r: Any, key: str) -> int:
    return int(r.details.get(key, 0))


def test_full_dpo_holds_a_reference_copy_in_the_policy_dtype() -> None:
    r = vramcalc.estimate(model="llama-3.1-8b", trainer="dpo", dtype="bf16", seq_len=256)
    n = r.model.n_params
    assert _params(r, "params/reference") == pytest.approx(2 * n, rel=1e-4)
    assert _params(r, "params/policy") == pytest.approx(2 * n, rel=1e-4)
    peft = vramcalc.estimate(
        model="llama-3.1-8b", trainer="dpo", dtype="bf16", seq_len=256, lora={"r": 16}
    )
    assert "params/reference" not in peft.details
    pre = vramcalc.estimate(
        model="llama-3.1-8b", trainer="dpo", dtype="bf16", seq_len=256,
        precompute_ref_log_probs=True,
    )  # fmt: skip
    assert "params/reference" not in pre.details


@pytest.mark.parametrize(
    ("layout", "shards"),
    [
        ({"zero": 3}, 8),  # prepare_deepspeed keeps stage 3: sharded
        ({"zero": 2}, 1),  # stages 1-2 become stage 0 for the reference: replicated
        ({"fsdp": "full_shard"}, 8),  # prepare_fsdp wraps it like the policy
        ({}, 1),  # DDP: a replica per rank
    ],
)
def test_reference_under_layouts(layout: dict[str, Any], shards: int) -> None:
    r = vramcalc.estimate(
        model="llama-3.1-8b", trainer="dpo", dtype="bf16", seq_len=256, gpus=8, **layout
    )
    ref = _params(r, "params/reference")
    assert ref == pytest.approx(2 * r.model.n_params / shards, rel=1e-3)


def test_timeline_has_the_reference_forward_and_loss_kernel() -> None:
    r = vramcalc.estimate(model=LLAMA, trainer="dpo", batch_size=2, seq_len=128)
    events = [e.event for e in r.timeline if e.step == 2]
    assert "reference forward (no grad)" in events
    assert "policy log-probs (chunked LM-head kernel)" in events
    kto = vramcalc.estimate(model=LLAMA, trainer="kto", lora={"r": 8}, batch_size=2, seq_len=128)
    names = [e.event for e in kto.timeline]
    assert "KL completions forward (policy, no grad)" in names
    assert "reference (adapters disabled) forward (no grad)" in names


def test_reward_model_has_no_lm_head() -> None:
    r = vramcalc.estimate(model="llama-3.1-8b", trainer="reward", dtype="bf16", seq_len=256)
    sft = vramcalc.estimate(model="llama-3.1-8b", dtype="bf16", seq_len=256)
    # the 128256 x 4096 lm_head (untied) is replaced by a Linear(4096, 1)
    assert sft.model.n_trainable_params - r.model.n_trainable_params == 128256 * 4096


def test_issue_example_prints_models_and_phases() -> None:
    from vramcalc.cli import run

    out: list[str] = []
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = run(
            ["llama-3.1-8b", "--trainer", "dpo", "--lora", "r=16", "--dtype", "bf16", "-b", "4",
             "-s", "1024", "--gpu", "h100-80gb"]
        )  # fmt: skip
    out.append(buf.getvalue())
    text = "".join(out)
    assert code == 0
    assert "Models on the GPU (dpo)" in text
    assert "adapters disabled" in text
    assert "Allocated peak by phase" in text


def test_api_accepts_trainer_fields() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from api.app import create_app

    client = TestClient(create_app())
    body = {"model": LLAMA, "trainer": "dpo", "ref_model": "copy", "batch_size": 2, "seq_len": 64}
    resp = client.post("/v1/estimate", json=body)
    assert resp.status_code == 200, resp.text
    assert "params/reference" in resp.json()["details"]
