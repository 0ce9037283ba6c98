"""REST: the parallel-layout fields of issue 8, their rules, and ``accelerate_config``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from _api_stub import StubEngine
from fastapi.testclient import TestClient

from vramcalc import engine

DATA = Path(__file__).resolve().parents[1] / "data" / "accelerate"
_RESOLVE_APPLIES = "apply_accelerate" in inspect.getsource(engine)
needs_apply = pytest.mark.skipif(
    not _RESOLVE_APPLIES, reason="engine.resolve does not call apply_accelerate yet"
)


def test_layout_fields_reach_the_engine(stub_client: TestClient, stub_engine: StubEngine) -> None:
    body = {
        "model": "gpt2",
        "gpus": 8,
        "nodes": 2,
        "fsdp": "hybrid_shard",
        "fsdp_version": 1,
        "fsdp_offload": True,
        "fsdp_reshard_after_forward": False,
        "fsdp_use_orig_params": False,
        "fsdp_limit_all_gathers": False,
        "fsdp_backward_prefetch": "backward_post",
        "tp": 2,
        "sequence_parallel": True,
        "cp": 2,
        "pp": 2,
        "pp_schedule": "interleaved",
        "pp_virtual_stages": 4,
        "ep": 2,
    }
    r = stub_client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    (seen,) = stub_engine.seen
    for key, value in body.items():
        got = getattr(seen, key)
        assert getattr(got, "value", got) == value, key


@pytest.mark.parametrize(
    ("body", "must_name"),
    [
        ({"fsdp": "full_shard", "zero": 2}, ["fsdp full_shard", "zero 2"]),
        ({"fsdp": "full_shard", "deepspeed": {"zero_optimization": {"stage": 3}}},
         ["fsdp full_shard", "deepspeed"]),
        ({"fsdp_offload": True}, ["fsdp_offload true", "fsdp is not set"]),
        ({"fsdp": "full_shard", "fsdp_use_orig_params": False},
         ["fsdp_use_orig_params false", "fsdp_version 1"]),
        ({"sequence_parallel": True, "tp": 1}, ["sequence_parallel true", "tp is 1"]),
        ({"pp": 2, "pp_virtual_stages": 4}, ["pp_virtual_stages 4", "pp_schedule is 1f1b"]),
    ],
)  # fmt: skip
def test_layout_rules_are_422_with_the_message(
    stub_client: TestClient, stub_engine: StubEngine, body: dict[str, Any], must_name: list[str]
) -> None:
    r = stub_client.post("/v1/estimate", json={"model": "gpt2", **body})
    assert r.status_code == 422
    (issue,) = r.json()["detail"]
    for text in must_name:
        assert text in issue["msg"], (text, issue)
    assert stub_engine.seen == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"fsdp": "ful_shard"}, ["body", "fsdp"]),
        ({"fsdp_version": 3}, ["body", "fsdp_version"]),
        ({"fsdp_backward_prefetch": "sometimes"}, ["body", "fsdp_backward_prefetch"]),
        ({"pp_schedule": "gpipe"}, ["body", "pp_schedule"]),
        ({"tp": 0}, ["body", "tp"]),
        ({"accelerate_config": "fsdp.yaml"}, ["body", "accelerate_config"]),
    ],
)
def test_bad_layout_values_are_422(
    stub_client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    r = stub_client.post("/v1/estimate", json={"model": "gpt2", **body})
    assert r.status_code == 422
    assert [issue["loc"] for issue in r.json()["detail"]] == [loc]


def test_accelerate_config_is_capped_like_deepspeed(stub_client: TestClient) -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(12):
        node["x"] = {}
        node = node["x"]
    r = stub_client.post("/v1/estimate", json={"model": "gpt2", "accelerate_config": deep})
    assert r.status_code == 422 and "nested deeper" in r.json()["detail"]


def test_layout_request_with_the_real_engine(app_client: TestClient) -> None:
    body = {"model": "gpt2", "gpus": 8, "fsdp": "full_shard", "mixed_precision": "bf16"}
    r = app_client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert "layout" in report
    if report["layout"] is not None:  # filled once the engine models layouts
        layout = report["layout"]
        assert layout["world_size"] == 8 and layout["engine"] == "fsdp2"
        assert isinstance(layout["summary"], str) and "\n" not in layout["summary"]


@needs_apply
def test_accelerate_config_over_rest(app_client: TestClient) -> None:
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((DATA / "fsdp2.yaml").read_text())
    r = app_client.post("/v1/estimate", json={"model": "gpt2", "accelerate_config": cfg})
    assert r.status_code == 200, r.text
    r = app_client.post("/v1/estimate", json={"model": "gpt2", "gpus": 4, "accelerate_config": cfg})
    assert r.status_code == 422
    assert "num_processes 8" in r.json()["detail"] and "gpus 4" in r.json()["detail"]


@needs_apply
def test_rest_never_opens_a_deepspeed_config_file(app_client: TestClient) -> None:
    cfg = {
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": "/etc/passwd"},
    }
    r = app_client.post("/v1/estimate", json={"model": "gpt2", "accelerate_config": cfg})
    assert r.status_code == 422
    assert "send its contents as 'deepspeed'" in r.json()["detail"]
