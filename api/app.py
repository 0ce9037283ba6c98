"""The FastAPI application factory of the vramcalc REST service and web calculator.

``create_app()`` builds the app: versioned JSON endpoints (``api.routes``), the calculator
page at ``/`` (``api/static``), Swagger UI at ``/docs`` served from the ``fastapi-offline``
package's bundled assets (no CDN), error handlers that turn every bad input into JSON 4xx
(400 for a body that is not JSON, echoed strings cut short), the engine executor (costly
estimates in worker processes, 503/504 under load), a body-size cap and read timeout, and
JSON access logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

import vramcalc
from api.errors import DEFAULT_ECHO_CHARS, clip, error_body, issues
from api.executor import EngineExecutor
from api.middleware import AccessLogMiddleware, BodySizeLimitMiddleware
from api.routes import router
from api.settings import Settings, get_settings, load_settings
from vramcalc.errors import VramcalcError

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs-assets"
_log = logging.getLogger("vramcalc.api")


def _echo_limit(request: Request) -> int:
    settings: Settings | None = getattr(request.app.state, "settings", None)
    return settings.max_echo_chars if settings is not None else DEFAULT_ECHO_CHARS


async def _vramcalc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VramcalcError)
    return JSONResponse(error_body(exc, _echo_limit(request)), status_code=exc.status_code)


async def _request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = list(exc.errors())
    limit = _echo_limit(request)
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        # the OpenAPI document promises 400 for a body that is not JSON at all
        ctx = bad_json[0].get("ctx") or {}
        where = bad_json[0].get("loc", ("body", 0))[-1]
        reason = clip(str(ctx.get("error", "invalid JSON")), limit)
        return JSONResponse(
            {"detail": f"request body is not valid JSON: {reason} at character {where}"},
            status_code=400,
        )
    return JSONResponse({"detail": issues(errors, limit)}, status_code=422)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    _log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error: please report it"}, status_code=500)


def _docs_assets_dir() -> Path | None:
    spec = find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    static = Path(spec.origin).parent / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


def _mount_docs(app: FastAPI) -> None:
    assets = _docs_assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    if assets is not None:
        app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets), name="docs-assets")

        @app.get("/docs", include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title="vramcalc API",
                swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}/static/favicon.svg",
            )

        return

    @app.get("/docs", include_in_schema=False)
    async def plain_docs() -> HTMLResponse:
        # Without the optional assets: a plain list of operations, still with no CDN.
        rows = []
        for path, ops in app.openapi()["paths"].items():
            for method, op in ops.items():
                rows.append(
                    f"<li><code>{method.upper()} {path}</code> — {op.get('summary', '')}</li>"
                )
        return HTMLResponse(
            "<!doctype html><meta charset=utf-8><title>vramcalc API</title>"
            f"<h1>vramcalc API</h1><p>Schema: <a href='{openapi_url}'>{openapi_url}</a> "
            "(install <code>fastapi-offline</code> for Swagger UI)</p><ul>"
            + "".join(rows)
            + "</ul>"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: limits and switches; ``None`` reads ``VRAMCALC_API_*`` environment
            variables (through the cached ``get_settings`` dependency).

    Returns:
        The ASGI application (serve it with ``api.serve.serve`` or any ASGI server).

    """
    effective = settings if settings is not None else load_settings()
    executor = EngineExecutor(effective)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # start the engine workers in the background (without a lifespan, e.g. a bare
        # test client, they start on the first costly request)
        executor.start_background()
        try:
            yield
        finally:
            executor.close()

    app = FastAPI(
        title="vramcalc",
        version=vramcalc.__version__,
        summary="Peak GPU memory, time and cost of LLM fine-tuning jobs.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.settings = effective
    app.state.executor = executor

    app.add_exception_handler(VramcalcError, _vramcalc_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(ValidationError, _request_validation_error)
    app.add_exception_handler(Exception, _unexpected_error)

    app.include_router(router)
    _mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=effective.max_body_bytes,
        body_timeout_s=effective.body_timeout_s,
    )
    if effective.access_log:
        app.add_middleware(AccessLogMiddleware)
    return app
