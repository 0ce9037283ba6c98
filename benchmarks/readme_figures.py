"""Measure the figures the README quotes, from this checkout, and say where and how.

    python benchmarks/readme_figures.py              # everything (the test suite takes minutes)
    python benchmarks/readme_figures.py --only engine,cli,api,flood
    python benchmarks/readme_figures.py --dry-run    # print the machine and the commands only
    make figures                                     # the same as the first line

Sections (``--only``): ``tests`` (``python -m pytest -q -p no:cacheprovider``: passed /
skipped counts and wall time, the README's test count), ``engine``
(``benchmarks/bench_engine.py``: one estimate, a sweep, fit), ``cli``
(``benchmarks/bench_cli.py``: cold start), ``api``
(``benchmarks/bench_api.py --workers 2 --concurrency 16 --duration 10``: the README's
throughput command), ``flood`` (``benchmarks/bench_flood.py``: latency under a
flood, memory, 5xx). Every section prints the exact command it ran. The header states the
machine: CPU count and model, Python, OS, the load average (other jobs on a shared machine
slow every figure) and the git commit. Each section's output is printed as the benchmark
wrote it, so the README can quote it verbatim.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

SECTIONS: dict[str, list[str]] = {
    "tests": [PY, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"],
    "engine": [PY, "benchmarks/bench_engine.py"],
    "cli": [PY, "benchmarks/bench_cli.py"],
    "api": [
        PY,
        "benchmarks/bench_api.py",
        "--workers",
        "2",
        "--concurrency",
        "16",
        "--duration",
        "10",
    ],
    "flood": [PY, "benchmarks/bench_flood.py", "--duration", "10", "--expensive", "8"],
}
TIME_LIMIT_S = {"tests": 3600, "engine": 300, "cli": 300, "api": 300, "flood": 300}
_SUMMARY = re.compile(r"^=*\s*(\d+ passed.*?)(?: in ([\d.]+)s.*)?\s*=*$")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One paragraph that says where the figures come from."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    load_text = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else "n/a"
    return (
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}\n"
        f"load average (1/5/15 min) at start: {load_text}\n"
        f"checkout: {ROOT.name} at {commit or 'unknown commit'}"
    )


def _cmd(args: list[str]) -> str:
    return " ".join(shlex.quote(a if a != PY else "python") for a in args)


def pytest_summary(output: str) -> tuple[str, float | None]:
    """The 'N passed, M skipped' part of pytest's last line and its time, if found."""
    for line in reversed(output.strip().splitlines()):
        m = _SUMMARY.match(line.strip())
        if m:
            return m.group(1).strip(" ="), float(m.group(2)) if m.group(2) else None
    return "no pytest summary found", None


def run_section(name: str) -> int:
    """Run one section, print its command, output and wall time; return its exit code."""
    args = SECTIONS[name]
    print(f"\n## {name}\n$ {_cmd(args)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            args,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S[name],
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"stopped after {TIME_LIMIT_S[name]} s")
        return 124
    wall = time.perf_counter() - t0
    if name == "tests":
        summary, took = pytest_summary(done.stdout)
        print(f"pytest: {summary}; pytest's time {took} s; wall {wall:.1f} s")
        for line in done.stdout.splitlines():  # -rs: every skip with its reason
            if line.startswith("SKIPPED"):
                print(line)
        if done.returncode:
            print(done.stdout[-3000:])
    else:
        print(done.stdout.rstrip())
        if done.returncode:
            print(done.stderr[-3000:])
        print(f"(wall {wall:.1f} s)")
    return done.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    ap.add_argument("--dry-run", action="store_true", help="print the machine and commands")
    args = ap.parse_args()
    names = list(SECTIONS) if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; accepted: {', '.join(SECTIONS)}")
    print(machine())
    if args.dry_run:
        for name in names:
            print(f"{name}: {_cmd(SECTIONS[name])}")
        return 0
    worst = 0
    for name in names:
        worst = max(worst, run_section(name))
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
