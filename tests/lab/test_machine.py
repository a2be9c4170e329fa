"""The lab against real QEMU guests under the system libvirtd (slow: each boots a guest).

The guest is the host's own kernel with a tiny busybox initramfs built here (pure Python cpio):
its init loads pvpanic (so libvirt sees panics), then does what ``labaction=`` on the kernel
command line says: ``panic`` (sysrq crash), ``reboot`` (reboot -f), anything else idles. It
boots in ~6 s under TCG. Domain XML is written inline (minimal: q35, direct kernel boot, isa
panic device, on_crash=preserve, the serial console on a FIFO pair that the Machine's console
reads into ``serial.log`` as the template's does, VGA, an empty SATA cdrom at the address
lab/domain.py gives it, no NIC); the real template is ``lab/domain.py``'s.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from compatlab.bugcheck import parse_linux_panic
from compatlab.errors import HypervisorError
from compatlab.lab.connection import Hypervisor, ReconnectPolicy
from compatlab.lab.machine import Machine
from compatlab.lab.owner import (
    CellMetadata,
    Controller,
    render_cell_metadata,
    run_folder,
    write_run_owner,
)
from compatlab.lab.reaper import reap
from tests.support.lab import require_lab
from tests.support.libvirtd import PrivateLibvirtd

pytestmark = [pytest.mark.slow, pytest.mark.guests(1)]

URI = "qemu:///system"
BOOT_TIMEOUT = 90.0  # generous: other cells may share the two cores

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/pvpanic.ko
insmod /lib/pvpanic-mmio.ko
echo "labguest: init up"
case "$(cat /proc/cmdline)" in
  *labaction=panic*) sleep 1; echo "labguest: panicking"; echo c > /proc/sysrq-trigger ;;
  *labaction=reboot*) sleep 1; echo "labguest: rebooting"; reboot -f ;;
esac
while true; do sleep 3600; done
"""


# -- the guest ----------------------------------------------------------------------------------


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed initramfs ("newc" cpio); the kernel unpacks it as is."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


@dataclass(frozen=True)
class GuestFiles:
    kernel: Path
    initrd: Path
    root: Path  # a folder QEMU (user libvirt-qemu) can traverse: storage roots go here


def _find_kernel() -> tuple[Path, Path] | None:
    for kernel in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
        pvpanic = modules / "kernel/drivers/misc/pvpanic"
        if (pvpanic / "pvpanic.ko").is_file() and (pvpanic / "pvpanic-mmio.ko").is_file():
            return kernel, pvpanic
    return None


