"""config.json -> ModelSpec: aliases, features, local files, inline configs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vramcalc import catalog
from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError
from vramcalc.hf import (
    default_lora_targets,
    load_config,
    model_spec_from_config,
    resolve_model,
)

LLAMA_SMALL: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
}


def test_import_does_not_pull_torch() -> None:
    code = "import sys, vramcalc.hf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- features and fields


def test_gpt2_fields_from_aliased_keys() -> None:
    spec = resolve_model("gpt2-medium")
    assert (spec.hidden_size, spec.num_hidden_layers, spec.num_attention_heads) == (1024, 24, 16)
    assert spec.head_dim == 64
    assert spec.intermediate_size == 4 * 1024  # n_inner absent -> 4 * n_embd
    assert spec.max_position_embeddings == 1024
    assert spec.tie_word_embeddings
    assert (spec.norm, spec.mlp, spec.position_embedding) == ("layernorm", "plain", "learned")
    assert spec.hidden_act == "gelu_new"
    assert (spec.attention_dropout, spec.hidden_dropout, spec.embedding_dropout) == (0.1, 0.1, 0.1)
    assert spec.is_causal_lm
    assert spec.has_lm_head
    assert spec.hf_id == "openai-community/gpt2-medium"
    assert spec.source is not None
    assert spec.source.endswith("config.json")


def test_canonical_key_aliases_work() -> None:
    """hidden_size/num_hidden_layers/... are accepted for GPT-2 (transformers' attribute_map)."""
    config = {
        "model_type": "gpt2",
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "max_position_embeddings": 1024,
        "vocab_size": 50257,
    }
    assert model_spec_from_config(config).n_params == 354_823_168


def test_bloom_legacy_n_embed() -> None:
    config = {"model_type": "bloom", "n_embed": 1024, "n_layer": 24, "n_head": 16}
    config["vocab_size"] = 250880
    spec = model_spec_from_config(config)
    assert spec.hidden_size == 1024
    assert spec.position_embedding == "alibi"
    assert spec.n_params == resolve_model("bloom-560m").n_params


def test_llama_family_features() -> None:
    spec = resolve_model("llama-3.1-8b")
    assert (spec.norm, spec.mlp, spec.position_embedding) == ("rmsnorm", "gated", "rotary")
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim) == (32, 8, 128)
    assert spec.vocab_size == 128256
    assert not spec.tie_word_embeddings
    assert spec.hidden_act == "silu"
    assert spec.arch == {"attention_bias": False, "mlp_bias": False}
    small = resolve_model("llama-3.2-1b")
    assert small.tie_word_embeddings
    assert small.head_dim == 64


def test_t5_encoder_decoder() -> None:
    spec = resolve_model("t5-small")
    assert spec.is_encoder_decoder
    assert not spec.is_causal_lm
    assert spec.has_lm_head
    assert spec.num_decoder_layers == spec.num_hidden_layers == 6
    assert spec.position_embedding == "relative"
    assert (spec.norm, spec.mlp, spec.hidden_act) == ("rmsnorm", "plain", "relu")
    assert spec.arch["relative_attention_num_buckets"] == 32
    gated = model_spec_from_config(
        {**resolve_row_config("t5-small"), "feed_forward_proj": "gated-gelu"}
    )
    assert (gated.mlp, gated.hidden_act) == ("gated", "gelu_new")


def resolve_row_config(name: str) -> dict[str, Any]:
    return dict(catalog.model_row(name)["config"])


def test_encoder_only_has_no_lm_head() -> None:
    spec = resolve_model("google-bert/bert-large-uncased")
    assert not spec.has_lm_head
    assert not spec.is_causal_lm
    assert spec.attention_dropout == 0.1
    assert spec.n_params == 335_141_888


def test_falcon_multi_query_and_new_architecture() -> None:
    f7 = resolve_model("falcon-7b")
    assert f7.num_key_value_heads == 1
    assert f7.parallel_residual
    assert f7.head_dim == 64
    f40 = resolve_model("falcon-40b")
    assert f40.num_key_value_heads == 8
    assert f40.arch["num_ln_in_parallel_attn"] == 2


