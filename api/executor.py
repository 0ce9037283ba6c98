"""Where an estimate runs: cheap ones on the event loop, costly ones in worker processes.

Why processes and not a thread pool: an estimate is pure-Python CPU work that holds the GIL.
In threads, every costly estimate would compete with the event loop for the GIL (the loop
waits up to the 5 ms switch interval each time it wants it back, several times per request),
so ``/healthz`` slows down with every estimate in flight, and an estimate past its time budget
cannot be stopped: it keeps its core until it is done. In worker processes the event loop
keeps its own interpreter, the operating system shares the cores fairly, and a worker past the
budget is killed and replaced. The price is a pipe round trip (a few hundred microseconds)
and one interpreter per worker (~40 MB), so only estimates whose cost exceeds
``Settings.inline_max_layer_evals`` go there; a catalog-model estimate (at most ~100 layers,
a few milliseconds) stays on the event loop, where a pipe hop would cost more than the work.

Bounds: at most ``engine_workers`` costly estimates run at once, ``max_queued`` more wait up to
``queue_timeout_s``; beyond that the answer is 503 with ``Retry-After`` at once, so a flood of
costly requests cannot queue without bound or slow the cheap routes. One estimate may run
``request_timeout_s``: then the client gets 504 and the worker is killed.

Engines other than the core's (the tests' stubs) cannot be sent to another process; they run
in threads under the same limits (``engine_isolation="thread"`` does that for the core too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from api.deps import CoreEngine, Engine
from api.errors import JobResult, Kind, run_job
from api.settings import Settings
from vramcalc.limits import Limits, current_limits, use_limits
from vramcalc.specs import EstimateRequest

__all__ = [
    "FIT_COST_FACTOR",
    "EngineExecutor",
    "EngineTimeout",
    "Saturated",
    "layer_evals",
]

_log = logging.getLogger("vramcalc.api.executor")

# fit() searches the batch size: doubling up to the first batch that does not fit, then
# bisecting (vramcalc.engine.fit); about 20 estimates for the usual answers.
FIT_COST_FACTOR = 20
_LAYER_KEYS = ("layers", "n_layer", "num_layer")


class Saturated(Exception):
    """No engine worker for this request (all busy, queue full or wait over; or lost): 503."""


class EngineTimeout(Exception):
    """An estimate ran past ``request_timeout_s``: HTTP 504."""


def _layers(config: Mapping[str, Any]) -> int:
    """Sum of the layer counts in a config (decoder + encoder layers of seq2seq models)."""
    total = 0
    for key, value in config.items():
        k = str(key).lower()
        if (
            any(tag in k for tag in _LAYER_KEYS)
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            total += max(value, 0)
        elif isinstance(value, Mapping) and k.endswith("_config"):  # text_config of VLMs
            total += _layers(value)
    return total


def layer_evals(request: EstimateRequest, kind: Kind) -> int:
    """How many layer walks a request costs: its layers, times ``FIT_COST_FACTOR`` for a fit.

    Catalog names are resolved through the catalog (the service refuses other strings before
    this is called). Unknown layer counts count as one layer: the engine will refuse them.
    """
    from vramcalc import catalog

    if isinstance(request.model, str):
        from vramcalc.errors import UnknownNameError

        try:
            config = catalog.model_row(request.model).get("config") or {}
        except UnknownNameError:
            # a Hub id (hub_lookup on): its config was fetched and cached in this process
            from vramcalc.hf import resolve_model

            config = {"num_hidden_layers": resolve_model(request.model).num_hidden_layers}
    else:
        config = request.model
    layers = max(_layers(config), 1)
    return layers * (FIT_COST_FACTOR if kind == "fit" else 1)


# ----------------------------------------------------------------------------- worker side


def _worker_main(conn: Connection, nice: int = 0) -> None:
    """Body of one engine worker process: answer (kind, request JSON) until the pipe closes."""
    # Ctrl-C in a terminal reaches the whole process group: the parent stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice and hasattr(os, "nice"):
        # Below the event loop's priority: when both want a core, the loop (healthz, cheap
        # estimates) gets it; the workers still use every idle cycle.
        with contextlib.suppress(OSError):
            os.nice(nice)
    engine = CoreEngine()
    with contextlib.suppress(Exception):  # warm the catalogs before the first real job
        engine.estimate(EstimateRequest(model="gpt2"))
    conn.send("ready")
    while True:
        try:
            kind, payload, limit, limits = conn.recv()
        except (EOFError, OSError):
            return
        request = EstimateRequest.model_validate_json(payload)
        # the service's limits (set for the request in the server) hold in the worker too
        with use_limits(Limits.model_validate_json(limits)):
            conn.send(run_job(engine, kind, request, limit))


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection

    def kill(self) -> None:
        """SIGKILL; the process is reaped by ``join`` (or by multiprocessing later)."""
        with contextlib.suppress(Exception):
            self.conn.close()
        if self.process.is_alive():
            self.process.kill()


def _spawn_worker(nice: int = 0) -> _Worker:
    """Start one worker (a fresh interpreter: ``spawn`` is safe in a threaded parent)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=_worker_main, args=(child, nice), name="vramcalc-engine", daemon=True)
    proc.start()
    child.close()
    if not parent.poll(60) or parent.recv() != "ready":
        proc.kill()
        raise RuntimeError("engine worker did not start")
    return _Worker(proc, parent)


# ----------------------------------------------------------------------------- parent side