@pytest.fixture(scope="session")
def guest() -> Iterator[GuestFiles]:
    found = _find_kernel()
    busybox = shutil.which("busybox")
    if found is None or busybox is None:
        require_lab("needs /boot/vmlinuz-* with uncompressed pvpanic modules, and busybox")
    kernel, pvpanic = found
    # /var/tmp, not pytest's 0700 tmp: QEMU runs as libvirt-qemu and must reach these files.
    root = Path(tempfile.mkdtemp(prefix="compatlab-testguest-", dir="/var/tmp"))
    root.chmod(0o755)
    entries = [(d, 0o040755, b"") for d in ("bin", "dev", "lib", "proc", "sys")]
    entries += [
        ("init", 0o100755, INIT.encode()),
        ("bin/busybox", 0o100755, Path(busybox).read_bytes()),
        ("lib/pvpanic.ko", 0o100644, (pvpanic / "pvpanic.ko").read_bytes()),
        ("lib/pvpanic-mmio.ko", 0o100644, (pvpanic / "pvpanic-mmio.ko").read_bytes()),
    ]
    initrd = root / "initrd.img"
    initrd.write_bytes(_cpio_newc(entries))
    # A copy: libvirt re-owns a kernel it boots, and the host's /boot is not ours to re-own.
    shutil.copyfile(kernel, root / "vmlinuz")
    yield GuestFiles(kernel=root / "vmlinuz", initrd=initrd, root=root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hv() -> Iterator[Hypervisor]:
    try:
        hypervisor = Hypervisor(URI, reconnect=ReconnectPolicy(attempts=2, max_seconds=5))
        hypervisor.open()
    except HypervisorError as exc:
        require_lab(f"no libvirtd: {exc}")
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def storage(guest: GuestFiles) -> Iterator[Path]:
    root = guest.root / f"root-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def measured(request: pytest.FixtureRequest, key: str, value: object) -> None:
    """Keep a measurement with the test's report (user_properties) and in the log.

    Not ``record_property``: that warns (an error here) under junit_family xunit2.
    """
    request.node.user_properties.append((key, value))
    logging.getLogger("compatlab.lab").info("measured %s = %s", key, value)


def new_name() -> str:
    return f"compatlab-test-{uuid.uuid4().hex[:8]}"


def tiny_xml(
    name: str,
    guest: GuestFiles,
    serial: Path,
    *,
    action: str = "idle",
    domain_type: str = "qemu",
    metadata: str = "",
) -> str:
    """Minimal domain for a busybox guest (stand-in for lab/domain.py's template). ``serial``
    is the log the Machine's console writes: ``<folder>/serial.log`` for FIFOs ``serial.in``
    and ``serial.out``."""
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{guest.kernel}</kernel>
    <initrd>{guest.initrd}</initrd>
    <cmdline>console=ttyS0 panic=0 quiet labaction={action}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>preserve</on_crash>
  <devices>
    <serial type='pipe'><source path='{serial.with_suffix("")}'/><target port='0'/></serial>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><target dev='sdz' bus='sata'/><readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='5'/>
    </disk>
    <video><model type='vga'/></video>
    <panic model='isa'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def cell_folder(storage: Path, run: str = "run-test") -> Path:
    folder = run_folder(storage, run) / "cell"
    folder.mkdir(parents=True)
    for path in (folder, folder.parent, folder.parent.parent):
        path.chmod(0o755)
    return folder


def wait_for_line(path: Path, text: str, timeout: float = BOOT_TIMEOUT, count: int = 1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def domain_type(hv: Hypervisor) -> str:
    return hv.accelerator().domain_type


# -- tests --------------------------------------------------------------------------------------


def test_start_is_observed(
    hv: Hypervisor, guest: GuestFiles, storage: Path, domain_type: str
) -> None:
    folder = cell_folder(storage)
    with Machine(
        hv, tiny_xml(new_name(), guest, folder / "serial.log", domain_type=domain_type), folder
    ) as m:
        m.start()
        started = m.wait({"started"}, timeout=30)
        assert started is not None and started.detail == "booted"
        assert m.state().state == "running"
        assert wait_for_line(folder / "serial.log", "labguest: init up")
    assert hv.lookup(m.name) is None
    assert not folder.exists()


def test_panic_is_observed_within_a_second(
    hv: Hypervisor,
    guest: GuestFiles,
    storage: Path,
    domain_type: str,
    request: pytest.FixtureRequest,
) -> None:
    folder = cell_folder(storage)
    serial = folder / "serial.log"
    xml = tiny_xml(new_name(), guest, serial, action="panic", domain_type=domain_type)
    with Machine(hv, xml, folder) as m:
        m.start()
        crashed = m.wait({"crashed"}, timeout=BOOT_TIMEOUT)
        received_wall = time.time()
        assert crashed is not None and crashed.detail == "panicked"
        panicked = [e for e in m.watch.timeline if e.kind == "guest_panicked"]
        assert panicked, "QMP GUEST_PANICKED was not seen"
        # QEMU stamps GUEST_PANICKED when the guest writes the pvpanic port: the crash itself.
        crash_wall = float(panicked[0].data["qemu_time"])
        latency = received_wall - crash_wall
        measured(request, "crash_to_runner_seconds", round(latency, 4))
        measured(
            request,
            "crash_to_callback_seconds",
            round(m.watch.epoch_wall + crashed.t - crash_wall, 4),
        )
        assert 0 <= latency < 1.0
        state = m.state()
        assert (state.state, state.reason) == ("crashed", "panicked")
        assert state.is_crashed
        assert wait_for_line(serial, "Kernel panic", timeout=5)
        bugcheck = parse_linux_panic(serial.read_text(errors="replace"))
        assert bugcheck is not None and bugcheck.code == "panic"
        assert bugcheck.name == "Kernel panic - not syncing: sysrq triggered crash"
        assert any("starting up" in line for line in m.domain_log())


def test_guest_reboots_are_counted(
    hv: Hypervisor, guest: GuestFiles, storage: Path, domain_type: str
) -> None:
    folder = cell_folder(storage)
    serial = folder / "serial.log"
    xml = tiny_xml(new_name(), guest, serial, action="reboot", domain_type=domain_type)
    with Machine(hv, xml, folder) as m:
        m.start()
        for _ in range(2):
            assert m.wait({"reboot"}, timeout=BOOT_TIMEOUT) is not None
        assert m.watch.count("reboot") >= 2
        assert m.watch.count("started") == 1  # a guest reboot is not a new QEMU process


def test_power_cycle_boots_a_crashed_guest_again(
    hv: Hypervisor,
    guest: GuestFiles,
    storage: Path,
    domain_type: str,
    request: pytest.FixtureRequest,
) -> None:
    folder = cell_folder(storage)
    serial = folder / "serial.log"
    xml = tiny_xml(new_name(), guest, serial, action="panic", domain_type=domain_type)
    with Machine(hv, xml, folder) as m:
        m.start()
        assert m.wait({"crashed"}, timeout=BOOT_TIMEOUT) is not None
        # The finding behind power_cycle(): reset alone leaves a crashed guest paused.
        m.reset()
        time.sleep(1.0)
        after_reset = m.state()
        measured(request, "state_after_reset", f"{after_reset.state}/{after_reset.reason}")
        assert after_reset.is_crashed
        started = time.monotonic()
        m.power_cycle()
        measured(request, "power_cycle_seconds", round(time.monotonic() - started, 3))
        assert m.wait({"started"}, timeout=30) is not None
        # It booted again: the guest panics a second time.
        assert m.wait({"crashed"}, timeout=BOOT_TIMEOUT) is not None
        assert m.watch.count("crashed") == 2
        assert m.watch.count("stopped", "destroyed") == 1


def test_the_console_is_kept_whole_across_power_cycles_without_virtlogd(
    hv: Hypervisor, guest: GuestFiles, storage: Path, domain_type: str
) -> None:
    """The runner reads the console itself: both boots of a power-cycled guest in one file, and
    QEMU never hands it to virtlogd (which would rotate it at 2 MiB and lose it when it dies)."""
    folder = cell_folder(storage)
    serial = folder / "serial.log"
    xml = tiny_xml(new_name(), guest, serial, action="panic", domain_type=domain_type)
    with Machine(hv, xml, folder) as m:
        m.start()
        assert m.wait({"crashed"}, timeout=BOOT_TIMEOUT) is not None
        assert wait_for_line(serial, "Kernel panic", timeout=5)
        m.power_cycle()
        assert m.wait({"crashed"}, timeout=BOOT_TIMEOUT) is not None
        assert wait_for_line(serial, "Kernel panic", timeout=5, count=2)
        text = serial.read_text(errors="replace")
        first, second = text.split("Kernel panic", 1)
        assert "labguest: init up" in first and "labguest: init up" in second
        assert sorted(p.name for p in folder.glob("serial*")) == [
            "serial.in",
            "serial.log",
            "serial.out",
        ]
        assert not any(e.kind == "console_lost" for e in m.watch.timeline.snapshot())
        assert m.console is not None and m.console.running
    assert m.console is not None and not m.console.running


def test_screenshot_and_cdrom(
    hv: Hypervisor,
    guest: GuestFiles,
    storage: Path,
    domain_type: str,
    request: pytest.FixtureRequest,
) -> None:
    import pycdlib

    folder = cell_folder(storage)
    serial = folder / "serial.log"
    iso_path = folder / "payload.iso"
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, vol_ident="PAYLOAD")
    body = b"compatlab payload\n"
    iso.add_fp(io.BytesIO(body), len(body), "/README.TXT;1", joliet_path="/README.TXT")
    iso.write(str(iso_path))
    iso.close()
    with Machine(hv, tiny_xml(new_name(), guest, serial, domain_type=domain_type), folder) as m:
        m.start()
        assert wait_for_line(serial, "labguest: init up")
        shot = m.screenshot(folder / "screen.png")
        measured(request, "screenshot_mime", shot.source_mime)
        measured(request, "screenshot_size", f"{shot.width}x{shot.height}")
        assert shot.mime == "image/png"
        assert shot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.width > 0 and shot.height > 0
        m.insert_cdrom(iso_path)
        assert m.cdrom_source() == iso_path
        m.power_cycle()  # the media is in the persistent config too
        assert m.cdrom_source() == iso_path
        m.eject_cdrom()
        assert m.cdrom_source() is None


RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from compatlab.lab.connection import Hypervisor
    from compatlab.lab.machine import Machine
    from compatlab.lab.owner import CellMetadata, Controller, render_cell_metadata, write_run_owner

    uri, template, run_dir, cell_dir = sys.argv[1:5]
    me = Controller.current()
    write_run_owner(Path(run_dir), me)
    meta = render_cell_metadata(CellMetadata(Path(run_dir).name, "sigkill/cell", me))
    hv = Hypervisor(uri)
    hv.open()
    machine = Machine(hv, Path(template).read_text().replace("@METADATA@", meta), Path(cell_dir))
    machine.define()
    machine.start()
    print(machine.name, flush=True)
    time.sleep(600)
    """
)


def test_sigkilled_runner_is_reaped(
    hv: Hypervisor, guest: GuestFiles, storage: Path, domain_type: str
) -> None:
    run = f"run-{uuid.uuid4().hex[:6]}"
    folder = cell_folder(storage, run)
    name = new_name()
    template = storage / "domain.xml"
    template.write_text(
        tiny_xml(name, guest, folder / "serial.log", domain_type=domain_type, metadata="@METADATA@")
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, URI, str(template), str(folder.parent), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        assert runner.stdout.readline().strip() == name
        dom = hv.lookup(name)
        assert dom is not None and dom.isActive()
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        report = reap(hv, storage)
    finally:
        runner.kill()
        runner.wait()
        if runner.stdout is not None:
            runner.stdout.close()
        if (leftover := hv.lookup(name)) is not None:  # only when the reaper failed
            if leftover.isActive():
                leftover.destroy()
            leftover.undefine()
    reaped = {d.name: d for d in report.removed_domains}
    assert name in reaped and reaped[name].was_running
    assert reaped[name].controller.pid == runner.pid
    assert hv.lookup(name) is None
    assert folder.parent in report.removed_folders and not folder.parent.exists()
    assert report.errors == []


def test_foreign_and_live_domains_are_left_alone(
    hv: Hypervisor, guest: GuestFiles, storage: Path
) -> None:
    foreign = f"labdev-foreign-{uuid.uuid4().hex[:8]}"
    serial = storage / "unused.log"
    hv.connection.defineXML(tiny_xml(foreign, guest, serial))  # made by hand: no metadata
    live_meta = render_cell_metadata(CellMetadata("run-live", "c", Controller.current()))
    elsewhere = Controller("another-controller.example", 1, 1)
    other_meta = render_cell_metadata(CellMetadata("run-other", "c", elsewhere))
    write_run_owner(run_folder(storage, "run-live"))
    try:
        with (
            Machine(hv, tiny_xml(new_name(), guest, serial, metadata=live_meta)) as live,
            Machine(hv, tiny_xml(new_name(), guest, serial, metadata=other_meta)) as other,
        ):
            report = reap(hv, storage)
            kept = {d.name: d.reason for d in report.kept_domains}
            assert kept[foreign] == "no compatlab metadata"
            assert "alive" in kept[live.name]
            assert "another host" in kept[other.name]
            assert report.removed_domains == []
            assert run_folder(storage, "run-live").exists()
    finally:
        dom = hv.lookup(foreign)
        if dom is not None:
            dom.undefine()


# -- a real libvirtd restart ----------------------------------------------------------------------

# A private libvirtd (tests/support/libvirtd.py) serving the test driver, which is all this test
# needs. Restarting it disturbs no one else.


def test_reconnects_after_libvirtd_restart(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("libvirtd") is None:
        require_lab("needs root, unshare and libvirtd")
    daemon = PrivateLibvirtd.start(tmp_path, driver="test")
    policy = ReconnectPolicy(attempts=30, max_seconds=45, first_wait=0.2, max_wait=1.0)
    hv = Hypervisor(daemon.uri, reconnect=policy)
    try:
        hv.open()
        name = new_name()
        watch = hv.events.watch(name)
        daemon.stop()
        lost = watch.wait({"connection_lost"}, timeout=20)
        assert lost is not None, "the close callback did not fire"
        daemon = PrivateLibvirtd.start(tmp_path, driver="test")
        assert watch.wait({"connection_restored"}, timeout=45) is not None
        assert hv.reconnects == 1
        # Events flow on the new connection: define a domain there and see it.
        with Machine(
            hv,
            f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type>hvm</type></os></domain>",
        ) as m:
            m.start()
            assert m.wait({"started"}, timeout=5) is not None
    finally:
        hv.close()
        daemon.stop()
