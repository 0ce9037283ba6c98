"""Time and cost: a published end-to-end estimate, dtype/peak choice, and scaling invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramcalc import catalog
from vramcalc.cost import (
    compute_dtype,
    default_mfu,
    dequant_seconds_per_micro_step,
    estimate_cost,
    estimate_step_time,
    peak_tflops,
    tokens_per_step,
    training_time_s,
)
from vramcalc.enums import (
    Attention,
    DType,
    MixedPrecision,
    Offload,
    PeftMethod,
    Quant,
    ZeroStage,
)
from vramcalc.errors import InvalidConfigError, VramcalcError
from vramcalc.formulas.counts import ParamGroup
from vramcalc.specs import CostSpec, ModelSpec, ParallelSpec, PeftSpec, TrainingSpec, ZeroSpec

DAY = 86400.0


def small_model() -> tuple[ModelSpec, list[ParamGroup]]:
    h, nl, v = 512, 4, 1000
    spec = ModelSpec(
        name="tiny",
        model_type="llama",
        hidden_size=h,
        num_hidden_layers=nl,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        intermediate_size=4 * h,
        vocab_size=v,
    )
    inv = [
        ParamGroup(
            key="embed/tok",
            module="embed_tokens",
            kind="embedding",
            weight_numel=v * h,
            stack="embed",
        ),
        ParamGroup(
            key="decoder/attn/qkvo",
            module="q_proj",
            kind="linear",
            weight_numel=4 * h * h,
            count=nl,
        ),
        ParamGroup(
            key="decoder/mlp/fc", module="up_proj", kind="linear", weight_numel=8 * h * h, count=nl
        ),
        ParamGroup(
            key="head/lm_head", module="lm_head", kind="lm_head", weight_numel=v * h, stack="head"
        ),
    ]
    return spec, inv


def keys(inv: list[ParamGroup]) -> set[str]:
    return {g.key for g in inv}


def test_megatron_gpt3_175b_end_to_end_time() -> None:
    """Narayanan et al. 2021, Section 5.1: GPT-3 175B (P = 175e9) on T = 300e9 tokens with
    n = 1024 A100s at X = 140 TFLOP/s per GPU takes 8TP/(nX) ~ 34 days."""
    a100 = catalog.gpu("a100-80gb")
    peak, key = peak_tflops(a100, "bf16")
    assert (peak, key) == (312.0, "bf16")
    seconds = training_time_s(8 * 175e9 * 300e9, 1024, peak, 140 / peak)
    assert seconds / DAY == pytest.approx(34, abs=0.5)


def test_estimate_cost_hand_computation() -> None:
    """time = tokens x epochs x FLOPs/token / (GPUs x peak x MFU); cost = hours x GPUs x price.

    Hand count (all trainable, eager attention, s = 256, no checkpointing):
    matmul weights N = 4 * 12 * 512^2 + 1000 * 512 = 13,094,912 -> 6N = 78,569,472;
    attention 3 * 4 * 256 * 512 * 4 layers = 6,291,456; total 84,860,928 FLOPs/token.
    """
    spec, inv = small_model()
    training = TrainingSpec(
        seq_len=256, batch_size=4, grad_accum=2, param_dtype=DType.BF16, attn=Attention.EAGER
    )
    parallel = ParallelSpec(gpus_per_node=2)
    gpu = catalog.gpu("h100-sxm")
    report = estimate_cost(
        spec,
        training,
        parallel,
        gpu,
        CostSpec(tokens=10_000_000, epochs=2, mfu=0.5),
        inv,
        keys(inv),
    )
    per_token = 84_860_928
    assert report.flops_per_token == per_token
    assert report.total_flops == per_token * 10_000_000 * 2
    expected_s = per_token * 2e7 / (2 * 989.4e12 * 0.5)
    assert report.time_s == pytest.approx(expected_s, rel=1e-12)
    assert report.cost_usd == pytest.approx(expected_s / 3600 * 2 * gpu.price_usd_per_gpu_hour)
    assert report.step_time_s == pytest.approx(per_token * 4 * 256 * 2 * 2 / (2 * 989.4e12 * 0.5))
    assert (report.n_gpus, report.tokens, report.epochs, report.mfu) == (2, 10_000_000, 2, 0.5)
    assert report.peak_tflops_per_gpu == 989.4
    assert any("bf16" in n for n in report.notes)


def test_step_time_without_tokens() -> None:
    """One step of batch 8 x seq 256 x accum 1 on one GPU: 2048 tokens x FLOPs/token / (peak x
    MFU); equal to the report's step time."""
    spec, inv = small_model()
    t = TrainingSpec(seq_len=256, batch_size=8, param_dtype=DType.BF16, attn=Attention.EAGER)
    gpu = catalog.gpu("l40s")
    timing = estimate_step_time(spec, t, ParallelSpec(), gpu, inv, keys(inv), mfu=0.4)
    assert timing.tokens_per_step == 2048
    assert timing.step_time_s == pytest.approx(84_860_928 * 2048 / (362.05e12 * 0.4))
    report = estimate_cost(
        spec, t, ParallelSpec(), gpu, CostSpec(tokens=10**6, mfu=0.4), inv, keys(inv)
    )
    assert report.step_time_s == pytest.approx(timing.step_time_s)


