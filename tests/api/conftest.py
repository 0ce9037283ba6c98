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

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # api/ runs from the checkout; it is not an installed package
    sys.path.insert(0, str(ROOT))

from _api_stub import StubEngine  # noqa: E402

from api.app import create_app  # noqa: E402
from api.deps import get_engine  # noqa: E402
from api.settings import Settings  # noqa: E402


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
