"""``vramcalc calibrate``: fit the GPU-side constants per GPU family from CUDA measurements.

Reads ``validation/measurements/*.jsonl`` (``validation.records.Measurement`` lines), keeps
the CUDA-backend records without an error, groups them by GPU family (the GPU catalog's
``family`` of the fingerprint's device name, e.g. ``NVIDIA H200`` -> ``hopper``), and fits:

- ``cuda_context_bytes``: the median measured context (NVML ``used`` after CUDA init and a
  one-element allocation, minus before, minus what the allocator reserved);
- ``allocator_reserve_factor``: the median of ``max_memory_reserved / max_memory_allocated``.

The device peak of a case is then predicted as ``allocated x factor + context``. Each family's
``loo_error_pct`` is the median absolute leave-one-out error of that prediction: the constants
are fitted on the other n-1 cases and judged on the held-out one, using its *measured*
allocated peak (this isolates the GPU-side constants from the engine's allocated estimate).
Cases with paged optimizers (bitsandbytes unified memory, visible to NVML but not to the
allocator) and cases without a device figure are fitted but not judged.

``--write`` merges the fit into ``vramcalc/data/calibration.json`` (other top-level keys and
other families are kept).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validation.records import Measurement

__all__ = [
    "FamilyFit",
    "calibrate_main",
    "family_of",
    "fit_family",
    "load_cuda_measurements",
    "loo_errors",
]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO / "validation" / "measurements"
DEFAULT_OUT = REPO / "vramcalc" / "data" / "calibration.json"
SCHEMA = 1
MIB = 2**20


@dataclass(frozen=True)
class FamilyFit:
    """The fitted constants of one GPU family."""

    family: str
    cuda_context_bytes: int | None
    allocator_reserve_factor: float | None
    n_measurements: int
    loo_error_pct: float | None
    fitted_on: tuple[str, ...]
    loo: dict[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] = ()

    def row(self, source: str) -> dict[str, Any]:
        """Return the family's row of ``calibration.json``."""
        return {
            "cuda_context_bytes": self.cuda_context_bytes,
            "allocator_reserve_factor": self.allocator_reserve_factor,
            "n_measurements": self.n_measurements,
            "loo_error_pct": self.loo_error_pct,
            "fitted_on": list(self.fitted_on),
            "devices": list(self.devices),
            "source": source,
        }


def load_cuda_measurements(directory: Path) -> tuple[list[Measurement], list[str]]:
    """Return the CUDA-backend measurements without an error, and the files they came from."""
    out: list[Measurement] = []
    files: list[str] = []
    for path in sorted(directory.glob("*.jsonl")):
        found = False
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            m = Measurement.model_validate_json(line)
            if m.fingerprint.backend != "cuda" or m.error or m.measured.allocated_bytes <= 0:
                continue
            out.append(m)
            found = True
        if found:
            files.append(path.name)
    return out, files


def family_of(device: str) -> str:
    """Return the GPU catalog family of a device name (``NVIDIA H200`` -> ``hopper``).

    Devices missing from the catalog form a family of their own, named after the device.
    """
    from vramcalc import catalog
    from vramcalc.errors import UnknownNameError

    try:
        return catalog.gpu(device).family
    except UnknownNameError:
        return "device:" + "-".join(device.lower().split())


def _ratio(m: Measurement) -> float | None:
    r = m.measured.reserved_bytes
    return None if r is None else r / m.measured.allocated_bytes


def _beyond_reserved(m: Measurement) -> int | None:
    """NVML-visible bytes beyond ``max_memory_reserved`` during the step (the schema's context).

    This is larger than the context measured right after ``torch.cuda.init()``
    (``measured.context_bytes``): the cuBLAS/cuBLASLt handles and the kernel images loaded
    lazily at the first matmul of the step are device memory outside the allocator too
    (on the H200 of ``cuda-h200-2026-11-30.jsonl``: 616 MiB after init, ~1366 MiB during a
    training step). Paged optimizer states (unified memory) are excluded.
    """
    got = m.measured
    if got.device_bytes is None or got.reserved_bytes is None or not _judged(m):
        return None
    return got.device_bytes - got.reserved_bytes


