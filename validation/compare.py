"""``vramcalc validate``: an estimate and a measurement of the same request, side by side.

``validate_main(request, backend, as_json)`` estimates ``request`` with the engine, measures
the same training step with a backend, and prints both with the error of each figure:

- ``trace``: the real transformers/peft step on fake CUDA tensors in a subprocess
  (``validation.trace``); no GPU. It knows the allocated peak, its phase and the bytes by
  category at that moment, not the reserved or device peaks (``null``).
- ``cuda``: the step really run on this machine's GPU in a fresh process
  (``validation.cuda``, or ``validation.deepspeed_run`` through DeepSpeed's launcher for
  ZeRO/multi-GPU requests): all three peaks.

Measured categories map onto the report's five components: ``params``, ``gradients`` and
``optimizer`` one to one; ``activations`` = the trace's ``activations`` + ``temporaries``
(activation gradients; at an optimizer-step peak they are the step's work lists and count
as ``optimizer``, as the report counts them), or the CUDA backend's ``other`` (everything
allocated that is not a parameter, gradient or state); ``base`` (context, workspaces, allocator
reserve) = device - allocated on a GPU and unknown in a trace. ``error_pct`` is
``100 * (estimate - measured) / measured``. Against a trace the estimate is the engine's
``target="trace"`` variant (no cuBLAS workspaces, which fake tensors never allocate, and the
embedding backward as its Python decomposition runs); against a GPU it is the user's estimate.

Exit codes: 0 compared; 2 bad input (an unknown name, or a request this backend cannot run);
3 backend unavailable (no torch, the fake-CUDA extension cannot build, no CUDA device);
1 the measurement itself failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from validation.records import Measured, Measurement, Scenario
from vramcalc.errors import VramcalcError
from vramcalc.report import COMPONENTS, MemoryReport
from vramcalc.specs import EstimateRequest

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "cuda_limitations",
    "error_pct",
    "measured_components",
    "predict",
    "scenario_for",
    "trace_limitations",
    "validate_main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
REPO = Path(__file__).resolve().parents[1]
PEAKS = ("allocated_bytes", "reserved_bytes", "device_bytes")
MIB = 2**20


# ----------------------------------------------------------------------------- shared helpers


def predict(
    request: EstimateRequest, optim_impl: str = "default", *, target: str = "cuda"
) -> MemoryReport:
    """Estimate ``request`` as a measured scenario ran it.

    Args:
        request: the request.
        optim_impl: the optimizer implementation the scenario pinned. ``default`` and
            ``foreach`` are what a CUDA run picks (torch's multi-tensor path), i.e. the
            engine's own default; ``for-loop`` and ``fused`` pins are passed to the engine.
        target: ``cuda`` (a real GPU: what users get) or ``trace`` (what a fake-tensor trace
            records: no cuBLAS workspaces, the embedding backward's Python decomposition).

    """
    from vramcalc import engine

    impl = None if optim_impl in ("default", "foreach") else optim_impl
    if impl is None and target == "cuda":
        return engine.estimate(request)
    report: MemoryReport = engine._estimate(request, optim_impl=impl, target=target)
    return report


def error_pct(estimate: int | None, measured: int | None) -> float | None:
    """``100 * (estimate - measured) / measured``; ``None`` where it is undefined."""
    if estimate is None or measured is None:
        return None
    if measured == 0:
        return 0.0 if estimate == 0 else None
    return 100.0 * (estimate - measured) / measured


def measured_components(m: Measured, backend: str) -> dict[str, int | None]:
    """Map a measurement's categories onto the five report components (see module doc)."""
    cat = m.by_category
    if not cat:
        return dict.fromkeys(COMPONENTS)
    optimizer = cat.get("optimizer")
    if backend == "trace":
        acts: int | None = cat.get("activations", 0) + cat.get("temporaries", 0)
        base: int | None = None
        if m.phase == "optimizer" and optimizer is not None:
            # at the optimizer step the live non-state tensors are the step's work lists
            # (foreach temporaries, clipping norms): the report counts those as optimizer
            optimizer += cat.get("temporaries", 0) + cat.get("activations", 0)
            acts = 0
    else:
        acts = cat.get("other")
        base = (
            m.device_bytes - m.allocated_bytes
            if m.device_bytes is not None and m.allocated_bytes
            else None
        )
    params, gradients = cat.get("params"), cat.get("gradients")
    if backend == "trace" and params is not None and gradients is not None:
        # distributed traces: unsharded (all-gathered) parameters count as parameters, the
        # gradient reduce-scatter/all-reduce buffers as gradients
        params += cat.get("gathered", 0)
        gradients += cat.get("reduce", 0)
    return {
        "base": base,
        "params": params,
        "activations": acts,
        "gradients": gradients,
        "optimizer": optimizer,
    }


def scenario_for(request: EstimateRequest, scenario_id: str | None = None) -> Scenario:
    """Wrap ``request`` in a two-step scenario (first step and steady state), default kernels."""
    if scenario_id is None:
        name = request.model if isinstance(request.model, str) else "inline-config"
        scenario_id = "validate-" + "".join(ch if ch.isalnum() else "-" for ch in str(name))
    return Scenario(id=scenario_id, request=request, steps=2, optim_impl="default")


def trace_limitations(request: EstimateRequest) -> str | None:
    """Why the trace backend cannot measure ``request`` (``None`` when it can)."""
    if request.task.value != "train":
        return "the trace backend measures training steps, not inference"
    from validation.dist_trace import is_distributed, layout_limitations

    quantized = request.qlora is not None or request.quant is not None
    if quantized and request.fsdp is None:
        return (
            "QLoRA/quantized bases are traced under FSDP only (--fsdp, PEFT's FSDP+QLoRA "
            "recipe); on one GPU use --backend cuda"
        )
    if request.adapter or request.prefix or request.prompt_tuning or request.ia3:
        return "the trace backend builds full fine-tuning and LoRA only"
    if is_distributed(request):
        why = layout_limitations(request)
        if why is not None:
            return why
    elif (
        int(request.zero) > 0
        or request.deepspeed is not None
        or request.gpus * request.nodes > 1
        or request.offload_optimizer.value != "none"
        or request.offload_param.value != "none"
    ):
        return (
            "the trace backend runs one device, or rank 0 of an FSDP/TP layout (--fsdp, --tp): "
            "no ZeRO, DeepSpeed offload or plain multi-GPU data parallel"
        )
    from vramcalc.hf import resolve_model

    spec = resolve_model(request.model)
    if not (spec.is_causal_lm or spec.is_encoder_decoder or spec.has_lm_head):
        return (
            "the trace backend builds language models: causal, encoder-decoder, or an encoder "
            "whose config.json names a masked-LM class in architectures[0] "
            "(e.g. ModernBertForMaskedLM)"
        )
    return None


def cuda_limitations(request: EstimateRequest) -> str | None:
    """Why the CUDA backend cannot launch ``request`` from here (``None`` when it can).

    FSDP/TP layouts run under ``torchrun`` on this node (``validation.dist_cuda``) with the
    wrapping the rank-0 trace uses, so they share its limits; several nodes need a
    launcher on every node.
    """
    from validation.dist_cuda import launcher_for

    if launcher_for(request) != "torchrun":
        return None
    if request.nodes > 1:
        return (
            f"--nodes {request.nodes}: validate launches one node; run "
            "'python -m torch.distributed.run --nnodes N ... -m validation.dist_cuda' on every "
            "node (validation/dist_cuda.py)"
        )
    from validation.dist_trace import layout_limitations

    why = layout_limitations(request)
    return None if why is None else why.replace("is not traced", "is not measured")


# ----------------------------------------------------------------------------- backends


class _Unavailable(RuntimeError):
    pass


class _BadInput(RuntimeError):
    pass


def _measure_trace(scenario: Scenario) -> Measurement:
    from validation.trace import TraceSkipped, TraceUnavailable, trace_scenario

    try:
        return trace_scenario(scenario)
    except TraceUnavailable as exc:
        raise _Unavailable(f"trace backend unavailable: {exc}") from None
    except TraceSkipped as exc:
        raise _BadInput(str(exc)) from None


def _cuda_available() -> str | None:
    """``None`` when a CUDA device is usable here, else why not (checked in a subprocess)."""
    code = "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 5)"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot start Python to probe CUDA: {exc}"
    if proc.returncode == 5:
        return "no CUDA device; torch.cuda.is_available() is False on this machine"
    if proc.returncode != 0:
        return f"no CUDA device; torch cannot be imported ({proc.stderr.strip()[-300:]})"
    return None


def _measure_cuda(scenario: Scenario, timeout_s: float = 1800) -> Measurement:
    why = _cuda_available()
    if why is not None:
        raise _Unavailable(f"{why}; --backend cuda needs a GPU (use --backend trace)")
    req = scenario.request
    with tempfile.TemporaryDirectory(prefix="vramcalc-validate-") as tmp:
        sc = Path(tmp) / "scenario.json"
        res = Path(tmp) / "result.json"
        sc.write_text(scenario.model_dump_json(), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        from validation import dist_cuda

        launcher = dist_cuda.launcher_for(req)
        if launcher == "torchrun":  # FSDP1/FSDP2/FSDP2+TP: one process per GPU, NCCL
            cmd = dist_cuda.launch_command(sc, res, nproc=req.gpus)
        elif launcher == "deepspeed":
            from validation.deepspeed_run import launch_command

            cmd = launch_command(sc, res, gpus=req.gpus)
            env.setdefault("DS_ACCELERATOR", "cuda")
        else:
            cmd = [sys.executable, "-m", "validation.cuda", "--scenario", str(sc),
                   "--result", str(res)]  # fmt: skip
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"the CUDA run exceeded {timeout_s:.0f} s") from None
        if not res.exists():
            tail = out[-3000:]
            raise RuntimeError(f"the CUDA run wrote no result (rc={proc.returncode}):\n{tail}")
        m = Measurement.model_validate_json(res.read_text(encoding="utf-8").strip())
    if m.error:
        raise RuntimeError(f"the CUDA run failed: {m.error}")
    return m


# ----------------------------------------------------------------------------- output


def comparison(report: MemoryReport, m: Measurement) -> dict[str, Any]:
    """Build the JSON object of ``vramcalc validate --json``."""
    backend = m.fingerprint.backend
    got = m.measured
    comps = measured_components(got, backend)
    errors: dict[str, float | None] = {
        key: error_pct(getattr(report.peak, key), getattr(got, key)) for key in PEAKS
    }
    breakdown = report.breakdown.model_dump()
    errors.update({c: error_pct(breakdown[c], comps[c]) for c in COMPONENTS})
    return {
        "backend": backend,
        "scenario_id": m.scenario.id,
        "estimate_target": "trace" if backend == "trace" else "cuda",
        "estimate": report.model_dump(mode="json"),
        "measured": {
            "allocated_bytes": got.allocated_bytes,
            "reserved_bytes": got.reserved_bytes,
            "device_bytes": got.device_bytes,
            "phase": got.phase,
            "step": got.step,
            "by_category": dict(got.by_category),
            "components": comps,
            "device": m.fingerprint.device,
        },
        "error_pct": errors,
        "phase_agrees": str(report.peak.phase.value) == got.phase,
    }


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MIB:,.1f} MiB"


def _pct(p: float | None) -> str:
    return "n/a" if p is None else f"{p:+.1f} %"


def render(report: MemoryReport, cmp: dict[str, Any]) -> str:
    """Render the side-by-side text table (fits 80 columns)."""
    meas = cmp["measured"]
    err = cmp["error_pct"]
    rows = [f"{'':<18}{'estimate':>16}{'measured':>16}{'error':>11}"]
    for key, label in zip(PEAKS, ("peak allocated", "peak reserved", "peak device"), strict=True):
        rows.append(
            f"{label:<18}{_mib(getattr(report.peak, key)):>16}{_mib(meas[key]):>16}"
            f"{_pct(err[key]):>11}"
        )
    agree = "agrees" if cmp["phase_agrees"] else "differs"
    est_phase = f"{report.peak.step}/{report.peak.phase.value}"
    got_phase = f"{meas['step']}/{meas['phase']}"
    rows.append(f"{'phase':<18}{est_phase:>16}{got_phase:>16}{agree:>11}")
    if cmp["backend"] == "trace":
        rows.append("components at the peak (measured activations include temporaries):")
    else:
        rows.append("components at the peak (measured activations = other allocated bytes):")
    breakdown = report.breakdown.model_dump()
    for c in COMPONENTS:
        rows.append(
            f"  {c:<16}{_mib(breakdown[c]):>16}{_mib(meas['components'][c]):>16}{_pct(err[c]):>11}"
        )
    head = (
        f"{report.model.name}: estimate (vramcalc {report.version}, target "
        f"{cmp['estimate_target']}) vs {cmp['backend']} measurement on {meas['device']}"
    )
    return "\n".join([head, *rows])


# ----------------------------------------------------------------------------- entry point


def validate_main(request: EstimateRequest, backend: str, as_json: bool) -> int:
    """Estimate ``request``, measure it with ``backend`` (``trace`` | ``cuda``), print both.

    Returns:
        The exit code: 0 compared, 1 the measurement failed, 2 bad input, 3 backend
        unavailable.

    """
    if backend not in ("trace", "cuda"):
        print(f"error: unknown backend '{backend}'; accepted: trace, cuda", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        report = predict(request, target="trace" if backend == "trace" else "cuda")
        if backend == "trace":
            why = trace_limitations(request)
            if why is not None:
                raise _BadInput(why)
        else:
            why = cuda_limitations(request)
            if why is not None:
                raise _BadInput(why)
    except VramcalcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    scenario = scenario_for(request)
    try:
        m = _measure_trace(scenario) if backend == "trace" else _measure_cuda(scenario)
    except _Unavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except _BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        print(f"error: the {backend} measurement failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    cmp = comparison(report, m)
    if as_json:
        print(json.dumps(cmp, indent=2))
    else:
        print(render(report, cmp))
    return EXIT_OK
