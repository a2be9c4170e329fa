"""A pytest session's cells on the engine: all submitted at once, each item waits for its own.

pytest runs one item at a time; the cells must not. At the first cell item, :class:`CellQueue`
submits every selected cell (after ``-k``, ``--lf``, ``--deselect``; none under
``--collect-only``) to the engine, each with the seconds it is expected to take (``expect``:
from earlier runs, :mod:`compatlab.engine.earlier`), and each item then waits for its cell's one
result. The engine runs as many at once as the capacity allows, longest expected first
(:mod:`compatlab.engine.order`), so the run takes about as long as its longest chain of cells per
slot, and pytest's reporting -- one item per cell in item order, junit, ``--lf``, the terminal
summary -- is unchanged.

Under pytest-xdist each xdist worker has a queue of its own, with the capacity divided by the
number of workers: together they never overcommit the host (``-n`` is no longer needed). A
worker collects every item but runs only those xdist hands it, so it submits only the cell of
the item it runs (``CellItem.runtest``): every cell runs once, whatever the number of workers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.capacity import Capacity, machine_capacity
from compatlab.engine.cluster import CellHandle, DaskEngine
from compatlab.engine.order import cell_key
from compatlab.errors import LabError
from compatlab.model import CellResult

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.run import LabRun

__all__ = ["CellQueue", "default_capacity"]

log = logging.getLogger("compatlab.engine")


def default_capacity(configured: Capacity | None, *, share: int = 1) -> Capacity:
    """The capacity of this runner: ``configs/lab.yaml``'s, else the machine's; divided by
    ``share`` (xdist workers), never below one VM's worth of vCPUs. Either way with the labels
    the machine offers (swtpm: ``tpm``): the lab file sizes the capacity, not what it can run."""
    import shutil

    labels = ("tpm",) if shutil.which("swtpm") else ()
    if configured is None:
        base = machine_capacity(labels=labels)
    else:
        base = replace(configured, labels=configured.labels | frozenset(labels))
    if share <= 1:
        return base
    return replace(
        base, vcpus=max(1, base.vcpus // share), memory_mib=max(1, base.memory_mib // share)
    )


def xdist_share() -> int:
    try:
        return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        return 1


class CellQueue:
    """The cells of one pytest process, on one engine."""

    def __init__(
        self,
        run: LabRun,
        *,
        report_dir: Path,
        scheduler: str | None,
        capacity: Capacity,
        repeat: int = 1,
        expect: Callable[[Sequence[Cell]], Mapping[tuple[str, str], float]] = lambda cells: {},
    ) -> None:
        self.run = run
        self.repeat = repeat
        self._expect = expect
        self._expected: Mapping[tuple[str, str], float] = {}
        self.engine = DaskEngine(
            run_id=run.run_id,
            report_dir=report_dir,
            scheduler=scheduler,
            capacity=capacity,
            attempts=run.settings.attempts,
            lab=run.lab,
            stop=run.stop,
            progress=run.progress,
        )
        self._handles: dict[tuple[str, str], list[CellHandle]] = {}
        self._started = False
        self._error: str | None = None
        self._lock = threading.Lock()

    def submit(self, cells: Sequence[Cell]) -> None:
        """Start the engine and submit ``cells``, longest expected first (once; later calls
        add nothing)."""
        with self._lock:
            if self._started:
                return
            self._started = True
            try:
                self.engine.start()
            except LabError as exc:
                self._error = str(exc)  # every cell's result says so: infra_error
                return
            try:
                self._expected = self._expect(cells)
            except Exception as exc:  # an expectation only orders: never worth the run
                log.warning("compatlab: cells go in item order: %s", exc)
            order = [(c, n, self._expected.get(cell_key(c))) for c in cells for n in self._repeats]
            handles = iter(self.engine.submit_many(order))
            for cell in cells:
                self._handles[cell_key(cell)] = [next(handles) for _ in self._repeats]

    @property
    def _repeats(self) -> range:
        return range(1, self.repeat + 1)

    def _submit(self, cell: Cell) -> list[CellHandle]:
        expected = self._expected.get(cell_key(cell))
        return [self.engine.submit(cell, repeat=n, expected=expected) for n in self._repeats]

    def wait(self, cell: Cell, tick: Callable[[], None] = lambda: None) -> CellResult:
        """The cell's one result (submitting it alone if it was not among the first ones)."""
        from compatlab.repeats import combine
        from compatlab.scenario import infra_error_result

        handles = self._handles.get(cell_key(cell))
        if handles is None:
            if self._error is not None:
                return infra_error_result(cell, self._error)
            handles = self._handles[cell_key(cell)] = self._submit(cell)
        # Each repeat is a whole run; the cell's result is the worst of them (repeats.py).
        return combine([handle.wait(tick) for handle in handles])

    def close(self, *, stop: bool) -> None:
        self.engine.close(stop=stop)
