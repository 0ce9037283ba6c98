"""Attention implementation per model class, per-layer attention kinds and layer schedules.

Ground truth: transformers' own class flags (``_supports_sdpa``/``_supports_flash_attn``, read
from the installed library when it is there), and layer schedules derived by hand from the
transformers 5.24 config classes (``layer_types``, ``max_window_layers``,
``first_k_dense_replace``, ``interleave_moe_layer_step``, ``no_rope_layer_interval``) and from
``masking_utils._ignore_causal_mask_sdpa`` (a window mask exists once ``kv_length >= window``).
"""

from __future__ import annotations

from typing import Any

import pytest

from vramcalc import catalog, estimate
from vramcalc.enums import Attention
from vramcalc.formulas.activations import LayerKind, layer_kinds
from vramcalc.hf import resolve_model
from vramcalc.kernels import default_attention, resolve_attention

SMALL: dict[str, dict[str, Any]] = {
    "gemma2": {
        "model_type": "gemma2", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "sliding_window": 64, "vocab_size": 16000,
    },
    "gemma3_text": {
        "model_type": "gemma3_text", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "sliding_window": 64, "vocab_size": 16000,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
    },
    "qwen3": {
        "model_type": "qwen3", "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 16000, "use_sliding_window": True,
        "sliding_window": 64, "max_window_layers": 2,
    },
    "deepseek_v3": {
        "model_type": "deepseek_v3", "hidden_size": 256, "intermediate_size": 512,
        "moe_intermediate_size": 128, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 96,
        "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
        "vocab_size": 16000,
    },
    "llama4_text": {
        "model_type": "llama4_text", "hidden_size": 256, "intermediate_size": 256,
        "intermediate_size_mlp": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "num_local_experts": 4,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "attention_chunk_size": 64,
        "vocab_size": 16000,
    },
    "falcon": {
        "model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "multi_query": True, "vocab_size": 16000,
    },
}  # fmt: skip


# ----------------------------------------------------------------------------- defaults


def test_defaults_follow_the_model_class_flags() -> None:
    # transformers 5.24: Gemma2/GptOss/Bloom/Mamba PreTrainedModel set _supports_sdpa = False
    assert default_attention("gemma2") == Attention.EAGER
    assert default_attention("gpt_oss") == Attention.EAGER
    assert default_attention("bloom") == Attention.EAGER
    assert default_attention("llama") == Attention.SDPA
    assert default_attention("falcon") == Attention.SDPA


@pytest.mark.slow  # imports every modeling module (~30 s)
def test_defaults_match_installed_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    for model_type in catalog.architecture_types():
        tpl = catalog.architecture(model_type)
        cls = getattr(transformers, tpl["model_class"])
        want = Attention.SDPA if cls._supports_sdpa else Attention.EAGER
        assert default_attention(model_type) == want, model_type
        supported = set(tpl["attention"]["supported"])
        assert ("sdpa" in supported) == bool(cls._supports_sdpa), model_type
        assert ("flash_attention_2" in supported) == bool(cls._supports_flash_attn), model_type


def test_a_choice_other_than_the_default_is_noted() -> None:
    attn, notes = resolve_attention("gemma2", None)
    assert attn == Attention.EAGER and notes == []
    attn, notes = resolve_attention("gemma2", Attention.SDPA)
    assert attn == Attention.SDPA
    assert len(notes) == 1 and "refuses" in notes[0] and "Gemma2ForCausalLM" in notes[0]
    attn, notes = resolve_attention("llama", Attention.EAGER)
    assert attn == Attention.EAGER and "builds LlamaForCausalLM with sdpa" in notes[0]
    assert resolve_attention("llama", Attention.SDPA) == (Attention.SDPA, [])


def test_estimate_states_the_attention_it_assumed() -> None:
    r = estimate({"model": SMALL["gemma2"], "seq_len": 512})
    assert r.assumptions["attention"] == "eager"
    assert "eager" in str(r.assumptions["attention_kernels"])
    assert not any("--attn" in n for n in r.notes)
    asked = estimate({"model": SMALL["gemma2"], "seq_len": 512, "attn": "sdpa"})
    assert asked.assumptions["attention"] == "sdpa"
    assert any("refuses attn_implementation='sdpa'" in n for n in asked.notes)
    # eager keeps the B*heads*S*S probabilities (and Gemma-2's soft-capped scores)
    assert r.peak.allocated_bytes > asked.peak.allocated_bytes


# ----------------------------------------------------------------------------- layer kinds


def _kinds(name: str, seq_len: int) -> list[LayerKind]:
    return layer_kinds(resolve_model(dict(SMALL[name])), seq_len)


def test_gemma2_alternates_sliding_and_full() -> None:
    # configuration_gemma2.py: sliding when (i + 1) % 2, i.e. layers 0 and 2 of 4
    kinds = _kinds("gemma2", 128)
    assert [k.attn for k in kinds].count("sliding") == 2
    assert sum(k.masked for k in kinds) == 2
    assert not any(k.masked for k in _kinds("gemma2", 32))  # shorter than the window


def test_gemma3_layer_types_and_the_window_threshold() -> None:
    kinds = _kinds("gemma3_text", 64)  # kv_length == window: the mask is built
    assert [k.attn for k in kinds] == ["sliding"] * 3 + ["full"]
    assert [k.masked for k in kinds] == [True, True, True, False]
    assert not any(k.masked for k in _kinds("gemma3_text", 63))


def test_qwen3_windows_the_layers_above_max_window_layers() -> None:
    assert [k.attn for k in _kinds("qwen3", 256)] == ["full", "full", "sliding", "sliding"]


def test_dense_then_moe_schedules() -> None:
    assert [k.moe for k in _kinds("deepseek_v3", 128)] == [False, True, True]
    assert sum(k.moe for k in _kinds("llama4_text", 128)) == 2  # interleave step 2 of 4
    # llama4: every 4th layer is a global NoPE layer, the others chunked
    assert [k.attn for k in _kinds("llama4_text", 128)].count("chunked") == 3


def test_falcon_always_masks() -> None:
    assert all(k.masked for k in _kinds("falcon", 16))
    r = estimate({"model": SMALL["falcon"], "seq_len": 256, "dtype": "bf16"})
    assert "math" in str(r.assumptions["attention_kernels"])


def test_mla_saves_the_latents_and_narrow_values() -> None:
    # kv_b_proj / q_b_proj read the normed latents (kv_lora_rank 64, q_lora_rank 96): their
    # inputs are saved apart from the block input under full fine-tuning
    r = estimate({"model": SMALL["deepseek_v3"], "seq_len": 128, "dtype": "bf16"})
    assert "memory-efficient" in str(r.assumptions["attention_kernels"])