class EngineExecutor:
    """Runs estimates under the service's limits; one per app (and per event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._starting: Future[None] | None = None

    @property
    def _threads(self) -> ThreadPoolExecutor:
        """Threads for thread-isolated jobs and for spawning workers (made again after close)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.settings.engine_workers + 2,
                    thread_name_prefix="vramcalc-engine",
                )
            return self._pool

    # --- lifecycle

    def start(self) -> None:
        """Start the worker processes now (blocking; ``start_background`` does not block)."""
        if self.settings.engine_isolation != "process":
            return
        with self._lock:
            missing = self.settings.engine_workers - len(self._all)
        nice = self.settings.engine_nice
        workers = list(self._threads.map(lambda _: _spawn_worker(nice), range(missing)))
        with self._lock:
            closed = self._pool is None
            if not closed:
                self._all += workers
                self._idle += workers
        if closed:  # close() ran meanwhile
            for w in workers:
                w.kill()

    def start_background(self) -> None:
        """Start the workers in a thread; the server answers (``/healthz``) meanwhile.

        The first costly request waits for them instead of spawning its own.
        """
        if self.settings.engine_isolation == "process" and self._starting is None:
            self._starting = self._threads.submit(self.start)

    def wait_started(self, timeout: float | None = None) -> None:
        """Block until a ``start_background`` has finished (no-op without one)."""
        if self._starting is not None:
            self._starting.result(timeout)

    def close(self) -> None:
        """Stop every worker process and the thread pool."""
        self._starting = None
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for w in workers:
            w.kill()
        for w in workers:
            w.process.join(timeout=5)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (the flood benchmark adds their memory)."""
        with self._lock:
            return [w.process.pid for w in self._all if w.process.pid is not None]

    # --- running

    def _bind(self) -> asyncio.Semaphore:
        """Return the running loop's slot semaphore (a test client may bring a new loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._slots is None:
            self._loop = loop
            self._slots = asyncio.Semaphore(self.settings.engine_workers)
            self._waiting = 0
        return self._slots

    async def run(self, kind: Kind, request: EstimateRequest, engine: Engine) -> JobResult:
        """Compute one estimate or fit; (status, JSON body, text to log or None).

        Raises:
            Saturated: no worker free and the queue full, or the wait ran out (503).
            EngineTimeout: the computation ran past ``request_timeout_s`` (504).

        """
        s = self.settings
        limit = s.max_echo_chars
        if layer_evals(request, kind) <= s.inline_max_layer_evals:
            return run_job(engine, kind, request, limit)
        slots = self._bind()
        if slots.locked():
            if self._waiting >= s.max_queued:
                raise Saturated
            self._waiting += 1
            try:
                async with asyncio.timeout(s.queue_timeout_s):
                    await slots.acquire()
            except TimeoutError:
                raise Saturated from None
            finally:
                self._waiting -= 1
        else:
            await slots.acquire()
        in_process = s.engine_isolation == "process" and isinstance(engine, CoreEngine)
        if not in_process:
            return await self._run_in_thread(slots, engine, kind, request, limit)
        try:
            return await self._run_in_process(kind, request, limit)
        finally:
            slots.release()

    async def _run_in_thread(
        self, slots: asyncio.Semaphore, engine: Engine, kind: Kind, request: Any, limit: int
    ) -> JobResult:
        loop = asyncio.get_running_loop()
        # copy the request's context: the service's limits (a ContextVar) hold in the thread
        ctx = contextvars.copy_context()
        future = loop.run_in_executor(
            self._threads, ctx.run, run_job, engine, kind, request, limit
        )
        # A thread cannot be stopped: its slot is freed when it finishes, not at the timeout.
        future.add_done_callback(lambda _: slots.release())
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise EngineTimeout from None

    async def _take_worker(self) -> _Worker:
        starting = self._starting
        if starting is not None and not starting.done():
            with contextlib.suppress(Exception):  # a failed start: spawn below instead
                await asyncio.wrap_future(starting)
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is not None and worker.process.is_alive():
            return worker
        if worker is not None:  # died between jobs: replace it
            self._forget(worker)
        new = await asyncio.get_running_loop().run_in_executor(
            self._threads, _spawn_worker, self.settings.engine_nice
        )
        with self._lock:
            self._all.append(new)
        return new

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.kill()

    async def _run_in_process(self, kind: Kind, request: EstimateRequest, limit: int) -> JobResult:
        loop = asyncio.get_running_loop()
        worker = await self._take_worker()
        ready = loop.create_future()
        fd = worker.conn.fileno()
        ok = False
        try:
            worker.conn.send(
                (kind, request.model_dump_json(), limit, current_limits().model_dump_json())
            )

            def readable() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, readable)
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    await ready
            finally:
                loop.remove_reader(fd)
            result: JobResult = worker.conn.recv()
            ok = True
            return result
        except TimeoutError:
            _log.warning(
                "%s ran past %.1f s: engine worker %s killed",
                kind,
                self.settings.request_timeout_s,
                worker.process.pid,
            )
            raise EngineTimeout from None
        except (EOFError, OSError) as exc:  # the worker died mid-job (killed, out of memory);
            # TimeoutError is an OSError too: it is caught above
            _log.error("engine worker %s lost during a %s: %r", worker.process.pid, kind, exc)
            raise Saturated from None
        finally:
            if ok:
                with self._lock:
                    self._idle.append(worker)
            else:  # timed out, cancelled (client gone) or crashed: the worker's state is unknown
                self._forget(worker)
                self._threads.submit(worker.process.join, 5)
