"""A cell's evidence: the serial log, console screenshots, the crash code -- and keeping them.

Everything here is best effort on purpose: failing to take a screenshot must never hide a
verdict. What the report shows is copied out of the cell's storage folder (which is removed
with the VM) into the run's report folder before the VM goes.

The serial log is the guest's to fill: a boot loop or a flooding console makes it hundreds of
MiB. It is read as a stream (:func:`serial_lines`), never whole: from an offset, at most its
last :data:`SERIAL_WINDOW` bytes, one line of at most :data:`SERIAL_LINE` bytes at a time. A
panic is the last thing a kernel prints, so the window holds the crash just seen. The runner
writes the log itself, from the first byte, as one file (``lab/console.py``): its offsets are
those of the whole console, and it keeps its head and its newest
:data:`~compatlab.lab.console.TAIL_BYTES` (more than the window), so the window is always there.
The report gets head, a marker of what was dropped, and tail (:func:`keep_serial_log`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from compatlab.bugcheck import PANIC_WORDS, find_hyperv_panic, parse_linux_panic
from compatlab.catalog import OsFamily
from compatlab.errors import CompatlabError
from compatlab.lab.console import keep_serial_log
from compatlab.lab.machine import Machine
from compatlab.lab.storage import CellStorage
from compatlab.model import Bugcheck

__all__ = ["SERIAL_LINE", "SERIAL_WINDOW", "CellEvidence", "serial_lines"]

SERIAL_WINDOW = 8 * 1024 * 1024  # bytes at the end of the serial log searched for a panic
SERIAL_LINE = 64 * 1024  # bytes of one serial line kept; the rest of the line is skipped
_CHUNK = 256 * 1024  # bytes read at a time


def serial_lines(
    path: Path,
    offset: int = 0,
    *,
    window: int = SERIAL_WINDOW,
    line_limit: int = SERIAL_LINE,
    containing: Sequence[str] = (),
) -> Iterator[str]:
    """The lines of ``path`` from byte ``offset`` on, as text (newlines kept), read as a stream.

    When more than ``window`` bytes follow ``offset``, only the last ``window`` are read, from
    the first line that starts in them. A line longer than ``line_limit`` is cut there (and
    comes without its newline). Only what the file held when the call started is read: the
    console appending meanwhile does not make it longer. Memory is a chunk of :data:`_CHUNK`
    bytes and its lines, whatever the file's size. With ``containing``, only the lines that
    contain one of those strings come, found a chunk at a time (a flooded log is skipped at the
    speed of ``str.find``, not of a Python loop). Raises OSError when the file cannot be opened.
    """
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        start = max(offset, end - window, 0)
        if start >= end:
            return
        dropping = False  # inside a line whose rest is not wanted
        if start > offset:
            # Landed inside the log: unless a line starts here, the first one is a piece.
            handle.seek(start - 1)
            dropping = handle.read(1) != b"\n"
        handle.seek(start)
        left = end - start
        carry = b""  # the line being read, not ended yet
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            if dropping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    continue
                chunk, dropping = chunk[newline + 1 :], False
            data = carry + chunk
            last = data.rfind(b"\n")
            if last >= 0:
                # Decoded a chunk at a time, cut at a newline: no character is split.
                text = data[:last].decode("utf-8", errors="replace")
                lines = _lines_with(text, containing) if containing else text.split("\n")
                for line in lines:
                    yield line[:line_limit] if len(line) > line_limit else line + "\n"
            carry = data[last + 1 :]
            if len(carry) > line_limit:
                cut = carry[:line_limit].decode("utf-8", errors="replace")
                if _holds(cut, containing):
                    yield cut
                carry, dropping = b"", True
        if carry and not dropping:
            rest = carry.decode("utf-8", errors="replace")
            if _holds(rest, containing):
                yield rest


def _holds(line: str, words: Sequence[str]) -> bool:
    return not words or any(word in line for word in words)


def _lines_with(text: str, words: Sequence[str]) -> list[str]:
    """The lines of ``text`` (split at newlines) that contain one of ``words``, in order."""
    starts: set[int] = set()
    for word in words:
        at = text.find(word)
        while at >= 0:
            starts.add(text.rfind("\n", 0, at) + 1)
            end = text.find("\n", at)
            if end < 0:
                break
            at = text.find(word, end + 1)
    lines = []
    for start in sorted(starts):
        end = text.find("\n", start)
        lines.append(text[start : len(text) if end < 0 else end])
    return lines


class CellEvidence:
    """The evidence of one VM of a cell; ``folder`` is where it is kept, under ``report_dir``."""

    def __init__(
        self, storage: CellStorage, machine: Machine, folder: Path, report_dir: Path
    ) -> None:
        self.storage = storage
        self.machine = machine
        self.folder = folder
        self.report_dir = report_dir

    def serial_size(self) -> int:
        """Where the serial log ends now: the next boot's output starts here."""
        try:
            return self.storage.serial_log.stat().st_size
        except OSError:
            return 0

    def serial_text(self, offset: int = 0) -> str:
        """The serial output from ``offset`` on, at most its last :data:`SERIAL_WINDOW` bytes
        (see :func:`serial_lines`); "" when there is no log. To find a panic, prefer
        :meth:`linux_panic`, which does not hold the text at all."""
        try:
            return "".join(serial_lines(self.storage.serial_log, offset))
        except OSError:
            return ""

    def linux_panic(self, offset: int = 0) -> Bugcheck | None:
        """The first kernel panic in the serial output from ``offset`` on (in its last
        :data:`SERIAL_WINDOW` bytes), read as a stream; None when there is none or no log."""
        try:
            lines = serial_lines(self.storage.serial_log, offset, containing=PANIC_WORDS)
            return parse_linux_panic(lines)
        except OSError:
            return None

    def bugcheck(self, os_family: OsFamily, serial_offset: int) -> Bugcheck | None:
        """The crash code of the crash just seen: Windows from the domain log's Hyper-V crash
        line, Linux from the panic in this boot's serial output."""
        if os_family == "windows":
            return find_hyperv_panic(self.machine.domain_log())
        return self.linux_panic(serial_offset)

    def screenshot(self, name: str) -> None:
        with contextlib.suppress(CompatlabError):
            self.machine.screenshot(self.storage.screenshot(name))

    def keep(self) -> dict[str, str]:
        """Copy the serial log (the whole console, or its head and tail with a marker between:
        :func:`~compatlab.lab.console.keep_serial_log`) and screenshots into the report; their
        paths, for artifacts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        relative = self.folder.relative_to(self.report_dir).as_posix()
        artifacts: dict[str, str] = {}
        if self.storage.serial_log.exists():
            keep_serial_log(self.storage.serial_log, self.folder / "serial.log")
            artifacts["serial_log"] = f"{relative}/serial.log"
        shots = sorted(self.storage.screenshots.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for shot in shots:
            shutil.copyfile(shot, self.folder / shot.name)
        if shots:
            # The last one is the state the cell ended in (the crash or the hang screen).
            artifacts["screenshot"] = f"{relative}/{shots[-1].name}"
        return artifacts
