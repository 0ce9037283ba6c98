"""Activations per layer against Korthikanti et al. 2022, Table 2, under matching assumptions."""

from __future__ import annotations

import pytest

import vramcalc

H, A = 768, 12  # GPT-2 small width and heads


def _layer_bytes(seq: int, attn: str, tp: int = 1, sp: bool = False) -> int:
    """Saved bytes of one GPT-2 block: 2-layer minus 1-layer model at the end of forward."""

    def saved(n_layer: int) -> int:
        cfg = {"model_type": "gpt2", "n_embd": H, "n_head": A, "n_layer": n_layer,
               "vocab_size": 50257, "n_positions": 4096}  # fmt: skip
        r = vramcalc.estimate(
            model=cfg, seq_len=seq, batch_size=1, dtype="bf16", attn=attn, gpus=tp, tp=tp,
            sequence_parallel=sp,
        )  # fmt: skip
        ev = next(e for e in r.timeline if e.step == 1 and e.event.startswith("final norm"))
        return ev.components["activations"]

    return saved(2) - saved(1)


def _coefficients(attn: str, tp: int = 1, sp: bool = False) -> tuple[float, float]:
    """Solve per-layer bytes = x * s*b*h + y * a*s^2*b from two sequence lengths (b = 1)."""
    s1, s2 = 1024, 2048
    m1, m2 = _layer_bytes(s1, attn, tp, sp), _layer_bytes(s2, attn, tp, sp)
    y = (m2 - 2 * m1) / (A * s2 * s2 - 2 * A * s1 * s1)
    x = (m1 - y * A * s1 * s1) / (s1 * H)
    return x, y


def test_korthikanti_table2_gpt_layer_eager_16bit() -> None:
    # Korthikanti et al. 2022, Table 2 (no parallelism, 16-bit, dropout, no flash):
    #   per layer = s*b*h*(34 + 5*a*s/h) bytes = 34 * sbh + 5 * a*s^2*b.
    # Documented differences of HF GPT-2 (transformers 5.24, eager attention):
    # * linear term: activation "gelu_new" is the python tanh formula, which saves 3 extra
    #   4h-wide 16-bit tensors (x^3 input, tanh output, 0.5*x*...) = 3 * 4 * 2 = +24 sbh;
    #   LayerNorm keeps fp32 mean and rstd per token: 2 norms * 2 * 4 B = 16 sb = 16/768 sbh.
    #   Expected: 34 + 24 + 16/768 = 58.02 sbh.
    # * quadratic term: the eager path computes softmax in fp32 (4 B instead of the paper's 2)
    #   and keeps its 16-bit cast (2 B), then the 1-byte CUDA dropout mask and the 2-byte
    #   dropout output: 4 + 2 + 1 + 2 = 9 (paper: 2 + 1 + 2 = 5).
    x, y = _coefficients("eager")
    assert x == pytest.approx(34 + 24 + 16 / 768, abs=0.05)
    assert y == pytest.approx(5 + 2 + 2, abs=0.01)


def test_flash_style_kernels_have_no_quadratic_term() -> None:
    # SDPA flash / memory-efficient kernels keep only the output and a per-row fp32 logsumexp:
    # nothing proportional to s^2 (Korthikanti's "5as/h" term vanishes).
    _x, y = _coefficients("sdpa")
    assert y == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("t", [2, 4])
def test_korthikanti_table2_tensor_parallel(t: int) -> None:
    # Korthikanti et al. 2022, Table 2, tensor parallel without sequence parallelism:
    #   per layer = s*b*h*(10 + 24/t + 5*a*s/(h*t)).
    # The 10 sbh every rank keeps whole: both LayerNorm inputs (4), the attention and MLP
    # inputs (2 + 2, the replicated LayerNorm outputs) and the two residual dropout masks (2);
    # the 24 sbh inside attention and the MLP and the a*s^2 terms split over t.
    # With the GPT-2 differences of the test above: gelu_new's +24 sbh is 4h-wide (split),
    # LayerNorm statistics (16/768 sbh) are whole, the quadratic term is 9 instead of 5 (split).
    x, y = _coefficients("eager", tp=t)
    assert x == pytest.approx(10 + (24 + 24) / t + 16 / 768, abs=0.05)
    assert y == pytest.approx(9 / t, abs=0.01)


