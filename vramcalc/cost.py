"""Training time and money from FLOPs, the GPU catalog and a utilisation factor.

``time = total FLOPs / (GPUs x dense peak FLOP/s of the compute dtype x MFU)`` (+ the
bandwidth-bound dequantisation of a 4-bit base under QLoRA), and
``cost = time x GPUs x price per GPU-hour``. Communication, data loading, evaluation and
checkpoint saving are not modelled separately: they are what an MFU below 1 absorbs.

Source: the MFU definition of Chowdhery et al. 2022 (PaLM), Appendix B; the end-to-end time
estimate ``8 T P / (n X)`` of Narayanan et al. 2021 (Megatron-LM), Section 5.1.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from vramcalc import catalog
from vramcalc.enums import DType, MixedPrecision, Offload, PeftMethod, Quant, Task, ZeroStage
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.flops import (
    FlopsPerToken,
    skipped_by_early_stop,
    training_flops_per_token,
)
from vramcalc.report import CostReport
from vramcalc.specs import CostSpec, GpuSpec, ModelSpec, ParallelSpec, TrainingSpec

__all__ = [
    "StepTiming",
    "compute_dtype",
    "default_mfu",
    "dequant_seconds_per_micro_step",
    "estimate_cost",
    "estimate_step_time",
    "peak_tflops",
    "step_time_s",
    "tokens_per_step",
    "training_time_s",
]

SECONDS_PER_HOUR = 3600.0
TERA = 1e12
GIGA = 1e9
# bitsandbytes 4-bit dequantisation per weight element and call: the packed weight is read, a
# compute-dtype copy is written, and the matmul reads that copy back (two compute-dtype passes).
DEQUANT_COMPUTE_PASSES = 2


def compute_dtype(training: TrainingSpec, parallel: ParallelSpec | None = None) -> str:
    """Return the dtype the matmuls run in: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    A DeepSpeed ``bf16``/``fp16`` section wins; then autocast (``--mixed-precision``); then the
    parameter storage dtype. A quantized base computes in the dtype of the non-quantized
    parameters (``bnb_4bit_compute_dtype`` is normally set to it).

    Source: accelerate ``mixed_precision``; DeepSpeed config ``bf16.enabled``/``fp16.enabled``.
    """
    if parallel is not None and parallel.zero is not None and parallel.zero.zero_stage:
        return parallel.zero.precision
    if training.mixed_precision != MixedPrecision.NO:
        return training.mixed_precision.value
    return training.param_dtype.value if training.param_dtype != DType.FP32 else "fp32"


def peak_tflops(gpu: GpuSpec, dtype: str, *, allow_tf32: bool = False) -> tuple[float, str]:
    """Dense peak TFLOPS of ``gpu`` for matmuls in ``dtype``, and the catalog key used.

    fp32 uses the plain ``fp32`` peak: PyTorch runs fp32 matmuls in full fp32 by default
    (``torch.backends.cuda.matmul.allow_tf32`` is ``False`` since 1.12, i.e.
    ``torch.get_float32_matmul_precision() == "highest"``); pass ``allow_tf32=True`` for jobs
    that enable TF32 (HF ``TrainingArguments(tf32=True)``). A GPU without tensor-core support
    for the dtype (bf16 on T4/V100) falls back to its ``fp32`` peak.

    Source: PyTorch docs, "CUDA semantics: TensorFloat-32 (TF32) on Ampere (and later)
    devices"; peaks from ``data/gpus.json``.

    Raises:
        InvalidConfigError: the GPU row has neither the dtype nor ``fp32``.

    """
    key = "tf32" if dtype == "fp32" and allow_tf32 and "tf32" in gpu.tflops else dtype
    if key not in gpu.tflops:
        key = "fp32"
    if key not in gpu.tflops:
        raise InvalidConfigError(
            f"GPU '{gpu.name}' has no peak TFLOPS for '{dtype}' or 'fp32' in data/gpus.json; "
            f"listed: {', '.join(sorted(gpu.tflops))}"
        )
    return gpu.tflops[key], key


def default_mfu(training: TrainingSpec) -> float:
    """Default model-FLOPs utilisation (``mfu_train_default`` in ``data/constants.json``).

    The same for full fine-tuning, LoRA and QLoRA (see the constant's source for why).
    """
    return float(catalog.constant("mfu_train_default"))


def tokens_per_step(training: TrainingSpec, parallel: ParallelSpec) -> int:
    """Tokens in one optimizer step over all GPUs: batch x seq x grad_accum x world size."""
    return training.batch_size * training.seq_len * training.grad_accum * parallel.dp


def training_time_s(
    total_flops: float, n_gpus: int, peak_tflops_per_gpu: float, mfu: float
) -> float:
    """Seconds to execute ``total_flops`` on ``n_gpus`` at ``mfu`` of the dense peak.

    Source: Narayanan et al. 2021, Section 5.1 (time = FLOPs / (n X)).
    """
    return total_flops / (n_gpus * peak_tflops_per_gpu * TERA * mfu)


def step_time_s(
    flops_per_token: float, tokens: int, n_gpus: int, peak_tflops_per_gpu: float, mfu: float
) -> float:
    """Seconds for one step of ``tokens`` tokens (compute only, see :func:`training_time_s`)."""
    return training_time_s(flops_per_token * tokens, n_gpus, peak_tflops_per_gpu, mfu)


def _is_4bit(training: TrainingSpec) -> bool:
    return training.quant in (Quant.NF4, Quant.FP4) or (
        training.quant is None
        and training.peft is not None
        and training.peft.method == PeftMethod.QLORA
    )


def _dequant_element_passes(
    model: ModelSpec, inventory: Iterable[ParamGroup], training: TrainingSpec
) -> tuple[int, int]:
    """Quantized weight elements, and element-dequantisations per micro-step.

    Quantized: ``kind="linear"`` groups that are not adapters and not MoE experts stored as
    3-D parameters (``ParamGroup.expert``): bitsandbytes replaces ``nn.Linear`` modules only,
    and ``lm_head`` stays 16-bit. Each is dequantized in the forward and for the input gradient
    in the backward, and once more when checkpointing re-runs it (not the MLP output projection
    under non-reentrant early stop, see ``flops.skipped_by_early_stop``).
    """
    numel = passes = 0
    for g in inventory:
        if g.kind != "linear" or "lora" in g.key or getattr(g, "expert", False):
            continue
        n = g.weight_numel * g.count
        calls = 2 + (1 if training.grad_ckpt and not skipped_by_early_stop(g, model) else 0)
        numel += n
        passes += calls * n
    return numel, passes


def dequant_seconds_per_micro_step(
    quantized_numel: int,
    gpu: GpuSpec,
    dtype: str,
    *,
    calls: int,
    quant: str = "nf4",
) -> float:
    """Bandwidth-bound time of bitsandbytes 4-bit dequantisation in one micro-step on one GPU.

    ``bitsandbytes.autograd._functions.MatMul4Bit`` dequantizes the whole weight to the compute
    dtype before ``torch.nn.functional.linear`` in the forward, and again for ``grad_A`` in the
    backward (and once more in the recomputed forward under checkpointing). Each call reads the
    4-bit weight, writes a compute-dtype copy and the matmul reads it back; the block absmax
    (one per 64 weights) is ignored. Time = bytes / peak bandwidth, an optimistic bound.

    Args:
        quantized_numel: 4-bit weight elements held by this GPU.
        gpu: the GPU (``bandwidth_gb_s``).
        dtype: compute dtype name (``bf16``, ``fp16``, ``fp32``).
        calls: dequantisations of every weight per micro-step (2, or 3 with checkpointing).
        quant: the 4-bit storage dtype (``nf4`` or ``fp4``).

    Source: bitsandbytes ``bitsandbytes/autograd/_functions.py`` (``MatMul4Bit.forward`` and
    ``.backward``); widths from ``data/dtypes.json``.

    """
    if quantized_numel == 0 or calls == 0:
        return 0.0
    bits = catalog.dtype_bits(quant) + DEQUANT_COMPUTE_PASSES * catalog.dtype_bits(dtype)
    return calls * quantized_numel * bits / 8 / (gpu.bandwidth_gb_s * GIGA)


@dataclass(frozen=True)
class StepTiming:
    """Time of one optimizer step on the job's GPUs.

    Attributes:
        flops: FLOPs per token by pass.
        compute_dtype: dtype the matmuls run in.
        peak_key: catalog key of the peak used (``bf16``, ``fp32``, ``tf32``...).
        peak_tflops_per_gpu: dense peak TFLOPS per GPU used.
        mfu: model-FLOPs utilisation used.
        n_gpus: GPUs running the job (data-parallel world size).
        tokens_per_step: tokens in one optimizer step over all GPUs.
        compute_s: FLOP-bound seconds of one optimizer step.
        dequant_s: bandwidth-bound 4-bit dequantisation seconds of one optimizer step.
        notes: what was assumed.

    """

    flops: FlopsPerToken
    compute_dtype: str
    peak_key: str
    peak_tflops_per_gpu: float
    mfu: float
    n_gpus: int
    tokens_per_step: int
    compute_s: float
    dequant_s: float
    notes: tuple[str, ...]

    @property
    def step_time_s(self) -> float:
        """Seconds of one optimizer step (compute + dequantisation)."""
        return self.compute_s + self.dequant_s


def _vision_tokens(training: TrainingSpec) -> dict[str, float] | None:
    """Tokens a vision-language model's tower and projector run over, per LM token.

    The tower runs over ``images x tower tokens`` per row, the projector's output over
    ``images x LM tokens`` (``formulas/vision.py``); the language model over ``seq_len``
    (which already counts the image tokens). Without images neither runs.
    """
    vis = training.vision
    if vis is None:
        return None
    return {
        "vision": vis.images * vis.patches / training.seq_len,
        "projector": vis.images * vis.tokens / training.seq_len,
    }


def estimate_step_time(
    model: ModelSpec,
    training: TrainingSpec,
    parallel: ParallelSpec,
    gpu: GpuSpec,
    inventory: Iterable[ParamGroup],
    trainable_keys: Collection[str],
    *,
    mfu: float | None = None,
    allow_tf32: bool = False,
) -> StepTiming:
    """Time of one optimizer step: ``batch x seq x grad_accum x GPUs`` tokens.

    Needs no token count, so the engine can show it for any estimate with ``--gpu``. Arguments
    are those of :func:`estimate_cost` (``mfu=None`` takes the catalog default).

    Raises:
        InvalidConfigError: an MFU outside (0, 1].

    Source: Chowdhery et al. 2022 (PaLM), Appendix B (MFU); bitsandbytes ``MatMul4Bit`` for the
    dequantisation term (see :func:`dequant_seconds_per_micro_step`).

    """
    mfu = mfu if mfu is not None else default_mfu(training)
    if not 0 < mfu <= 1:
        raise InvalidConfigError(f"mfu must be in (0, 1], got {mfu}")
    groups = tuple(inventory)
    flops = training_flops_per_token(
        model,
        groups,
        trainable_keys,
        training.seq_len,
        attn=training.attn,
        grad_ckpt=training.grad_ckpt,
        task=training.task,
        stack_tokens=_vision_tokens(training),
    )
    dtype = compute_dtype(training, parallel)
    peak, peak_key = peak_tflops(gpu, dtype, allow_tf32=allow_tf32)
    n_gpus = parallel.world_size
    step_tokens = tokens_per_step(training, parallel)
    compute_s = step_time_s(flops.total, step_tokens, n_gpus, peak, mfu)
    notes = [
        f"compute dtype {dtype}, peak {peak:g} TFLOPS ({peak_key}, dense) per GPU, MFU {mfu:g}",
        f"FLOPs per token: forward {flops.forward:.4g}, backward {flops.backward:.4g}, "
        f"recompute {flops.recompute:.4g}",
    ]
    if peak_key != dtype and not (dtype == "fp32" and peak_key == "tf32"):
        notes.append(f"{gpu.name} has no {dtype} tensor-core peak in the catalog; fp32 peak used")
    if dtype == "fp32" and not allow_tf32:
        notes.append("fp32 matmuls counted at the fp32 peak (PyTorch's default: TF32 off)")

    dequant_s = 0.0
    qnumel, qpasses = _dequant_element_passes(model, groups, training)
    if _is_4bit(training) and qnumel and training.task == Task.TRAIN:
        if parallel.zero_stage >= ZeroStage.PARAMETERS:
            qpasses = -(-qpasses // n_gpus)
        quant = training.quant.value if training.quant is not None else Quant.NF4.value
        per_micro = dequant_seconds_per_micro_step(qpasses, gpu, dtype, calls=1, quant=quant)
        dequant_s = per_micro * training.grad_accum
        notes.append(
            f"4-bit dequantisation adds {dequant_s:.3g} s per step (bandwidth-bound, "
            f"{qpasses / qnumel:.2g} passes over the quantized weights per micro-step)"
        )
    if n_gpus > 1:
        notes.append("communication is not modelled separately: it is part of the MFU")
    z = parallel.zero
    if z is not None and (z.offload_optimizer != Offload.NONE or z.offload_param != Offload.NONE):
        notes.append(
            "ZeRO offload slows steps (host optimizer step, PCIe transfers); not modelled: "
            "lower --mfu to account for it"
        )
    if parallel.fsdp is not None and parallel.fsdp.offload:
        notes.append(
            "FSDP CPU offload steps the optimizer on the CPU and moves shards over PCIe; not "
            "modelled: lower --mfu to account for it"
        )
    if parallel.pp > 1:
        notes.append(
            "pipeline bubble (pp - 1) / (micro-batches + pp - 1) of each step is part of the MFU"
        )
    return StepTiming(
        flops=flops,
        compute_dtype=dtype,
        peak_key=peak_key,
        peak_tflops_per_gpu=peak,
        mfu=mfu,
        n_gpus=n_gpus,
        tokens_per_step=step_tokens,
        compute_s=compute_s,
        dequant_s=dequant_s,
        notes=tuple(notes),
    )


def estimate_cost(
    model: ModelSpec,
    training: TrainingSpec,
    parallel: ParallelSpec,
    gpu: GpuSpec,
    cost: CostSpec,
    inventory: Iterable[ParamGroup],
    trainable_keys: Collection[str],
    *,
    allow_tf32: bool = False,
) -> CostReport:
    """Time and money of a training job.

    The engine calls it after resolving the request, only when ``cost.tokens`` is set::

        estimate_cost(model_spec, training_spec, parallel_spec, gpu_spec,
                      CostSpec(tokens=..., epochs=..., mfu=..., price_usd_per_gpu_hour=...),
                      inventory, trainable_keys)

    Args:
        model: resolved architecture.
        training: resolved step (seq_len, batch, grad_accum, dtypes, PEFT, quant, grad_ckpt,
            attn, task).
        parallel: data-parallel layout; ``world_size`` GPUs run the job.
        gpu: catalog row of the GPU (peak TFLOPS, bandwidth, price).
        cost: ``tokens`` = training tokens per epoch (required), ``epochs`` (may be fractional),
            optional ``mfu`` and ``price_usd_per_gpu_hour`` overrides.
        inventory: the model's parameter groups (``counts.param_inventory``) plus any adapter
            groups to count (LoRA ``lora_A``/``lora_B`` as ``kind="linear"``).
        trainable_keys: keys of the trainable groups; empty means inference (forward only).
        allow_tf32: count fp32 matmuls at the TF32 peak (off by default, as in PyTorch).

    Returns:
        A ``CostReport``: ``tokens`` per epoch, ``flops_per_token`` (forward + backward +
        recompute), ``total_flops = flops_per_token x tokens x epochs``, the dense peak used,
        the MFU, ``step_time_s`` of one optimizer step (``batch x seq x grad_accum x GPUs``
        tokens), ``time_s = total_flops / (GPUs x peak x MFU)`` plus the dequantisation time of
        a 4-bit base, the price and ``cost_usd = time_s / 3600 x GPUs x price``. Notes name the
        compute dtype, the FLOPs split and what is not modelled.

    Raises:
        InvalidConfigError: no ``tokens``; an MFU outside (0, 1]; a negative price.

    Source: Chowdhery et al. 2022 (PaLM), Appendix B (MFU); Narayanan et al. 2021, Section 5.1.

    """
    if cost.tokens is None or cost.tokens <= 0:
        raise InvalidConfigError(
            "time and cost need the number of training tokens: pass --tokens N (N > 0)"
        )
    if cost.epochs <= 0:
        raise InvalidConfigError(f"epochs must be > 0, got {cost.epochs}")
    price = cost.price_usd_per_gpu_hour
    if price is None:
        price = gpu.price_usd_per_gpu_hour
    if price < 0:
        raise InvalidConfigError(f"price per GPU-hour must be >= 0, got {price}")
    timing = estimate_step_time(
        model,
        training,
        parallel,
        gpu,
        inventory,
        trainable_keys,
        mfu=cost.mfu,
        allow_tf32=allow_tf32,
    )
    notes = list(timing.notes)
    if price == 0 and cost.price_usd_per_gpu_hour is None:
        notes.append(
            f"no on-demand price for {gpu.name} in the catalog: cost is 0, "
            "pass --price-per-gpu-hour"
        )
    n_gpus = timing.n_gpus
    total_tokens = cost.tokens * cost.epochs
    total_flops = timing.flops.total * total_tokens
    steps = total_tokens / timing.tokens_per_step
    time_s = (
        training_time_s(total_flops, n_gpus, timing.peak_tflops_per_gpu, timing.mfu)
        + timing.dequant_s * steps
    )
    return CostReport(
        gpu=gpu.name,
        n_gpus=n_gpus,
        tokens=cost.tokens,
        epochs=cost.epochs,
        flops_per_token=timing.flops.total,
        total_flops=total_flops,
        peak_tflops_per_gpu=timing.peak_tflops_per_gpu,
        mfu=timing.mfu,
        step_time_s=timing.step_time_s,
        time_s=time_s,
        price_usd_per_gpu_hour=price,
        cost_usd=time_s / SECONDS_PER_HOUR * n_gpus * price,
        notes=notes,
    )
