"""Response models that only the service needs; requests and reports reuse the core's models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vramcalc.specs import ModelSpec

__all__ = [
    "ErrorResponse",
    "Health",
    "ModelDetail",
    "ModelInfo",
    "OptimizerInfo",
    "ValidationIssue",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValidationIssue(_Out):
    """One problem pydantic found in a request."""

    loc: list[str | int] = Field(description="where: body, field, index...")
    msg: str
    type: str


class ErrorResponse(_Out):
    """Every 4xx answer: ``detail`` says what was wrong and what is accepted."""

    detail: str | list[ValidationIssue]
    closest: str | None = Field(default=None, description="closest accepted name, if any")
    accepted: list[str] | None = Field(
        default=None, description="accepted names, if a name was unknown"
    )


class Health(_Out):
    """``GET /healthz``."""

    status: Literal["ok"] = "ok"
    version: str


class ModelInfo(_Out):
    """One catalog model, as listed by ``GET /v1/models``."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    hf_id: str | None = None
    model_type: str | None = None
    n_params: int | None = None
    source: str | None = None


class ModelDetail(ModelInfo):
    """``GET /v1/models/{name}``: the catalog row, its config and the resolved architecture."""

    config: dict[str, Any] = Field(default_factory=dict, description="the config.json fields kept")
    spec: ModelSpec


class OptimizerInfo(_Out):
    """One accepted ``optim`` value and how its state is laid out."""

    name: str
    alias_of: str | None = None
    source: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict, description="the catalog row")
