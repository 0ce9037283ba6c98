"""validation.calibrate: the fitting arithmetic on synthetic CUDA records (hand-computed).

The records are made up in the test on purpose: they check the arithmetic of the fit (medians,
leave-one-out), not the GPU constants themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest

from validation.calibrate import calibrate_main, family_of, fit_family
from validation.records import Fingerprint, Measured, Measurement, Scenario
from vramcalc.specs import EstimateRequest

MiB = 2**20


def rec(
    sid: str,
    alloc: int,
    reserved: int,
    context: int,
    *,
    device: str = "NVIDIA H200",
    backend: Literal["trace", "cuda"] = "cuda",
    optim: str = "adamw_torch",
    error: str | None = None,
) -> Measurement:
    req = EstimateRequest(model="gpt2", optim=optim)
    return Measurement(
        scenario=Scenario(id=sid, request=req),
        fingerprint=Fingerprint(
            backend=backend,
            device=device,
            torch="2.11.0",
            transformers="5.17.0",
            python="3.12.0",
        ),
        measured=Measured(
            allocated_bytes=alloc * MiB,
            reserved_bytes=reserved * MiB,
            device_bytes=(reserved + context) * MiB,
            context_bytes=context * MiB,
            phase="backward",
            step=2,
        ),
        created="2026-11-28T00:00:00+00:00",
        error=error,
    )


# allocated, reserved, context (MiB); device = reserved + context
A = rec("a", 1000, 1100, 500)  # factor 1.1, device 1600
B = rec("b", 2000, 2400, 520)  # factor 1.2, device 2920
C = rec("c", 4000, 4400, 480)  # factor 1.1, device 4880


def test_fit_medians() -> None:
    fit = fit_family("hopper", [A, B, C])
    assert fit.cuda_context_bytes == 500 * MiB  # median(500, 520, 480)
    assert fit.allocator_reserve_factor == pytest.approx(1.1)  # median(1.1, 1.2, 1.1)
    assert fit.n_measurements == 3
    assert fit.fitted_on == ("a", "b", "c")


def test_leave_one_out_by_hand() -> None:
    fit = fit_family("hopper", [A, B, C])
    # a held out: fit on b, c -> context median(520, 480) = 500, factor median(1.2, 1.1) = 1.15
    #   predicted 1000 * 1.15 + 500 = 1650 vs 1600 -> +3.125 %
    # b held out: fit on a, c -> context 490, factor 1.1: 2000 * 1.1 + 490 = 2690 vs 2920
    #   -> -230 / 2920 = -7.8767 %
    # c held out: fit on a, b -> context 510, factor 1.15: 4000 * 1.15 + 510 = 5110 vs 4880
    #   -> +230 / 4880 = +4.7131 %
    assert fit.loo["a"] == pytest.approx(3.125)
    assert fit.loo["b"] == pytest.approx(-230 / 2920 * 100)
    assert fit.loo["c"] == pytest.approx(230 / 4880 * 100)
    assert fit.loo_error_pct == pytest.approx(4.71, abs=0.005)  # median |error|


def test_paged_optimizer_is_fitted_but_not_judged() -> None:
    paged = rec("p", 1000, 1100, 500, optim="paged_adamw_8bit")
    fit = fit_family("hopper", [A, B, paged])
    assert "p" not in fit.loo
    assert fit.n_measurements == 3


def test_single_case_has_no_loo() -> None:
    fit = fit_family("ampere", [A])
    assert fit.loo_error_pct is None
    assert fit.cuda_context_bytes == 500 * MiB


def test_family_from_gpu_catalog() -> None:
    assert family_of("NVIDIA H200") == "hopper"
    assert family_of("NVIDIA A100-SXM4-80GB") == "ampere"
    assert family_of("Imaginary GPU 9000").startswith("device:")


def _write(path: Path, ms: list[Measurement]) -> None:
    path.write_text("".join(m.model_dump_json() + "\n" for m in ms), encoding="utf-8")


def test_main_without_cuda_records_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "trace.jsonl", [rec("t", 10, 10, 0, backend="trace")])
    out = tmp_path / "cal.json"
    assert calibrate_main(["--measurements", str(tmp_path), "--write", "--out", str(out)]) == 0
    assert "no CUDA measurements in" in capsys.readouterr().out
    assert not out.exists()


def test_main_writes_and_keeps_top_level_keys(tmp_path: Path) -> None:
    failed = rec("f", 1, 1, 1, error="OOM")
    a100 = rec("x", 1000, 1000, 400, device="NVIDIA A100-SXM4-80GB")
    _write(tmp_path / "cuda-h200.jsonl", [A, B, C, failed, a100])
    out = tmp_path / "cal.json"
    old = {
        "_meta": {"note": "keep me"},
        "schema": 7,
        "families": {"volta": {"cuda_context_bytes": 1}},
    }
    out.write_text(json.dumps(old), encoding="utf-8")
    assert calibrate_main(["--measurements", str(tmp_path), "--write", "--out", str(out)]) == 0
    data = json.loads(out.read_text("utf-8"))
    assert data["_meta"] == {"note": "keep me"} and data["schema"] == 7
    assert "cuda-h200.jsonl" in data["source"]
    fams = data["families"]
    assert fams["volta"] == {"cuda_context_bytes": 1}  # other families kept
    hopper = fams["hopper"]
    assert hopper["cuda_context_bytes"] == 500 * MiB
    assert hopper["allocator_reserve_factor"] == pytest.approx(1.1)
    assert hopper["n_measurements"] == 3  # the failed record is left out
    assert hopper["fitted_on"] == ["a", "b", "c"]
    assert hopper["loo_error_pct"] == pytest.approx(4.71, abs=0.005)
    assert fams["ampere"]["loo_error_pct"] is None


def test_main_without_write_is_a_dry_run(tmp_path: Path) -> None:
    _write(tmp_path / "cuda.jsonl", [A, B])
    out = tmp_path / "cal.json"
    assert calibrate_main(["--measurements", str(tmp_path), "--out", str(out)]) == 0
    assert not out.exists()
