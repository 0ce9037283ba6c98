"""The serving planner (``vramcalc plan MODEL --task infer``): which GPUs serve a workload.

The workload is ``concurrency`` sequences of ``prompt_len + new_tokens`` tokens. The search
covers what the user leaves open: the GPU type (the catalog or ``gpus_from``), the engine
(``hf`` = transformers ``generate``, ``vllm`` = a vLLM server), the weight format when several
are allowed (the dtype, bitsandbytes int8/nf4, AWQ/GPTQ 4-bit, FP8), the tensor-parallel degree
(1, 2, 4, 8 GPUs per server) and the number of replicas (independent servers sharing the
sequences). Every candidate is one engine estimate of one replica on its GPU, so a plan entry
fits exactly when ``vramcalc.estimate(**candidate.request)`` says so:

* ``hf``: the batch is the sequences one replica holds (``ceil(concurrency / replicas)``); it
  fits when the device peak of ``generate`` leaves ``min_headroom`` free;
* ``vllm``: ``max_model_len`` is the target length and ``concurrency`` the replica's share; it
  fits when the KV blocks vLLM's budget buys hold that many sequences, ``min_headroom`` of the
  KV pool left over (vLLM pre-allocates its whole budget, so the pool is where room is left).

Objectives: the hourly price of all GPUs (catalog on-demand prices) against a decode
throughput proxy (``formulas.inference.decode_tokens_per_s``: the memory roofline of one
decode step, an upper bound that ranks layouts), ties broken by headroom. The front is the set
no other candidate beats on price and throughput at once.

Speed comes from monotonicity: the peak of ``generate`` grows with the batch (near-linearly,
activations and KV cache are linear in it), so the largest batch on each GPU is solved with
``plan.largest_batch`` over GPU-less estimates shared by every GPU (the GPU adds a constant),
and replicas = ``ceil(concurrency / largest batch)`` follows directly; vLLM's KV pool does
not depend on the concurrency, so one estimate per GPU gives the sequences a replica holds
and the replica count follows by division. Each candidate is then confirmed by an estimate.

Source: the search space of issue 12 (``plan --task infer``); the Pareto front is the standard
non-dominated set (Deb 2001, Section 2.4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vramcalc import __version__
from vramcalc.enums import Task
from vramcalc.errors import InvalidConfigError, VramcalcError
from vramcalc.plan import (
    GIB,
    PlanCandidate,
    PlanReport,
    PlanRequest,
    Status,
    _gib,
    _gpus,
    _wrap,
    largest_batch,
    render_sections,
)
from vramcalc.specs import EstimateRequest, GpuSpec

__all__ = ["TP_DEGREES", "plan_infer", "render_infer"]

TP_DEGREES = (1, 2, 4, 8)
GIGA = 10**9
# one replica holding s sequences: device peak, weights, KV bytes per token, headroom
Probe = tuple[int, int, int, int]


def _format_fields(fmt: str) -> dict[str, Any]:
    if fmt in ("int8", "nf4"):
        return {"quant": fmt}
    if fmt in ("awq", "gptq", "fp8"):
        return {"weights": fmt}
    return {}


def _replica_counts(r_min: int, tp: int, req: PlanRequest) -> list[int]:
    """Replica counts worth listing: the fewest that hold the load, then doubling.

    Each replica holds ``ceil(C / r)`` sequences; of the counts giving the same share only the
    smallest is kept (more replicas at the same share only cost more).
    """
    C = req.concurrency
    out: list[int] = []
    r = r_min
    while r <= C and r * tp <= req.max_gpus:
        fewest = -(-C // -(-C // r))
        if fewest not in out:
            out.append(fewest)
        r *= 2
    return out


class _Search:
    """Estimates of one serving plan, cached by what changes between candidates."""

    def __init__(self, req: PlanRequest) -> None:
        from vramcalc.engine import _estimate

        self.req = req
        self._estimate = _estimate
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.estimates = 0
        self.estimate_s = 0.0
        self.estimate_cpu_s = 0.0
        self.base: dict[str, Any] = {
            "model": req.model,
            "task": "inference",
            "dtype": req.dtype,
            "attn": req.attn,
            "prompt_len": req.prompt_len,
            "new_tokens": req.new_tokens,
            "kv_dtype": req.kv_dtype,
        }

    def fields(
        self, engine: str, fmt: str, tp: int, seqs: int | None, gpu: str | None
    ) -> dict[str, Any]:
        f = {**self.base, **_format_fields(fmt), "engine": engine}
        if tp > 1:
            f["tp"] = tp
            f["gpus"] = tp
        if gpu is not None:
            f["gpu"] = gpu
        if engine == "hf":
            f["batch_size"] = seqs or 1
        else:
            assert self.req.prompt_len is not None
            f["max_model_len"] = self.req.prompt_len + self.req.new_tokens
            if seqs is not None:
                f["concurrency"] = seqs
            if self.req.gpu_memory_utilization is not None:
                f["gpu_memory_utilization"] = self.req.gpu_memory_utilization
        return f

    def report(self, fields: dict[str, Any]) -> Any:
        key = tuple(sorted((k, str(v)) for k, v in fields.items()))
        rep = self.cache.get(key)
        if rep is None:
            t, c = time.perf_counter(), time.process_time()
            rep = self._estimate(_request(fields))
            self.estimate_s += time.perf_counter() - t
            self.estimate_cpu_s += time.process_time() - c
            self.estimates += 1
            self.cache[key] = rep
        return rep


def _request(fields: dict[str, Any]) -> EstimateRequest:
    """Build an estimate request; a field the estimate refuses becomes the planner's error."""
    from pydantic import ValidationError

    try:
        return EstimateRequest(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise InvalidConfigError(f"{where}: {msg}" if where else msg) from None


def _kv_per_token(rep: Any, res: Any, tp: int) -> int:
    """KV-cache bytes of one token on one rank (the serving report's, or the formula's)."""
    if rep is not None and rep.serving is not None:
        return int(rep.serving.kv_bytes_per_token)
    from vramcalc.formulas.inference import (
        compute_bytes,
        kv_bytes_per_token,
        kv_dtype_bytes,
        kv_heads_per_rank,
    )

    inf = res.training.inference
    cb = compute_bytes(res.training.param_dtype, inf.weights if inf else None)
    kvb = kv_dtype_bytes(inf.kv_dtype, cb) if inf else cb
    m = res.model
    return kv_bytes_per_token(
        m.num_hidden_layers, kv_heads_per_rank(m.num_key_value_heads, tp), m.head_dim, kvb
    )


def plan_infer(req: PlanRequest) -> PlanReport:
    """Search GPU type, engine, weight format, tensor parallelism and replicas for serving.

    Returns every evaluated candidate, the price-vs-throughput front, the cheapest and the
    highest-throughput entries of the front, and one line per exclusion.
    """
    from vramcalc.engine import resolve
    from vramcalc.formulas.inference import decode_tokens_per_s

    assert req.prompt_len is not None
    t0, cpu0 = time.perf_counter(), time.process_time()
    gpus = _gpus(req.gpus_from)
    unpriced = [g.name for g in gpus if g.price_usd_per_gpu_hour <= 0]
    gpus = [g for g in gpus if g.price_usd_per_gpu_hour > 0]
    if not gpus:
        raise InvalidConfigError(
            f"no GPU with an on-demand price among {', '.join(unpriced)}; the planner compares "
            "costs (see `vramcalc gpus`)"
        )
    search = _Search(req)
    C = req.concurrency
    context = req.prompt_len + req.new_tokens / 2  # mean cached length while decoding
    head_min = int(req.min_headroom * GIB)
    # bad model names and over-long requests fail here, once, with the engine's message
    spec = resolve(_request(search.fields(req.engines[0], req.weights[0], 1, 1, gpus[0].name)))
    limit = spec.model.max_position_embeddings
    if limit and req.prompt_len + req.new_tokens > limit:
        raise InvalidConfigError(
            f"--prompt-len {req.prompt_len} + --new-tokens {req.new_tokens} = "
            f"{req.prompt_len + req.new_tokens} exceeds {spec.model.name}'s "
            f"max_position_embeddings ({limit}); no engine serves it without rope scaling"
        )
    candidates: list[PlanCandidate] = []
    excluded = [
        f"{name}: no on-demand price in the catalog, costs cannot be compared" for name in unpriced
    ]
    label: dict[str, str] = {f: (req.dtype.value if f == "auto" else f) for f in req.weights}

    def add(g: GpuSpec, engine: str, fmt: str, tp: int, r: int, seqs: int, m: Probe,
            cap: int, fields: dict[str, Any], status: Status,
            reason: str) -> None:  # fmt: skip
        n = tp * r
        dev, weights_b, kvpt, headroom = m
        usd_h = n * g.price_usd_per_gpu_hour
        tps = 0.0
        if status == "ok":
            per_replica = decode_tokens_per_s(
                weights_b, kvpt, seqs, context, g.bandwidth_gb_s * GIGA
            )
            tps = per_replica * C / seqs  # every replica runs at the fullest one's pace
            if req.max_usd_per_hour is not None and usd_h > req.max_usd_per_hour:
                status = "over_budget"
                reason = f"${usd_h:,.2f}/h > --max-usd-per-hour {req.max_usd_per_hour:g}"
        request = {k: (v.value if hasattr(v, "value") else v) for k, v in fields.items()}
        candidates.append(
            PlanCandidate.model_construct(
                gpu=g.name,
                gpus_per_node=min(n, 8),
                nodes=-(-n // 8),
                n_gpus=n,
                layout=f"tp{tp}" + (f" x{r}" if r > 1 else ""),
                method=label[fmt],
                grad_ckpt=False,
                micro_batch=seqs if status != "no_fit" else 0,
                grad_accum=1,
                global_batch=C,
                peak_device_bytes=dev,
                gpu_memory_bytes=g.memory_bytes,
                headroom_bytes=headroom,
                time_s=None,
                cost_usd=None,
                status=status,
                reason=reason,
                pareto=False,
                cheapest=False,
                fastest=False,
                request=request,
                engine=engine,
                weights=fmt,
                tp=tp,
                replicas=r,
                max_concurrency=cap,
                usd_per_hour=usd_h,
                tokens_per_s=round(tps, 3) if status == "ok" else None,
                usd_per_mtok=round(usd_h / (tps * 3600) * 1e6, 6) if tps > 0 else None,
            )
        )

    def emit(g: GpuSpec, engine: str, fmt: str, tp: int, cap: int,
             probe: Callable[[int], Probe], why: str) -> None:  # fmt: skip
        """Candidates of one (GPU, engine, format, TP) given the sequences a replica holds.

        ``probe(s)`` is the engine's (device peak, weights, KV bytes per token, headroom) of
        a replica holding ``s`` sequences; every share up to ``cap`` fits (monotone).
        """
        if cap <= 0:
            f = search.fields(engine, fmt, tp, 1 if engine == "hf" else None, g.name)
            add(g, engine, fmt, tp, 1, 1, probe(1), 0, f, "no_fit", why)
            return
        r_min = -(-C // min(cap, C))
        counts = _replica_counts(r_min, tp, req)
        if not counts:
            s0 = min(cap, C)
            f = search.fields(engine, fmt, tp, s0, g.name)
            add(g, engine, fmt, tp, r_min, s0, probe(s0), cap, f, "no_fit",
                f"needs {r_min} replicas x {tp} GPUs > --max-gpus {req.max_gpus}")  # fmt: skip
            return
        for r in counts:
            seqs = -(-C // r)
            f = search.fields(engine, fmt, tp, seqs, g.name)
            add(g, engine, fmt, tp, r, seqs, probe(seqs), cap, f, "ok", "")

    bad_tp: dict[int, str] = {}
    for engine in req.engines:
        for fmt in req.weights:
            for tp in TP_DEGREES:
                if tp > req.max_gpus or tp in bad_tp:
                    continue
                try:
                    f0 = search.fields(engine, fmt, tp, 1, gpus[0].name)
                    res = resolve(_request(f0))
                    if engine == "hf":
                        _hf(search, req, gpus, fmt, tp, res, head_min, emit)
                    else:
                        _vllm(search, req, gpus, fmt, tp, head_min, emit)
                except InvalidConfigError as exc:
                    if "--tp" in str(exc):
                        bad_tp[tp] = str(exc)
                        continue
                    excluded.append(f"{engine}, {label[fmt]} weights, TP {tp}: {exc}")
                except VramcalcError as exc:
                    excluded.append(f"{engine}, {label[fmt]} weights, TP {tp}: {exc}")
    excluded += [f"TP {tp}: {msg}" for tp, msg in sorted(bad_tp.items())]
    return _finish(req, candidates, excluded, search, t0, cpu0)


def _hf(search: _Search, req: PlanRequest, gpus: list[GpuSpec], fmt: str, tp: int,
        res: Any, head_min: int, emit: Any) -> None:  # fmt: skip
    """``generate``: the largest batch per GPU from GPU-less estimates.

    The walk never reads the GPU; the engine applies the GPU family's overheads after it
    (``formulas.overhead.overheads``: cuBLAS workspace, allocator reserve factor, CUDA
    context), so each GPU's device peak is those overheads applied to the GPU-less
    estimate's live tensors (its allocated peak less the one default-size workspace a
    ``generate`` holds).
    """
    from vramcalc import catalog
    from vramcalc.formulas.overhead import overheads

    C = req.concurrency
    kvpt = _kv_per_token(None, res, tp)
    ws0 = int(catalog.constant("cublas_workspace_bytes"))

    def rep0(b: int) -> Any:
        return search.report(search.fields("hf", fmt, tp, b, None))

    for g in gpus:

        def peak(b: int, g: GpuSpec = g) -> int:
            tensors = int(rep0(b).peak.allocated_bytes) - ws0
            return overheads(g, tensors, 0, workspaces=1).device

        def probe(s: int, mem: int = g.memory_bytes, peak: Any = peak) -> Probe:
            dev = peak(s)
            return dev, int(rep0(s).breakdown.params), kvpt, mem - dev

        limit = g.memory_bytes - head_min
        b = largest_batch(peak, C, limit)
        why = f"needs {_gib(peak(1))} of {_gib(g.memory_bytes)} GiB for one sequence" + (
            f" (+{req.min_headroom:g} GiB --min-headroom)" if head_min else ""
        )
        if b > 0:  # the most sequences one replica holds, up to C
            b = _largest_share(peak, b, C, limit)
        emit(g, "hf", fmt, tp, b, probe, why)


def _largest_share(peak: Any, b: int, C: int, limit: int) -> int:
    """Return the largest batch <= C that fits, given that ``b`` fits (peak non-decreasing)."""
    if peak(C) <= limit:
        return C
    lo, hi = b, C  # peak(lo) <= limit < peak(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= limit:
            lo = mid
        else:
            hi = mid
    return lo


def _vllm(search: _Search, req: PlanRequest, gpus: list[GpuSpec], fmt: str, tp: int,
          head_min: int, emit: Any) -> None:  # fmt: skip
    """vLLM: one estimate per GPU gives the KV blocks, so the sequences a replica holds.

    The budget, weights, profile activations and KV pool do not depend on the concurrency;
    only the check ``concurrency x blocks per sequence <= KV blocks`` does.
    """
    for g in gpus:
        rep = search.report(search.fields("vllm", fmt, tp, None, g.name))
        sv = rep.serving
        # blocks of one sequence over every KV group (windowed groups keep only the window)
        per_seq = sv.kv_blocks_per_sequence or -(-sv.request_len // sv.block_size)
        per_block = sv.kv_block_bytes or sv.block_size * sv.kv_bytes_per_token
        spare = -(-head_min // per_block) if head_min else 0
        fits = sv.fits and rep.fit is not None and rep.fit.fits
        cap = max(0, (sv.kv_blocks - spare) // per_seq) if fits else 0
        dev = int(rep.peak.device_bytes)

        def probe(s: int, rep: Any = rep, sv: Any = sv, per_seq: int = per_seq,
                  per_block: int = per_block) -> Probe:  # fmt: skip
            room = (sv.kv_blocks - s * per_seq) * per_block
            return (
                int(rep.peak.device_bytes),
                int(rep.breakdown.params),
                sv.kv_bytes_per_token,
                room,
            )

        why = (
            sv.reason
            or (
                f"the device peak ({_gib(dev)} GiB: the budget, CUDA context and allocator "
                f"reserve) exceeds the GPU's {_gib(g.memory_bytes)} GiB"
                if not fits
                else None
            )
            or (
                f"{sv.kv_blocks} KV blocks hold {sv.kv_blocks // per_seq} sequence(s) of "
                f"{sv.request_len} tokens"
                + (f" after {req.min_headroom:g} GiB --min-headroom" if head_min else "")
            )
        )
        emit(g, "vllm", fmt, tp, cap, probe, why)


def pareto_front(cands: list[PlanCandidate]) -> list[PlanCandidate]:
    """Candidates no other beats on price and throughput; equal on both: most headroom."""
    ok = sorted(cands, key=lambda c: (c.usd_per_hour, -(c.tokens_per_s or 0), -c.headroom_bytes))
    front: list[PlanCandidate] = []
    best = -1.0
    for c in ok:
        tps = c.tokens_per_s or 0.0
        if tps > best:
            front.append(c)
            best = tps
    return front


def _finish(req: PlanRequest, candidates: list[PlanCandidate], excluded: list[str],
            search: _Search, t0: float, cpu0: float) -> PlanReport:  # fmt: skip
    ok = [c for c in candidates if c.status == "ok"]
    front = pareto_front(ok)
    ids = {id(c) for c in front}
    cheapest = front[0] if front else None
    fastest = front[-1] if front else None
    marked: list[PlanCandidate] = []
    for c in candidates:
        upd: dict[str, Any] = {}
        if id(c) in ids:
            upd["pareto"] = True
        if c is cheapest:
            upd["cheapest"] = True
        if c is fastest:
            upd["fastest"] = True
        marked.append(c.model_copy(update=upd) if upd else c)
    front = sorted((c for c in marked if c.pareto), key=lambda c: c.usd_per_hour or 0)
    by_gpu: dict[str, PlanCandidate] = {}
    for c in marked:
        if c.status != "ok":
            continue
        best = by_gpu.get(c.gpu)
        if best is None or (c.n_gpus, c.usd_per_hour, -(c.tokens_per_s or 0)) < (
            best.n_gpus, best.usd_per_hour, -(best.tokens_per_s or 0)
        ):  # fmt: skip
            by_gpu[c.gpu] = c
    smallest = sorted(by_gpu.values(), key=lambda c: (c.usd_per_hour, -(c.tokens_per_s or 0)))
    excluded = excluded + _exclusions(req, marked)
    if not front:
        excluded.append(
            "nothing fits the limits: raise --max-gpus/--max-usd-per-hour, lower "
            "--concurrency/--prompt-len/--min-headroom, or allow --weights awq,fp8,nf4"
        )
    notes = [
        "tok/s is a decode throughput proxy: the memory roofline (weights + KV read once per "
        "step at the GPU's peak bandwidth), an upper bound that ranks layouts; prefill, "
        "compute and TP all-reduces are not counted",
        "replicas are independent servers (data parallel); each holds ceil(concurrency / "
        "replicas) sequences; 'free' is GiB left on the GPU (hf) or KV pool beyond the "
        "sequences (vllm, which pre-allocates its budget)",
    ]
    n = search.estimates
    stats = {
        "seconds": round(time.perf_counter() - t0, 4),
        "cpu_seconds": round(time.process_time() - cpu0, 4),
        "estimates": float(n),
        "estimates_per_s": round(n / search.estimate_s, 1) if search.estimate_s else 0.0,
        "estimates_per_cpu_s": round(n / search.estimate_cpu_s, 1)
        if search.estimate_cpu_s
        else 0.0,
        "candidates": float(len(marked)),
    }
    return PlanReport(
        version=__version__,
        model=req.model if isinstance(req.model, str) else str(req.model.get("model_type")),
        task=Task.INFERENCE.value,
        tokens=None,
        epochs=req.epochs,
        global_batch=req.concurrency,
        seq_len=(req.prompt_len or 0) + req.new_tokens,
        prompt_len=req.prompt_len,
        new_tokens=req.new_tokens,
        concurrency=req.concurrency,
        front=front,
        cheapest=cheapest and next(c for c in marked if c.cheapest),
        fastest=fastest and next(c for c in marked if c.fastest),
        smallest=smallest,
        excluded=excluded,
        candidates=marked,
        notes=notes,
        stats=stats,
    )


def _exclusions(req: PlanRequest, cands: list[PlanCandidate]) -> list[str]:
    """One line per engine and weight format: GPU types it fits on nowhere, and over budget."""
    out: list[str] = []
    names = list(dict.fromkeys(c.gpu for c in cands))
    for engine in req.engines:
        for fmt in dict.fromkeys(c.method for c in cands if c.engine == engine):
            mine = [c for c in cands if c.engine == engine and c.method == fmt]
            ok = {c.gpu for c in mine if c.status == "ok"}
            over = sorted({c.gpu for c in mine if c.status == "over_budget"} - ok)
            seen = {c.gpu for c in mine}
            never = [g for g in names if g in seen and g not in ok and g not in over]
            what = f"{engine}, {fmt} weights"
            if never:
                out.append(
                    f"{what}: {req.concurrency} x {(req.prompt_len or 0) + req.new_tokens} "
                    f"tokens do not fit at any TP/replicas up to {req.max_gpus} GPUs on "
                    f"{', '.join(never)}"
                )
            if over:
                out.append(f"{what}: over --max-usd-per-hour on {', '.join(over)}")
    return out


# ----------------------------------------------------------------------------- text


def render_infer(report: PlanReport, *, width: int = 80, rows: int = 12) -> str:
    """Render a serving plan as plain text in ``width`` columns."""
    lines = [
        f"serve {report.model}: {report.concurrency} concurrent sequences, "
        f"{report.prompt_len:,} prompt + {report.new_tokens:,} new tokens each",
    ]
    n_ok = sum(1 for c in report.candidates if c.status == "ok")
    lines.append(
        f"{len(report.candidates)} candidates evaluated, {n_ok} fit the limits, "
        f"{len(report.front)} on the price-vs-throughput front"
    )
    lines = [x for line in lines for x in _wrap(line, width)]
    lines.append("")
    head = (f"{'':2}{'GPUs':<13}{'engine':<7}{'weights':<8}{'TP xR':<7}{'seqs':>9}"
            f"{'peak':>6}{'free':>6}{'tok/s':>8}{'$/h':>7}{'$/Mtok':>7}")  # fmt: skip
    lines.append(head[:width])
    legend = ["$ cheapest  > highest throughput  * both; seqs: per replica / most it holds;",
              "peak and free: GiB per GPU; tok/s: decode roofline proxy, all replicas"]  # fmt: skip
    return render_sections(lines, report, _row, legend, width=width, rows=rows)


def _row(mark: str, c: PlanCandidate) -> str:
    gpus = f"{c.n_gpus}x {c.gpu}"
    tpr = f"{c.tp}x{c.replicas}"
    seqs = f"{c.micro_batch}/{c.max_concurrency}"
    tps = c.tokens_per_s or 0.0
    tps_s = f"{tps:,.0f}" if tps < 1e6 else f"{tps / 1e6:.1f}M"
    mtok = f"{c.usd_per_mtok:.2f}" if c.usd_per_mtok is not None else "-"
    return (
        f"{mark}{gpus:<13.13}{c.engine or '':<7}{c.method:<8.8}{tpr:<7}{seqs:>9.9}"
        f"{_gib(c.peak_device_bytes):>6}{_gib(c.headroom_bytes):>6}{tps_s:>8}"
        f"{c.usd_per_hour or 0:>7.2f}{mtok:>7}"
    )
