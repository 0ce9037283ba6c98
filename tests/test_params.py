"""Parameter bytes by hand, LoRA counts against PEFT itself, QLoRA nf4 bytes by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest

import vramcalc

TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def _r512(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def _tiny_llama_tensors() -> list[int]:
    h, i, v, kv = 64, 128, 1000, 2 * (64 // 4)  # kv dim = kv heads x head_dim = 2 x 16
    layer = [
        h * h,
        h * kv,
        h * kv,
        h * h,
        h * i,
        h * i,
        i * h,
        h,
        h,
    ]  # q k v o gate up down 2 norms
    return [v * h, *(layer * 2), h, h * v]  # embed_tokens, layers, final norm, untied lm_head


def test_tiny_llama_params_by_hand() -> None:
    tensors = _tiny_llama_tensors()
    r = vramcalc.estimate(model=TINY_LLAMA, seq_len=8)
    assert r.model.n_params == sum(tensors) == 202_048
    assert r.details["params/fp32"] == sum(_r512(4 * n) for n in tensors)
    r16 = vramcalc.estimate(model=TINY_LLAMA, seq_len=8, dtype="bf16")
    assert r16.details["params/16bit"] == sum(_r512(2 * n) for n in tensors)


def test_qlora_nf4_bytes_by_hand() -> None:
    # Llama-2-7B: 32 layers of q,k,v,o (4096x4096) and gate,up,down (4096x11008) in nf4.
    # bitsandbytes Params4bit with double quant: 4 bits per value packed in uint8, one uint8
    # absmax per 64-value block, one fp32 absmax per 256 of those blocks (+ tiny code tables).
    shapes = [4096 * 4096] * 4 + [4096 * 11008] * 3
    expected = 0
    for n in shapes * 32:
        blocks = math.ceil(n / 64)
        expected += _r512(n // 2) + _r512(blocks) + _r512(4 * math.ceil(blocks / 256))
    r = vramcalc.estimate(model="llama-2-7b", qlora={"r": 16}, seq_len=8)
    assert r.details["params/nf4"] == pytest.approx(expected, rel=1e-3)


def _peft_trainable(model: Any, targets: Any, r: int) -> int:
    peft = pytest.importorskip("peft", reason="peft missing")
    fan_in_fan_out = type(model).__name__.startswith("GPT2")  # Conv1D stores weights (in, out)
    config = peft.LoraConfig(r=r, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    trainable, _total = peft.get_peft_model(model, config).get_nb_trainable_parameters()
    return int(trainable)


def _meta(config: Any) -> Any:
    transformers = pytest.importorskip("transformers", reason="transformers missing")
    torch = pytest.importorskip("torch", reason="torch missing")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(("targets", "peft_targets"), [(None, None), ("all-linear", "all-linear")])
def test_lora_gpt2_against_peft(targets: str | None, peft_targets: str | None) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers missing")
    model = _meta(transformers.GPT2Config())  # defaults are GPT-2 small
    lora: dict[str, Any] = {"r": 8}
    if targets:
        lora["targets"] = targets
    r = vramcalc.estimate(model="gpt2", lora=lora, seq_len=8)
    # PEFT default for gpt2 is c_attn (a fused Conv1D 768 -> 2304)
    assert r.model.n_trainable_params == _peft_trainable(model, peft_targets, 8)
    if targets is None:
        assert r.model.n_trainable_params == 12 * 8 * (768 + 3 * 768)


@pytest.mark.parametrize(
    ("targets", "peft_targets"),
    [
        (None, None),
        ("q_proj+v_proj", ["q_proj", "v_proj"]),
        ("q_proj+k_proj+down_proj", ["q_proj", "k_proj", "down_proj"]),
        ("all-linear", "all-linear"),
    ],
)
def test_lora_llama_against_peft(targets: str | None, peft_targets: Any) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers missing")
    model = _meta(transformers.LlamaConfig(**TINY_LLAMA))
    lora: dict[str, Any] = {"r": 4}
    if targets:
        lora["targets"] = targets
    r = vramcalc.estimate(model=TINY_LLAMA, lora=lora, seq_len=8)
    assert r.model.n_trainable_params == _peft_trainable(model, peft_targets, 4)


# ---------------------------------------------------------------- LoRA targets vs PEFT, per family

_BASE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "vocab_size": 160000,  # above the default pad ids of glm4/smollm3
}
_T5 = {"d_model": 64, "d_ff": 96, "num_layers": 2, "num_heads": 4, "vocab_size": 1000}
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3": {**_BASE, "num_key_value_heads": 2, "head_dim": 16},
    "qwen3_moe": {
        **_BASE, "num_key_value_heads": 2, "num_experts": 4, "moe_intermediate_size": 32,
        "mlp_only_layers": [0], "num_experts_per_tok": 2,
    },
    "qwen2_moe": {
        **_BASE, "num_key_value_heads": 2, "num_experts": 4, "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48, "mlp_only_layers": [1],
    },
    "gemma3_text": {**_BASE, "num_key_value_heads": 2, "head_dim": 16},
    "llama4_text": {
        **_BASE, "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4,
        "interleave_moe_layer_step": 2,
    },
    "gpt_oss": {**_BASE, "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4},
    "deepseek_v2": {
        **_BASE, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": None,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8, "moe_intermediate_size": 32,
    },
    "deepseek_v3": {
        **_BASE, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8, "v_head_dim": 8, "moe_intermediate_size": 32, "n_group": 2,
        "topk_group": 1,
    },
    "phimoe": {**_BASE, "num_key_value_heads": 2, "num_local_experts": 4},
    "olmo2": {**_BASE, "num_key_value_heads": 2},
    "olmoe": {**_BASE, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
    "granite": {**_BASE, "num_key_value_heads": 2},
    "cohere": {**_BASE, "num_key_value_heads": 2, "vocab_size": 256000},
    "glm4": {**_BASE, "num_key_value_heads": 2, "head_dim": 16},
    "starcoder2": {**_BASE, "num_key_value_heads": 2},
    "smollm3": {**_BASE, "num_key_value_heads": 2},
    "modernbert": dict(_BASE),
    "mamba": {**_BASE, "intermediate_size": 128},
    "mamba2": {**_BASE, "num_heads": 4, "head_dim": 32, "n_groups": 2, "state_size": 16},
    "jamba": {
        **_BASE, "num_key_value_heads": 2, "num_experts": 4, "attn_layer_period": 2,
        "attn_layer_offset": 1,
    },
    "mixtral": {**_BASE, "num_key_value_heads": 2, "num_local_experts": 4},
    "mt5": {**_T5, "tie_word_embeddings": False},
    "t5": {**_T5, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
    "bert": {**_BASE, "vocab_size": 1000},
}  # fmt: skip
# an explicit pair per family: the (tied or untied) LM head and one attention projection
# vision-language models: the traced grid's tiny configs (PEFT's all-linear and q_proj reach
# the vision tower and projector too)
from validation.grid import FAMILIES as _GRID  # noqa: E402

for _vlm in ("qwen2_5_vl", "qwen3_vl", "llava", "gemma3", "mllama"):
    FAMILIES[_vlm] = {k: v for k, v in _GRID[_vlm].items() if k != "model_type"}

NAMED = {"mt5": "q", "t5": "q", "modernbert": "Wqkv", "mamba": "in_proj", "bert": "query"}
NAMED["mamba2"] = "in_proj"
NAMED.update({"deepseek_v2": "kv_b_proj", "deepseek_v3": "kv_b_proj"})


def _family_model(model_type: str) -> Any:
    transformers = pytest.importorskip("transformers", reason="transformers missing")
    torch = pytest.importorskip("torch", reason="torch missing")
    from vramcalc.hf import untie_forced_heads

    config = FAMILIES[model_type]
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    if hf_config.is_encoder_decoder:
        auto = transformers.AutoModelForSeq2SeqLM
    elif "vision_config" in hf_config.sub_configs:
        auto = transformers.AutoModelForImageTextToText
    elif model_type in ("bert", "modernbert"):
        auto = transformers.AutoModel
    else:
        auto = transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(hf_config)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
        untie_forced_heads(model, config)
    return model


def _ours(model_type: str, targets: tuple[str, ...], params: tuple[str, ...] = ()) -> int:
    from vramcalc.enums import PeftMethod
    from vramcalc.formulas.counts import param_inventory
    from vramcalc.formulas.params import plan_params
    from vramcalc.hf import model_spec_from_config
    from vramcalc.specs import PeftSpec, TrainingSpec

    spec = model_spec_from_config({"model_type": model_type, **FAMILIES[model_type]})
    peft_spec = PeftSpec(
        method=PeftMethod.LORA, r=4, alpha=8, targets=targets, target_parameters=params
    )
    plan = plan_params(spec, param_inventory(spec), TrainingSpec(peft=peft_spec))
    return plan.n_trainable


def _theirs(model_type: str, targets: Any, params: Any = None) -> int:
    peft = pytest.importorskip("peft", reason="peft missing")
    extra = {"target_parameters": list(params)} if params else {}
    config = peft.LoraConfig(r=4, target_modules=targets, **extra)
    trainable, _total = peft.get_peft_model(
        _family_model(model_type), config
    ).get_nb_trainable_parameters()
    return int(trainable)


@pytest.mark.filterwarnings("ignore")  # PEFT/transformers deprecation and rank_pattern notices
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_lora_families_against_peft(model_type: str) -> None:
    """Default targets, all-linear and explicit names (with lm_head): trainable counts = PEFT's."""
    from vramcalc.errors import InvalidConfigError
    from vramcalc.hf import default_lora_targets

    default = default_lora_targets(model_type)
    if default is None:  # PEFT has no default in effect and asks for targets
        with pytest.raises(ValueError, match="target_modules"):
            _theirs(model_type, None)
    else:
        assert _ours(model_type, default) == _theirs(model_type, None)
    if model_type in ("mamba", "mamba2"):  # PEFT refuses LoRA on out_proj/conv1d: all-linear
        with pytest.raises(ValueError, match="incompatible"):
            _theirs(model_type, "all-linear")
        with pytest.raises(InvalidConfigError, match="out_proj"):
            _ours(model_type, ("all-linear",))
    else:
        assert _ours(model_type, ("all-linear",)) == _theirs(model_type, "all-linear")
    named = NAMED.get(model_type, "q_proj")
    if model_type in ("bert", "modernbert"):  # base encoders have no lm_head
        assert _ours(model_type, (named,)) == _theirs(model_type, [named])
        with pytest.raises(InvalidConfigError, match="lm_head"):
            _ours(model_type, ("lm_head", named))
    else:
        assert _ours(model_type, ("lm_head", named)) == _theirs(model_type, ["lm_head", named])


