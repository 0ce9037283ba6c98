"""HTTP layer tests with FastAPI's TestClient; the engine is replaced by a stub.

What is checked here is the service's own behaviour: routing, request validation, refusal
of non-catalog model strings, limits, error mapping, catalogs, docs and page assets.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from _api_stub import StubEngine
from fastapi.testclient import TestClient

from api.app import STATIC_DIR, create_app
from api.deps import get_engine
from api.middleware import ACCESS_LOGGER
from api.routes import ENGINE_LOGGER
from api.settings import Settings, get_settings
from vramcalc import catalog
from vramcalc.errors import InvalidConfigError, UnknownNameError
from vramcalc.specs import EstimateRequest, LoraOptions

GPT2_CONFIG = {
    "model_type": "gpt2",
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "vocab_size": 50257,
    "n_positions": 1024,
}


def test_healthz(stub_client: TestClient) -> None:
    r = stub_client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_estimate_body_uses_cli_option_names(
    stub_client: TestClient, stub_engine: StubEngine
) -> None:
    body = {
        "model": "gpt2-medium",
        "batch_size": 4,
        "seq_len": 1024,
        "optim": "adamw_8bit",
        "mixed_precision": "bf16",
        "grad_ckpt": True,
        "zero": 2,
        "gpus": 8,
        "lora": {"r": 16, "targets": "c_attn"},
        "gpu": "a10g",
    }
    r = stub_client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    assert stub_engine.seen == [EstimateRequest.model_validate(body)]
    seen = stub_engine.seen[0]
    assert seen.lora == LoraOptions(r=16, targets=("c_attn",))
    # the body is the engine's report, serialized as the CLI's --json does
    expected = stub_engine.report(seen)
    assert r.json() == json.loads(expected.model_dump_json())
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2-medium", "LLAMA-2-7B"])
def test_catalog_names_and_aliases_are_accepted(stub_client: TestClient, name: str) -> None:
    assert stub_client.post("/v1/estimate", json={"model": name}).status_code == 200


def test_unknown_model_is_404_with_closest_match(
    stub_client: TestClient, stub_engine: StubEngine
) -> None:
    r = stub_client.post("/v1/estimate", json={"model": "gpt2-medum"})
    assert r.status_code == 404
    body = r.json()
    assert "unknown model 'gpt2-medum'" in body["detail"]
    assert body["closest"] == "gpt2-medium"
    assert "gpt2-medium" in body["accepted"]
    assert stub_engine.seen == []


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "./config.json", "../vramcalc/data/models.json", "~/.cache", "vramcalc/data"],
)
def test_model_paths_are_never_opened(
    stub_client: TestClient, stub_engine: StubEngine, path: str, tmp_path: Path
) -> None:
    r = stub_client.post("/v1/estimate", json={"model": path})
    assert r.status_code == 404
    assert stub_engine.seen == []


def test_inline_config_reaches_engine(stub_client: TestClient, stub_engine: StubEngine) -> None:
    r = stub_client.post("/v1/estimate", json={"model": GPT2_CONFIG, "batch_size": 2})
    assert r.status_code == 200, r.text
    assert stub_engine.seen[0].model == GPT2_CONFIG


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_layer", 100_000),
        ("num_hidden_layers", 5000),
        ("n_embd", 10**7),
        ("vocab_size", 10**9),
        ("num_local_experts", 4096),
        ("intermediate_size", 10**8),
        ("some_other_int", 2**60),
    ],
)
def test_inline_config_caps(
    stub_client: TestClient, stub_engine: StubEngine, key: str, value: int
) -> None:
    r = stub_client.post("/v1/estimate", json={"model": {**GPT2_CONFIG, key: value}})
    assert r.status_code == 422
    assert "is above the limit of" in r.json()["detail"]
    assert stub_engine.seen == []


def test_caps_come_from_settings_dependency(stub_engine: StubEngine) -> None:
    app = create_app()
    app.dependency_overrides[get_engine] = lambda: stub_engine
    app.dependency_overrides[get_settings] = lambda: Settings(max_layers=8)
    client = TestClient(app)
    r = client.post("/v1/estimate", json={"model": GPT2_CONFIG})  # 12 layers
    assert r.status_code == 422
    assert "limit of 8" in r.json()["detail"]
    app.dependency_overrides[get_settings] = lambda: Settings(max_layers=12)
    assert client.post("/v1/estimate", json={"model": GPT2_CONFIG}).status_code == 200


def test_inline_config_depth_and_key_count(stub_client: TestClient) -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(12):
        deep = {"x": deep}
    r = stub_client.post("/v1/estimate", json={"model": {**GPT2_CONFIG, "nested": deep}})
    assert r.status_code == 422
    wide = {**GPT2_CONFIG, **{f"k{i}": i for i in range(2000)}}
    r = stub_client.post("/v1/estimate", json={"model": wide})
    assert r.status_code == 422
    assert "too many keys" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"model": "gpt2", "batch_size": 0}, ["body", "batch_size"]),
        ({"model": "gpt2", "seq_len": -5}, ["body", "seq_len"]),
        ({"model": "gpt2", "gpus": 10**9}, ["body", "gpus"]),
        ({"model": "gpt2", "dtype": "fp64"}, ["body", "dtype"]),
        ({"model": "gpt2", "zero": 4}, ["body", "zero"]),
        ({"model": "gpt2", "batch-size": 2}, ["body", "batch-size"]),
        ({"model": "gpt2", "lora": {"r": 16, "rank": 4}}, ["body", "lora", "rank"]),
        ({"batch_size": 2}, ["body", "model"]),
    ],
)
def test_validation_errors_are_422_without_echo(
    stub_client: TestClient, stub_engine: StubEngine, body: dict[str, object], loc: list[object]
) -> None:
    r = stub_client.post("/v1/estimate", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [issue["loc"] for issue in detail] == [loc]
    assert set(detail[0]) == {"loc", "msg", "type"}
    assert stub_engine.seen == []


def test_two_peft_methods_are_refused(stub_client: TestClient) -> None:
    r = stub_client.post("/v1/estimate", json={"model": "gpt2", "lora": {"r": 8}, "ia3": True})
    assert r.status_code == 422
    assert "choose one PEFT method" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("body", [b'{"model": "gpt2",', b"not json", b'{"model": "gpt2"}}'])
def test_malformed_json_is_400_as_documented(
    stub_client: TestClient, stub_engine: StubEngine, body: bytes
) -> None:
    r = stub_client.post("/v1/estimate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("request body is not valid JSON")
    doc = stub_client.get("/openapi.json").json()["paths"]["/v1/estimate"]["post"]
    assert "400" in doc["responses"]
    assert stub_engine.seen == []


def test_body_size_cap_by_content_length(stub_engine: StubEngine) -> None:
    app = create_app(Settings(max_body_bytes=1000))
    app.dependency_overrides[get_engine] = lambda: stub_engine
    client = TestClient(app)
    big = {"model": {**GPT2_CONFIG, "padding": "x" * 2000}}
    r = client.post("/v1/estimate", json=big)
    assert r.status_code == 413
    assert "1000 bytes" in r.json()["detail"]
    assert client.post("/v1/estimate", json={"model": "gpt2"}).status_code == 200
    assert stub_engine.seen[0].model == "gpt2"


def test_body_size_cap_when_streamed(stub_engine: StubEngine) -> None:
    app = create_app(Settings(max_body_bytes=1000))
    app.dependency_overrides[get_engine] = lambda: stub_engine
    client = TestClient(app)

    def chunks():  # no Content-Length: sent chunked
        yield b'{"model": {"model_type": "gpt2", "pad": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}}'

    r = client.post("/v1/estimate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert stub_engine.seen == []


def test_engine_errors_map_to_4xx(stub_client: TestClient, stub_engine: StubEngine) -> None:
    def bad_config(request: EstimateRequest) -> None:
        raise InvalidConfigError("--offload-param needs ZeRO stage 3; accepted: zero=3")

    def bad_gpu(request: EstimateRequest) -> None:
        raise UnknownNameError("GPU", "a100-90", ["a100-40gb", "a100-80gb"])

    stub_engine.estimate = bad_config  # type: ignore[method-assign,assignment]
    r = stub_client.post("/v1/estimate", json={"model": "gpt2"})
    assert (r.status_code, r.json()["detail"]) == (
        422,
        "--offload-param needs ZeRO stage 3; accepted: zero=3",
    )
    stub_engine.estimate = bad_gpu  # type: ignore[method-assign,assignment]
    r = stub_client.post("/v1/estimate", json={"model": "gpt2"})
    assert r.status_code == 404
    assert r.json()["closest"] in {"a100-40gb", "a100-80gb"}


def test_fit_needs_a_gpu(stub_client: TestClient, stub_engine: StubEngine) -> None:
    r = stub_client.post("/v1/fit", json={"model": "gpt2"})
    assert r.status_code == 422
    assert "needs 'gpu'" in r.json()["detail"]
    r = stub_client.post("/v1/fit", json={"model": "gpt2", "gpu": "t4"})
    assert r.status_code == 200
    assert r.json()["max_batch_size"] == 8


def test_models_search(stub_client: TestClient) -> None:
    r = stub_client.get("/v1/models", params={"q": "gpt2-medium"})
    assert r.status_code == 200
    rows = r.json()
    assert rows[0]["name"] == "gpt2-medium"
    r = stub_client.get("/v1/models", params={"q": "llama"})
    names = [row["name"] for row in r.json()]
    assert names and all(
        "llama" in n.lower()
        or "llama" in " ".join(row["aliases"]).lower()
        or "llama" in (row["hf_id"] or "").lower()
        for n, row in zip(names, r.json(), strict=True)
    )
    assert "llama-2-7b" in names
    # squashed typing finds it too
    assert "llama-2-7b" in [row["name"] for row in stub_client.get("/v1/models?q=llama27b").json()]
    assert stub_client.get("/v1/models?q=zzzzzz").json() == []
    assert len(stub_client.get("/v1/models?limit=3").json()) == 3
    assert stub_client.get("/v1/models", params={"q": "x" * 500}).status_code == 422
    assert stub_client.get("/v1/models?limit=0").status_code == 422


def test_models_list_covers_catalog(stub_client: TestClient) -> None:
    rows = stub_client.get("/v1/models?limit=10000").json()
    expected = catalog.model_rows()
    assert len(rows) == min(len(expected), Settings().max_search_results)
    assert rows[0]["n_params"] == expected[0]["n_params"]


def test_model_detail_by_hf_id(stub_client: TestClient) -> None:
    r = stub_client.get("/v1/models/openai-community/gpt2-medium")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "gpt2-medium"
    # GPT-2 medium: 24 layers, width 1024, 16 heads (Radford et al. 2019, Table 2)
    assert body["spec"]["num_hidden_layers"] == 24
    assert body["spec"]["hidden_size"] == 1024
    assert body["spec"]["num_attention_heads"] == 16
    r = stub_client.get("/v1/models/gpt2-mediun")
    assert r.status_code == 404
    assert r.json()["closest"] == "gpt2-medium"


def test_gpus(stub_client: TestClient) -> None:
    rows = stub_client.get("/v1/gpus").json()
    assert len(rows) == len(catalog.gpus())
    names = {row["name"] for row in rows}
    assert {g.name for g in catalog.gpus()} == names
    assert all(row["memory_bytes"] > 2**30 and row["source"] for row in rows)


def test_optimizers(stub_client: TestClient) -> None:
    try:
        names = catalog.optimizer_names()
    except FileNotFoundError:
        pytest.skip("vramcalc/data/optimizers.json not written yet")
    rows = stub_client.get("/v1/optimizers").json()
    assert [row["name"] for row in rows] == names
    by_name = {row["name"]: row for row in rows}
    assert "adamw_torch" in by_name
    assert by_name["adamw_8bit"]["alias_of"] == "adamw_bnb_8bit"


def test_unknown_route_is_json_404(stub_client: TestClient) -> None:
    r = stub_client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}


def test_openapi_and_docs_are_offline(stub_client: TestClient) -> None:
    schema = stub_client.get("/openapi.json").json()
    assert {
        "/v1/estimate",
        "/v1/fit",
        "/v1/models",
        "/v1/gpus",
        "/v1/optimizers",
        "/healthz",
    } <= set(schema["paths"])
    assert schema["paths"]["/v1/estimate"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["$ref"].endswith("/EstimateRequest")
    html = stub_client.get("/docs").text
    assert "SwaggerUIBundle" in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert refs and all(ref.startswith("/") for ref in refs), refs
    for ref in refs:
        assert stub_client.get(ref).status_code == 200, ref


def test_page_has_no_external_assets(stub_client: TestClient) -> None:
    html = stub_client.get("/").text
    assert "<form" in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith(("/", "#")) for ref in refs), refs
    for ref in refs:
        if ref.startswith("/") and not ref.startswith("/docs"):
            assert stub_client.get(ref).status_code == 200, ref
    for asset in STATIC_DIR.iterdir():
        text = asset.read_text("utf-8")
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (asset.name, urls)


def test_every_form_control_has_a_label() -> None:
    html = (STATIC_DIR / "index.html").read_text("utf-8")
    ids = re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html)
    labelled = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
    wrapped = set(re.findall(r'<label class="check"><input id="([^"]+)"', html))
    assert ids and set(ids) <= labelled | wrapped, set(ids) - labelled - wrapped


def test_access_log_is_json(stub_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        stub_client.get("/v1/models?q=gpt2")
        stub_client.post("/v1/estimate", json={"model": "nope"})
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/v1/models", 200),
        ("POST", "/v1/estimate", 404),
    ]
    assert records[0]["query"] == "q=gpt2"
    assert all(r["duration_ms"] >= 0 and r["response_bytes"] > 0 for r in records)


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {"VRAMCALC_API_MAX_LAYERS": "64", "VRAMCALC_API_ACCESS_LOG": "false", "HOME": "/x"}
    )
    assert (s.max_layers, s.access_log) == (64, False)
    with pytest.raises(ValueError, match="unknown setting VRAMCALC_API_MAX_LAYER;"):
        Settings.from_env({"VRAMCALC_API_MAX_LAYER": "64"})
    with pytest.raises(ValueError, match="bad VRAMCALC_API"):
        Settings.from_env({"VRAMCALC_API_MAX_LAYERS": "-1"})


def test_unforeseen_engine_error_is_422_and_logged(
    stub_client: TestClient, stub_engine: StubEngine, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: EstimateRequest) -> None:
        raise KeyError("hidden_size")

    stub_engine.estimate = broken  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.ERROR, logger=ENGINE_LOGGER):
        r = stub_client.post("/v1/estimate", json={"model": "gpt2"})
    assert r.status_code == 422
    assert "KeyError" in r.json()["detail"]
    assert [rec.name for rec in caplog.records] == [ENGINE_LOGGER]
