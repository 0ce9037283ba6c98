"""The only module that reads ``vramcalc/data/*.json``. Files are read on first use and cached.

Every data row carries a ``source``. Lookups raise ``UnknownNameError`` (with the closest
match) for names that are not in a catalog.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from vramcalc.errors import UnknownNameError
from vramcalc.specs import GpuSpec

__all__ = [
    "architecture",
    "architecture_types",
    "calibration",
    "constant",
    "dtype_bits",
    "framework_row",
    "gpu",
    "gpus",
    "load",
    "model_row",
    "model_rows",
    "optimizer",
    "optimizer_names",
]


# the package's data folder, read as plain files: ``importlib.resources`` would also import
# ``zipfile`` and its readers (~2 % of a cold ``vramcalc MODEL``) for an installed package that
# is never a zip (a wheel installs as files; benchmarks/bench_cold.py)
DATA_DIR = Path(__file__).with_name("data")


@cache
def load(name: str) -> Any:
    """Parse ``vramcalc/data/<name>.json`` once."""
    return json.loads((DATA_DIR / f"{name}.json").read_text("utf-8"))


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-")


# ---------------------------------------------------------------- constants and dtypes


def constant(key: str) -> int | float:
    """Return a named constant from ``data/constants.json`` (each has ``value`` and ``source``)."""
    table: dict[str, dict[str, Any]] = load("constants")["constants"]
    if key not in table:
        raise KeyError(f"constant '{key}' missing from data/constants.json")
    value: int | float = table[key]["value"]
    return value


def dtype_bits(dtype: str) -> int:
    """Storage width in bits of a dtype name (``fp32``, ``bf16``, ``int8``, ``nf4``...)."""
    table: dict[str, dict[str, Any]] = load("dtypes")["dtypes"]
    if dtype not in table:
        raise UnknownNameError("dtype", dtype, table)
    bits: int = table[dtype]["bits"]
    return bits


# ---------------------------------------------------------------- frameworks


def framework_row(name: str) -> dict[str, Any]:
    """Return a framework profile's data row (``data/frameworks.json``)."""
    table: dict[str, dict[str, Any]] = load("frameworks")["frameworks"]
    if name not in table:
        raise UnknownNameError("framework", name, table)
    return table[name]


# ---------------------------------------------------------------- optimizers


def optimizer_names() -> list[str]:
    """Return the accepted ``--optim`` values (transformers ``OptimizerNames`` values)."""
    return sorted(load("optimizers")["optimizers"])


def optimizer(name: str) -> dict[str, Any]:
    """Return the memory description of an optimizer (aliases resolved)."""
    table: dict[str, dict[str, Any]] = load("optimizers")["optimizers"]
    key = name.strip().lower()
    if key not in table:
        raise UnknownNameError("optimizer", name, table)
    row = table[key]
    while "alias_of" in row:
        key = row["alias_of"]
        row = table[key]
    return {"name": key, **row}


# ---------------------------------------------------------------- GPUs


@cache
def gpus() -> tuple[GpuSpec, ...]:
    """All GPUs in the catalog."""
    data = load("gpus")
    return tuple(GpuSpec(**{"as_of": data["as_of"], **row}) for row in data["gpus"])


@cache
def _gpu_index() -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for g in gpus():
        for alias in (g.name, *g.aliases):
            index[_norm(alias)] = g
    return index


def gpu(name: str) -> GpuSpec:
    """Look a GPU up by name or alias (case- and ``_``/``-``-insensitive)."""
    found = _gpu_index().get(_norm(name))
    if found is None:
        raise UnknownNameError("GPU", name, [g.name for g in gpus()])
    return found


# ---------------------------------------------------------------- models


def model_rows() -> list[dict[str, Any]]:
    """Rows of the model catalog: name, aliases, hf_id, source, n_params, config."""
    rows: list[dict[str, Any]] = load("models")["models"]
    return rows


@cache
def _model_index() -> dict[str, dict[str, Any]]:
    index: dict[str, dict[str, Any]] = {}
    for row in model_rows():
        names = [row["name"], *row.get("aliases", [])]
        if row.get("hf_id"):
            names += [row["hf_id"], row["hf_id"].split("/")[-1]]
        for alias in names:
            index.setdefault(_norm(alias), row)
    return index


def model_row(name: str) -> dict[str, Any]:
    """Look a catalog model up by name, alias or HF id."""
    found = _model_index().get(_norm(name))
    if found is None:
        raise UnknownNameError("model", name, [r["name"] for r in model_rows()])
    return found


def architecture_types() -> list[str]:
    """Supported ``model_type`` values (templates in ``data/architectures.json``)."""
    return sorted(k for k in load("architectures") if not k.startswith("_"))


def architecture(model_type: str) -> dict[str, Any]:
    """Return the architecture template of one ``model_type``."""
    table: dict[str, dict[str, Any]] = load("architectures")
    if model_type not in table or model_type.startswith("_"):
        raise UnknownNameError("model_type", model_type, architecture_types())
    return table[model_type]


# ---------------------------------------------------------------- calibration


def calibration() -> dict[str, Any]:
    """Fitted GPU-side constants (written by ``vramcalc calibrate``, reviewed, committed)."""
    data: dict[str, Any] = load("calibration")
    return data
