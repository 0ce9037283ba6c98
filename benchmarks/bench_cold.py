"""Cold start of the CLI (issue 12): whole-process ``vramcalc MODEL --json``.

    python benchmarks/bench_cold.py [--runs N] [--root PATH] [ARGS ...]

Prints, for fresh processes of ``python -m vramcalc ARGS`` (default ``gpt2 --json``):

- wall and CPU (user+sys) time, median and minimum of ``--runs`` runs (default 15);
- the ``python -X importtime`` total (sum of every module's own import time), median of 5;
- with ``--valgrind``: the instructions executed by one run (valgrind's cachegrind ``I refs``),
  the figure that does not move with the machine's load at all;
- from one profiled run: the Python function calls of the whole command (a count that does
  not depend on the machine's load) and the vramcalc model classes whose pydantic schema was
  built.

The machine's load average is printed first: on a shared machine wall time follows the load,
CPU time much less, the call counts not at all. ``--root`` runs another checkout (an exported
``git archive`` of an older commit) for a before/after comparison with the same interpreter.
No asserts; not part of the test run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROFILE = r"""
import cProfile, contextlib, io, pstats, sys
sys.argv = ["vramcalc", *sys.argv[1:]]
pr = cProfile.Profile()
pr.enable()
with contextlib.redirect_stdout(io.StringIO()):
    from vramcalc.cli import run  # not main(): it may end the process with os._exit
    run(sys.argv[1:])
pr.disable()
st = pstats.Stats(pr)
import pydantic
def subs(c):
    for s in c.__subclasses__():
        yield s
        yield from subs(s)
built = sorted({c.__name__ for c in subs(pydantic.BaseModel)
                if c.__module__.startswith("vramcalc") and c.__pydantic_complete__})
print(st.total_calls, len(built), " ".join(built))
"""


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    return env


def _run(root: Path, args: list[str]) -> tuple[float, float]:
    before = os.times()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vramcalc", *args], cwd=root, env=_env(root),
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t
    after = os.times()
    return wall, (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


def _importtime(root: Path, args: list[str]) -> float:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "vramcalc", *args],
                       cwd=root, env=_env(root), check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)  # fmt: skip
    total = 0
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us = line.split(":", 1)[1].split("|")[0].strip()
            if self_us.isdigit():
                total += int(self_us)
    return total / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--valgrind", action="store_true", help="also count instructions")
    p.add_argument("args", nargs="*", default=["gpt2", "--json"])
    ns = p.parse_args()
    root = ns.root.resolve()
    _run(root, ns.args)  # bytecode written, page cache warm
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"root {root}; load average {load} on {os.cpu_count()} CPUs")
    runs = [_run(root, ns.args) for _ in range(ns.runs)]
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    print(f"vramcalc {' '.join(ns.args)}: wall median {statistics.median(walls):.3f} s "
          f"(min {min(walls):.3f}), CPU median {statistics.median(cpus):.3f} s "
          f"(min {min(cpus):.3f}) over {ns.runs} runs; target < 0.15 s idle")  # fmt: skip
    imp = [_importtime(root, ns.args) for _ in range(5)]
    print(f"  -X importtime total: median {statistics.median(imp):.3f} s (min {min(imp):.3f})")
    if ns.valgrind:
        r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                            "--cachegrind-out-file=/dev/null", sys.executable, "-m", "vramcalc",
                            *ns.args], cwd=root, env=_env(root), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
        refs = [ln.split(":", 1)[1].strip() for ln in r.stderr.splitlines() if "I   refs" in ln]
        print(f"  instructions (valgrind, load-independent): {refs[-1] if refs else '?'}")
    r = subprocess.run([sys.executable, "-c", PROFILE, *ns.args], cwd=root, env=_env(root),
                       check=True, capture_output=True, text=True)  # fmt: skip
    calls, n_built, names = [*r.stdout.split(maxsplit=2), ""][:3]
    print(f"  Python function calls (load-independent): {int(calls):,}; {n_built} vramcalc "
          f"model classes built: {names.strip()}")  # fmt: skip


if __name__ == "__main__":
    main()
