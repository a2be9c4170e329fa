"""The serial log tail: a real file written the way QEMU appends to it, a real DomainWatch.

Most tests call :meth:`SerialWatch.poll` directly, which is what the thread does every
:data:`POLL_INTERVAL`; the thread's own behaviour (waking, stopping, surviving errors) is tested
through :meth:`SerialWatch.start` with a short poll interval.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from compatlab.lab.events import DomainWatch
from compatlab.lab.serial import DETAIL_LENGTH, MAX_LINE, SerialWatch, clean_line
from compatlab.model import Event

MARKER = re.compile(r"^compatlab-guest: services started")
BOOT = (
    b"[    0.000000] Linux version 6.1.0-56-amd64\r\n"
    b"compatlab-guest: boot 1 started\r\n"
    b"compatlab-guest: services started\r\n"
    b"compatlab-guest: agent started\r\n"
)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as log:
        log.write(data)


def markers(watch: DomainWatch) -> list[Event]:
    return [e for e in watch.timeline.snapshot() if e.kind == "boot_marker"]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "serial.log"


def test_matching_line_is_recorded_with_its_offset(log_path: Path) -> None:
    append(log_path, BOOT)
    watch = DomainWatch("cell")
    SerialWatch(log_path, MARKER, watch).poll()
    [event] = markers(watch)
    assert (event.source, event.kind) == ("serial", "boot_marker")
    assert event.detail == "compatlab-guest: services started"
    assert int(event.data["offset"]) == BOOT.index(b"compatlab-guest: services")
    assert watch.wait({"boot_marker"}, timeout=0) == event


def test_reads_only_what_was_appended_each_boot_once(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, "services started", watch)
    append(log_path, BOOT)
    serial.poll()
    serial.poll()  # nothing new: nothing recorded again
    assert len(markers(watch)) == 1
    append(log_path, BOOT.replace(b"boot 1", b"boot 2"))
    serial.poll()
    first, second = markers(watch)
    assert int(second.data["offset"]) == len(BOOT) + int(first.data["offset"])
    assert serial.offset == 2 * len(BOOT)


def test_a_line_written_in_pieces_counts_when_it_ends(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch)
    for piece in (b"compatlab-gu", b"est: services st", b"arted"):
        append(log_path, piece)
        serial.poll()
        assert markers(watch) == []
    append(log_path, b"\r\n")
    serial.poll()
    assert [e.detail for e in markers(watch)] == ["compatlab-guest: services started"]


def test_a_log_that_does_not_exist_yet_is_waited_for(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch)
    serial.poll()
    append(log_path, BOOT)
    serial.poll()
    assert len(markers(watch)) == 1


def test_offset_skips_what_earlier_boots_printed(log_path: Path) -> None:
    append(log_path, BOOT)
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch, offset=log_path.stat().st_size)
    serial.poll()
    assert markers(watch) == []
    append(log_path, BOOT)
    serial.poll()
    [event] = markers(watch)
    assert int(event.data["offset"]) > len(BOOT)


def test_truncated_log_is_read_again_from_its_start(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch)
    append(log_path, BOOT + b"half a li")
    serial.poll()
    log_path.write_bytes(b"compatlab-guest: services started\n")  # truncated, then written
    serial.poll()
    _, second = markers(watch)
    assert second.data["offset"] == "0"
    assert second.detail == "compatlab-guest: services started"  # no "half a li" prefix


def test_replaced_log_is_read_from_its_start(log_path: Path, tmp_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch)
    append(log_path, b"x" * 500 + b"\n")
    serial.poll()
    fresh = tmp_path / "fresh.log"
    fresh.write_bytes(b"y" * 600 + b"\n" + BOOT)  # longer than the old one: size alone can't tell
    os.replace(fresh, log_path)
    serial.poll()
    assert len(markers(watch)) == 1


def test_escapes_and_control_characters_are_stripped_and_detail_is_cut(log_path: Path) -> None:
    line = (
        b"\x1b[1;32mcompatlab-guest: services started\x1b[0m \x1b7\x1b(B\x1b]0;title\x07\x07ok\t"
        + "é".encode()
        + b"\xff"
        + b"z" * 400
        + b"\r\n"
    )
    append(log_path, line)
    watch = DomainWatch("cell")
    SerialWatch(log_path, MARKER, watch).poll()
    [event] = markers(watch)
    assert event.detail.startswith("compatlab-guest: services started ok\té\ufffdzzz")
    assert len(event.detail) == DETAIL_LENGTH
    assert clean_line(b"\x00a\x1b[2Jb\rc\x7f") == "abc"


def test_overlong_line_is_cut_and_the_next_line_still_seen(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, r"^compatlab-guest: services started|tail-end", watch)
    append(log_path, b"compatlab-guest: services started " + b"x" * (3 * MAX_LINE))
    serial.poll()
    assert len(serial._partial) <= MAX_LINE  # bounded while the line is still being written
    append(log_path, b"x" * MAX_LINE + b" tail-end\n" + BOOT)
    serial.poll()
    # The long line is matched on its first MAX_LINE bytes (its tail-end was cut off).
    first, second = markers(watch)
    assert first.data["offset"] == "0" and len(first.detail) == DETAIL_LENGTH
    assert int(second.data["offset"]) == 4 * MAX_LINE + len(" tail-end\n") + len(
        "compatlab-guest: services started "
    ) + BOOT.index(b"compatlab-guest: services")


def test_a_big_log_never_lands_in_memory(log_path: Path) -> None:
    """A boot loop's log: 24 MiB of console output, read with a few MiB at most."""
    block = (b"[   12.345678] some driver said something unremarkable\r\n" * 1000)[: 1 << 20]
    with log_path.open("wb") as log:
        for _ in range(24):
            log.write(block)
        log.write(BOOT)
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch)
    tracemalloc.start()
    try:
        serial.poll()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(markers(watch)) == 1
    assert serial.offset == log_path.stat().st_size
    assert peak < 6 << 20, f"peak {peak / 2**20:.1f} MiB"


# -- the thread ---------------------------------------------------------------------------------


def test_thread_records_within_a_poll_and_stops(log_path: Path) -> None:
    watch = DomainWatch("cell")
    serial = SerialWatch(log_path, MARKER, watch, poll_interval=0.02)
    serial.start()
    serial.start()  # a second start does not start a second thread
    assert _threads("compatlab-serial-cell") == 1
    append(log_path, BOOT)
    event = watch.wait({"boot_marker"}, timeout=5)
    assert event is not None and event.detail == "compatlab-guest: services started"
    serial.stop()
    serial.stop()
    assert _threads("compatlab-serial-cell") == 0
    serial.start()  # stopped stays stopped
    assert _threads("compatlab-serial-cell") == 0


def test_stop_before_start_is_harmless(log_path: Path) -> None:
    serial = SerialWatch(log_path, MARKER, DomainWatch("unstarted"))
    serial.stop()
    serial.start()
    assert _threads("compatlab-serial-unstarted") == 0


def test_thread_survives_errors_and_logs_each_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "serial.log"
    path.mkdir()  # unreadable as a log: every poll fails the same way
    watch = DomainWatch("cell")
    with (
        caplog.at_level(logging.ERROR, "compatlab.lab"),
        SerialWatch(path, MARKER, watch, poll_interval=0.01),
    ):
        time.sleep(0.2)
        path.rmdir()
        append(path, BOOT)
        assert watch.wait({"boot_marker"}, timeout=5) is not None
    failures = [r for r in caplog.records if "reading serial log" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is IsADirectoryError


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())
