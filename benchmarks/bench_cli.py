"""CLI cold start: median wall time of 10 fresh processes. Prints figures; no asserts.

    python benchmarks/bench_cli.py

Target (issue 2): under 0.3 s for ``vramcalc gpt2-medium --optim adamw_8bit --lora r=16``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16"],
    ["gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16", "--json"],
    ["--help"],
]


def main() -> None:
    print("CLI cold start (python -m vramcalc), median of 10 process runs; target < 0.3 s")
    for args in COMMANDS:
        times = []
        for _ in range(10):
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "vramcalc", *args],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            times.append(time.perf_counter() - t)
        print(f"  vramcalc {' '.join(args):52s} {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
