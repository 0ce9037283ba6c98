"""The estimate path gives byte-identical reports to the engine before its speed-ups.

``tests/data/engine_snapshot.jsonl`` was first written by the engine before its speed-ups
(commit 1b1ec03). It is rewritten only when an estimate change is meant to land; its first
line names the engine commit that wrote it, and before each rewrite the speed-ups were
re-checked against a pre-speed-up engine carrying the same estimate changes. It covers a
derandomized hypothesis draw of layouts (``tests/engine_snapshot.py``); every report's JSON
must hash the same today, and every refused request must fail with the same message. The
draw itself is checked too, so the stored set cannot silently drift from the generator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import engine_snapshot

ROWS = engine_snapshot.load()


def test_the_stored_set_is_the_generators_draw() -> None:
    import hypothesis

    drew = engine_snapshot.meta()["hypothesis"]
    if hypothesis.__version__ != drew:
        pytest.skip(f"the set was drawn by hypothesis {drew}; this is {hypothesis.__version__}")
    drawn = engine_snapshot.draw_requests()
    assert [json.dumps(r, sort_keys=True) for r in drawn] == [
        json.dumps(r["request"], sort_keys=True) for r in ROWS
    ]


def test_the_set_covers_the_layouts() -> None:
    ok = [r["request"] for r in ROWS if "sha256" in r]
    assert len(ok) >= 350
    for key, values in {
        "tp": {2, 4, 8},
        "pp": {2, 3, 4, 8},
        "cp": {2},
        "ep": {2, 4},
        "fsdp": {"full_shard", "shard_grad_op", "hybrid_shard"},
        "fsdp_version": {1, 2},
        "zero": {1, 2, 3},
        "pp_schedule": {"interleaved"},
    }.items():
        assert values <= {r.get(key) for r in ok}, key
    assert {"lora", "qlora"} <= {k for r in ok for k in r}
    # a middle pipeline stage holds the peak in some of them
    assert {r["stage"] for r in ROWS if r.get("stage")} - {0}


@pytest.mark.parametrize("i", range(0, len(ROWS), 48))
def test_reports_are_byte_identical(i: int) -> None:
    bad: list[str] = []
    for row in ROWS[i : i + 48]:
        got: dict[str, Any] = engine_snapshot.run(row["request"])
        if got != row:
            want = {k: v for k, v in row.items() if k != "request"}
            have = {k: v for k, v in got.items() if k != "request"}
            bad.append(f"{json.dumps(row['request'])}\n  stored {want}\n  now    {have}")
    assert not bad, f"{len(bad)} report(s) changed:\n" + "\n".join(bad)
