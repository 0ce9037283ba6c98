"""The model catalog (data/models.json) and architecture templates (data/architectures.json)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from vramcalc import catalog
from vramcalc.formulas.counts import count_params
from vramcalc.hf import resolve_model

ROWS = catalog.model_rows()

# The HF ids used by validation/reference/published_measurements.json.
REFERENCE_IDS = [
    "openai-community/gpt2-medium",
    "google-bert/bert-large-uncased",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-hf",
    "microsoft/phi-1_5",
    "stabilityai/stablelm-base-alpha-3b",
    "codellama/CodeLlama-34b-hf",
    "meta-llama/Llama-3.2-3B-Instruct",
    "meta-llama/Llama-3.1-8B-Instruct",
]

REQUIRED_NAMES = [
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2",
    "bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
    "t5-small", "t5-base", "t5-large",
    "opt-125m", "opt-350m", "opt-1.3b", "opt-6.7b",
    "bloom-560m", "bloom-1b7", "bloom-7b1", "falcon-7b", "falcon-40b",
    "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b",
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "llama-3.2-3b",
    "mistral-7b-v0.1", "mistral-7b-v0.3", "mixtral-8x7b",
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b",
    "qwen2.5-32b", "qwen2.5-72b",
    "phi-1_5", "phi-2", "phi-3-mini", "gemma-2b", "gemma-7b",
    "gemma-2-2b", "gemma-2-9b", "gemma-2-27b", "tinyllama-1.1b",
    "stablelm-base-alpha-3b", "stablelm-2-1_6b", "stablelm-3b-4e1t",
    "codellama-34b", "yi-34b", "pythia-160m", "pythia-1b",
]  # fmt: skip

REQUIRED_TYPES = {
    "gpt2", "bert", "roberta", "t5", "opt", "bloom", "falcon", "llama", "mistral", "mixtral",
    "qwen2", "phi", "phi3", "gemma", "gemma2", "stablelm", "gpt_neox",
}  # fmt: skip


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def test_catalog_size_and_meta() -> None:
    assert len(ROWS) >= 40
    meta = catalog.load("models")["_meta"]
    assert meta["description"]


@pytest.mark.parametrize("name", REQUIRED_NAMES)
def test_required_models_present(name: str) -> None:
    assert catalog.model_row(name)


@pytest.mark.parametrize("hf_id", REFERENCE_IDS)
def test_reference_ids_resolve(hf_id: str) -> None:
    spec = resolve_model(hf_id)
    assert spec.n_params > 0


def test_rows_well_formed() -> None:
    for row in ROWS:
        assert set(row) == {"name", "aliases", "hf_id", "source", "n_params", "config"}, row["name"]
        assert re.fullmatch(r"[a-z0-9._-]+", row["name"]), row["name"]
        assert row["source"] == f"https://huggingface.co/{row['hf_id']}/blob/main/config.json"
        assert isinstance(row["n_params"], int)
        assert row["n_params"] > 0
        assert row["config"]["model_type"] in catalog.architecture_types()
        assert row["hf_id"].split("/")[-1].lower() in {a.lower() for a in row["aliases"]} | {
            row["name"]
        }


def test_every_name_and_alias_points_to_one_row() -> None:
    owners: dict[str, set[str]] = {}
    for row in ROWS:
        for alias in [row["name"], row["hf_id"], *row["aliases"]]:
            owners.setdefault(_norm(alias), set()).add(row["name"])
    clashes = {alias: rows for alias, rows in owners.items() if len(rows) > 1}
    assert not clashes
    for alias, rows in owners.items():
        assert catalog.model_row(alias)["name"] in rows


def test_names_unique() -> None:
    counts = Counter(r["name"] for r in ROWS)
    assert max(counts.values()) == 1


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_row_n_params_equals_count_params(row: dict[str, object]) -> None:
    spec = resolve_model(str(row["name"]))
    assert spec.n_params == count_params(spec) == row["n_params"]
    assert spec.name == row["name"]
    assert spec.hf_id == row["hf_id"]


def test_supported_types() -> None:
    assert set(catalog.architecture_types()) >= REQUIRED_TYPES
    used = {r["config"]["model_type"] for r in ROWS}
    assert used == set(catalog.architecture_types())  # every template has a catalog row


def test_templates_well_formed() -> None:
    spec_fields = {
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
        "tie_word_embeddings", "norm", "mlp", "hidden_act", "position_embedding",
        "parallel_residual", "attention_dropout", "hidden_dropout", "embedding_dropout",
        "is_causal_lm", "is_encoder_decoder", "has_lm_head",
    }  # fmt: skip
    for model_type in catalog.architecture_types():
        t = catalog.architecture(model_type)
        assert t["source"].startswith("huggingface/transformers"), model_type
        # text decoders of multimodal families live in the family's module (gemma3_text -> gemma3)
        module_dir = model_type.removesuffix("_text")
        assert f"models/{module_dir}/modeling_{module_dir}.py" in t["source"], model_type
        assert set(t["spec"]) >= spec_fields, model_type
        keys = [m["key"] for m in t["modules"]]
        assert len(keys) == len(set(keys)), model_type
        for m in t["modules"]:
            assert m["kind"] in {"linear", "embedding", "lm_head", "norm", "other"}
            assert m["stack"] in {"embed", "encoder", "decoder", "head", "vision", "projector"}
            assert m["key"].startswith(m["stack"] + "/")
        assert "lora_targets" in t
