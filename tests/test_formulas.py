"""Per-layer activations from ``activation_profile`` against Korthikanti et al. 2022, Table 2."""

from __future__ import annotations

import pytest

import vramcalc
from vramcalc.formulas.activations import activation_profile
from vramcalc.formulas.counts import param_inventory
from vramcalc.formulas.params import plan_params

H, A = 768, 12


@pytest.mark.parametrize("s", [512, 1024])
def test_layer_saved_matches_korthikanti_adjusted(s: int) -> None:
    cfg = {"model_type": "gpt2", "n_embd": H, "n_head": A, "n_layer": 2,
           "vocab_size": 50257, "n_positions": 4096}  # fmt: skip
    res = vramcalc.resolve(
        vramcalc.EstimateRequest(model=cfg, seq_len=s, batch_size=1, dtype="bf16", attn="eager")
    )
    inv = param_inventory(res.model)
    prof = activation_profile(
        res.model, inv, res.training, plan_params(res.model, inv, res.training)
    )
    b = 1
    # Korthikanti et al. 2022, Table 2 (16-bit, dropout, no recompute, no parallelism):
    #   per layer = s*b*h*(34 + 5*a*s/h) bytes.
    paper = s * b * H * 34 + 5 * A * s * s * b
    # Documented differences for HF GPT-2, eager attention, pure bf16:
    #   + 24 sbh: python gelu_new saves 3 extra 4h-wide 16-bit tensors (3 * 4h * 2 B);
    #   + 16 sb : two LayerNorms keep fp32 mean and rstd (2 * 2 * 4 B per token);
    #   + 4 a s^2 b: eager_attention_forward runs softmax in fp32 (4 B, paper 2 B) and keeps
    #     its 16-bit cast (2 B): 4 + 2 + 1 (mask) + 2 (dropout out) = 9 vs the paper's 5.
    adjusted = paper + 24 * s * b * H + 16 * s * b + 4 * A * s * s * b
    assert prof.layer_saved[1] == pytest.approx(adjusted, rel=0.02)
