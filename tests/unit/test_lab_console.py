"""The serial console reader: real FIFOs, written the way QEMU writes them (opened read-write,
non-blocking), a real DomainWatch, a real serial log -- and the bounded copy into the report.

QEMU is played by this test: it opens ``<base>.out`` read-write after the console made it, as
QEMU does after libvirt started it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.errors import StorageError
from compatlab.lab.console import SerialConsole, console_pipe, keep_serial_log
from compatlab.lab.events import DomainWatch
from compatlab.lab.serial import SerialWatch
from compatlab.model import Event

KiB = 1024
MiB = 1024 * KiB


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def events(watch: DomainWatch, kind: str) -> list[Event]:
    return [e for e in watch.timeline.snapshot() if e.kind == kind]


@pytest.fixture
def watch() -> DomainWatch:
    return DomainWatch("compatlab-unit-console")


@pytest.fixture
def console(tmp_path: Path, watch: DomainWatch) -> Iterator[SerialConsole]:
    serial = SerialConsole(tmp_path / "serial", watch)
    serial.open()
    yield serial
    serial.close()


class Qemu:
    """The writer end as QEMU holds it: read-write, non-blocking; ``write`` retries on a full
    pipe, as QEMU's serial device retries a byte when the pipe has room."""

    def __init__(self, console: SerialConsole) -> None:
        self.fd = os.open(console.fifos[1], os.O_RDWR | os.O_NONBLOCK)

    def write(self, data: bytes, timeout: float = 10.0) -> None:
        view, end = memoryview(data), time.monotonic() + timeout
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                assert time.monotonic() < end, "the console stopped reading"
                time.sleep(0.001)

    def close(self) -> None:
        os.close(self.fd)


def test_the_pipe_is_found_in_the_domain_xml(tmp_path: Path) -> None:
    xml = (
        "<domain><devices><serial type='pipe'><source path='/cells/x/serial'/>"
        "<target port='0'/></serial></devices></domain>"
    )
    assert console_pipe(xml) == Path("/cells/x/serial")
    assert console_pipe("<domain><devices><serial type='file'/></devices></domain>") is None


def test_everything_from_the_first_byte_is_kept(console: SerialConsole) -> None:
    qemu = Qemu(console)
    boot = b"SeaBIOS (version 1.16)\r\ncompatlab-guest: boot 1 started\r\n"
    qemu.write(boot)
    wait_for(lambda: console.written == len(boot))
    assert console.log == console.pipe.with_name("serial.log")
    assert console.log.read_bytes() == boot
    qemu.close()


def test_a_flood_is_not_dropped_and_keeps_its_order(console: SerialConsole) -> None:
    """More than the pipe holds, as fast as the writer can: the reader keeps up, nothing is lost
    (QEMU holds the guest's UART back while the pipe is full)."""
    qemu = Qemu(console)
    lines = b"".join(b"flood line %07d\n" % n for n in range(200_000))  # 3.4 MiB
    qemu.write(lines)
    wait_for(lambda: console.written == len(lines))
    assert console.log.read_bytes() == lines
    assert console.discarded == 0
    qemu.close()


def test_a_power_cycle_is_no_end_of_file(console: SerialConsole) -> None:
    """QEMU goes (destroy) and a new one comes (create): the same log goes on."""
    first = Qemu(console)
    first.write(b"boot 1\n")
    first.close()
    time.sleep(0.2)  # no writer at all for a while
    second = Qemu(console)
    second.write(b"boot 2\n")
    wait_for(lambda: console.written == 14)
    assert console.log.read_bytes() == b"boot 1\nboot 2\n"
    assert console.running
    second.close()


