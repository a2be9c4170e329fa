"""What changed since the previous run of the same matrix: pure classification of a cell's
history, which :mod:`compatlab.report.history` reads from SQLite and hands over.

A cell's previous result is its latest result in an earlier run of the same matrix files that
gave a verdict (a run the lab failed, ``infra_error``, says nothing about the candidate and is
skipped). Against it, the cell is:

- ``new failure``: it passed before and fails now, with another candidate;
- ``fixed``: it failed before and passes now, with another candidate;
- ``still failing`` / ``still passing``: no change between pass and failure (a crash that became
  a boot loop is still failing);
- ``flaky``: it flipped between pass and failure while the candidate (name, version and payload
  checksum) stayed the same -- or its repeats in this run disagreed;
- ``new cell``: no earlier verdict for it in this matrix's history;
- ``no verdict``: the lab failed it this time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from compatlab.model import Verdict

__all__ = [
    "TREND_RUNS",
    "CellHistory",
    "Change",
    "HistoryView",
    "Outcome",
    "SignatureSeen",
    "build_view",
    "classify",
    "failing",
    "same_candidate",
    "trend",
]

TREND_RUNS = 14  # results in a cell's trend strip, this run's included


class Change(StrEnum):
    NEW_FAILURE = "new_failure"
    FIXED = "fixed"
    FLAKY = "flaky"
    STILL_FAILING = "still_failing"
    NEW_CELL = "new_cell"
    NO_VERDICT = "no_verdict"
    STILL_PASSING = "still_passing"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


@dataclass(frozen=True)
class Outcome:
    """One cell's result in one run, as the history keeps it."""

    run_id: str
    started: str  # ISO-8601, as the run's results.json has it
    verdict: Verdict
    candidate: tuple[str, str, str]  # name, version, payload sha256 ("" when unknown)
    failed_repeats: int = 0  # repeats that failed, of ...
    repeats: int = 0  # ... the repeats with a verdict (0: the cell ran once)

    @property
    def mixed(self) -> bool:
        """Its repeats disagreed: some failed, some passed."""
        return 0 < self.failed_repeats < self.repeats


def failing(verdict: Verdict) -> bool:
    """A verdict on the candidate that is not a pass (``infra_error`` is no verdict at all)."""
    return verdict.is_failure and verdict is not Verdict.INFRA_ERROR


def same_candidate(a: tuple[str, str, str], b: tuple[str, str, str]) -> bool:
    """Same name and version, and the same payload checksum where both runs recorded one."""
    if a[:2] != b[:2]:
        return False
    return not (a[2] and b[2]) or a[2] == b[2]


def classify(current: Outcome, earlier: Sequence[Outcome]) -> tuple[Change, Outcome | None]:
    """The cell's change against ``earlier`` (its results in earlier runs, newest first), and
    the earlier result it was compared with."""
    previous = next((o for o in earlier if o.verdict is not Verdict.INFRA_ERROR), None)
    if current.verdict is Verdict.INFRA_ERROR:
        return Change.NO_VERDICT, previous
    if current.mixed:
        return Change.FLAKY, previous
    if previous is None:
        return Change.NEW_CELL, None
    now, before = failing(current.verdict), failing(previous.verdict)
    if now == before:
        return (Change.STILL_FAILING if now else Change.STILL_PASSING), previous
    if same_candidate(current.candidate, previous.candidate):
        return Change.FLAKY, previous
    return (Change.NEW_FAILURE if now else Change.FIXED), previous


def trend(current: Outcome, earlier: Sequence[Outcome], runs: int = TREND_RUNS) -> list[Outcome]:
    """The cell's last ``runs`` results, oldest first, ending with this run's."""
    return [*reversed(earlier[: max(runs - 1, 0)]), current]


@dataclass(frozen=True)
class CellHistory:
    change: Change
    previous: Outcome | None
    trend: tuple[Outcome, ...]


@dataclass(frozen=True)
class SignatureSeen:
    """A crash signature across the whole history (every matrix)."""

    signature: str
    first_run: str
    first_seen: str  # ISO-8601 start of the first run that saw it
    last_run: str
    last_seen: str
    cells: int  # distinct cells that ever crashed with it
    runs: int  # runs that saw it

    def new_in(self, run_id: str) -> bool:
        return self.first_run == run_id


@dataclass
class HistoryView:
    """What the report shows of the history. ``note`` says why there is none, if there is none.

    ``path`` is where the history lives; ``previous_run`` the latest earlier run of the same
    matrix files, if any.
    """

    path: str = ""
    note: str = ""
    previous_run: str | None = None
    cells: dict[tuple[str, str], CellHistory] = field(default_factory=dict)
    signatures: dict[str, SignatureSeen] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.cells)

    def counts(self) -> list[tuple[Change, int]]:
        """How many cells changed in each way, in :class:`Change` order, zeros left out."""
        seen = Counter(h.change for h in self.cells.values())
        return [(change, seen[change]) for change in Change if seen[change]]

    def of(self, matrix: str, cell_id: str) -> CellHistory | None:
        return self.cells.get((matrix, cell_id))


def build_view(
    current: Mapping[tuple[str, str], Outcome],
    earlier: Mapping[tuple[str, str], Sequence[Outcome]],
    signatures: Iterable[SignatureSeen] = (),
    *,
    path: str = "",
    previous_run: str | None = None,
) -> HistoryView:
    """Classify every cell of a run: ``earlier`` maps a cell to its earlier results, newest
    first (a cell missing from it has none)."""
    cells = {}
    for key, outcome in current.items():
        before = earlier.get(key, ())
        change, previous = classify(outcome, before)
        cells[key] = CellHistory(change, previous, tuple(trend(outcome, before)))
    note = "" if previous_run else "the first run of these matrix files in this history"
    return HistoryView(
        path=path,
        note=note,
        previous_run=previous_run,
        cells=cells,
        signatures={s.signature: s for s in signatures},
    )
