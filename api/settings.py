"""Service settings, read from ``VRAMCALC_API_*`` environment variables.

``get_settings`` is cached and used as a FastAPI dependency, so tests replace it with
``app.dependency_overrides[get_settings]`` and a running server reads the environment once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vramcalc.limits import DEFAULT_LIMITS

__all__ = ["ENV_PREFIX", "Settings", "get_settings", "load_settings"]

ENV_PREFIX = "VRAMCALC_API_"


class Settings(BaseModel):
    """Limits and switches of the REST service.

    The size and config limits default to the core's (``vramcalc.limits.DEFAULT_LIMITS``),
    which the CLI and the Python API apply too; setting them here overrides them for the
    service. Every limit keeps one request cheap: the engine's cost grows with the number of
    layers (timeline events) and nothing else, and its integers stay small when widths are
    bounded.
    The defaults sit far above the largest published architectures (Llama 3.1 405B: 126
    layers, hidden 16384, intermediate 53248; Gemma: vocab 256000).
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
