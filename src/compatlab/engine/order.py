"""Which cells the engine gets first, and how many at once: pure, no I/O, no clock.

**Longest expected first.** A run ends when its last cell ends; a long cell started last keeps
the lab waiting on it alone. So each cell gets an *expected duration* (:func:`expected_seconds`)
from how long it took in earlier runs (read by :mod:`compatlab.engine.earlier`), and the engine
hands cells over longest first and asks Dask to run them in that order (``priority=``,
:func:`priority`). The expectation only orders: every cell runs, and its verdict is its own.

A cell's expectation is the median of its last :data:`LAST_RUNS` times in earlier runs (the
same matrix file and cell id; a cell id seen only under another matrix file next). A cell
never seen is expected to take what similar cells took: the median over the known cells of the
same golden image and hardware profile, else the same hardware profile, else all known cells.
With no earlier run at all no cell has an expectation: every priority is 0 and cells go in
item order, as before.

**A bounded window.** Dask places a resource-restricted task on a worker as soon as it is
submitted, by the worker's count of tasks per thread -- not by the room the worker has free --
and a worker runs its queued tasks strictly in priority order (the first one that does not
fit blocks the ones behind it). Handed 5,000 cells at once, it parks them on hosts that cannot
run them yet while others idle (``benchmarks/results/sim_lab.json``). So the controller keeps
at most :data:`WINDOW` times what fits the lab now (:func:`in_flight_limit`) handed over and not
finished, holds the rest in priority order (:class:`Window`), and hands over the next as each
one ends. Dask still places every cell; this decides only how many it has at once.
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from compatlab.matrix import Cell

__all__ = [
    "LAST_RUNS",
    "WINDOW",
    "PastCell",
    "Window",
    "cell_key",
    "expected_seconds",
    "in_flight_limit",
    "priority",
]

#: How many of a cell's latest times its expectation is the median of.
LAST_RUNS = 5
#: Cells handed to the engine and not finished, as a multiple of what fits the lab at once.
#: Measured (benchmarks/sim_lab.py): fewer leaves hosts idle while the next cell travels; many
#: more parks cells on hosts that cannot run them yet.
WINDOW = 1.25

T = TypeVar("T")


@dataclass(frozen=True)
class PastCell:
    """One run of a cell in an earlier run: how long it took."""

    matrix: str
    cell_id: str
    build: str
    hardware: str
    seconds: float


def cell_key(cell: Cell) -> tuple[str, str]:
    """A cell's identity across runs: its matrix file and its id (as results.json has them)."""
    return (str(cell.matrix), cell.id)


def expected_seconds(
    cells: Iterable[Cell], past: Iterable[PastCell], *, last: int = LAST_RUNS
) -> dict[tuple[str, str], float]:
    """Each cell's expected duration, by :func:`cell_key`; ``past`` newest first.

    A cell is absent when nothing at all is known (no earlier run with a usable time)."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    facts: dict[tuple[str, str], tuple[str, str]] = {}
    for run in past:
        if run.seconds <= 0 or not math.isfinite(run.seconds):
            continue
        key = (run.matrix, run.cell_id)
        if len(times[key]) < last:
            times[key].append(run.seconds)
            facts.setdefault(key, (run.build, run.hardware))
    own = {key: statistics.median(seconds) for key, seconds in times.items()}
    if not own:
        return {}
    by_id: dict[str, list[float]] = defaultdict(list)
    by_image_hardware: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_hardware: dict[str, list[float]] = defaultdict(list)
    for key, seconds in own.items():
        build, hardware = facts[key]
        by_id[key[1]].append(seconds)
        by_image_hardware[(build, hardware)].append(seconds)
        by_hardware[hardware].append(seconds)
    everyone = statistics.median(own.values())
    expected = {}
    for cell in cells:
        key = cell_key(cell)
        similar = (
            by_id.get(cell.id)
            or by_image_hardware.get((cell.build, cell.hardware.name))
            or by_hardware.get(cell.hardware.name)
        )
        if key in own:
            expected[key] = own[key]
        elif similar:
            expected[key] = statistics.median(similar)
        else:
            expected[key] = everyone
    return expected


def priority(seconds: float | None) -> int:
    """Dask's ``priority=`` for a cell expected to take ``seconds``: higher runs first, so the
    longest expected first; 0 (item order) for a cell with no expectation."""
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return 0
    return round(seconds)


def in_flight_limit(
    offers: Iterable[Mapping[str, float]],
    mean_vcpus: float,
    mean_memory_mib: float,
    factor: float = WINDOW,
) -> int:
    """How many cells the engine may have at once: ``factor`` times how many cells of the
    run's mean size the workers' ``offers`` (their ``vcpus`` and ``memory``) hold together,
    each host by whichever of the two it runs out of first. At least one."""
    if mean_vcpus <= 0 or mean_memory_mib <= 0:
        return 1
    fits = sum(
        min(offer.get("vcpus", 0) / mean_vcpus, offer.get("memory", 0) / mean_memory_mib)
        for offer in offers
    )
    return max(1, math.ceil(factor * fits))


class Window(Generic[T]):
    """Items held until the engine has room for them, handed over highest priority first
    (equal priorities in the order they came), at most :attr:`limit` out at once.

    Thread-safe: items land on the engine's callback thread while the main thread adds more.
    An item handed over outside the queue (a cell's next attempt) counts too (:meth:`add`),
    so the count is what the engine really has."""

    def __init__(self, limit: int = 1) -> None:
        self.limit = limit
        self._held: list[tuple[int, int, T]] = []
        self._order = itertools.count()
        self._out = 0
        self._lock = threading.Lock()

    def hold(self, item: T, priority: int = 0) -> None:
        with self._lock:
            heapq.heappush(self._held, (-priority, next(self._order), item))

    def due(self) -> list[T]:
        """The items to hand over now, best first; they count as out from here."""
        with self._lock:
            room = self.limit - self._out
            taken = [heapq.heappop(self._held)[2] for _ in range(min(room, len(self._held)))]
            self._out += len(taken)
            return taken

    def add(self) -> None:
        """One more item out that did not come through :meth:`due`."""
        with self._lock:
            self._out += 1

    def done(self) -> None:
        """One item out has ended (finished, failed, or been cancelled)."""
        with self._lock:
            self._out = max(0, self._out - 1)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def out(self) -> int:
        return self._out
