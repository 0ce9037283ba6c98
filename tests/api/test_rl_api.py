"""GRPO through the REST API (issue 11): the issue's request, answered as the Python API does."""

from __future__ import annotations

from fastapi.testclient import TestClient

import vramcalc

ISSUE = {
    "model": "qwen2.5-7b",
    "trainer": "grpo",
    "num_generations": 8,
    "max_completion_length": 1024,
    "vllm": "colocate",
    "vllm_gpu_memory_utilization": 0.3,
    "lora": {"r": 32},
    "dtype": "bf16",
    "gpu": "h100-80gb",
}


def test_issue_grpo_request(app_client: TestClient) -> None:
    r = app_client.post("/v1/estimate", json=ISSUE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["peak"] == vramcalc.estimate(**ISSUE).model_dump(mode="json")["peak"]
    for key in ("params/policy", "params/vllm_engine", "params/rollout_buffer"):
        assert key in body["details"], key
    phases = {e["phase"] for e in body["timeline"]}
    assert {"generation", "forward", "backward", "optimizer"} <= phases


def test_batch_rule_is_a_4xx(app_client: TestClient) -> None:
    r = app_client.post("/v1/estimate", json={**ISSUE, "batch_size": 3})
    assert 400 <= r.status_code < 500
    assert "divisible by --num-generations 8" in r.text


def test_padded_batch_through_the_api(app_client: TestClient) -> None:
    dpo = {"model": "llama-3.1-8b", "trainer": "dpo", "lora": {"r": 16}, "dtype": "bf16",
           "batch_size": 4, "seq_len": 1024}  # fmt: skip
    padded = app_client.post("/v1/estimate", json=dpo)
    plain = app_client.post("/v1/estimate", json={**dpo, "padded_batch": False})
    assert padded.status_code == plain.status_code == 200, (padded.text, plain.text)
    assert padded.json()["peak"] == vramcalc.estimate(**dpo).model_dump(mode="json")["peak"]
    grew = padded.json()["peak"]["allocated_bytes"] - plain.json()["peak"]["allocated_bytes"]
    assert grew > 0
