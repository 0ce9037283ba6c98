"""validation.build: models, optimizers and the step, checked against hand derivations."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from validation import build  # noqa: E402
from validation.records import Scenario  # noqa: E402
from vramcalc.specs import EstimateRequest  # noqa: E402

H, L, V, P = 256, 2, 8000, 512
GPT2 = {"model_type": "gpt2", "n_embd": H, "n_layer": L, "n_head": 4, "vocab_size": V,
        "n_positions": P}  # fmt: skip
LLAMA = {"model_type": "llama", "hidden_size": H, "intermediate_size": 688,
         "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 4,
         "vocab_size": V, "max_position_embeddings": P, "tie_word_embeddings": False}  # fmt: skip

# Hand count of GPT-2 parameters (tied lm_head counted once):
# wte V*H + wpe P*H + per layer [ln 2H, c_attn H*3H+3H, attn c_proj H*H+H, ln 2H,
# c_fc H*4H+4H, mlp c_proj 4H*H+H] + ln_f 2H.
GPT2_PARAMS = V * H + P * H + L * (2 * H + 3 * H * H + 3 * H + H * H + H + 2 * H
                                   + 4 * H * H + 4 * H + 4 * H * H + H) + 2 * H  # fmt: skip


def scen(model: dict[str, Any] = GPT2, impl: str = "default", **kw: Any) -> Scenario:
    return Scenario(id="t", request=EstimateRequest(model=model, **kw), optim_impl=impl)  # type: ignore[arg-type]


def test_model_config_inline() -> None:
    cfg = build.model_config(scen().request)
    assert cfg.model_type == "gpt2" and cfg.n_embd == H and cfg.vocab_size == V


def test_model_config_needs_model_type() -> None:
    with pytest.raises(build.Unsupported, match="model_type"):
        build.model_config(scen(model={"hidden_size": 8}).request)


def test_meta_build_then_materialize_reties_embeddings() -> None:
    model = build.build_model(scen(), on_meta=True)
    assert next(model.parameters()).device.type == "meta"
    build.materialize(model, "cpu")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == GPT2_PARAMS


def test_dtype_and_attention() -> None:
    model = build.build_model(scen(dtype="bf16", attn="eager"), on_meta=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


def test_lora_trainable_count_and_fp32_adapters() -> None:
    # PEFT's default GPT-2 target is c_attn (H -> 3H): A is r x H, B is 3H x r per layer.
    r = 8
    model = build.build_model(scen(lora={"r": r}, dtype="bf16"), on_meta=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == L * (r * H + 3 * H * r)
    assert {p.dtype for p in trainable} == {torch.float32}


def test_grad_ckpt_enabled() -> None:
    model = build.build_model(scen(grad_ckpt=True), on_meta=True)
    assert model.is_gradient_checkpointing


def test_qlora_is_built_on_meta_only() -> None:
    pytest.importorskip("bitsandbytes")
    with pytest.raises(build.Unsupported, match="QLoRA"):
        build.build_model(scen(qlora={"r": 8}, quant="nf4"), "cpu")
    with pytest.raises(build.Unsupported, match="4-bit"):
        build.build_model(scen(lora={"r": 8}, quant="int8"), on_meta=True)


def test_qlora_base_is_bitsandbytes_4bit_with_lora_adapters() -> None:
    bnb = pytest.importorskip("bitsandbytes")
    req = {"qlora": {"r": 8}, "quant": "nf4", "dtype": "bf16", "fsdp": "full_shard", "gpus": 2}
    model = build.build_model(scen(LLAMA, **req), on_meta=True)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # q, k, v, o, gate, up, down per layer; the LM head stays 16-bit (transformers' rule)
    assert len(linears) == 7 * L
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    build.materialize(model, "cpu")
    state = build.quantize_base(model, scen(LLAMA, **req).request)
    q = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    # PEFT's FSDP+QLoRA recipe: packed nf4 in bf16 storage (4 values per element), H*H/4
    assert q.weight.dtype == torch.bfloat16 and q.weight.numel() == H * H // 4
    assert q.weight.quant_state.quant_type == "nf4" and q.weight.quant_state.nested
    # absmax is double-quantized to uint8, one per 64 values
    assert q.weight.quant_state.absmax.dtype == torch.uint8
    assert q.weight.quant_state.absmax.numel() == H * H // 64
    assert len(state) == 5 * 7 * L  # absmax, code, offset, nested absmax, nested code


@pytest.mark.parametrize(
    ("optim", "impl", "foreach", "fused"),
    [
        ("adamw_torch", "default", True, False),
        ("adamw_torch", "for-loop", False, False),
        ("adamw_torch", "fused", None, True),
        ("adamw_torch_fused", "default", None, True),
        ("sgd", "foreach", True, False),
    ],
)
def test_optimizer_implementation(optim: str, impl: str, foreach: Any, fused: Any) -> None:
    model = build.build_model(scen(), on_meta=True)
    opt = build.build_optimizer(scen(optim=optim, impl=impl), model)
    group = opt.param_groups[0]
    assert group["foreach"] == foreach
    assert bool(group.get("fused")) == fused


def test_optimizer_groups_like_trainer() -> None:
    model = build.build_model(scen(), on_meta=True)
    opt = build.build_optimizer(scen(optim="adafactor"), model)
    assert type(opt).__name__ == "Adafactor"
    decay, no_decay = opt.param_groups
    # biases and LayerNorm weights: per layer 2 LN x 2 + 4 biases, plus ln_f weight and bias
    assert len(no_decay["params"]) == L * (4 + 4) + 2
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_step_runs_on_cpu_with_phases() -> None:
    sc = scen(model=LLAMA, batch_size=1, seq_len=16, grad_ckpt=True, mixed_precision="bf16")
    setup = build.build_setup(sc, "cpu")
    phases: list[str] = []
    setup.on_phase = phases.append
    setup.step(setup.make_batch())
    assert phases == ["forward", "loss", "backward", "optimizer"]
    assert all(p.grad is None for p in setup.model.parameters())
    assert len(setup.optimizer.state) == len(list(setup.model.parameters()))


BERT_CLS = {
    "model_type": "bert",
    "architectures": ["BertForSequenceClassification"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 64,
}


def test_architectures_class_is_built_with_class_labels() -> None:
    # the real run builds architectures[0] (validation/cuda.py); the tracer used to build
    # BertLMHeadModel with a causal-LM loss over vocab-wide logits (the +45 % H200 outlier)
    sc = scen(model=BERT_CLS, batch_size=3, seq_len=16)
    assert type(build.build_model(sc, on_meta=True)).__name__ == "BertForSequenceClassification"
    setup = build.build_setup(sc, "cpu")
    batch = setup.make_batch()
    assert tuple(batch["labels"].shape) == (3,)  # one class id per row, not per token
    assert int(batch["labels"].max()) < setup.model.config.num_labels
    phases: list[str] = []
    setup.on_phase = phases.append
    setup.step(batch)
    assert phases == ["forward", "loss", "backward", "optimizer"]


def test_architectures_of_another_config_class_is_ignored() -> None:
    # a multimodal class named for a text-only config: the causal LM of that config is built
    model = build.build_model(
        scen(model={**LLAMA, "architectures": ["Gemma3ForConditionalGeneration"]}), on_meta=True
    )
    assert type(model).__name__ == "LlamaForCausalLM"
