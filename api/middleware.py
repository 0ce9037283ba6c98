"""Pure ASGI middleware: a request-body size cap and read timeout, and JSON-lines access logs.

Both are written against the raw ASGI interface rather than ``BaseHTTPMiddleware``, which
adds a task and a memory stream per request and would cost a large share of the latency
budget of ``/v1/estimate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ACCESS_LOGGER", "AccessLogMiddleware", "BodySizeLimitMiddleware"]

ACCESS_LOGGER = "vramcalc.api.access"
_CLOSE = {"Connection": "close"}


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # the body was not read: the connection cannot carry another request
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Answer 413 to a body above the size cap and 408 to one that arrives too slowly.

    413: above ``max_body_bytes``, by Content-Length or as it streams; 408: not fully
    arrived ``body_timeout_s`` after the app starts reading it.

    Both answers close the connection: the rest of the body may still be on its way.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 413 / 408."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        detail = {"detail": f"request body is larger than the limit of {limit} bytes"}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if declared > limit:
                    await _send_json(send, 413, detail)
                    return
        received = 0
        complete = False
        timeout = self.body_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                        message = await receive()
                except TimeoutError:
                    raise HTTPException(
                        408,
                        f"request body not received within {timeout:g} s",
                        headers=_CLOSE,
                    ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > limit:
                    # The app's exception middleware turns this into a JSON 413 answer.
                    raise HTTPException(413, detail["detail"], headers=_CLOSE)
            return message

        await self.app(scope, guarded_receive, send)


class AccessLogMiddleware:
    """Log one JSON object per HTTP request on the ``vramcalc.api.access`` logger.

    Fields: ``method``, ``path``, ``query``, ``status``, ``duration_ms``, ``response_bytes``,
    ``client``. Bodies are never logged (they may hold private model configs).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and log it once the response is sent."""
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        size = 0

        async def logged_send(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            client = scope.get("client")
            record = {
                "event": "access",
                "method": scope.get("method"),
                "path": scope.get("path"),
                "query": scope.get("query_string", b"").decode("latin-1")[:200],
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "response_bytes": size,
                "client": f"{client[0]}:{client[1]}" if client else None,
            }
            self.logger.info(json.dumps(record, separators=(",", ":")))
