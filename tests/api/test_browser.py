"""A real browser (Debian's headless chromium, driven by playwright) uses the calculator.

It types a model name into the search box, picks the suggestion with the keyboard, sets the
options, submits with Enter, and checks that the peak the page shows is the one the API
returns for the same request; then it opens the shareable URL in a fresh page and checks that
the same result comes back. Set ``VRAMCALC_UPDATE_SCREENSHOT=1`` to refresh
``docs/screenshot.png`` (used by the README).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import vramcalc

CHROMIUM = os.environ.get("VRAMCALC_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
        reason="chromium is not installed (CI: apt-get install -y chromium)",
    ),
    pytest.mark.skipif(
        not hasattr(vramcalc, "estimate"), reason="vramcalc.estimate (engine.py) not written yet"
    ),
]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


def gib_text(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def test_fill_form_and_compare_with_api(browser: Any, live_server: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")

    # search-as-you-type, pick with the keyboard
    page.focus("#model")
    page.keyboard.type("gpt2-med", delay=20)
    page.wait_for_selector("#model-list li[data-name='gpt2-medium']")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    assert page.input_value("#model") == "gpt2-medium"
    assert page.is_hidden("#model-list")

    page.fill("#batch_size", "2")
    page.fill("#seq_len", "1024")
    page.select_option("#optim", "adamw_torch")
    page.select_option("#peft", "lora")
    page.fill("#lora_r", "16")
    page.select_option("#gpu", "t4")
    page.check("#grad_ckpt")
    page.focus("#seq_len")
    page.keyboard.press("Enter")  # Enter submits the form
    page.wait_for_selector("body[data-state=done]")

    expected_request = {
        "model": "gpt2-medium",
        "batch_size": 2,
        "seq_len": 1024,
        "lora": {"r": 16},
        "gpu": "t4",
        "grad_ckpt": True,
    }
    assert page.evaluate("window.vramcalc.buildRequest()") == expected_request
    api = httpx.post(live_server + "/v1/estimate", json=expected_request, timeout=10).json()

    for kind in ("allocated", "reserved", "device"):
        value = page.locator(f"#peak-{kind} .v")
        assert int(value.get_attribute("data-bytes")) == api["peak"][f"{kind}_bytes"]
        assert value.inner_text() == gib_text(api["peak"][f"{kind}_bytes"])
    for component, n_bytes in api["breakdown"].items():
        item = page.locator(f"#legend li[data-component={component}]")
        assert int(item.get_attribute("data-bytes")) == n_bytes
    fit = httpx.post(live_server + "/v1/fit", json=expected_request, timeout=10).json()
    verdict = page.locator("#verdict")
    assert verdict.get_attribute("data-fits") == str(fit["fits"]).lower()
    if fit["max_batch_size"] is not None:
        assert f"Largest micro-batch that fits: {fit['max_batch_size']}." in verdict.inner_text()
    assert page.locator("#timeline svg circle").count() == len(api["timeline"])
    assert page.locator("#timeline svg circle.peak").count() == 1

    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot))
    if os.environ.get("VRAMCALC_UPDATE_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")

    # the URL encodes the configuration: a fresh page shows the same result
    shared = page.url
    assert "model=gpt2-medium" in shared and "lora.r=16" in shared
    page2 = browser.new_page()
    page2.goto(shared)
    page2.wait_for_selector("body[data-state=done]")
    assert (
        int(page2.locator("#peak-device .v").get_attribute("data-bytes"))
        == api["peak"]["device_bytes"]
    )
    assert page2.input_value("#lora_r") == "16"
    assert page2.is_checked("#grad_ckpt")
    assert errors == []
    page.close()
    page2.close()


def test_docs_load_without_network(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(live_server + "/docs")
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() >= 7
    assert [u for u in urls if not u.startswith(live_server)] == []
    page.close()


def test_errors_are_shown(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#model", "gpt2-mediun")
    page.keyboard.press("Escape")
    page.click("#submit")
    page.wait_for_selector("body[data-state=error]")
    assert "Did you mean 'gpt2-medium'" in page.inner_text("#form-error")
    page.close()


def test_example_links_give_results(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    hrefs = [a.get_attribute("href") for a in page.locator(".examples a").all()]
    assert len(hrefs) >= 3
    for href in hrefs:
        page.goto(live_server + href)
        page.wait_for_selector("body[data-state=done], body[data-state=error]")
        assert page.get_attribute("body", "data-state") == "done", (
            href,
            page.inner_text("#form-error"),
        )
        assert page.locator("#peak-device .v").inner_text().endswith("GiB")
    page.close()


def test_layout_controls_send_the_layout_and_show_the_summary(
    browser: Any, live_server: str
) -> None:
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    sent: list[Any] = []
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/estimate") else None,
    )
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#model", "gpt2-medium")
    page.keyboard.press("Escape")
    page.select_option("#mixed_precision", "bf16")
    page.fill("#gpus", "8")
    page.fill("#nodes", "2")
    assert page.is_hidden("#fsdp-opts")
    page.select_option("#fsdp", "full_shard")
    assert page.is_visible("#fsdp-opts") and page.is_hidden("#zero-opts")
    page.select_option("#fsdp_version", "2")
    page.select_option("#fsdp_reshard_after_forward", "false")
    page.check("#fsdp_offload")
    page.fill("#tp", "2")
    page.check("#sequence_parallel")
    page.fill("#pp", "2")
    page.select_option("#pp_schedule", "interleaved")
    page.fill("#pp_virtual_stages", "4")
    page.fill("#cp", "1")
    page.fill("#ep", "1")
    page.click("#submit")
    page.wait_for_selector("body[data-state=done], body[data-state=error]")

    expected = {
        "model": "gpt2-medium",
        "mixed_precision": "bf16",
        "gpus": 8,
        "nodes": 2,
        "fsdp": "full_shard",
        "fsdp_reshard_after_forward": False,
        "fsdp_offload": True,
        "tp": 2,
        "sequence_parallel": True,
        "pp": 2,
        "pp_schedule": "interleaved",
        "pp_virtual_stages": 4,
    }
    assert sent and sent[-1] == expected  # snake_case fields, defaults left out
    api = httpx.post(live_server + "/v1/estimate", json=expected, timeout=10)
    if api.status_code != 200:  # the engine refuses this layout: the page shows its words
        assert page.get_attribute("body", "data-state") == "error"
        detail = api.json()["detail"]
        shown = page.inner_text("#form-error")
        assert (detail if isinstance(detail, str) else detail[0]["msg"]) in shown
    else:
        report = api.json()
        assert page.get_attribute("body", "data-state") == "done", page.inner_text("#form-error")
        line = page.locator("#layout-summary")
        if report.get("layout"):
            assert line.inner_text() == "Layout: " + report["layout"]["summary"]
            assert "\n" not in line.inner_text()
        else:
            assert line.is_hidden()
    # the link keeps the layout
    assert "fsdp=full_shard" in page.url and "sequence_parallel=true" in page.url
    page2 = browser.new_page()
    page2.goto(page.url)
    page2.wait_for_selector("body[data-state=done], body[data-state=error]")
    assert page2.input_value("#fsdp") == "full_shard"
    assert page2.input_value("#fsdp_reshard_after_forward") == "false"
    assert page2.is_checked("#fsdp_offload") and page2.is_checked("#sequence_parallel")
    assert page2.input_value("#tp") == "2" and page2.input_value("#pp_schedule") == "interleaved"
    assert page2.evaluate("window.vramcalc.buildRequest()") == expected
    assert errors == []
    page.close()
    page2.close()


def test_layout_rule_errors_are_shown_as_the_api_words_them(browser: Any, live_server: str) -> None:
    page = browser.new_page()
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#model", "gpt2")
    page.keyboard.press("Escape")
    page.check("#sequence_parallel")  # without tensor parallelism
    page.click("#submit")
    page.wait_for_selector("body[data-state=error]")
    body = {"model": "gpt2", "sequence_parallel": True}
    api = httpx.post(live_server + "/v1/estimate", json=body, timeout=10)
    assert api.status_code == 422
    msg = api.json()["detail"][0]["msg"]
    assert page.inner_text("#form-error") == msg
    assert "sequence_parallel true needs tensor parallelism" in msg
    page.close()
