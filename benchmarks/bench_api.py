"""Load test of ``POST /v1/estimate`` on loopback: requests/s and p50/p90/p99 latency.

Starts ``api.serve.serve`` in a subprocess on a free 127.0.0.1 port (or uses ``--url`` of a
running server on loopback), warms it up, then drives it with ``--concurrency`` keep-alive
HTTP/1.1 connections for ``--duration`` seconds (bounded: it also stops after
``--max-requests``). The client is a minimal asyncio HTTP/1.1 client so that, on a 2-core
machine, as little CPU as possible goes to the load generator.

Usage: python benchmarks/bench_api.py [--workers 2] [--concurrency 16] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "llama-2-7b", "batch_size": 4, "seq_len": 1024, "lora": {"r": 16}, "gpu": "a10g"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "VRAMCALC_API_ACCESS_LOG": os.environ.get("VRAMCALC_API_ACCESS_LOG", "true"),
    }
    code = f"from api.serve import serve; serve('127.0.0.1', {port}, {workers})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


async def worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(str(status))
    finally:
        writer.close()
        await writer.wait_closed()


async def drive(url: str, concurrency: int, duration: float, max_requests: int) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit("bench_api only targets loopback addresses")
    payload = json.dumps(BODY).encode()
    request = (
        f"POST /v1/estimate HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    # warm-up (imports, caches) with a short bounded run
    await asyncio.gather(
        *(worker(host, port, request, time.perf_counter() + 1.0, [200], [], []) for _ in range(2))
    )
    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    t0 = time.perf_counter()
    stop_at = t0 + duration
    await asyncio.gather(
        *(
            worker(host, port, request, stop_at, budget, latencies, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    return {
        "requests": len(ms),
        "errors": len(errors),
        "seconds": elapsed,
        "rps": len(ms) / elapsed,
        "p50_ms": q[49],
        "p90_ms": q[89],
        "p99_ms": q[98],
        "max_ms": ms[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server on loopback (default: start one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=200_000)
    args = ap.parse_args()
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.workers)
    try:
        stats = asyncio.run(drive(url, args.concurrency, args.duration, args.max_requests))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
    print(f"POST /v1/estimate  body={json.dumps(BODY)}")
    print(
        f"server workers={args.workers if proc else '?'}  client connections={args.concurrency}  "
        f"cores={os.cpu_count()}"
    )
    print(
        f"requests {stats['requests']:.0f} in {stats['seconds']:.1f} s, "
        f"errors {stats['errors']:.0f}"
    )
    print(f"throughput {stats['rps']:.0f} req/s")
    print(
        f"latency p50 {stats['p50_ms']:.2f} ms  p90 {stats['p90_ms']:.2f} ms  "
        f"p99 {stats['p99_ms']:.2f} ms  max {stats['max_ms']:.2f} ms"
    )


if __name__ == "__main__":
    main()
