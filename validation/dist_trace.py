"""Distributed trace: the real FSDP1/FSDP2/TP training step of rank 0, on fake CUDA, no GPU.

One process plays rank 0 of a world of ``gpus * nodes`` ranks: ``torch.distributed`` is
initialised with PyTorch's fake process group (``init_process_group("fake",
store=FakeStore(), rank=0, world_size=W)``, collectives return at once and move no data); the
model is built on meta by ``validation.build`` (LoRA and gradient checkpointing as a Trainer
run applies them), materialised as fake tensors on the fake CUDA device, then wrapped by the
REAL PyTorch and accelerate code, and stepped ``scenario.steps`` times under the same
``TorchDispatchMode`` tracker as ``validation.trace`` (live storage bytes of the device,
512-byte rounding; DTensors are tracked through their local tensors; storages that FSDP frees
and re-allocates with ``UntypedStorage.resize_`` are re-measured at each resize).

What is replicated (accelerate 1.15 with transformers 5.24's Trainer, ``distributed_type:
FSDP``, ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP``, ``fsdp_cpu_ram_efficient_loading:
false``, ``fsdp_activation_checkpointing: false``; gradient checkpointing is the Trainer's
``gradient_checkpointing=True``, i.e. transformers' non-reentrant checkpoint per decoder layer):

- **FSDP2** (``fsdp_version: 2``): ``accelerate.utils.fsdp_utils.fsdp2_prepare_model`` itself
  is called with an accelerate ``FullyShardedDataParallelPlugin`` (a stand-in ``Accelerator``
  holding the plugin and the device mesh): ``fully_shard`` on every decoder layer
  (``_no_split_modules``), then on the input embedding, then on ``[final norm, lm_head]``
  (one group, ``reshard_after_forward=False``), then on the root (torch's default, i.e. no
  reshard after forward for the root); ``reshard_after_forward`` of the layers is
  ``request.fsdp_reshard_after_forward`` (default True; shard_grad_op: False);
  ``CPUOffloadPolicy()`` (pinned) when ``fsdp_offload``. Hybrid shard: a 2-D mesh
  (``dp_replicate`` = nodes, ``dp_shard`` = gpus per node); no_shard: (``dp_replicate`` =
  world, ``dp_shard`` = 1).
- **FSDP1** (``fsdp_version: 1``): ``FullyShardedDataParallel(model, sharding_strategy,
  cpu_offload=CPUOffload(offload_params), auto_wrap_policy=transformer_auto_wrap_policy(decoder
  layer class), mixed_precision, backward_prefetch, use_orig_params, limit_all_gathers,
  sync_module_states=False, device_id=cuda:0)`` with the kwargs accelerate's
  ``Accelerator.prepare_model`` passes, built from the same plugin; with LoRA the policy is
  PEFT's ``fsdp_auto_wrap_policy`` (decoder layers plus every trainable leaf Linear, the LoRA
  A/B matrices, in its own unit), as ``Trainer`` installs it (``update_fsdp_plugin_peft``).
  Hybrid shard takes its intra-node group from ``torch.cuda.device_count()`` = gpus per node.
- **Mixed precision** ``mixed_precision=bf16``: accelerate sets FSDP1
  ``MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16)`` AND wraps the
  model's forward in ``torch.autocast(cuda, bf16)`` + ``convert_outputs_to_fp32`` (native AMP,
  ``Accelerator.prepare_model``), and upcasts a 16-bit flat parameter to fp32; FSDP2 gets
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16, output_dtype=bf16,
  cast_forward_inputs=True)``, trainable non-fp32 parameters are upcast to fp32 by
  ``fsdp2_prepare_model``, and there is **no** autocast (``_prepare_fsdp2`` never calls
  ``prepare_model``). ``dtype=bf16`` with ``mixed_precision=no``: bf16 parameters sharded,
  no policy. fp16 AMP (sharded grad scaler) is not traced.
- **TP** (``tp > 1``, FSDP2 only): torchtitan's Llama plan with ``parallelize_module`` on a
  2-D mesh (``dp_shard`` = world / tp, ``tp``): q/k/v and gate/up ``ColwiseParallel``, o and down
  ``RowwiseParallel``, the embedding ``RowwiseParallel(input_layouts=Replicate())``, the LM head
  ``ColwiseParallel(output_layouts=Replicate())`` (no loss parallel: full logits on every
  rank); with ``sequence_parallel`` the norms are ``SequenceParallel``, attention and MLP
  inputs are gathered by ``PrepareModuleInput`` (Shard(1) -> Replicate), o/down and the
  embedding output ``Shard(1)`` and the batch carries ``position_ids`` (the residual stream
  holds ``seq/tp`` tokens per rank). Then FSDP2 over ``dp_shard`` as above.
- **MoE** (mixtral): transformers picks its ``grouped_mm`` experts path when
  ``torch.cuda.get_device_capability() >= (8, 0)``; the stand-in answers (9, 0) (an H100/H200),
  so the static-shape grouped GEMM path runs (the token-loop path would need data-dependent
  shapes that fake tensors cannot have).

Stand-ins on fake CUDA (``_cuda_runtime``): ``torch.cuda.Stream``/``Event``/
``current_stream``/``stream()``/``synchronize``/``set_device`` and
``torch.accelerator.current_stream`` are no-ops (one stream: FSDP's
all-gather, reduce-scatter and offload streams and its events do nothing),
``Tensor.record_stream`` and FSDP1's ``_no_dispatch_record_stream`` are no-ops (the caching
allocator lowers ``allocated`` at free time even for a block with recorded streams; only the
block's reuse waits), ``is_available``/``is_initialized`` are true, ``device_count`` is the
gpus per node, ``current_device`` 0, ``get_device_capability`` (9, 0), ``pin_memory`` of a fake
CPU tensor returns it. Consequences: the timing-dependent overlap of a real GPU is absent —
every all-gather/reduce-scatter buffer lives exactly as long as the Python code holds it
(FSDP2's prefetch of one group ahead and FSDP1's ``limit_all_gathers`` rate limiter still
hold what they hold; a real GPU can only hold buffers longer when the CPU runs ahead).

Categories at the peak (``Measured.by_category``): those of ``validation.trace`` plus
``gathered`` (storage allocated while FSDP unshards: all-gather inputs/outputs and the
unsharded parameters, the mixed-precision parameter copies, offloaded shards copied in) and
``reduce`` (allocated while FSDP reduces gradients: reduce-scatter/all-reduce inputs and
outputs that do not become the sharded ``.grad``); ``peak_event`` names the last FSDP event
before the peak (``forward``/``backward``/``reduce`` + FSDP2 group fqn, or FSDP1
``unshard``/``reduce`` + unit fqn).

- **QLoRA** (``qlora`` with nf4/fp4, FSDP1 or FSDP2, no TP): PEFT's FSDP+QLoRA recipe
  (``validation.build.bnb_config``: double quantization, ``bnb_4bit_quant_storage`` = the
  compute dtype so FSDP flattens/shards the packed weights; no
  ``prepare_model_for_kbit_training``, as TRL skips it for sharded QLoRA). The model is built
  on meta with transformers' ``replace_with_bnb_linear`` and PEFT LoRA, materialised on fake
  CUDA and quantized with bitsandbytes' own ``quantize_4bit`` (its ops have registered fake
  kernels); FSDP1 gets PEFT's ``fsdp_auto_wrap_policy`` (``use_orig_params`` as requested),
  FSDP2 accelerate's ``fsdp2_prepare_model``. Stand-ins (``_bnb_standins``): the packed
  weight is a plain ``Parameter`` carrying ``quant_state`` (``Params4bit`` cannot wrap a fake
  tensor), the ``gemm_4bit`` forward replays the CUDA kernel's dispatch (dequantize + linear
  above 1536 tokens or where the H100 heuristic prefers it), ``Linear4bit`` state-dict
  serialisation (called and discarded by ``fsdp2_prepare_model``) skips the quant state.
  The ``QuantState`` tensors are counted as ``params``. Not in the grid: AMP over an fp32
  base (FSDP1 cannot flatten the bf16 packed storage with fp32 parameters, on a GPU too;
  the recipe keeps everything bf16) and CPU offload with QLoRA.

Not traced (``TraceSkipped``): DeepSpeed ZeRO (not attempted, see validation/README.md),
context/pipeline/expert parallelism, TP with FSDP1, fp16 AMP under FSDP, QLoRA with TP or
without FSDP (the single-device tracer does not build 4-bit bases), int8 bases, plain DDP.

CLI::

    python -m validation.dist_trace --grid [--out validation/measurements/trace-dist.jsonl]
    python -m validation.dist_trace --scenario-id ID [--out FILE]
    python -m validation.dist_trace --self-check   # fake-CUDA vs a real 2-process gloo run

Python: ``run_dist_trace(scenario, mode)`` (in this process), ``is_distributed(request)``,
``layout_limitations(request)``; ``validation.trace.trace_scenario`` dispatches here for any
request with a layout.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from validation.records import Measured, Scenario
from validation.trace import (
    ROUND_BYTES,
    TraceSkipped,
    _make_tracker,
    run_steps,
    storage_resizes,
    trace_patches,
)

if TYPE_CHECKING:
    from vramcalc.specs import EstimateRequest

__all__ = [
    "build_base",
    "is_distributed",
    "layout_limitations",
    "main",
    "run_dist_trace",
    "world_size",
    "wrap_for_step",
]

EXTRA_CATEGORIES = ("gathered", "reduce")


def world_size(request: EstimateRequest) -> int:
    """``gpus * nodes``."""
    return request.gpus * request.nodes


def is_distributed(request: EstimateRequest) -> bool:
    """Whether ``request`` has a layout the distributed trace handles (or must refuse)."""
    return (
        request.fsdp is not None
        or request.tp > 1
        or request.cp > 1
        or request.pp > 1
        or request.ep > 1
    )


def layout_limitations(request: EstimateRequest) -> str | None:
    """Why the distributed trace cannot run ``request`` (``None`` when it can)."""
    w = world_size(request)
    if int(request.zero) > 0 or request.deepspeed is not None:
        return "DeepSpeed ZeRO is not traced (see validation/README.md); FSDP and TP are"
    if request.cp > 1 or request.pp > 1 or request.ep > 1:
        return "context, pipeline and expert parallelism are not traced; FSDP and TP are"
    if request.tp > 1 and request.fsdp is not None and request.fsdp_version == 1:
        return "TP is traced with FSDP2 only (FSDP1 cannot shard DTensor parameters)"
    if w % request.tp:
        return f"tp={request.tp} does not divide the world size {w}"
    if request.sequence_parallel and request.tp == 1:
        return "sequence_parallel needs tp > 1"
    from validation.build import request_attn

    if request.tp > 1 and request_attn(request) == "eager":
        return "TP is traced with sdpa/flash attention (eager builds a mask of the local length)"
    if str(request.mixed_precision.value) == "fp16":
        return "fp16 AMP under FSDP (sharded GradScaler) is not traced; bf16 AMP is"
    if request.qlora is not None or request.quant is not None:
        if request.fsdp is None or request.tp > 1:
            return "QLoRA is traced under FSDP1/FSDP2 without TP only"
        if request.quant is not None and str(request.quant.value) not in ("nf4", "fp4"):
            return f"--quant {request.quant.value} is not traced under FSDP; 4-bit QLoRA is"
    if request.adapter or request.prefix or request.prompt_tuning or request.ia3:
        return "the distributed trace builds full fine-tuning and LoRA only"
    return None


# ----------------------------------------------------------------------------- stand-ins


class _Event:
    def __init__(self, *_a: Any, **_k: Any) -> None:
        pass

    def record(self, stream: Any = None) -> _Event:
        return self

    def wait(self, stream: Any = None) -> None:
        pass

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class _Stream:
    def __init__(self, device: Any = None, priority: int = 0, **_k: Any) -> None:
        import torch  # noqa: TID251

        self.device = torch.device("cuda", 0)
        self.priority = priority

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event if event is not None else _Event()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def is_capturing(self) -> bool:
        return False


@contextlib.contextmanager
def _cuda_runtime(gpus_per_node: int) -> Iterator[None]:
    """Python-level CUDA runtime stand-ins for FSDP/DTensor on fake CUDA (module docstring)."""
    import torch  # noqa: TID251
    import torch.distributed.fsdp._common_utils as fsdp_common  # noqa: TID251
    import torch.distributed.fsdp._flat_param as flat_param  # noqa: TID251
    import torch.distributed.fsdp._runtime_utils as runtime_utils  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251

    default = _Stream()
    cuda = torch.cuda
    no_record = lambda *_a, **_k: None  # noqa: E731
    patches: list[tuple[Any, str, Any]] = [
        (cuda, "is_available", lambda: True),
        (cuda, "is_initialized", lambda: True),
        (cuda, "_lazy_init", lambda: None),
        (cuda, "device_count", lambda: gpus_per_node),
        (cuda, "current_device", lambda: 0),
        (cuda, "set_device", lambda _d: None),
        (cuda, "Stream", _Stream),
        (cuda, "Event", _Event),
        (cuda, "current_stream", lambda device=None: default),
        (torch.accelerator, "current_stream", lambda device=None: default),
        (cuda, "default_stream", lambda device=None: default),
        (cuda, "stream", lambda _s=None: contextlib.nullcontext()),
        (cuda, "synchronize", lambda device=None: None),
        (cuda, "get_device_capability", lambda device=None: (9, 0)),
        (torch.Tensor, "record_stream", no_record),
        (torch.Tensor, "pin_memory", lambda self, *_a, **_k: self),
        (torch.Tensor, "is_pinned", lambda self, *_a, **_k: self.device.type == "cpu"),
        (fsdp_common, "_no_dispatch_record_stream", no_record),
        (flat_param, "_no_dispatch_record_stream", no_record),
        (runtime_utils, "_no_dispatch_record_stream", no_record),
        # torch.tensor(data, device=cuda) under fake mode: build on the CPU and move (what the
        # mode does when CUDA is unavailable), not on the real device
        (FakeTensorMode, "avoid_device_init", property(lambda _self: True)),
    ]
    with _patched(patches):
        yield


@contextlib.contextmanager
def _patched(patches: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    undo = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)


def _fake_standins() -> list[tuple[Any, str, Any]]:
    """Stand-ins that fake tensors need (any fake device).

    ``DeviceMesh`` objects are built with the fake mode suspended: a mesh computes rank
    coordinates with CPU tensor ops (``nonzero``) that fake tensors cannot run, and FSDP2
    builds its 2-D (dp, tp) mesh inside the fake mode; a mesh allocates nothing on the device.
    FSDP1's "is this flat parameter allocated" test reads ``data_ptr() > 0``, always 0 for a
    fake storage: it reads the storage size instead. FSDP1 moves an offloaded flat parameter
    with ``flat_param.data = flat_param.to(device)``, which leaves a fake tensor's device
    as it was: ``Tensor.data`` assignment carries the device over.
    """
    import torch  # noqa: TID251
    import torch.distributed.fsdp._flat_param as flat_param  # noqa: TID251
    from torch._subclasses.fake_tensor import unset_fake_temporarily  # noqa: TID251
    from torch.distributed.device_mesh import DeviceMesh  # noqa: TID251

    init = DeviceMesh.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        with unset_fake_temporarily():
            init(self, *args, **kwargs)

    def _data_ptr_allocated(tensor: Any) -> bool:
        return bool(tensor.untyped_storage().nbytes() > 0)

    base_data = torch._C.TensorBase.data

    def _set_data(self: Any, value: Any) -> None:
        # ``t.data = moved`` keeps a fake tensor's old device (FSDP1 offload moves flat
        # parameters between host and device this way): carry the device over
        base_data.__set__(self, value)
        if hasattr(value, "fake_device") and hasattr(self, "fake_device"):
            self.fake_device = value.fake_device

    data = property(base_data.__get__, _set_data)

    return [
        (DeviceMesh, "__init__", __init__),
        (flat_param, "_data_ptr_allocated", _data_ptr_allocated),
        (torch.Tensor, "data", data),
    ]


# H100 SXM (sm90, 132 SMs): what bitsandbytes' CUDA dispatch reads from the device
_BNB_DEVICE_PROPS = (132, 9, 0)


def _bnb_standins(cuda: bool) -> list[tuple[Any, str, Any]]:
    """Stand-ins that let bitsandbytes' 4-bit QLoRA path run on fake tensors.

    * ``fix_4bit_weight_quant_state_from_module`` re-wraps a parameter that FSDP re-created
      (FSDP2's unsharded parameters, FSDP1's flat-parameter views) in ``Params4bit``, which
      cannot wrap a fake tensor: the stand-in attaches the module's ``quant_state`` to the
      parameter instead (the same storage either way).
    * ``bitsandbytes::gemm_4bit`` (``MatMul4Bit.forward``): its registered fake kernel only
      allocates the output, while the CUDA kernel (bitsandbytes 0.50
      ``backends/cuda/ops.py``) takes ``_dequant_linear_fallback`` -- the nested absmax
      dequantized to fp32 (+ offset), the whole weight dequantized to the input dtype, then
      ``F.linear`` -- whenever ``M`` (tokens) exceeds ``_gemm_4bit_custom_max_m`` (1536) or
      its per-architecture heuristic ``_gemm_4bit_use_custom_cuda`` prefers it; the stand-in
      asks that same heuristic (with an H100's properties) and runs the fallback through the
      dequantization ops' fake kernels, so the traced transients are the GPU's.
    """
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules
    import torch  # noqa: TID251

    def fix(module: Any) -> None:
        if getattr(module.weight, "quant_state", None) is None:
            module.weight.quant_state = module.quant_state

    def save_to_state_dict(self: Any, destination: Any, prefix: str, keep_vars: bool) -> None:
        # accelerate's fsdp2_prepare_model takes a state_dict it discards (it reloads it only
        # with cpu_ram_efficient_loading); the quant-state entries read the nested offset
        # with .item(), which a fake tensor cannot answer: serialise the parameters only
        torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)

    out: list[tuple[Any, str, Any]] = [
        (bnb_modules, "fix_4bit_weight_quant_state_from_module", fix),
        (bnb.nn.Linear4bit, "_save_to_state_dict", save_to_state_dict),
    ]
    if not cuda:
        return out
    if not hasattr(torch._C, "_cuda_getCurrentRawStream"):
        # a CPU-only torch: the module reads this at import (for real kernel launches only)
        torch._C._cuda_getCurrentRawStream = lambda _index: 0
    import bitsandbytes.backends.cuda.ops as cuda_ops

    ops = torch.ops.bitsandbytes
    gemm = ops.gemm_4bit
    fake_gemm = gemm.default

    def gemm_4bit(
        A: Any, B: Any, shapeB: Any, absmax: Any, blocksize: int, quant_type: str,
        bias: Any = None, absmax_8bit: Any = None, absmax_code: Any = None,
        absmax_offset: Any = None,
    ) -> Any:  # fmt: skip
        K = A.shape[-1]
        M = A.numel() // K
        if cuda_ops._gemm_4bit_custom_max_m < M or K % blocksize:
            custom = False
        else:
            custom = cuda_ops._gemm_4bit_use_custom_fn(0, A.dtype, M, shapeB[0], K)
        if custom:
            return fake_gemm(A, B, shapeB, absmax, blocksize, quant_type, bias=bias,
                             absmax_8bit=absmax_8bit, absmax_code=absmax_code,
                             absmax_offset=absmax_offset)  # fmt: skip
        if absmax_8bit is not None:  # _dequant_linear_fallback
            absmax_dq = ops.dequantize_blockwise.default(
                absmax_8bit, absmax, absmax_code, 256, torch.float32
            )
            absmax = absmax_dq + absmax_offset
        b_dq = ops.dequantize_4bit.default(B, absmax, blocksize, quant_type, shapeB, A.dtype)
        return torch.nn.functional.linear(A, b_dq, bias)

    out += [
        (ops, "gemm_4bit", SimpleNamespace(default=gemm_4bit)),
        (cuda_ops, "_gpu_dispatch_props", lambda _index: _BNB_DEVICE_PROPS),
    ]
    return out


def _gloo_internal(tracker: Any) -> list[tuple[Any, str, Any]]:
    """Leave out what gloo's ``reduce_scatter_single`` allocates inside the collective.

    It makes a working copy of its input (NCCL and the fake process group do not); the
    real-CPU self-check does not count it.
    """
    import torch.distributed as dist  # noqa: TID251
    import torch.distributed.distributed_c10d as c10d  # noqa: TID251

    rs = c10d.reduce_scatter_single

    @functools.wraps(rs)
    def reduce_scatter_single(*args: Any, **kwargs: Any) -> Any:
        tracker.ignore += 1
        try:
            return rs(*args, **kwargs)
        finally:
            tracker.ignore -= 1

    return [(c10d, "reduce_scatter_single", reduce_scatter_single),
            (dist, "reduce_scatter_single", reduce_scatter_single)]  # fmt: skip


def _labelled(
    tracker: Any,
    fn: Callable[..., Any],
    ctx: str | None = None,
    where: Callable[..., str | None] | None = None,
) -> Callable[..., Any]:
    """``fn`` with the tracker's allocation context set to ``ctx`` and its event to ``where``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if where is not None:
            label = where(*args)
            if label:
                tracker.where = label
        if ctx is None or tracker.ctx is not None:
            return fn(*args, **kwargs)
        tracker.ctx = ctx
        try:
            return fn(*args, **kwargs)
        finally:
            tracker.ctx = None

    return wrapper


def _instrumentation(tracker: Any, names: dict[int, str]) -> list[tuple[Any, str, Any]]:
    """Label FSDP's unshard/reduce allocations and its events for ``tracker``."""
    import torch.distributed.fsdp._runtime_utils as ru  # noqa: TID251
    from torch.distributed.fsdp._flat_param import FlatParamHandle  # noqa: TID251
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import (  # noqa: TID251
        FSDPParamGroup,
    )

    def group(kind: str) -> Callable[..., str]:
        return lambda self, *_: f"{kind} {self._module_fqn or 'root'}"

    def handle(kind: str) -> Callable[..., str]:
        return lambda self, *_: f"{kind} {names.get(id(self), '?')}"

    def reduce1(_state: Any, h: Any) -> str:
        return f"reduce {names.get(id(h), '?')}"

    out: list[tuple[Any, str, Any]] = []
    for name, ctx, where in (
        ("unshard", "gathered", None),
        ("wait_for_unshard", "gathered", None),
        ("pre_forward", None, group("forward")),
        ("pre_backward", None, group("backward")),
        ("post_backward", "reduce", group("reduce")),
    ):
        fn = _labelled(tracker, getattr(FSDPParamGroup, name), ctx, where)
        out.append((FSDPParamGroup, name, fn))
    for name, ctx, where in (
        ("pre_unshard", "gathered", None),
        ("unshard", "gathered", handle("unshard")),
        ("post_unshard", "gathered", None),
        ("reshard", None, handle("reshard")),
    ):
        fn = _labelled(tracker, getattr(FlatParamHandle, name), ctx, where)
        out.append((FlatParamHandle, name, fn))
    for name in ("_reduce_grad", "_reduce_grad_no_shard"):
        out.append((ru, name, _labelled(tracker, getattr(ru, name), "reduce", reduce1)))
    return out


# ----------------------------------------------------------------------------- wrapping


def _mesh(req: EstimateRequest, device_type: str) -> tuple[Any, tuple[str, ...]]:
    """Return the device mesh and accelerate's ``fsdp_dim_names`` for the request."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: TID251

    w = world_size(req)
    strategy = str(req.fsdp.value) if req.fsdp is not None else "full_shard"
    if req.tp > 1:
        shape = (w // req.tp, req.tp)
        mesh = init_device_mesh(device_type, shape, mesh_dim_names=("dp_shard", "tp"))
        return mesh, ("dp_shard",)
    if strategy == "hybrid_shard":
        shape = (req.nodes, req.gpus)
    elif strategy == "no_shard":
        shape = (w, 1)
    else:
        mesh = init_device_mesh(device_type, (w,), mesh_dim_names=("dp_shard",))
        return mesh, ("dp_shard",)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=("dp_replicate", "dp_shard"))
    return mesh, ("dp_replicate", "dp_shard")


def _plugin(req: EstimateRequest) -> Any:
    """Build accelerate's ``FullyShardedDataParallelPlugin`` for the request."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    strategy = str(req.fsdp.value).upper() if req.fsdp is not None else "FULL_SHARD"
    if req.fsdp_version == 2:
        reshard = req.fsdp_reshard_after_forward
        if reshard is None:
            reshard = strategy != "SHARD_GRAD_OP"
        kwargs: dict[str, Any] = {"reshard_after_forward": reshard}
    else:
        kwargs = {
            "sharding_strategy": strategy,
            "reshard_after_forward": strategy,
            "backward_prefetch": "NO_PREFETCH"
            if req.fsdp_backward_prefetch.value == "none"
            else str(req.fsdp_backward_prefetch.value).upper(),
            "use_orig_params": req.fsdp_use_orig_params,
            "limit_all_gathers": req.fsdp_limit_all_gathers,
            "sync_module_states": False,
        }
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=req.fsdp_version,
        cpu_offload=req.fsdp_offload,
        auto_wrap_policy="transformer_based_wrap",
        cpu_ram_efficient_loading=False,
        **kwargs,
    )
    mp = str(req.mixed_precision.value)
    if mp != "no":
        plugin.set_mixed_precision(mp)  # what AcceleratorState does for FSDP
    return plugin


