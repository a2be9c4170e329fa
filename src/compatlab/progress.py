"""The running cells' phases on the terminal line, updated in place.

Cells run side by side on the engine's threads and report their phase from there
(:meth:`Progress.__call__` only records it); the main thread, waiting for a cell's result,
draws the line between polls (:meth:`Progress.render`), so pytest's terminal is only ever
written from the thread pytest writes from. Shown only on an interactive terminal and not
under ``-q``: CI logs and piped output stay clean. Under xdist the workers have no terminal, so
nothing is shown; on a lab's workers (``--matrix-scheduler``) phases are not sent back.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

from compatlab.text import one_line

__all__ = ["Progress"]


class Progress:
    def __init__(self, config: pytest.Config) -> None:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        self.tw = getattr(reporter, "_tw", None)
        self.shown = 0
        # During a test pytest captures fd 1; live output must step around it, as pytest's own
        # live logging does -- and only then can it ask whether stdout is a terminal.
        self.capture = config.pluginmanager.getplugin("capturemanager")
        self.enabled = (
            self.tw is not None
            and config.get_verbosity() >= 0
            and not hasattr(config, "workerinput")
        )
        self._tty: bool | None = None
        self._phases: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, cell: str, phase: str) -> None:
        """A cell's phase (from any thread); an empty phase: the cell is done."""
        with self._lock:
            if phase:
                self._phases[cell] = phase
            else:
                self._phases.pop(cell, None)

    def line(self) -> str:
        with self._lock:
            phases = list(self._phases.items())
        if not phases:
            return ""
        shown = "; ".join(f"{cell}: {phase}" for cell, phase in phases)
        return f"[{len(phases)} running: {shown}]" if len(phases) > 1 else f"[{shown}]"

    def render(self) -> None:
        """Draw the line (the main thread, between polls for a result)."""
        if not self.enabled or self.tw is None:
            return
        with self._uncaptured():
            if not self._is_tty():
                self.enabled = False
                return
            self._erase()
            room = max(self.tw.fullwidth - self.tw.width_of_current_line - 4, 0)
            line = self.line()
            text = " " + one_line(line, room - 1) if room > 1 and line else ""
            self.tw.write(text, cyan=True, flush=True)
            self.shown = len(text)

    def clear(self) -> None:
        if self.enabled and self.tw is not None and self.shown:
            with self._uncaptured():
                self._erase()

    def _is_tty(self) -> bool:
        if self._tty is None:
            stream = getattr(self.tw, "_file", None)
            self._tty = bool(stream is not None and stream.isatty())
        return self._tty

    def _erase(self) -> None:
        if self.tw is not None and self.shown:
            self.tw.write("\b" * self.shown + "\x1b[K", flush=True)
            self.shown = 0

    def _uncaptured(self) -> Any:
        if self.capture is None:
            return contextlib.nullcontext()
        return self.capture.global_and_fixture_disabled()
