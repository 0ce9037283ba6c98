"""Errors with a message a user can act on: what was wrong, what is accepted, the closest match."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["InvalidConfigError", "UnknownNameError", "VramcalcError", "closest_match"]


class VramcalcError(ValueError):
    """Base class of every error vramcalc raises on bad input (CLI exit 2, HTTP 4xx)."""

    status_code: int = 422


class InvalidConfigError(VramcalcError):
    """An impossible combination or a malformed model/DeepSpeed config."""


def closest_match(name: str, choices: Iterable[str]) -> str | None:
    """Return the accepted value closest to ``name`` (case-insensitive), or ``None``."""
    pool = list(choices)
    lowered = {c.lower(): c for c in pool}
    import difflib  # only on an error path: keeps it off the CLI's cold start

    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    if hits:
        return lowered[hits[0]]
    # substring match catches "llama7b" -> "llama-2-7b"-style typos difflib misses
    squashed = name.lower().replace("-", "").replace("_", "")
    for low, orig in lowered.items():
        if squashed and squashed in low.replace("-", "").replace("_", ""):
            return orig
    return None


class UnknownNameError(VramcalcError):
    """A name (model, GPU, optimizer, PEFT key, ...) that is not in the accepted set."""

    status_code = 404

    def __init__(self, kind: str, name: str, choices: Iterable[str], *, show: int = 12) -> None:
        pool = sorted(set(choices))
        self.kind = kind
        self.name = name
        self.choices = pool
        # a huge name cannot be a typo of a short one (and difflib on it is slow)
        self.suggestion = closest_match(name, pool) if len(name) <= 200 else None
        more = f", ... ({len(pool)} in all)" if len(pool) > show else ""
        listed = ", ".join(pool[:show]) + more
        hint = f" Did you mean '{self.suggestion}'?" if self.suggestion else ""
        shown = name if len(name) <= 80 else f"{name[:77]}... ({len(name)} characters)"
        super().__init__(f"unknown {kind} '{shown}'.{hint} Accepted: {listed}")
