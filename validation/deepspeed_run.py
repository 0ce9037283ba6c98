r"""DeepSpeed ZeRO 0-3 (with optional CPU/NVMe offload) measured through DeepSpeed's launcher.

Launched by DeepSpeed itself, one process per GPU::

    python -m deepspeed.launcher.runner --num_gpus N --master_port 29511 \\
        validation/deepspeed_run.py --scenario case.json --result result.json

(``deepspeed --num_gpus N validation/deepspeed_run.py ...`` is the same runner.) Each rank
builds the model from its config (fp32 on the CPU, random init), hands it and a client
optimizer (the scenario's transformers optimizer name, e.g. ``adamw_torch``) to
``deepspeed.initialize``, and runs ``scenario.steps`` steps phase by phase; rank 0 records
the per-phase maxima of the allocator counters and NVML ``used`` on its own GPU and writes
one Measurement line.

The DeepSpeed config is ``scenario.request.deepspeed`` when given (micro-batch and
accumulation filled in if missing), else built from ``zero``, ``offload_optimizer``,
``offload_param`` and the precision (``dtype``/``mixed_precision``: fp16 or bf16 turn on
DeepSpeed's fp16/bf16 mode, which keeps 16-bit weights and an fp32 master copy inside the
ZeRO optimizer, as the HF Trainer's DeepSpeed integration does for ``--fp16``/``--bf16``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by the DeepSpeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validation.cuda import (
    PhaseRecorder,
    RunPlan,
    _describe,
    _enable_checkpointing,
    _fold_micro,
    _now,
    _nvml_handle,
    _storage_bytes,
    build_model,
    compute_loss,
    failure_measurement,
    fingerprint,
    make_batch,
    measured_from_phases,
    nvml_used,
    resolve_plan,
    uses_shared_builder,
)
from validation.records import Fingerprint, Measurement, Scenario
from vramcalc.errors import InvalidConfigError

__all__ = ["deepspeed_config", "launch_command", "main", "run_deepspeed"]

NVME_PATH = "/tmp/vramcalc_ds_nvme"
"""Where NVMe offload swaps (a local disk path on the GPU machine)."""


def _offload(device: str, *, pin: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"device": device, "pin_memory": pin}
    if device == "nvme":
        out["nvme_path"] = NVME_PATH
    return out


def deepspeed_config(plan: RunPlan) -> dict[str, Any]:
    """Build the DeepSpeed config of a plan (pure: DeepSpeed is not imported).

    A scenario's own ``deepspeed`` dict wins; only the micro-batch size and the accumulation
    steps are filled in when it lacks them. Otherwise the config has the ZeRO stage and
    offload targets of the request, the precision mode, and two switches that let the
    scenario's client optimizer run (``zero_allow_untested_optimizer`` and, for offload,
    ``zero_force_ds_cpu_optimizer: false``: a torch optimizer steps the CPU master copy).

    Source: DeepSpeed config JSON reference (deepspeed.ai/docs/config-json) and
    ``transformers.integrations.deepspeed.HfTrainerDeepSpeedConfig`` (``fp16``/``bf16``
    follow the Trainer's precision flags).

    Raises:
        InvalidConfigError: parameter offload below ZeRO-3.

    """
    if plan.deepspeed:
        cfg = copy.deepcopy(plan.deepspeed)
        cfg.setdefault("train_micro_batch_size_per_gpu", plan.batch_size)
        cfg.setdefault("gradient_accumulation_steps", plan.grad_accum)
        cfg.setdefault("steps_per_print", 10**9)
        return cfg
    if plan.offload_param != "none" and plan.zero_stage < 3:
        raise InvalidConfigError(
            f"offload_param={plan.offload_param} needs ZeRO-3, got zero={plan.zero_stage}; "
            "accepted: zero=3 with offload_param, or offload_optimizer with zero 1-3"
        )
    zero: dict[str, Any] = {"stage": plan.zero_stage}
    if plan.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(plan.offload_optimizer)
    if plan.offload_param != "none":
        zero["offload_param"] = _offload(plan.offload_param)
    cfg = {
        "train_micro_batch_size_per_gpu": plan.batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    half = plan.autocast_dtype or (plan.param_dtype if plan.param_dtype != "float32" else None)
    if half == "float16":
        cfg["fp16"] = {"enabled": True}
    elif half == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    return cfg


def launch_command(
    scenario_path: Path, result_path: Path, *, gpus: int, master_port: int = 29511
) -> list[str]:
    """Return the argv that runs one scenario through DeepSpeed's launcher."""
    script = Path(__file__).resolve()
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(gpus),
        "--master_port",
        str(master_port),
        str(script),
        "--scenario",
        str(scenario_path),
        "--result",
        str(result_path),
    ]


