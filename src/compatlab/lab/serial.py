"""The serial console, read as it is written: a second sign that a boot has completed.

The guest channel answering is the first sign of a completed boot; a candidate that breaks the
agent (or WinRM) takes that sign away while the OS itself is up. Many images also print a line
on their serial console when they have finished booting (the image's ``boot_complete``
pattern). A :class:`SerialWatch` tails the cell's serial log -- the file the runner's console
reader (``lab/console.py``) appends the guest's console to -- on its own thread, and records
each matching line on the domain's watch as a ``serial``/``boot_marker`` event, so the runner
learns of it the same way it learns of a crash. Where the console reader dropped the middle of
a flooded log, the file reads as zeros there (a hole): no line, no marker, offsets unchanged.

The log is read incrementally from the last offset, in bounded chunks: a boot loop's 300 MiB
log never lands in memory, and a line longer than :data:`MAX_LINE` bytes is cut. A log that
does not exist yet is waited for; one that shrinks or is replaced is read again from its start.
A marker is seen within :data:`POLL_INTERVAL` of the guest printing it -- so a marker printed
just before the guest reset itself can land on the timeline *after* that reset's event. Its
``offset`` says which boot printed it: compare it with the log's size when the reset was seen
(``CellEvidence.serial_size()``). Like the event callbacks, the thread never raises: an error is
logged and the next poll tries again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from types import TracebackType

from compatlab.lab.events import DomainWatch

__all__ = ["DETAIL_LENGTH", "MAX_LINE", "POLL_INTERVAL", "SerialWatch", "clean_line"]

log = logging.getLogger("compatlab.lab")

POLL_INTERVAL = 0.2
MAX_LINE = 64 * 1024  # bytes of one line that are kept and matched; the rest is dropped
DETAIL_LENGTH = 200  # characters of the matching line kept in the event's detail
_CHUNK = 1024 * 1024  # bytes read at a time

# CSI sequences (colours, cursor moves), OSC (window titles), other escapes (charsets, cursor
# save), then what else is control: the matched line is what a person would read.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def clean_line(raw: bytes) -> str:
    """One console line as text: UTF-8 (bad bytes replaced), without terminal escapes,
    carriage returns or other control characters; tabs are kept."""
    text = raw.decode("utf-8", errors="replace")
    return _CONTROL.sub("", _ANSI.sub("", text))


class SerialWatch:
    """Tails one serial log and records a ``boot_marker`` event per line matching ``pattern``.

    The event is ``source="serial", kind="boot_marker"``, its detail the cleaned line (at most
    :data:`DETAIL_LENGTH` characters) and ``data["offset"]`` the byte offset where the line
    starts in the log, to tell which boot printed it. Reading starts at ``offset`` (0: the
    whole log; the current size: only what comes next). The pattern is searched in each
    cleaned line, so ``^`` anchors at the line's first printable character.
    """

    def __init__(
        self,
        path: Path,
        pattern: re.Pattern[str] | str,
        watch: DomainWatch,
        *,
        offset: int = 0,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.path = path
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        self.watch = watch
        self.poll_interval = poll_interval
        self._offset = offset  # next byte to read
        self._line_start = offset  # where the line in _partial started
        self._partial = bytearray()  # the current line so far, at most MAX_LINE bytes
        self._cut = False  # the current line was longer than MAX_LINE: skip to its end
        self._inode: int | None = None
        self._last_error: str | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # start/stop from different threads

    def __repr__(self) -> str:
        return f"SerialWatch({str(self.path)!r}, {self.pattern.pattern!r}, at {self._offset})"

    def __enter__(self) -> SerialWatch:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def offset(self) -> int:
        """How far into the log the watch has read."""
        return self._offset

    def start(self) -> None:
        """Start tailing on a daemon thread. A second call does nothing; nor does a call after
        :meth:`stop` (a stopped watch stays stopped)."""
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=self._loop, name=f"compatlab-serial-{self.watch.name}", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop tailing and wait for the thread; safe to call twice, or before :meth:`start`."""
        self._stopped.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # the thread: never raises --------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self.poll()
                self._last_error = None
            except Exception as exc:
                # Log a recurring failure once, not five times a second.
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_error:
                    log.exception("reading serial log %s failed; still watching", self.path)
                    self._last_error = text
            self._stopped.wait(self.poll_interval)

    def poll(self) -> None:
        """Read what was appended since the last poll. The thread calls this; so can a test, or
        a caller that never started the thread -- never both at once."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return  # the console has not created it yet, or the cell's storage is gone
        with handle:
            status = os.fstat(handle.fileno())
            if self._inode is not None and status.st_ino != self._inode:
                log.debug("serial log %s was replaced; reading it from the start", self.path)
                self._rewind()
            elif status.st_size < self._offset:
                log.debug("serial log %s shrank; reading it from the start", self.path)
                self._rewind()
            self._inode = status.st_ino
            handle.seek(self._offset)
            while not self._stopped.is_set():
                chunk = handle.read(_CHUNK)
                if not chunk:
                    return
                self._feed(chunk)

    def _rewind(self) -> None:
        self._offset = self._line_start = 0
        self._partial.clear()
        self._cut = False

    def _feed(self, chunk: bytes) -> None:
        """Split a chunk into lines; complete lines are matched, the rest waits for the next."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._cut:
                room = MAX_LINE - len(self._partial)
                self._partial += piece[:room]
                self._cut = len(piece) > room
            if end < 0:
                self._offset += len(chunk) - start
                return
            self._offset += end + 1 - start
            self._line_done(bytes(self._partial))
            self._partial.clear()
            self._cut = False
            self._line_start = self._offset
            start = end + 1

    def _line_done(self, raw: bytes) -> None:
        line = clean_line(raw)
        if self.pattern.search(line):
            self.watch.record(
                "serial", "boot_marker", line[:DETAIL_LENGTH], offset=str(self._line_start)
            )
