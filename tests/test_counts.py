"""Parameter inventory and exact counts.

Oracles: transformers models built from each catalog config on the meta device (totals and
per-module breakdown), published parameter counts, and hand derivations written out here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from vramcalc import catalog
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import ParamGroup, count_params, evaluate, param_inventory
from vramcalc.hf import meta_param_count, model_spec_from_config, resolve_model, untie_forced_heads

ROWS = catalog.model_rows()
ROW_IDS = [r["name"] for r in ROWS]


# ---------------------------------------------------------------- published figures

# KerasHub preset metadata ("params"), keras-team/keras-hub
# keras_hub/src/models/<family>/<family>_presets.py; gpt2-medium also in
# ../shared/MEMORY_MODEL.md (a transformers build with tied embeddings).
PUBLISHED = {
    "openai-community/gpt2-medium": 354_823_168,  # gpt2_medium_en
    "google-bert/bert-base-uncased": 109_482_240,  # bert_base_en_uncased (with pooler)
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,  # llama2_7b_en
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,  # llama3_8b_en
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,  # mixtral_8_7b_en
}


@pytest.mark.parametrize(("hf_id", "expected"), PUBLISHED.items())
def test_published_counts(hf_id: str, expected: int) -> None:
    spec = resolve_model(hf_id)
    assert count_params(spec) == expected
    assert spec.n_params == expected


def test_gpt2_medium_by_hand() -> None:
    """GPT-2 medium: V=50257, P=1024, h=1024, L=24, tied head, Conv1D layers with bias."""
    v, p, h, n_layers = 50257, 1024, 1024, 24
    per_layer = sum(
        [
            2 * h,  # ln_1 weight + bias
            h * 3 * h + 3 * h,  # c_attn
            h * h + h,  # attn c_proj
            2 * h,  # ln_2
            h * 4 * h + 4 * h,  # c_fc
            4 * h * h + h,  # mlp c_proj
        ]
    )
    total = v * h + p * h + n_layers * per_layer + 2 * h
    assert total == 354_823_168
    assert count_params(resolve_model("gpt2-medium")) == total


def test_llama2_7b_by_hand() -> None:
    """Llama-2-7B: untied head, no biases, RMSNorm weights only, SwiGLU."""
    v, h, i, n_layers = 32000, 4096, 11008, 32
    per_layer = 4 * h * h + 3 * h * i + 2 * h
    total = 2 * v * h + n_layers * per_layer + h
    assert count_params(resolve_model("llama-2-7b")) == total


def test_llama2_70b_gqa_by_hand() -> None:
    """Llama-2-70B: 8 KV heads of 128 shrink k_proj/v_proj to h x 1024."""
    v, h, i, n_layers, kv = 32000, 8192, 28672, 80, 8 * 128
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert count_params(resolve_model("llama-2-70b")) == 2 * v * h + n_layers * per_layer + h


def test_mixtral_moe_groups() -> None:
    spec = resolve_model("mixtral-8x7b")
    groups = {g.key: g for g in param_inventory(spec)}
    router = groups["decoder/mlp/gate"]
    assert router.kind == "other"
    assert router.count == 32
    assert router.weight_numel == 8 * 4096
    up = groups["decoder/mlp/experts/gate_up_proj"]
    down = groups["decoder/mlp/experts/down_proj"]
    for g in (up, down):
        assert g.kind == "linear"
        assert g.expert
        assert g.count == 32 * 8
    assert (up.in_features, up.out_features) == (4096, 2 * 14336)
    assert (down.in_features, down.out_features) == (14336, 4096)
    assert not groups["decoder/self_attn/q_proj"].expert


def test_tied_embedding_listed_once() -> None:
    tied = param_inventory(resolve_model("gpt2"))
    assert not [g for g in tied if g.kind == "lm_head"]
    untied = param_inventory(resolve_model("llama-2-7b"))
    heads = [g for g in untied if g.kind == "lm_head"]
    assert len(heads) == 1
    assert heads[0].key == "head/lm_head"
    assert heads[0].stack == "head"
    assert (heads[0].in_features, heads[0].out_features) == (4096, 32000)


def test_keys_unique_and_stacks() -> None:
    for row in ROWS:
        groups = param_inventory(resolve_model(row["name"]))
        keys = [g.key for g in groups]
        assert len(keys) == len(set(keys)), row["name"]
        # a vision-language model lists its image tower first, in forward order
        text = (k for k in keys if not k.startswith(("vision/", "projector/")))
        assert next(text) == "embed/tokens", row["name"]
        for g in groups:
            assert g.key.split("/")[0] == g.stack, g.key


def test_numel_property() -> None:
    g = ParamGroup(
        key="decoder/x", module="x", kind="linear", weight_numel=6, bias_numel=3, count=2
    )
    assert g.numel == 18


def test_expressions() -> None:
    names = {"a": 6, "b": None, "s": "gated-gelu"}
    assert evaluate("a // 2 + 1", names) == 4
    assert evaluate("b if b is not None else a * 4", names) == 24
    assert evaluate("startswith(s, 'gated') and not a == 5", names) is True
    assert evaluate("last_part(s, '-')", names) == "gelu"
    assert evaluate(7, names) == 7
    with pytest.raises(KeyError):
        evaluate("missing + 1", names)
    with pytest.raises(ValueError, match="unsupported"):
        evaluate("__import__('os')", names)


def test_hand_built_spec_falls_back_to_template_defaults() -> None:
    """A ModelSpec built without ``arch`` gets the transformers config defaults."""
    full = resolve_model("llama-2-7b")
    bare = full.model_copy(update={"arch": {}})
    assert count_params(bare) == full.n_params
    opt = resolve_model("opt-125m")
    assert count_params(opt.model_copy(update={"arch": {}})) == opt.n_params
    # an explicit extra wins over the default
    biased = full.model_copy(update={"arch": {"attention_bias": True, "mlp_bias": False}})
    assert count_params(biased) == full.n_params + 32 * (4096 + 2 * 4096 + 4096)


def test_inventory_names_missing_key() -> None:
    spec = resolve_model("t5-small")
    template = catalog.architecture("t5")
    saved = template["arch"]
    template["arch"] = {}  # no way to derive relative_attention_num_buckets
    try:
        with pytest.raises(InvalidConfigError, match="relative_attention_num_buckets"):
            param_inventory(spec.model_copy(update={"arch": {}}))
    finally:
        template["arch"] = saved


# ---------------------------------------------------------------- meta-device oracle


def _auto_meta_model(config: dict[str, Any]) -> Any:
    """Build with transformers' Auto classes (independent of the template's model_class)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(config)
    model_type = cfg.pop("model_type")
    named = cfg.pop("architectures", None)
    hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
    if named and named[0].endswith("ForMaskedLM"):
        # an encoder's task head (ModernBertForMaskedLM): the masked-LM Auto class
        auto = transformers.AutoModelForMaskedLM
    elif getattr(hf_config, "is_encoder_decoder", False):
        auto = transformers.AutoModelForSeq2SeqLM
    elif "vision_config" in hf_config.sub_configs:  # vision-language: image + text -> text
        auto = transformers.AutoModelForImageTextToText
    elif model_type in ("bert", "roberta", "modernbert"):
        auto = transformers.AutoModel  # encoder-only: the base model with its pooler
    else:
        auto = transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
        untie_forced_heads(model, config)  # as from_pretrained loads T0/mT5 (separate lm_head)
    return model


