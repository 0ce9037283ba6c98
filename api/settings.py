"""Service settings, read from ``VRAMCALC_API_*`` environment variables.

``get_settings`` is cached and used as a FastAPI dependency, so tests replace it with
``app.dependency_overrides[get_settings]`` and a running server reads the environment once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vramcalc.limits import DEFAULT_LIMITS

__all__ = ["ENV_PREFIX", "Settings", "default_engine_workers", "get_settings", "load_settings"]

ENV_PREFIX = "VRAMCALC_API_"


def default_engine_workers(cpus: int | None) -> int:
    """One worker per CPU but one (kept for the event loop), at least 1 and at most 4."""
    return max(1, min(4, (cpus or 2) - 1))


class Settings(BaseModel):
    """Limits and switches of the REST service.

    The size and config limits default to the core's (``vramcalc.limits.DEFAULT_LIMITS``),
    which the CLI and the Python API apply too; setting them here overrides them for the
    service. Every limit keeps one request cheap: the engine's cost grows with the number of
    layers (timeline events) and nothing else, and its integers stay small when widths are
    bounded.
    The defaults sit far above the largest published architectures (Llama 3.1 405B: 126
    layers, hidden 16384, intermediate 53248; Gemma: vocab 256000).

    The rest keep the service responsive: estimates that cost more than
    ``inline_max_layer_evals`` run in ``engine_workers`` worker processes (at most that many
    at once, ``max_queued`` more waiting, 503 + ``Retry-After`` beyond, 504 past
    ``request_timeout_s``), and connections that do not send their headers or body in time,
    or sit idle, are closed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(
        default=256 * 1024, gt=0, description="largest accepted request body (413 above)"
    )
    max_hidden_size: int = Field(default=DEFAULT_LIMITS.max_hidden_size, gt=0)
    max_intermediate_size: int = Field(default=DEFAULT_LIMITS.max_intermediate_size, gt=0)
    max_layers: int = Field(
        default=DEFAULT_LIMITS.max_layers, gt=0, description="num_hidden_layers and friends"
    )
    max_heads: int = Field(default=DEFAULT_LIMITS.max_heads, gt=0)
    max_vocab_size: int = Field(default=DEFAULT_LIMITS.max_vocab_size, gt=0)
    max_experts: int = Field(default=DEFAULT_LIMITS.max_experts, gt=0)
    max_position_embeddings: int = Field(default=DEFAULT_LIMITS.max_position_embeddings, gt=0)
    max_config_keys: int = Field(
        default=DEFAULT_LIMITS.max_config_keys, gt=0, description="keys in an inline config"
    )
    max_search_results: int = Field(default=100, gt=0)
    hub_lookup: bool = Field(
        default=False,
        description="accept Hugging Face Hub repo ids (org/name[@revision]) as 'model' and "
        "fetch their config.json through huggingface_hub (network, HF_TOKEN and cache of the "
        "server process); off by default: the service then makes no network calls",
    )
    # --- work per request (api/executor.py) ---
    engine_workers: int = Field(
        default_factory=lambda: default_engine_workers(os.cpu_count()),
        gt=0,
        le=256,
        description="costly estimates computed at once (worker processes; default: one fewer "
        "than the CPUs, 1 to 4); more wait or get 503",
    )
    engine_isolation: Literal["process", "thread"] = Field(
        default="process",
        description="run expensive estimates in worker processes (killed past the timeout) "
        "or in threads (they finish their work, the client gets the timeout answer)",
    )
    engine_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness added to the worker processes, so the event loop wins a core",
    )
    max_queued: int = Field(
        default=4, ge=0, description="expensive requests that may wait for a worker; more get 503"
    )
    queue_timeout_s: float = Field(
        default=2.0, gt=0, le=600, description="longest wait for a worker before 503"
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="compute budget of one estimate; 504 beyond it"
    )
    retry_after_s: int = Field(default=1, gt=0, le=3600, description="Retry-After of a 503")
    inline_max_layer_evals: int = Field(
        default=128,
        ge=0,
        description="estimates costing at most this many layer walks (layers, x20 for a fit "
        "search) run on the event loop; costlier ones go to the engine workers",
    )
    # --- connections (api/protocol.py, uvicorn) ---
    header_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="a request line and headers must arrive within this"
    )
    body_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="the whole body must arrive within this (408)"
    )
    keep_alive_timeout_s: int = Field(
        default=5, gt=0, le=600, description="an idle keep-alive connection is closed after this"
    )
    max_header_bytes: int = Field(
        default=64 * 1024, gt=0, description="request line + headers above this get 431"
    )
    max_connections: int = Field(
        default=1000, gt=0, description="open connections per worker; more are closed at once"
    )
    max_echo_chars: int = Field(
        default=200, gt=0, description="user strings echoed in an error are cut to this (…)"
    )
    access_log: bool = Field(default=True, description="one JSON line per request")
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``VRAMCALC_API_<FIELD>`` variables (e.g. ``..._MAX_LAYERS``).

        Raises:
            ValueError: a variable names no setting or holds a bad value.

        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field not in cls.model_fields:
                accepted = ", ".join(ENV_PREFIX + f.upper() for f in sorted(cls.model_fields))
                raise ValueError(f"unknown setting {key}; accepted: {accepted}")
            values[field] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"bad {ENV_PREFIX}* setting: {exc}") from exc


@cache
def load_settings() -> Settings:
    """Return the process-wide settings (read from the environment once)."""
    return Settings.from_env()


async def get_settings() -> Settings:
    """FastAPI dependency for the settings (override it in tests).

    It is ``async`` so FastAPI calls it on the event loop instead of a worker thread.
    """
    return load_settings()
