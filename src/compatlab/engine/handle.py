"""One cell handed to the engine: its attempts, and in the end exactly one result.

A :class:`CellHandle` is what :meth:`DaskEngine.submit <compatlab.engine.cluster.DaskEngine.submit>`
returns. The controller holds it until the window has room (``future`` is None until then),
then each attempt is one Dask task; :meth:`CellHandle.wait` turns the attempt's outcome into the
cell's result -- or, for a lost worker or a lab failure, into another attempt within the lab's
``attempts`` (see :mod:`compatlab.engine.cluster`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compatlab.capacity import Needs
from compatlab.model import CellResult, Event, Verdict

if TYPE_CHECKING:
    from compatlab.engine.cluster import DaskEngine
    from compatlab.engine.task import TaskOutcome
    from compatlab.matrix import Cell

__all__ = ["CellHandle"]

log = logging.getLogger("compatlab.engine")


@dataclass
class CellHandle:
    """One submitted cell: its attempts on the engine, and in the end exactly one result."""

    cell: Cell
    engine: DaskEngine
    needs: Needs
    future: Any = None
    lost: list[str] = field(default_factory=list)
    result: CellResult | None = None
    #: Workers where the lab failed this cell: its next attempt goes elsewhere.
    avoid: set[str] = field(default_factory=set)
    #: Which run of the cell this is (``--matrix-repeat``).
    repeat: int = 1
    #: Dask's ``priority=``: the cell's expected seconds (:mod:`compatlab.engine.order`).
    priority: int = 0
    #: Set when the controller has handed the cell to the engine (it holds it until then).
    handed: threading.Event = field(default_factory=threading.Event)

    def wait(self, tick: Callable[[], None] = lambda: None, poll: float = 0.5) -> CellResult:
        """Block until the cell has its one result; ``tick`` runs between polls (progress)."""
        while self.result is None:
            if self.future is None:  # still held by the controller (the window is full)
                if self.engine.stopping:
                    raise CancelledError(f"{self.cell.id}: the run stopped before it started")
                self.handed.wait(poll)
                tick()
                self.engine.tend()
                continue
            try:
                outcome = self.future.result(timeout=poll)
            except FutureTimeout:
                tick()
                self.engine.tend()
                continue
            except (CancelledError, Exception) as exc:  # KilledWorker, CommClosedError, ...
                if self.engine.stopping:
                    raise
                self._lost(f"{type(exc).__name__}: {exc}".strip(": "))
                continue
            self._take(outcome)
        return self.result

    def move(self, away_from: str) -> None:
        """Place the waiting attempt again, elsewhere: its worker went out of service before
        it started there (it never ran: no attempt is lost)."""
        self.future.cancel()
        self.avoid.add(away_from)
        log.warning("compatlab: %s: its worker is out of service; placed again", self.cell.id)
        self.engine.submit_attempt(self)

    def place_again(self) -> None:
        """Submit the waiting attempt again: it was handed over while no worker that could run
        it was in service, and Dask, which left it unplaced, does not look again when one is."""
        self.future.cancel()
        log.warning("compatlab: %s: a worker for it is back in service; placed", self.cell.id)
        self.engine.submit_attempt(self)

    def give_up(self, why: str) -> None:
        """No worker of the engine will run this cell: ``infra_error`` saying why."""
        from compatlab.scenario import infra_error_result

        if self.future is not None:
            self.future.cancel()
        self.result = infra_error_result(
            self.cell, f"the lab cannot run this cell: {why}", attempts=len(self.lost)
        )

    def _take(self, outcome: TaskOutcome) -> None:
        if outcome.duplicate or outcome.result is None:
            self._lost(f"the engine ran the attempt again on {outcome.worker} (refused)")
            return
        result = outcome.result
        if (
            result.verdict is Verdict.INFRA_ERROR
            and outcome.address
            and len(self.lost) + 1 < self.engine.attempts
            and self.engine.another_host_for(self.needs, self.avoid | {outcome.address})
        ):
            # The lab failed on that host (after its own retries there): another host tries.
            if outcome.evidence is not None:
                outcome.evidence.discard()
            self.avoid.add(outcome.address)
            self._lost(f"lab failure on {outcome.worker}: {result.reason}")
            return
        if outcome.evidence is not None:
            try:
                outcome.evidence.unpack(self.engine.report_dir)
            except Exception as exc:  # the verdict stands without its evidence
                log.error("compatlab: %s: evidence from %s: %s", self.cell.id, outcome.worker, exc)
                result.events.append(Event(0.0, "engine", "evidence_lost", str(exc)))
        for reason in self.lost:
            result.events.insert(0, Event(0.0, "engine", "worker_lost", reason))
        result.attempts += len(self.lost)
        self.result = result

    def _lost(self, reason: str) -> None:
        self.lost.append(reason)
        log.warning("compatlab: %s: worker lost mid-cell (%s)", self.cell.id, reason)
        if len(self.lost) >= self.engine.attempts:
            from compatlab.scenario import infra_error_result

            said = "; ".join(self.lost)
            self.result = infra_error_result(
                self.cell,
                f"the lab lost the cell's worker {len(self.lost)} time(s): {said}",
                attempts=len(self.lost),
            )
            return
        self.engine.submit_attempt(self)
