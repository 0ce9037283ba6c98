"""The litgpt profile (data: ``data/frameworks.json`` row ``litgpt``)."""

from __future__ import annotations

from vramcalc.frameworks import FrameworkProfile

__all__ = ["PROFILE"]

PROFILE = FrameworkProfile.from_data("litgpt")