def _constants(ms: Sequence[Measurement]) -> tuple[int | None, float | None]:
    contexts = [c for c in (_beyond_reserved(m) for m in ms) if c is not None]
    if not contexts:  # records without NVML figures: the context measured after init
        contexts = [m.measured.context_bytes for m in ms if m.measured.context_bytes is not None]
    ratios = [r for r in (_ratio(m) for m in ms) if r is not None]
    ctx = round(statistics.median(contexts)) if contexts else None
    factor = statistics.median(ratios) if ratios else None
    return ctx, factor


def _judged(m: Measurement) -> bool:
    paged = m.scenario.request.optim.startswith("paged_")
    return m.measured.device_bytes is not None and not paged


def loo_errors(ms: Sequence[Measurement]) -> dict[str, float]:
    """Leave-one-out error (percent) of the device-peak prediction, per judged case id."""
    out: dict[str, float] = {}
    for i, m in enumerate(ms):
        if not _judged(m):
            continue
        ctx, factor = _constants([o for j, o in enumerate(ms) if j != i])
        device = m.measured.device_bytes
        if ctx is None or factor is None or not device:
            continue
        predicted = m.measured.allocated_bytes * factor + ctx
        out[m.scenario.id] = 100.0 * (predicted - device) / device
    return out


def fit_family(family: str, ms: Sequence[Measurement]) -> FamilyFit:
    """Fit one family's constants and their leave-one-out error."""
    ctx, factor = _constants(ms)
    loo = loo_errors(ms) if len(ms) >= 2 else {}
    loo_pct = round(statistics.median(abs(e) for e in loo.values()), 2) if loo else None
    return FamilyFit(
        family=family,
        cuda_context_bytes=ctx,
        allocator_reserve_factor=None if factor is None else round(factor, 4),
        n_measurements=len(ms),
        loo_error_pct=loo_pct,
        fitted_on=tuple(m.scenario.id for m in ms),
        loo=loo,
        devices=tuple(sorted({m.fingerprint.device for m in ms})),
    )


def _print_fit(fit: FamilyFit) -> None:
    ctx = "n/a" if fit.cuda_context_bytes is None else f"{fit.cuda_context_bytes / MIB:.1f} MiB"
    fac = "n/a" if fit.allocator_reserve_factor is None else f"{fit.allocator_reserve_factor:.4f}"
    loo = "n/a (needs 2 cases)" if fit.loo_error_pct is None else f"{fit.loo_error_pct:.2f} %"
    print(f"{fit.family} ({', '.join(fit.devices)}): {fit.n_measurements} measurements")
    print(f"  cuda_context_bytes        {ctx}")
    print(f"  allocator_reserve_factor  {fac}")
    print(f"  leave-one-out device error (median |error|): {loo}")
    for sid, e in sorted(fit.loo.items(), key=lambda kv: -abs(kv[1])):
        print(f"    {sid:<60} {e:+7.2f} %")


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    """``vramcalc calibrate [--measurements DIR] [--write] [--out FILE]``; returns an exit code."""
    ap = argparse.ArgumentParser(prog="vramcalc calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--measurements", type=Path, default=DEFAULT_DIR, metavar="DIR",
                    help="folder of *.jsonl measurement files (default: %(default)s)")  # fmt: skip
    ap.add_argument("--write", action="store_true", help="merge the fit into --out")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="FILE",
                    help="calibration file to update (default: %(default)s)")  # fmt: skip
    args = ap.parse_args(list(argv) if argv is not None else None)
    directory: Path = args.measurements
    if not directory.is_dir():
        print(f"error: no measurement folder at {directory}")
        return 2
    ms, files = load_cuda_measurements(directory)
    if not ms:
        print(f"no CUDA measurements in {directory}; nothing to fit")
        return 0
    groups: dict[str, list[Measurement]] = {}
    for m in ms:
        groups.setdefault(family_of(m.fingerprint.device), []).append(m)
    fits = [fit_family(fam, groups[fam]) for fam in sorted(groups)]
    for fit in fits:
        _print_fit(fit)
    if not args.write:
        print("(dry run: pass --write to update the calibration file)")
        return 0
    out: Path = args.out
    data: dict[str, Any] = json.loads(out.read_text("utf-8")) if out.exists() else {}
    today = _dt.datetime.now(_dt.UTC).date().isoformat()
    source = f"vramcalc calibrate on validation/measurements/{{{','.join(files)}}} ({today})"
    data["source"] = source
    data.setdefault("schema", SCHEMA)
    families: dict[str, Any] = dict(data.get("families") or {})
    for fit in fits:
        families[fit.family] = fit.row(source)
    data["families"] = families
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(calibrate_main())