def test_close_keeps_what_was_still_in_the_pipe_and_stops_the_thread(
    tmp_path: Path, watch: DomainWatch
) -> None:
    console = SerialConsole(tmp_path / "serial", watch)
    console.open()
    qemu = Qemu(console)
    qemu.write(b"Kernel panic - not syncing: Fatal exception\n")
    qemu.close()  # the domain was destroyed: QEMU is gone
    console.close()
    assert not console.running
    assert b"Kernel panic" in console.log.read_bytes()
    assert not [t for t in threading.enumerate() if t.name.startswith("compatlab-console-")]
    console.close()  # twice is harmless
    console.open()  # and a closed console stays closed
    assert not console.running


def test_open_twice_is_one_thread_and_the_fifos_may_exist(
    tmp_path: Path, watch: DomainWatch
) -> None:
    os.mkfifo(tmp_path / "serial.in")
    console = SerialConsole(tmp_path / "serial", watch)
    console.open()
    console.open()
    try:
        threads = [t for t in threading.enumerate() if t.name == f"compatlab-console-{watch.name}"]
        assert len(threads) == 1
    finally:
        console.close()


def test_a_cell_folder_that_refuses_is_a_storage_error(tmp_path: Path, watch: DomainWatch) -> None:
    console = SerialConsole(tmp_path / "gone" / "serial", watch)
    with pytest.raises(StorageError, match="serial console"):
        console.open()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "serial.out").write_text("not a fifo")
    with pytest.raises(StorageError):
        SerialConsole(tmp_path / "plain" / "serial", watch).open()


def test_a_log_that_cannot_be_written_is_said_and_the_guest_is_not_held_back(
    tmp_path: Path, watch: DomainWatch
) -> None:
    """/dev/full: every write fails with ENOSPC, like a full storage folder. The console says
    so once on the timeline and keeps emptying the pipe: the writer never blocks."""
    console = SerialConsole(tmp_path / "serial", watch, log=Path("/dev/full"))
    console.open()
    try:
        qemu = Qemu(console)
        qemu.write(b"x" * (1 * MiB), timeout=5.0)  # 16 pipes' worth: blocked if not drained
        wait_for(lambda: console.discarded == 1 * MiB)
        [lost] = events(watch, "console_lost")
        assert lost.source == "serial"
        assert "no longer kept" in lost.detail and "No space left" in lost.detail
        qemu.close()
    finally:
        console.close()


