r"""Multi-GPU CUDA backend: the real FSDP1 / FSDP2 / FSDP2 + TP step under ``torchrun``.

One process per GPU, launched by PyTorch's elastic launcher (``launch_command``)::

    python -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N \\
        -m validation.dist_cuda --scenario case.json --result result.json

(on several nodes: ``--nnodes M --node-rank R --rdzv-endpoint HOST:PORT`` on each, as
torchrun documents). Every rank initialises the default process group from torchrun's
environment (``env://``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``)
with NCCL on ``cuda:LOCAL_RANK`` (``--device cpu``: gloo on the CPU, every memory figure 0 --
the smoke test of the code path on machines without a GPU), then builds and wraps the model
with the SAME code as the rank-0 trace (``validation.dist_trace.build_base`` and
``wrap_for_step``: accelerate's FSDP1/FSDP2 wrapping, torchtitan's TP plan, PEFT's FSDP+QLoRA
recipe) and runs ``scenario.steps`` steps (``validation.build.Setup.step``). Around each phase
(forward, loss, backward, optimizer) each rank resets and reads its allocator's peak
counters (``validation.cuda.PhaseRecorder``), so each phase keeps its own maximum of
``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``; NVML ``used`` is read per phase
on the rank's own GPU.

The ranks' per-phase maxima are gathered to rank 0 (``all_gather_object``), which writes one
``Measurement``: the peak, phase and per-phase figures are rank 0's (what the estimate
describes), ``Measured.rank_allocated_bytes`` lists every rank's allocated peak and
``Measured.max_rank_allocated_bytes`` is their maximum; the fingerprint names the launcher,
the process-group backend and the world size.

DeepSpeed ZeRO runs go through DeepSpeed's own launcher (``validation.deepspeed_run``);
``validation.compare`` picks the launcher from the request (``launcher_for``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from validation.records import Measured, Measurement, Scenario

__all__ = ["device_for", "launch_command", "launcher_for", "main", "run_rank"]


def launcher_for(request: Any) -> str:
    """Return the launcher of a request measured on real GPUs.

    ``torchrun`` (FSDP/TP layouts), ``deepspeed`` (ZeRO, DeepSpeed data parallel) or
    ``single`` (one process).
    """
    if request.fsdp is not None or request.tp > 1:
        return "torchrun"
    if int(request.zero) > 0 or request.deepspeed is not None or request.gpus * request.nodes > 1:
        return "deepspeed"
    return "single"


def launch_command(
    scenario: Path, result: Path, *, nproc: int, device: str = "cuda", nnodes: int = 1
) -> list[str]:
    """Return the ``torchrun`` command line of a run (``nproc`` processes on this node).

    One node: ``--standalone`` (a local rendezvous on a free port). Several nodes need a
    rendezvous endpoint the caller adds (and the same command on every node).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        cmd += ["--standalone", "--nnodes", "1"]
    else:
        cmd += ["--nnodes", str(nnodes)]
    cmd += ["--nproc-per-node", str(nproc), "-m", "validation.dist_cuda",
            "--scenario", str(scenario), "--result", str(result), "--device", device]  # fmt: skip
    return cmd


def device_for(kind: str, local_rank: int) -> tuple[str, str]:
    """Return ``(device, process-group backend)`` of a rank.

    ``cuda``: ``cuda:LOCAL_RANK`` with NCCL; ``cpu``: the CPU with gloo.
    """
    if kind == "cuda":
        return f"cuda:{local_rank}", "nccl"
    if kind == "cpu":
        return "cpu", "gloo"
    raise ValueError(f"unknown device kind {kind!r}; accepted: cuda, cpu")


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"{name} is not set: launch this module with torchrun")
    return int(value)


