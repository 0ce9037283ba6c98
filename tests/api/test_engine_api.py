"""The service with the real engine: same answers as the Python API and the CLI's --json."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import vramcalc
from vramcalc.report import COMPONENTS
from vramcalc.specs import EstimateRequest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not hasattr(vramcalc, "estimate"), reason="vramcalc.estimate (engine.py) not written yet"
)

CASES: list[dict[str, Any]] = [
    {"model": "gpt2-medium"},
    {"model": "gpt2-medium", "optim": "adamw_8bit", "lora": {"r": 16}},
    {
        "model": "llama-2-7b",
        "dtype": "bf16",
        "qlora": {"r": 64, "targets": "all-linear"},
        "grad_ckpt": True,
        "seq_len": 4096,
        "gpu": "rtx-4090",
    },
    {
        "model": "mistral-7b",
        "lora": {"r": 16},
        "gpu": "h100-80gb",
        "tokens": 50_000_000,
        "epochs": 3,
    },
    {
        "model": "qwen2.5-0.5b",
        "zero": 3,
        "offload_optimizer": "cpu",
        "gpus": 8,
        "mixed_precision": "bf16",
    },
]


@pytest.mark.parametrize("body", CASES)
def test_estimate_equals_python_api(app_client: TestClient, body: dict[str, Any]) -> None:
    r = app_client.post("/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == vramcalc.estimate(EstimateRequest.model_validate(body)).model_dump(mode="json")
    # the breakdown at the peak sums to the device peak (report contract)
    assert sum(got["breakdown"][c] for c in COMPONENTS) == got["peak"]["device_bytes"]


def test_inline_config_equals_catalog_name(app_client: TestClient) -> None:
    """gpt2's published config.json, inline, gives the catalog model's numbers."""
    config = {
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "attn_pdrop": 0.1,
        "embd_pdrop": 0.1,
        "resid_pdrop": 0.1,
        "layer_norm_epsilon": 1e-05,
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    }
    by_name = app_client.post("/v1/estimate", json={"model": "gpt2"}).json()
    inline = app_client.post("/v1/estimate", json={"model": config}).json()
    assert inline["peak"] == by_name["peak"]
    # 124,439,808 parameters: the HF model card of openai-community/gpt2
    assert inline["model"]["n_params"] == 124_439_808


def test_fit(app_client: TestClient) -> None:
    body = {"model": "gpt2-medium", "lora": {"r": 16}, "gpu": "t4"}
    r = app_client.post("/v1/fit", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == vramcalc.fit(EstimateRequest.model_validate(body)).model_dump(mode="json")
    assert got["fits"] is True
    best = got["max_batch_size"]
    assert best is not None and best >= 1
    # the largest batch fits and the next one does not (checked through the estimate endpoint)
    at_best = app_client.post("/v1/estimate", json={**body, "batch_size": best}).json()
    above = app_client.post("/v1/estimate", json={**body, "batch_size": best + 1}).json()
    assert at_best["fit"]["fits"] is True
    assert above["fit"]["fits"] is False


def test_unknown_gpu_and_optimizer(app_client: TestClient) -> None:
    r = app_client.post("/v1/estimate", json={"model": "gpt2", "gpu": "a100-90gb"})
    assert r.status_code == 404
    assert "a100" in r.json()["detail"]
    r = app_client.post("/v1/estimate", json={"model": "gpt2", "optim": "adamw_9bit"})
    assert r.status_code == 404
    assert r.json()["closest"] is not None


@pytest.mark.skipif(find_spec("vramcalc.cli") is None, reason="vramcalc/cli.py not written yet")
def test_response_equals_cli_json(app_client: TestClient) -> None:
    args = ["gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16", "--gpu", "t4", "--json"]
    out = subprocess.run(
        [sys.executable, "-c", "from vramcalc.cli import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body = {"model": "gpt2-medium", "optim": "adamw_8bit", "lora": {"r": 16}, "gpu": "t4"}
    assert app_client.post("/v1/estimate", json=body).json() == json.loads(out)


def test_attention_defaults_to_the_model_class(app_client: TestClient) -> None:
    # transformers 5.24 builds Gemma-2 eager (Gemma2PreTrainedModel._supports_sdpa = False)
    gemma2 = {
        "model_type": "gemma2", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 16000,
    }  # fmt: skip
    r = app_client.post("/v1/estimate", json={"model": gemma2, "seq_len": 128})
    assert r.status_code == 200, r.text
    assert r.json()["assumptions"]["attention"] == "eager"
    r = app_client.post("/v1/estimate", json={"model": gemma2, "seq_len": 128, "attn": "sdpa"})
    assert r.status_code == 200, r.text
    assert r.json()["assumptions"]["attention"] == "sdpa"
    assert any("refuses" in n for n in r.json()["notes"])
