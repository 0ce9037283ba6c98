"""Cold start of the CLI (issue 12): whole-process ``vramcalc MODEL ...`` against 0.15 s.

    python benchmarks/bench_cold.py [--runs N] [--root PATH] [--compare PATH] [--valgrind]
                                    [-- ARGS ...]

Measures fresh processes of ``python -m vramcalc ARGS`` for the two commands of the issue,
``gpt2 --json`` and the plain table ``gpt2-medium --optim adamw_8bit --lora r=16`` (or only
``ARGS`` when given after ``--``), and prints for each:

- wall and CPU (user+sys) time, median and minimum of ``--runs`` runs (default 21), and the
  verdicts against the target (0.15 s wall on an idle machine);
- the floors of the same interpreter: ``python -c pass`` (with ``site``: the venv's ``.pth``
  files, the editable install's finder) and ``python -S -c pass`` (the bare interpreter);
- the ``python -X importtime`` total (sum of every module's own import time), median of 5;
- with ``--valgrind``: the instructions executed by one run (valgrind's cachegrind ``I refs``)
  of each command and of the floors, figures that do not move with the machine's load;
- from one profiled run of the first command: its Python function calls (load-independent)
  and the vramcalc model classes whose pydantic schema was built;
- with ``--stages`` (and nothing else): where the instructions go, stage by stage (the
  interpreter, the CLI module and parser, pydantic's import, the model classes, the engine's
  modules, the estimate, the output).

The machine's load average is printed first: on a shared machine wall time follows the load,
CPU time much less (on an idle machine wall time is the CPU time plus a few ms), instruction
and call counts not at all; the verdict is printed for the wall and the CPU median.
``--compare`` runs a second checkout (an exported ``git archive`` of an older commit)
interleaved with ``--root``, run for run, so that both see the same load: the before/after
figure. ``--root`` alone runs another checkout. Bytecode is written by a first unmeasured run
(``PYTHONDONTWRITEBYTECODE`` is dropped from the children's environment: without ``.pyc``
files every run would compile the package again, 1.26 G instructions instead of 0.8 G for
``gpt2 --json``).
No asserts; not part of the test run.
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
TARGET_S = 0.15
COMMANDS = (
    ("gpt2", "--json"),
    ("gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16"),
)
FLOORS = (("-c", "pass"), ("-S", "-c", "pass"))

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


def _time(cmd: list[str], root: Path) -> tuple[float, float]:
    """Wall and CPU (user+sys) seconds of one child process (``getrusage``: microseconds,
    where ``os.times`` counts 10 ms ticks)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=_env(root), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _vramcalc(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "vramcalc", *args]


def _importtime(root: Path, args: tuple[str, ...]) -> float:
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


def _instructions(cmd: list[str], root: Path) -> int | None:
    r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                        "--cachegrind-out-file=/dev/null", *cmd], cwd=root, env=_env(root),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)  # fmt: skip
    refs = [ln.split(":", 1)[1].strip() for ln in r.stderr.splitlines() if "I   refs" in ln]
    return int(refs[-1].replace(",", "")) if refs else None


