"""Engine API gaps not in test_engine.py: cost with tokens + gpu, timeline phase order."""

from __future__ import annotations

from itertools import groupby
from typing import Any

import pytest

import vramcalc
from vramcalc.enums import Phase

ORDER = list(Phase)  # Phase is declared in step order: load, forward, loss, backward, optimizer


def test_tokens_and_gpu_give_a_cost() -> None:
    r = vramcalc.estimate(model="gpt2", seq_len=256, gpu="t4", tokens=1_000_000)
    assert r.cost is not None
    assert r.cost.time_s > 0
    assert r.cost.cost_usd >= 0


@pytest.mark.parametrize(
    "kw",
    [
        {"model": "gpt2", "seq_len": 128},
        {"model": "gpt2", "seq_len": 128, "optim": "adamw_8bit", "lora": {"r": 8}},
        {"model": "gpt2", "seq_len": 128, "task": "inference"},
    ],
)
def test_timeline_phases_in_order_per_step(kw: dict[str, Any]) -> None:
    r = vramcalc.estimate(**kw)
    assert r.timeline
    steps = [e.step for e in r.timeline]
    assert steps == sorted(steps)
    for _, events in groupby(r.timeline, key=lambda e: e.step):
        idx = [ORDER.index(e.phase) for e in events]
        assert idx == sorted(idx), idx