def _host_rss_peak_bytes() -> int:
    # ru_maxrss is KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def run_deepspeed(scenario: Scenario) -> Measurement | None:
    """Run one DeepSpeed scenario on this rank; return rank 0's Measurement (else ``None``)."""
    plan = resolve_plan(scenario)
    ds_config = deepspeed_config(plan)
    t_start = time.perf_counter()
    import torch  # noqa: TID251

    deepspeed: Any = importlib.import_module("deepspeed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    handle = _nvml_handle(None)  # before set_device, which creates the context
    used_before = nvml_used(handle)
    torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank)
    torch.cuda.init()  # type: ignore[no-untyped-call]
    handle = _nvml_handle(torch) or handle
    torch.ones(1, device=dev)
    torch.cuda.synchronize()
    used_after_init = nvml_used(handle)
    context_bytes = (
        used_after_init - used_before - int(torch.cuda.memory_reserved(dev))
        if used_after_init is not None and used_before is not None
        else None
    )
    deepspeed.init_distributed(dist_backend="nccl")
    rank = int(torch.distributed.get_rank())
    torch.manual_seed(0)

    rec = PhaseRecorder(torch, handle, device=dev)
    rec.begin("0/load")
    from validation import build

    # fp32 master weights on the CPU; DeepSpeed casts (fp16/bf16 mode) and places them.
    if uses_shared_builder(plan) and plan.param_dtype == "float32":
        model = build.build_model(scenario, "cpu")
    else:
        model = build_model(plan, "cpu", dtype="float32")
        if plan.grad_ckpt:
            _enable_checkpointing(model)
        model.train()
    # The Trainer's optimizer (decay groups, pinned implementation) as the client optimizer.
    client_opt = build.build_optimizer(scenario, model)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=client_opt, config=ds_config
    )
    batch = make_batch(plan, engine.module, dev)
    rec.end("0/load")
    params_bytes = _storage_bytes(iter([*engine.module.parameters(), *engine.module.buffers()]))

    step_s: list[float] = []
    ga = int(engine.gradient_accumulation_steps())
    for step in range(1, plan.steps + 1):
        t0 = time.perf_counter()
        for micro in range(ga):
            sfx = "" if ga == 1 else f"#{micro + 1}"
            with rec.phase(f"{step}/forward{sfx}"):
                out = engine(input_ids=batch["input_ids"])
            with rec.phase(f"{step}/loss{sfx}"):
                loss = compute_loss(engine.module, out.logits, batch["labels"])
            with rec.phase(f"{step}/backward{sfx}"):
                engine.backward(loss)
                del out, loss
            with rec.phase(f"{step}/optimizer{sfx}"):
                engine.step()
        step_s.append(time.perf_counter() - t0)

    if rank != 0:
        return None
    measured = measured_from_phases(
        _fold_micro(rec.allocated),
        _fold_micro(rec.reserved),
        _fold_micro(rec.device_used),
        context_bytes=context_bytes,
        by_category={"params": params_bytes},
    )
    fp = fingerprint(
        torch,
        launcher="deepspeed.launcher.runner",
        world_size=int(torch.distributed.get_world_size()),
        deepspeed_config=ds_config,
        optimizer_wrapper=type(optimizer).__name__,
        nvml_used_before_init_bytes=used_before,
        nvml_used_after_init_bytes=used_after_init,
        params_bytes_on_gpu=params_bytes,
        host_rss_peak_bytes=_host_rss_peak_bytes(),
        step_s=[round(s, 4) for s in step_s],
        phase_s={k: round(v, 4) for k, v in rec.seconds.items()},
        load_allocated_bytes=rec.allocated.get("0/load"),
    )
    return Measurement(
        scenario=scenario,
        fingerprint=fp,
        measured=measured,
        created=_now(),
        wall_s=round(time.perf_counter() - t_start, 3),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank (``--local_rank`` is what the launcher appends)."""
    ap = argparse.ArgumentParser(prog="validation/deepspeed_run.py", description=__doc__)
    ap.add_argument("--scenario", required=True, type=Path)
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--local_rank", type=int, default=None, help="set by the launcher")
    ap.add_argument("--print-config", action="store_true", help="print the config and exit")
    args = ap.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    scenario = Scenario.model_validate_json(args.scenario.read_text(encoding="utf-8"))
    if args.print_config:
        import json

        print(json.dumps(deepspeed_config(resolve_plan(scenario)), indent=2))
        return 0
    t0 = time.perf_counter()
    try:
        m = run_deepspeed(scenario)
    except Exception as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            fp: Fingerprint | None = None
            with contextlib.suppress(Exception):
                import torch  # noqa: TID251

                fp = fingerprint(torch, launcher="deepspeed.launcher.runner")
            failed = failure_measurement(
                scenario, _describe(exc), fp=fp, wall_s=round(time.perf_counter() - t0, 3)
            )
            args.result.write_text(failed.model_dump_json() + "\n", encoding="utf-8")
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    if m is not None:
        args.result.write_text(m.model_dump_json() + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
