"""A scripted guest on libvirt's ``test:///default`` driver: whole cells in milliseconds.

The lab is real -- :class:`~compatlab.lab.machine.Machine` defines, starts, resets and destroys a
domain on the test driver, and its ``started``/``stopped`` events come from libvirt's event loop.
The guest is not: :class:`ScriptedGuest` is a typed :class:`~compatlab.guest.channel.Channel`
that answers pings, runs commands and crashes as a test scripts it, and tells the domain's event
stream what a real guest's would, in the shapes recorded from real QEMU guests here:

* a kernel panic: ``crashed``/``panicked`` (libvirt lifecycle), the panic text on the serial log;
* a warm reset after a crash (reset + resume): two ``reboot`` events ~40 ms apart;
* a guest reboot: one ``reboot`` event;
* the serial console's boot-complete line: ``boot_marker``.

Boot scripts: ``ok``; ``crash`` (panics at once); ``hang`` (never answers); ``dead-agent`` (boots,
prints its boot-complete line, the agent never answers); ``reset`` (resets itself before it
answers); ``agent-dies`` (answers once, completing the boot, then its agent is dead for the rest
of that boot: the guest stays up).

Nothing here is Windows or QEMU; it exists so every wrong-verdict path of the runner has a test
that runs in the unit tier.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from compatlab.errors import GuestTimeout, GuestUnreachable
from compatlab.guest.channel import CommandResult
from compatlab.lab.connection import Hypervisor
from compatlab.lab.machine import Machine
from compatlab.lab.storage import CellStorage

BootScript = Literal["ok", "crash", "hang", "dead-agent", "reset", "agent-dies"]
# A list: one result per call, in order, the last one repeated.
CommandScript = (
    CommandResult | list[CommandResult] | Literal["crash", "restart", "hang", "disk-full"]
)

PANIC = """\
BUG: kernel NULL pointer dereference, address: 000000000000009c
#PF: supervisor read access in kernel mode
Oops: 0000 [#1] PREEMPT SMP NOPTI
RIP: 0010:acme_check_neighbours+0x24/0x60 [acme_sensor]
Kernel panic - not syncing: Fatal exception
"""


class TestMachine(Machine):
    """A Machine on the test driver: media changes are remembered (the driver has no
    updateDeviceFlags), and a warm reset reports the two REBOOT events QEMU's does."""

    __test__ = False

    def __init__(self, hypervisor: Hypervisor, xml: str, storage_dir: Path, *, epoch: float):
        name = ET.fromstring(xml).findtext("name")
        test_xml = (
            f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type>hvm</type></os></domain>"
        )
        super().__init__(hypervisor, test_xml, storage_dir, epoch=epoch)
        self.media: list[str | None] = []
        self.echoes: set[float] = set()  # the second REBOOT of each warm reset

    def insert_cdrom(self, iso: Path) -> None:
        self.media.append(iso.name)

    def eject_cdrom(self) -> None:
        self.media.append(None)

    def restart_after_crash(self) -> None:
        self.reset()
        self.watch.record("libvirt", "reboot")
        time.sleep(0.04)
        self.echoes.add(self.watch.record("libvirt", "reboot").t)


class TestStorage(CellStorage):
    """A cell folder under a temporary root; the overlay is four bytes of qcow2 magic (no
    qemu-img)."""

    __test__ = False

    def create_overlay(self, golden: Path, *, layer: Path | None = None) -> Path:
        # qcow2's magic, so the layer cache takes a builder's overlay for a disk.
        self.overlay.write_bytes(b"QFI\xfb" + (b" on a layer" if layer is not None else b""))
        return self.overlay


@dataclass
class ScriptedGuest:
    """The guest of one VM. ``boots``: how each boot goes, in order (then ``ok``); ``commands``:
    what a command containing the key does (default: exit 0)."""

    machine: Machine
    serial_log: Path
    boots: list[BootScript] = field(default_factory=list)
    commands: Mapping[str, CommandScript] = field(default_factory=dict)
    boot_seconds: float = 0.05
    ran: list[str] = field(default_factory=list)
    _boot: BootScript = "ok"
    _boot_started: float = 0.0
    _seen_starts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    name = "agent"

    # -- the guest's side of the hypervisor ------------------------------------------------

    def _follow_boots(self) -> None:
        """A new boot began when the timeline shows a start or a reset (a pair of warm-reset
        REBOOTs counts once, as the watcher counts it)."""
        echoes = getattr(self.machine, "echoes", set())
        with self._lock:
            starts = sum(
                1
                for event in self.machine.watch.timeline.snapshot()
                if event.kind == "started" or (event.kind == "reboot" and event.t not in echoes)
            )
            while self._seen_starts < starts:
                self._seen_starts += 1
                self._boot = self.boots.pop(0) if self.boots else "ok"
                self._boot_started = time.monotonic()
                with self.serial_log.open("a") as log:
                    log.write(f"compatlab-guest: boot {self._seen_starts} started\n")
                if self._boot == "crash":
                    self._panic()
                elif self._boot == "dead-agent":
                    offset = self.serial_log.stat().st_size if self.serial_log.exists() else 0
                    self.machine.watch.record(
                        "serial", "boot_marker", "services started", offset=str(offset)
                    )

    def _panic(self) -> None:
        with self.serial_log.open("a") as log:
            log.write(PANIC)
        self.machine.watch.record("libvirt", "crashed", "panicked")

    # -- Channel --------------------------------------------------------------------------

    def ping(self, timeout: float) -> bool:
        self._follow_boots()
        if not self._seen_starts:
            return False  # not started yet
        if self._boot == "reset" and time.monotonic() - self._boot_started > 1.2:
            # A watchdog or triple fault: the guest resets itself before it answers (later
            # than libvirt's double report of one reset, which the watcher folds).
            self._boot = "resetting"  # type: ignore[assignment]
            self.machine.watch.record("libvirt", "reboot")
            return False
        if (
            self._boot == "agent-dies"
            and time.monotonic() - self._boot_started >= self.boot_seconds
        ):
            self._boot = "agent-dead"  # type: ignore[assignment]
            return True  # the boot completes; from now on nobody answers
        return self._boot == "ok" and time.monotonic() - self._boot_started >= self.boot_seconds

    def _agent_alive(self) -> None:
        self._follow_boots()
        if self._boot == "agent-dead":
            raise GuestUnreachable("QEMU guest agent is not connected", channel="agent")

    def wait_ready(self, timeout: float, *, poll: float = 0.5) -> float:
        raise NotImplementedError  # the runner waits on events, never on this

    def run(self, command: str, *, timeout: float, shell: str | None = None) -> CommandResult:
        self._agent_alive()
        self.ran.append(command)
        script: CommandScript = CommandResult(0, "", "", 0.01)
        for key, value in self.commands.items():
            if key in command:
                script = value
                break
        if isinstance(script, list):
            return script.pop(0) if len(script) > 1 else script[0]
        if isinstance(script, CommandResult):
            return script
        if script == "crash":
            self._panic()
            time.sleep(timeout)  # the agent never answers a crashed guest
            raise GuestTimeout(f"no answer within {timeout:g} s", channel="agent")
        if script == "disk-full":
            # What QEMU does when the overlay cannot grow (werror=enospc, QEMU's default): the
            # I/O error event, then the guest paused; the command never answers.
            self.machine.watch.record(
                "libvirt", "io_error", "enospc", path=str(self.serial_log.parent / "overlay")
            )
            self.machine.watch.record("libvirt", "suspended", "ioerror")
            time.sleep(min(timeout, 3.0))  # a paused guest never answers; a test need not wait
            raise GuestTimeout(f"no answer within {timeout:g} s", channel="agent")
        if script == "restart":
            self.machine.watch.record("libvirt", "reboot")
            raise GuestUnreachable("agent disconnected", channel="agent")
        time.sleep(timeout)
        raise GuestTimeout(f"no answer within {timeout:g} s", channel="agent")

    def write_file(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def read_file(self, path: str) -> bytes:
        raise NotImplementedError

    def reboot(self) -> None:
        self._agent_alive()
        self.machine.watch.record("libvirt", "reboot")

    def shutdown(self) -> None:
        self._agent_alive()
        self.ran.append("<shutdown>")
        self.machine.domain.shutdown()  # the test driver powers off and reports it


def scripted_lab(hypervisor: Hypervisor, folder: Path, channels: Any, **overrides: Any) -> Any:
    """A :class:`~compatlab.scenario.LabContext` on the test driver whose guests are scripted:
    storage and report under ``folder``, no wait between attempts, ``overrides`` on top."""
    from compatlab.lab.owner import Controller
    from compatlab.scenario import LabContext

    root = Path(__file__).resolve().parents[2]
    settings: dict[str, Any] = {
        "hypervisor": hypervisor,
        "accel": "qemu",
        "run_id": "unit-run",
        "storage_root": folder / "storage",
        "template_dir": root / "configs" / "templates",
        "report_dir": folder / "report",
        "iso_cache": folder / "iso",
        "controller": Controller.current(),
        "retry_wait": 0.0,
        "storages": TestStorage,
        "machines": TestMachine,
        "channels": channels,
    }
    return LabContext(**{**settings, **overrides})