def test_a_removed_log_is_said_then_written_again_with_a_marker(
    console: SerialConsole, watch: DomainWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("compatlab.lab.console._RETRY", 0.05)
    qemu = Qemu(console)
    qemu.write(b"before\n")
    wait_for(lambda: console.written == 7)
    console.log.unlink()
    qemu.write(b"while gone\n")
    wait_for(lambda: bool(events(watch, "console_lost")))
    assert "removed" in events(watch, "console_lost")[0].detail
    time.sleep(0.1)
    qemu.write(b"after\n")
    wait_for(lambda: bool(events(watch, "console_back")))
    text = console.log.read_bytes()
    assert b"bytes of console output lost here" in text and text.endswith(b"after\n")
    qemu.close()


def test_the_log_on_disk_keeps_head_and_tail_and_its_offsets(
    tmp_path: Path, watch: DomainWatch
) -> None:
    """A guest that floods for hours: the middle of the storage file is freed (a hole), its
    size -- every offset SerialWatch and bugcheck() use -- is the whole console's."""
    head, tail = 256 * KiB, 512 * KiB
    console = SerialConsole(tmp_path / "serial", watch, head=head, tail=tail, punch_step=64 * KiB)
    console.open()
    qemu = Qemu(console)
    try:
        lines = b"".join(b"flood %08d\n" % n for n in range(500_000))  # 7.2 MiB
        panic = b"Kernel panic - not syncing: Fatal exception\n"
        qemu.write(b"compatlab-guest: boot 1 started\n" + lines + panic)
        total = 32 + len(lines) + len(panic)
        wait_for(lambda: console.written == total)
        status = console.log.stat()
        assert status.st_size == total
        assert status.st_blocks * 512 <= head + tail + 64 * KiB + 2 * 4096
        # What a SerialWatch started at offset 0 sees: the first boot's line and the panic,
        # at their true offsets; the freed middle is skipped, not read as a line.
        marker = SerialWatch(console.log, r"boot 1 started|Kernel panic", watch)
        marker.poll()
        found = {e.detail: int(e.data["offset"]) for e in events(watch, "boot_marker")}
        assert found == {
            "compatlab-guest: boot 1 started": 0,
            "Kernel panic - not syncing: Fatal exception": total - len(panic),
        }
        kept = tmp_path / "kept.log"
        keep_serial_log(console.log, kept, head=head, tail=tail)
        text = kept.read_bytes()
        assert text.startswith(b"compatlab-guest: boot 1 started\n")
        assert text.endswith(panic)
        dropped = total - head - tail
        assert f"[compatlab: {dropped} bytes of console output dropped here".encode() in text
        assert len(text) < head + tail + 300
        assert b"\x00" not in text
    finally:
        qemu.close()
        console.close()


def test_a_small_log_is_kept_whole(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"boot 1\n" * 1000)
    kept = tmp_path / "kept.log"
    assert keep_serial_log(log, kept, head=4 * KiB, tail=4 * KiB) == 7000
    assert kept.read_bytes() == log.read_bytes()


def test_keeping_a_big_log_reads_it_a_chunk_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    log = tmp_path / "serial.log"
    with log.open("wb") as handle:
        handle.write(b"first line\n")
        handle.truncate(40 * MiB)  # sparse: cheap to make
        handle.seek(0, os.SEEK_END)
        handle.write(b"last line\n")
    tracemalloc.start()
    try:
        keep_serial_log(log, tmp_path / "kept.log", head=12 * MiB, tail=12 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB
    text = (tmp_path / "kept.log").read_bytes()
    assert text.startswith(b"first line\n") and text.endswith(b"last line\n")


# -- a Machine's console: libvirt's test:///default driver (no QEMU), real threads -------------


def _pipe_domain(name: str, pipe: Path) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os><devices>"
        f"<serial type='pipe'><source path='{pipe}'/><target port='0'/></serial>"
        "</devices></domain>"
    )


def _console_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"compatlab-console-{name}"]


def test_a_machine_reads_its_console_from_before_its_start_until_its_close(
    tmp_path: Path,
) -> None:
    import uuid

    from compatlab.lab.connection import Hypervisor
    from compatlab.lab.machine import Machine

    name = f"compatlab-unit-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "cell"
    folder.mkdir()
    with Hypervisor("test:///default") as hv:
        with Machine(hv, _pipe_domain(name, folder / "serial"), folder) as machine:
            assert machine.console is not None and not machine.console.running
            machine.start()
            assert machine.console.running and len(_console_threads(name)) == 1
            qemu = Qemu(machine.console)
            qemu.write(b"compatlab-guest: boot 1 started\n")
            qemu.close()
            machine.power_cycle()  # the same console goes on
            assert len(_console_threads(name)) == 1
            # The reader lets output gather before it writes: wait for the line, not the file.
            log = folder / "serial.log"
            wait_for(lambda: log.exists() and b"boot 1 started" in log.read_bytes())
        assert not _console_threads(name)
        assert not folder.exists()


def test_a_machine_interrupted_leaves_no_console_running(tmp_path: Path) -> None:
    import uuid

    from compatlab.lab.connection import Hypervisor
    from compatlab.lab.machine import Machine

    name = f"compatlab-unit-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "cell"
    folder.mkdir()
    with Hypervisor("test:///default") as hv:
        with (
            pytest.raises(KeyboardInterrupt),
            Machine(hv, _pipe_domain(name, folder / "serial"), folder) as machine,
        ):
            machine.start()
            assert _console_threads(name)
            raise KeyboardInterrupt
        assert not _console_threads(name)
