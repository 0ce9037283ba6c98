"""Byte units and display helpers. Bytes are integers until display; GiB = 2**30."""

from __future__ import annotations

__all__ = ["GIB", "KIB", "MIB", "bits_to_bytes", "format_bytes", "format_gib", "round_up"]

KIB = 2**10
MIB = 2**20
GIB = 2**30


def bits_to_bytes(n_bits: int) -> int:
    """Round a bit count up to whole bytes (sub-byte widths are rounded once, at the end)."""
    return -(-n_bits // 8)


def round_up(n_bytes: int, multiple: int) -> int:
    """Round ``n_bytes`` up to a multiple of ``multiple`` (allocator block rounding)."""
    if n_bytes <= 0:
        return 0
    return -(-n_bytes // multiple) * multiple


def format_gib(n_bytes: int, digits: int = 2) -> str:
    """Format bytes as GiB with the unit, e.g. ``"6.61 GiB"``."""
    return f"{n_bytes / GIB:.{digits}f} GiB"


def format_bytes(n_bytes: int) -> str:
    """Format bytes with a binary unit chosen for readability (B, KiB, MiB, GiB)."""
    sign = "-" if n_bytes < 0 else ""
    v = abs(n_bytes)
    if v >= GIB:
        return f"{sign}{v / GIB:.2f} GiB"
    if v >= MIB:
        return f"{sign}{v / MIB:.1f} MiB"
    if v >= KIB:
        return f"{sign}{v / KIB:.1f} KiB"
    return f"{sign}{v} B"