def run_rank(scenario: Scenario, kind: str = "cuda") -> Measurement | None:
    """Run this rank's share of ``scenario``; rank 0 returns the Measurement, others ``None``.

    Must run under ``torchrun`` (its environment names the rank and the world).
    """
    import torch  # noqa: TID251
    import torch.distributed as dist  # noqa: TID251

    from validation import cuda, dist_trace

    t_start = time.perf_counter()
    req = scenario.request
    why = dist_trace.layout_limitations(req)
    if why is not None:
        raise RuntimeError(f"not measured: {why}")
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if world != dist_trace.world_size(req):
        raise RuntimeError(
            f"torchrun started {world} processes; the request's layout needs "
            f"gpus x nodes = {dist_trace.world_size(req)}"
        )
    dev_name, backend = device_for(kind, local)
    dev = torch.device(dev_name)
    handle = None
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        handle = cuda._nvml_handle(torch)
    dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    try:
        torch.manual_seed(0)
        rec = cuda.PhaseRecorder(torch, handle, device=dev)
        rec.begin("0/load")
        mesh, dim_names = dist_trace._mesh(req, dev.type)
        model = dist_trace.build_base(scenario, dev, fake=False)
        setup, _params, make_batch = dist_trace.wrap_for_step(
            model, scenario, dev, mesh=mesh, dim_names=dim_names
        )
        del model
        rec.end("0/load")
        marks = cuda._PhaseMarks(rec)
        step_s: list[float] = []
        for step in range(1, scenario.steps + 1):
            t0 = time.perf_counter()
            batch = (make_batch or setup.make_batch)()
            setup.on_phase = marks.hook(step, "")
            setup.step(batch)
            marks.close()
            del batch
            step_s.append(time.perf_counter() - t0)
        mine = {"allocated": rec.allocated, "reserved": rec.reserved, "used": rec.device_used}
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank != 0:
            return None
        measured = cuda.measured_from_phases(
            rec.allocated, rec.reserved, rec.device_used, context_bytes=None
        )
        per_rank = [_train_peak(g["allocated"]) for g in gathered]
        measured = Measured.model_validate(
            measured.model_dump()
            | {"rank_allocated_bytes": per_rank, "max_rank_allocated_bytes": max(per_rank)}
        )
        fp = cuda.fingerprint(
            torch,
            dry_run=dev.type != "cuda",
            launcher="torchrun",
            process_group=backend,
            world_size=world,
            step_s=[round(s, 4) for s in step_s],
            phase_s={k: round(v, 4) for k, v in rec.seconds.items()},
            load_allocated_bytes=rec.allocated.get("0/load"),
            rank_reserved_bytes=[_train_peak(g["reserved"]) for g in gathered],
        )
        if dev.type != "cuda":
            fp = fp.model_copy(update={"device": f"cpu ({backend}, {world} processes)"})
        return Measurement(
            scenario=scenario,
            fingerprint=fp,
            measured=measured,
            created=cuda._now(),
            wall_s=round(time.perf_counter() - t_start, 3),
        )
    finally:
        dist.destroy_process_group()


def _train_peak(values: dict[str, int]) -> int:
    """Return the maximum over the training phases (``'<step>/<phase>'``, step >= 1)."""
    return max((v for k, v in values.items() if not k.startswith("0/")), default=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of each torchrun process (see the module docstring)."""
    from validation import cuda

    ap = argparse.ArgumentParser(prog="python -m validation.dist_cuda", description=__doc__)
    ap.add_argument("--scenario", type=Path, required=True, help="Scenario JSON file")
    ap.add_argument("--result", type=Path, required=True, help="Measurement JSON (rank 0)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = ap.parse_args(argv)
    scenario = Scenario.model_validate_json(args.scenario.read_text("utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    t0 = time.perf_counter()
    try:
        m = run_rank(scenario, args.device)
    except Exception as exc:  # one failure line (rank 0), the traceback on stderr
        traceback.print_exc()
        if rank == 0:
            m = cuda.failure_measurement(
                scenario, cuda._describe(exc), wall_s=round(time.perf_counter() - t0, 3)
            )
            cuda._write_result(args.result, m)
        return 1
    if m is not None:
        cuda._write_result(args.result, m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
