"""validation.accuracy: statistics by hand, README block replacement, like-for-like metrics."""

from __future__ import annotations

import pytest

from validation.accuracy import (
    BEGIN,
    END,
    PublishedRow,
    nearest_rank,
    published_summary,
    replace_block,
    summarize,
)
from validation.published import PublishedCase
from vramcalc.specs import EstimateRequest


def test_nearest_rank_by_hand() -> None:
    ten = [float(v) for v in range(10, 0, -1)]  # 1..10, unsorted
    assert nearest_rank(ten, 0.9) == 9.0  # ceil(0.9 * 10) = 9th smallest
    assert nearest_rank([3.0, 1.0, 2.0, 5.0, 4.0], 0.9) == 5.0  # ceil(4.5) = 5th
    assert nearest_rank([7.0], 0.9) == 7.0
    assert nearest_rank(ten, 0.5) == 5.0
    with pytest.raises(ValueError):
        nearest_rank([], 0.9)


def test_summarize_by_hand() -> None:
    s = summarize({"a": -20.0, "b": 5.0, "c": 10.0, "d": -2.0})
    assert s is not None
    assert s.n == 4
    assert s.median_abs_pct == pytest.approx(7.5)  # |.| = 2, 5, 10, 20 -> (5 + 10) / 2
    assert s.p90_abs_pct == pytest.approx(20.0)  # ceil(3.6) = 4th smallest
    assert s.max_abs_pct == pytest.approx(20.0)
    assert (s.worst_under_id, s.worst_under_pct) == ("a", -20.0)
    over = summarize({"x": 1.0})
    assert over is not None and over.worst_under_id is None
    assert summarize({}) is None


def _case(cid: str, confidence: str, measured: int, *, request: bool = True) -> PublishedCase:
    return PublishedCase(
        id=cid, group="g", model="m", confidence=confidence,  # type: ignore[arg-type]
        metric="allocated", metric_text="max_memory_allocated", measured_bytes=measured,
        unit="B", gpu=None, gpu_text="", request=EstimateRequest(model="gpt2") if request else None,
        reason=None if request else "because",
    )  # fmt: skip


def test_summary_counts_only_high_and_medium_predicted_cases() -> None:
    rows = [
        PublishedRow(_case("hi", "high", 100), 110, "2/backward"),  # +10 %
        PublishedRow(_case("med", "medium", 200), 150, "2/backward"),  # -25 %
        PublishedRow(_case("low", "low", 100), 300, "2/backward"),  # +200 %, not counted
        PublishedRow(_case("none", "high", 100, request=False), None, None),
        PublishedRow(_case("refused", "high", 100), None, None, engine_error="no"),
    ]
    assert [r.counted for r in rows] == [True, True, False, False, False]
    s = published_summary(rows)
    assert s is not None and s.n == 2
    assert s.median_abs_pct == pytest.approx(17.5)
    assert s.worst_under_id == "med" and s.worst_under_pct == pytest.approx(-25.0)


def test_replace_block() -> None:
    text = f"# T\n\nintro\n{BEGIN}\nold\n{END}\ntail\n"
    new = replace_block(text, "\nnew table\n")
    assert new == f"# T\n\nintro\n{BEGIN}\nnew table\n{END}\ntail\n"
    assert replace_block("# no markers\n", "x") is None
    assert replace_block(f"{END}\n{BEGIN}\n", "x") is None


def test_published_inference_rows_run_from_the_cli() -> None:
    """Every published generation row is a ``vramcalc`` command giving the engine's figure."""
    from validation.accuracy import published_cli_rows, published_rows
    from validation.published import load_cases

    cases = [c for c in load_cases() if c.request is not None and c.request.task == "inference"]
    assert len(cases) >= 6  # LitGPT's resource tables: six generation rows
    cli_rows = published_cli_rows(cases)
    assert [c.id for c, _, _ in cli_rows] == [c.id for c in cases]
    api = {r.case.id: r.predicted_bytes for r in published_rows(cases)}
    for case, args, got in cli_rows:
        assert case.request is not None
        assert args[:3] == [case.request.model, "--task", "infer"]
        assert got == api[case.id], case.id
