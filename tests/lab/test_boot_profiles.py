"""Real guests from the real template: boot the demo Linux image under each firmware profile.

Slow (TCG boots take 10-60 s each) and needs qemu:///system and the demo image at
/var/lib/compatlab/images/tinylinux-a/ (built by ``compatlab images build``). Each boot waits
for the image's serial markers and for the guest agent to answer, then checks what the
profile promised from inside the guest, then removes everything it made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compatlab.catalog import GoldenImage, HardwareProfile, Watchdog
from compatlab.guest.media import build_iso
from compatlab.lab.console import SerialConsole
from compatlab.lab.domain import DomainSpec, domain_name, render_domain_xml, validate_domain_xml
from compatlab.lab.events import DomainWatch
from compatlab.lab.owner import CellMetadata, Controller
from compatlab.lab.storage import CellStorage
from tests.support.lab import require_lab

pytestmark = pytest.mark.slow

TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "templates"
IMAGE_DIR = Path("/var/lib/compatlab/images/tinylinux-a")
BOOT_TIMEOUT = 300.0  # TCG on a shared 2-core host; a quiet host needs 10-20 s
MARKER = "compatlab-guest: "


def _image() -> GoldenImage:
    missing = [
        name
        for name in ("vmlinuz", "initrd.img", "disk.qcow2", "cmdline")
        if not (IMAGE_DIR / name).is_file()
    ]
    if missing:
        require_lab(
            f"demo image not built: {IMAGE_DIR} lacks {', '.join(missing)} "
            "(run `compatlab images build`)"
        )
    return GoldenImage(
        name="tinylinux-a",
        os_family="linux",
        build="6.1-a",
        display_name="Tiny Linux A",
        disk=IMAGE_DIR / "disk.qcow2",
        firmware=frozenset({"bios", "uefi"}),
        channel="agent",
        source=IMAGE_DIR / "manifest.json",
        kernel=IMAGE_DIR / "vmlinuz",
        initrd=IMAGE_DIR / "initrd.img",
        cmdline=(IMAGE_DIR / "cmdline").read_text().strip(),
    )


@pytest.fixture(scope="module")
def image() -> GoldenImage:
    return _image()


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        connection = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        require_lab(f"qemu:///system is not reachable: {exc}")
    yield connection
    connection.close()


@pytest.fixture
def storage_root() -> Iterator[Path]:
    # Not tmp_path: pytest's base folder is private (0700) and QEMU runs as libvirt-qemu.
    root = Path(tempfile.mkdtemp(prefix="compatlab-labtest-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Booted:
    dom: Any
    spec: DomainSpec
    storage: CellStorage
    seconds: float
    console: SerialConsole

    def serial(self) -> str:
        return self.spec.serial_log.read_text(errors="replace")

    def agent(self, command: dict[str, Any], timeout: int = 10) -> Any:
        import libvirt_qemu

        return json.loads(libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(command), timeout, 0))[
            "return"
        ]

    def run(self, script: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``script`` with /bin/sh in the guest (guest-exec); exit code and stdout."""
        pid = self.agent(
            {
                "execute": "guest-exec",
                "arguments": {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True},
            }
        )["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.agent({"execute": "guest-exec-status", "arguments": {"pid": pid}})
            if status["exited"]:
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                return int(status.get("exitcode", -1)), out
            time.sleep(0.2)
        raise AssertionError(f"guest command did not finish in {timeout} s: {script}")


@pytest.fixture
def boot(conn: Any, image: GoldenImage, storage_root: Path) -> Iterator[Any]:
    """Provision, start and wait for a cell of ``hardware``; destroy and remove it after."""
    import libvirt

    made: list[Booted] = []

    def start(hardware: HardwareProfile) -> Booted:
        run_id = f"labtest-{uuid.uuid4().hex[:8]}"
        cell = f"tinylinux-a/{hardware.name}/none"
        storage = CellStorage(run_id, cell, root=storage_root, host="localhost")
        storage.create_overlay(image.disk)
        spec = DomainSpec(
            name=domain_name(run_id, cell),
            uuid=uuid.uuid4(),
            accel="qemu",  # KVM guests hang on the lab hosts without vmx/svm (LAB-NOTES)
            image=image,
            hardware=hardware,
            overlay=storage.overlay,
            serial_log=storage.serial_log,
            nvram=storage.nvram if hardware.firmware == "uefi" else None,
            metadata=CellMetadata(run=run_id, cell=cell, controller=Controller.current()),
        )
        xml = render_domain_xml(spec, TEMPLATES)
        validate_domain_xml(xml)
        dom = conn.defineXML(xml)
        # The serial port is a FIFO pair the runner reads (lab/console.py): read it here too,
        # or the log stays empty and the guest's UART waits once the pipe is full.
        console = SerialConsole(spec.console, DomainWatch(spec.name))
        booted = Booted(dom=dom, spec=spec, storage=storage, seconds=0.0, console=console)
        made.append(booted)
        console.open()
        began = time.monotonic()
        dom.create()
        deadline = began + BOOT_TIMEOUT
        while True:
            assert dom.isActive(), f"guest stopped while booting:\n{booted.serial()[-2000:]}"
            try:
                booted.agent({"execute": "guest-ping"}, timeout=2)
                break
            except libvirt.libvirtError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no agent after {BOOT_TIMEOUT} s:\n{booted.serial()[-2000:]}"
                    ) from None
                time.sleep(1)
        booted.seconds = time.monotonic() - began
        print(f"{hardware.name}: agent answered {booted.seconds:.1f} s after start")
        return booted

    yield start

    for booted in made:
        try:
            if booted.dom.isActive():
                booted.dom.destroy()
        finally:
            booted.dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM
            )
            booted.console.close()
        booted.storage.remove()


