"""The agent channel against a real guest: the demo's tiny Linux image, booted under QEMU/TCG.

The domain is written by hand here (not by ``compatlab.lab``) so that this test checks the
channel alone: q35, direct kernel boot, a qcow2 overlay of the golden disk, the guest agent's
virtio-serial port, serial to a file, and no NIC (the lab's network rule: libvirt starts QEMU
with -nodefaults, so a domain without <interface> has no network device at all).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
import pytest

from compatlab.errors import GuestTimeout
from compatlab.guest.agent import AgentChannel
from compatlab.guest.channel import Channel
from tests.support.lab import require_lab

pytestmark = [pytest.mark.slow, pytest.mark.guests(1)]

IMAGE = Path(os.environ.get("COMPATLAB_TINYLINUX_A", "/var/lib/compatlab/images/tinylinux-a"))
URI = os.environ.get("COMPATLAB_TEST_URI", "qemu:///system")
BOOT_TIMEOUT = 180.0  # TCG, 2 cores: 12-33 s seen with the lab loaded, once 85 s


def _domain_xml(name: str, image: Path, overlay: Path, serial: Path) -> str:
    cmdline = (image / "cmdline").read_text(encoding="utf-8").strip()
    return f"""
<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{escape(str(image / "vmlinuz"))}</kernel>
    <initrd>{escape(str(image / "initrd.img"))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(overlay))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{escape(str(serial))}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder libvirt's QEMU (user libvirt-qemu) can reach: pytest's tmp_path is 0700."""
    path = Path(tempfile.mkdtemp(prefix="chandev-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def guest(workdir: Path) -> Iterator[libvirt.virDomain]:
    """A running ``chandev-*`` domain of the tiny Linux image; destroyed and undefined after."""
    missing = [
        f for f in ("vmlinuz", "initrd.img", "disk.qcow2", "cmdline") if not (IMAGE / f).is_file()
    ]
    if missing:
        require_lab(
            f"demo image missing: {IMAGE} lacks {', '.join(missing)}; run `compatlab images build`"
        )
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        require_lab(f"no libvirt at {URI}: {exc}")
    overlay = workdir / "overlay.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(IMAGE / "disk.qcow2"),
            str(overlay),
        ],
        check=True,
    )
    # wait_ready polls an agent that is not there yet: keep libvirt from printing each refusal.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    name = f"chandev-agent-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(_domain_xml(name, IMAGE, overlay, workdir / "serial.log"))
    try:
        dom.create()
        yield dom
    finally:
        try:
            if dom.isActive():
                dom.destroy()
        finally:
            dom.undefine()
            conn.close()
            libvirt.registerErrorHandler(None, None)


def test_run_files_and_reboot_on_a_real_guest(guest: libvirt.virDomain) -> None:
    channel = AgentChannel(guest, os_family="linux")
    assert isinstance(channel, Channel)

    first_boot = channel.wait_ready(BOOT_TIMEOUT)

    result = channel.run("echo hello; echo err >&2; exit 3", timeout=30)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\n", "err\n")
    assert not result.succeeded
    assert result.seconds > 0

    payload = bytes(range(256)) * 600  # 150 KiB: several chunks, every byte value
    channel.write_file("/tmp/compatlab-roundtrip.bin", payload)
    assert channel.read_file("/tmp/compatlab-roundtrip.bin") == payload
    assert channel.run("wc -c < /tmp/compatlab-roundtrip.bin", timeout=30).stdout.strip() == str(
        len(payload)
    )

    # A compound command keeps its shell around: the kill must take the shell's child too.
    with pytest.raises(GuestTimeout, match="killed"):
        channel.run("sleep 30; echo never", timeout=2)
    table = channel.run("ps -o pid,args", timeout=30)
    assert table.succeeded, table.stderr
    assert "sleep 30" not in table.stdout

    # A marker in /run (tmpfs) tells the next boot from this one.
    channel.run("touch /run/compatlab-before-reboot", timeout=30)
    channel.reboot()
    second_boot = channel.wait_ready(BOOT_TIMEOUT)
    after = channel.run("test -e /run/compatlab-before-reboot", timeout=30)
    assert after.exit_code == 1, "the guest did not actually reboot"

    print(f"\nwait_ready: first boot {first_boot:.1f} s, after reboot {second_boot:.1f} s")
    samples = []
    for _ in range(20):
        t0 = time.monotonic()
        assert channel.run("true", timeout=30).succeeded
        samples.append(time.monotonic() - t0)
    samples.sort()
    print(f"exec round trip: median {samples[10] * 1000:.0f} ms, max {samples[-1] * 1000:.0f} ms")

    channel.shutdown()
    deadline = time.monotonic() + 60
    while guest.isActive() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not guest.isActive(), "the guest did not power off"
    assert channel.ping(1) is False
