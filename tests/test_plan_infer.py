"""The serving planner (``vramcalc plan --task infer``, issue 12).

Every check re-derives what it asserts from the engine (``vramcalc.estimate`` on the
candidate's own request), the GPU catalog (prices, bandwidth) or the model's published shape,
never from the planner's output.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vramcalc
from vramcalc import cli
from vramcalc.plan import PlanCandidate, PlanReport, plan

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True)
GPUS = {g["name"]: g for g in json.loads((ROOT / "vramcalc/data/gpus.json").read_text())["gpus"]}
SOME_GPUS = ("t4", "rtx-4090", "l40s", "a100-80gb", "h100-sxm")
GIB = 2**30


@cache
def _plan(**kw: object) -> PlanReport:
    return plan(task="infer", **kw)


def _fits(rep: vramcalc.MemoryReport, headroom_gib: float, c: PlanCandidate) -> bool:
    assert rep.fit is not None
    if rep.serving is not None:  # vLLM: the KV pool holds the sequences, headroom left over
        sv = rep.serving
        per_seq = -(-sv.request_len // sv.block_size)
        spare = (sv.kv_blocks - (sv.concurrency or 0) * per_seq) * sv.block_size
        return rep.fit.fits and sv.fits and spare * sv.kv_bytes_per_token >= headroom_gib * GIB
    return rep.peak.device_bytes <= c.gpu_memory_bytes - headroom_gib * GIB


def _check_entry(c: PlanCandidate, concurrency: int, headroom_gib: float) -> None:
    rep = vramcalc.estimate(**c.request)
    assert rep.peak.device_bytes == c.peak_device_bytes
    assert _fits(rep, headroom_gib, c)
    assert c.replicas is not None and c.tp is not None
    # the replicas hold every sequence; the price is GPUs x the catalog's hourly price
    seqs = c.request.get("batch_size") or c.request.get("concurrency")
    assert seqs == c.micro_batch and seqs * c.replicas >= concurrency
    assert c.n_gpus == c.tp * c.replicas == c.request.get("gpus", 1) * c.replicas
    assert c.usd_per_hour == pytest.approx(c.n_gpus * GPUS[c.gpu]["price_usd_per_gpu_hour"])


def _check_largest(c: PlanCandidate, headroom_gib: float) -> None:
    """One sequence more than the replica's stated capacity does not fit (engine)."""
    assert c.max_concurrency is not None
    more = c.max_concurrency + 1
    key = "batch_size" if c.engine == "hf" else "concurrency"
    if c.engine == "hf" and c.max_concurrency >= c.global_batch:
        return  # capped at the workload's concurrency
    rep = vramcalc.estimate(**{**c.request, key: more})
    assert not _fits(rep, headroom_gib, c)


def _dominated(c: PlanCandidate, others: list[PlanCandidate]) -> bool:
    for o in others:
        assert o.usd_per_hour is not None and c.usd_per_hour is not None
        o_t, c_t = o.tokens_per_s or 0, c.tokens_per_s or 0
        if (
            o.usd_per_hour <= c.usd_per_hour
            and o_t >= c_t
            and (o.usd_per_hour < c.usd_per_hour or o_t > c_t)
        ):
            return True
    return False


