"""Request checks the service adds on top of the core's (``vramcalc.checks``).

The bounds themselves live in the core (``vramcalc/limits.py``) and apply to every entry
point; the service's settings override them (``VRAMCALC_API_MAX_LAYERS``, ...). Here the
service also refuses model strings that are not catalog names: it never opens a path a
client names, and looks Hub ids up only when the ``hub_lookup`` setting
is on (off by default).
"""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings
from vramcalc import catalog
from vramcalc.checks import check_request as core_checks
from vramcalc.errors import UnknownNameError
from vramcalc.limits import SIZE_LIMITS, LimitExceededError, Limits, set_limits
from vramcalc.specs import EstimateRequest

__all__ = ["LimitExceededError", "check_request", "config_caps", "limits_from_settings"]


def config_caps(settings: Settings) -> dict[str, int]:
    """Return the caps applied to inline configs, by setting name."""
    return {name: int(getattr(settings, name)) for name in SIZE_LIMITS}


def limits_from_settings(settings: Settings) -> Limits:
    """Return the core ``Limits`` with the service's settings in place of the defaults."""
    return Limits(**config_caps(settings), max_config_keys=settings.max_config_keys)


def _check_model_name(model: str, settings: Settings) -> None:
    """Accept a catalog name; with ``hub_lookup`` on, also a valid Hub id naming no path."""
    try:
        catalog.model_row(model)
    except UnknownNameError:
        from vramcalc import hub

        if not (settings.hub_lookup and hub.looks_like_hub_id(model)):
            raise
        hub.parse_hub_id(model)  # length and characters, before any network call
        if Path(model).exists():  # resolve_model would open it: the service never opens paths
            raise


def check_request(request: EstimateRequest, settings: Settings) -> None:
    """Refuse what the service will not compute, and put its limits in force for this request.

    The limits are set in the request's context (``vramcalc.limits.set_limits``), so the
    engine's own checks (``vramcalc.checks.check_request``, run by ``resolve``) use the
    service's settings, not the core defaults.

    Raises:
        UnknownNameError: ``model`` is a string that is not a catalog name or alias
            (paths are never opened by the service; Hub ids only with ``hub_lookup``).
        HubIdError: with ``hub_lookup``, a Hub id that is too long or has illegal characters.
        LimitExceededError: an inline config is too large, too deep or has a size field
            above the configured caps.

    """
    set_limits(limits_from_settings(settings))
    core_checks(request)  # names, config trees, DeepSpeed contradictions: the core's messages
    if isinstance(request.model, str):
        _check_model_name(request.model, settings)
