"""validation.compare (``vramcalc validate``): mapping, error arithmetic, exit codes, JSON shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from validation.compare import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    error_pct,
    measured_components,
    scenario_for,
    trace_limitations,
    validate_main,
)
from validation.records import Measured
from vramcalc.specs import EstimateRequest

TINY_GPT2: dict[str, Any] = {
    "model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 4000,
    "n_positions": 256,
}  # fmt: skip


def test_error_pct_by_hand() -> None:
    assert error_pct(110, 100) == pytest.approx(10.0)
    assert error_pct(90, 120) == pytest.approx(-25.0)  # (90 - 120) / 120
    assert error_pct(None, 100) is None
    assert error_pct(100, None) is None
    assert error_pct(0, 0) == 0.0
    assert error_pct(5, 0) is None


def test_trace_categories_map_to_components() -> None:
    m = Measured(
        allocated_bytes=1000, phase="backward", step=2,
        by_category={"params": 100, "gradients": 200, "optimizer": 300, "activations": 250,
                     "temporaries": 150},
    )  # fmt: skip
    comps = measured_components(m, "trace")
    assert comps == {"base": None, "params": 100, "activations": 400, "gradients": 200,
                     "optimizer": 300}  # fmt: skip


def test_cuda_categories_map_to_components() -> None:
    # validation.cuda: params always, gradients/optimizer when certainly live, other = the rest
    m = Measured(
        allocated_bytes=1000, reserved_bytes=1100, device_bytes=1600, phase="optimizer", step=2,
        by_category={"params": 100, "gradients": 100, "optimizer": 200, "other": 600},
    )  # fmt: skip
    comps = measured_components(m, "cuda")
    assert comps["base"] == 600  # device 1600 - allocated 1000
    assert comps["activations"] == 600
    assert comps["params"] == 100


def test_scenario_is_two_steps_default_kernels() -> None:
    sc = scenario_for(EstimateRequest(model="gpt2-medium"))
    assert sc.steps == 2 and sc.optim_impl == "default"
    assert sc.id == "validate-gpt2-medium"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"qlora": {"r": 8}}, "QLoRA"),
        ({"zero": 2}, "ZeRO"),
        ({"gpus": 2}, "multi-GPU"),
        ({"task": "inference"}, "inference"),
        ({"prefix": {"tokens": 10}}, "LoRA only"),
    ],
)
def test_trace_limitations(fields: dict[str, Any], needle: str) -> None:
    why = trace_limitations(EstimateRequest(model=TINY_GPT2, **fields))
    assert why is not None and needle in why


def test_trace_accepts_a_causal_lm_and_refuses_bert() -> None:
    assert trace_limitations(EstimateRequest(model=TINY_GPT2, lora={"r": 4})) is None
    why = trace_limitations(EstimateRequest(model="bert-large-uncased"))
    assert why is not None and "causal" in why and "masked-LM" in why
    # an encoder whose config names its masked-LM class is built as that class
    from validation.grid import FAMILIES

    assert trace_limitations(EstimateRequest(model=FAMILIES["modernbert"])) is None
    assert trace_limitations(EstimateRequest(model=FAMILIES["bert"])) is None


def test_lora_all_linear_reaches_peft_as_its_shorthand() -> None:
    pytest.importorskip("peft")
    from validation.build import _lora_config

    req = EstimateRequest(model=TINY_GPT2, lora={"r": 4, "targets": "all-linear"})
    assert _lora_config(req, "gpt2").target_modules == "all-linear"
    req = EstimateRequest(model=TINY_GPT2, lora={"r": 4, "targets": "c_attn+c_proj"})
    assert set(_lora_config(req, "gpt2").target_modules) == {"c_attn", "c_proj"}


def test_unknown_backend_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        validate_main(EstimateRequest(model=TINY_GPT2, seq_len=64), "nvml", False) == EXIT_BAD_INPUT
    )
    assert "accepted: trace, cuda" in capsys.readouterr().err


def test_unknown_model_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code = validate_main(EstimateRequest(model="gpt2-mediun"), "trace", False)
    assert code == EXIT_BAD_INPUT
    assert "gpt2-medium" in capsys.readouterr().err  # the closest match is named


def test_qlora_on_trace_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    req = EstimateRequest(model="llama-2-7b", dtype="bf16", qlora={"r": 8})
    assert validate_main(req, "trace", False) == EXIT_BAD_INPUT
    assert "--backend cuda" in capsys.readouterr().err


def test_cuda_backend_without_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    req = EstimateRequest(model=TINY_GPT2, seq_len=64)
    assert validate_main(req, "cuda", False) == EXIT_UNAVAILABLE
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_trace_backend_end_to_end_json(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    req = EstimateRequest(model=TINY_GPT2, batch_size=2, seq_len=64, lora={"r": 4})
    code = validate_main(req, "trace", True)
    out, err = capsys.readouterr()
    if code == EXIT_UNAVAILABLE:
        pytest.skip(f"trace backend unavailable here: {err.strip()}")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert set(data) >= {"estimate", "measured", "error_pct"}
    meas = data["measured"]
    assert set(meas) >= {"allocated_bytes", "reserved_bytes", "device_bytes", "phase",
                         "by_category"}  # fmt: skip
    assert meas["reserved_bytes"] is None and meas["device_bytes"] is None  # a trace cannot know
    assert meas["allocated_bytes"] > 0
    assert meas["phase"] in ("forward", "loss", "backward", "optimizer")
    est = data["estimate"]["peak"]["allocated_bytes"]
    e = data["error_pct"]
    assert e["allocated_bytes"] == pytest.approx(
        100 * (est - meas["allocated_bytes"]) / meas["allocated_bytes"]
    )
    assert e["reserved_bytes"] is None and e["device_bytes"] is None and e["base"] is None
    cats = meas["by_category"]
    assert meas["components"]["activations"] == cats["activations"] + cats["temporaries"]
    # the trace's categories at the peak add up to the allocated peak
    assert sum(cats.values()) == meas["allocated_bytes"]


@pytest.mark.slow
def test_trace_backend_table_fits_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    req = EstimateRequest(model=TINY_GPT2, batch_size=1, seq_len=32)
    code = validate_main(req, "trace", False)
    out, err = capsys.readouterr()
    if code == EXIT_UNAVAILABLE:
        pytest.skip(f"trace backend unavailable here: {err.strip()}")
    assert code == EXIT_OK, err
    for word in ("peak allocated", "peak reserved", "phase", "params", "optimizer"):
        assert word in out
    assert max(len(line) for line in out.splitlines()[1:]) <= 80
