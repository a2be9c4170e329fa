"""The running cells' phases: recorded from any thread, drawn by pytest's main thread only.

Cells run side by side on the engine's threads -- or on a lab's workers, whose phases come back
as Dask events received on the client's thread (:mod:`compatlab.engine.task`) -- and report
their phase from there: :meth:`Progress.__call__` only records it, under a lock. The main
thread, waiting for a cell's result, draws the live display between polls
(:meth:`Progress.render`: every running cell's phase and elapsed time under a header such as
``3 running, 9 done, 12 queued``) and erases it before pytest writes the item's outcome
(:meth:`Progress.clear`). So pytest's terminal is only ever written from the thread pytest
writes from, and only while pytest has nothing half-written but its own current line, which
the display leaves as it found it (:mod:`compatlab.display`).

The display is for a person at a terminal; see :func:`quiet_reason` for when it stays quiet.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from compatlab.display import Running, Snapshot, TerminalBlock, compose

__all__ = ["Progress", "quiet_reason"]


def quiet_reason(
    *,
    verbosity: int,
    xdist_worker: bool,
    live_logging: bool,
    environ: Mapping[str, str],
) -> str | None:
    """Why the display must not be drawn, or None. (Whether stdout is a terminal is asked at
    the first draw: only then is pytest's capture stepped around.)"""
    if verbosity < 0:
        return "-q"
    if xdist_worker:
        return "an xdist worker: its output goes to the controller, not to a terminal"
    if live_logging:
        return "live logging (log_cli) writes log lines where the display is"
    if environ.get("TERM") == "dumb":
        return "TERM=dumb: the terminal cannot move its cursor"
    if "CI" in environ or "BUILD_NUMBER" in environ:  # pytest's own test for a CI run
        return "a CI run: its log keeps every byte written"
    return None


class Progress:
    """The cells' phases of one pytest process, and its live display.

    ``clock`` measures elapsed times (monotonic seconds); ``block`` is where the display is
    drawn, None when it is quiet (:attr:`quiet` says why).
    """

    def __init__(
        self,
        block: TerminalBlock | None,
        *,
        quiet: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.block = block
        self.quiet = quiet if block is not None else (quiet or "no terminal")
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, Running] = {}
        self._ended: set[str] = set()
        self._planned = 0

    @classmethod
    def for_config(
        cls,
        config: pytest.Config,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Progress:
        """The display on pytest's terminal writer, unless a rule keeps it quiet."""
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        tw = getattr(reporter, "_tw", None)
        quiet = quiet_reason(
            verbosity=config.get_verbosity(),
            xdist_worker=hasattr(config, "workerinput"),
            live_logging=_live_logging(config),
            environ=os.environ if environ is None else environ,
        )
        if tw is None or quiet is not None:
            return cls(None, quiet=quiet, clock=clock)
        capture = config.pluginmanager.getplugin("capturemanager")
        return cls(TerminalBlock(tw, capture), clock=clock)

    # -- from any thread ------------------------------------------------------------------

    def __call__(self, cell: str, phase: str, elapsed: float | None = None) -> None:
        """A cell's phase; an empty phase: the cell is done. ``elapsed``: the cell's seconds
        so far where they were measured elsewhere (a lab's worker: its clock is not ours)."""
        now = self._clock()
        with self._lock:
            if not phase:
                self._running.pop(cell, None)
                self._ended.add(cell)
                return
            before = self._running.get(cell)
            if before is not None:
                since = before.since
            else:
                since = now - elapsed if elapsed is not None else now
            self._running[cell] = Running(cell, phase, since)
            self._ended.discard(cell)  # a cell whose attempt was lost runs again

    def plan(self, cells: int) -> None:
        """How many cells this process has submitted (the rest of them are queued)."""
        with self._lock:
            self._planned = max(self._planned, cells)

    def finished(self, cell: str) -> None:
        """The cell's result is in (also for a cell the engine refused before it ran)."""
        self(cell, "")

    def snapshot(self) -> Snapshot:
        now = self._clock()
        with self._lock:
            running = tuple(sorted(self._running.values(), key=lambda r: (r.since, r.cell)))
            done = len(self._ended)
            planned = self._planned
        return Snapshot(running, done, max(planned - len(running) - done, 0), now)

    # -- from pytest's main thread only ---------------------------------------------------

    def render(self) -> None:
        """Draw the display (between polls for a result). From any other thread: nothing --
        pytest writes its terminal from the main thread, and two writers would interleave."""
        block = self.block
        if block is None or threading.current_thread() is not threading.main_thread():
            return
        with block.uncaptured():
            if not block.isatty():
                self.block, self.quiet = None, "stdout is not a terminal"
                return
            width, height = block.size()
            # One column short of the edge (no line may wrap: the erase counts lines), and
            # one row short of the screen (pytest's line must stay on it to come back to).
            lines = compose(self.snapshot(), width=width - 1, height=height - 1, color=block.color)
            block.draw(lines)

    def clear(self) -> None:
        """Erase the display (before pytest writes the item's outcome)."""
        block = self.block
        if block is None or threading.current_thread() is not threading.main_thread():
            return
        if block.shown:
            with block.uncaptured():
                block.erase()


def _live_logging(config: pytest.Config) -> bool:
    try:
        level: Any = config.getoption("log_cli_level", None)
        return level is not None or bool(config.getini("log_cli"))
    except (ValueError, KeyError):  # the logging plugin is disabled (-p no:logging)
        return False
