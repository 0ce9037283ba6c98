"""REST: a trainer's config file as the request's ``config`` text (issue 10)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

DATA = Path(__file__).resolve().parents[1] / "data" / "configs"


def test_rest_takes_the_config_text(app_client: TestClient) -> None:
    text = (DATA / "torchtune_llama3_2_1B_lora_single_device.yaml").read_text("utf-8")
    r = app_client.post("/v1/estimate", json={"config": text, "seq_len": 512})
    assert r.status_code == 200, r.text
    body = r.json()
    notes = " ".join(body["notes"])
    assert "config (torchtune): model._component_ -> model llama-3.2-1b" in notes
    assert "ignored:" in notes
    assert body["model"]["name"] == "llama-3.2-1b"


def test_rest_refuses_a_contradictory_config(app_client: TestClient) -> None:
    text = "base_model: gpt2\nbf16: true\nfp16: true\n"
    r = app_client.post("/v1/estimate", json={"config": text})
    assert r.status_code in (400, 422), r.text
    assert "bf16 and fp16 are both true" in r.text
