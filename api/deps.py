"""Dependencies: the engine behind the endpoints (replaceable in tests)."""

from __future__ import annotations

from typing import Protocol

from vramcalc.report import FitReport, MemoryReport
from vramcalc.specs import EstimateRequest

__all__ = ["CoreEngine", "Engine", "get_engine"]


class Engine(Protocol):
    """What the endpoints need from the core."""

    def estimate(self, request: EstimateRequest) -> MemoryReport:
        """Return the memory report of one request."""
        ...

    def fit(self, request: EstimateRequest) -> FitReport:
        """Return the largest micro-batch that fits ``request.gpu``, with the verdict."""
        ...


class CoreEngine:
    """The real engine: ``vramcalc.estimate`` and ``vramcalc.fit``."""

    def estimate(self, request: EstimateRequest) -> MemoryReport:
        """Delegate to ``vramcalc.estimate``."""
        from vramcalc import estimate

        return estimate(request)

    def fit(self, request: EstimateRequest) -> FitReport:
        """Delegate to ``vramcalc.fit``."""
        from vramcalc import fit

        return fit(request)


_ENGINE = CoreEngine()


async def get_engine() -> Engine:
    """FastAPI dependency for the engine (override it in tests).

    It is ``async`` so FastAPI calls it on the event loop instead of a worker thread.
    """
    return _ENGINE
