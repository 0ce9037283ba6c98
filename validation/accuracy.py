"""Prediction vs measurement: published peaks, the traced grid, committed CUDA measurements.

``python -m validation.accuracy [--write]`` estimates every case and prints the errors;
``--write`` regenerates ``docs/accuracy.md`` and the block of ``README.md`` between
``<!-- accuracy:begin -->`` and ``<!-- accuracy:end -->`` (printed instead when the markers are
missing). Every figure is computed here from data files: the published reference
(``validation.published``), ``validation/measurements/trace-grid.jsonl`` and any
``validation/measurements/cuda-*.jsonl``.

Comparisons are like for like: a published NVML figure is compared with the report's
``peak.device_bytes``, a ``max_memory_allocated`` figure with ``peak.allocated_bytes``, a
``max_memory_reserved`` one with ``peak.reserved_bytes``. The error is
``(predicted - measured) / measured``. Summary statistics use the high- and medium-confidence
published cases that map to a request; the 90th percentile is the nearest-rank one
(the ceil(0.9 n)-th smallest absolute error).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from validation.compare import error_pct, measured_components, predict
from validation.published import PublishedCase, load_cases, reference_path
from validation.records import Measurement
from vramcalc.errors import VramcalcError
from vramcalc.report import COMPONENTS
from vramcalc.specs import EstimateRequest

__all__ = [
    "GridRow",
    "PublishedRow",
    "Summary",
    "grid_rows",
    "main",
    "nearest_rank",
    "published_rows",
    "summarize",
]

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "validation" / "measurements" / "trace-grid.jsonl"
DIST = REPO / "validation" / "measurements" / "trace-dist.jsonl"
DOC = REPO / "docs" / "accuracy.md"
README = REPO / "README.md"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"
MIB = 2**20
GIB = 2**30


# ----------------------------------------------------------------------------- rows


def _describe(exc: Exception) -> str:
    """Describe an engine failure for the tables: a refusal (bad input) or an engine error."""
    if isinstance(exc, VramcalcError):
        return f"refused: {exc}"
    return f"engine error: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class PublishedRow:
    """One published case with its prediction (``None`` when not expressible or refused)."""

    case: PublishedCase
    predicted_bytes: int | None
    predicted_phase: str | None
    engine_error: str | None = None

    @property
    def error_pct(self) -> float | None:
        """``100 * (predicted - measured) / measured``."""
        return error_pct(self.predicted_bytes, self.case.measured_bytes)

    @property
    def counted(self) -> bool:
        """Whether the row enters the summary (high/medium confidence, predicted)."""
        return self.case.confidence in ("high", "medium") and self.error_pct is not None


@dataclass(frozen=True)
class GridRow:
    """One traced scenario: traced and predicted allocated peak and the peak's phase."""

    id: str
    traced_bytes: int
    predicted_bytes: int | None
    traced_phase: str
    traced_step: int
    predicted_phase: str | None
    predicted_step: int | None
    component_errors: dict[str, float | None]
    engine_error: str | None = None

    @property
    def error_pct(self) -> float | None:
        """``100 * (predicted - traced) / traced``."""
        return error_pct(self.predicted_bytes, self.traced_bytes)

    @property
    def phase_agrees(self) -> bool:
        """Whether the predicted peak falls in the traced peak's phase."""
        return self.predicted_phase == self.traced_phase


@dataclass(frozen=True)
class CudaRow:
    """One committed CUDA measurement against the prediction, for all three peaks."""

    id: str
    device: str
    measured: dict[str, int | None]
    predicted: dict[str, int | None]
    engine_error: str | None = None


def published_rows(cases: Sequence[PublishedCase] | None = None) -> list[PublishedRow]:
    """Estimate every published case (an engine refusal is recorded, not raised)."""
    out: list[PublishedRow] = []
    for case in load_cases() if cases is None else cases:
        if case.request is None:
            out.append(PublishedRow(case, None, None))
            continue
        try:
            report = predict(case.request)
        except Exception as exc:  # recorded per case; one failure must not hide the rest
            out.append(PublishedRow(case, None, None, engine_error=_describe(exc)))
            continue
        kind = case.metric
        value = getattr(report.peak, f"{kind}_bytes")
        out.append(PublishedRow(case, int(value), f"{report.peak.step}/{report.peak.phase}"))
    return out


def load_jsonl(path: Path) -> list[Measurement]:
    """Read a measurements file (one ``Measurement`` per line)."""
    text = path.read_text("utf-8")
    return [Measurement.model_validate_json(x) for x in text.splitlines() if x.strip()]


