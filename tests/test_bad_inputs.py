"""Every case of the bad-input catalogue through the CLI, the Python API and REST (issue 13).

Each entry point must refuse the input with the same message core (``Case.needles``): the CLI
with exit status 2 and one line on stderr (never a traceback), the Python API with a
``VramcalcError`` or pydantic ``ValidationError``, REST with a 4xx JSON answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import vramcalc
from api.app import create_app
from api.settings import Settings
from tests.bad_inputs import CASES, Case
from vramcalc import cli
from vramcalc.errors import VramcalcError

ROOT = Path(__file__).resolve().parents[1]
BY_ID = {c.id: c for c in CASES}


def test_catalogue_size_and_ids() -> None:
    assert len(CASES) >= 60
    assert len(BY_ID) == len(CASES), "duplicate case ids"
    for case in CASES:
        channels = [case.argv is not None, case.request is not None, case.rest is not None]
        assert any(channels), case.id
        if not all(channels):
            assert case.why, f"{case.id}: say why a channel is left out"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad_inputs")
    for case in CASES:
        for name, text in case.files.items():
            (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(access_log=False)), raise_server_exceptions=False) as c:
        yield c


def _subst(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _subst(v, tmp) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_subst(v, tmp) for v in value)
    return value


def _ids(channel: str) -> list[Any]:
    attr = {"cli": "argv", "python": "request", "rest": "rest"}[channel]
    return [pytest.param(c, id=c.id) for c in CASES if getattr(c, attr) is not None]


@pytest.mark.parametrize("case", _ids("cli"))
def test_cli(case: Case, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert case.argv is not None
    code = cli.run(list(_subst(case.argv, tmp)))
    out, err = capsys.readouterr()
    assert code == 2, (out[-300:], err)
    assert out == ""
    assert err.startswith("vramcalc: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in case.cli_needles or case.needles:
        assert needle in err, (needle, err)


@pytest.mark.parametrize("case", _ids("python"))
def test_python_api(case: Case, tmp: Path) -> None:
    request = _subst(case.request, tmp)
    with pytest.raises((VramcalcError, ValidationError)) as info:
        if case.fit:
            vramcalc.fit(request, target_global_batch=case.global_batch)
        else:
            vramcalc.estimate(request)
    text = str(info.value)
    for needle in case.needles if case.py_needles is None else case.py_needles:
        assert needle in text, (needle, text)


@pytest.mark.parametrize(
    "case_id",
    ["layers_1e9", "config_deep_100k", "ds_infinity", "ds_stage2_vs_zero3_offload",
     "gpu_empty", "name_5000_chars", "experts_per_tok_100_of_8", "accelerate_nan"],
)  # fmt: skip
def test_python_resolve(case_id: str, tmp: Path) -> None:
    """``vramcalc.resolve`` (not only estimate/fit) passes through the same checks."""
    case = BY_ID[case_id]
    with pytest.raises(VramcalcError) as info:
        vramcalc.resolve(_subst(case.request, tmp))
    for needle in case.needles:
        assert needle in str(info.value)


def _detail(body: Any) -> str:
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        return " | ".join(
            f"{'.'.join(str(p) for p in i.get('loc', []))}: {i.get('msg', '')}"
            for i in detail
            if isinstance(i, dict)
        )
    return str(detail)


@pytest.mark.parametrize("case", _ids("rest"))
def test_rest(case: Case, tmp: Path, client: TestClient) -> None:
    body = _subst(case.rest, tmp)
    content = body if isinstance(body, str) else json.dumps(body)
    path = "/v1/fit" if case.fit else "/v1/estimate"
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    text = _detail(r.json())
    assert "please report it" not in text, text
    for needle in case.needles if case.rest_needles is None else case.rest_needles:
        assert needle in text, (needle, text[:500])


@pytest.mark.parametrize(
    "case_id", ["layers_1e9", "config_deep_100k", "ds_infinity", "name_300_chars", "mfu_5e-324"]
)
def test_cli_process(case_id: str, tmp: Path) -> None:
    """The installed entry point: a real process, exit status 2, one stderr line."""
    case = BY_ID[case_id]
    assert case.argv is not None
    proc = subprocess.run(
        [sys.executable, "-m", "vramcalc", *_subst(case.argv, tmp)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "80"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-500:]
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    for needle in case.cli_needles or case.needles:
        assert needle in proc.stderr