# the MLM head a published encoder config names (architectures[0]): ModernBertForMaskedLM
# (head.dense, head.norm, a decoder tied to the embeddings), BertForMaskedLM and
# RobertaForMaskedLM (no pooler; transform dense + LayerNorm, tied decoder + bias)
_MB = {**_BASE, "model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}
_BERT = {**_BASE, "model_type": "bert", "vocab_size": 1000, "architectures": ["BertForMaskedLM"]}
_ROBERTA = {
    **_BASE,
    "model_type": "roberta",
    "vocab_size": 1000,
    "architectures": ["RobertaForMaskedLM"],
}
MASKED_LM: dict[str, dict[str, Any]] = {
    "modernbert": _MB,
    "modernbert_untied": {
        **_MB, "tie_word_embeddings": False, "classifier_bias": True, "decoder_bias": False,
    },
    "bert": _BERT,
    "bert_untied": {**_BERT, "tie_word_embeddings": False},
    "roberta": _ROBERTA,
}  # fmt: skip
_MLM_TARGETS = {
    "modernbert": [("all-linear",), ("Wqkv", "Wo"), ("decoder", "Wqkv"), ("dense", "Wi")],
    "bert": [("all-linear",), ("query", "value"), ("decoder", "query"), ("dense",)],
    "roberta": [("all-linear",), ("query", "value"), ("decoder", "dense")],
}
_MLM_CASES = [
    (name, targets)
    for name, cfg in sorted(MASKED_LM.items())
    for targets in [None, *_MLM_TARGETS[cfg["model_type"]]]
]


def _masked_lm_model(config: dict[str, Any]) -> Any:
    transformers = pytest.importorskip("transformers", reason="transformers missing")
    torch = pytest.importorskip("torch", reason="torch missing")
    cfg = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **cfg)
    with torch.device("meta"):
        model = getattr(transformers, config["architectures"][0])(hf_config)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("name", "targets"), _MLM_CASES, ids=str)