def test_moe_and_parallel_residual() -> None:
    mix = resolve_model("mixtral-8x7b")
    assert (mix.num_local_experts, mix.num_experts_per_tok) == (8, 2)
    assert resolve_model("pythia-160m").parallel_residual
    assert resolve_model("phi-2").parallel_residual
    assert not resolve_model("stablelm-3b-4e1t").parallel_residual
    assert resolve_model("phi-2").hidden_dropout == 0.1


def test_gemma_legacy_gelu_means_tanh() -> None:
    assert resolve_model("gemma-7b").hidden_act == "gelu_pytorch_tanh"
    assert resolve_model("gemma-2-9b").hidden_act == "gelu_pytorch_tanh"


def test_default_lora_targets() -> None:
    assert default_lora_targets("gpt2") == ("c_attn",)
    assert default_lora_targets("llama") == ("q_proj", "v_proj")
    assert default_lora_targets("bert") == ("query", "value")
    assert default_lora_targets("t5") == ("q", "v")
    assert default_lora_targets("phi3") is None  # PEFT asks for target_modules


def test_default_lora_targets_match_installed_peft() -> None:
    constants = pytest.importorskip("peft.utils.constants")
    mapping = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    for model_type in catalog.architecture_types():
        expected = mapping.get(model_type)
        if catalog.architecture(model_type).get("peft_moe_conversion"):
            expected = None  # PEFT's MoE name rewrite empties target_modules first (see below)
        got = default_lora_targets(model_type)
        assert got == (None if expected is None else tuple(expected)), model_type


def test_lora_targets_name_real_modules() -> None:
    for model_type in catalog.architecture_types():
        modules = {m["module"] for m in catalog.architecture(model_type)["modules"]}
        assert set(default_lora_targets(model_type) or ()) <= modules, model_type


# ---------------------------------------------------------------- resolve_model


def test_resolve_aliases_and_ids() -> None:
    a = resolve_model("llama-2-7b")
    assert resolve_model("meta-llama/Llama-2-7b-hf") is a  # cached per catalog row
    assert resolve_model("Llama-2-7b-hf") is a
    assert resolve_model("LLAMA_2_7B") is a
    assert resolve_model("meta-llama/Llama-2-7b-chat-hf") is a


def test_resolve_inline_config() -> None:
    spec = resolve_model(LLAMA_SMALL)
    assert spec.model_type == "llama"
    assert spec.head_dim == 32
    # 2 embeddings + 2 layers of (q,o: h*h; k,v: h*64; 3 MLP: h*688; 2 norms) + final norm
    h = 256
    per_layer = 2 * h * h + 2 * h * 64 + 3 * h * 688 + 2 * h
    assert spec.n_params == 2 * 1000 * h + 2 * per_layer + h


def test_resolve_local_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_SMALL))
    by_folder = resolve_model(str(folder))
    by_file = resolve_model(str(folder / "config.json"))
    assert by_folder.name == by_file.name == "my-model"
    assert by_folder.n_params == by_file.n_params == resolve_model(LLAMA_SMALL).n_params
    assert by_file.source == str(folder / "config.json")


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UnknownNameError) as err:
        resolve_model("llama-2-7")
    assert err.value.suggestion == "llama-2-7b"
    assert "llama-2-7b" in str(err.value)
    with pytest.raises(UnknownNameError, match="mistral"):
        resolve_model("mistrall-7b")


def test_empty_model_name() -> None:
    with pytest.raises(InvalidConfigError):
        resolve_model("  ")


# ---------------------------------------------------------------- load_config


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="no such file"):
        load_config(tmp_path / "absent.json")
    with pytest.raises(InvalidConfigError, match="no such file"):
        load_config(tmp_path)  # a folder without config.json
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_type": "llama",')
    with pytest.raises(InvalidConfigError, match="not valid JSON"):
        load_config(bad)
    arr = tmp_path / "list.json"
    arr.write_text("[1, 2]")
    with pytest.raises(InvalidConfigError, match="JSON object"):
        load_config(arr)


