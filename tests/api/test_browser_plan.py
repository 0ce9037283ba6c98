"""A real browser uses the planner view: the table and the scatter show what /v1/plan returns.

Same setup as ``test_browser.py`` (Debian's headless chromium through playwright; skipped
where either is missing).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_browser import CHROMIUM, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
    reason="chromium is not installed (CI: apt-get install -y chromium)",
)


def test_planner_table_and_scatter_match_the_api(browser: Any, live_server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/")
    page.fill("#plan-model", "qwen2.5-0.5b")
    page.fill("#plan-gpus", "t4,a100-80gb")
    page.fill("#plan-max-gpus", "4")
    page.fill("#plan-tokens", "50000000")
    page.check("#plan-form input[value=full]")
    page.click("#plan-go")
    page.wait_for_selector("body[data-plan-ready=true]", timeout=60_000)
    body = {
        "model": "qwen2.5-0.5b",
        "tokens": 50_000_000,
        "global_batch": 64,
        "seq_len": 2048,
        "max_gpus": 4,
        "min_headroom": 0,
        "methods": ["full", "lora"],
        "gpus_from": ["t4", "a100-80gb"],
    }
    api = httpx.post(live_server + "/v1/plan", json=body, timeout=60).json()
    ok = [c for c in api["candidates"] if c["status"] == "ok"]
    assert page.locator("#plan-table tbody tr").count() == len(ok)
    assert page.locator("#plan-scatter circle").count() == len(ok)
    assert page.locator("#plan-scatter circle.front").count() == len(api["front"])
    # sorted by cost (the default): the first row is the cheapest
    first = page.locator("#plan-table tbody tr").first.locator("td")
    assert "cheapest" in first.nth(0).inner_text()
    # click "hours" twice: descending time, the slowest first
    page.click("#plan-table th[data-key=time_s]")
    page.click("#plan-table th[data-key=time_s]")
    hours = [
        float(t) for t in page.locator("#plan-table tbody tr td:nth-child(11)").all_inner_texts()
    ]
    assert hours == sorted(hours, reverse=True)
    page.check("#plan-all")
    assert page.locator("#plan-table tbody tr").count() == len(api["candidates"])
    assert not errors


def test_serving_planner_table_and_scatter_match_the_api(browser: Any, live_server: str) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/")
    page.fill("#plan-model", "qwen2.5-0.5b")
    page.select_option("#plan-task", "inference")
    assert page.locator("#plan-prompt-len").is_visible()
    assert not page.locator("#plan-tokens").is_visible()
    page.fill("#plan-gpus", "t4,l4")
    page.fill("#plan-max-gpus", "4")
    page.fill("#plan-prompt-len", "2048")
    page.fill("#plan-new-tokens", "256")
    page.fill("#plan-concurrency", "8")
    page.check("#plan-form input[name=weights][value=awq]")
    page.click("#plan-go")
    page.wait_for_selector("body[data-plan-ready=true]", timeout=60_000)
    body = {
        "model": "qwen2.5-0.5b",
        "task": "inference",
        "prompt_len": 2048,
        "new_tokens": 256,
        "concurrency": 8,
        "max_gpus": 4,
        "min_headroom": 0,
        "engines": ["hf", "vllm"],
        "weights": ["auto", "awq"],
        "gpus_from": ["t4", "l4"],
    }
    api = httpx.post(live_server + "/v1/plan", json=body, timeout=60).json()
    ok = [c for c in api["candidates"] if c["status"] == "ok"]
    assert ok
    assert page.locator("#plan-table tbody tr").count() == len(ok)
    assert page.locator("#plan-scatter circle").count() == len(ok)
    assert page.locator("#plan-scatter circle.front").count() == len(api["front"])
    assert "price-vs-throughput" in page.locator("#plan-summary").inner_text()
    # sorted by price per hour (the serving default): the first row is the cheapest
    first = page.locator("#plan-table tbody tr").first.locator("td")
    assert "cheapest" in first.nth(0).inner_text()
    heads = page.locator("#plan-table th").all_inner_texts()
    col = heads.index("tok/s") + 1
    page.click("#plan-table th[data-key=tokens_per_s]")
    page.click("#plan-table th[data-key=tokens_per_s]")
    tps = [
        float(t.replace(",", ""))
        for t in page.locator(f"#plan-table tbody tr td:nth-child({col})").all_inner_texts()
    ]
    assert tps == sorted(tps, reverse=True)
    assert not errors
