"""The planner (issue 12): entries fit by the engine, the front is not dominated, budgets.

Every check re-derives what it asserts from the engine or the catalog (``vramcalc.estimate``
on the candidate's own request, ``data/gpus.json`` prices), never from the planner's output.
"""

from __future__ import annotations

import json
import os
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vramcalc
from vramcalc import cli
from vramcalc.plan import PlanCandidate, PlanReport, micro_batches, plan

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)
GPUS = json.loads((ROOT / "vramcalc" / "data" / "gpus.json").read_text())["gpus"]
PRICE = {g["name"]: g["price_usd_per_gpu_hour"] for g in GPUS}
SMALL = ("qwen2.5-0.5b", "llama-3.2-1b", "tinyllama-1.1b")
SOME_GPUS = ("t4", "rtx-4090", "a10g-24gb", "l40s", "a100-80gb", "h100-sxm")


@cache
def _plan(**kw: object) -> PlanReport:
    return plan(**kw)


def _dp(c: PlanCandidate) -> int:
    tp = int(c.request.get("tp", 1))
    pp = int(c.request.get("pp", 1))
    return c.n_gpus // (tp * pp)


def _check_entry(c: PlanCandidate, global_batch: int, min_headroom_gib: float) -> None:
    rep = vramcalc.estimate(**c.request)
    assert rep.fit is not None and rep.cost is not None
    # the planner's peak is the engine's, on that GPU
    assert rep.peak.device_bytes == c.peak_device_bytes
    assert rep.fit.fits
    assert rep.fit.headroom_bytes == c.headroom_bytes
    assert c.headroom_bytes >= min_headroom_gib * 2**30
    assert rep.cost.cost_usd == pytest.approx(c.cost_usd, rel=1e-9)
    assert rep.cost.time_s == pytest.approx(c.time_s, rel=1e-9)
    # cost = hours x GPUs x catalog price
    assert c.time_s is not None
    assert c.cost_usd == pytest.approx(c.time_s / 3600 * c.n_gpus * PRICE[c.gpu], rel=1e-9)
    # the global batch is reached, with at most one micro-step of rounding per rank
    dp = _dp(c)
    assert c.micro_batch * c.grad_accum * dp >= global_batch
    assert (c.micro_batch * (c.grad_accum - 1)) * dp < global_batch or c.grad_accum == 1