def test_gpu_without_price_says_so() -> None:
    spec, inv = small_model()
    r = estimate_cost(
        spec,
        TrainingSpec(param_dtype=DType.BF16),
        ParallelSpec(),
        catalog.gpu("mi250x"),
        CostSpec(tokens=1000),
        inv,
        keys(inv),
    )
    assert r.cost_usd == 0
    assert any("--price-per-gpu-hour" in n for n in r.notes)


def test_offload_is_flagged() -> None:
    spec, inv = small_model()
    r = estimate_cost(
        spec,
        TrainingSpec(param_dtype=DType.BF16),
        ParallelSpec(zero=ZeroSpec(zero_stage=ZeroStage.GRADIENTS, offload_optimizer=Offload.CPU)),
        catalog.gpu("a100-80gb"),
        CostSpec(tokens=1000),
        inv,
        keys(inv),
    )
    assert any("offload" in n for n in r.notes)


def test_tokens_per_step() -> None:
    t = TrainingSpec(batch_size=3, seq_len=1024, grad_accum=5)
    assert tokens_per_step(t, ParallelSpec(gpus_per_node=4, nodes=2)) == 3 * 1024 * 5 * 8


def test_defaults_and_overrides() -> None:
    spec, inv = small_model()
    gpu = catalog.gpu("a100-80gb")
    t = TrainingSpec(param_dtype=DType.BF16)
    base = estimate_cost(spec, t, ParallelSpec(), gpu, CostSpec(tokens=1000), inv, keys(inv))
    assert base.mfu == default_mfu(t) == catalog.constant("mfu_train_default")
    assert base.price_usd_per_gpu_hour == gpu.price_usd_per_gpu_hour
    override = estimate_cost(
        spec,
        t,
        ParallelSpec(),
        gpu,
        CostSpec(tokens=1000, mfu=base.mfu / 2, price_usd_per_gpu_hour=10.0),
        inv,
        keys(inv),
    )
    assert override.time_s == pytest.approx(2 * base.time_s)
    assert override.price_usd_per_gpu_hour == 10.0
    assert override.cost_usd == pytest.approx(override.time_s / 3600 * 10.0)


@pytest.mark.parametrize(
    ("param_dtype", "amp", "ds", "expected"),
    [
        (DType.FP32, MixedPrecision.NO, None, "fp32"),
        (DType.BF16, MixedPrecision.NO, None, "bf16"),
        (DType.FP16, MixedPrecision.NO, None, "fp16"),
        (DType.FP32, MixedPrecision.BF16, None, "bf16"),
        (DType.FP32, MixedPrecision.FP16, None, "fp16"),
        (DType.FP32, MixedPrecision.NO, "bf16", "bf16"),
    ],
)
def test_compute_dtype(
    param_dtype: DType, amp: MixedPrecision, ds: str | None, expected: str
) -> None:
    t = TrainingSpec(param_dtype=param_dtype, mixed_precision=amp)
    zero = ZeroSpec(zero_stage=ZeroStage.GRADIENTS, precision=ds) if ds else None  # type: ignore[arg-type]
    p = ParallelSpec(zero=zero)
    assert compute_dtype(t, p) == expected


def test_fp32_uses_fp32_peak_unless_tf32_allowed() -> None:
    a100 = catalog.gpu("a100-40gb")
    assert peak_tflops(a100, "fp32") == (19.5, "fp32")
    assert peak_tflops(a100, "fp32", allow_tf32=True) == (156.0, "tf32")
    # no bf16 tensor cores on a T4: fall back to the fp32 peak
    assert peak_tflops(catalog.gpu("t4"), "bf16") == (8.1, "fp32")
    assert peak_tflops(catalog.gpu("t4"), "fp16") == (65.0, "fp16")


def test_fallback_is_noted() -> None:
    spec, inv = small_model()
    r = estimate_cost(
        spec,
        TrainingSpec(param_dtype=DType.BF16),
        ParallelSpec(),
        catalog.gpu("v100-16gb"),
        CostSpec(tokens=1000),
        inv,
        keys(inv),
    )
    assert r.peak_tflops_per_gpu == 15.7
    assert any("fp32 peak used" in n for n in r.notes)


def test_missing_tokens_and_bad_mfu_are_clear_errors() -> None:
    spec, inv = small_model()
    gpu = catalog.gpu("l4")
    with pytest.raises(InvalidConfigError, match="--tokens"):
        estimate_cost(spec, TrainingSpec(), ParallelSpec(), gpu, CostSpec(), inv, keys(inv))
    with pytest.raises(VramcalcError, match="mfu"):
        estimate_cost(
            spec, TrainingSpec(), ParallelSpec(), gpu, CostSpec(tokens=10, mfu=1.5), inv, keys(inv)
        )