def test_resolve_bad_local_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{oops")
    with pytest.raises(InvalidConfigError, match="not valid JSON"):
        resolve_model(str(bad))


# ---------------------------------------------------------------- validation errors


def test_unsupported_model_type_lists_supported() -> None:
    with pytest.raises(UnknownNameError) as err:
        model_spec_from_config({**LLAMA_SMALL, "model_type": "lama"})
    assert err.value.suggestion == "llama"
    assert "gpt2" in str(err.value)
    assert err.value.choices == catalog.architecture_types()


def test_missing_model_type() -> None:
    with pytest.raises(InvalidConfigError, match="model_type"):
        model_spec_from_config({"hidden_size": 8})


def test_missing_key_names_key_and_type() -> None:
    config = {k: v for k, v in LLAMA_SMALL.items() if k != "intermediate_size"}
    with pytest.raises(InvalidConfigError, match="intermediate_size") as err:
        model_spec_from_config(config)
    assert "llama" in str(err.value)
    gpt2 = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "vocab_size": 10}
    with pytest.raises(InvalidConfigError, match=r"'n_embd'.*hidden_size"):
        model_spec_from_config(gpt2)


def test_heads_must_divide_hidden() -> None:
    with pytest.raises(InvalidConfigError, match="does not divide hidden_size"):
        model_spec_from_config({**LLAMA_SMALL, "num_attention_heads": 7, "num_key_value_heads": 7})
    # an explicit head_dim lifts the requirement (Gemma-style)
    spec = model_spec_from_config(
        {**LLAMA_SMALL, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64}
    )
    assert spec.head_dim == 64
    gpt2 = {"model_type": "gpt2", "n_embd": 100, "n_layer": 2, "n_head": 3, "vocab_size": 10}
    with pytest.raises(InvalidConfigError, match="does not divide"):
        model_spec_from_config(gpt2)


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(InvalidConfigError, match="num_key_value_heads"):
        model_spec_from_config({**LLAMA_SMALL, "num_key_value_heads": 3})


@pytest.mark.parametrize("value", [0, -4, 2.5, "256", True])
def test_non_positive_or_non_integer_sizes(value: Any) -> None:
    with pytest.raises(InvalidConfigError, match="hidden_size"):
        model_spec_from_config({**LLAMA_SMALL, "hidden_size": value})


def test_bad_derived_and_range_values() -> None:
    with pytest.raises(InvalidConfigError, match="head_dim"):
        model_spec_from_config({**LLAMA_SMALL, "head_dim": 0})
    with pytest.raises(InvalidConfigError, match="attention_dropout"):
        model_spec_from_config({**LLAMA_SMALL, "attention_dropout": 1.5})
    with pytest.raises(InvalidConfigError, match="must be a JSON object"):
        model_spec_from_config([1, 2])  # type: ignore[arg-type]


def test_errors_are_vramcalc_errors() -> None:
    assert issubclass(InvalidConfigError, VramcalcError)
    assert issubclass(UnknownNameError, VramcalcError)


def test_inline_config_is_resolved_again_under_other_limits() -> None:
    # inline configs are remembered by content (hf._inline_spec); a config one block's limits
    # allow must still be refused under the default limits afterwards, and the same dict with
    # 1 instead of 1.0 or True is a different config
    from vramcalc.hf import resolve_model
    from vramcalc.limits import LimitExceededError, Limits, use_limits

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 1500, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 100, "max_position_embeddings": 128}  # fmt: skip
    with use_limits(Limits(max_layers=2048)):
        assert resolve_model(cfg).num_hidden_layers == 1500
        assert resolve_model(dict(cfg)) is resolve_model(cfg)
    with pytest.raises(LimitExceededError, match="1500"):
        resolve_model(cfg)
    small = {**cfg, "num_hidden_layers": 2}
    tied = resolve_model({**small, "tie_word_embeddings": True})
    assert tied.tie_word_embeddings is True
    assert resolve_model({**small, "tie_word_embeddings": False}).tie_word_embeddings is False
