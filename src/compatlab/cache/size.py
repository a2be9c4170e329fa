"""Sizes as people write them on a command line (``--max-size 50G``), and as ``cache list``
prints them. Binary units throughout: a cache bound is disk space, which tools show in GiB."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Fifteen digits are already petabytes; more would only be a very long int() to refuse.
_SIZE = re.compile(r"^\s*(\d{1,15})(?:\.(\d{1,3}))?\s*(?:([KMGT])(?:i?B)?|B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``1073741824``, ``512M``, ``1.5GiB``, ``20G``, ``100KB`` (K, M, G, T
    are powers of 1024). Raises ValueError saying what is accepted."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"'{text[:40]}' is not a size; write e.g. 20G, 512MiB or 1073741824")
    whole, fraction, unit = match.groups()
    scale = _UNITS[(unit or "").upper()]
    if fraction and scale == 1:
        raise ValueError(f"'{text[:40]}' is a fraction of a byte")
    value = int(whole) * scale
    if fraction:
        value += int(fraction) * scale // 10 ** len(fraction)
    return value


def format_size(size: int) -> str:
    """``size`` bytes as a short human figure: ``512 B``, ``3.2 MiB``, ``20.0 GiB``."""
    if size < 1024:
        return f"{size} B"
    amount = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if amount < 1024 or unit == "TiB":
            break
    return f"{amount:.1f} {unit}"