def _stats(label: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
    wall = statistics.median(walls)
    cpu = statistics.median(cpus)
    print(f"  {label}: wall median {wall:.3f} s (min {min(walls):.3f}), "
          f"CPU median {cpu:.3f} s (min {min(cpus):.3f}) over {len(runs)} runs")  # fmt: skip
    return wall, cpu


# Stages of a cold estimate, cumulative: each is a ``python -c`` program that runs the command
# up to that point (as ``cli.main`` does: gc off, pydantic's plugin loader skipped).
_PRE = ("import gc; gc.disable(); import os; os.environ.setdefault('PYDANTIC_DISABLE_PLUGINS', "
        "'1')\nimport vramcalc.cli as cli; cli._skip_plugin_loader()\n")  # fmt: skip


def _stages(args: tuple[str, ...]) -> list[tuple[str, str]]:
    steps = [
        ("vramcalc.cli (argparse, json)", _PRE),
        ("parser built, argv parsed", f"ns = cli._estimate_parser().parse_args({list(args)!r})\n"),
        ("import pydantic (pydantic_core, typing_extensions, inspect)", "import pydantic\n"),
        ("pydantic.main, fields, types (what specs.py imports)",
         "from pydantic import BaseModel, Field, Strict, AllowInfNan, ConfigDict, "
         "ValidationInfo, field_validator, model_validator\n"),
        ("vramcalc.specs, limits, enums (their model classes built)", "import vramcalc.specs\n"),
        ("vramcalc.report (its model classes built)", "import vramcalc.report\n"),
        ("vramcalc.engine and the formulas (modules, dataclasses)", "import vramcalc.engine\n"),
        ("request validated", "req = cli.build_request(ns)\n"),
        ("estimate", "rep = vramcalc.engine.estimate(req)\n"),
    ]  # fmt: skip
    if "--json" in args:
        steps.append(("JSON written", "import json; print(json.dumps(rep.model_dump(mode='json'), "
                                      "allow_nan=False))\n"))  # fmt: skip
    else:
        steps.append(("rich imported", "import rich.console, rich.table\n"))
        steps.append(("table rendered", "cli.render_report(rep, cli._console())\n"))
    steps.append(("flushed, os._exit", "import sys; sys.stdout.flush(); os._exit(0)\n"))
    return steps


def _print_stages(root: Path, args: tuple[str, ...]) -> None:
    print(f"stages of vramcalc {' '.join(args)} (instructions, cumulative and added):")
    prev = _instructions([sys.executable, "-c", "pass"], root) or 0
    print(f"  {prev / 1e6:6.0f} M  {prev / 1e6:+5.0f} M  interpreter (python -c pass)")
    code = ""
    for label, add in _stages(args):
        code += add
        _time([sys.executable, "-c", code], root)  # bytecode written
        n = _instructions([sys.executable, "-c", code], root) or 0
        print(f"  {n / 1e6:6.0f} M  {(n - prev) / 1e6:+5.0f} M  {label}")
        prev = n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--compare", type=Path, help="a second checkout, run interleaved (before)")
    p.add_argument("--valgrind", action="store_true", help="also count instructions")
    p.add_argument("--stages", action="store_true",
                   help="only the instructions of each stage (valgrind)")  # fmt: skip
    p.add_argument("args", nargs="*", help="one command's arguments (after --)")
    ns = p.parse_args()
    roots = [ns.root.resolve()] + ([ns.compare.resolve()] if ns.compare else [])
    commands = [tuple(ns.args)] if ns.args else list(COMMANDS)
    if ns.stages:
        for args in commands:
            _print_stages(roots[0], args)
        return
    for root in roots:
        for args in commands:
            _time(_vramcalc(args), root)  # bytecode written, page cache warm
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
          f"target: wall < {TARGET_S} s on an idle machine")  # fmt: skip
    for i, root in enumerate(roots):
        label = ("after" if i == 0 else "before") if ns.compare else "this checkout"
        print(f"{label}: {root}")
    floors = {f: [_time([sys.executable, *f], ROOT) for _ in range(ns.runs)] for f in FLOORS}
    print("floors (the interpreter alone):")
    for f, floor_runs in floors.items():
        _stats("python " + " ".join(f), floor_runs)
    for args in commands:
        print(f"vramcalc {' '.join(args)}:")
        runs: dict[Path, list[tuple[float, float]]] = {r: [] for r in roots}
        for _ in range(ns.runs):
            for root in roots:  # interleaved: both checkouts see the same load
                runs[root].append(_time(_vramcalc(args), root))
        for i, root in enumerate(roots):
            label = ("after" if i == 0 else "before") if ns.compare else "this checkout"
            wall, cpu = _stats(label, runs[root])
            for what, t in (("wall median at this load", wall), ("CPU median", cpu)):
                verdict = "UNDER" if t < TARGET_S else "OVER"
                print(f"    -> {what}: {verdict} the {TARGET_S} s target by "
                      f"{abs(TARGET_S - t) * 1000:.0f} ms ({t / TARGET_S:.0%} of it)")  # fmt: skip
            imp = [_importtime(root, args) for _ in range(5)]
            print(f"    -X importtime total: median {statistics.median(imp):.3f} s "
                  f"(min {min(imp):.3f})")  # fmt: skip
            if ns.valgrind:
                n = _instructions(_vramcalc(args), root)
                print(f"    instructions (valgrind, load-independent): {n:,}" if n else "    ?")
    if ns.valgrind:
        for f in FLOORS:
            n = _instructions([sys.executable, *f], ROOT)
            print(f"instructions of python {' '.join(f)}: {n:,}" if n else "?")
    r = subprocess.run([sys.executable, "-c", PROFILE, *commands[0]], cwd=roots[0],
                       env=_env(roots[0]), check=True, capture_output=True,
                       text=True)  # fmt: skip
    calls, n_built, names = [*r.stdout.split(maxsplit=2), ""][:3]
    print(f"vramcalc {' '.join(commands[0])}: {int(calls):,} Python function calls "
          f"(load-independent); {n_built} vramcalc model classes built: "
          f"{names.strip()}")  # fmt: skip


if __name__ == "__main__":
    main()
