"""Request checks the service adds on top of ``EstimateRequest``'s own bounds.

``EstimateRequest`` bounds batch, sequence, GPUs and PEFT sizes. Here the service also
refuses model strings that are not catalog names (it never opens a path a client names) and
caps the size fields of an inline ``config.json`` so no request makes the engine walk
thousands of layers or build huge integers.
"""

from __future__ import annotations

import math
from typing import Any

from api.settings import Settings
from vramcalc import catalog
from vramcalc.errors import VramcalcError
from vramcalc.specs import EstimateRequest

__all__ = ["LimitExceededError", "check_request", "config_caps"]

# Integers under keys no category names must still be sane (2**53: exact in JSON doubles).
GENERIC_INT_CAP = 1 << 53
MAX_DEPTH = 8


class LimitExceededError(VramcalcError):
    """A request field is above the service's configured limit (HTTP 422)."""


def _category(key: str) -> str | None:
    k = key.lower()
    if "layers" in k or k in {"n_layer", "num_layer"}:
        return "max_layers"
    if "experts" in k:
        return "max_experts"
    if "vocab" in k:
        return "max_vocab_size"
    if "heads" in k or k in {"n_head", "n_head_kv", "num_head", "num_kv_heads"}:
        return "max_heads"
    if "intermediate" in k or "ffn" in k or k in {"n_inner", "d_ff", "ffn_hidden_size"}:
        return "max_intermediate_size"
    if "position" in k or k in {"n_positions", "n_ctx", "seq_length", "max_seq_len"}:
        return "max_position_embeddings"
    if "hidden_size" in k or k in {"n_embd", "d_model", "dim", "head_dim", "d_kv", "kv_channels"}:
        return "max_hidden_size"
    return None


def config_caps(settings: Settings) -> dict[str, int]:
    """Return the caps applied to inline configs, by setting name."""
    return {
        name: int(getattr(settings, name))
        for name in (
            "max_layers",
            "max_experts",
            "max_vocab_size",
            "max_heads",
            "max_intermediate_size",
            "max_position_embeddings",
            "max_hidden_size",
        )
    }


def _walk(node: Any, path: str, depth: int, caps: dict[str, int], budget: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise LimitExceededError(f"inline config nested deeper than {MAX_DEPTH} levels at {path}")
    if isinstance(node, dict):
        budget[0] -= len(node)
        if budget[0] < 0:
            raise LimitExceededError("inline config has too many keys")
        for key, value in node.items():
            where = f"{path}.{key}"
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                _check_number(str(key), value, where, caps)
            elif isinstance(value, dict | list):
                _walk(value, where, depth + 1, caps, budget)
    elif isinstance(node, list):
        budget[0] -= len(node)
        if budget[0] < 0:
            raise LimitExceededError("inline config has too many list items")
        for i, value in enumerate(node):
            if isinstance(value, dict | list):
                _walk(value, f"{path}[{i}]", depth + 1, caps, budget)
            elif isinstance(value, float) and not math.isfinite(value):
                raise LimitExceededError(f"{path}[{i}] must be a finite number")


def _check_number(key: str, value: int | float, where: str, caps: dict[str, int]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitExceededError(f"{where} must be a finite number, got {value}")
    category = _category(key)
    cap = caps[category] if category is not None else GENERIC_INT_CAP
    if abs(value) > cap:
        hint = f" (setting VRAMCALC_API_{category.upper()})" if category else ""
        raise LimitExceededError(f"{where}={value} is above the service limit of {cap}{hint}")


def check_request(request: EstimateRequest, settings: Settings) -> None:
    """Refuse what the service will not compute.

    Raises:
        UnknownNameError: ``model`` is a string that is not a catalog name or alias
            (paths are never opened by the service).
        LimitExceededError: an inline config is too large, too deep or has a size field
            above the configured caps.

    """
    if isinstance(request.model, str):
        catalog.model_row(request.model)
    else:
        _walk(request.model, "model", 0, config_caps(settings), [settings.max_config_keys])
    for name in ("deepspeed", "accelerate_config"):
        section = getattr(request, name)
        if section is not None:
            _walk(
                section,
                name,
                0,
                {k: GENERIC_INT_CAP for k in config_caps(settings)},
                [settings.max_config_keys],
            )