@pytest.mark.parametrize("t", [2, 4])
def test_korthikanti_table2_sequence_parallel(t: int) -> None:
    # Table 2 with sequence parallelism: s*b*h/t * (34 + 5*a*s/h): Megatron also splits the
    # 10 sbh over the sequence, saving the column-parallel inputs sharded and gathering them
    # again in backward. torch's SequenceParallel + ColwiseParallel(input_layouts=Shard(1))
    # (what the engine models) splits the LayerNorm inputs, statistics and dropout masks but
    # saves the all-gathered attention and MLP inputs whole: 4 sbh stay unsplit.
    x, y = _coefficients("eager", tp=t, sp=True)
    assert x == pytest.approx(4 + (6 + 24 + 24 + 16 / 768) / t, abs=0.05)
    assert y == pytest.approx(9 / t, abs=0.01)
    megatron = 34 / t + 24 / t  # Table 2's 34/t plus the split gelu_new extras
    assert x - megatron == pytest.approx(4 - 4 / t + 16 / 768 / t, abs=0.05)


# ----------------------------------------------------------------------------- SSM, hybrids, T5

MAMBA = {"model_type": "mamba", "hidden_size": 128, "num_hidden_layers": 2, "state_size": 16,
         "vocab_size": 1000}  # fmt: skip


def _forward_activations(cfg: dict[str, object], **kw: object) -> int:
    r = vramcalc.estimate(model=cfg, **kw)  # type: ignore[arg-type]
    ev = next(e for e in r.timeline if e.step == 1 and e.event.startswith("final norm"))
    return ev.components["activations"]


def test_mamba_slow_scan_is_three_t_i_n_fp32_terms_per_layer() -> None:
    # transformers 5.24 mamba_selective_scan (sequential loop, fp32 model): exp(A*dt), dt*B
    # and the S per-position states (B x I x N each) are saved: 3 x T x I x N x 4 bytes per
    # layer; the rest of the layer is O(T x I). Doubling the state size N adds that much.
    b, s, inter = 2, 64, 2 * 128
    small = _forward_activations(MAMBA, batch_size=b, seq_len=s)
    big = _forward_activations({**MAMBA, "state_size": 32}, batch_size=b, seq_len=s)
    per_layer_n16 = 3 * b * s * inter * 16 * 4
    # x_proj's output (T x (R + 2N)) grows by 2 x 16 per token too: allow those few KiB
    assert big - small == pytest.approx(2 * per_layer_n16, rel=0.02)


def test_jamba_layers_follow_the_schedule() -> None:
    from vramcalc.engine import resolve
    from vramcalc.formulas.activations import activation_profile
    from vramcalc.formulas.counts import param_inventory
    from vramcalc.formulas.params import plan_params

    cfg = {"model_type": "jamba", "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_experts": 4, "num_experts_per_tok": 2, "attn_layer_period": 3,
           "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 0,
           "vocab_size": 1000}  # fmt: skip
    res = resolve(vramcalc.EstimateRequest(model=cfg, seq_len=64))
    inv = param_inventory(res.model)
    prof = activation_profile(
        res.model, inv, res.training, plan_params(res.model, inv, res.training)
    )
    saved = prof.layer_saved
    # configuration_jamba.layers_block_type: attention at 1, 4; layers_num_experts: MoE at 0, 2, 4
    kinds = ["ssm+moe", "attn+dense", "ssm+moe", "ssm+dense", "attn+moe", "ssm+dense"]
    for i in range(6):
        for j in range(6):
            assert (saved[i] == saved[j]) == (kinds[i] == kinds[j]), (i, j, saved)
    # a Mamba layer (T x I x N terms, I = 256, N = 16) keeps more than an attention layer
    assert saved[3] > saved[1]


T5 = {"model_type": "t5", "d_model": 128, "d_ff": 256, "num_layers": 2, "num_heads": 4,
      "d_kv": 32, "vocab_size": 1000, "dropout_rate": 0.0}  # fmt: skip


def test_t5_target_len_sizes_the_decoder_and_the_logits() -> None:
    same = vramcalc.estimate(model=T5, seq_len=128)
    explicit = vramcalc.estimate(model=T5, seq_len=128, target_len=128)
    assert same.peak == explicit.peak
    short = vramcalc.estimate(model=T5, seq_len=128, target_len=32, batch_size=8)
    long = vramcalc.estimate(model=T5, seq_len=128, target_len=128, batch_size=8)
    # T5ForConditionalGeneration: nn.CrossEntropyLoss over B x target x V logits; its
    # log_softmax output (fp32 model) is saved: 8 x 32 x 1000 x 4 bytes (peak: loss backward)
    assert short.details["activations/logits"] == 8 * 32 * 1000 * 4
    assert long.details["activations/logits"] == 8 * 128 * 1000 * 4
    assert short.assumptions["target_len"] == 32
    assert short.peak.allocated_bytes < long.peak.allocated_bytes