@SETTINGS
@given(
    model=st.sampled_from(("qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-7b")),
    prompt=st.sampled_from((512, 4096)),
    concurrency=st.sampled_from((1, 8, 48)),
    gpus=st.lists(st.sampled_from(SOME_GPUS), min_size=1, max_size=3, unique=True),
    weights=st.sampled_from(("auto", "auto,awq", "nf4,fp8")),
    max_gpus=st.sampled_from((1, 4, 16)),
    headroom=st.sampled_from((0.0, 2.0)),
)
def test_entries_fit_and_front_is_not_dominated(
    model: str,
    prompt: int,
    concurrency: int,
    gpus: list[str],
    weights: str,
    max_gpus: int,
    headroom: float,
) -> None:
    r = plan(
        model=model,
        task="infer",
        prompt_len=prompt,
        new_tokens=128,
        concurrency=concurrency,
        gpus_from=",".join(gpus),
        weights=weights,
        max_gpus=max_gpus,
        min_headroom=headroom,
    )
    ok = [c for c in r.candidates if c.status == "ok"]
    assert all(c.n_gpus <= max_gpus and c.gpu in gpus for c in r.candidates)
    sample = r.front + ok[:: max(len(ok) // 4, 1)]
    for c in sample:
        _check_entry(c, concurrency, headroom)
    for c in sample[:4]:
        _check_largest(c, headroom)
    assert all(not _dominated(c, ok) for c in r.front)
    for c in ok:
        if not c.pareto:
            assert _dominated(c, r.front) or any(
                (f.usd_per_hour, f.tokens_per_s) == (c.usd_per_hour, c.tokens_per_s)
                for f in r.front
            )
    if ok:
        assert r.cheapest is not None and r.fastest is not None
        assert r.cheapest.usd_per_hour == min(c.usd_per_hour or 0 for c in ok)
        assert r.fastest.tokens_per_s == max(c.tokens_per_s or 0 for c in ok)
    # candidates that do not fit say why
    assert all(c.reason for c in r.candidates if c.status != "ok")


@SETTINGS
@given(fraction=st.floats(min_value=0.0, max_value=3.0))
def test_tighter_budget_never_costs_more(fraction: float) -> None:
    kw = {"model": "qwen2.5-7b", "prompt_len": 4096, "new_tokens": 256, "concurrency": 16,
          "gpus_from": ",".join(SOME_GPUS), "max_gpus": 8}  # fmt: skip
    loose = _plan(**kw)
    assert loose.fastest is not None and loose.fastest.usd_per_hour is not None
    budget = loose.fastest.usd_per_hour * fraction
    tight = plan(task="infer", **kw, max_usd_per_hour=budget)  # type: ignore[arg-type]
    assert all((c.usd_per_hour or 0) <= budget for c in tight.candidates if c.status == "ok")
    if tight.fastest is None:
        assert loose.cheapest is not None and budget < (loose.cheapest.usd_per_hour or 0)
    else:
        assert loose.cheapest is not None and tight.cheapest is not None
        assert (tight.fastest.usd_per_hour or 0) <= (loose.fastest.usd_per_hour or 0)
        assert tight.cheapest.usd_per_hour == loose.cheapest.usd_per_hour


def test_throughput_proxy_by_hand() -> None:
    """Qwen2.5-7B on one H100 SXM under vLLM: the memory roofline of one decode step.

    Hand derivation from the model card (7.62 B parameters, bf16) and config.json (28 layers,
    4 KV heads of 128): weights ~ 7.62e9 x 2 B; K and V per token 2 x 28 x 4 x 128 x 2 B =
    57,344 B; mean cached length while decoding 4096 + 256/2; H100 SXM 3,350 GB/s (datasheet).
    """
    r = _plan(model="qwen2.5-7b", prompt_len=4096, new_tokens=256, concurrency=16,
              gpus_from="h100-sxm", engines=("vllm",), max_gpus=1)  # fmt: skip
    (c,) = [c for c in r.candidates if c.status == "ok"]
    step_bytes = 7.62e9 * 2 + 16 * (4096 + 128) * 57_344
    assert c.tokens_per_s == pytest.approx(16 * 3350e9 / step_bytes, rel=0.01)
    assert c.usd_per_mtok == pytest.approx(
        GPUS["h100-sxm"]["price_usd_per_gpu_hour"] / (c.tokens_per_s * 3600) * 1e6, rel=1e-3
    )


def test_no_gpu_fits_says_why() -> None:
    r = _plan(model="llama-3.1-70b", prompt_len=1024, new_tokens=64, concurrency=1,
              gpus_from="t4", max_gpus=1)  # fmt: skip
    assert not r.front and r.cheapest is None
    assert all(c.status == "no_fit" and "GiB" in c.reason for c in r.candidates)
    assert any("nothing fits" in e for e in r.excluded)
    assert any("t4" in e and "do not fit" in e for e in r.excluded)


# ----------------------------------------------------------------------------- CLI and API

EXAMPLE = ["plan", "qwen2.5-7b", "--task", "infer", "--prompt-len", "8192", "--new-tokens",
           "1024", "--concurrency", "32"]  # fmt: skip


def test_issue_example_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run([*EXAMPLE, "--gpus-from", "l4,l40s,a100-80gb,h100-sxm"]) == 0
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "price-vs-throughput" in text and "\n$ " in text
    # 8192 + 1024 tokens x 32 sequences of KV cache (Qwen2.5-7B: 57,344 B/token in bf16) is
    # 16.6 GB on top of 15.2 GB of weights: one 24 GB L4 cannot hold it
    one_l4 = [line for line in text.splitlines() if "1x l4 " in line]
    assert not one_l4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tokens", "5"], "--tokens"),
        (["--engine", "hf,sglang"], "--engine"),
        (["--weights", "int3"], "--weights"),
        (["--kv-dtype", "fp8", "--engine", "hf"], "--kv-dtype fp8"),
        (["--concurrency", "0"], "--concurrency"),
        (["--max-usd-per-hour", "-1"], "--max-usd-per-hour"),
    ],
)
def test_cli_bad_inputs_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert cli.run(["plan", "qwen2.5-0.5b", "--task", "infer", "--prompt-len", "64", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_cli_needs_prompt_len_and_refuses_serving_options_for_training(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.run(["plan", "qwen2.5-0.5b", "--task", "infer"]) == 2
    assert "--prompt-len" in capsys.readouterr().err
    assert cli.run(["plan", "qwen2.5-0.5b", "--tokens", "9", "--concurrency", "4"]) == 2
    assert "--concurrency" in capsys.readouterr().err


def test_json_and_api_agree(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("fastapi")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    args = ["qwen2.5-0.5b", "--task", "infer", "--prompt-len", "2048", "--new-tokens", "256"]
    args += ["--concurrency", "8", "--gpus-from", "t4,l4", "--max-gpus", "4", "--weights",
             "auto,awq"]  # fmt: skip
    assert cli.run(["plan", *args, "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    body = {
        "model": "qwen2.5-0.5b",
        "task": "infer",
        "prompt_len": 2048,
        "new_tokens": 256,
        "concurrency": 8,
        "gpus_from": ["t4", "l4"],
        "max_gpus": 4,
        "weights": ["auto", "awq"],
    }
    with TestClient(create_app(Settings())) as client:
        resp = client.post("/v1/plan", json=body)
        assert resp.status_code == 200, resp.text
        from_api = resp.json()
        bad = client.post("/v1/plan", json={**body, "engines": ["tgi"]})
        assert bad.status_code == 422
        train_opt = client.post("/v1/plan", json={**body, "tokens": 5})
        assert train_opt.status_code == 422 and "tokens" in train_opt.text
        missing = client.post("/v1/plan", json={k: v for k, v in body.items() if k != "prompt_len"})
        assert missing.status_code == 422
    for d in (from_cli, from_api):
        d.pop("stats")
    assert from_cli == from_api
    assert from_cli["task"] == "inference" and from_cli["candidates"]
    assert all(c["tokens_per_s"] for c in from_cli["candidates"] if c["status"] == "ok")


def test_context_beyond_the_model_is_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    # GPT-2's config.json: n_positions 1024
    assert cli.run(["plan", "gpt2", "--task", "infer", "--prompt-len", "1000", "--new-tokens",
                    "100"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "1024" in err and "1100" in err


def test_repeated_choices_count_once() -> None:
    r = _plan(model="qwen2.5-0.5b", prompt_len=256, new_tokens=16, concurrency=2,
              gpus_from="t4", engines=("vllm", "vllm"), weights=("auto", "auto"),
              max_gpus=1)  # fmt: skip
    assert len(r.candidates) == 1
