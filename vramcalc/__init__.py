"""vramcalc: peak GPU memory, time and cost of LLM fine-tuning and training jobs.

The Python API is the same engine the CLI and the REST service use::

    import vramcalc
    report = vramcalc.estimate(model="gpt2-medium", optim="adamw_8bit", lora={"r": 16})
    report.peak.device_bytes, report.breakdown

Names are imported lazily so that ``import vramcalc`` stays fast and never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CostReport",
    "EstimateRequest",
    "FitReport",
    "InvalidConfigError",
    "MemoryReport",
    "ModelSpec",
    "UnknownNameError",
    "VramcalcError",
    "__version__",
    "estimate",
    "fit",
    "resolve",
]

_LAZY = {
    "estimate": "vramcalc.engine",
    "fit": "vramcalc.engine",
    "resolve": "vramcalc.engine",
    "EstimateRequest": "vramcalc.specs",
    "ModelSpec": "vramcalc.specs",
    "MemoryReport": "vramcalc.report",
    "FitReport": "vramcalc.report",
    "CostReport": "vramcalc.report",
    "VramcalcError": "vramcalc.errors",
    "UnknownNameError": "vramcalc.errors",
    "InvalidConfigError": "vramcalc.errors",
}

if TYPE_CHECKING:
    from vramcalc.engine import estimate, fit, resolve
    from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError
    from vramcalc.report import CostReport, FitReport, MemoryReport
    from vramcalc.specs import EstimateRequest, ModelSpec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vramcalc' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
