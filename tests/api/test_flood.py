"""A small flood against the real server on loopback (``benchmarks/bench_flood.py``).

Tight limits make the flood small and quick (about 15 s): one engine worker, one queue
place, 1 s header/body/keep-alive timeouts, 256-layer costly fits. What must hold: no 5xx
but the intended 503 (with ``Retry-After``), ``/healthz`` and a catalog estimate keep
answering 200 within a generous bound while the costly requests are refused or queued, and the
server closes idle and half-open connections by itself.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_flood  # noqa: E402

TIMEOUT_S = 1.0
ENV = {
    "VRAMCALC_API_ENGINE_WORKERS": "1",
    "VRAMCALC_API_MAX_QUEUED": "1",
    "VRAMCALC_API_QUEUE_TIMEOUT_S": "0.5",
    "VRAMCALC_API_HEADER_TIMEOUT_S": str(TIMEOUT_S),
    "VRAMCALC_API_BODY_TIMEOUT_S": str(TIMEOUT_S),
    "VRAMCALC_API_KEEP_ALIVE_TIMEOUT_S": "1",
    "VRAMCALC_API_MAX_LAYERS": "256",
}
# Generous: the suite runs on two shared cores; before the limits, /healthz took 1-3.7 s.
HEALTHZ_P99_BOUND_MS = 1000.0


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Any, str]]:
    proc, url = bench_flood.start_server(ENV)
    try:
        yield proc, url
    finally:
        bench_flood.stop_server(proc)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed_within(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes ``sock`` (its 408 then EOF), or None past ``limit_s``."""
    sock.settimeout(limit_s)
    t0 = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - t0


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # connects and sends nothing
        b"POST /v1/fit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty",  # half the headers
        b"POST /v1/fit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{",  # half a body
    ],
    ids=["idle", "half-headers", "half-body"],
)
def test_half_open_connection_is_closed_by_the_server(
    server: tuple[Any, str], partial: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", _port(server[1]))) as sock:
        if partial:
            sock.sendall(partial)
        took = _closed_within(sock, TIMEOUT_S + 4)
    assert took is not None, "the server kept the connection open"
    assert took < TIMEOUT_S + 2


def test_idle_keep_alive_connection_is_closed(server: tuple[Any, str]) -> None:
    with socket.create_connection(("127.0.0.1", _port(server[1]))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        took = _closed_within(sock, 5)
    assert took is not None and took < 1 + 2


def test_oversized_headers_are_431(server: tuple[Any, str]) -> None:
    with socket.create_connection(("127.0.0.1", _port(server[1]))) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100_000)
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 431")


def test_small_flood(server: tuple[Any, str]) -> None:
    proc, url = server
    res = bench_flood.run_flood(
        url,
        proc.pid,
        duration=4.0,
        expensive=4,
        half_open=30,
        probe_interval=0.02,
        baseline_n=10,
        max_layers=256,
        close_wait=TIMEOUT_S + 3,
    )
    assert res.unexpected_5xx == 0, res.statuses
    assert res.statuses[503] > 0, "4 costly clients on 1 worker + 1 queue place must see 503"
    assert res.retry_after_missing == 0
    assert res.expensive_done > 0
    assert set(res.probe_statuses) == {200}, res.probe_statuses
    assert len(res.healthz_ms) > 20 and len(res.estimate_ms) > 20
    assert bench_flood.pct(res.healthz_ms, 99) < HEALTHZ_P99_BOUND_MS, res.healthz_ms
    assert len(res.half_open_closed) == res.half_open == 30
    assert max(res.half_open_closed) < TIMEOUT_S + 3
    assert not res.client_errors, res.client_errors