def grid_row(m: Measurement) -> GridRow:
    """Compare one traced measurement with the engine's estimate of its scenario."""
    got = m.measured
    try:
        report = predict(m.scenario.request, m.scenario.optim_impl, target="trace")
    except Exception as exc:  # recorded per case; one failure must not hide the rest
        return GridRow(m.scenario.id, got.allocated_bytes, None, got.phase, got.step, None,
                       None, {}, engine_error=_describe(exc))  # fmt: skip
    comps = measured_components(got, "trace")
    breakdown = report.breakdown.model_dump()
    cerr = {c: error_pct(breakdown[c], comps[c]) for c in COMPONENTS if c != "base"}
    return GridRow(
        id=m.scenario.id,
        traced_bytes=got.allocated_bytes,
        predicted_bytes=report.peak.allocated_bytes,
        traced_phase=got.phase,
        traced_step=got.step,
        predicted_phase=str(report.peak.phase.value),
        predicted_step=report.peak.step,
        component_errors=cerr,
    )


def grid_rows(path: Path = GRID) -> list[GridRow]:
    """Every traced scenario of ``path`` against the engine."""
    return [grid_row(m) for m in load_jsonl(path) if not m.error]


def _on_device(m: Measurement) -> EstimateRequest:
    """Return the measured request, on the GPU it ran on when the request names none.

    The GPU selects per-family constants (cuBLAS workspace size, calibration), so a case
    measured on an H200 is estimated as ``--gpu h200``. A device missing from the catalog
    leaves the request unchanged.
    """
    from vramcalc import catalog
    from vramcalc.errors import UnknownNameError

    req = m.scenario.request
    if req.gpu is not None or not m.fingerprint.device:
        return req
    try:
        gpu = catalog.gpu(m.fingerprint.device)
    except UnknownNameError:
        return req
    return req.model_copy(update={"gpu": gpu.name})


def cuda_rows(directory: Path = GRID.parent) -> list[CudaRow]:
    """Every committed CUDA measurement (``cuda-*.jsonl``) against the engine."""
    out: list[CudaRow] = []
    for path in sorted(directory.glob("cuda-*.jsonl")):
        for m in load_jsonl(path):
            if m.error or m.fingerprint.backend != "cuda":
                continue
            got = m.measured
            measured = {
                "allocated": got.allocated_bytes,
                "reserved": got.reserved_bytes,
                "device": got.device_bytes,
            }
            try:
                report = predict(_on_device(m), m.scenario.optim_impl)
            except Exception as exc:  # recorded per case; one failure must not hide the rest
                none = dict.fromkeys(measured)
                why = _describe(exc)
                out.append(CudaRow(m.scenario.id, m.fingerprint.device, measured, none, why))
                continue
            predicted: dict[str, int | None] = {
                "allocated": report.peak.allocated_bytes,
                "reserved": report.peak.reserved_bytes,
                "device": report.peak.device_bytes,
            }
            out.append(CudaRow(m.scenario.id, m.fingerprint.device, measured, predicted))
    return out


# ----------------------------------------------------------------------------- statistics


