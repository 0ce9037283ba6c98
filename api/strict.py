"""Strict JSON types for request bodies: no ``true`` for a number, no ``"8"`` for an integer.

Pydantic's default (lax) mode turns ``"8"`` and ``true`` into ``8`` and ``1``; the CLI and the
Python API pass real numbers, but a REST client that sends a string or a boolean has a bug
the service should name, not guess around. Pydantic's own strict mode cannot be switched on
for the whole request (it also refuses JSON arrays for tuple fields and strings for enums),
so this walks the raw JSON against the model's scalar fields before the model is used:
integer fields (``int``, ``IntEnum``, integer ``Literal``) take only JSON integers, ``bool``
fields only ``true``/``false``, ``float`` fields only JSON numbers. Nested models are walked
too; other fields are left to pydantic.
"""

from __future__ import annotations

import enum
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["strict_type_issues"]

# worded as the core's strict pydantic types answer (the same message in every entry point),
# with what JSON forms are refused
_INT_MSG = (
    "Input should be a valid integer (a JSON integer; strings, booleans and fractions are "
    "refused)"
)
_BOOL_MSG = "Input should be a valid boolean (true or false; numbers and strings are refused)"
_FLOAT_MSG = "Input should be a valid number (a JSON number; strings and booleans are refused)"


def _options(annotation: Any) -> list[Any]:
    """Return the members of a union (``X | None``), or the annotation itself."""
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _scalar(annotation: Any) -> str | None:
    """``"int"``, ``"bool"`` or ``"float"`` when every option of the annotation is that kind."""
    kinds = set()
    for opt in _options(annotation):
        if get_origin(opt) is Literal:
            values = get_args(opt)
            if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                kinds.add("int")
                continue
            return None
        if opt is bool:
            kinds.add("bool")
        elif opt is int or (isinstance(opt, type) and issubclass(opt, enum.IntEnum)):
            kinds.add("int")
        elif opt is float:
            kinds.add("float")
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


def _nested(annotation: Any) -> type[BaseModel] | None:
    for opt in _options(annotation):
        if isinstance(opt, type) and issubclass(opt, BaseModel):
            return opt
    return None


def _bad(kind: str, value: Any) -> bool:
    if value is None:
        return False  # None is pydantic's to judge (Optional or not)
    if kind == "bool":
        return not isinstance(value, bool)
    if isinstance(value, bool):
        return True
    if kind == "int":
        return not isinstance(value, int)
    return not isinstance(value, int | float)


def strict_type_issues(
    model: type[BaseModel], data: Any, loc: tuple[str | int, ...] = ("body",)
) -> list[dict[str, Any]]:
    """Issues (``loc``/``msg``/``type``, as in a 422) for scalars of the wrong JSON type."""
    if not isinstance(data, dict):
        return []
    out: list[dict[str, Any]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        value = data[key]
        kind = _scalar(field.annotation)
        if kind is not None:
            if _bad(kind, value):
                msg = {"int": _INT_MSG, "bool": _BOOL_MSG, "float": _FLOAT_MSG}[kind]
                out.append({"loc": [*loc, key], "msg": msg, "type": f"{kind}_type"})
            continue
        sub = _nested(field.annotation)
        if sub is not None and isinstance(value, dict):
            out += strict_type_issues(sub, value, (*loc, key))
    return out
