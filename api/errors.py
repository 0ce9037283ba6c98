"""Error bodies of the service, and one engine call turned into a status and a JSON body.

Everything here is shared by the app's exception handlers and by the engine worker
processes (``api.executor``), so an error looks the same wherever the estimate ran.
Echoed user strings are cut to a bounded length: a 250 KB model name must not come back in a
404 (or land in a log line).
"""

from __future__ import annotations

import json
import re
import traceback
from typing import Any, Literal

from pydantic import ValidationError

from vramcalc.errors import UnknownNameError, VramcalcError

__all__ = [
    "DEFAULT_ECHO_CHARS",
    "ENGINE_BUGS",
    "JobResult",
    "clip",
    "clip_detail",
    "error_body",
    "issues",
    "run_job",
]

DEFAULT_ECHO_CHARS = 200
# The longest ``detail`` string: an unknown-name message lists up to 12 catalog names.
MAX_DETAIL_CHARS = 2000
ELLIPSIS = "…"
# Exceptions an engine bug raises on odd input: masked as 422 for the client, logged as errors.
ENGINE_BUGS: tuple[type[BaseException], ...] = (
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
)

Kind = Literal["estimate", "fit"]
# (HTTP status, JSON body, text to log as an engine error or None)
JobResult = tuple[int, bytes, str | None]

_QUOTED = re.compile(r"'([^']*)'")


def clip(text: str, limit: int = DEFAULT_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis and the full length when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}{ELLIPSIS} ({len(text)} characters)"


def clip_detail(detail: str, limit: int = DEFAULT_ECHO_CHARS) -> str:
    """Cut every quoted value in an error message to ``limit``, and the message as a whole.

    The core quotes the names it echoes (``unknown model 'x'``); quoting is where user text
    enters a message, so that is what is cut. The whole message is also bounded.
    """
    out = _QUOTED.sub(lambda m: f"'{clip(m.group(1), limit)}'", detail)
    return clip(out, MAX_DETAIL_CHARS)


def issues(errors: Any, limit: int = DEFAULT_ECHO_CHARS) -> list[dict[str, Any]]:
    """Pydantic errors without the echoed input (a request may be large or private)."""
    return [
        {
            "loc": [p if isinstance(p, int) else clip(str(p), limit) for p in e.get("loc", ())],
            "msg": clip_detail(str(e.get("msg", "")), limit),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]


def error_body(exc: VramcalcError, limit: int = DEFAULT_ECHO_CHARS) -> dict[str, Any]:
    """Return the JSON body of a core error: ``detail`` (+ ``closest``/``accepted``)."""
    body: dict[str, Any] = {"detail": clip_detail(str(exc), limit)}
    if isinstance(exc, UnknownNameError):
        body["closest"] = exc.suggestion
        body["accepted"] = exc.choices
    return body


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def run_job(engine: Any, kind: Kind, request: Any, limit: int = DEFAULT_ECHO_CHARS) -> JobResult:
    """Call ``engine.estimate`` or ``engine.fit``; map every outcome to (status, body, log).

    A ``VramcalcError`` is the client's fault (its own status, 404 or 422). Anything in
    ``ENGINE_BUGS`` is an engine bug on odd input: the client gets a 422 that says so, and the
    third element carries the traceback to log -- never the request body (it may be private
    and large).
    """
    try:
        report = engine.estimate(request) if kind == "estimate" else engine.fit(request)
    except VramcalcError as exc:
        return exc.status_code, _dump(error_body(exc, limit)), None
    except ValidationError as exc:
        return 422, _dump({"detail": issues(exc.errors(), limit)}), None
    except ENGINE_BUGS as exc:
        what = f"{type(exc).__name__}: {clip(str(exc), limit)}"
        detail = f"this combination cannot be estimated ({what}); please report it with the request"
        # the frames (code lines, no values) and the clipped message, never the request
        log = f"engine failed on {kind}: {what}\n" + "".join(traceback.format_tb(exc.__traceback__))
        return 422, _dump({"detail": detail}), log
    return 200, report.model_dump_json().encode(), None
