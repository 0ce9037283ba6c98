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
