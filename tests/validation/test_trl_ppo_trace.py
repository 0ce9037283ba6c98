"""PPO estimates vs committed traces of TRL's real ``PPOTrainer`` (trl 1.12.0; issue 11).

``validation/measurements/trace-trl.jsonl`` holds, among the other trainers' lines, one line
per scenario of ``validation/trl_ppo_trace.py`` (``trainer`` "ppo"): trl 1.12.0's (its last
release with PPO) ``PPOTrainer.train()`` for two PPO updates, run on the CPU under the
storage tracker. Each estimate (``target="trace"``) must name the phase and step of the
traced peak and be within 3 % of it; the steady-state generation, rollout-scoring and
optimizer phases must each be within 5 % of the trace's.

The live checks (``slow``) install trl 1.12.0 alone into a cache directory
(``validation.trl_ppo_trace.ensure_trl``: ``pip install --no-deps --target``; the installed
trl 1.16 is untouched) and skip when pip cannot reach an index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from validation.trl_rl_trace import TRACE_PHASES, phase_peak
from vramcalc.engine import _estimate
from vramcalc.specs import EstimateRequest

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO / "validation" / "measurements" / "trace-trl.jsonl"
LINES: list[dict[str, Any]] = (
    [json.loads(x) for x in TRACES.read_text("utf-8").splitlines() if x.strip()]
    if TRACES.exists()
    else []
)
PPO = [d for d in LINES if d.get("trainer") == "ppo"]
# the tracer's "logprobs" phase (the no-grad scoring passes) is the estimate's "generation"
PHASES = TRACE_PHASES


@pytest.mark.parametrize("d", PPO, ids=[d["scenario"]["id"] for d in PPO])
def test_ppo_estimate_vs_trace(d: dict[str, Any]) -> None:
    m = d["measured"]
    est = _estimate(EstimateRequest(**d["scenario"]["request"]), target="trace")
    traced = m["allocated_bytes"]
    err = 100 * abs(est.peak.allocated_bytes - traced) / traced
    assert est.peak.phase.value == PHASES.get(m["phase"], m["phase"])
    assert est.peak.step == m["step"]
    assert err <= 3.0, err
    pp = m["per_phase_peak"]
    checks = {
        "2/generation": phase_peak(est, 2, "generation", "generation:"),
        "2/logprobs": phase_peak(est, 2, "generation", "reference log-probs"),
        "2/optimizer": phase_peak(est, 2, "optimizer"),
    }
    for key, mine in checks.items():
        assert abs(mine - pp[key]) / pp[key] <= 0.05, (key, mine, pp[key])


def test_ppo_grid_covers_the_issue() -> None:
    """Full and LoRA (reference = the disabled adapter), two batches, two response lengths."""
    reqs = [d["scenario"]["request"] for d in PPO]
    assert len(PPO) >= 3
    assert any(r.get("lora") for r in reqs) and any(not r.get("lora") for r in reqs)
    assert len({r["batch_size"] for r in reqs}) >= 2
    assert len({r["max_completion_length"] for r in reqs}) >= 2
    assert {d["fingerprint"]["trl"] for d in PPO} == {"1.12.0"}


def test_ppo_reference_and_value_rows() -> None:
    """Full: a reference copy; LoRA: none (disabled adapter). Both: value and reward models."""
    full = _estimate(EstimateRequest(**PPO[0]["scenario"]["request"] | {"lora": None}))
    lora = _estimate(EstimateRequest(**PPO[0]["scenario"]["request"] | {"lora": {"r": 8}}))
    assert full.details.get("params/reference", 0) > 0
    assert "params/reference" not in lora.details
    for rep in (full, lora):
        assert rep.details["params/value"] == rep.details["params/reward"] > 0
        assert rep.details["activations/value_model"] > 0


def test_ppo_quantized_policy_keeps_16_bit_value_model() -> None:
    """A 4-bit policy's value and reward models are the unquantized backbone (trained in full).

    The same request without quantization gives the bytes of that backbone in bf16.
    """
    base = {"model": "llama-3.1-8b", "trainer": "ppo", "dtype": "bf16"}
    plain = _estimate(EstimateRequest(**base, lora={"r": 16}))
    qlora = _estimate(EstimateRequest(**base, qlora={"r": 16}))
    assert qlora.details["params/value"] == plain.details["params/value"]
    assert qlora.details["params/reward"] == plain.details["params/reward"]
    assert qlora.details["params/policy"] < plain.details["params/policy"]
    assert any("value and reward models are counted unquantized" in n for n in qlora.notes)


def _trl_dir() -> Path:
    from validation.trl_ppo_trace import ensure_trl

    try:
        return ensure_trl()
    except RuntimeError as exc:  # no package index reachable
        pytest.skip(f"trl 1.12.0 cannot be installed here: {exc}")


@pytest.mark.slow
def test_ppo_defaults_are_trls() -> None:
    """``data/rl.json``'s PPO defaults equal trl 1.12.0's ``PPOConfig`` defaults."""
    from vramcalc import catalog

    code = (
        "import json, warnings; warnings.simplefilter('ignore');"
        "from trl.experimental.ppo import PPOConfig;"
        "c = PPOConfig(output_dir='/tmp/vramcalc-ppo-cfg', use_cpu=True, report_to=[]);"
        "print(json.dumps({'response_length': c.response_length,"
        " 'local_rollout_forward_batch_size': c.local_rollout_forward_batch_size,"
        " 'per_device_train_batch_size': c.per_device_train_batch_size,"
        " 'gradient_checkpointing': c.gradient_checkpointing}))"
    )
    env = dict(os.environ, PYTHONPATH=str(_trl_dir()), TRL_EXPERIMENTAL_SILENCE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    cfg = json.loads(out.strip().splitlines()[-1])
    row = catalog.load("rl")["defaults"]["ppo"]
    assert row["max_completion_length"] == cfg["response_length"]
    assert row["local_rollout_forward_batch_size"] == cfg["local_rollout_forward_batch_size"]
    assert row["per_device_train_batch_size"] == cfg["per_device_train_batch_size"]
    # PPOConfig says True, but PPOTrainer never applies it (no Trainer.__init__): the
    # estimate's default is off, as the trace runs
    assert cfg["gradient_checkpointing"] is True
    assert _estimate(EstimateRequest(model="gpt2", trainer="ppo")).peak.allocated_bytes > 0


@pytest.mark.slow
def test_retrace_one_ppo_case() -> None:
    """The committed trace is reproducible (trl 1.12.0's real PPOTrainer step runs here)."""
    from validation import trl_ppo_trace

    sid = "ppo-lora-b16-r24"
    committed = next(d for d in PPO if d["scenario"]["id"] == sid)
    again = trl_ppo_trace.trace(sid, trl_dir=_trl_dir())
    assert again["measured"]["allocated_bytes"] == committed["measured"]["allocated_bytes"]
    assert again["measured"]["per_phase_peak"] == committed["measured"]["per_phase_peak"]
