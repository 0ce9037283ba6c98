"""From the live-tensor peak to the three peaks a run shows: allocated, reserved, device.

allocated = tensors + cuBLAS workspaces (PyTorch allocates one per handle and stream through
its caching allocator, so ``max_memory_allocated`` counts them; training uses two threads:
forward and autograd's backward); reserved = tensors x allocator reserve factor, rounded to
the 2 MiB segment, plus the workspaces; device = reserved + CUDA context + paged
(unified-memory) optimizer states + other memory outside PyTorch.

Constants: per GPU family from ``data/calibration.json`` when measured, else the priors in
``data/constants.json`` (each with its source). Source: c10/cuda/CUDACachingAllocator.cpp
(segment sizes), aten/src/ATen/cuda/CublasHandlePool.cpp (workspace size per architecture).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramcalc import catalog
from vramcalc.specs import GpuSpec
from vramcalc.units import round_up

__all__ = ["Overheads", "overheads"]

# GPU families whose cuBLAS workspace is the sm90+ size (CublasHandlePool.cpp)
_LARGE_WORKSPACE_FAMILIES = ("hopper", "blackwell")


@dataclass(frozen=True)
class Overheads:
    """The three peaks (bytes) and where the difference to the live tensors goes."""

    allocated: int
    reserved: int
    device: int
    details: dict[str, int] = field(default_factory=dict)
    assumptions: dict[str, str | int | float | bool | None] = field(default_factory=dict)


def overheads(gpu: GpuSpec | None, tensors: int, paged: int, *, workspaces: int) -> Overheads:
    """Allocated, reserved and device bytes from the live-tensor peak ``tensors``.

    Args:
        gpu: the GPU (its family selects calibrated constants), or None for the priors.
        tensors: live tensor bytes at the peak.
        paged: bytes in CUDA unified memory (paged optimizer states), outside the allocator.
        workspaces: cuBLAS workspaces alive (one per handle and stream that ran a matmul).

    """
    cal = catalog.calibration().get("families", {})
    fam = cal.get(gpu.family) if gpu is not None else None
    src = "calibration" if fam else "prior"
    fam = fam or {}
    factor = float(
        fam.get("allocator_reserve_factor", catalog.constant("allocator_reserve_factor"))
    )
    context = int(fam.get("cuda_context_bytes", catalog.constant("cuda_context_bytes")))
    large = gpu is not None and gpu.family.lower() in _LARGE_WORKSPACE_FAMILIES
    ws = int(catalog.constant("cublas_workspace_bytes_sm90" if large else "cublas_workspace_bytes"))
    ws *= workspaces
    seg = int(catalog.constant("alloc_small_segment_bytes"))
    allocated = tensors + ws
    reserved = round_up(int(tensors * factor), seg) + ws
    other = int(catalog.constant("nvml_other_bytes"))
    device = reserved + context + paged + other
    details = {
        "base/cuda_context": context,
        "base/cublas_workspace": ws,
        "base/allocator_reserve": reserved - allocated,
    }
    if paged:
        details["optimizer/paged_unified_memory"] = paged
    assumptions: dict[str, str | int | float | bool | None] = {
        "allocator_reserve_factor": factor,
        "cuda_context_bytes": context,
        "gpu_constants": src,
    }
    return Overheads(allocated, reserved, device, details, assumptions)
