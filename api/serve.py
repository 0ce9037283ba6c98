"""``vramcalc serve``: run the service with uvicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from api.middleware import ACCESS_LOGGER
from api.settings import Settings, load_settings

__all__ = ["log_config", "serve", "server_options"]

ROOT = Path(__file__).resolve().parent.parent


def log_config(level: str = "info") -> dict[str, Any]:
    """Return logging config: uvicorn's own lines plus the JSON access log on stderr.

    uvicorn's access log is switched off in ``serve``: ``AccessLogMiddleware`` writes a
    structured line per request instead.
    """
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "json": {"format": '{"ts":"%(asctime)s","logger":"%(name)s","record":%(message)s}'},
        },
        "handlers": {
            "plain": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr",
            },
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["plain"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "vramcalc.api": {"handlers": ["plain"], "level": lvl, "propagate": False},
            # the engine log holds error summaries and tracebacks, never request bodies
            ACCESS_LOGGER: {"handlers": ["json"], "level": lvl, "propagate": False},
        },
    }


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve ``api.app:create_app`` with uvicorn until interrupted.

    Args:
        host: address to bind (loopback by default; the service has no authentication).
        port: TCP port.
        workers: worker processes (each one handles requests on one core).

    """
    import uvicorn

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    settings = load_settings()
    logging.getLogger("vramcalc.api").info("settings: %s", settings.model_dump())
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        app_dir=str(ROOT),
        access_log=False,
        log_config=log_config(settings.log_level),
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        **server_options(settings),
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """Return the uvicorn options that bound connections (see ``api.protocol``).

    ``http``: the httptools protocol with a header deadline, a header size cap and a
    connection cap; ``timeout_keep_alive``: idle keep-alive connections are closed after
    ``keep_alive_timeout_s``; ``h11_max_incomplete_event_size``: the same header cap should the
    h11 protocol be chosen; ``backlog``: pending connections the kernel holds for accept.
    """
    from api.protocol import GuardedHttpToolsProtocol

    return {
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "backlog": 2048,
    }
