"""The lines a release manager reads first -- go / no-go, and what the failures cost -- and how
the report writes times, durations and product sets.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal

from compatlab.model import Attribution, CellResult
from compatlab.report.stats import blast_radius

__all__ = ["Summary", "duration", "natural", "products_label", "summarize", "when"]

_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Summary:
    """The one line a release manager reads first.

    ``radius`` says what the candidate's failures stand for in the fleet ("3 failing cells,
    about 22% of the fleet"); "" when it fails nothing or the matrix gives no fleet shares.
    """

    level: Literal["go", "no-go", "incomplete"]
    headline: str
    detail: str
    radius: str = ""


@lru_cache(maxsize=1 << 16)
def natural(text: str) -> tuple[tuple[int, str], ...]:
    """Sort key that puts build 9 before build 10 (numbers compared by value, any length).

    Cached: a 10,000-cell index sorts by it the same builds, hardware and cell ids several
    times (chips, failing cells, crash groups).
    """
    key = []
    for n, part in enumerate(_DIGITS.split(text)):
        if n % 2:  # a run of digits: shorter is smaller, then digit by digit
            digits = part.lstrip("0") or "0"
            key.append((len(digits), digits))
        else:
            key.append((-1, part.lower()))
    return tuple(key)


def products_label(products: Sequence[str]) -> str:
    return "+".join(products) or "none"


def when(moment: datetime | None) -> str:
    if moment is None:
        return "in progress"
    offset = moment.utcoffset()
    zone = "" if offset is None else (" UTC" if not offset else moment.strftime(" %z"))
    return moment.strftime("%Y-%m-%d %H:%M:%S") + zone


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return f"{seconds} s"  # "inf s", "nan s": shown as the file has it
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def summarize(cells: Sequence[CellResult], not_run: int = 0) -> Summary:
    """Go / no-go from the verdicts alone. ``compatlab signoff`` applies the ring policy."""
    total = len(cells) + not_run
    blamed = [c for c in cells if c.verdict.is_failure and c.attribution is not Attribution.INFRA]
    candidate = [c for c in blamed if c.attribution is not Attribution.BASELINE]
    baseline = len(blamed) - len(candidate)
    unknown = sum(1 for c in cells if c.attribution is Attribution.INFRA) + not_run
    notes = []
    if baseline:
        verb = "fails" if baseline == 1 else "fail"
        notes.append(f"{baseline} {verb} without the candidate too (baseline)")
    if unknown:
        notes.append(f"{unknown} without a verdict on the candidate (infra error or not run)")
    if candidate:
        kinds = Counter(c.verdict for c in candidate)
        parts = [f"{n} {v.value}" for v, n in sorted(kinds.items(), key=lambda i: i[0].severity)]
        codes = sorted({f"{c.bugcheck.code} {c.bugcheck.name}" for c in candidate if c.bugcheck})
        detail = "; ".join([", ".join(parts)] + ([f"bugcheck {', '.join(codes)}"] if codes else []))
        radius = blast_radius(cells)
        return Summary(
            "no-go",
            f"NO-GO: the candidate fails {len(candidate)} of {total} cells",
            "; ".join([detail, *notes]),
            radius.phrase() if radius.share is not None else "",
        )
    if not total:
        return Summary("incomplete", "INCOMPLETE: no cell has run", "no verdict yet")
    if unknown:
        return Summary(
            "incomplete",
            f"INCOMPLETE: no failure caused by the candidate in {len(cells) - unknown} of "
            f"{total} cells",
            "; ".join(notes),
        )
    return Summary(
        "go",
        f"GO: no failure caused by the candidate in {total} cells",
        "; ".join(notes) or "every cell passed",
    )
