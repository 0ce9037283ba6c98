"""The versioned endpoints: estimate, fit, plan, and the catalogs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

import vramcalc
from api.deps import Engine, get_engine
from api.errors import Kind, clip
from api.executor import EngineExecutor, EngineTimeout, Saturated
from api.limits import check_request
from api.schemas import ErrorResponse, Health, ModelDetail, ModelInfo, OptimizerInfo
from api.settings import Settings, get_settings
from api.strict import strict_type_issues
from vramcalc import catalog
from vramcalc.enums import Task
from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError
from vramcalc.plan import PlanReport, PlanRequest
from vramcalc.report import FitReport, MemoryReport
from vramcalc.specs import MAX_SEQ, EstimateRequest, GpuSpec

__all__ = ["router"]

router = APIRouter()
ENGINE_LOGGER = "vramcalc.api.engine"
_engine_log = logging.getLogger(ENGINE_LOGGER)

_E404: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown name (model, GPU, optimizer...)"}
}
_E422: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "Invalid request or impossible combination"}
}
_E400: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Request body is not valid JSON"}
}
_E413: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Request body above the size limit"}
}
_E408: dict[int | str, dict[str, Any]] = {
    408: {
        "model": ErrorResponse,
        "description": "The request body did not arrive within the body timeout",
    }
}
_E503: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "Every engine worker is busy and the queue is full; retry after the "
        "seconds in Retry-After",
        "headers": {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        },
    }
}
_E504: dict[int | str, dict[str, Any]] = {
    504: {"model": ErrorResponse, "description": "The estimate ran past the time budget"}
}
_JSON = "application/json"

SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]


@router.get("/healthz", response_model=Health, tags=["service"])
def healthz() -> Health:
    """Liveness: the process answers and the core imports."""
    return Health(version=vramcalc.__version__)


def get_executor(request: Request) -> EngineExecutor:
    """Return the app's ``EngineExecutor`` (``create_app`` puts it on ``app.state``)."""
    executor: EngineExecutor = request.app.state.executor
    return executor


async def strict_body(request: Request) -> None:
    """Refuse scalars of the wrong JSON type (``"8"``, ``true`` for a number) with a 422.

    It runs before FastAPI validates the body (which would coerce them in pydantic's lax
    mode); the body is read once and cached by the request.
    """
    try:
        data = await request.json()
    except ValueError:  # not JSON (or not UTF-8): the body's own validation answers 400/422
        return
    found = strict_type_issues(EstimateRequest, data)
    if found:
        raise RequestValidationError(found)


ExecutorDep = Annotated[EngineExecutor, Depends(get_executor)]


