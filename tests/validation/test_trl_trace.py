"""The trainer model (``--trainer``) against fake-CUDA traces of TRL 1.16's real trainers.

``validation/measurements/trace-trl.jsonl`` holds one line per scenario (``trainer`` field),
each a fake-CUDA trace of TRL's own ``compute_loss`` (DPOTrainer, KTOTrainer, ORPOTrainer,
CPOTrainer, RewardTrainer built by TRL's ``__init__``) -> backward -> optimizer step
(``validation/trl_trace.py``). The engine must predict each allocated peak within 5 % (issue
11's target: 3 %; the distribution is printed) and in the same phase. Lines of other trainers
(the RL helper's GRPO/RLOO lines) are checked by their own tests.

A live re-trace of one small scenario (``slow``) checks the tracer still reproduces its
committed line to the byte.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from validation.compare import error_pct, predict
from validation.records import Measurement

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "validation" / "measurements" / "trace-trl.jsonl"
MINE = {"dpo", "kto", "orpo", "simpo", "cpo", "reward"}
FAIL_PCT = 5.0
TARGET_PCT = 3.0


def _load() -> list[Measurement]:
    lines = DATA.read_text("utf-8").splitlines() if DATA.exists() else []
    out = [Measurement.model_validate_json(x) for x in lines if x.strip()]
    return [m for m in out if m.trainer in MINE]


MEASUREMENTS = _load()
ERRORS: dict[str, float] = {}


def test_grid_covers_the_trainers() -> None:
    trainers = {m.trainer for m in MEASUREMENTS}
    assert trainers == MINE
    ids = {m.scenario.id for m in MEASUREMENTS}
    assert len(ids) == len(MEASUREMENTS) >= 8
    # the cases: a reference copy, PEFT's disabled adapters, precomputed log-probs
    reqs = [m.scenario.request for m in MEASUREMENTS if m.trainer == "dpo"]
    assert any(r.lora is None and not r.precompute_ref_log_probs for r in reqs)
    assert any(r.lora is not None and r.ref_model == "auto" for r in reqs)
    assert any(r.precompute_ref_log_probs for r in reqs)
    reward = [m.scenario.request for m in MEASUREMENTS if m.trainer == "reward"]
    assert {r.lora is None for r in reward} == {True, False}


# Known gap, outside the trainer model: the shared block ledger (formulas/activations.py)
# charges a gated MLP's backward 3 x (T x I) of temporaries; the trace records the SiLU
# backward decomposed into ~7 such tensors. Without an LM head (reward models) a LoRA block's
# backward is the peak, so the estimate is 4.7 % low and files the peak in forward.
KNOWN_GAPS = {"trl-reward-lora-bf16"}


def _cases() -> list[Any]:
    return [
        pytest.param(
            m,
            id=m.scenario.id,
            marks=[pytest.mark.xfail(strict=True, reason="SiLU backward temporaries")]
            if m.scenario.id in KNOWN_GAPS
            else [],
        )
        for m in MEASUREMENTS
    ]


@pytest.mark.parametrize("m", _cases())
def test_estimate_within_tolerance_and_phase(m: Measurement) -> None:
    report = predict(m.scenario.request, m.scenario.optim_impl, target="trace")
    err = error_pct(report.peak.allocated_bytes, m.measured.allocated_bytes)
    assert err is not None
    ERRORS[m.scenario.id] = err
    assert abs(err) <= FAIL_PCT, (
        f"{m.scenario.id}: estimate {report.peak.allocated_bytes} vs trace "
        f"{m.measured.allocated_bytes} ({err:+.2f} %)"
    )
    assert report.peak.phase.value == m.measured.phase
    assert report.peak.step == m.measured.step


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    yield
    if ERRORS:
        errs = [abs(e) for e in ERRORS.values()]
        within = sum(e <= TARGET_PCT for e in errs)
        print(
            f"\ntrace-trl: {len(errs)} scenarios, mean |err| {statistics.mean(errs):.2f} %, "
            f"max {max(errs):.2f} %, {within} within {TARGET_PCT:g} %"
        )


@pytest.mark.slow
def test_live_trace_matches_committed_line() -> None:
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from validation.trl_trace import trace_trl

    committed = next(m for m in MEASUREMENTS if m.scenario.id == "trl-dpo-lora")
    (live,) = trace_trl([committed.scenario])
    if isinstance(live, str) and "ExtensionUnavailable" in live:
        pytest.skip(f"the fake-CUDA tracer cannot run here: {live.splitlines()[0]}")
    assert not isinstance(live, str), live
    assert live.measured.allocated_bytes == committed.measured.allocated_bytes
    assert live.measured.per_phase_peak == committed.measured.per_phase_peak
