"""Speed of the Python API: one estimate, a sweep, and fit(). Prints figures; no asserts.

    python benchmarks/bench_engine.py [--runs N]

Targets: one estimate under 1 ms (issue 2); the 405B model on a 3-D layout (16 nodes x 8,
TP 8, PP 4) under 2 ms (issue 8). Each case prints the median and p90 of N timed estimates
after a warm-up, as wall time and as this thread's CPU time (on a shared machine the CPU time
is the steadier figure: other jobs stretch wall time, not the work done), and the load
average when the run started.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

import vramcalc
from vramcalc.specs import EstimateRequest

CASES = {
    "gpt2-medium LoRA r=16, adamw_8bit": EstimateRequest(
        model="gpt2-medium", optim="adamw_8bit", lora={"r": 16}
    ),
    "llama-2-7b QLoRA r=64 all-linear, ckpt, 4096": EstimateRequest(
        model="llama-2-7b",
        dtype="bf16",
        qlora={"r": 64, "targets": "all-linear"},
        grad_ckpt=True,
        seq_len=4096,
    ),
    # Llama-3.1-405B's published config.json (meta-llama/Llama-3.1-405B) on a 3-D layout:
    # 16 nodes x 8 GPUs, TP 8 + SP, PP 4 (1F1B, 16 micro-batches), FSDP2 over the other 4
    "Llama-3.1-405B TP8 PP4 FSDP2 x 128 GPUs": EstimateRequest(
        model={
            "model_type": "llama",
            "hidden_size": 16384,
            "intermediate_size": 53248,
            "num_hidden_layers": 126,
            "num_attention_heads": 128,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
        },
        dtype="bf16",
        seq_len=8192,
        grad_accum=16,
        gpus=8,
        nodes=16,
        tp=8,
        sequence_parallel=True,
        pp=4,
        fsdp="full_shard",
        grad_ckpt=True,
    ),
    "Llama-3.1-70B ZeRO-3 x 64 GPUs": EstimateRequest(
        model="meta-llama/Llama-3.1-70B", zero=3, gpus=8, nodes=8, mixed_precision="bf16"
    ),
}


def one_estimate(req: EstimateRequest, n: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``n`` estimates of ``req`` (after one warm-up), each sorted."""
    vramcalc.estimate(req)
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        vramcalc.estimate(req)
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return sorted(wall), sorted(cpu)


def _p90(xs: list[float]) -> float:
    return xs[min(len(xs) - 1, int(0.9 * len(xs)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="timed estimates per case")
    n = parser.parse_args().runs
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"one estimate through vramcalc.estimate ({n} runs after a warm-up; load average {load}; "
        "targets < 1 ms, 405B 3-D < 2 ms)"
    )
    print(f"  {'':48s} {'wall median':>11s} {'p90':>8s} {'CPU median':>11s} {'p90':>8s}")
    for name, req in CASES.items():
        wall, cpu = one_estimate(req, n)
        print(
            f"  {name:48s} {statistics.median(wall) * 1e3:8.3f} ms {_p90(wall) * 1e3:5.3f} ms"
            f" {statistics.median(cpu) * 1e3:8.3f} ms {_p90(cpu) * 1e3:5.3f} ms"
        )
    grid = list(
        itertools.product(
            [1, 2, 4, 8], [256, 1024, 4096], ["adamw_torch", "adamw_bnb_8bit", "adafactor"]
        )
    )
    t = time.perf_counter()
    for b, s, o in grid:
        vramcalc.estimate(model="mistral-7b", batch_size=b, seq_len=s, optim=o, lora={"r": 16})
    dt = time.perf_counter() - t
    print(f"sweep: {len(grid)} estimates in {dt:.3f} s = {len(grid) / dt:,.0f} estimates/s")
    req = EstimateRequest(model="llama-2-7b", dtype="bf16", lora={"r": 8}, gpu="a10g-24gb")
    t = time.perf_counter()
    report = vramcalc.fit(req)
    print(
        f"fit (llama-2-7b bf16 LoRA on a10g): max batch {report.max_batch_size} "
        f"in {(time.perf_counter() - t) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