def hardware(name: str, **fields: Any) -> HardwareProfile:
    defaults: dict[str, Any] = {
        "vcpus": 1,
        "memory_mib": 256,
        "firmware": "bios",
        "secure_boot": False,
        "tpm": False,
        "disk_bus": "virtio",
        "machine": "q35",
        "source": Path(f"/tests/{name}.yaml"),
        "watchdog": None,
    }
    defaults.update(fields)
    return HardwareProfile(name=name, **defaults)


def test_bios_guest_boots_and_reads_a_payload_cd(
    boot: Any, image: GoldenImage, tmp_path: Path
) -> None:
    import libvirt

    golden = (sha256(image.disk), image.disk.stat().st_mtime_ns, image.disk.stat().st_uid)
    guest: Booted = boot(hardware("bios-1cpu", watchdog=Watchdog()))

    serial = guest.serial()
    assert f"{MARKER}firmware bios" in serial
    assert f"{MARKER}agent started" in serial
    # The guest wrote its boot counter to its disk: into the overlay, never the golden image.
    assert f"{MARKER}boot 1 started" in serial
    code, out = guest.run("cat /var/lib/compatlab/boot-count; sync")
    assert (code, out.strip()) == (0, "1")

    # Payload media: an ISO built in Python goes into the empty 'sdz' drive of the running
    # guest, and the guest reads names, contents and the executable bit back.
    payload = tmp_path / "payload"
    (payload / "bin").mkdir(parents=True)
    (payload / "bin" / "hello.sh").write_text("#!/bin/sh\necho hello from the payload\n")
    (payload / "bin" / "hello.sh").chmod(0o755)
    (payload / "A long payload file name.txt").write_text("long names survive\n")
    guest.storage.create()
    iso = build_iso(payload, guest.storage.payload_iso("candidate"))
    # As libvirt asks: the drive's own live <disk> with only the source changed. A bare
    # <target dev='sdz'/> is refused ("cannot modify field 'address'"): libvirt would derive
    # controller 4 from the name, not the template's explicit unit 5 on controller 0.
    drive = next(
        disk
        for disk in ET.fromstring(guest.dom.XMLDesc(0)).iterfind("devices/disk")
        if disk.get("device") == "cdrom"
    )
    ET.SubElement(drive, "source", file=str(iso))
    guest.dom.updateDeviceFlags(
        ET.tostring(drive, encoding="unicode"),
        libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )
    code, out = guest.run(
        "compatlab-mount-payload COMPATLAB /mnt/payload >/dev/null && "
        "/mnt/payload/bin/hello.sh && cat '/mnt/payload/A long payload file name.txt'"
    )
    assert code == 0, out
    assert out.splitlines() == ["hello from the payload", "long names survive"]

    guest.dom.destroy()
    assert (
        sha256(image.disk),
        image.disk.stat().st_mtime_ns,
        image.disk.stat().st_uid,
    ) == golden


def test_uefi_secure_boot_tpm_guest_boots(boot: Any) -> None:
    guest: Booted = boot(
        hardware(
            "uefi-sb-tpm-2cpu",
            vcpus=2,
            memory_mib=512,
            firmware="uefi",
            secure_boot=True,
            tpm=True,
            disk_bus="sata",
            watchdog=Watchdog(),
        )
    )
    assert f"{MARKER}firmware uefi secureboot=1" in guest.serial()

    # Firmware autoselection picked the Secure Boot build with Microsoft keys, and libvirt made
    # the per-VM variable store at the cell's path from that build's template.
    live = ET.fromstring(guest.dom.XMLDesc(0))
    assert live.findtext("os/loader") == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    nvram = live.find("os/nvram")
    assert nvram is not None
    assert nvram.text == str(guest.storage.nvram)
    assert nvram.get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    assert guest.storage.nvram.stat().st_size == Path(nvram.get("template", "")).stat().st_size

    code, out = guest.run("ls /sys/class/tpm; cat /sys/class/tpm/tpm0/tpm_version_major")
    assert (code, out.split()) == (0, ["tpm0", "2"])


def test_nvme_guest_boots_from_its_nvme_disk(boot: Any) -> None:
    guest: Booted = boot(hardware("bios-nvme", disk_bus="nvme"))
    code, out = guest.run("awk '$2 == \"/\" { print $1 }' /proc/mounts; ls /sys/class/nvme")
    assert code == 0, out
    root_device, controller = out.split()
    assert root_device.startswith("/dev/nvme0n1")
    assert controller == "nvme0"
