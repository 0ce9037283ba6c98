"""The trainer model (``--trainer``) against fake-CUDA traces of TRL 1.16's real trainers.

``validation/measurements/trace-trl.jsonl`` holds one line per scenario (``trainer`` field),
each a fake-CUDA trace of TRL's own ``compute_loss`` (DPOTrainer, KTOTrainer, ORPOTrainer,
CPOTrainer, RewardTrainer built by TRL's ``__init__``) -> backward -> optimizer step
(``validation/trl_trace.py``). The engine must predict each allocated peak within 5 % (issue
11's target: 3 %; the distribution is printed) and in the same phase. Lines of other trainers
(the RL helper's GRPO/RLOO/PPO lines) are checked by their own tests.

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
    # a padded batch (rows of several lengths: the mask reaches SDPA), with and without PEFT
    assert {r.lora is None for r in reqs if r.padded_batch} == {True, False}


def test_reward_lora_peak_is_the_final_norm_backward() -> None:
    """Without an LM head the final RMSNorm's backward is the step's peak (issue 11).

    The trace of TRL's reward model under LoRA peaks in backward with every block's saved
    tensors alive and the norm's five fp32 temporaries; the estimate must put its peak there
    too (it used to file it in forward, 4.7 % low, against a trace whose SiLU backward was
    decomposed by a CPU-only torch).
    """
    m = next(m for m in MEASUREMENTS if m.scenario.id == "trl-reward-lora-bf16")
    report = predict(m.scenario.request, m.scenario.optim_impl, target="trace")
    assert m.measured.phase == "backward"
    assert report.peak.phase.value == "backward"
    assert report.peak.event == "LM head backward"


def test_padding_moves_the_estimate_as_the_trace() -> None:
    """The padded rows are only matched by modelling the mask (the unpadded estimate is low)."""
    for m in (x for x in MEASUREMENTS if x.scenario.request.padded_batch):
        padded = predict(m.scenario.request, m.scenario.optim_impl, target="trace")
        plain_req = m.scenario.request.model_copy(update={"padded_batch": False})
        plain = predict(plain_req, m.scenario.optim_impl, target="trace")
        got = m.measured.allocated_bytes
        assert abs(padded.peak.allocated_bytes - got) < abs(plain.peak.allocated_bytes - got)
        assert plain.peak.allocated_bytes < got


def _cases() -> list[Any]:
    return [pytest.param(m, id=m.scenario.id) for m in MEASUREMENTS]


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
