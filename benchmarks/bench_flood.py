"""Flood test of the service on loopback: cheap requests stay fast while costly ones pile up.

Starts ``api.serve.serve`` in a subprocess on a free 127.0.0.1 port (loopback only), measures
``GET /healthz`` and a catalog estimate alone, then for ``--duration`` seconds floods it with:

- ``--expensive`` clients, each posting the costliest request the API's own limits allow
  (``/v1/fit``, an inline config with ``max_layers`` = 1024 layers, width 64, on the largest
  GPU of the catalog, so the batch search runs long) back to back, retrying a 503 after
  ``--retry-pause`` seconds;
- ``--half-open`` connections (at most 2000) that never finish their request: a third send
  nothing, a third half a request line and headers, a third full headers and half a body;
- two probe clients, one ``GET /healthz`` and one catalog ``POST /v1/estimate`` every
  ``--probe-interval`` seconds, each on its own keep-alive connection.

It reports p50/p99 of the probes alone and during the flood (target: p99 under 50 ms), the
server's resident memory (the uvicorn process plus its engine workers) before, at the peak and
after, every status code seen, the 5xx other than the intended 503 (busy) answers, and how
long the server took to close the half-open connections. Everything is bounded: the flood
stops after ``--duration`` seconds and the script closes what is left.

    python benchmarks/bench_flood.py [--duration 10] [--expensive 8] [--half-open 500]

``run_flood()`` is what ``tests/api/test_flood.py`` calls with a small budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHEAP_BODY = {"model": "llama-2-7b", "batch_size": 4, "seq_len": 1024, "lora": {"r": 16}}
MAX_HALF_OPEN = 2000


def expensive_body(max_layers: int = 1024, gpu: str = "mi300x") -> dict[str, Any]:
    """The costliest fit within the API's limits: many layers, narrow, a large GPU."""
    return {
        "model": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
            "num_hidden_layers": max_layers,
            "vocab_size": 1000,
            "max_position_embeddings": 4096,
        },
        "seq_len": 128,
        "gpu": gpu,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def start_server(env: dict[str, str] | None = None, workers: int = 1) -> tuple[Any, str]:
    """``api.serve.serve`` on a free loopback port, with ``VRAMCALC_API_*`` from ``env``."""
    port = free_port()
    full_env = {
        **os.environ,
        "VRAMCALC_API_LOG_LEVEL": "warning",
        "VRAMCALC_API_ACCESS_LOG": "false",
        **(env or {}),
    }
    code = f"from api.serve import serve; serve({HOST!r}, {port}, {workers})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    err = proc.stderr.read().decode()[-2000:] if proc.poll() is not None and proc.stderr else ""
    proc.kill()
    raise RuntimeError(f"server did not start: {err}")


def stop_server(proc: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr:
        proc.stderr.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        for child in text.split():
            out.append(int(child))
            out += _children(int(child))
    return out


def tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of a process and its descendants (Linux /proc), or None."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total or None


# ----------------------------------------------------------------------------- HTTP client


def _request(method: str, path: str, body: dict[str, Any] | None) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


class _Conn:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closed it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, request: bytes) -> tuple[int, dict[str, str]]:
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(request)
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt:
                    raise
                continue
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            await self.reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return status, headers
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


@dataclass
class FloodResult:
    """What ``run_flood`` measured (latencies in ms, memory in bytes, times in s)."""

    baseline_healthz_ms: list[float] = field(default_factory=list)
    baseline_estimate_ms: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    estimate_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    probe_statuses: Counter[int] = field(default_factory=Counter)
    retry_after_missing: int = 0
    client_errors: list[str] = field(default_factory=list)
    expensive_done: int = 0
    half_open: int = 0
    half_open_closed: list[float] = field(default_factory=list)
    rss_before: int | None = None
    rss_peak: int | None = None
    rss_after: int | None = None
    duration_s: float = 0.0

    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None

    @property
    def unexpected_5xx(self) -> int:
        """5xx answers other than 503 (busy) and 504 (time budget), probes included."""
        both = self.statuses + self.probe_statuses
        return sum(n for code, n in both.items() if code >= 500 and code not in (503, 504))


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def _probe(
    port: int, request: bytes, out: list[float], statuses: Counter[int], stop: float, every: float
) -> None:
    conn = _Conn(port)
    try:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = await conn.call(request)
            out.append((time.perf_counter() - t0) * 1000)
            statuses[status] += 1
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - t0)))
    finally:
        await conn.close()


