"""Planner speed (issue 12): in-process plan, whole process, estimates/s, cold start.

    python benchmarks/bench_plan.py [--runs N]

Also the serving planner (``plan --task infer``: the issue's example, and with every weight
format allowed) in-process and as a whole process.

Prints figures; no asserts. Targets: a full plan for a 70B model over the whole GPU catalog
under 1 s in-process and ``vramcalc plan`` under 2 s as a whole process; a whole-process
``vramcalc MODEL --json`` under 0.15 s. Wall time is shared with whatever else runs on the
machine, so CPU time (``time.process_time`` in-process, user+sys of the child) is printed
next to it: on a loaded machine the CPU figure is the one close to an idle machine's wall.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAN_ARGS = ["llama-3.1-70b", "--methods", "lora,qlora", "--tokens", "200000000",
             "--global-batch", "64"]  # fmt: skip
INFER_ARGS = ["qwen2.5-7b", "--task", "infer", "--prompt-len", "8192", "--new-tokens", "1024",
              "--concurrency", "32"]  # fmt: skip
COLD = [["llama-3.1-70b", "--json"], ["gpt2-medium", "--json"]]


def _child(args: list[str]) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode, as an install has it
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vramcalc", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    ns = p.parse_args()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs (medians of {ns.runs} runs)")  # fmt: skip

    from vramcalc.plan import plan, render_plan

    kw = {"model": "llama-3.1-70b", "methods": "lora,qlora", "tokens": 200_000_000,
          "global_batch": 64}  # fmt: skip
    plan(model="qwen2.5-0.5b", tokens=1, gpus_from="t4")  # imports and catalogs
    walls, cpus, rates, cpu_rates = [], [], [], []
    report = None
    for _ in range(ns.runs):
        t, c = time.perf_counter(), time.process_time()
        report = plan(**kw)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        rates.append(report.stats["estimates_per_s"])
        cpu_rates.append(report.stats["estimates_per_cpu_s"])
    assert report is not None
    print(render_plan(report))
    print()
    print(f"in-process plan, llama-3.1-70b over {len({c.gpu for c in report.candidates})} "
          f"GPU types: wall {statistics.median(walls):.3f} s, CPU "
          f"{statistics.median(cpus):.3f} s (target < 1 s)")  # fmt: skip
    rate, cpu_rate = statistics.median(rates), statistics.median(cpu_rates)
    print(f"  {report.stats['estimates']:.0f} engine estimates, "
          f"{report.stats['candidates']:.0f} candidates; estimates/s in the inner loop: "
          f"{rate:.0f} wall, {cpu_rate:.0f} CPU")  # fmt: skip

    full = {**kw, "methods": "full,lora,qlora"}
    walls, cpus = [], []
    for _ in range(ns.runs):
        t, c = time.perf_counter(), time.process_time()
        report = plan(**full)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    print(f"in-process plan, llama-3.1-70b, --methods full,lora,qlora: wall "
          f"{statistics.median(walls):.3f} s, CPU {statistics.median(cpus):.3f} s, "
          f"{report.stats['estimates']:.0f} estimates, {report.stats['candidates']:.0f} "
          f"candidates")  # fmt: skip
    ikw = {"model": "qwen2.5-7b", "task": "infer", "prompt_len": 8192, "new_tokens": 1024,
           "concurrency": 32}  # fmt: skip
    for label, extra in (("", {}), (", all six weight formats",
                                    {"weights": "auto,int8,nf4,awq,gptq,fp8"})):  # fmt: skip
        walls, cpus = [], []
        for _ in range(ns.runs):
            t, c = time.perf_counter(), time.process_time()
            report = plan(**ikw, **extra)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        print(f"in-process serving plan, qwen2.5-7b, 32 x (8192 + 1024){label}: wall "
              f"{statistics.median(walls):.3f} s, CPU {statistics.median(cpus):.3f} s, "
              f"{report.stats['estimates']:.0f} estimates "
              f"({report.stats['estimates_per_cpu_s']:.0f}/CPU s), "
              f"{report.stats['candidates']:.0f} candidates")  # fmt: skip

    runs = [_child(["plan", *INFER_ARGS]) for _ in range(ns.runs)]
    print(f"vramcalc plan {' '.join(INFER_ARGS)}")
    print(f"  whole process: wall {statistics.median(r[0] for r in runs):.3f} s, CPU "
          f"{statistics.median(r[1] for r in runs):.3f} s (target < 2 s)")  # fmt: skip
    runs = [_child(["plan", *PLAN_ARGS]) for _ in range(ns.runs)]
    print(f"vramcalc plan {' '.join(PLAN_ARGS)}")
    print(f"  whole process: wall {statistics.median(r[0] for r in runs):.3f} s, CPU "
          f"{statistics.median(r[1] for r in runs):.3f} s (target < 2 s)")  # fmt: skip
    for args in COLD:
        runs = [_child(args) for _ in range(max(ns.runs, 10))]
        print(f"vramcalc {' '.join(args)}: wall {statistics.median(r[0] for r in runs):.3f} s,"
              f" CPU {statistics.median(r[1] for r in runs):.3f} s (target < 0.15 s; "
              "benchmarks/bench_cold.py has the breakdown)")  # fmt: skip


if __name__ == "__main__":
    main()
