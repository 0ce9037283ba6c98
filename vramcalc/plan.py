"""The planner: what to rent and how to lay the job out.

``plan(request) -> PlanReport`` searches what the user leaves open -- GPU type and count
(nodes of 1, 2, 4 or 8 GPUs), the parallel layout (DDP, DeepSpeed ZeRO 1/2/3, FSDP2
full_shard/shard_grad_op, and tensor/pipeline parallelism only where nothing else fits), the
PEFT method, gradient checkpointing, the micro-batch (the largest that fits, up to what the
global batch needs) and the gradient accumulation that reaches ``global_batch`` -- and returns
every evaluated candidate with its time and cost, the Pareto front of time vs cost (ties broken
by peak-memory headroom), the cheapest and the fastest, and one line for each exclusion.

Each task has its own search function in ``PLANNERS`` (``train`` now; a serving search can be
added under ``Task.INFERENCE`` without touching the training one).

Memory comes from the engine (``engine._estimate``), time and cost from ``cost.py`` through
the engine's ``_cost``, so the planner adds no formula of its own. Speed comes from:

* one estimate per (method, checkpointing, layout, mesh, micro-batch), shared by every GPU of
  the catalog: the walk does not depend on the GPU, only the constant overheads added after it
  do (CUDA context, cuBLAS workspaces: ``engine._overheads``), which are measured once per GPU
  as an offset against the same estimate without a GPU;
* the device peak grows with the micro-batch (activations are linear in it): the largest
  micro-batch is solved from the line through batch 1 and the batch the global batch needs,
  then checked with the engine and corrected by bisection;
* checkpointing is tried only where the job does not reach its micro-batch without it (it
  recomputes the forward, so it is never faster at the same micro-batch).

Source: the search space is that of issue 12; the Pareto front is the standard non-dominated
set (Deb 2001, "Multi-Objective Optimization using Evolutionary Algorithms", Section 2.4).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vramcalc import __version__
from vramcalc.enums import Attention, DType, KvDtype, MixedPrecision, Task
from vramcalc.errors import InvalidConfigError, UnknownNameError
from vramcalc.specs import MAX_BATCH, MAX_SEQ, EstimateRequest, GpuSpec, LoraOptions

Status = Literal["ok", "no_fit", "over_budget", "low_headroom"]

__all__ = [
    "LAYOUTS",
    "PLANNERS",
    "PlanCandidate",
    "PlanReport",
    "PlanRequest",
    "plan",
    "plan_train",
    "render_plan",
]

GIB = 1 << 30
METHODS = ("full", "lora", "qlora")
PER_NODE = (1, 2, 4, 8)
TP_DEGREES = (2, 4, 8)

# layout key -> EstimateRequest fields (beyond gpus/nodes). "single" is one GPU.
LAYOUTS: dict[str, dict[str, Any]] = {
    "single": {},
    "ddp": {},
    "zero1": {"zero": 1},
    "zero2": {"zero": 2},
    "zero3": {"zero": 3},
    "fsdp2_full_shard": {"fsdp": "full_shard", "fsdp_version": 2},
    "fsdp2_shard_grad_op": {"fsdp": "shard_grad_op", "fsdp_version": 2},
}
_INFER_ONLY = ("prompt_len", "new_tokens", "concurrency", "engines", "weights", "kv_dtype",
               "gpu_memory_utilization", "max_usd_per_hour")  # fmt: skip
_TRAIN_ONLY = ("tokens", "epochs", "global_batch", "seq_len", "methods", "lora",
               "mixed_precision", "optim", "grad_ckpt", "layouts", "max_usd", "max_hours",
               "mfu")  # fmt: skip


def _flags(names: Any) -> str:
    return ", ".join("--" + ("engine" if n == "engines" else n).replace("_", "-") for n in names)


# PEFT trains a few million parameters: ZeRO-1/2 and shard_grad_op shard only their states
# and gradients, which leaves the frozen base replicated as under DDP.
_PEFT_SKIPS = ("zero1", "zero2", "fsdp2_shard_grad_op")


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanRequest(_In):
    """What the planner searches; field names are the CLI's long options in snake_case."""

    model: str | dict[str, Any] = Field(
        description="catalog name/alias, a config.json path (CLI/Python) or an inline config"
    )
    task: Task = Task.TRAIN
    tokens: int | None = Field(
        default=None, gt=0, le=10**15, description="training tokens per epoch (train: required)"
    )
    epochs: float = Field(default=1.0, gt=0, le=10_000)
    global_batch: int = Field(default=64, gt=0, le=1 << 16, description="sequences per step")
    seq_len: int = Field(default=2048, gt=0, le=MAX_SEQ)
    methods: tuple[Literal["full", "lora", "qlora"], ...] = Field(
        default=("lora",), min_length=1, description="PEFT methods allowed"
    )
    lora: LoraOptions = LoraOptions()
    dtype: DType = DType.BF16
    mixed_precision: MixedPrecision = MixedPrecision.NO
    optim: str = "adamw_torch"
    attn: Attention = Attention.SDPA
    grad_ckpt: Literal["auto", "on", "off"] = "auto"
    gpus_from: tuple[str, ...] | None = Field(
        default=None, description="GPU names to consider (default: the whole catalog)"
    )
    layouts: tuple[str, ...] | None = Field(
        default=None, description=f"layouts to consider (default: all of {', '.join(LAYOUTS)})"
    )
    max_gpus: int = Field(default=64, gt=0, le=4096)
    max_usd: float | None = Field(default=None, ge=0)
    max_hours: float | None = Field(default=None, gt=0)
    min_headroom: float = Field(default=0.0, ge=0, description="GiB left free on every GPU")
    mfu: float | None = Field(default=None, gt=0, le=1)
    # serving (``task="inference"``): see plan_infer.py
    prompt_len: int | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="inference: prompt tokens (required)"
    )
    new_tokens: int = Field(default=1, gt=0, le=MAX_SEQ, description="inference: new tokens")
    concurrency: int = Field(
        default=1, gt=0, le=MAX_BATCH, description="inference: concurrent sequences to serve"
    )
    engines: tuple[Literal["hf", "vllm"], ...] = Field(
        default=("hf", "vllm"), min_length=1, description="inference: engines allowed"
    )
    weights: tuple[Literal["auto", "int8", "nf4", "awq", "gptq", "fp8"], ...] = Field(
        default=("auto",),
        min_length=1,
        description="inference: weight formats allowed (auto = --dtype, unquantized)",
    )
    kv_dtype: KvDtype = KvDtype.AUTO
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_usd_per_hour: float | None = Field(
        default=None, ge=0, description="inference: budget in USD per hour, all GPUs"
    )

    @field_validator("methods", "engines", "weights", mode="before")
    @classmethod
    def _split_methods(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(m.strip() for m in v.split(",") if m.strip())
        return v

    @field_validator("engines", "weights", mode="after")
    @classmethod
    def _once_each(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))

    @field_validator("gpus_from", "layouts", mode="before")
    @classmethod
    def _split_names(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(m.strip() for m in v.split(",") if m.strip())
        return v

    @field_validator("task", mode="before")
    @classmethod
    def _infer_alias(cls, v: Any) -> Any:
        return "inference" if isinstance(v, str) and v.lower() == "infer" else v

    @model_validator(mode="after")
    def _task_options(self) -> PlanRequest:
        given = self.model_fields_set
        if self.task == Task.TRAIN:
            wrong = sorted(given & set(_INFER_ONLY))
            if wrong:
                raise ValueError(
                    f"{_flags(wrong)}: serving option(s), need task inference (--task infer)"
                )
            if self.tokens is None:
                raise ValueError(
                    "the plan compares time and cost: pass tokens (--tokens N, training tokens "
                    "per epoch)"
                )
            return self
        wrong = sorted(given & set(_TRAIN_ONLY))
        if wrong:
            raise ValueError(
                f"{_flags(wrong)}: training option(s), not accepted with task inference; "
                f"serving takes {_flags(_INFER_ONLY)}"
            )
        if self.prompt_len is None:
            raise ValueError("task inference needs prompt_len (--prompt-len N)")
        if self.prompt_len + self.new_tokens > MAX_SEQ:
            raise ValueError(
                f"--prompt-len {self.prompt_len} + --new-tokens {self.new_tokens} is above the "
                f"limit of {MAX_SEQ} tokens"
            )
        if self.kv_dtype == KvDtype.FP8 and "hf" in self.engines:
            raise ValueError(
                "--kv-dtype fp8 needs --engine vllm (transformers' caches store K/V in the model's "
                "dtype); pass --engine vllm or another --kv-dtype"
            )
        return self


class PlanCandidate(_Out):
    """One evaluated job layout on one GPU type."""

    gpu: str
    gpus_per_node: int
    nodes: int
    n_gpus: int
    layout: str = Field(description="layout key (ddp, zero3, fsdp2_full_shard, ...+tpN+ppN)")
    method: str
    grad_ckpt: bool
    micro_batch: int = Field(description="0 when even micro-batch 1 does not fit")
    grad_accum: int
    global_batch: int
    peak_device_bytes: int = Field(description="device peak of the busiest rank")
    gpu_memory_bytes: int
    headroom_bytes: int
    time_s: float | None = None
    cost_usd: float | None = None
    status: Status
    reason: str = ""
    pareto: bool = False
    cheapest: bool = False
    fastest: bool = False
    request: dict[str, Any] = Field(
        default_factory=dict, description="the EstimateRequest fields that reproduce it"
    )
    # serving candidates (task inference); None for training
    engine: str | None = None
    weights: str | None = Field(default=None, description="weight format (auto = --dtype)")
    tp: int | None = None
    replicas: int | None = Field(default=None, description="independent servers of tp GPUs")
    max_concurrency: int | None = Field(
        default=None, description="sequences of the target length one replica can hold"
    )
    usd_per_hour: float | None = None
    tokens_per_s: float | None = Field(
        default=None, description="decode throughput proxy (memory roofline, all replicas)"
    )
    usd_per_mtok: float | None = Field(default=None, description="USD per million tokens")


class PlanReport(_Out):
    """The plan: every evaluated candidate, the front, and why common choices were excluded."""

    version: str
    model: str
    task: str
    tokens: int | None
    epochs: float
    global_batch: int
    seq_len: int
    prompt_len: int | None = None
    new_tokens: int | None = None
    concurrency: int | None = None
    front: list[PlanCandidate]
    cheapest: PlanCandidate | None = None
    fastest: PlanCandidate | None = None
    smallest: list[PlanCandidate] = Field(
        default_factory=list,
        description="per GPU type, the fitting candidate with the fewest GPUs (then cheapest), "
        "cheapest first: the cost model folds communication into the MFU, so more GPUs of a "
        "type cost the same and finish sooner, and the front favours the widest jobs",
    )
    excluded: list[str] = Field(default_factory=list)
    candidates: list[PlanCandidate] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    stats: dict[str, float] = Field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _gpus(names: tuple[str, ...] | None) -> list[GpuSpec]:
    from vramcalc import catalog

    if not names:
        return list(catalog.gpus())
    out: list[GpuSpec] = []
    for n in names:
        g = catalog.gpu(n)  # UnknownNameError with the closest match
        if g not in out:
            out.append(g)
    return out


def _meshes(max_gpus: int) -> list[tuple[int, int]]:
    """(GPUs per node, nodes): 1, 2, 4, 8 on one node, then 8-GPU nodes doubling."""
    out = [(p, 1) for p in PER_NODE if p <= max_gpus]
    nodes = 2
    while PER_NODE[-1] * nodes <= max_gpus:
        out.append((PER_NODE[-1], nodes))
        nodes *= 2
    return out


def _method_fields(method: str, lora: LoraOptions) -> dict[str, Any]:
    if method == "lora":
        return {"lora": lora}
    if method == "qlora":
        return {"qlora": lora}
    return {}


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def _hours(s: float) -> str:
    h = s / 3600
    return f"{h:.1f} h" if h < 100 else f"{h / 24:.0f} d"


@dataclasses.dataclass
class _Counter:
    estimates: int = 0
    estimate_s: float = 0.0
    estimate_cpu_s: float = 0.0


class _Search:
    """Shared state of one training search: caches keyed by what a candidate changes."""

    def __init__(self, req: PlanRequest) -> None:
        from vramcalc.engine import _estimate

        self.req = req
        self._estimate = _estimate
        self.count = _Counter()
        self.peaks: dict[tuple[Any, ...], Any] = {}
        self.base = {
            "model": req.model,
            "seq_len": req.seq_len,
            "dtype": req.dtype,
            "mixed_precision": req.mixed_precision,
            "optim": req.optim,
            "attn": req.attn,
            "epochs": req.epochs,
            "mfu": req.mfu,
        }

    def fields(
        self, method: str, ckpt: bool, layout: str, mesh: tuple[int, int], b: int, ga: int
    ) -> dict[str, Any]:
        per_node, nodes = mesh
        extra = dict(LAYOUTS.get(layout.split("+")[0], {}))
        for part in layout.split("+")[1:]:
            if part.startswith("tp"):
                extra["tp"] = int(part[2:])
            elif part.startswith("pp"):
                extra["pp"] = int(part[2:])
        mp = self.req.mixed_precision
        if "zero" in extra and mp == MixedPrecision.NO and self.req.dtype != DType.FP32:
            # DeepSpeed's bf16/fp16 section: a 16-bit module, fp32 master in the optimizer
            mp = MixedPrecision(self.req.dtype.value)
        return {
            **self.base,
            **_method_fields(method, self.req.lora),
            **extra,
            "mixed_precision": mp,
            "grad_ckpt": ckpt,
            "gpus": per_node,
            "nodes": nodes,
            "batch_size": b,
            "grad_accum": ga,
        }

    def report(self, key: tuple[Any, ...], fields: dict[str, Any]) -> Any:
        """Return the engine's report without a GPU (cached; the engine is deterministic)."""
        rep = self.peaks.get(key)
        if rep is None:
            t, c = time.perf_counter(), time.process_time()
            rep = self._estimate(EstimateRequest(**fields))
            self.count.estimate_s += time.perf_counter() - t
            self.count.estimate_cpu_s += time.process_time() - c
            self.count.estimates += 1
            self.peaks[key] = rep
        return rep


def _offsets(search: _Search, gpus: list[GpuSpec], ref: dict[str, Any]) -> dict[str, int]:
    """Device bytes each GPU adds to a GPU-less estimate (context, workspaces: constant).

    ``engine._overheads`` adds the CUDA context and cuBLAS workspaces after the walk, per GPU
    family; the walk itself never reads the GPU. One estimate per distinct offset class.
    """
    from vramcalc.engine import _estimate

    none = search.report(("ref",), ref).peak.device_bytes
    out: dict[str, int] = {}
    by_sig: dict[tuple[str, str], int] = {}
    for g in gpus:
        sig = (g.family, g.vendor)
        if sig not in by_sig:
            rep = _estimate(EstimateRequest(**{**ref, "gpu": g.name}))
            search.count.estimates += 1
            by_sig[sig] = rep.peak.device_bytes - none
        out[g.name] = by_sig[sig]
    return out


def micro_batches(cap: int) -> list[int]:
    """List the micro-batches worth running for ``cap`` sequences per data-parallel rank.

    With accumulation ``ga`` a rank needs ``ceil(cap / ga)`` sequences per micro-step; any
    larger micro-batch with the same accumulation only costs memory. Ascending.
    """
    return sorted({-(-cap // ga) for ga in range(1, cap + 1)})


def largest_batch(peak: Callable[[int], int], cap: int, limit: int) -> int:
    """Find the largest useful micro-batch (see ``micro_batches``) whose device peak is <= limit.

    0 when even micro-batch 1 does not fit. The peak is non-decreasing in the micro-batch and
    close to linear (activations are linear in it; allocator rounding adds at most a
    segment): the guess from the line through 1 and ``cap`` is checked with the engine, then
    bisection finishes (usually no step is left).
    """
    p1 = peak(1)
    if p1 > limit:
        return 0
    if cap == 1:
        return 1
    pc = peak(cap)
    if pc <= limit:
        return cap
    bs = micro_batches(cap)
    lo, hi = 0, len(bs) - 1  # peak(bs[lo]) <= limit < peak(bs[hi])
    slope = (pc - p1) / (cap - 1)
    guess_b = 1 + (limit - p1) / slope if slope > 0 else cap
    i = max((k for k, b in enumerate(bs) if b <= guess_b), default=0)
    i = min(max(i, lo + 1), hi - 1) if hi - lo > 1 else lo
    if lo < i < hi:
        if peak(bs[i]) <= limit:
            lo = i
            if i + 1 < hi and peak(bs[i + 1]) > limit:
                hi = i + 1
        else:
            hi = i
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(bs[mid]) <= limit:
            lo = mid
        else:
            hi = mid
    return bs[lo]


# ----------------------------------------------------------------------------- training


def plan_train(req: PlanRequest) -> PlanReport:
    """Search GPU type and count, layout, method, checkpointing and micro-batch for training.

    Returns every evaluated candidate (``candidates``), the time-vs-cost Pareto front of those
    that fit and meet the budgets, the cheapest and the fastest, and one line per exclusion.
    """
    from vramcalc.engine import _cost, resolve
    from vramcalc.formulas.counts import param_inventory
    from vramcalc.formulas.params import plan_params

    t0, cpu0 = time.perf_counter(), time.process_time()
    gpus = _gpus(req.gpus_from)
    unpriced = [g.name for g in gpus if g.price_usd_per_gpu_hour <= 0]
    gpus = [g for g in gpus if g.price_usd_per_gpu_hour > 0]
    if not gpus:
        raise InvalidConfigError(
            f"no GPU with an on-demand price among {', '.join(unpriced)}; the planner compares "
            "costs (see `vramcalc gpus`)"
        )
    layouts = list(req.layouts) if req.layouts else list(LAYOUTS)
    for name in layouts:
        if name not in LAYOUTS:
            raise UnknownNameError("layout", name, LAYOUTS)
    ckpts = {"auto": (False, True), "on": (True,), "off": (False,)}[req.grad_ckpt]
    search = _Search(req)
    G = req.global_batch
    headroom_min = int(req.min_headroom * GIB)
    # one GPU-less reference estimate fixes each GPU's constant overhead
    ref_fields = search.fields(req.methods[0], True, "single", (1, 1), 1, 1)
    resolve(EstimateRequest(**ref_fields))  # bad model/optimizer names fail here, once
    offsets = _offsets(search, gpus, ref_fields)
    limits = {g.name: g.memory_bytes - offsets[g.name] - headroom_min for g in gpus}

    candidates: list[PlanCandidate] = []
    excluded: list[str] = [
        f"{name}: no on-demand price in the catalog, costs cannot be compared" for name in unpriced
    ]
    notes: list[str] = []
    plans: dict[tuple[Any, ...], Any] = {}
    costs: dict[tuple[Any, ...], Any] = {}
    inventories: list[Any] = []

    def inventory(res: Any) -> Any:
        if not inventories:
            inventories.append(param_inventory(res.model))
        return inventories[0]

    def evaluate(
        method: str, ckpt: bool, layout: str, mesh: tuple[int, int], on: list[GpuSpec]
    ) -> dict[str, int]:
        """Add the candidates of one configuration on the GPUs ``on``; return micro-batches."""
        fields0 = search.fields(method, ckpt, layout, mesh, 1, 1)
        res0 = resolve(EstimateRequest(**{**fields0, "tokens": req.tokens}))
        inv = inventory(res0)
        pkey = (method, res0.training.param_dtype, res0.training.quant)
        pplan = plans.get(pkey)
        if pplan is None:  # the parameter plan does not depend on batch, layout or GPU
            pplan = plans[pkey] = plan_params(res0.model, inv, res0.training)
        dp, pp = res0.parallel.dp, res0.parallel.pp
        cap = -(-G // dp)
        # the peak depends on the accumulation only through "gradients kept between
        # micro-steps" (ga >= 2) and the micro-batches a pipeline stage holds in flight
        # (min(ga, pp)); each micro-batch is estimated with the accumulation it would run
        ga_top = max(2, pp)
        fields0["grad_accum"] = cap
        # DDP replicates everything: its per-rank peak does not depend on the world size
        where = ("any",) if layout == "ddp" else mesh

        def report(b: int, ga: int) -> Any:
            f = search.fields(method, ckpt, layout, mesh, b, ga)
            return search.report((method, ckpt, layout, where, b, min(ga, ga_top)), f)

        def peak(b: int) -> int:
            return int(report(b, -(-cap // b)).peak.device_bytes)

        out: dict[str, int] = {}
        status: Status
        top = max(limits[g.name] for g in on)
        for g in on:
            b = 0 if peak(1) > top else largest_batch(peak, cap, limits[g.name])
            out[g.name] = b
            if b == 0:
                rep = report(1, cap)
                dev = rep.peak.device_bytes + offsets[g.name]
                status = "low_headroom" if dev <= g.memory_bytes else "no_fit"
                candidates.append(
                    _candidate(
                        g,
                        mesh,
                        layout,
                        rep,
                        method,
                        ckpt,
                        0,
                        0,
                        dev,
                        status,
                        f"needs {_gib(dev)} of {_gib(g.memory_bytes)} GiB at micro-batch 1",
                        fields0,
                    )
                )
                continue
            ga = -(-cap // b)
            fields = search.fields(method, ckpt, layout, mesh, b, ga)
            rep = report(b, ga)
            dev = rep.peak.device_bytes + offsets[g.name]
            training = res0.training.model_copy(update={"batch_size": b, "grad_accum": ga})
            res = dataclasses.replace(
                res0, training=training, hardware=res0.hardware.model_copy(update={"gpu": g})
            )
            # the layout changes time and cost only through the compute dtype (DeepSpeed's
            # precision section) and ZeRO-3's sharded dequantisation
            ckey = (method, ckpt, mesh, b, ga, g.name, res0.training.param_dtype,
                    res0.training.mixed_precision, res0.parallel.zero, res0.parallel.pp,
                    res0.parallel.tp)  # fmt: skip
            cost = costs.get(ckey)
            if cost is None:
                cost = costs[ckey] = _cost(res, inv, pplan, [])
            assert cost is not None
            status = "ok"
            reason = ""
            if req.max_usd is not None and cost.cost_usd > req.max_usd:
                status, reason = "over_budget", f"${cost.cost_usd:,.0f} > --max-usd {req.max_usd:g}"
            elif req.max_hours is not None and cost.time_s > req.max_hours * 3600:
                status = "over_budget"
                reason = f"{_hours(cost.time_s)} > --max-hours {req.max_hours:g}"
            cand = _candidate(g, mesh, layout, rep, method, ckpt, b, ga, dev, status, reason,
                              {**fields, "gpu": g.name, "tokens": req.tokens},
                              time_s=cost.time_s, cost_usd=cost.cost_usd,
                              global_batch=b * ga * dp)  # fmt: skip
            candidates.append(cand)
        return out

    meshes = _meshes(req.max_gpus)
    too_wide = [m for m in meshes if m[0] * m[1] > G]
    if too_wide:
        w = too_wide[0][0] * too_wide[0][1]
        excluded.append(f"{w}+ GPUs: more data-parallel ranks than --global-batch {G} sequences")
    meshes = [m for m in meshes if m[0] * m[1] <= G]
    # Largest mesh first: a sharded layout's peak never grows with more shards (DDP's does
    # not change), so a GPU on which micro-batch 1 does not fit at N GPUs cannot fit at fewer.
    meshes.sort(key=lambda m: -m[0] * m[1])
    for method in req.methods:
        for layout in layouts:
            if method != "full" and layout in _PEFT_SKIPS and req.layouts is None:
                continue
            alive = {ckpt: list(gpus) for ckpt in ckpts}
            for mesh in meshes:
                world = mesh[0] * mesh[1]
                if (layout == "single") != (world == 1):
                    continue
                short: set[str] = set(g.name for g in gpus)
                for ckpt in ckpts:
                    on = [g for g in alive[ckpt] if not ckpt or g.name in short]
                    if not on:
                        continue
                    try:
                        bs = evaluate(method, ckpt, layout, mesh, on)
                    except InvalidConfigError as exc:
                        excluded.append(f"{layout} on {world} GPUs, {method}: {exc}")
                        break
                    alive[ckpt] = [g for g in alive[ckpt] if bs.get(g.name, 1) > 0]
                    # checkpointing recomputes the forward: never faster at the same
                    # micro-batch, so it is tried only where the micro-batch falls short
                    cap = -(-G // world)
                    short = {g.name for g in gpus if bs.get(g.name, 0) < cap}
    # tensor/pipeline parallelism only for GPUs on which nothing else fits
    fitting = {c.gpu for c in candidates if c.micro_batch > 0}
    left = [g for g in gpus if g.name not in fitting]
    if left and (req.layouts is None or any("+" in x for x in req.layouts)):
        for method in req.methods:
            for tp in TP_DEGREES:
                if tp > req.max_gpus or tp > G * tp:
                    continue
                try:
                    evaluate(method, True, f"fsdp2_full_shard+tp{tp}", (tp, 1), left)
                except InvalidConfigError:
                    continue
            for mesh in meshes:
                if mesh[1] < 2:
                    continue
                try:
                    evaluate(method, True, f"fsdp2_full_shard+tp8+pp{mesh[1]}", mesh, left)
                except InvalidConfigError:
                    continue
    notes.append(
        "time and cost come from the cost model: FLOPs / (GPUs x peak x MFU); the layout's "
        "communication (all-gathers, reduce-scatters, pipeline bubble) is folded into the MFU"
    )
    if any(m != "full" for m in req.methods) and req.layouts is None:
        notes.append(
            "PEFT: ZeRO-1/2 and FSDP shard_grad_op shard only the adapters' states, as DDP "
            "does not; pass --layouts to evaluate them"
        )
    return _finish(req, candidates, excluded, notes, search, t0, cpu0)


def _candidate(
    g: GpuSpec,
    mesh: tuple[int, int],
    layout: str,
    rep: Any,
    method: str,
    ckpt: bool,
    b: int,
    ga: int,
    dev: int,
    status: Status,
    reason: str,
    fields: dict[str, Any],
    *,
    time_s: float | None = None,
    cost_usd: float | None = None,
    global_batch: int = 0,
) -> PlanCandidate:
    req = {k: v for k, v in fields.items() if v is not None}
    for k in ("lora", "qlora"):
        if k in req and isinstance(req[k], LoraOptions):
            req[k] = req[k].model_dump(exclude_none=True)
    req = {k: (v.value if hasattr(v, "value") else v) for k, v in req.items()}
    req.setdefault("gpu", g.name)
    # model_construct: every value below is already checked (thousands per plan)
    return PlanCandidate.model_construct(
        gpu=g.name,
        gpus_per_node=mesh[0],
        nodes=mesh[1],
        n_gpus=mesh[0] * mesh[1],
        layout=layout,
        method=method,
        grad_ckpt=ckpt,
        micro_batch=b,
        grad_accum=ga,
        global_batch=global_batch,
        time_s=time_s,
        cost_usd=cost_usd,
        peak_device_bytes=dev,
        gpu_memory_bytes=g.memory_bytes,
        headroom_bytes=g.memory_bytes - dev,
        status=status,
        reason=reason,
        pareto=False,
        cheapest=False,
        fastest=False,
        request=req,
    )


def _dominates(a: PlanCandidate, b: PlanCandidate) -> bool:
    """Tell whether ``a`` is no slower, no dearer, leaves no less headroom, and differs."""
    assert a.time_s is not None and a.cost_usd is not None
    assert b.time_s is not None and b.cost_usd is not None
    ka = (a.time_s, a.cost_usd, -a.headroom_bytes)
    kb = (b.time_s, b.cost_usd, -b.headroom_bytes)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb


def pareto_front(cands: list[PlanCandidate]) -> list[PlanCandidate]:
    """Candidates no other dominates in (time, cost); equal time and cost: most headroom."""
    ok = sorted(cands, key=lambda c: (c.cost_usd, c.time_s, -c.headroom_bytes))
    front: list[PlanCandidate] = []
    best_time = float("inf")
    for c in ok:
        assert c.time_s is not None
        if c.time_s < best_time:
            front.append(c)
            best_time = c.time_s
    return front


def _finish(
    req: PlanRequest,
    candidates: list[PlanCandidate],
    excluded: list[str],
    notes: list[str],
    search: _Search,
    t0: float,
    cpu0: float,
) -> PlanReport:
    ok = [c for c in candidates if c.status == "ok"]
    front = pareto_front(ok)
    front_ids = {id(c) for c in front}
    cheapest = front[0] if front else None
    fastest = front[-1] if front else None
    marked: list[PlanCandidate] = []
    for c in candidates:
        upd: dict[str, Any] = {}
        if id(c) in front_ids:
            upd["pareto"] = True
        if c is cheapest:
            upd["cheapest"] = True
        if c is fastest:
            upd["fastest"] = True
        marked.append(c.model_copy(update=upd) if upd else c)
    front = [c for c in marked if c.pareto]
    cheapest = next((c for c in marked if c.cheapest), None)
    fastest = next((c for c in marked if c.fastest), None)
    excluded = list(excluded) + _exclusions(req, marked)
    by_gpu: dict[str, PlanCandidate] = {}
    for c in marked:
        if c.status != "ok":
            continue
        best = by_gpu.get(c.gpu)
        if best is None or (c.n_gpus, c.cost_usd, c.time_s) < (
            best.n_gpus,
            best.cost_usd,
            best.time_s,
        ):
            by_gpu[c.gpu] = c
    smallest = sorted(by_gpu.values(), key=lambda c: (c.cost_usd, c.time_s))
    if not front:
        excluded.append(
            "nothing fits the limits: raise --max-gpus/--max-usd/--max-hours, lower "
            "--min-headroom or --seq-len, or allow --methods qlora"
        )
    elapsed = time.perf_counter() - t0
    n = search.count.estimates
    stats = {
        "seconds": round(elapsed, 4),
        "cpu_seconds": round(time.process_time() - cpu0, 4),
        "estimates": float(search.count.estimates),
        "estimates_per_s": round(n / search.count.estimate_s, 1)
        if search.count.estimate_s
        else 0.0,
        "estimates_per_cpu_s": round(n / search.count.estimate_cpu_s, 1)
        if search.count.estimate_cpu_s
        else 0.0,
        "candidates": float(len(marked)),
    }
    return PlanReport(
        version=__version__,
        model=req.model if isinstance(req.model, str) else str(req.model.get("model_type")),
        task=req.task.value,
        tokens=req.tokens,
        epochs=req.epochs,
        global_batch=req.global_batch,
        seq_len=req.seq_len,
        front=front,
        cheapest=cheapest,
        fastest=fastest,
        smallest=smallest,
        excluded=excluded,
        candidates=marked,
        notes=notes,
        stats=stats,
    )


def _exclusions(req: PlanRequest, cands: list[PlanCandidate]) -> list[str]:
    """One line per common choice that has no candidate left, and why.

    Common choices: one GPU and one 8-GPU node of each type, per method (a line lists the
    GPU types), then each GPU type and method with no fitting candidate at any count.
    """
    out = []
    names = list(dict.fromkeys(c.gpu for c in cands))
    for method in req.methods:
        for n in (1, 8):
            if n > req.max_gpus or n > req.global_batch:
                continue
            at_n = [c for c in cands if c.method == method and c.n_gpus == n]
            ok = {c.gpu for c in at_n if c.status == "ok"}
            over = sorted({c.gpu for c in at_n if c.status == "over_budget"} - ok)
            low = sorted({c.gpu for c in at_n if c.status == "low_headroom"} - ok - set(over))
            nofit = [g for g in names if g not in ok and g not in over and g not in low]
            where = "1 GPU" if n == 1 else f"{n} GPUs (one node)"
            if nofit:
                out.append(f"{method} on {where}: does not fit {', '.join(nofit)}")
            if low:
                out.append(
                    f"{method} on {where}: less than --min-headroom "
                    f"{req.min_headroom:g} GiB free on {', '.join(low)}"
                )
            if over:
                out.append(f"{method} on {where}: over budget on {', '.join(over)}")
    groups: dict[tuple[str, str], list[PlanCandidate]] = {}
    for c in cands:
        groups.setdefault((c.method, c.gpu), []).append(c)
    for method in req.methods:
        dear: list[tuple[float, str]] = []
        never: list[str] = []
        for (m, gpu), cs in groups.items():
            if m != method or any(c.status == "ok" for c in cs):
                continue
            priced = [c.cost_usd for c in cs if c.status == "over_budget" and c.cost_usd]
            if priced:
                dear.append((min(priced), gpu))
            else:
                never.append(gpu)
        if dear:
            dear.sort()
            text = ", ".join(f"{g} (${usd:,.0f})" for usd, g in dear)
            out.append(f"{method} at any count: over budget on {text}")
        if never:
            out.append(
                f"{method} at any count up to {req.max_gpus} GPUs: does not fit {', '.join(never)}"
            )
    return out


# ----------------------------------------------------------------------------- entry point


def _plan_infer(req: PlanRequest) -> PlanReport:
    from vramcalc.plan_infer import plan_infer

    return plan_infer(req)


PLANNERS: dict[Task, Callable[[PlanRequest], PlanReport]] = {
    Task.TRAIN: plan_train,
    Task.INFERENCE: _plan_infer,
}


def plan(request: PlanRequest | Mapping[str, Any] | None = None, /, **kwargs: Any) -> PlanReport:
    """Search the layouts of a job and return the plan (see the module docstring).

    Accepts a ``PlanRequest``, a mapping of its fields, or its fields as keywords:
    ``plan(model="llama-3.1-70b", methods="lora,qlora", tokens=200_000_000)``.
    """
    if request is None:
        request = PlanRequest(**kwargs)
    elif not isinstance(request, PlanRequest):
        request = PlanRequest(**{**dict(request), **kwargs})
    return PLANNERS[request.task](request)


# ----------------------------------------------------------------------------- text


def render_plan(report: PlanReport, *, width: int = 80, rows: int = 12) -> str:
    """Render the plan as plain text in ``width`` columns: the front, then the exclusions."""
    if report.task == Task.INFERENCE.value:
        from vramcalc.plan_infer import render_infer

        return render_infer(report, width=width, rows=rows)
    lines = [
        f"plan: {report.model}, {report.tokens:,} tokens x {report.epochs:g} epoch, "
        f"global batch {report.global_batch} x {report.seq_len} tokens",
    ]
    n_ok = sum(1 for c in report.candidates if c.status == "ok")
    lines.append(
        f"{len(report.candidates)} candidates evaluated, {n_ok} fit the limits, "
        f"{len(report.front)} on the time-vs-cost front"
    )
    lines.append("")
    head = (f"{'':2}{'GPUs':<13}{'layout':<17}{'method':<7}{'ckpt':<5}{'mb x ga':>7}"
            f"{'peak':>6}{'free':>6}{'time':>8}{'USD':>9}")  # fmt: skip
    lines.append(head[:width])
    legend = ["$ cheapest  > fastest  * both; mb x ga: micro-batch x accumulation; peak and",
              "free: GiB per GPU (busiest rank)"]  # fmt: skip
    return render_sections(lines, report, _row, legend, width=width, rows=rows)


def render_sections(
    lines: list[str],
    report: PlanReport,
    row: Callable[[str, PlanCandidate], str],
    legend: list[str],
    *,
    width: int,
    rows: int,
) -> str:
    """Append the front (marked), its legend, the smallest fits, exclusions and notes.

    Shared by the training and the serving renderers, which differ in their header and in
    ``row`` (one candidate's columns).
    """
    for c in report.front[:rows]:
        mark = "$ " if c.cheapest else "> " if c.fastest else "  "
        if c.cheapest and c.fastest:
            mark = "* "
        lines.append(row(mark, c)[:width])
    if len(report.front) > rows:
        lines.append(f"  ... {len(report.front) - rows} more on the front (--json lists all)")
    lines.extend(legend)
    if report.smallest:
        lines.append("")
        lines.append("fewest GPUs per GPU type (cheapest first):")
        for c in report.smallest[: max(rows // 2, 3)]:
            lines.append(row("  ", c)[:width])
    if report.excluded:
        lines.append("")
        lines.append("excluded:")
        for e in report.excluded:
            lines.extend(_wrap("  " + e, width))
    for n in report.notes:
        lines.extend(_wrap("note: " + n, width))
    return "\n".join(line.rstrip() for line in lines)


def _row(mark: str, c: PlanCandidate) -> str:
    gpus = f"{c.n_gpus}x {c.gpu}"
    mbga = f"{c.micro_batch}x{c.grad_accum}"
    usd = f"{c.cost_usd or 0:,.0f}"
    ckpt = "on" if c.grad_ckpt else "off"
    return (
        f"{mark}{gpus:<13.13}{c.layout:<17.17}{c.method:<7}{ckpt:<5}{mbga:>7}"
        f"{_gib(c.peak_device_bytes):>6}{_gib(c.headroom_bytes):>6}"
        f"{_hours(c.time_s or 0):>8}{usd:>9}"
    )


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, subsequent_indent="    ") or [""]
