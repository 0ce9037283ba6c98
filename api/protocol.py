"""uvicorn's httptools protocol with the connection limits it lacks.

uvicorn times out only idle keep-alive connections, and only after a first response: a client
that connects and sends nothing, or sends half a request line or half the headers, keeps its
connection (and its buffers) forever, and httptools accepts headers of any size. This
subclass adds, per connection:

- a header deadline: the request line and headers must be complete ``header_timeout_s`` after
  the connection opens or after the previous response; else 408 and close;
- a header size cap: more than ``max_header_bytes`` before the headers end gets 431 and close;
- a connection cap: above ``max_connections`` open connections a new one is closed at once, so
  a flood of half-open connections cannot grow the process without bound.

The body's own deadline is ``BodySizeLimitMiddleware``'s (it sees the app read it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.settings import load_settings

__all__ = ["GuardedHttpToolsProtocol"]

_log = logging.getLogger("vramcalc.api")


def _plain(status: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus a header deadline, a header size cap and a connection cap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = load_settings()
        self.header_timeout_s = settings.header_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.max_connections = settings.max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._awaiting_headers = True

    # --- header deadline

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(
                "408 Request Timeout",
                f"request line and headers not received within {self.header_timeout_s:g} s",
            )

    def _refuse(self, status: str, message: str) -> None:
        self._disarm_header_timer()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.write(_plain(status, message))
            self.transport.close()

    # --- protocol events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; close it at once above the cap, else start the deadline."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            _log.warning("connection refused: %d open (limit)", len(self.connections) - 1)
            self.transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count header bytes; a new request after a response restarts the deadline."""
        if self._awaiting_headers:
            self._header_bytes += len(data)
            self._arm_header_timer()
        super().data_received(data)
        # checked after parsing: a chunk may end the headers and carry a large body after them
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(
                "431 Request Header Fields Too Large",
                f"request line and headers above {self.max_header_bytes} bytes",
            )

    def on_headers_complete(self) -> None:
        """Headers are in: stop the header deadline (the body has its own)."""
        self._awaiting_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Give the next request's headers a fresh deadline and byte count."""
        super().on_response_complete()
        self._awaiting_headers = True
        self._header_bytes = 0
