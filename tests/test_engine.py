"""The engine's public API: request forms, fit(), errors, notes, inference, DeepSpeed dicts."""

from __future__ import annotations

from typing import Any

import pytest

import vramcalc
from vramcalc.enums import Phase
from vramcalc.errors import InvalidConfigError, UnknownNameError

KW: dict[str, Any] = {"model": "gpt2", "optim": "adamw_8bit", "lora": {"r": 16}, "seq_len": 256}


def test_kwargs_mapping_and_request_agree() -> None:
    a = vramcalc.estimate(**KW)
    b = vramcalc.estimate(dict(KW))
    c = vramcalc.estimate(vramcalc.EstimateRequest(**KW))
    assert a == b == c


def test_fit_max_batch_is_the_boundary() -> None:
    req: dict[str, Any] = {"model": "gpt2", "seq_len": 1024, "gpu": "t4"}
    f = vramcalc.fit(req)
    n = f.max_batch_size
    assert n is not None and n >= 1
    usable = f.usable_bytes
    assert vramcalc.estimate(req, batch_size=n).peak.device_bytes <= usable
    assert vramcalc.estimate(req, batch_size=n + 1).peak.device_bytes > usable


def test_fit_is_zero_when_batch_one_does_not_fit() -> None:
    # 7B fp32 weights alone are 27 GB (4 B x 6.74e9) > 24 GB of an A10G
    f = vramcalc.fit({"model": "llama-2-7b", "lora": {"r": 8}, "gpu": "a10g-24gb"})
    assert f.max_batch_size == 0 and not f.fits


@pytest.mark.parametrize(
    ("kw", "closest"),
    [
        ({"model": "gpt2-medum"}, "gpt2-medium"),
        ({"model": "gpt2", "optim": "adamw_8bt"}, "adamw_8bit"),
        ({"model": "gpt2", "gpu": "a100-80"}, "a100-80gb"),
    ],
)
def test_unknown_names_suggest_closest(kw: dict[str, Any], closest: str) -> None:
    with pytest.raises(UnknownNameError) as exc:
        vramcalc.estimate(**kw)
    assert f"'{closest}'" in str(exc.value) and "Accepted" in str(exc.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "gpt2", "offload_param": "cpu"},
        {"model": "gpt2", "qlora": {"r": 8}, "quant": "int8"},
    ],
)
def test_impossible_combinations(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfigError):
        vramcalc.estimate(**kw)


def test_tokens_without_gpu_is_a_note() -> None:
    r = vramcalc.estimate(model="gpt2", tokens=10_000)
    assert r.cost is None
    assert any("--gpu" in n for n in r.notes)


def test_inference_has_no_training_state() -> None:
    r = vramcalc.estimate(model="gpt2", task="inference")
    assert r.breakdown.gradients == 0 and r.breakdown.optimizer == 0
    assert r.peak.phase == Phase.PREFILL
    assert r.breakdown.params >= 4 * 124_439_808  # fp32 weights, tied head once


def test_deepspeed_dict_sets_stage() -> None:
    pytest.importorskip("vramcalc.dsconfig", reason="dsconfig not written yet")
    ds = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    r = vramcalc.estimate(model="gpt2", deepspeed=ds, gpus=4)
    plain = vramcalc.estimate(model="gpt2", mixed_precision="bf16", gpus=4)
    assert r.breakdown.optimizer < plain.breakdown.optimizer  # states partitioned over 4 GPUs