async def _expensive(
    port: int, request: bytes, res: FloodResult, stop: float, pause: float
) -> None:
    conn = _Conn(port)
    try:
        while time.monotonic() < stop:
            try:
                status, headers = await conn.call(request)
            except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
                res.client_errors.append(type(exc).__name__)
                await asyncio.sleep(pause)
                continue
            res.statuses[status] += 1
            if status == 503:
                if "retry-after" not in headers:
                    res.retry_after_missing += 1
                await asyncio.sleep(pause)
            else:
                res.expensive_done += 1
    finally:
        await conn.close()


async def _open_half(
    port: int, i: int, res: FloodResult
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float] | None:
    """Open a connection and send part of a request (or nothing)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        res.client_errors.append(f"half-open connect: {type(exc).__name__}")
        return None
    res.half_open += 1
    kind = i % 3
    if kind == 1:
        writer.write(b"POST /v1/fit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
    elif kind == 2:
        writer.write(
            b"POST /v1/fit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "gpt2", '
        )
    return reader, writer, time.monotonic()


async def _wait_closed(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, float], res: FloodResult, stop: float
) -> None:
    """Wait for the server to close a half-open connection (its 408, then EOF)."""
    reader, writer, t0 = conn
    try:
        async with asyncio.timeout(max(0.0, stop - time.monotonic())):
            while await reader.read(4096):
                pass
        res.half_open_closed.append(time.monotonic() - t0)
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _sample_rss(pid: int, res: FloodResult, stop: float) -> None:
    while time.monotonic() < stop:
        rss = tree_rss_bytes(pid)
        if rss is not None:
            res.rss_peak = max(res.rss_peak or 0, rss)
        await asyncio.sleep(0.25)


async def _flood(
    port: int,
    pid: int | None,
    *,
    duration: float,
    expensive: int,
    half_open: int,
    probe_interval: float,
    retry_pause: float,
    baseline_n: int,
    max_layers: int,
    close_wait: float,
) -> FloodResult:
    res = FloodResult()
    health = _request("GET", "/healthz", None)
    cheap = _request("POST", "/v1/estimate", CHEAP_BODY)
    costly = _request("POST", "/v1/fit", expensive_body(max_layers))
    # warm-up, then the probes alone
    conn = _Conn(port)
    for req in (health, cheap, cheap):
        await conn.call(req)
    for _ in range(baseline_n):
        for req, out in ((health, res.baseline_healthz_ms), (cheap, res.baseline_estimate_ms)):
            t0 = time.perf_counter()
            await conn.call(req)
            out.append((time.perf_counter() - t0) * 1000)
    await conn.close()
    if pid is not None:
        res.rss_before = tree_rss_bytes(pid)
    res.load_before = os.getloadavg()
    # the half-open connections first: opening hundreds of them keeps this client busy for a
    # moment, which would show up in the probes' latencies as if it were the server's
    opened = await asyncio.gather(*(_open_half(port, i, res) for i in range(half_open)))
    t0 = time.monotonic()
    stop = t0 + duration
    tasks = [
        _probe(port, health, res.healthz_ms, res.probe_statuses, stop, probe_interval),
        _probe(port, cheap, res.estimate_ms, res.probe_statuses, stop, probe_interval),
        *(_expensive(port, costly, res, stop, retry_pause) for _ in range(expensive)),
        *(_wait_closed(c, res, stop + close_wait) for c in opened if c is not None),
    ]
    if pid is not None:
        tasks.append(_sample_rss(pid, res, stop + close_wait))
    await asyncio.gather(*tasks)
    res.duration_s = time.monotonic() - t0
    res.load_after = os.getloadavg()
    if pid is not None:
        await asyncio.sleep(0.5)
        res.rss_after = tree_rss_bytes(pid)
    return res


def run_flood(
    url: str | None = None,
    pid: int | None = None,
    *,
    duration: float = 10.0,
    expensive: int = 8,
    half_open: int = 500,
    probe_interval: float = 0.02,
    retry_pause: float = 0.01,
    baseline_n: int = 100,
    max_layers: int = 1024,
    close_wait: float = 8.0,
) -> FloodResult:
    """Flood a server on loopback (``url``; its process id ``pid`` for memory figures).

    ``close_wait``: how long after the flood the half-open connections may take to be closed
    by the server before the script closes them itself.
    """
    assert url is not None
    port = int(url.rsplit(":", 1)[1])
    if not url.startswith(f"http://{HOST}:"):
        raise SystemExit("bench_flood only targets 127.0.0.1")
    return asyncio.run(
        _flood(
            port,
            pid,
            duration=duration,
            expensive=expensive,
            half_open=min(half_open, MAX_HALF_OPEN),
            probe_interval=probe_interval,
            retry_pause=retry_pause,
            baseline_n=baseline_n,
            max_layers=max_layers,
            close_wait=close_wait,
        )
    )


def _load(x: tuple[float, float, float] | None) -> str:
    return "n/a" if x is None else f"{x[0]:.2f}"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def report(res: FloodResult, args: argparse.Namespace) -> str:
    """The printed summary (README quotes it)."""

    def line(name: str, xs: list[float]) -> str:
        if not xs:
            return f"  {name:34s} no samples"
        return (
            f"  {name:34s} n={len(xs):5d}  p50 {statistics.median(xs):7.2f} ms  "
            f"p99 {pct(xs, 99):7.2f} ms  max {max(xs):7.2f} ms"
        )

    closed = res.half_open_closed
    cpu = "unknown"
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = [
        f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        "command: python benchmarks/bench_flood.py "
        f"--duration {args.duration:g} --expensive {args.expensive} "
        f"--half-open {args.half_open} --workers {args.workers}",
        f"server: uvicorn workers={args.workers}, settings defaults (VRAMCALC_API_*), "
        "access log off",
        f"flood: {res.duration_s:.1f} s, {args.expensive} clients posting the 1024-layer /v1/fit "
        f"(retry 503 after {args.retry_pause * 1000:g} ms), {res.half_open} half-open "
        "connections, probes every "
        f"{args.probe_interval * 1000:g} ms",
        f"load average (1 min) before/after the flood: {_load(res.load_before)} / "
        f"{_load(res.load_after)} (other jobs on the machine count too)",
        "latency alone:",
        line("GET /healthz", res.baseline_healthz_ms),
        line("POST /v1/estimate (llama-2-7b)", res.baseline_estimate_ms),
        "latency during the flood:",
        line("GET /healthz", res.healthz_ms),
        line("POST /v1/estimate (llama-2-7b)", res.estimate_ms),
        f"costly fits answered: {res.expensive_done}; statuses of the costly requests: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(res.statuses.items())),
        f"probe statuses: {dict(sorted(res.probe_statuses.items()))}",
        f"5xx other than 503 (busy) and 504 (budget): {res.unexpected_5xx}; "
        f"504: {res.statuses[504]}; 503 without Retry-After: "
        f"{res.retry_after_missing}; client-side connection errors: {len(res.client_errors)}",
        f"half-open connections closed by the server: {len(closed)} of {res.half_open}"
        + (
            f" (median {statistics.median(closed):.1f} s, max {max(closed):.1f} s after opening)"
            if closed
            else ""
        ),
        f"server RSS (uvicorn + engine workers): before {_mib(res.rss_before)}, "
        f"peak {_mib(res.rss_peak)}, after {_mib(res.rss_after)}",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="flood seconds")
    ap.add_argument("--expensive", type=int, default=8, help="clients posting the costly fit")
    ap.add_argument("--half-open", type=int, default=500, help=f"at most {MAX_HALF_OPEN}")
    ap.add_argument("--probe-interval", type=float, default=0.02)
    ap.add_argument("--retry-pause", type=float, default=0.01)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    proc, url = start_server(workers=args.workers)
    try:
        res = run_flood(
            url,
            proc.pid,
            duration=args.duration,
            expensive=args.expensive,
            half_open=args.half_open,
            probe_interval=args.probe_interval,
            retry_pause=args.retry_pause,
        )
    finally:
        stop_server(proc)
    print(report(res, args))
    if args.json:
        print(
            json.dumps(
                {
                    "healthz_p99_ms": pct(res.healthz_ms, 99),
                    "estimate_p99_ms": pct(res.estimate_ms, 99),
                    "unexpected_5xx": res.unexpected_5xx,
                    "rss_before": res.rss_before,
                    "rss_after": res.rss_after,
                    "half_open_closed": len(res.half_open_closed),
                }
            )
        )


if __name__ == "__main__":
    main()