def _oracle_breakdown(model: Any) -> Counter[tuple[str, str, bool]]:
    """(leaf module name, kind, expert) -> elements, classified from the module objects."""
    torch = pytest.importorskip("torch")
    modules = dict(model.named_modules())
    out_emb = model.get_output_embeddings()
    tied_out = out_emb is not None and out_emb.weight is model.get_input_embeddings().weight
    out: Counter[tuple[str, str, bool]] = Counter()
    for name, param in model.named_parameters():  # shared (tied) tensors appear once
        owner_name, _, pname = name.rpartition(".")
        owner = modules[owner_name]
        cls = type(owner).__name__
        # a ModuleList of per-head norms (StableLM q_layernorm.norms.<i>) is one group
        path = [c for c in owner_name.split(".") if not c.isdigit() and c != "norms"]
        leaf = path[-1] if pname in ("weight", "bias") else pname
        parent = modules[owner_name.rpartition(".")[0]] if "." in owner_name else None
        if owner_name.split(".")[-1].isdigit() and isinstance(parent, torch.nn.Sequential):
            leaf = owner_name.split(".")[-1]  # a Linear in an nn.Sequential (Qwen merger mlp.0)
        expert = cls.endswith("Experts")
        if expert:  # GPT-OSS expert biases (gate_up_proj_bias) belong to their weight's group
            leaf = leaf.removesuffix("_bias")
        if tied_out and owner is out_emb:
            kind = "other"  # a tied output layer's own parameter: its bias (MLM decoders)
        elif isinstance(owner, torch.nn.Embedding):
            kind = "other" if leaf == "relative_attention_bias" else "embedding"
        elif expert:
            kind = "linear"
        elif isinstance(owner, torch.nn.Linear) or cls == "Conv1D":
            kind = "lm_head" if owner_name == "lm_head" or owner is out_emb else "linear"
        elif "Norm" in cls:
            kind = "norm"
        else:
            kind = "other"
        out[(leaf, kind, expert)] += param.numel()
    return out


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_counts_match_meta_build(row: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = resolve_model(row["name"])
    assert count_params(spec) == meta_param_count(row["config"]) == row["n_params"]

    model = _auto_meta_model(row["config"])
    assert sum(p.numel() for p in model.parameters()) == row["n_params"]
    mine: Counter[tuple[str, str, bool]] = Counter()
    for g in param_inventory(spec):
        mine[(g.module, g.kind, g.expert)] += g.numel
    assert mine == _oracle_breakdown(model)


# Small configs with only the required keys: the template's defaults must reproduce what
# transformers' config classes default to (a 256-wide, 32-head, 2-layer model of each type).
_SIZES = {
    "hidden_size": 256,
    "n_embd": 256,
    "d_model": 256,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "num_attention_heads": 32,
    "n_head": 32,
    "num_heads": 32,
    "intermediate_size": 512,
    "ffn_dim": 512,
    "d_ff": 512,
    "vocab_size": 160000,  # above the default pad_token_id of phi3 (32000), glm4, smollm3
}


# config classes that validate their sizes together (Mamba2Config: hidden * expand must equal
# num_heads * head_dim; its default 128 heads of 64 do not fit a 256-wide model)
# (a VLM's vision_config.out_hidden_size must be the text model's width; transformers builds
# the mismatch but the merger's output could not join the text embeddings)
_CONSISTENT: dict[str, dict[str, Any]] = {
    "mamba2": {"num_heads": 8},
    "qwen2_5_vl": {"vision_config": {"out_hidden_size": 256}},
    "qwen3_vl": {"vision_config": {"out_hidden_size": 256}},
}


def _small_config(model_type: str) -> dict[str, Any]:
    """The required keys at their small sizes (a VLM's in text_config, as its class reads them)."""
    template = catalog.architecture(model_type)
    sizes = {k: _SIZES[k] for k in template["required"]}
    if "nested" in template and not template.get("text_at_top"):
        return {"model_type": model_type, "text_config": sizes, **_CONSISTENT.get(model_type, {})}
    return {"model_type": model_type, **sizes, **_CONSISTENT.get(model_type, {})}


@pytest.mark.parametrize("model_type", catalog.architecture_types())
def test_defaults_match_transformers(model_type: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = _small_config(model_type)
    spec = model_spec_from_config(config)
    assert spec.n_params == meta_param_count(config)
    mine: Counter[tuple[str, str, bool]] = Counter()
    for g in param_inventory(spec):
        mine[(g.module, g.kind, g.expert)] += g.numel
    assert mine == _oracle_breakdown(_auto_meta_model(config))


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("opt", {"word_embed_proj_dim": 128, "do_layer_norm_before": False}),
        ("opt", {"enable_bias": False, "layer_norm_elementwise_affine": False}),
        ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 4}),
        ("falcon", {"multi_query": False, "parallel_attn": False, "bias": True}),
        ("falcon", {"ffn_hidden_size": 320}),
        ("t5", {"feed_forward_proj": "gated-gelu", "num_decoder_layers": 3, "d_kv": 16}),
        (
            "llama",
            {"attention_bias": True, "mlp_bias": True, "head_dim": 16, "num_key_value_heads": 4},
        ),
        ("llama", {"tie_word_embeddings": True}),
        ("phi", {"qk_layernorm": True, "num_key_value_heads": 8}),
        ("stablelm", {"use_parallel_residual": True, "use_qkv_bias": True, "qk_layernorm": True}),
        ("gpt_neox", {"attention_bias": False, "tie_word_embeddings": True}),
        ("gpt2", {"n_inner": 300, "tie_word_embeddings": False}),
        ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 1}),
        ("gemma", {"num_key_value_heads": 1, "attention_bias": True}),
        (
            "qwen2_5_vl",
            {"vision_config": {"depth": 3, "hidden_size": 64, "intermediate_size": 96,
                               "num_heads": 4, "out_hidden_size": 256, "patch_size": 8}},
        ),
        (
            "qwen3_vl",
            {"text_config": {"head_dim": 16, "num_key_value_heads": 8},
             "vision_config": {"depth": 3, "hidden_size": 64, "intermediate_size": 96,
                               "num_heads": 4, "out_hidden_size": 256,
                               "deepstack_visual_indexes": [1], "num_position_embeddings": 64}},
        ),
        (
            "llava",
            {"vision_feature_layer": -1, "multimodal_projector_bias": False,
             "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64,
                               "intermediate_size": 96, "num_hidden_layers": 3,
                               "num_attention_heads": 4, "image_size": 64, "patch_size": 8}},
        ),
        (
            "gemma3",
            {"mm_tokens_per_image": 16, "tie_word_embeddings": False,
             "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 64,
                               "intermediate_size": 96, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "image_size": 64, "patch_size": 8,
                               "vision_use_head": False}},
        ),
        (
            "mllama",
            {"text_config": {"num_hidden_layers": 5, "cross_attention_layers": [1, 4, 9],
                             "num_key_value_heads": 4, "tie_word_embeddings": True},
             "vision_config": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
                               "num_global_layers": 2, "attention_heads": 4, "image_size": 56,
                               "patch_size": 14, "vision_output_dim": 192,
                               "intermediate_layers_indices": [1, 3], "max_num_tiles": 2,
                               "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]}},
        ),
        ("bert", {"type_vocab_size": 4, "max_position_embeddings": 128}),
        ("t5", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
        ("mt5", {"tie_word_embeddings": False, "num_decoder_layers": 3}),
        ("mt5", {"feed_forward_proj": "relu"}),
        ("qwen3", {"head_dim": 32, "num_key_value_heads": 8, "attention_bias": True}),
        ("qwen3", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1}),
        (
            "qwen3_moe",
            {
                "num_experts": 6,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 48,
                "mlp_only_layers": [0],
            },
        ),
        (
            "qwen3_moe",
            {
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
                "decoder_sparse_step": 2,
                "head_dim": 16,
            },
        ),
        ("qwen2_moe", {"num_experts": 4, "shared_expert_intermediate_size": 96, "qkv_bias": False}),
        ("qwen2_moe", {"mlp_only_layers": [1], "num_hidden_layers": 3, "decoder_sparse_step": 1}),
        ("gemma3_text", {"layer_types": ["sliding_attention", "full_attention"], "head_dim": 32}),
        ("gemma3_text", {"attention_bias": True, "tie_word_embeddings": False}),
        ("llama4_text", {"interleave_moe_layer_step": 2, "num_hidden_layers": 4}),
        ("llama4_text", {"moe_layers": [1], "num_local_experts": 4, "intermediate_size_mlp": 320}),
        ("llama4_text", {"attention_bias": True, "tie_word_embeddings": True}),
        ("gpt_oss", {"num_local_experts": 4, "num_experts_per_tok": 2, "attention_bias": False}),
        ("gpt_oss", {"num_experts": 8, "head_dim": 16, "num_key_value_heads": 4}),
        (
            "deepseek_v2",
            {
                "q_lora_rank": None,
                "first_k_dense_replace": 1,
                "n_routed_experts": 4,
                "num_experts_per_tok": 2,
                "kv_lora_rank": 32,
                "qk_rope_head_dim": 16,
                "qk_nope_head_dim": 24,
                "v_head_dim": 20,
                "moe_intermediate_size": 40,
            },
        ),
        (
            "deepseek_v2",
            {
                "attention_bias": True,
                "mlp_bias": True,
                "num_experts": 4,
                "n_shared_experts": 1,
                "q_lora_rank": 48,
                "num_experts_per_tok": 2,
            },
        ),
        (
            "deepseek_v3",
            {
                "first_k_dense_replace": 1,
                "n_routed_experts": 8,
                "n_group": 2,
                "topk_group": 1,
                "num_experts_per_tok": 2,
                "attention_bias": True,
                "q_lora_rank": None,
            },
        ),
        (
            "deepseek_v3",
            {"num_local_experts": 16, "n_shared_experts": 2, "first_k_dense_replace": 5},
        ),
        ("phimoe", {"lm_head_bias": True, "num_local_experts": 4, "attention_bias": True}),
        ("olmo2", {"num_key_value_heads": 8, "attention_bias": True}),
        (
            "olmoe",
            {
                "num_key_value_heads": 8,
                "num_experts": 4,
                "num_local_experts": 4,
                "num_experts_per_tok": 2,
            },
        ),
        ("granite", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
        ("cohere", {"use_qk_norm": True, "num_key_value_heads": 8}),
        ("cohere", {"attention_bias": True, "tie_word_embeddings": False}),
        ("glm4", {"head_dim": 16, "num_key_value_heads": 8, "attention_bias": False}),
        ("starcoder2", {"use_bias": False, "tie_word_embeddings": False, "num_key_value_heads": 4}),
        ("smollm3", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}),
        ("modernbert", {"norm_bias": True, "attention_bias": True, "mlp_bias": True}),
        ("modernbert", {"architectures": ["ModernBertForMaskedLM"]}),
        (
            "modernbert",
            {
                "architectures": ["ModernBertForMaskedLM"],
                "tie_word_embeddings": False,
                "classifier_bias": True,
                "norm_bias": True,
            },
        ),
        ("modernbert", {"architectures": ["ModernBertForMaskedLM"], "decoder_bias": False}),
        ("bert", {"architectures": ["BertForMaskedLM"]}),
        ("bert", {"architectures": ["BertForMaskedLM"], "tie_word_embeddings": False}),
        ("roberta", {"architectures": ["RobertaForMaskedLM"]}),
        ("roberta", {"architectures": ["RobertaForMaskedLM"], "tie_word_embeddings": False}),
        ("mamba", {"time_step_rank": 7, "state_size": 8, "expand": 3, "conv_kernel": 3}),
        ("mamba", {"use_bias": True, "use_conv_bias": False, "tie_word_embeddings": False}),
        (
            "mamba2",
            {
                "num_heads": 16,
                "head_dim": 32,
                "n_groups": 2,
                "state_size": 16,
                "conv_kernel": 3,
                "use_bias": True,
                "use_conv_bias": False,
            },
        ),
        (
            "mamba2",
            {
                "num_heads": 4,
                "head_dim": 256,
                "expand": 4,
                "n_groups": 1,
                "tie_word_embeddings": True,
            },
        ),
        (
            "jamba",
            {
                "num_hidden_layers": 5,
                "attn_layer_period": 2,
                "attn_layer_offset": 1,
                "expert_layer_period": 2,
                "expert_layer_offset": 0,
                "num_experts": 4,
                "num_key_value_heads": 8,
                "mamba_dt_rank": 8,
            },
        ),
        (
            "jamba",
            {
                "mamba_proj_bias": True,
                "mamba_conv_bias": False,
                "mamba_d_state": 8,
                "mamba_expand": 3,
                "mamba_d_conv": 3,
                "attn_layer_offset": 0,
                "num_experts": 2,
                "tie_word_embeddings": True,
            },
        ),
    ],
)
def test_variants_match_transformers(model_type: str, extra: dict[str, Any]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = _small_config(model_type)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    spec = model_spec_from_config(config)
    assert spec.n_params == meta_param_count(config)
    mine: Counter[tuple[str, str, bool]] = Counter()
    for g in param_inventory(spec):
        mine[(g.module, g.kind, g.expert)] += g.numel
    assert mine == _oracle_breakdown(_auto_meta_model(config))
