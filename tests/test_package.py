"""Packaging promises: a torch-free import and a pinned public API."""

from __future__ import annotations

import json
import subprocess
import sys

import vramcalc

PUBLIC = [
    "CostReport", "EstimateRequest", "FitReport", "InvalidConfigError", "MemoryReport",
    "ModelSpec", "UnknownNameError", "VramcalcError", "__version__", "estimate", "fit", "resolve",
]  # fmt: skip


def test_public_api_is_pinned() -> None:
    assert vramcalc.__all__ == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(vramcalc, name) is not None


def test_estimate_imports_no_torch() -> None:
    code = (
        "import sys, json, vramcalc\n"
        "r = vramcalc.estimate(model='gpt2', lora={'r': 8}, gpu='a100-80gb', tokens=10**6)\n"
        "mods = ('torch', 'transformers', 'peft', 'rich', 'fastapi')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'device': r.peak.device_bytes}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    assert result["device"] > 0
