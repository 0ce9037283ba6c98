"""The real server: ``api.serve.serve`` runs uvicorn in a subprocess on a loopback port."""

from __future__ import annotations

import httpx
import pytest

import vramcalc
from vramcalc.specs import EstimateRequest

ENGINE_READY = hasattr(vramcalc, "estimate")


def test_health_catalogs_and_errors_over_http(live_server: str) -> None:
    with httpx.Client(base_url=live_server, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok", "version": vramcalc.__version__}
        assert http.get("/v1/models", params={"q": "gpt2"}).json()[0]["name"] == "gpt2"
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert http.get("/static/app.js").status_code == 200
        assert "SwaggerUIBundle" in http.get("/docs").text
        r = http.post("/v1/estimate", json={"model": "/etc/passwd"})
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/json"
        r = http.post(
            "/v1/estimate",
            content=b"x" * (300 * 1024),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413


@pytest.mark.skipif(not ENGINE_READY, reason="vramcalc.estimate (engine.py) not written yet")
def test_estimate_over_http_equals_python_api(live_server: str) -> None:
    body = {"model": "gpt2-medium", "batch_size": 2, "seq_len": 256, "lora": {"r": 16}, "gpu": "t4"}
    expected = vramcalc.estimate(EstimateRequest.model_validate(body))
    with httpx.Client(base_url=live_server, timeout=10) as http:
        r = http.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == expected.model_dump(mode="json")