def _check_largest(c: PlanCandidate, global_batch: int, min_headroom_gib: float) -> None:
    """The next useful micro-batch (one accumulation step fewer) does not fit."""
    cap = -(-global_batch // _dp(c))
    larger = [b for b in micro_batches(cap) if b > c.micro_batch]
    if not larger:
        return
    b = larger[0]
    ga = -(-cap // b)
    rep = vramcalc.estimate(**{**c.request, "batch_size": b, "grad_accum": ga})
    assert rep.peak.device_bytes > c.gpu_memory_bytes - min_headroom_gib * 2**30


def _dominated(c: PlanCandidate, others: list[PlanCandidate]) -> bool:
    assert c.time_s is not None and c.cost_usd is not None
    for o in others:
        assert o.time_s is not None and o.cost_usd is not None
        if (
            o.time_s <= c.time_s
            and o.cost_usd <= c.cost_usd
            and (o.time_s < c.time_s or o.cost_usd < c.cost_usd)
        ):
            return True
    return False


@SETTINGS
@given(
    model=st.sampled_from(SMALL),
    methods=st.sampled_from(("full", "lora", "qlora", "full,lora", "lora,qlora")),
    global_batch=st.sampled_from((4, 16, 64)),
    seq_len=st.sampled_from((512, 2048)),
    gpus=st.lists(st.sampled_from(SOME_GPUS), min_size=1, max_size=3, unique=True),
    max_gpus=st.sampled_from((1, 4, 16)),
    headroom=st.sampled_from((0.0, 2.0)),
)
def test_entries_fit_and_front_is_not_dominated(
    model: str,
    methods: str,
    global_batch: int,
    seq_len: int,
    gpus: list[str],
    max_gpus: int,
    headroom: float,
) -> None:
    r = plan(
        model=model,
        methods=methods,
        tokens=10**8,
        global_batch=global_batch,
        seq_len=seq_len,
        gpus_from=",".join(gpus),
        max_gpus=max_gpus,
        min_headroom=headroom,
    )
    ok = [c for c in r.candidates if c.status == "ok"]
    assert all(c.n_gpus <= max_gpus and c.gpu in gpus for c in r.candidates)
    # every front entry and a spread of the other fitting ones, checked by the engine
    sample = r.front + ok[:: max(len(ok) // 4, 1)]
    for c in sample:
        _check_entry(c, global_batch, headroom)
    for c in sample[:3]:
        _check_largest(c, global_batch, headroom)
    assert all(not _dominated(c, ok) for c in r.front)
    # every fitting candidate off the front is dominated or ties a front entry
    for c in ok:
        if not c.pareto:
            assert _dominated(c, r.front) or any(
                (f.time_s, f.cost_usd) == (c.time_s, c.cost_usd) for f in r.front
            )
    if ok:
        assert r.cheapest is not None and r.fastest is not None
        assert r.cheapest.cost_usd == min(c.cost_usd or 0 for c in ok)
        assert r.fastest.time_s == min(c.time_s or 0 for c in ok)


@SETTINGS
@given(
    model=st.sampled_from(SMALL),
    fraction=st.floats(min_value=0.0, max_value=2.0),
)
def test_tighter_budget_never_costs_more(model: str, fraction: float) -> None:
    loose = _plan(model=model, methods="full,lora", tokens=10**9, gpus_from=",".join(SOME_GPUS))
    assert loose.cheapest is not None and loose.cheapest.cost_usd is not None
    budget = loose.cheapest.cost_usd * fraction
    tight = plan(
        model=model,
        methods="full,lora",
        tokens=10**9,
        gpus_from=",".join(SOME_GPUS),
        max_usd=budget,
    )
    if tight.cheapest is None:
        assert budget < loose.cheapest.cost_usd
        assert any("max-usd" in line or "over budget" in line for line in tight.excluded)
    else:
        assert tight.cheapest.cost_usd is not None
        assert tight.cheapest.cost_usd <= loose.cheapest.cost_usd
        assert tight.cheapest.cost_usd <= budget
    assert all((c.cost_usd or 0) <= budget for c in tight.candidates if c.status == "ok")


def test_max_hours_and_max_gpus_are_honoured() -> None:
    r = plan(model="llama-3.2-1b", methods="full", tokens=10**9, max_gpus=8, max_hours=2)
    assert all(c.n_gpus <= 8 for c in r.candidates)
    for c in r.candidates:
        if c.status == "ok":
            assert c.time_s is not None and c.time_s <= 2 * 3600
        if c.status == "over_budget":
            assert c.time_s is not None and c.time_s > 2 * 3600


def test_70b_does_not_fit_one_24gb_gpu_and_tp_only_when_needed() -> None:
    # 70B parameters in bf16 are 140 GB: no layout of one 24 GB card holds them, and
    # tensor/pipeline parallelism is only tried for GPU types on which nothing else fits.
    r = _plan(model="llama-3.1-70b", methods="lora", tokens=10**8, gpus_from="rtx-4090,h200")
    single = [c for c in r.candidates if c.gpu == "rtx-4090" and c.n_gpus == 1]
    assert single and all(c.status == "no_fit" for c in single)
    fit_types = {c.gpu for c in r.candidates if c.status == "ok" and "+" not in c.layout}
    assert not any("+tp" in c.layout and c.gpu in fit_types for c in r.candidates)


# ----------------------------------------------------------------------------- CLI and API

GOLDEN_ARGS = [
    "plan",
    "llama-3.1-70b",
    "--methods",
    "lora,qlora",
    "--tokens",
    "200000000",
    "--global-batch",
    "64",
]


def test_cli_golden_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(GOLDEN_ARGS) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    path = GOLDEN / "plan_llama31_70b_lora_qlora.txt"
    if os.environ.get("VRAMCALC_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    # facts independent of the snapshot: the marked rows' cost is hours x GPUs x price
    assert cli.run([*GOLDEN_ARGS, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for c in (data["cheapest"], data["fastest"]):
        assert c["cost_usd"] == pytest.approx(
            c["time_s"] / 3600 * c["n_gpus"] * PRICE[c["gpu"]], rel=1e-9
        )
        assert f"{c['n_gpus']}x {c['gpu']}" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpus-from", "a100-80gb,h100-sxn"], "Did you mean 'h100-sxm'"),
        (["--max-usd", "-5"], "--max-usd"),
        (["--max-hours", "-1"], "--max-hours"),
        (["--methods", "lora,dora"], "--methods"),
        (["--layouts", "zero4"], "Did you mean 'zero"),
        (["--task", "serve"], "--task"),
    ],
)
def test_cli_bad_inputs_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert cli.run(["plan", "qwen2.5-0.5b", "--tokens", "1000", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_cli_needs_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["plan", "qwen2.5-0.5b"]) == 2
    err = capsys.readouterr().err
    assert "--tokens" in err and len(err.strip().splitlines()) == 1


def test_json_and_api_agree(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    args = ["qwen2.5-0.5b", "--methods", "full,lora", "--tokens", "50000000"]
    args += ["--gpus-from", "t4,a10g-24gb", "--max-gpus", "4"]
    assert cli.run(["plan", *args, "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    body = {
        "model": "qwen2.5-0.5b",
        "methods": ["full", "lora"],
        "tokens": 50_000_000,
        "gpus_from": ["t4", "a10g-24gb"],
        "max_gpus": 4,
    }
    with TestClient(create_app(Settings())) as client:
        resp = client.post("/v1/plan", json=body)
        assert resp.status_code == 200, resp.text
        from_api = resp.json()
        bad = client.post("/v1/plan", json={**body, "gpus_from": ["a100-80gx"]})
        assert bad.status_code == 404 and "a100-80gb" in bad.json()["detail"]
        neg = client.post("/v1/plan", json={**body, "max_usd": -1})
        assert neg.status_code == 422
        missing = client.post("/v1/plan", json={k: v for k, v in body.items() if k != "tokens"})
        assert missing.status_code == 422
    for d in (from_cli, from_api):
        d.pop("stats")
    assert from_cli == from_api
