"""A stand-in engine for the HTTP-layer tests."""

from __future__ import annotations

from vramcalc.enums import Phase
from vramcalc.report import (
    Breakdown,
    FitReport,
    MemoryReport,
    ModelSummary,
    Peak,
    TimelineEvent,
)
from vramcalc.specs import EstimateRequest

MIB = 2**20


class StubEngine:
    """Answers with a fixed, hand-made report and records the requests it saw.

    It lets the HTTP layer (routing, validation, error mapping, serialization) be tested
    independently of the engine's numbers.
    """

    def __init__(self) -> None:
        self.seen: list[EstimateRequest] = []

    def report(self, request: EstimateRequest) -> MemoryReport:
        name = request.model if isinstance(request.model, str) else "inline"
        events = [
            TimelineEvent(
                step=1,
                phase=Phase.LOAD,
                event="weights loaded",
                allocated_bytes=100 * MIB,
                components={"params": 100 * MIB},
            ),
            TimelineEvent(
                step=1,
                phase=Phase.FORWARD,
                event="forward end",
                allocated_bytes=300 * MIB,
                components={"params": 100 * MIB, "activations": 200 * MIB},
            ),
            TimelineEvent(
                step=2,
                phase=Phase.OPTIMIZER,
                event="optimizer step",
                allocated_bytes=500 * MIB,
                components={"params": 100 * MIB, "gradients": 100 * MIB, "optimizer": 300 * MIB},
            ),
        ]
        return MemoryReport(
            version="stub",
            model=ModelSummary(name=name, model_type="gpt2", n_params=10, n_trainable_params=10),
            peak=Peak(
                allocated_bytes=500 * MIB,
                reserved_bytes=520 * MIB,
                device_bytes=1020 * MIB,
                phase=Phase.OPTIMIZER,
                event="optimizer step",
                step=2,
            ),
            breakdown=Breakdown(
                base=500 * MIB,
                params=100 * MIB,
                activations=20 * MIB,
                gradients=100 * MIB,
                optimizer=300 * MIB,
            ),
            details={"params/weights": 100 * MIB},
            timeline=events,
            cpu_bytes=0,
        )

    def estimate(self, request: EstimateRequest) -> MemoryReport:
        self.seen.append(request)
        return self.report(request)

    def fit(self, request: EstimateRequest) -> FitReport:
        self.seen.append(request)
        return FitReport(
            gpu=request.gpu or "",
            gpu_memory_bytes=16 * 2**30,
            usable_bytes=15 * 2**30,
            fits=True,
            headroom_bytes=14 * 2**30,
            max_batch_size=8,
        )