def test_lora_is_cheaper_than_full_fine_tuning() -> None:
    spec, inv = small_model()
    gpu = catalog.gpu("rtx-4090")
    t = TrainingSpec(param_dtype=DType.BF16)
    full = estimate_cost(spec, t, ParallelSpec(), gpu, CostSpec(tokens=10**6), inv, keys(inv))
    lora_inv = [
        *inv,
        ParamGroup(
            key="decoder/attn/q_proj/lora_A",
            module="lora_A",
            kind="linear",
            weight_numel=8 * 512,
            count=4,
        ),
    ]
    lora = estimate_cost(
        spec,
        t,
        ParallelSpec(),
        gpu,
        CostSpec(tokens=10**6),
        lora_inv,
        {"decoder/attn/q_proj/lora_A"},
    )
    assert lora.cost_usd < full.cost_usd


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 10**12),
    epochs=st.floats(0.1, 20),
    k=st.integers(2, 16),
    gpus=st.integers(1, 64),
)
def test_scaling_invariants(tokens: int, epochs: float, k: int, gpus: int) -> None:
    """Time and cost are linear in tokens and epochs; more GPUs cut time, not cost."""
    spec, inv = small_model()
    gpu = catalog.gpu("h100-sxm")
    t = TrainingSpec(param_dtype=DType.BF16)

    def run(n_tokens: int, n_epochs: float, n_gpus: int) -> tuple[float, float]:
        r = estimate_cost(
            spec,
            t,
            ParallelSpec(gpus_per_node=n_gpus),
            gpu,
            CostSpec(tokens=n_tokens, epochs=n_epochs),
            inv,
            keys(inv),
        )
        return r.time_s, r.cost_usd

    t1, c1 = run(tokens, epochs, gpus)
    tk, ck = run(tokens * k, epochs, gpus)
    assert tk == pytest.approx(k * t1) and ck == pytest.approx(k * c1)
    te, ce = run(tokens, epochs * k, gpus)
    assert te == pytest.approx(k * t1) and ce == pytest.approx(k * c1)
    tg, cg = run(tokens, epochs, gpus * k)
    assert tg == pytest.approx(t1 / k) and cg == pytest.approx(c1)


WIDTHS = {"nf4": 4, "fp4": 4, "int8": 8, "bf16": 16, "fp16": 16, "fp32": 32}


def test_qlora_dequantisation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """bitsandbytes MatMul4Bit: each call reads 4-bit weights, writes and re-reads a bf16 copy:
    (4 + 2 * 16) bits = 4.5 bytes per weight; forward + backward = 2 calls per micro-step.
    7e9 weights on an H100 (3350 GB/s): 2 * 7e9 * 4.5 / 3.35e12 = 18.8 ms.

    Storage widths are the dtypes' definitions (stubbed so this runs before data/dtypes.json
    exists; the next test checks the real file has them)."""
    monkeypatch.setattr(catalog, "dtype_bits", WIDTHS.__getitem__)
    h100 = catalog.gpu("h100-sxm")
    s = dequant_seconds_per_micro_step(7 * 10**9, h100, "bf16", calls=2)
    assert s == pytest.approx(2 * 7e9 * 4.5 / 3.35e12)
    spec, inv = small_model()
    q = TrainingSpec(
        param_dtype=DType.BF16, peft=PeftSpec(method=PeftMethod.QLORA, r=8), quant=Quant.NF4
    )
    lo = TrainingSpec(param_dtype=DType.BF16, peft=PeftSpec(method=PeftMethod.LORA, r=8))
    cost = CostSpec(tokens=10**6)
    rq = estimate_cost(spec, q, ParallelSpec(), h100, cost, inv, {"lora"})
    rl = estimate_cost(spec, lo, ParallelSpec(), h100, cost, inv, {"lora"})
    assert rq.flops_per_token == rl.flops_per_token
    # quantized: the two linear groups, 12 * 512^2 * 4 layers; lm_head stays 16-bit
    qnumel = 12 * 512 * 512 * 4
    steps = 10**6 / 512
    extra = steps * 2 * qnumel * 4.5 / 3.35e12
    assert rq.time_s - rl.time_s == pytest.approx(extra)
    assert any("dequantisation" in n for n in rq.notes)


def _dtypes_available() -> bool:
    try:
        catalog.dtype_bits("bf16")
    except (FileNotFoundError, KeyError, VramcalcError):
        return False
    return True


@pytest.mark.skipif(not _dtypes_available(), reason="data/dtypes.json not present yet")
def test_dtype_catalog_has_the_widths_cost_needs() -> None:
    for name in ("nf4", "fp4", "bf16", "fp16", "fp32"):
        assert catalog.dtype_bits(name) == WIDTHS[name]
