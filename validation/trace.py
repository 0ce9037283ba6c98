"""Trace backend: the real transformers/peft training step, run on fake tensors, no GPU needed.

A scenario (``validation.records.Scenario``) is built by ``validation.build`` and stepped
``scenario.steps`` times under ``FakeTensorMode`` on the **cuda** device of a CPU-only torch,
in a dedicated subprocess that first loads a small C++ extension (``validation/_fakecuda``).
A ``TorchDispatchMode`` records every tensor storage of the traced device when an op first
returns it and its release through a weakref on the storage, each rounded up to 512 bytes as
the CUDA caching allocator rounds blocks; ``max_memory_allocated`` is the running maximum.

Output (``validation.records.Measured``): the allocated peak, the step and phase of the peak
(``forward``/``loss``/``backward``/``optimizer``), the peak of each ``'<step>/<phase>'`` and the
bytes at the peak by category:

- ``params``: parameter and buffer storages;
- ``gradients``: storages that are (or become) a parameter's ``.grad``;
- ``optimizer``: optimizer-state storages (and the ``GradScaler``'s);
- ``activations``: other storages allocated in the forward/loss phases (what autograd saved,
  the checkpointed layer inputs, autocast's 16-bit weight copies, model inputs) and what the
  checkpoint recomputation allocates during backward;
- ``temporaries``: the rest (activation gradients, foreach/fused optimizer work lists, ...).

Fidelity to a real GPU run (the traps found while checking feasibility):

- the optimizer implementation is passed explicitly (``scenario.optim_impl``; fake tensors
  would otherwise get the for-loop path where a GPU gets foreach);
- fake CUDA SDPA always takes the math kernel; a mask-free call is routed to the kernel a
  GPU picks for ``attn`` sdpa/flash_attention_2 (``_scaled_dot_product_flash_attention`` for
  16-bit inputs, ``_scaled_dot_product_efficient_attention`` for fp32; fp32 with GQA and other
  unsupported shapes stay on math, as on a GPU). A call with an explicit mask (sliding-window
  and chunked layers, Falcon) or with a value head narrower than the q/k head (MLA), and
  equal q/k/v head counts, is routed to the memory-efficient kernel (the mask as an additive
  bias): what an H200 runs (cuDNN attention for 16 bit, memory-efficient for fp32; checked
  with the profiler under torch 2.11); broadcast multi-query K/V stays on math. ``eager``
  stays eager. ``flash_attention_2`` models are built with ``sdpa`` (the flash-attn package
  needs a GPU) and routed to flash;
- transformers' packed-sequence detection cannot read fake values and would build a full mask:
  for our unpadded, unpacked batches the real decision (no packed sequences) is returned;
- the model (and its peft wrapping) is built on meta outside the fake mode, then
  ``to_empty`` on the fake device and re-tied;
- autocast/GradScaler availability checks are answered as on a GPU and the scaler's
  "found inf?" check (a data-dependent ``.item()``) takes the finite branch.

Modes: ``fake-cuda`` (the measurement), ``fake-cpu`` and ``cpu`` (a REAL CPU step with the same
tracker; the self-test requires it to record the same bytes as ``fake-cpu``). QLoRA/quantized
bases are not traced (bitsandbytes quantizes with real kernels): those scenarios are skipped
with ``TraceSkipped``.

CLI::

    python -m validation.trace --scenario-id ID [--mode fake-cuda] [--out FILE]
    python -m validation.trace --grid [--out validation/measurements/trace.jsonl]

Python: ``trace_scenario(scenario) -> Measurement`` (runs the subprocess),
``trace_scenarios([...])``, ``load_measurements(path)``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from validation.records import Fingerprint, Measured, Measurement, Scenario

__all__ = [
    "ROUND_BYTES",
    "TraceFailed",
    "TraceSkipped",
    "TraceUnavailable",
    "load_measurements",
    "run_trace",
    "trace_scenario",
    "trace_scenarios",
]

Mode = Literal["fake-cuda", "fake-cpu", "cpu"]
ROUND_BYTES = 512  # CUDA caching allocator block rounding (c10/cuda/CUDACachingAllocator.cpp)
REPO = Path(__file__).resolve().parents[1]
EXIT_UNAVAILABLE = 3
CATEGORIES = ("params", "gradients", "optimizer", "activations", "temporaries")


class TraceUnavailable(RuntimeError):
    """Tracing cannot run here (no torch, or the fake-CUDA extension cannot be built)."""


class TraceSkipped(RuntimeError):
    """A scenario cannot be traced (e.g. QLoRA needs real bitsandbytes kernels)."""


class TraceFailed(RuntimeError):
    """A scenario failed to trace (``trace_scenarios(..., keep_going=True)`` returns these)."""


# ----------------------------------------------------------------------------- tracker


class _Rec:
    __slots__ = ("cat", "ctx", "nbytes", "phase", "recompute", "step")

    def __init__(self, nbytes: int, step: int, phase: str, recompute: bool) -> None:
        self.nbytes = nbytes
        self.step = step
        self.phase = phase
        self.recompute = recompute
        self.cat: str | None = None
        self.ctx: str | None = None


def _make_tracker(device_type: str, round_to: int, extra: tuple[str, ...] = ()) -> Any:
    """Make a dispatch-mode tracker of live storage bytes on ``device_type``.

    ``extra`` names categories set by ``tracker.ctx`` (a label the caller sets around code
    whose allocations belong to it, e.g. FSDP's all-gathers); tensor subclasses that wrap
    others (DTensor) are tracked through their inner tensors; a storage that changes size
    (``UntypedStorage.resize_``, as FSDP frees and re-allocates unsharded parameters) is
    re-measured by ``refresh`` (``storage_resizes`` routes ``resize_`` there); a storage first
    seen at a resize is tracked when an op first returns a tensor on it.
    """
    import torch  # noqa: TID251
    from torch.utils._python_dispatch import (  # noqa: TID251
        TorchDispatchMode,
        is_traceable_wrapper_subclass,
    )
    from torch.utils._pytree import tree_leaves  # noqa: TID251

    def _round(n: int) -> int:
        return -(-n // round_to) * round_to

    class Tracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
        """Live storage bytes of one device type, by allocation, resize and weakref release."""

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.live: dict[int, _Rec] = {}
            self.refs: dict[int, Any] = {}
            self.log: list[tuple[int, _Rec]] = []
            self.current = 0
            self.peak = 0
            self.peak_at = -1
            self.step = 0
            self.phase = "setup"
            self.recompute = 0
            self.ignore = 0  # > 0: allocations are not tracked (inside a gloo collective)
            self.ctx: str | None = None
            self.where = ""
            self.peak_where = ""
            self.per_phase: dict[str, int] = {}
            self.categories = CATEGORIES + extra
            self.device_type = device_type
            self.peak_step, self.peak_phase = 0, "setup"

        def set_phase(self, step: int, phase: str) -> None:
            self.step, self.phase = step, phase
            key = f"{step}/{phase}"
            self.per_phase[key] = max(self.per_phase.get(key, 0), self.current)

        def _release(self, key: int, rec: _Rec, _ref: Any) -> None:
            if self.live.get(key) is rec:
                del self.live[key]
                self.refs.pop(key, None)
                self._add(rec, -rec.nbytes)

        def _add(self, rec: _Rec, delta: int) -> None:
            if delta == 0:
                return
            rec.nbytes += delta
            self.current += delta
            self.log.append((delta, rec))
            if delta < 0:
                return
            if self.ctx is not None and rec.ctx is None:
                rec.ctx = self.ctx
            if self.current > self.peak:
                self.peak = self.current
                self.peak_at = len(self.log)
                self.peak_where = self.where
                self.peak_step, self.peak_phase = self.step, self.phase
            k = f"{self.step}/{self.phase}"
            if self.current > self.per_phase.get(k, 0):
                self.per_phase[k] = self.current

        def refresh(self, st: Any) -> _Rec:
            """Track storage ``st`` (or re-measure it after a resize)."""
            key = st._cdata
            rec = self.live.get(key)
            n = _round(st.nbytes())
            if rec is None:
                rec = _Rec(0, self.step, self.phase, self.recompute > 0)
                self.live[key] = rec
                self.refs[key] = weakref.ref(st, functools.partial(self._release, key, rec))
            elif rec.nbytes == 0 and n > 0:  # re-allocated: it belongs to this phase now
                rec.step, rec.phase, rec.recompute = self.step, self.phase, self.recompute > 0
            self._add(rec, n - rec.nbytes)
            return rec

        def track(self, t: Any) -> _Rec | None:
            if not isinstance(t, torch.Tensor) or self.ignore:
                return None
            if is_traceable_wrapper_subclass(t) and type(t).__name__ == "DTensor":
                return self.track(t._local_tensor)  # type: ignore[attr-defined]
            if is_traceable_wrapper_subclass(t):  # e.g. torchao NF4Tensor: its inner tensors
                recs = [self.track(getattr(t, n)) for n in t.__tensor_flatten__()[0]]
                return next((r for r in recs if r is not None), None)
            if t.device.type != device_type:
                return None
            return self.refresh(t.untyped_storage())

        def mark(self, tensors: Iterable[Any], cat: str) -> None:
            for t in tensors:
                rec = self.track(t)
                if rec is not None and rec.cat is None:
                    rec.cat = cat

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                self.track(t)
            return out

        def at_peak(self) -> dict[str, int]:
            alive: dict[int, tuple[_Rec, int]] = {}
            for delta, rec in self.log[: self.peak_at]:
                prev = alive.get(id(rec), (rec, 0))[1]
                alive[id(rec)] = (rec, prev + delta)
            out = dict.fromkeys(self.categories, 0)
            for rec, nbytes in alive.values():
                cat = rec.cat or rec.ctx
                if cat is None:
                    forward = rec.phase in ("forward", "loss", "input")
                    cat = "activations" if forward or rec.recompute else "temporaries"
                out[cat] += nbytes
            return out

    return Tracker()


@contextlib.contextmanager
def storage_resizes(tracker: Any) -> Iterator[None]:
    """Route ``UntypedStorage.resize_`` (FSDP's free/alloc of unsharded storage) to ``tracker``."""
    import torch  # noqa: TID251

    resize = torch.UntypedStorage.resize_

    def resize_(self: Any, size: int) -> Any:
        out = resize(self, size)
        if self._cdata in tracker.live:  # (a fake tensor's storage is on the meta device)
            tracker.refresh(self)
        return out

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = resize  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- patches


def _patch_for_trace(fake: bool, route_sdpa: bool) -> list[tuple[Any, str, Any]]:
    """Monkeypatches that make a fake trace take a real GPU's decisions; returns undo list."""
    import torch  # noqa: TID251
    import torch.nn.functional as F  # noqa: TID251
    from transformers import masking_utils

    undo: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    if fake:
        from torch._subclasses.fake_tensor import FakeTensor  # noqa: TID251

        find = masking_utils.find_packed_sequence_indices

        def find_packed_sequence_indices(position_ids: Any) -> Any:
            # Same ops as transformers runs (same temporaries), and the decision a real
            # unpadded, unpacked batch gets: no packed sequences.
            result = find(position_ids)
            return None if isinstance(position_ids, FakeTensor) else result

        patch(masking_utils, "find_packed_sequence_indices", find_packed_sequence_indices)

        # torch's fake (meta) grouped GEMM accepts bf16 only; other weight dtypes take
        # transformers' own grouped_mm_fallback custom op, whose fake kernel allocates what
        # the real one does (the (S, out) output; backward: input- and weight-sized grads)
        from transformers.integrations import moe

        can_use = moe._can_use_grouped_mm

        def _can_use_grouped_mm(input: Any, weight: Any, offs: Any) -> bool:
            return bool(can_use(input, weight, offs)) and weight.dtype == torch.bfloat16

        patch(moe, "_can_use_grouped_mm", _can_use_grouped_mm)

    if route_sdpa:
        sdpa = F.scaled_dot_product_attention
        aten = torch.ops.aten

        def scaled_dot_product_attention(
            query: Any,
            key: Any,
            value: Any,
            attn_mask: Any = None,
            dropout_p: float = 0.0,
            is_causal: bool = False,
            scale: float | None = None,
            enable_gqa: bool = False,
        ) -> Any:
            head_dim = query.shape[-1]
            gqa = key.shape[-3] != query.shape[-3]
            usable = (
                attn_mask is None
                and query.device.type == "cuda"
                and query.dim() == 4
                and head_dim == value.shape[-1]
                and head_dim % 8 == 0
            )
            if usable and query.dtype in (torch.float16, torch.bfloat16) and head_dim <= 256:
                out = aten._scaled_dot_product_flash_attention(
                    query, key, value, dropout_p, is_causal, False, scale=scale
                )
                return out[0]
            if usable and query.dtype == torch.float32 and not gqa:
                lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
                out = aten._scaled_dot_product_efficient_attention(
                    query, key, value, None, lse, dropout_p, is_causal, scale=scale
                )
                return out[0]
            other = (  # an explicit mask, or value heads narrower than q/k heads (MLA)
                (attn_mask is not None or head_dim != value.shape[-1])
                and query.device.type == "cuda"
                and query.dim() == 4
                and head_dim % 8 == 0
                and value.shape[-1] % 8 == 0
                and not gqa
                and not enable_gqa
            )
            if other:
                # An explicit mask (sliding window, chunked, Falcon's always-built mask) or a
                # value head size other than the q/k one (MLA) rules out flash, not the
                # memory-efficient/cuDNN kernels: on an H200 (torch 2.11, profiler) such calls
                # with equal q/k/v head counts run cuDNN attention (16-bit) or memory-efficient
                # attention (fp32); only broadcast K/V heads (Falcon's multi-query) and GQA
                # stay on math. Both kernels save q, k, v, the output, a B*heads*S fp32
                # log-sum-exp and the additive bias, which SDPA makes from a boolean mask in
                # the query dtype (``convert_boolean_attn_mask`` in
                # aten/src/ATen/native/transformers/attention.cpp): modelled here by the
                # memory-efficient kernel, whose fake kernel exists.
                lse = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
                bias = attn_mask
                if bias is None:
                    out = aten._scaled_dot_product_efficient_attention(
                        query, key, value, None, lse, dropout_p, is_causal, scale=scale
                    )
                    return out[0]
                if bias.dtype == torch.bool:
                    bias = torch.zeros_like(attn_mask, dtype=query.dtype)
                    bias.masked_fill_(attn_mask.logical_not(), float("-inf"))
                bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
                out = aten._scaled_dot_product_efficient_attention(
                    query, key, value, bias, lse, dropout_p, False, scale=scale
                )
                return out[0]
            return sdpa(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                is_causal=is_causal, scale=scale, enable_gqa=enable_gqa,
            )  # fmt: skip

        patch(F, "scaled_dot_product_attention", scaled_dot_product_attention)
        patch(torch.nn.functional, "scaled_dot_product_attention", scaled_dot_product_attention)

    if fake:
        from torch.amp import grad_scaler  # noqa: TID251

        def _maybe_opt_step(self: Any, optimizer: Any, state: Any, *a: Any, **k: Any) -> Any:
            for v in state["found_inf_per_device"].values():  # keep the ops, skip .item()
                v.sum()
            return optimizer.step(*a, **k)

        patch(grad_scaler.GradScaler, "_maybe_opt_step", _maybe_opt_step)
    return undo


def _patch_cuda_availability() -> None:
    """Answer autocast/GradScaler's CUDA checks as a GPU would (fake-cuda process only)."""
    import torch  # noqa: TID251
    import torch.cuda.amp.common as amp_common  # noqa: TID251

    amp_common.amp_definitely_not_available = lambda: False
    torch.cuda.is_bf16_supported = lambda including_emulation=True: True
    # transformers' MoE experts pick torch's grouped GEMM from the device capability
    # (integrations/moe.py ``_can_use_grouped_mm``): answer an H100/H200's
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    _register_cuda_backward_kernels()


_FUSED_BACKWARDS = ("silu_backward", "mish_backward")
_LIBS: list[Any] = []


def _register_cuda_backward_kernels() -> None:
    """Give ``silu_backward``/``mish_backward`` the fused CUDA kernel slot a CUDA build has.

    These two ops have a CompositeImplicitAutograd kernel (``math_silu_backward`` in
    aten/src/ATen/native/Activation.cpp: ``sigmoid``, ``1 - sigmoid``, ``x * (...)``,
    ``1 + ...``, two products, all alive until the end of the C++ expression) besides their
    per-backend structured kernels (native_functions.yaml ``silu_backward.grad_input``:
    ``CPU, CUDA: silu_backward_out``, one elementwise kernel writing only the gradient).
    The dispatcher runs the math kernel for a backend with no kernel of its own: a CPU-only
    torch has no CUDA kernel, so on the fake CUDA device a SiLU backward decomposed into
    ~6 T x I temporaries where a GPU allocates one output (a torch built with CUDA
    dispatches ``AutogradCUDA`` to the autograd kernel, then the fused one). A CUDA
    registration, never called (fake tensors stop at the Python key, whose meta kernel
    allocates the single output), restores the CUDA build's dispatch table. (The only such
    ops in torch 2.13: these two and ``native_channel_shuffle``, found by comparing the
    AutogradCPU and AutogradCUDA entries of every aten op.)
    """
    import torch  # noqa: TID251

    if _LIBS:
        return
    lib = torch.library.Library("aten", "IMPL")
    for name in _FUSED_BACKWARDS:
        op = getattr(torch.ops.aten, name).default

        def kernel(*args: Any, _op: Any = op) -> Any:  # pragma: no cover - never reached
            raise RuntimeError(f"{_op} ran on the fake CUDA device without a fake tensor")

        lib.impl(name, kernel, "CUDA")
    _LIBS.append(lib)


# ----------------------------------------------------------------------------- one trace


def run_trace(scenario: Scenario, mode: Mode = "fake-cuda", *, route_sdpa: bool = True) -> Measured:
    """Trace ``scenario`` in THIS process (``fake-cuda`` needs the extension loaded first).

    ``route_sdpa=False`` keeps fake CUDA SDPA on the math kernel (for comparisons).
    """
    import torch  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251

    from validation import build

    req = scenario.request
    if req.framework == "litgpt":
        from validation.framework_trace import run_litgpt_trace

        tracker = _make_tracker("cuda" if mode == "fake-cuda" else "cpu", ROUND_BYTES)
        with trace_patches(tracker, mode, build.request_attn(req), route_sdpa=route_sdpa):
            return run_litgpt_trace(scenario, mode, tracker)
    if req.qlora is not None or req.quant is not None:
        raise TraceSkipped(
            "QLoRA/quantized bases are not traced: bitsandbytes quantizes with real kernels "
            "that do not run on fake tensors (measure them with the CUDA backend)"
        )
    fake = mode != "cpu"
    device = "cuda" if mode == "fake-cuda" else "cpu"
    attn = build.request_attn(req)
    build_attn = "sdpa" if attn == "flash_attention_2" else attn
    torch.manual_seed(0)
    tracker = _make_tracker(device, ROUND_BYTES)
    with trace_patches(tracker, mode, attn, route_sdpa=route_sdpa):
        if fake:
            model = build.build_model(scenario, on_meta=True, attn_implementation=build_attn)
            mode_ctx: Any = FakeTensorMode(allow_non_fake_inputs=True)
        else:
            model = build.build_model(scenario, device, attn_implementation=build_attn)
            mode_ctx = contextlib.nullcontext()
        with mode_ctx:
            if fake:
                build.materialize(model, device)
            if req.task.value == "inference":
                with tracker:
                    measured = _trace_generate(model, req, device, tracker)
                del model
                return measured
            setup = build.build_setup(scenario, device, model=model)
            measured = run_steps(tracker, setup, scenario.steps)
            del setup, model
    return measured


@contextlib.contextmanager
def trace_patches(
    tracker: Any, mode: Mode, attn: str, *, route_sdpa: bool = True
) -> Iterator[None]:
    """Apply a trace's monkeypatches (``_patch_for_trace``) and checkpoint-recompute hook."""
    from torch.utils import checkpoint as ckpt  # noqa: TID251

    fake = mode != "cpu"
    route = route_sdpa and mode == "fake-cuda" and attn in ("sdpa", "flash_attention_2")
    # Checkpoint recomputation (non-reentrant, transformers' default) runs forward code during
    # backward under this hook; what it allocates is recomputed activations.
    hook_cls = ckpt._recomputation_hook
    enter, exit_ = hook_cls.__enter__, hook_cls.__exit__

    def _enter(self: Any) -> Any:
        tracker.recompute += 1
        return enter(self)

    def _exit(self: Any, *exc: Any) -> Any:
        tracker.recompute -= 1
        return exit_(self, *exc)

    undo = _patch_for_trace(fake, route)
    undo += [(hook_cls, "__enter__", enter), (hook_cls, "__exit__", exit_)]
    setattr(hook_cls, "__enter__", _enter)  # noqa: B010
    setattr(hook_cls, "__exit__", _exit)  # noqa: B010
    try:
        yield
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
        gc.collect()


def run_steps(
    tracker: Any, setup: Any, steps: int, params: Iterable[Any] = (), make_batch: Any = None
) -> Measured:
    """Run ``steps`` training steps of ``setup`` under ``tracker`` and return what it measured.

    ``params``: more parameter storages than ``setup.model.parameters()`` (FSDP1 flat
    parameters); ``make_batch``: a batch factory other than ``setup.make_batch``.
    """
    with tracker:
        tracker.mark(setup.model.parameters(), "params")
        tracker.mark(setup.model.buffers(), "params")
        tracker.mark(params, "params")
        setup.on_phase = functools.partial(_on_phase, tracker, setup)
        from validation import build

        ga = setup.scenario.request.grad_accum if isinstance(setup, build.Setup) else 1
        for step in range(1, steps + 1):
            for micro in range(ga):
                tracker.set_phase(step, "input")
                batch = (make_batch or setup.make_batch)()
                if ga == 1:
                    setup.step(batch)
                else:  # a Trainer step over grad_accum micro-batches
                    setup.micro_step(batch, ga, sync=micro == ga - 1)
                del batch
            if ga > 1:
                setup.optimizer_step()
            _classify(tracker, setup)
        return _measured(tracker)


def _trace_generate(model: Any, req: Any, device: str, tracker: Any) -> Measured:
    """Trace ``model.generate`` (greedy, ``max_new_tokens = new_tokens``) on the tracker.

    The model is put in eval mode; ``input_ids`` and an all-ones ``attention_mask`` of
    ``batch x prompt_len`` are the inputs. Fake tensors cannot answer the stop check's
    data-dependent ``unfinished_sequences.max() == 0``; with no EOS token the real answer is
    "not finished" until ``max_length``, which the patched ``StopCheck`` returns from the
    length. A forward pre-hook names the phase: the first forward is ``prefill``, the others
    ``decode`` (sampling after a forward belongs to its phase).
    """
    import torch  # noqa: TID251
    from transformers.generation import utils as gen_utils

    prompt = req.prompt_len or req.seq_len
    new = req.new_tokens
    max_length = prompt + new
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    calls = [0]

    def pre_hook(_module: Any, _args: Any) -> None:
        calls[0] += 1
        tracker.set_phase(1, "prefill" if calls[0] == 1 else "decode")

    def stop(self: Any, unfinished: Any, tokens: Any, length: int) -> bool:
        return length >= max_length

    handle = model.register_forward_pre_hook(pre_hook)
    old = gen_utils.StopCheck.__call__
    gen_utils.StopCheck.__call__ = stop  # type: ignore[method-assign]
    old_item, old_bool = torch.Tensor.item, torch.Tensor.__bool__
    seen: list[str] = []

    def answer(self: Any) -> Any:
        # generate's host-side checks read values fake tensors do not have. The inputs are an
        # unpadded batch with an all-ones mask: "mask all ones?" (``.all()``) is True, "any
        # right padding?" / "any pad token?" (``.any()``, ``== 0``) is False.
        import linecache
        import traceback

        fr = traceback.extract_stack(limit=2)[0]
        end = fr.end_lineno or fr.lineno or 0
        if (fr.line or "").endswith("("):  # a multi-line condition: read the whole of it
            end = (fr.lineno or 0) + 6
        line = " ".join(
            linecache.getline(fr.filename, n).strip() for n in range(fr.lineno or 0, end + 1)
        )
        seen.append(f"{Path(fr.filename).name}:{fr.lineno}: {line}")
        return ".all()" in line

    torch.Tensor.item = answer  # type: ignore[method-assign,assignment]
    torch.Tensor.__bool__ = answer  # type: ignore[method-assign,assignment]
    try:
        tracker.mark(model.parameters(), "params")
        tracker.mark(model.buffers(), "params")
        tracker.set_phase(1, "input")
        ids = torch.zeros(req.batch_size, prompt, dtype=torch.long, device=device)
        mask = torch.ones(req.batch_size, prompt, dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                do_sample=False,
            )  # fmt: skip
        del out, ids, mask
    finally:
        gen_utils.StopCheck.__call__ = old  # type: ignore[method-assign]
        torch.Tensor.item = old_item  # type: ignore[method-assign]
        torch.Tensor.__bool__ = old_bool  # type: ignore[method-assign]
        handle.remove()
        if os.environ.get("VRAMCALC_TRACE_DEBUG"):
            print(sorted(set(seen)), file=sys.stderr)
    return Measured(
        allocated_bytes=tracker.peak,
        phase=tracker.peak_phase,
        step=1,
        per_phase_peak={k: v for k, v in tracker.per_phase.items() if not k.startswith("0/")},
        by_category=tracker.at_peak(),
    )


def _classify(tracker: Any, setup: Any) -> None:
    params = [p for p in setup.model.parameters()]
    tracker.mark([p.grad for p in params if p.grad is not None], "gradients")
    states = [v for s in setup.optimizer.state.values() for v in s.values() if hasattr(v, "device")]
    scaler = setup.scaler
    if scaler is not None:
        states += [getattr(scaler, "_scale", None), getattr(scaler, "_growth_tracker", None)]
    tracker.mark([s for s in states if s is not None], "optimizer")


def _on_phase(tracker: Any, setup: Any, phase: str) -> None:
    _classify(tracker, setup)
    tracker.set_phase(tracker.step, phase)


def _measured(tracker: Any) -> Measured:
    step, phase = tracker.peak_step, tracker.peak_phase
    phase = "optimizer" if phase == "input" and step > 1 else phase
    return Measured(
        allocated_bytes=tracker.peak,
        phase=phase,
        step=step,
        peak_event=tracker.peak_where or None,
        per_phase_peak={k: v for k, v in tracker.per_phase.items() if not k.startswith("0/")},
        by_category=tracker.at_peak(),
    )


# ----------------------------------------------------------------------------- records


def _fingerprint(mode: Mode) -> Fingerprint:
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    device = {"fake-cuda": "fake-cuda (CPU trace)", "fake-cpu": "fake-cpu (CPU trace)"}.get(
        mode, f"cpu ({platform.processor() or platform.machine()})"
    )
    return Fingerprint(
        backend="trace",
        device=device,
        torch=ver("torch") or "?",
        transformers=ver("transformers") or "?",
        peft=ver("peft"),
        bitsandbytes=ver("bitsandbytes"),
        python=platform.python_version(),
        host=platform.node() or None,
    )


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _child(mode: Mode, route_sdpa: bool = True) -> int:
    """Subprocess entry: scenarios as JSON lines on stdin, one result line each on stdout."""
    if mode == "fake-cuda":
        from validation import _fakecuda

        try:
            _fakecuda.load()
        except _fakecuda.ExtensionUnavailable as exc:
            print(json.dumps({"unavailable": str(exc)}), flush=True)
            return EXIT_UNAVAILABLE
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import torch  # noqa: TID251, F401
    except ImportError as exc:
        print(json.dumps({"unavailable": f"torch is not installed: {exc}"}), flush=True)
        return EXIT_UNAVAILABLE
    if mode == "fake-cuda":
        _patch_cuda_availability()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    from validation import dist_trace, torchtune_trace
    from validation import trace as trace_module

    for line in sys.stdin:
        if not line.strip():
            continue
        scenario = Scenario.model_validate_json(line)
        t0 = time.perf_counter()
        try:
            if torchtune_trace.is_torchtune(scenario.request):
                measured = torchtune_trace.run_torchtune_trace(
                    scenario, functools.partial(_make_tracker, "cuda", ROUND_BYTES)
                )
            elif dist_trace.is_distributed(scenario.request):
                measured = dist_trace.run_dist_trace(scenario, mode, route_sdpa=route_sdpa)
            else:
                measured = run_trace(scenario, mode, route_sdpa=route_sdpa)
            result: dict[str, Any] = {"measured": measured.model_dump()}
        except (TraceSkipped, trace_module.TraceSkipped) as exc:  # __main__ or imported
            result = {"skipped": str(exc)}
        except Exception as exc:  # reported per scenario, the batch goes on
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)
    return 0


def trace_scenarios(
    scenarios: Sequence[Scenario],
    mode: Mode = "fake-cuda",
    timeout_s: float = 3600,
    *,
    route_sdpa: bool = True,
    keep_going: bool = False,
) -> list[Measurement | TraceSkipped | TraceFailed]:
    """Trace scenarios in one subprocess; a ``TraceSkipped`` stands for each untraceable one.

    ``keep_going``: a ``TraceFailed`` stands for each scenario that failed (else it raises).

    Raises:
        TraceUnavailable: torch is missing or the fake-CUDA extension cannot be built.
        RuntimeError: a scenario failed to trace (the message carries the child's error).

    """
    if not scenarios:
        return []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    stdin = "".join(s.model_dump_json() + "\n" for s in scenarios)
    proc = subprocess.run(
        [sys.executable, "-m", "validation.trace", "--child", "--mode", mode]
        + ([] if route_sdpa else ["--math-sdpa"]),
        input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout_s,
        check=False,
    )  # fmt: skip
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if lines and "unavailable" in lines[0]:
        raise TraceUnavailable(lines[0]["unavailable"])
    if proc.returncode != 0 or len(lines) != len(scenarios):
        raise RuntimeError(f"trace subprocess failed (rc={proc.returncode}): {proc.stderr[-3000:]}")
    fp = _fingerprint(mode)
    out: list[Measurement | TraceSkipped | TraceFailed] = []
    for scenario, res in zip(scenarios, lines, strict=True):
        if "skipped" in res:
            out.append(TraceSkipped(f"{scenario.id}: {res['skipped']}"))
        elif "error" in res and keep_going:
            out.append(TraceFailed(f"{scenario.id}: {res['error']}"))
        elif "error" in res:
            raise RuntimeError(f"tracing {scenario.id} failed: {res['error']}")
        else:
            out.append(
                Measurement(
                    scenario=scenario,
                    fingerprint=fp,
                    measured=Measured.model_validate(res["measured"]),
                    created=_now(),
                    wall_s=res["wall_s"],
                )
            )
    return out


def trace_scenario(scenario: Scenario, mode: Mode = "fake-cuda") -> Measurement:
    """Trace one scenario in a subprocess (fake CUDA by default) and return its measurement.

    Raises:
        TraceSkipped: the scenario cannot be traced (QLoRA).
        TraceUnavailable: tracing cannot run on this machine.

    """
    (result,) = trace_scenarios([scenario], mode)
    if isinstance(result, TraceSkipped | TraceFailed):
        raise result
    return result


def load_measurements(path: str | Path) -> list[Measurement]:
    """Read a ``validation/measurements/*.jsonl`` file."""
    text = Path(path).read_text("utf-8")
    return [Measurement.model_validate_json(x) for x in text.splitlines() if x.strip()]


# ----------------------------------------------------------------------------- CLI


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validation.trace", description=__doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scenario-id", action="append", help="a grid scenario id (repeatable)")
    what.add_argument("--grid", action="store_true", help="every scenario of validation.grid")
    what.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["fake-cuda", "fake-cpu", "cpu"], default="fake-cuda")
    parser.add_argument(
        "--math-sdpa", action="store_true", help="keep fake-cuda SDPA on the math kernel"
    )
    parser.add_argument("--out", type=Path, help="append Measurement JSON lines to this file")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.mode, route_sdpa=not args.math_sdpa)
    from validation import grid

    try:
        scenarios = grid.scenarios() if args.grid else [grid.scenario(i) for i in args.scenario_id]
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    return report(scenarios, args.mode, args.out, route_sdpa=not args.math_sdpa)


def report(
    scenarios: Sequence[Scenario], mode: Mode, out: Path | None, *, route_sdpa: bool = True
) -> int:
    """Trace ``scenarios``, print one line each, append the measurements to ``out``."""
    try:
        results = trace_scenarios(scenarios, mode, route_sdpa=route_sdpa, keep_going=True)
    except TraceUnavailable as exc:
        print(f"trace unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    lines = []
    failed = 0
    for res in results:
        if isinstance(res, TraceSkipped):
            print(f"SKIP {res}", file=sys.stderr)
            continue
        if isinstance(res, TraceFailed):
            print(f"FAILED {res}", file=sys.stderr)
            failed += 1
            continue
        m = res.measured
        cats = " ".join(f"{k}={_mib(v)}" for k, v in m.by_category.items())
        print(f"{res.scenario.id}: peak {_mib(m.allocated_bytes)} step {m.step} {m.phase} "
              f"[{cats}] {res.wall_s:.1f}s")  # fmt: skip
        lines.append(res.model_dump_json())
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as fh:
            fh.writelines(x + "\n" for x in lines)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
