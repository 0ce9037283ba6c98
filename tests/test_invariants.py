"""Properties every estimate must have, over generated settings (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import vramcalc
from vramcalc.enums import Phase
from vramcalc.report import COMPONENTS

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


def llama(hidden: int = 256, layers: int = 2) -> dict[str, Any]:
    return {
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 3 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 8000, "max_position_embeddings": 4096,
    }  # fmt: skip


models = st.sampled_from(["gpt2", "opt-125m", "tinyllama-1.1b"])
optims = st.sampled_from(["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "sgd", "adafactor"])
common = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["fp32", "bf16"]),
        "attn": st.sampled_from(["eager", "sdpa"]),
        "grad_ckpt": st.booleans(),
        "optim": optims,
    }
)


def device(**kw: Any) -> int:
    return vramcalc.estimate(**kw).peak.device_bytes


@SETTINGS
@given(model=models, kw=common, b=st.integers(1, 8), s=st.sampled_from([64, 128, 256, 512]))
def test_monotone_in_batch_and_seq(model: str, kw: dict[str, Any], b: int, s: int) -> None:
    base = device(model=model, batch_size=b, seq_len=s, **kw)
    assert device(model=model, batch_size=b + 1, seq_len=s, **kw) >= base
    assert device(model=model, batch_size=b, seq_len=s * 2, **kw) >= base


@SETTINGS
@given(kw=common, layers=st.integers(1, 6), hidden=st.sampled_from([128, 256, 512]))
def test_monotone_in_layers_and_width(kw: dict[str, Any], layers: int, hidden: int) -> None:
    base = device(model=llama(hidden, layers), **kw)
    assert device(model=llama(hidden, layers + 1), **kw) >= base
    assert device(model=llama(hidden * 2, layers), **kw) >= base


def _model_states(report: vramcalc.MemoryReport) -> int:
    ev = next(e for e in report.timeline if e.phase == Phase.OPTIMIZER and e.step == 1)
    return ev.components["params"] + ev.components["gradients"] + ev.components["optimizer"]


@SETTINGS
@given(model=models, gpus=st.sampled_from([2, 4, 8, 64]), mp=st.sampled_from(["fp16", "bf16"]))
def test_zero_stages_never_raise_model_states(model: str, gpus: int, mp: str) -> None:
    # buckets are fixed-size buffers, so compare with default buckets shrunk to the model
    states = [
        _model_states(
            vramcalc.estimate(
                model=model,
                gpus=gpus,
                mixed_precision=mp,
                deepspeed={"zero_optimization": {"stage": z, "reduce_bucket_size": 1000}},
            )
        )
        for z in (1, 2, 3)
    ]
    assert states[0] >= states[1] >= states[2]


@SETTINGS
@given(model=models, kw=common, b=st.integers(1, 4))
def test_checkpointing_never_raises_the_peak(model: str, kw: dict[str, Any], b: int) -> None:
    kw = {**kw, "grad_ckpt": False}
    plain = vramcalc.estimate(model=model, batch_size=b, **kw).peak.allocated_bytes
    ckpt = vramcalc.estimate(model=model, batch_size=b, **{**kw, "grad_ckpt": True})
    assert ckpt.peak.allocated_bytes <= plain


@SETTINGS
@given(model=models, kw=common, r=st.sampled_from([1, 8, 64]))
def test_lora_never_exceeds_full_finetuning_in_grads_and_states(
    model: str, kw: dict[str, Any], r: int
) -> None:
    full = vramcalc.estimate(model=model, **kw)
    lora = vramcalc.estimate(model=model, lora={"r": r, "targets": "all-linear"}, **kw)

    def grads_and_states(rep: vramcalc.MemoryReport) -> int:
        ev = next(e for e in rep.timeline if e.phase == Phase.OPTIMIZER and e.step == 1)
        return ev.components["gradients"] + ev.components["optimizer"]

    assert grads_and_states(lora) <= grads_and_states(full)
    assert lora.model.n_trainable_params < full.model.n_trainable_params


@SETTINGS
@given(
    model=models, kw=common, b=st.integers(1, 8), gpus=st.sampled_from([1, 2, 8]),
    zero=st.sampled_from([0, 1, 2, 3]), peft=st.sampled_from([None, "lora", "qlora"]),
    gpu=st.sampled_from([None, "a100-80gb", "rtx-4090"]),
)  # fmt: skip
def test_breakdown_and_details_sum_exactly(
    model: str, kw: dict[str, Any], b: int, gpus: int, zero: int, peft: str | None,
    gpu: str | None,
) -> None:  # fmt: skip
    extra: dict[str, Any] = {}
    if peft is not None:
        extra[peft] = {"r": 8}
        zero = 0
    if zero:
        extra["mixed_precision"] = "bf16"
    r = vramcalc.estimate(model=model, batch_size=b, gpus=gpus, zero=zero, gpu=gpu, **kw, **extra)
    bd = r.breakdown
    assert bd.base + bd.params + bd.activations + bd.gradients + bd.optimizer == r.peak.device_bytes
    for comp in COMPONENTS:
        value = getattr(bd, comp)
        assert isinstance(value, int) and value >= 0
        rows = sum(v for k, v in r.details.items() if k.split("/", 1)[0] == comp)
        assert rows == value, comp
    assert all(k.split("/", 1)[0] in COMPONENTS for k in r.details)
    assert r.peak.allocated_bytes <= r.peak.reserved_bytes <= r.peak.device_bytes
    if gpu is not None:
        assert r.fit is not None
        assert r.fit.headroom_bytes == r.fit.usable_bytes - r.peak.device_bytes