def _wrap_fsdp2(model: Any, req: EstimateRequest, mesh: Any, dim_names: tuple[str, ...]) -> Any:
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = _plugin(req)
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=mesh,
        parallelism_config=SimpleNamespace(fsdp_dim_names=list(dim_names)),
        mixed_precision=str(req.mixed_precision.value),
        is_main_process=True,
    )
    return fsdp2_prepare_model(accelerator, model)


def _wrap_fsdp1(model: Any, req: EstimateRequest, device: Any) -> Any:
    import torch  # noqa: TID251
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: TID251

    plugin = _plugin(req)
    in_blocks = req.fsdp_lora_in_blocks  # the transformer policy alone (Fabric, own scripts)
    if (req.lora is not None or req.qlora is not None) and not in_blocks:
        # Trainer: update_fsdp_plugin_peft
        from peft.utils.other import fsdp_auto_wrap_policy

        plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    else:
        plugin.set_auto_wrap_policy(model)
    wrapped = FSDP(
        model,
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        backward_prefetch=plugin.backward_prefetch,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=torch.device(device),
    )
    if str(req.mixed_precision.value) != "no":  # accelerate keeps the flat parameter in fp32
        for module in FSDP.fsdp_modules(wrapped):
            if not module._has_params:
                continue
            param = module._flat_param
            if param.dtype != torch.float32 and param.requires_grad:
                param.data = param.data.to(torch.float32)
                module._handle._orig_param_dtype = torch.float32
    return wrapped


