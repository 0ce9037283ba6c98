"""Bounds on every input, shared by the CLI, the Python API and the REST service.

The cost of one estimate grows with the number of layers (timeline events) and its integers
grow with the widths, so every size field of a model config is capped, every number must be
finite, and a config (file or inline object) is bounded in bytes, depth and keys. The
defaults sit far above the largest published architectures (Llama 3.1 405B: 126 layers,
hidden 16384, intermediate 53248; Gemma: vocab 256000; DeepSeek-V3: 256 routed experts).

The REST service overrides them from its settings (``VRAMCALC_API_MAX_LAYERS``, ...) with
``use_limits``/``set_limits``; the CLI and the Python API use ``DEFAULT_LIMITS``.

``load_json`` is the one JSON reader for files a user names (``config.json``, DeepSpeed
configs): it refuses too deep or too large input before the parser can recurse, and keeps
huge integers and non-finite numbers as markers that ``check_tree`` names by key.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vramcalc.errors import InvalidConfigError

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_BATCH",
    "MAX_GPUS",
    "MAX_IMAGES",
    "MAX_IMAGE_SIDE",
    "MAX_INT",
    "MAX_NAME_CHARS",
    "MAX_SEQ",
    "MIN_MFU",
    "SIZE_LIMITS",
    "LimitExceededError",
    "Limits",
    "check_model_sizes",
    "check_tree",
    "current_limits",
    "load_json",
    "set_limits",
    "size_category",
    "use_limits",
]

# Request-level bounds (static: pydantic field bounds of EstimateRequest).
MAX_BATCH = 1 << 16
"""Largest micro-batch a request may ask for, and the cap of the ``--max-batch`` search."""
MAX_SEQ = 1 << 22
MAX_IMAGES = 1 << 12
"""Most images per training row (``--images``)."""
MAX_IMAGE_SIDE = 1 << 15
"""Longest image side in pixels (``--image-size``)."""
MAX_GPUS = 1 << 16
MAX_INT = 1 << 53
"""Integers under keys no size category names (2**53: exact in JSON doubles)."""
MAX_NAME_CHARS = 4096
"""A model, GPU or optimizer name, or a path (Linux PATH_MAX)."""
MIN_MFU = 1e-3
"""The smallest accepted MFU (0.1 %). Published training runs sit at 0.2-0.6 and offload-bound
jobs at a few percent; below 0.1 % a time is no longer a planning figure, and as MFU tends to
0 the time and cost diverge (``--mfu 5e-324`` gave an infinite time). Refused, not clamped:
a clamped value would print a figure for an input the user did not give."""

SIZE_LIMITS = (
    "max_layers",
    "max_experts",
    "max_vocab_size",
    "max_heads",
    "max_intermediate_size",
    "max_position_embeddings",
    "max_hidden_size",
)


class LimitExceededError(InvalidConfigError):
    """An input is above a configured limit, too deep, too large or not finite (HTTP 422)."""


class Limits(BaseModel):
    """Caps on model sizes and config shapes (the REST settings of the same names override them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_hidden_size: int = Field(default=1 << 17, gt=0, description="hidden_size, head_dim")
    max_intermediate_size: int = Field(default=1 << 20, gt=0)
    max_layers: int = Field(default=1024, gt=0, description="num_hidden_layers and friends")
    max_heads: int = Field(default=4096, gt=0)
    max_vocab_size: int = Field(default=1 << 22, gt=0)
    max_experts: int = Field(default=1024, gt=0, description="experts and experts per token")
    max_position_embeddings: int = Field(default=1 << 24, gt=0)
    max_config_keys: int = Field(default=1000, gt=0, description="keys and list items in all")
    max_config_depth: int = Field(
        default=8, gt=0, description="objects/lists nested below the top-level object"
    )
    max_config_bytes: int = Field(default=1 << 20, gt=0, description="a config file's size")


DEFAULT_LIMITS = Limits()
_CURRENT: ContextVar[Limits] = ContextVar("vramcalc_limits", default=DEFAULT_LIMITS)


def current_limits() -> Limits:
    """Return the limits in force (``DEFAULT_LIMITS`` unless a caller set others)."""
    return _CURRENT.get()


def set_limits(limits: Limits) -> Token[Limits]:
    """Set the limits for the current context (a request); returns the token to reset them."""
    return _CURRENT.set(limits)


@contextmanager
def use_limits(limits: Limits) -> Iterator[Limits]:
    """Run a block under other limits, e.g. ``Limits(max_layers=4096)``."""
    token = _CURRENT.set(limits)
    try:
        yield limits
    finally:
        _CURRENT.reset(token)


def size_category(key: str) -> str | None:
    """Return the ``Limits`` field that caps a config key (``n_layer``: ``max_layers``)."""
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


# ----------------------------------------------------------------------------- JSON files


class _HugeInt:
    """An integer literal too long to be a size (kept as its digit count, never converted)."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"a {self.digits}-digit integer"


_MAX_INT_DIGITS = 40  # longer literals are never converted (int(str) is quadratic)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _parse_int(text: str) -> int | _HugeInt:
    return _HugeInt(text) if len(text) > _MAX_INT_DIGITS else int(text)


def _nesting(text: str) -> int:
    """Deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load_json(path: str | Path, what: str, limits: Limits | None = None) -> Any:
    """Read a JSON file a user named, within the limits.

    Args:
        path: the file.
        what: how messages name it (``--deepspeed``, ``config.json``).
        limits: the bounds; default ``current_limits()``.

    Returns:
        The parsed value; integers longer than 40 digits are ``_HugeInt`` markers and
        ``NaN``/``Infinity``/``1e400`` are non-finite floats, both refused by ``check_tree``
        with the key that holds them.

    Raises:
        VramcalcError: no such file, unreadable, too large, too deep, or not JSON.

    """
    lim = limits or current_limits()
    p = Path(path).expanduser()
    try:
        if not p.is_file():
            raise InvalidConfigError(f"{what}: no such file: '{_clip(str(p))}'")
        size = p.stat().st_size
        if size > lim.max_config_bytes:
            raise LimitExceededError(
                f"{what}: '{_clip(str(p))}' is {size} bytes; accepted: at most "
                f"{lim.max_config_bytes} (max_config_bytes)"
            )
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidConfigError):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidConfigError(f"{what}: cannot read '{_clip(str(p))}': {reason}") from None
    # the top-level object is level 0, so max_config_depth levels below it are depth + 1
    if _nesting(text) > lim.max_config_depth + 1:
        raise LimitExceededError(
            f"{what}: '{_clip(str(p))}' is nested deeper than {lim.max_config_depth} levels "
            "(max_config_depth)"
        )
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(
            f"{what}: '{_clip(str(p))}' is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    except RecursionError:  # unreachable after _nesting; kept as a guard
        raise LimitExceededError(f"{what}: '{_clip(str(p))}' is nested too deeply") from None


def _clip(text: str, n: int = 120) -> str:
    """Shorten a user's text for a message (names and paths may be huge)."""
    return text if len(text) <= n else f"{text[: n - 3]}... ({len(text)} characters)"


# ----------------------------------------------------------------------------- trees


def check_tree(
    node: Any, where: str, limits: Limits | None = None, *, sizes: bool = True
) -> None:
    """Refuse a config tree (parsed JSON or a Python object) outside the limits.

    Checks depth, the number of keys and list items, that every number is finite, that no
    integer is a ``_HugeInt``, and (``sizes``) that size keys are within their category's cap;
    other integers must stay within 2**53. Iterative: a deep tree cannot exhaust the stack.

    Args:
        node: the config (a dict, usually).
        where: its name in messages: a field name (``model``, ``deepspeed``: keys follow
            after a dot) or a file (``config.json '/path'``: keys follow after a colon).
        limits: the bounds; default ``current_limits()``.
        sizes: apply the model size caps by key name (model configs); False for DeepSpeed and
            accelerate configs, whose integers are byte or element counts.

    Raises:
        LimitExceededError: naming the key path and the limit.

    """
    lim = limits or current_limits()
    caps = {name: int(getattr(lim, name)) for name in SIZE_LIMITS} if sizes else {}
    budget = lim.max_config_keys
    stack: list[tuple[Any, str, int]] = [(node, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > lim.max_config_depth:
                raise LimitExceededError(
                    f"{_at(where, path)}: nested deeper than {lim.max_config_depth} levels "
                    "(max_config_depth)"
                )
            budget -= len(item)
            if budget < 0:
                raise LimitExceededError(
                    f"{where}: too many keys and list items; accepted: at most "
                    f"{lim.max_config_keys} (max_config_keys)"
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, value in pairs:
                sub = f"{path}[{key}]" if isinstance(item, list) else f"{path}.{key}"
                if isinstance(value, dict | list):
                    stack.append((value, sub, depth + 1))
                else:
                    name = "" if isinstance(item, list) else str(key)
                    _check_scalar(name, value, _at(where, sub), caps)
        else:
            _check_scalar("", item, _at(where, path), caps)


def _at(where: str, path: str) -> str:
    """``model`` + ``.a.b`` -> ``model.a.b``; ``config.json '/p'`` + ``.a`` -> ``... '/p': a``."""
    if not path:
        return where
    if where.isidentifier():
        return where + path
    return f"{where}: {path.lstrip('.')}"


def _digits(value: int) -> int:
    return len(str(abs(value))) if value.bit_length() < 3000 else int(value.bit_length() * 0.30103)


def _check_scalar(key: str, value: Any, where: str, caps: dict[str, int]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, _HugeInt) or (isinstance(value, int) and value.bit_length() > 100):
        digits = value.digits if isinstance(value, _HugeInt) else _digits(value)
        raise LimitExceededError(
            f"{where} is a {digits}-digit integer; accepted: at most {MAX_INT} (2**53)"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitExceededError(f"{where}={value} is not a finite number; accepted: finite")
    if isinstance(value, int | float):
        category = size_category(key) if caps else None
        cap = caps[category] if category is not None else MAX_INT
        if abs(value) > cap:
            setting = f" ({category})" if category else " (2**53)"
            raise LimitExceededError(f"{where}={value:g} is above the limit of {cap}{setting}"
                                     if isinstance(value, float)
                                     else f"{where}={value} is above the limit of {cap}{setting}")


def check_model_sizes(fields: dict[str, Any], where: str, limits: Limits | None = None) -> None:
    """Refuse derived ModelSpec sizes above the limits (the raw keys may be aliases).

    Raises:
        LimitExceededError: naming the field and the limit.

    """
    lim = limits or current_limits()
    for field, value in fields.items():
        category = size_category(field)
        if category is None or not isinstance(value, int) or isinstance(value, bool):
            continue
        cap = int(getattr(lim, category))
        if value > cap:
            raise LimitExceededError(
                f"{where}: {field}={value} is above the limit of {cap} ({category})"
            )
