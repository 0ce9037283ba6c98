"""Fixtures of the API tests: an app with a stub engine, and a real server on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.deps import get_engine
from api.settings import Settings
from vramcalc.enums import Phase
from vramcalc.report import (
    Breakdown,
    FitReport,
    MemoryReport,
    ModelSummary,
    Peak,
    TimelineEvent,
)
from vramcalc.specs import EstimateRequest

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


class StubEngine:
    """Answers with a fixed, hand-made report and records the requests it saw.

    It lets the HTTP layer (routing, validation, error mapping, serialization) be tested
    independently of the engine's numbers.
    """

    def __init__(self) -> None:
        self.seen: list[EstimateRequest] = []

    def report(self, request: EstimateRequest) -> MemoryReport:
        name = request.model if isinstance(request.model, str) else "inline"
        events = [
            TimelineEvent(
                step=1,
                phase=Phase.LOAD,
                event="weights loaded",
                allocated_bytes=100 * MIB,
                components={"params": 100 * MIB},
            ),
            TimelineEvent(
                step=1,
                phase=Phase.FORWARD,
                event="forward end",
                allocated_bytes=300 * MIB,
                components={"params": 100 * MIB, "activations": 200 * MIB},
            ),
            TimelineEvent(
                step=2,
                phase=Phase.OPTIMIZER,
                event="optimizer step",
                allocated_bytes=500 * MIB,
                components={"params": 100 * MIB, "gradients": 100 * MIB, "optimizer": 300 * MIB},
            ),
        ]
        return MemoryReport(
            version="stub",
            model=ModelSummary(name=name, model_type="gpt2", n_params=10, n_trainable_params=10),
            peak=Peak(
                allocated_bytes=500 * MIB,
                reserved_bytes=520 * MIB,
                device_bytes=1020 * MIB,
                phase=Phase.OPTIMIZER,
                event="optimizer step",
                step=2,
            ),
            breakdown=Breakdown(
                base=500 * MIB,
                params=100 * MIB,
                activations=20 * MIB,
                gradients=100 * MIB,
                optimizer=300 * MIB,
            ),
            details={"params/weights": 100 * MIB},
            timeline=events,
            cpu_bytes=0,
        )

    def estimate(self, request: EstimateRequest) -> MemoryReport:
        self.seen.append(request)
        return self.report(request)

    def fit(self, request: EstimateRequest) -> FitReport:
        self.seen.append(request)
        return FitReport(
            gpu=request.gpu or "",
            gpu_memory_bytes=16 * 2**30,
            usable_bytes=15 * 2**30,
            fits=True,
            headroom_bytes=14 * 2**30,
            max_batch_size=8,
        )


@pytest.fixture
def stub_engine() -> StubEngine:
    return StubEngine()


@pytest.fixture
def stub_client(stub_engine: StubEngine) -> Iterator[TestClient]:
    app = create_app(Settings(access_log=True))
    app.dependency_overrides[get_engine] = lambda: stub_engine
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="session")
def app_client() -> Iterator[TestClient]:
    """The real app (real engine), in-process."""
    with TestClient(create_app(Settings()), raise_server_exceptions=False) as client:
        yield client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def live_server() -> Iterator[str]:
    """``api.serve.serve`` in a subprocess on a loopback port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "VRAMCALC_API_LOG_LEVEL": "warning"}
    code = f"from api.serve import serve; serve('127.0.0.1', {port}, 1)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"server did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