def _apply_tp(model: Any, tp_mesh: Any, sequence_parallel: bool) -> None:
    """Apply torchtitan's Llama TP plan to a transformers decoder (module docstring)."""
    from torch.distributed.tensor import Replicate, Shard  # noqa: TID251
    from torch.distributed.tensor.parallel import (  # noqa: TID251
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    sp = sequence_parallel
    root_plan: dict[str, Any] = {
        "model.embed_tokens": RowwiseParallel(
            input_layouts=Replicate(), output_layouts=Shard(1) if sp else Replicate()
        ),
        "lm_head": ColwiseParallel(
            input_layouts=Shard(1) if sp else Replicate(), output_layouts=Replicate()
        ),
    }
    if sp:
        root_plan["model.norm"] = SequenceParallel()
    parallelize_module(base, tp_mesh, root_plan)
    for layer in inner.layers:
        plan: dict[str, Any] = {
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1) if sp else Replicate()),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1) if sp else Replicate()),
        }
        if sp:
            plan |= {
                "input_layernorm": SequenceParallel(),
                "post_attention_layernorm": SequenceParallel(),
                "self_attn": PrepareModuleInput(
                    input_kwarg_layouts={"hidden_states": Shard(1)},
                    desired_input_kwarg_layouts={"hidden_states": Replicate()},
                ),
                "mlp": PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
                ),
            }
        parallelize_module(layer, tp_mesh, plan)


