"""vramcalc REST service and web calculator (runs from a source checkout).

``create_app`` builds the FastAPI application; ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

__all__ = ["create_app"]

from api.app import create_app