async def _compute(
    kind: Kind,
    request: EstimateRequest,
    settings: Settings,
    engine: Engine,
    executor: EngineExecutor,
) -> Response:
    check_request(request, settings)
    await _prefetch_hub(request, settings)
    try:
        status, body, log = await executor.run(kind, request, engine)
    except Saturated:
        return JSONResponse(
            {
                "detail": f"the service is busy: {settings.engine_workers} costly estimates are "
                f"running and {settings.max_queued} waiting; retry after "
                f"{settings.retry_after_s} s"
            },
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    except EngineTimeout:
        return JSONResponse(
            {
                "detail": f"the {kind} took longer than the service's budget of "
                f"{settings.request_timeout_s:g} s (VRAMCALC_API_REQUEST_TIMEOUT_S) and was "
                "stopped; ask for fewer layers or run it with the CLI"
            },
            status_code=504,
        )
    if log is not None:
        # an engine bug on odd input: the client got a 422; the log has no request body
        _engine_log.error("%s", log)
    return Response(body, status_code=status, media_type=_JSON)


_POST_ERRORS = {**_E400, **_E404, **_E408, **_E413, **_E422, **_E503, **_E504}


@router.post(
    "/v1/estimate",
    response_model=MemoryReport,
    responses=_POST_ERRORS,
    tags=["estimate"],
    dependencies=[Depends(strict_body)],
)
async def estimate(
    request: EstimateRequest, settings: SettingsDep, engine: EngineDep, executor: ExecutorDep
) -> Response:
    """Peak memory (allocated, reserved, device), breakdown and step timeline of a job.

    The body uses the CLI's long option names in snake_case; ``model`` is a catalog name or
    an inline ``config.json`` object (a Hub repo id only when the ``hub_lookup`` setting is
    on; off by default). The answer equals ``vramcalc ... --json``.

    A cheap estimate (a catalog model: about a millisecond) runs on the event loop; a costly
    one (an inline config with many layers) runs in an engine worker process, at most
    ``engine_workers`` at once: 503 with ``Retry-After`` when they are all busy and the queue
    is full, 504 past the time budget.
    """
    return await _compute("estimate", request, settings, engine, executor)


async def _prefetch_hub(request: EstimateRequest, settings: Settings) -> None:
    """With ``hub_lookup`` on, fetch a Hub id's config in a worker thread, off the event loop.

    The engine then finds it in ``vramcalc.hub``'s in-process cache. A catalog name or an
    inline config (and every request while ``hub_lookup`` is off) makes no network call.
    """
    if not (settings.hub_lookup and isinstance(request.model, str)):
        return
    from vramcalc import hub

    if not hub.looks_like_hub_id(request.model):
        return
    try:
        catalog.model_row(request.model)
    except UnknownNameError:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(hub.lookup, request.model)


@router.post(
    "/v1/fit",
    response_model=FitReport,
    responses=_POST_ERRORS,
    tags=["estimate"],
    dependencies=[Depends(strict_body)],
)
async def fit(
    request: EstimateRequest, settings: SettingsDep, engine: EngineDep, executor: ExecutorDep
) -> Response:
    """Largest micro-batch that fits one ``gpu``, with the verdict and headroom.

    A fit searches over batch sizes (about 20 estimates), so it runs in an engine worker
    process under the same limits as a costly estimate (503 / 504).
    """
    if request.gpu is None:
        raise InvalidConfigError(
            "POST /v1/fit needs 'gpu'; accepted: the names listed by GET /v1/gpus"
        )
    return await _compute("fit", request, settings, engine, executor)


@router.post(
    "/v1/plan",
    response_model=PlanReport,
    responses={**_E400, **_E404, **_E422, **_E413},
    tags=["plan"],
)
def plan(request: PlanRequest, settings: SettingsDep) -> Response:
    """Plan what to rent and how to lay the job out (``vramcalc plan ... --json``).

    ``task: "train"`` (the default) searches training layouts for ``tokens``; ``task:
    "inference"`` searches serving layouts (engine, weight format, TP, replicas) for
    ``prompt_len + new_tokens`` tokens x ``concurrency`` sequences, front of price per hour
    vs a decode throughput proxy.

    Every evaluated candidate (GPU type and count, layout, method, checkpointing,
    micro-batch x accumulation, peak, time, cost), the time-vs-cost front, the cheapest and
    the fastest, and one line per exclusion. A plan runs hundreds of estimates (about a
    second for a 70B model over the catalog), so it runs in a worker thread.
    """
    length = request.seq_len
    if request.task == Task.INFERENCE:  # the longest sequence a serving candidate holds
        length = min((request.prompt_len or 0) + request.new_tokens, MAX_SEQ)
    check_request(EstimateRequest(model=request.model, seq_len=length), settings)
    from vramcalc.plan import plan as run_plan

    report = _run_engine(lambda _: run_plan(request), EstimateRequest(model=request.model))
    return Response(report.model_dump_json(), media_type=_JSON)


_R = TypeVar("_R")


def _run_engine(fn: Callable[[EstimateRequest], _R], request: EstimateRequest) -> _R:
    """Call the engine; an unforeseen error on odd input becomes a 422, logged as an error.

    The engine raises ``VramcalcError`` for every input it knows to be bad. Anything else is
    an engine bug that a client must not see as a 500; it is logged on
    ``vramcalc.api.engine`` (the fuzz test fails on such records).
    """
    try:
        return fn(request)
    except (VramcalcError, ValidationError):
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:
        # the clipped message and the frames, never the request body (api/errors.run_job)
        what = f"{type(exc).__name__}: {clip(str(exc))}"
        _engine_log.error("engine failed: %s", what, exc_info=True)
        raise InvalidConfigError(
            f"this combination cannot be estimated ({what}); please report it with the request"
        ) from exc


def _model_info(row: dict[str, Any]) -> ModelInfo:
    config = row.get("config") or {}
    return ModelInfo(
        name=row["name"],
        aliases=list(row.get("aliases", [])),
        hf_id=row.get("hf_id"),
        model_type=row.get("model_type") or config.get("model_type"),
        n_params=row.get("n_params"),
        source=row.get("source"),
    )


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _rank(row: dict[str, Any], query: str) -> int | None:
    """0 exact, 1 prefix, 2 substring, 3 squashed substring (``llama27b``); None: no match."""
    names = [row["name"], *row.get("aliases", [])]
    if row.get("hf_id"):
        names.append(row["hf_id"])
    lowered = [n.lower() for n in names]
    q = query.lower()
    if q in lowered:
        return 0
    if any(n.startswith(q) or n.split("/")[-1].startswith(q) for n in lowered):
        return 1
    if any(q in n for n in lowered):
        return 2
    sq = _squash(query)
    if sq and any(sq in _squash(n) for n in lowered):
        return 3
    return None


@router.get("/v1/models", response_model=list[ModelInfo], responses=_E422, tags=["catalog"])
def list_models(
    settings: SettingsDep,
    q: Annotated[str, Query(max_length=200, description="search text (name, alias, HF id)")] = "",
    limit: Annotated[int | None, Query(ge=1, le=10_000, description="at most this many")] = None,
) -> list[ModelInfo]:
    """Catalog models, best matches first when ``q`` is given."""
    rows = catalog.model_rows()
    cap = min(limit or settings.max_search_results, settings.max_search_results)
    query = q.strip()
    if not query:
        return [_model_info(r) for r in rows[:cap]]
    ranked = sorted(
        ((rank, i) for i, r in enumerate(rows) if (rank := _rank(r, query)) is not None),
    )
    return [_model_info(rows[i]) for _, i in ranked[:cap]]


@router.get(
    "/v1/models/{name:path}",
    response_model=ModelDetail,
    responses={**_E404, **_E422},
    tags=["catalog"],
)
def get_model(
    name: Annotated[str, Path(max_length=200, description="catalog name, alias or HF id")],
) -> ModelDetail:
    """One catalog model with its config and the resolved architecture (ModelSpec)."""
    from vramcalc.hf import resolve_model

    row = catalog.model_row(name)
    spec = resolve_model(row["name"])
    info = _model_info(row)
    return ModelDetail(**info.model_dump(), config=dict(row.get("config") or {}), spec=spec)


@router.get("/v1/gpus", response_model=list[GpuSpec], tags=["catalog"])
def list_gpus() -> list[GpuSpec]:
    """List the GPU catalog: memory as the device reports it, peak TFLOPS, bandwidth, price."""
    return list(catalog.gpus())


@router.get("/v1/optimizers", response_model=list[OptimizerInfo], tags=["catalog"])
def list_optimizers() -> list[OptimizerInfo]:
    """List accepted ``optim`` values (transformers ``OptimizerNames``) and their state."""
    table: dict[str, dict[str, Any]] = catalog.load("optimizers")["optimizers"]
    out = []
    for name in catalog.optimizer_names():
        row = table[name]
        out.append(
            OptimizerInfo(
                name=name,
                alias_of=row.get("alias_of"),
                source=row.get("source") or catalog.optimizer(name).get("source"),
                properties={k: v for k, v in row.items() if k not in {"alias_of", "source"}},
            )
        )
    return out