def _module_names(model: Any) -> dict[int, str]:
    """FSDP1 flat-parameter handle -> the fqn of its unit (wrapper prefixes dropped)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: TID251

    names: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, FSDP) and module._handle is not None:
            clean = name.replace("_fsdp_wrapped_module.", "").replace("._fsdp_wrapped_module", "")
            names[id(module._handle)] = clean or "root"
    return names


# ----------------------------------------------------------------------------- one trace


def _init_pg(world: int, rank: int, backend: str) -> None:
    import torch.distributed as dist  # noqa: TID251

    if dist.is_initialized():
        dist.destroy_process_group()
    if backend == "fake":
        from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: TID251

        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    else:
        dist.init_process_group(backend, rank=rank, world_size=world)


def run_dist_trace(
    scenario: Scenario,
    mode: str = "fake-cuda",
    *,
    route_sdpa: bool = True,
    rank: int = 0,
    backend: str | None = None,
) -> Measured:
    """Trace rank ``rank`` of ``scenario``'s layout in THIS process (see module docstring).

    ``mode``: ``fake-cuda`` (the measurement: fake process group, fake tensors on fake CUDA),
    ``fake-cpu`` (fake process group and fake tensors on the CPU) or ``cpu`` (real tensors on
    the CPU; the caller has set up a real process group of ``backend``, e.g. gloo).
    """
    import torch  # noqa: TID251
    import torch.distributed as dist  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251
    from transformers import Trainer  # noqa: F401  (imported before the CUDA stand-ins)

    req = scenario.request
    why = layout_limitations(req)
    if why is not None:
        raise TraceSkipped(why)
    fake = mode != "cpu"
    device_type = "cuda" if mode == "fake-cuda" else "cpu"
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    from validation import build

    attn = build.request_attn(req)
    if fake:
        _init_pg(world_size(req), rank, backend or "fake")
    torch.manual_seed(0)
    tracker = _make_tracker(device_type, ROUND_BYTES, EXTRA_CATEGORIES)
    names: dict[int, str] = {}
    runtime = _cuda_runtime(req.gpus) if device_type == "cuda" else contextlib.nullcontext()
    with runtime, trace_patches(tracker, mode, attn, route_sdpa=route_sdpa):  # type: ignore[arg-type]
        patches = _instrumentation(tracker, names)
        patches += _fake_standins() if fake else _gloo_internal(tracker)
        if req.qlora is not None and fake:
            patches += _bnb_standins(device_type == "cuda")
        with _patched(patches), storage_resizes(tracker):
            mesh, dim_names = _mesh(req, device_type)
            model = build_base(scenario, device, fake=fake)
            mode_ctx: Any = contextlib.nullcontext()
            if fake:
                mode_ctx = FakeTensorMode(allow_non_fake_inputs=True)
            with mode_ctx:
                setup, params, make_batch = wrap_for_step(
                    model, scenario, device, mesh=mesh, dim_names=dim_names, names=names
                )
                del model
                measured = run_steps(tracker, setup, scenario.steps, params, make_batch)
                del setup, params
    if fake:
        dist.destroy_process_group()
    return measured


def _host_first(req: EstimateRequest) -> bool:
    """FSDP1 with parameter offload needs the module on the host (as a Trainer loads it)."""
    return bool(req.fsdp_offload and req.fsdp_version == 1)


def build_base(scenario: Scenario, device: Any, *, fake: bool) -> Any:
    """Build the model of ``scenario`` before sharding (call outside any fake mode).

    Fake runs and QLoRA build on meta (``wrap_for_step`` materialises and quantizes); real
    runs of other methods build on the device (on the host for FSDP1 parameter offload).
    """
    from validation import build

    req = scenario.request
    attn = build.request_attn(req)
    build_attn = "sdpa" if attn == "flash_attention_2" else attn
    on_meta = fake or req.qlora is not None
    target = None if on_meta else ("cpu" if _host_first(req) else device)
    return build.build_model(scenario, target, on_meta=on_meta, attn_implementation=build_attn)


def wrap_for_step(
    model: Any,
    scenario: Scenario,
    device: Any,
    *,
    mesh: Any,
    dim_names: tuple[str, ...],
    names: dict[int, str] | None = None,
) -> tuple[Any, list[Any], Callable[[], dict[str, Any]] | None]:
    """Materialise, quantize, parallelize and wrap ``model`` as the layout runs it.

    Shared by the rank-0 trace (inside its fake mode) and the multi-process CUDA runner
    (``validation.dist_cuda``). Returns the ``validation.build.Setup`` of the step, device
    storage that is not a module parameter (FSDP1 flat parameters, QLoRA quant state) and the
    batch factory (``None``: ``Setup.make_batch``).
    """
    from validation import build

    req = scenario.request
    if next(model.parameters()).device.type == "meta":
        build.materialize(model, "cpu" if _host_first(req) else device)
    quant_state: list[Any] = []
    if req.qlora is not None:
        quant_state = build.quantize_base(model, req)
    base = model
    if req.tp > 1:
        _apply_tp(model, mesh["tp"], req.sequence_parallel)
    if req.fsdp_version == 1 and req.fsdp is not None:
        wrapped = _wrap_fsdp1(model, req, device)
        if names is not None:
            names.update(_module_names(wrapped))
        params = [m._flat_param for m in _fsdp1_modules(wrapped) if m._has_params]
    else:
        wrapped = _wrap_fsdp2(model, req, mesh, dim_names)
        params = []
    setup = build.build_setup(scenario, device, model=wrapped, base=base)
    if req.fsdp_version == 2 or req.fsdp is None:
        setup.autocast_dtype = None  # accelerate: no autocast under FSDP2
    if req.fsdp is not None and not req.fsdp_sync_each_batch:
        setup.no_sync = functools.partial(_accelerate_no_sync, wrapped, req.fsdp_version)
    make_batch = None
    if req.sequence_parallel:
        make_batch = functools.partial(_batch_with_positions, setup)
    return setup, params + quant_state, make_batch


@contextlib.contextmanager
def _accelerate_no_sync(model: Any, fsdp_version: int) -> Iterator[None]:
    """Enter accelerate 1.15's ``Accelerator.no_sync`` for an FSDP model.

    FSDP2: ``set_requires_gradient_sync(False)`` for the block; FSDP1: the root's
    ``no_sync()``. Either way the gradients accumulate unsharded.
    """
    if fsdp_version == 2:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def _fsdp1_modules(model: Any) -> list[Any]:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP  # noqa: TID251

    return list(FSDP.fsdp_modules(model))


def _batch_with_positions(setup: Any) -> dict[str, Any]:
    import torch  # noqa: TID251

    batch = setup.make_batch()
    ids = batch["input_ids"]
    batch["position_ids"] = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return batch


# ----------------------------------------------------------------------------- self-check


def _gloo_rank(rank: int, world: int, port: int, scenario_json: str, out: str) -> None:
    """One rank of the real gloo CPU run of the self-check (``torch.multiprocessing`` target)."""
    import torch.distributed as dist  # noqa: TID251

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        scenario = Scenario.model_validate_json(scenario_json)
        measured = run_dist_trace(scenario, "cpu", rank=rank, route_sdpa=False)
        if rank == 0:
            with open(out, "w", encoding="utf-8") as fh:
                fh.write(measured.model_dump_json())
    finally:
        dist.destroy_process_group()


def real_gloo_trace(scenario: Scenario, port: int = 29533) -> Measured:
    """Run ``scenario`` for real on ``world`` CPU processes over gloo; rank 0's measurement."""
    import tempfile

    import torch.multiprocessing as mp  # noqa: TID251

    world = world_size(scenario.request)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        mp.spawn(
            _gloo_rank, args=(world, port, scenario.model_dump_json(), out), nprocs=world, join=True
        )
        with open(out, encoding="utf-8") as fh:
            return Measured.model_validate_json(fh.read())


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: trace grid scenarios of ``validation.dist_grid`` (see the module docstring)."""
    from validation import dist_grid, trace

    parser = argparse.ArgumentParser(prog="python -m validation.dist_trace", description=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scenario-id", action="append", help="a dist_grid id (repeatable)")
    what.add_argument("--grid", action="store_true", help="every scenario of validation.dist_grid")
    parser.add_argument("--out", type=Path, help="append Measurement JSON lines to this file")
    args = parser.parse_args(argv)
    try:
        if args.grid:
            scenarios = dist_grid.scenarios()
        else:
            scenarios = [dist_grid.scenario(i) for i in args.scenario_id]
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    return trace.report(scenarios, "fake-cuda", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
