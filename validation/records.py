"""Scenario and measurement records shared by the trace and CUDA backends.

A scenario is an ``EstimateRequest`` (the same input the estimator takes) plus an id and
implementation details a real run must pin (optimizer implementation, steps). A measurement
is one JSON line in ``validation/measurements/*.jsonl``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vramcalc.specs import EstimateRequest

__all__ = ["Fingerprint", "Measured", "Measurement", "Scenario"]


class Scenario(BaseModel):
    """One case to measure: the estimator's request plus how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    request: EstimateRequest
    steps: int = Field(default=2, ge=1, description="training steps (2 = first + steady)")
    optim_impl: Literal["foreach", "fused", "for-loop", "default"] = Field(
        default="default",
        description="torch optimizer implementation; 'default' = what a real CUDA run picks",
    )


class Fingerprint(BaseModel):
    """Where a measurement was taken."""

    model_config = ConfigDict(extra="allow")

    backend: Literal["trace", "cuda"]
    device: str = Field(description="GPU name, or 'fake-cuda (CPU trace)'")
    driver: str | None = None
    cuda: str | None = None
    torch: str
    transformers: str
    peft: str | None = None
    bitsandbytes: str | None = None
    deepspeed: str | None = None
    python: str
    host: str | None = None


class Measured(BaseModel):
    """The measured peaks of a scenario (bytes; ``None`` where the backend cannot know)."""

    model_config = ConfigDict(extra="forbid")

    allocated_bytes: int
    reserved_bytes: int | None = None
    device_bytes: int | None = None
    context_bytes: int | None = None
    phase: str = Field(description="phase of the allocated peak: forward/loss/backward/optimizer")
    step: int = Field(description="step of the allocated peak (1-based)")
    peak_event: str | None = Field(
        default=None,
        description="distributed traces: the last FSDP/module event before the peak "
        "(e.g. 'backward model.layers.0')",
    )
    per_phase_peak: dict[str, int] = Field(
        default_factory=dict, description="'<step>/<phase>' -> allocated peak in that phase"
    )
    by_category: dict[str, int] = Field(
        default_factory=dict,
        description="bytes at the peak: params, gradients, optimizer, activations, temporaries",
    )


class Measurement(BaseModel):
    """One line of ``validation/measurements/*.jsonl``."""

    model_config = ConfigDict(extra="forbid")

    scenario: Scenario
    fingerprint: Fingerprint
    measured: Measured
    created: str = Field(description="ISO 8601 UTC timestamp")
    wall_s: float | None = None
    error: str | None = None
    trainer: str | None = Field(
        default=None, description="TRL trainer of the scenario (trace-trl.jsonl lines)"
    )
