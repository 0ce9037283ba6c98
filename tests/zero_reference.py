"""Published ZeRO closed forms, kept as test oracles (the engine has one ZeRO model).

The ZeRO paper's Figure 1 formula and DeepSpeed's own estimators: the golden tests check the
engine's per-rank states (``vramcalc/formulas/sharding.py``), which itemise the same states
tensor by tensor and add buckets and gathered parameters, against them.
"""

from __future__ import annotations

__all__ = ["deepspeed_zero2_gpu_bytes", "deepspeed_zero3_gpu_bytes", "model_state_bytes"]


def model_state_bytes(psi: int, stage: int, n: int, k: int = 12) -> int:
    """Per-GPU model-state bytes of mixed-precision Adam under ZeRO stage ``stage``.

    2 bytes of fp16 parameters and 2 of gradients per parameter, plus ``k`` bytes of optimizer
    state (fp32 master copy, momentum and variance: K = 12); stage 1 partitions the optimizer
    states over ``n`` GPUs, stage 2 also the gradients, stage 3 also the parameters.

    Source: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models", Section 5.1 and Figure 1 ((2 + 2 + K)Psi, 2Psi + 2Psi + K Psi/N_d,
    2Psi + (2 + K)Psi/N_d, (2 + 2 + K)Psi/N_d).
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0-3, got {stage}")
    if n <= 0 or psi < 0:
        raise ValueError("psi must be >= 0 and n > 0")
    if stage == 0:
        return (2 + 2 + k) * psi
    if stage == 1:
        return 4 * psi + k * psi // n
    if stage == 2:
        return 2 * psi + (2 + k) * psi // n
    return (2 + 2 + k) * psi // n


def deepspeed_zero2_gpu_bytes(psi: int, n_gpus: int, *, cpu_offload: bool = False) -> int:
    """GPU bytes DeepSpeed's ZeRO-2 estimator prints (model states only).

    Source: DeepSpeed 0.19 ``runtime/zero/stage_1_and_2.py``
    ``estimate_zero2_model_states_mem_needs``: ``2 * total_params`` with CPU offload, else
    ``2 * total_params + int(18 * total_params / total_gpus)`` (16-bit params; 16-bit and fp32
    gradients, fp32 master and two Adam states partitioned).
    """
    if cpu_offload:
        return 2 * psi
    return 2 * psi + int(18 * psi / n_gpus)


def deepspeed_zero3_gpu_bytes(
    psi: int,
    largest_layer_params: int,
    n_gpus: int,
    *,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> int:
    """GPU bytes DeepSpeed's ZeRO-3 estimator prints (model states only).

    Source: DeepSpeed ``runtime/zero/stage3.py`` ``estimate_zero3_model_states_mem_needs``:
    ``largest_layer_memory = 4 * largest_layer_params``; with optimizer offload
    ``largest_layer_memory`` (params offloaded too) or ``largest_layer_memory + int(2 * psi /
    total_gpus)``; without, ``largest_layer_memory + int(18 * psi / total_gpus)``.
    """
    largest = 4 * largest_layer_params
    if offload_optimizer:
        return largest if offload_params else largest + int(2 * psi / n_gpus)
    return largest + int(18 * psi / n_gpus)