def nearest_rank(values: Sequence[float], q: float) -> float:
    """Return the nearest-rank ``q`` quantile: the ceil(q * n)-th smallest value (1-based)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = max(1, math.ceil(q * len(ordered)))
    return ordered[k - 1]


@dataclass(frozen=True)
class Summary:
    """Median, nearest-rank p90 and maximum of absolute errors, and the worst under-prediction."""

    n: int
    median_abs_pct: float
    p90_abs_pct: float
    max_abs_pct: float
    worst_under_pct: float | None
    worst_under_id: str | None


def summarize(errors: dict[str, float]) -> Summary | None:
    """Summarize signed errors (percent) keyed by case id; ``None`` when there are none."""
    if not errors:
        return None
    absolute = [abs(e) for e in errors.values()]
    under = {k: e for k, e in errors.items() if e < 0}
    worst = min(under, key=lambda k: under[k]) if under else None
    return Summary(
        n=len(errors),
        median_abs_pct=statistics.median(absolute),
        p90_abs_pct=nearest_rank(absolute, 0.9),
        max_abs_pct=max(absolute),
        worst_under_pct=under[worst] if worst else None,
        worst_under_id=worst,
    )


def published_summary(rows: Sequence[PublishedRow]) -> Summary | None:
    """Summary over the high/medium-confidence predicted cases."""
    return summarize(
        {r.case.id: r.error_pct for r in rows if r.counted and r.error_pct is not None}
    )


def coverage(rows: Sequence[PublishedRow]) -> str:
    """Say how many high/medium cases the summary leaves out, and why."""
    hm = [r for r in rows if r.case.confidence in ("high", "medium")]
    unmapped = sum(r.case.request is None for r in hm)
    failed = sum(r.case.request is not None and r.error_pct is None for r in hm)
    return (
        f"{len(hm)} high/medium cases: {len(hm) - unmapped - failed} estimated, "
        f"{unmapped} not expressible as a request, {failed} without an estimate from the engine"
    )


def grid_summary(rows: Sequence[GridRow]) -> Summary | None:
    """Summary over every predicted grid scenario."""
    return summarize({r.id: r.error_pct for r in rows if r.error_pct is not None})


# ----------------------------------------------------------------------------- rendering


def _mib(n: int | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f}"


def _pct(p: float | None) -> str:
    return "—" if p is None else f"{p:+.1f} %"


def _version() -> str:
    import vramcalc

    return vramcalc.__version__


def _summary_line(s: Summary | None, what: str) -> str:
    if s is None:
        return f"{what}: no predictions."
    under = (
        f"worst under-prediction {s.worst_under_pct:+.1f} % ({s.worst_under_id})"
        if s.worst_under_id
        else "no case under-predicted"
    )
    return (
        f"{what}: median absolute error {s.median_abs_pct:.1f} %, 90th percentile "
        f"{s.p90_abs_pct:.1f} %, max {s.max_abs_pct:.1f} % over {s.n} cases; {under}."
    )


def _grid_line(s: Summary | None, rows: Sequence[GridRow]) -> str:
    if s is None:
        return "Traced grid: no predictions."
    agree = sum(r.phase_agrees for r in rows if r.predicted_phase is not None)
    within3 = sum(1 for r in rows if r.error_pct is not None and abs(r.error_pct) <= 3.0)
    return (
        f"Traced grid ({s.n} scenarios, allocated peak vs fake-CUDA trace): median absolute "
        f"error {s.median_abs_pct:.2f} %, 90th percentile {s.p90_abs_pct:.2f} %, max "
        f"{s.max_abs_pct:.2f} %; {within3}/{s.n} within 3 %; peak phase agrees in "
        f"{agree}/{s.n}."
    )


def _grid_table(grid: Sequence[GridRow]) -> list[str]:
    lines = [
        "| id | traced MiB | predicted MiB | error | traced peak | predicted peak | params | "
        "activations | gradients | optimizer |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for g in grid:
        pred_peak = "—" if g.predicted_phase is None else f"{g.predicted_step}/{g.predicted_phase}"
        mark = "" if g.phase_agrees else " ✗"
        ce = g.component_errors
        lines.append(
            f"| {g.id} | {g.traced_bytes / MIB:,.2f} | "
            f"{'—' if g.predicted_bytes is None else f'{g.predicted_bytes / MIB:,.2f}'} | "
            f"{_pct(g.error_pct) if g.engine_error is None else 'no estimate'} | "
            f"{g.traced_step}/{g.traced_phase} | {pred_peak}{mark} | "
            + " | ".join(
                _pct(ce.get(k)) for k in ("params", "activations", "gradients", "optimizer")
            )
            + " |"
        )
    return lines


def _dist_line(rows: Sequence[GridRow]) -> str:
    line = _grid_line(grid_summary(rows), rows)
    return line.replace("Traced grid (", "Traced distributed grid, rank 0 (", 1)


def cuda_line(rows: Sequence[CudaRow]) -> str:
    """One line on the committed real-GPU measurements: allocated and device peak errors."""
    if not rows:
        return "Real GPU: no CUDA measurement committed yet."
    devices = ", ".join(sorted({r.device for r in rows}))
    parts = []
    for metric in ("allocated", "device"):
        errs = {
            r.id: e
            for r in rows
            if (e := error_pct(r.predicted[metric], r.measured[metric])) is not None
        }
        s = summarize(errs)
        if s is None:
            continue
        within = sum(abs(e) <= 3 for e in errs.values())
        parts.append(
            f"{metric} peak median absolute error {s.median_abs_pct:.2f} %, 90th percentile "
            f"{s.p90_abs_pct:.2f} %, max {s.max_abs_pct:.2f} % ({within}/{s.n} within 3 %)"
        )
    return (
        f"Real GPU ({len(rows)} cases on {devices}, `validation/measurements/cuda-*.jsonl`): "
        + "; ".join(parts)
        + ". The device peak uses the per-family constants fitted on these same runs "
        "(`vramcalc calibrate`; its leave-one-out error is in `vramcalc/data/calibration.json`)."
    )


GENERATE_TRACES = REPO / "validation" / "measurements" / "trace-generate.jsonl"


def generate_rows() -> list[tuple[str, int, int, float, str, str]]:
    """Traced ``generate`` peaks vs the estimate: (id, traced, estimated, error %, phases)."""
    if not GENERATE_TRACES.exists():
        return []
    from validation.trace import load_measurements
    from vramcalc.engine import _estimate

    out = []
    for m in load_measurements(GENERATE_TRACES):
        est = _estimate(m.scenario.request, target="trace")
        t = m.measured.allocated_bytes
        err = 100 * (est.peak.allocated_bytes - t) / t
        out.append(
            (m.scenario.id, t, est.peak.allocated_bytes, err, m.measured.phase,
             est.peak.phase.value)
        )  # fmt: skip
    return out


def published_cli_rows(
    cases: Sequence[PublishedCase] | None = None,
) -> list[tuple[PublishedCase, list[str], int]]:
    """Run the published inference cases through the command line.

    Returns (case, ``vramcalc`` arguments, the CLI's ``--json`` peak in the case's metric) for
    every inference case with a request (``published.cli_args``): the figure a user gets by
    typing the command, scored against the published measurement.
    """
    import contextlib
    import io

    from validation.published import cli_args
    from vramcalc import cli

    out = []
    for case in load_cases() if cases is None else cases:
        req = case.request
        if req is None or req.task.value != "inference":
            continue
        args = cli_args(req)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli.run([*args, "--json"])
        if rc != 0:
            raise RuntimeError(f"{case.id}: vramcalc {' '.join(args)} exited {rc}")
        peak = json.loads(buf.getvalue())["peak"]
        out.append((case, args, int(peak[f"{case.metric}_bytes"])))
    return out


def _published_cli_lines() -> list[str]:
    rows = published_cli_rows()
    lines = [
        "**Published generation runs from the CLI.** The reference file's inference rows "
        "(LitGPT's resource tables: `generate/base.py`, 50 new tokens) expressed as "
        "`vramcalc` commands (`validation/published.py` `cli_args`; the approximations are "
        "listed under the published table below) and scored against the published figure:",
        "",
        "| id | command | metric | measured MiB | CLI MiB | error |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for case, args, got in rows:
        err = error_pct(got, case.measured_bytes)
        lines.append(
            f"| {case.id} | `vramcalc {' '.join(args)}` | {case.metric} | "
            f"{_mib(case.measured_bytes)} | {_mib(got)} | {_pct(err)} |"
        )
    if not rows:
        lines.append("| (no inference rows) | | | | | |")
    errs = {c.id: e for c, _, g in rows if (e := error_pct(g, c.measured_bytes)) is not None}
    if errs:
        worst = max(errs, key=lambda k: abs(errs[k]))
        lines += [
            "",
            f"{len(errs)} rows: median absolute error "
            f"{statistics.median(abs(e) for e in errs.values()):.1f} %, worst {worst} "
            f"({errs[worst]:+.1f} %). The same rows, estimated through the Python API, are in "
            "the published table below; the two agree (`tests/validation/test_accuracy.py`).",
        ]
    return [*lines, ""]


def _generate_section() -> list[str]:
    rows = generate_rows()
    lines = [
        "## Inference",
        "",
        "**HF `generate`** (`--task infer`, `--engine hf`) is checked against transformers' own "
        "`generate` (greedy) traced on fake CUDA tensors (`validation/trace.py`, "
        "`validation/measurements/trace-generate.jsonl`), allocated peak and phase:",
        "",
        "| scenario | traced MiB | estimated MiB | error | phase (trace / estimate) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for sid, t, e, err, pt, pe in rows:
        lines.append(
            f"| {sid} | {t / 2**20:,.1f} | {e / 2**20:,.1f} | {err:+.1f} % | {pt} / {pe} |"
        )
    if not rows:
        lines.append("| (no traces committed) | | | | |")
    lines += [
        "",
        "**vLLM** (`--engine vllm`) is not traced: vLLM needs a GPU. Its figures (KV blocks, "
        "largest `max_model_len`, concurrency) follow vLLM's documented start-up profiling "
        "(`v1/worker/gpu_worker.py` `determine_available_memory`, `v1/core/kv_cache_utils.py`, "
        "whose hybrid KV groups give sliding-window layers only their window's blocks); "
        "the CUDA-graph memory is a labelled prior. Not measured against a real vLLM run yet. "
        "The HF rows above with `sliding` in their id check transformers' "
        "`DynamicSlidingWindowLayer` (prefill past the window, decode past it).",
        "",
        *_published_cli_lines(),
    ]
    return lines


FRAMEWORK_TRACES = REPO / "validation" / "measurements" / "trace-frameworks.jsonl"


def framework_rows() -> list[tuple[str, str, int, int, float, str, str]]:
    """Framework traces vs the estimate: (framework, id, traced, estimated, error %, phases)."""
    if not FRAMEWORK_TRACES.exists():
        return []
    from validation.compare import predict
    from validation.trace import load_measurements

    out = []
    for m in load_measurements(FRAMEWORK_TRACES):
        est = predict(m.scenario.request, m.scenario.optim_impl, target="trace")
        t = m.measured.allocated_bytes
        err = 100 * (est.peak.allocated_bytes - t) / t
        out.append(
            (m.scenario.request.framework, m.scenario.id, t, est.peak.allocated_bytes, err,
             f"{m.measured.step}/{m.measured.phase}",
             f"{est.peak.step}/{est.peak.phase.value}")
        )  # fmt: skip
    return out


TRAINER_TRACES = REPO / "validation" / "measurements" / "trace-trl.jsonl"


def trainer_rows() -> list[tuple[str, str, int, int, float, str, str, bool]]:
    """TRL trainer traces vs the estimate (``target="trace"``).

    (trainer, id, traced, estimated, error %, traced step/phase, estimated step/phase, the
    phases agree). DPO-family and reward rows are TRL's trainers on fake CUDA
    (``validation/trl_trace.py``), GRPO/RLOO and PPO their real ``train()`` on the CPU under
    the storage tracker (``validation/trl_rl_trace.py``, ``validation/trl_ppo_trace.py``).
    """
    if not TRAINER_TRACES.exists():
        return []
    from validation.compare import predict
    from validation.trl_rl_trace import TRACE_PHASES

    out = []
    for line in TRAINER_TRACES.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        if d.get("error"):
            continue
        scen = d.get("scenario") or {}
        req = EstimateRequest(**(scen.get("request") or d["request"]))
        sid = scen.get("id") or d["id"]
        impl = scen.get("optim_impl") or "default"
        est = predict(req, impl, target="trace")
        m = d["measured"]
        t = int(m["allocated_bytes"])
        phase = TRACE_PHASES.get(m["phase"], m["phase"])
        agree = est.peak.phase.value == phase and est.peak.step == m["step"]
        out.append(
            (req.trainer.value, sid, t, est.peak.allocated_bytes,
             100 * (est.peak.allocated_bytes - t) / t, f"{m['step']}/{m['phase']}",
             f"{est.peak.step}/{est.peak.phase.value}", agree)
        )  # fmt: skip
    return out


def _trainers_line(rows: Sequence[tuple[str, str, int, int, float, str, str, bool]]) -> str:
    errs = [r[4] for r in rows]
    names = sorted({r[0] for r in rows})
    return (
        f"TRL trainer traces ({len(rows)} scenarios over {', '.join(names)}; allocated peak "
        f"vs TRL's own step traced): {_dist(errs)}; peak phase agrees in "
        f"{sum(r[7] for r in rows)}/{len(rows)}."
    )


_TrainerRow = tuple[str, str, int, int, float, str, str, bool]


def _trainers_section(rows: Sequence[_TrainerRow]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Preference and RL trainers (TRL)",
        "",
        "`--trainer` estimates against TRL's own training step on small shapes "
        "(`validation/measurements/trace-trl.jsonl`): DPO, KTO, ORPO, SimPO, CPO and reward "
        "modelling through TRL 1.16's trainers on fake CUDA (`validation/trl_trace.py`), "
        "GRPO and RLOO through their real `train()` on the CPU under the storage tracker "
        "(`validation/trl_rl_trace.py`; fake tensors cannot answer the rollout's value "
        "reads), PPO through trl 1.12.0's `PPOTrainer.train()` the same way "
        "(`validation/trl_ppo_trace.py`; PPO left TRL after 1.12). vLLM colocation is a "
        "reservation taken from vLLM's memory profiling, not traced.",
        "",
        "- " + _trainers_line(rows),
        "",
        "| trainer | scenario | traced MiB | estimated MiB | error | traced peak "
        "| estimated peak |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for trainer, sid, t, e, err, tp, ep, _ in rows:
        lines.append(
            f"| {trainer} | {sid} | {t / MIB:,.2f} | {e / MIB:,.2f} | {_pct(err)} | {tp} | {ep} |"
        )
    lines.append("")
    return lines


def _dist(errors: Sequence[float]) -> str:
    a = sorted(abs(e) for e in errors)
    if not a:
        return "no rows"
    p90 = a[max(0, -(-9 * len(a) // 10) - 1)]
    return (
        f"{len(a)} rows, median |error| {statistics.median(a):.2f} %, p90 {p90:.2f} %, "
        f"max {a[-1]:.2f} %, within 3 %: {sum(x <= 3.0 for x in a)}/{len(a)}"
    )


def _frameworks_section(pub: Sequence[PublishedRow]) -> list[str]:
    from vramcalc.frameworks import profiles

    rows = framework_rows()
    traced = {fw for fw, *_ in rows}
    lines = [
        "## Framework profiles",
        "",
        "Each `--framework` profile (`vramcalc/frameworks/`, `vramcalc/data/frameworks.json`) "
        "is checked against that framework's own training step traced on fake CUDA "
        "(`validation/framework_trace.py`, `validation/measurements/trace-frameworks.jsonl`) "
        "and against the published rows of runs made with it.",
        "",
        "| framework | traced | traced grid (allocated peak) | published rows |",
        "| --- | --- | --- | --- |",
    ]
    for prof in profiles():
        errs = [e for fw, _, _, _, e, _, _ in rows if fw == prof.name]
        pub_errs = [
            r.error_pct
            for r in pub
            if r.case.request is not None
            and r.case.request.framework == prof.name
            and r.error_pct is not None
        ]
        status = "yes" if prof.name in traced else "**not traced**"
        if prof.name == "hf":
            status = "yes (the traced grids below; Liger, fused losses, offload not traced)"
        if prof.name == "unsloth" and prof.name not in traced:
            status += " (Unsloth's Triton kernels need a GPU; modelled from its source)"
        lines.append(
            f"| {prof.name} | {status} | {_dist(errs) if errs else '—'} | "
            f"{_dist(pub_errs) if pub_errs else '—'} |"
        )
    lines += [
        "",
        "| framework | scenario | traced MiB | estimated MiB | error | peak (trace / estimate) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for fw, sid, t, e, err, pt, pe in rows:
        lines.append(
            f"| {fw} | {sid} | {t / MIB:,.2f} | {e / MIB:,.2f} | {err:+.2f} % | {pt} / {pe} |"
        )
    if not rows:
        lines.append("| (no traces committed) | | | | | |")
    lines.append("")
    by_fw: dict[str, list[PublishedRow]] = {}
    for r in pub:
        if r.case.request is not None and r.error_pct is not None:
            by_fw.setdefault(r.case.request.framework, []).append(r)
    lines += ["Published rows by framework (errors as in the table above):", ""]
    for fw, rs in sorted(by_fw.items()):
        listed = ", ".join(f"{r.case.id} {_pct(r.error_pct)}" for r in rs)
        lines.append(
            f"- **{fw}** ({_dist([r.error_pct for r in rs if r.error_pct is not None])}): {listed}"
        )
    lines.append("")
    return lines


def markdown(pub: Sequence[PublishedRow], grid: Sequence[GridRow], cuda: Sequence[CudaRow],
             reference: str, dist: Sequence[GridRow] = ()) -> str:  # fmt: skip
    """Render the whole of ``docs/accuracy.md``."""
    ps, gs = published_summary(pub), grid_summary(grid)
    tr = trainer_rows()
    lines = [
        "# Accuracy",
        "",
        f"Generated by `python -m validation.accuracy --write` with vramcalc {_version()}; "
        "do not edit by hand.",
        "",
        "## Summary",
        "",
        "- " + _summary_line(ps, "Published measurements (high and medium confidence)"),
        "  (" + coverage(pub) + ")",
        "- " + _grid_line(gs, grid),
        "- " + _dist_line(dist),
        *(["- " + _trainers_line(tr)] if tr else []),
        "- " + cuda_line(cuda),
        "",
        *_generate_section(),
        *_frameworks_section(pub),
        *_trainers_section(tr),
        "## How measured",
        "",
        "**Published** figures come from `" + reference + "`: peaks that others measured and "
        "published, with the settings of each run and the metric it used. Each case is mapped "
        "to an estimate request by `validation/published.py` (its approximations are listed "
        "below) and compared like for like: NVML / nvidia-smi figures with the predicted "
        "device peak, `max_memory_allocated` (and torchtune's active-bytes peak) with the "
        'predicted allocated peak. Units follow each source (MiB printed as "MB", decimal '
        "GB, GiB); all figures here are MiB (2^20 bytes). **Traced** figures are the real "
        "transformers/peft training step (two steps) run on fake CUDA tensors "
        "(`validation/trace.py`), recording every storage allocation and release with the "
        "CUDA allocator's 512-byte rounding: an exact `max_memory_allocated` for the CUDA "
        "kernels a GPU would pick, without a GPU. Fake CUDA SDPA would always take the math "
        "kernel; the tracer routes each call to the kernel a GPU picks, checked with the "
        "profiler on an H200 (torch 2.11): flash for mask-free 16-bit calls, memory-efficient "
        "for fp32 ones; a call with an explicit mask (sliding-window, chunked, Falcon) or a "
        "value head narrower than the q/k head (MLA) goes to the memory-efficient kernel "
        "with the mask as an additive bias (the H200 runs cuDNN attention for 16 bit, which "
        "saves the same tensors); GQA in fp32 and broadcast multi-query K/V with a mask "
        "(Falcon-7B) stay on math, as on the GPU. MoE expert GEMMs that torch's fake grouped "
        "GEMM cannot take (non-bf16 weights) run transformers' own fallback op, and the "
        "device-capability check of the grouped GEMM is answered as an H100/H200 does. "
        "**CUDA** figures are real runs "
        "(`validation/cuda.py`). Error = (predicted - measured) / measured; the 90th "
        "percentile is nearest-rank.",
        "",
        "## Published measurements",
        "",
        "| id | model | settings | metric | GPU | measured MiB | predicted MiB | error | "
        "confidence |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in pub:
        c = r.case
        err = _pct(r.error_pct)
        if c.request is None:
            err = "not expressible"
        elif r.engine_error:
            err = "no estimate"
        lines.append(
            f"| {c.id} | {c.model} | {c.settings} | {c.metric} | {c.gpu or '—'} | "
            f"{_mib(c.measured_bytes)} | {_mib(r.predicted_bytes)} | {err} | {c.confidence} |"
        )
    lines += ["", "### Cases not expressible as a request", ""]
    lines += [f"- **{r.case.id}**: {r.case.reason}." for r in pub if r.case.request is None]
    refused = [r for r in pub if r.engine_error]
    if refused:
        lines += ["", "### Cases without an estimate", ""]
        lines += [f"- **{r.case.id}**: {r.engine_error}" for r in refused]
    lines += ["", "### Approximations in the mapping", ""]
    for r in pub:
        if r.case.approximations:
            lines.append(f"- **{r.case.id}**: " + "; ".join(r.case.approximations) + ".")
    lines += [
        "",
        "## Traced grid",
        "",
        "Allocated peak of `validation/measurements/trace-grid.jsonl` (fake-CUDA traces) vs "
        "the predicted allocated peak for what a trace records (the engine's "
        '`target="trace"`: no cuBLAS workspaces, which fake tensors never allocate, and the '
        "embedding backward as its Python decomposition runs; each scenario's pinned "
        "optimizer implementation); step/phase of each peak; per-component errors at the "
        "peak (measured activations include temporaries such as activation gradients and "
        "optimizer work lists).",
        "",
    ]
    lines += _grid_table(grid)
    lines += [
        "",
        "## Traced distributed grid (rank 0)",
        "",
        "Allocated peak of rank 0 in `validation/measurements/trace-dist.jsonl`: the real "
        "FSDP1 / FSDP2 / FSDP2 + tensor-parallel step (accelerate's wrapping, two steps) on "
        "PyTorch's fake process group and fake CUDA (`validation/dist_trace.py`), against the "
        'engine\'s estimate of the same layout (`target="trace"`).',
        "",
        "The `qlora` rows run PEFT's FSDP+QLoRA recipe (nf4, double quantization, "
        "`bnb_4bit_quant_storage` = bf16 so FSDP shards the packed weights; FSDP1 with PEFT's "
        "`fsdp_auto_wrap_policy`, FSDP2 through accelerate): bitsandbytes' own "
        "`quantize_4bit` and its ops' fake kernels on fake CUDA, with the CUDA `gemm_4bit` "
        "dispatch replayed (2048 tokens: every weight is dequantized before its matmul). Not "
        "traced: QLoRA with TP (the TP plan does not shard `Params4bit`), on one device (the "
        "single-device tracer does not build 4-bit bases yet), with AMP over an fp32 base "
        "(FSDP1 cannot flatten bf16 packed storage with fp32 parameters, on a GPU too) and "
        "with CPU offload; int8 bases. At these small shapes the dequantization buffers "
        "(< 0.4 MiB) are far below the logits at the peak, so the rows check the packed "
        "shards, the whole `QuantState` per rank and the gathered units more than the "
        "dequantization transients.",
        "",
    ]
    lines += _grid_table(dist)
    lines += ["", "## CUDA measurements", ""]
    if not cuda:
        lines.append("None committed yet (see `validation/README.md` for the GPU matrix).")
    else:
        lines += [
            "| id | device | allocated MiB (pred / meas, error) | reserved | device |",
            "| --- | --- | --- | --- | --- |",
        ]
        for cr in cuda:
            cells = []
            for k in ("allocated", "reserved", "device"):
                p, m = cr.predicted[k], cr.measured[k]
                cells.append(f"{_mib(p)} / {_mib(m)} ({_pct(error_pct(p, m))})")
            lines.append(f"| {cr.id} | {cr.device} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme_block(
    pub: Sequence[PublishedRow],
    grid: Sequence[GridRow],
    dist: Sequence[GridRow] = (),
    cuda: Sequence[CudaRow] = (),
) -> str:
    """Render the README's accuracy block (between the markers, markers excluded)."""
    ps, gs = published_summary(pub), grid_summary(grid)
    lines = [
        "",
        f"Computed by `python -m validation.accuracy` with vramcalc {_version()}:",
        "",
        "- "
        + _summary_line(
            ps, "Published measured peaks, like-for-like metric, high and medium confidence"
        )
        + f" ({coverage(pub)})",
        "- " + _grid_line(gs, grid),
        "- " + _dist_line(dist),
        *(["- " + _trainers_line(tr)] if (tr := trainer_rows()) else []),
        "- " + cuda_line(cuda),
        "",
        "| id | metric | measured MiB | predicted MiB | error | confidence |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in pub:
        c = r.case
        if c.request is None:
            err = "not expressible"
        elif r.engine_error:
            err = "no estimate"
        else:
            err = _pct(r.error_pct)
        lines.append(
            f"| {c.id} | {c.metric} | {_mib(c.measured_bytes)} | {_mib(r.predicted_bytes)} | "
            f"{err} | {c.confidence} |"
        )
    lines += ["", "Every case, its settings and the traced grid: [docs/accuracy.md]"
              "(docs/accuracy.md).", ""]  # fmt: skip
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str | None:
    """``text`` with the marked block replaced; ``None`` when a marker is missing."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        return None
    return text[: i + len(BEGIN)] + "\n" + block.strip("\n") + "\n" + text[j:]


def _print_table(pub: Sequence[PublishedRow], grid: Sequence[GridRow]) -> None:
    print(f"vramcalc {_version()}: published measurements (MiB; error = (pred - meas) / meas)")
    print(f"{'id':<52} {'conf':<6} {'metric':<9} {'meas':>8} {'pred':>8} {'error':>9}")
    for r in pub:
        c = r.case
        if c.request is None:
            tail = "not expressible"
        elif r.engine_error:
            tail = r.engine_error[:70]
        else:
            tail = f"{_mib(r.predicted_bytes):>8} {_pct(r.error_pct):>9}"
        print(f"{c.id:<52} {c.confidence:<6} {c.metric:<9} {_mib(c.measured_bytes):>8} {tail}")
    print(_summary_line(published_summary(pub), "high+medium"))
    print(coverage(pub))
    print()
    print(f"traced grid: {len(grid)} scenarios (allocated peak, MiB)")
    for g in grid:
        flag = "" if g.phase_agrees else f"  PHASE {g.traced_phase} vs {g.predicted_phase}"
        pred = "no estimate" if g.engine_error else _pct(g.error_pct)
        print(f"{g.id:<60} {g.traced_bytes / MIB:9.2f} {pred:>9}{flag}")
    print(_grid_line(grid_summary(grid), grid))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m validation.accuracy [--write]``."""
    ap = argparse.ArgumentParser(prog="python -m validation.accuracy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--write", action="store_true", help="regenerate docs/accuracy.md and README")
    args = ap.parse_args(list(argv) if argv is not None else None)
    ref = reference_path()
    pub = published_rows()
    grid = grid_rows()
    dist = grid_rows(DIST)
    cuda = cuda_rows()
    _print_table(pub, grid)
    if not args.write:
        return 0
    shown = str(ref.relative_to(REPO)) if ref.is_relative_to(REPO) else ref.name
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(markdown(pub, grid, cuda, shown, dist), encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)}")
    block = readme_block(pub, grid, dist, cuda)
    text = README.read_text("utf-8") if README.exists() else ""
    new = replace_block(text, block)
    if new is None:
        print(f"README.md has no {BEGIN} ... {END} markers; the block to paste:\n", file=sys.stderr)
        print(f"{BEGIN}\n{block.strip()}\n{END}", file=sys.stderr)
        return 0
    if new != text:
        README.write_text(new, encoding="utf-8")
        print("updated the accuracy block of README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