def test_lora_masked_lm_head_against_peft(name: str, targets: tuple[str, ...] | None) -> None:
    """LoRA on a masked-LM model: trainable counts = PEFT's (all-linear takes the head's dense
    and leaves the output layer; the tied decoder can be named); PEFT's defaults where it has
    them (BERT, RoBERTa: query, value), an error where it has none (ModernBERT)."""
    peft = pytest.importorskip("peft", reason="peft missing")
    from vramcalc.enums import PeftMethod
    from vramcalc.formulas.counts import param_inventory
    from vramcalc.formulas.params import plan_params
    from vramcalc.hf import default_lora_targets, meta_param_count, model_spec_from_config
    from vramcalc.specs import PeftSpec, TrainingSpec

    config = MASKED_LM[name]
    model = _masked_lm_model(config)
    spec = model_spec_from_config(config)
    assert spec.has_lm_head
    assert spec.n_params == sum(p.numel() for p in model.parameters()) == meta_param_count(config)
    if targets is None:
        targets = default_lora_targets(config["model_type"])
        if targets is None:
            with pytest.raises(ValueError, match="target_modules"):
                peft.get_peft_model(model, peft.LoraConfig(r=4))
            return
        theirs: Any = None
    else:
        theirs = "all-linear" if targets == ("all-linear",) else list(targets)
    peft_spec = PeftSpec(method=PeftMethod.LORA, r=4, alpha=8, targets=targets)
    ours = plan_params(spec, param_inventory(spec), TrainingSpec(peft=peft_spec)).n_trainable
    trainable, _total = peft.get_peft_model(
        model, peft.LoraConfig(r=4, target_modules=theirs)
    ).get_nb_trainable_parameters()
    assert ours == trainable


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("model_type", "params"),
    [
        ("gpt_oss", ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")),
        ("qwen2_moe", ("experts.gate_up_proj",)),
        ("llama4_text", ("feed_forward.experts.down_proj",)),
        ("jamba", ("gate_up_proj", "down_proj")),
        ("phimoe", ("mlp.experts.down_proj",)),
    ],
)
def test_lora_target_parameters_against_peft(model_type: str, params: tuple[str, ...]) -> None:
    """PEFT target_parameters on fused 3-D expert weights: r*experts rows per layer tensor."""
    ours = _ours(model_type, ("q_proj",), params)
    assert ours == _theirs(model_type, ["q_proj"], params)
    assert ours > _ours(model_type, ("q_proj",))


def test_lora_unknown_target_is_an_error() -> None:
    from vramcalc.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match=r"'q_prj'.*did you mean 'q_proj'.*k_proj"):
        _ours("qwen3", ("q_proj", "q_prj"))
    with pytest.raises(InvalidConfigError, match="target_parameters"):
        _ours("mixtral", ("experts",))  # a 3-D expert container, not a linear
    with pytest.raises(InvalidConfigError, match="fused"):
        _ours("qwen3_moe", ("gate_proj",))  # PEFT: cannot convert without up_proj
    with pytest.raises(InvalidConfigError, match="no parameter"):
        _ours("gpt_oss", ("q_proj",), ("experts.up_proj",))
