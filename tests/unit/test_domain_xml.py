"""Domain XML rendering: every hardware variant, checked element by element, against libvirt's
schema (virt-xml-validate) and by the real libvirt (define + undefine, no boot)."""

from __future__ import annotations

import itertools
import logging
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from compatlab.catalog import Credentials, GoldenImage, HardwareProfile, Watchdog
from compatlab.errors import CatalogError, InputError, LabError
from compatlab.lab.domain import (
    DomainSpec,
    DomainXMLError,
    ProfileNotSupported,
    check_supported,
    domain_name,
    render_domain_xml,
    validate_domain_xml,
)
from compatlab.lab.owner import NS_PREFIX, NS_URI, CellMetadata, Controller, parse_cell_metadata
from tests.support.lab import require_lab

TEMPLATES = Path(__file__).resolve().parents[2] / "configs" / "templates"
NS = {"c": NS_URI, "qemu": "http://libvirt.org/schemas/domain/qemu/1.0"}
HAS_VALIDATOR = shutil.which("virt-xml-validate") is not None
OWNER = Controller(host="lab-ctl-01", pid=48213, start=1234567)


@pytest.fixture
def validator() -> None:
    """virt-xml-validate is there (``make test`` installs it with libvirt-clients)."""
    if not HAS_VALIDATOR:
        require_lab("virt-xml-validate (libvirt-clients) not installed")


def linux_image(
    *, kernel: bool = True, cmdline: str = "console=ttyS0 root=/dev/vda"
) -> GoldenImage:
    base = Path("/var/lib/compatlab/images/tinylinux-a")
    return GoldenImage(
        name="tinylinux-a",
        os_family="linux",
        build="6.1",
        display_name="Tiny Linux A",
        disk=base / "disk.qcow2",
        firmware=frozenset({"bios", "uefi"}),
        channel="agent",
        source=Path("/repo/images/tinylinux-a.yaml"),
        kernel=base / "vmlinuz" if kernel else None,
        initrd=base / "initrd.img" if kernel else None,
        cmdline=cmdline if kernel else None,
    )


def windows_image() -> GoldenImage:
    return GoldenImage(
        name="win11-24h2",
        os_family="windows",
        build="26100",
        display_name="Windows 11 24H2",
        disk=Path("/var/lib/compatlab/images/win11-24h2/disk.qcow2"),
        firmware=frozenset({"bios", "uefi"}),
        channel="winrm",
        source=Path("/repo/images/win11-24h2.yaml"),
        credentials=Credentials(username="compatlab", password_env="COMPATLAB_WINRM_PASSWORD"),
    )


def profile(
    *,
    firmware: str = "bios",
    secure_boot: bool = False,
    tpm: bool = False,
    disk_bus: str = "virtio",
    machine: str = "q35",
    watchdog: Watchdog | None = None,
    vcpus: int = 2,
    memory_mib: int = 512,
) -> HardwareProfile:
    return HardwareProfile(
        name="hw-under-test",
        vcpus=vcpus,
        memory_mib=memory_mib,
        firmware=firmware,  # type: ignore[arg-type]
        secure_boot=secure_boot,
        tpm=tpm,
        disk_bus=disk_bus,  # type: ignore[arg-type]
        machine=machine,
        source=Path("/repo/configs/hardware/hw-under-test.yaml"),
        watchdog=watchdog,
    )


def make_spec(
    image: GoldenImage,
    hardware: HardwareProfile,
    *,
    folder: Path = Path("/var/lib/compatlab/cells/run-1/cell"),
    run_id: str = "run-1",
    cell_id: str = "tinylinux-a/hw-under-test/none",
    **overrides: Any,
) -> DomainSpec:
    fields: dict[str, Any] = {
        "name": domain_name(run_id, cell_id),
        "uuid": uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{cell_id}"),
        "accel": "qemu",
        "image": image,
        "hardware": hardware,
        "overlay": folder / "overlay.qcow2",
        "serial_log": folder / "serial.log",
        "nvram": folder / "VARS.fd" if hardware.firmware == "uefi" else None,
        "metadata": CellMetadata(run=run_id, cell=cell_id, controller=OWNER),
    }
    fields.update(overrides)
    return DomainSpec(**fields)


def render(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(render_domain_xml(spec, TEMPLATES))


def only(root: ET.Element, path: str) -> ET.Element:
    found = root.findall(path, NS)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


# -- the variants ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    firmware: str
    secure_boot: bool
    tpm: bool
    disk_bus: str
    os_family: str
    kernel: bool
    watchdog: bool
    machine: str = "q35"
    accel: str = "qemu"

    @property
    def id(self) -> str:
        fw = "uefi-sb" if self.secure_boot else self.firmware
        parts = [fw, self.disk_bus, self.os_family, self.machine, self.accel]
        parts += ["tpm"] * self.tpm + ["kernel"] * self.kernel + ["wdt"] * self.watchdog
        return "-".join(parts)

    def spec(self) -> DomainSpec:
        image = linux_image(kernel=self.kernel) if self.os_family == "linux" else windows_image()
        hardware = profile(
            firmware=self.firmware,
            secure_boot=self.secure_boot,
            tpm=self.tpm,
            disk_bus=self.disk_bus,
            machine=self.machine,
            watchdog=Watchdog() if self.watchdog else None,
        )
        return make_spec(image, hardware, accel=self.accel)


def _variants() -> list[Variant]:
    found: list[Variant] = []
    firmwares = (("bios", False), ("uefi", False), ("uefi", True))
    for (firmware, sb), bus, family in itertools.product(
        firmwares, ("virtio", "sata", "nvme"), ("linux", "windows")
    ):
        # TPM, watchdog and direct kernel boot alternate so each shows up on and off.
        index = len(found)
        found.append(
            Variant(
                firmware=firmware,
                secure_boot=sb,
                tpm=index % 2 == 0,
                disk_bus=bus,
                os_family=family,
                kernel=family == "linux" and index % 4 == 0,
                watchdog=index % 3 != 0,
            )
        )
    found += [
        Variant("bios", False, True, "sata", "linux", True, True, machine="pc"),
        Variant("uefi", False, False, "virtio", "windows", False, False, machine="pc"),
        Variant("uefi", True, True, "nvme", "windows", False, True, accel="kvm"),
        Variant("bios", False, False, "virtio", "linux", True, False, accel="kvm"),
    ]
    return found


VARIANTS = _variants()


@pytest.fixture(params=VARIANTS, ids=[v.id for v in VARIANTS])
def variant(request: pytest.FixtureRequest) -> Variant:
    value: Variant = request.param
    return value


def test_every_variant_renders_the_profile(variant: Variant) -> None:
    spec = variant.spec()
    root = render(spec)

    assert root.tag == "domain"
    assert root.get("type") == variant.accel
    assert only(root, "name").text == spec.name
    assert only(root, "uuid").text == str(spec.uuid)
    assert only(root, "memory").text == "512"
    assert only(root, "memory").get("unit") == "MiB"
    assert only(root, "vcpu").text == "2"
    assert only(root, "cpu/topology").attrib == {
        "sockets": "1",
        "dies": "1",
        "cores": "2",
        "threads": "1",
    }
    expected_cpu = "host-passthrough" if variant.accel == "kvm" else "maximum"
    assert only(root, "cpu").get("mode") == expected_cpu
    assert only(root, "os/type").get("machine") == variant.machine
    assert only(root, "on_poweroff").text == "destroy"
    assert only(root, "on_reboot").text == "restart"
    assert only(root, "on_crash").text == "preserve"
    # No NIC, no graphics backend (no VNC port): screenshots need only the VGA device.
    assert root.findall("devices/interface") == []
    assert root.findall("devices/graphics") == []
    assert only(root, "devices/video/model").get("type") == "vga"
    channel = only(root, "devices/channel")
    assert channel.get("type") == "unix"
    assert only(channel, "target").attrib == {
        "type": "virtio",
        "name": "org.qemu.guest_agent.0",
    }
    # The console is a FIFO pair the runner reads (lab/console.py), not a file virtlogd writes.
    serial = only(root, "devices/serial")
    assert serial.get("type") == "pipe"
    assert only(serial, "source").attrib == {"path": str(spec.serial_log.with_suffix(""))}
    assert root.findall("devices/serial/log") == []  # a <log> would go through virtlogd again
    # A balloon for its memory statistics (compatlab.cost), never inflated.
    balloon = only(root, "devices/memballoon")
    assert balloon.attrib == {"model": "virtio", "autodeflate": "off", "freePageReporting": "off"}
    assert only(balloon, "stats").get("period") == "1"


def test_firmware(variant: Variant) -> None:
    spec = variant.spec()
    root = render(spec)
    os_ = only(root, "os")
    if variant.firmware == "bios":
        assert os_.get("firmware") is None
        assert os_.find("nvram") is None
        assert os_.find("loader") is None
    else:
        assert os_.get("firmware") == "efi"
        # Autoselection: libvirt picks the loader; compatlab only states the features.
        assert os_.find("loader") is None
        features = {f.get("name"): f.get("enabled") for f in os_.findall("firmware/feature")}
        expected = "yes" if variant.secure_boot else "no"
        assert features == {"secure-boot": expected, "enrolled-keys": expected}
        assert only(os_, "nvram").text == str(spec.nvram)
    assert (root.find("features/smm") is not None) == variant.secure_boot
    if variant.secure_boot:
        assert only(root, "features/smm").get("state") == "on"


def test_tpm(variant: Variant) -> None:
    tpms = render(variant.spec()).findall("devices/tpm")
    if not variant.tpm:
        assert tpms == []
        return
    assert len(tpms) == 1
    assert tpms[0].get("model") == "tpm-crb"
    assert only(tpms[0], "backend").attrib == {"type": "emulator", "version": "2.0"}


def test_overlay_disk_on_each_bus(variant: Variant) -> None:
    spec = variant.spec()
    root = render(spec)
    disk = only(root, "devices/disk[@device='disk']")
    assert only(disk, "driver").get("type") == "qcow2"
    assert only(disk, "source").get("file") == str(spec.overlay)
    # The golden image is spelled out as the (only) backing file and never relabelled.
    backing = only(disk, "backingStore")
    assert only(backing, "format").get("type") == "qcow2"
    assert only(backing, "source").get("file") == str(spec.image.disk)
    assert only(backing, "source/seclabel").attrib == {"model": "dac", "relabel": "no"}
    assert list(only(backing, "backingStore")) == []
    assert only(disk, "boot").get("order") == "1"
    assert only(disk, "alias").get("name") == "ua-compatlab-disk0"
    target = only(disk, "target")
    overrides = root.findall("qemu:override/qemu:device", NS)
    if variant.disk_bus == "sata":
        assert target.attrib == {"dev": "sda", "bus": "sata"}
        assert only(disk, "address").get("unit") == "0"
        assert overrides == []
    elif variant.disk_bus == "virtio":
        assert target.attrib == {"dev": "vda", "bus": "virtio"}
        assert overrides == []
    else:
        # libvirt 9.0 has no NVMe bus: a virtio disk whose front end becomes QEMU's nvme.
        assert target.attrib == {"dev": "vda", "bus": "virtio"}
        assert len(overrides) == 1
        assert overrides[0].get("alias") == "ua-compatlab-disk0"
        prop = only(overrides[0], "qemu:frontend/qemu:property")
        assert prop.attrib == {"name": "driver", "type": "string", "value": "nvme"}


def test_a_cached_layer_sits_between_the_overlay_and_the_golden_image(variant: Variant) -> None:
    layer = Path("/var/lib/compatlab/cache/0123456789abcdef0123456789abcdef/layer.qcow2")
    spec = replace(variant.spec(), layer=layer)
    xml = render_domain_xml(spec, TEMPLATES)
    validate_domain_xml(xml)
    disk = only(ET.fromstring(xml), "devices/disk[@device='disk']")
    assert only(disk, "source").get("file") == str(spec.overlay)
    first = only(disk, "backingStore")
    second = only(first, "backingStore")
    # Both shared images are read-only to every cell and never relabelled.
    assert [only(b, "source").get("file") for b in (first, second)] == [
        str(layer),
        str(spec.image.disk),
    ]
    for backing in (first, second):
        assert only(backing, "format").get("type") == "qcow2"
        assert only(backing, "source/seclabel").attrib == {"model": "dac", "relabel": "no"}
    assert list(only(second, "backingStore")) == []


def test_payload_cdrom_is_an_empty_readonly_sata_drive(variant: Variant) -> None:
    cdrom = only(render(variant.spec()), "devices/disk[@device='cdrom']")
    assert only(cdrom, "target").attrib == {"dev": "sdz", "bus": "sata"}
    assert cdrom.find("readonly") is not None
    assert cdrom.find("source") is None
    # One AHCI controller: the address is explicit (see the template).
    assert only(cdrom, "address").attrib == {
        "type": "drive",
        "controller": "0",
        "bus": "0",
        "target": "0",
        "unit": "5",
    }


def test_panic_device_and_enlightenments(variant: Variant) -> None:
    root = render(variant.spec())
    panic = only(root, "devices/panic")
    hyperv = root.find("features/hyperv")
    if variant.os_family == "linux":
        assert panic.get("model") == "isa"
        assert hyperv is None
        assert only(root, "clock").get("offset") == "utc"
        return
    # The crash MSRs are KVM-only (hv-crash): under TCG, pvpanic and the virtio-win driver.
    assert panic.get("model") == ("hyperv" if variant.accel == "kvm" else "isa")
    assert hyperv is not None
    assert hyperv.get("mode") == "custom"
    enabled = {child.tag for child in hyperv if child.get("state") == "on"}
    always = {"relaxed", "vapic", "spinlocks", "runtime", "reset", "frequencies"}
    if variant.accel == "kvm":
        assert enabled == always | {"vpindex", "synic", "stimer"}
    else:
        # QEMU 7.2 refuses hv-vpindex under TCG; synic and stimer need it.
        assert enabled == always
    assert only(hyperv, "spinlocks").get("retries") == "8191"
    assert only(root, "clock").get("offset") == "localtime"
    timers = {t.get("name") for t in root.findall("clock/timer")}
    assert ("hypervclock" in timers) == (variant.accel == "kvm")


def test_watchdog(variant: Variant) -> None:
    watchdogs = render(variant.spec()).findall("devices/watchdog")
    if variant.watchdog:
        assert [w.attrib for w in watchdogs] == [{"model": "i6300esb", "action": "reset"}]
    else:
        assert watchdogs == []


def test_direct_kernel_boot(variant: Variant) -> None:
    spec = variant.spec()
    os_ = only(render(spec), "os")
    if variant.kernel:
        assert only(os_, "kernel").text == str(spec.image.kernel)
        assert only(os_, "initrd").text == str(spec.image.initrd)
        assert only(os_, "cmdline").text == spec.image.cmdline
    else:
        assert [os_.find(tag) for tag in ("kernel", "initrd", "cmdline")] == [None] * 3


@pytest.mark.usefixtures("validator")
def test_every_variant_passes_libvirts_schema(variant: Variant) -> None:
    validate_domain_xml(render_domain_xml(variant.spec(), TEMPLATES))


def test_crash_policy_and_cdrom_media() -> None:
    for policy in ("preserve", "restart", "destroy"):
        spec = make_spec(linux_image(), profile(), on_crash=policy)
        assert only(render(spec), "on_crash").text == policy
    iso = Path("/var/lib/compatlab/cells/run-1/cell/payloads/candidate.iso")
    root = render(make_spec(linux_image(), profile(), cdrom=iso))
    assert only(root, "devices/disk[@device='cdrom']/source").get("file") == str(iso)


def test_emulator_only_when_given() -> None:
    assert render(make_spec(linux_image(), profile())).find("devices/emulator") is None
    qemu = Path("/usr/bin/qemu-system-x86_64")
    root = render(make_spec(linux_image(), profile(), emulator=qemu))
    assert only(root, "devices/emulator").text == str(qemu)


# -- metadata -------------------------------------------------------------------------------------


def test_metadata_is_compatlabs_element_exactly() -> None:
    spec = make_spec(linux_image(), profile(), run_id="20250611-0212-7f3a")
    xml = render_domain_xml(spec, TEMPLATES)
    # The prefix is part of the contract: the reaper's docs and runbooks show it.
    assert f'<{NS_PREFIX}:cell xmlns:{NS_PREFIX}="{NS_URI}">' in xml
    metadata = only(ET.fromstring(xml), "metadata")
    (element,) = list(metadata)
    assert element.tag == f"{{{NS_URI}}}cell"
    assert [child.tag for child in element] == [
        f"{{{NS_URI}}}run",
        f"{{{NS_URI}}}cell",
        f"{{{NS_URI}}}controller",
    ]
    assert only(element, "c:run").text == "20250611-0212-7f3a"
    assert only(element, "c:cell").text == "tinylinux-a/hw-under-test/none"
    assert only(element, "c:controller").attrib == {
        "host": "lab-ctl-01",
        "pid": "48213",
        "start": "1234567",
    }
    # What the reaper reads back is what was written.
    assert parse_cell_metadata(ET.tostring(element, encoding="unicode")) == spec.metadata


# -- escaping -------------------------------------------------------------------------------------

HOSTILE = "x'/><devices>\"&<evil/>"


def test_a_malicious_domain_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="not libvirt-safe"):
        make_spec(linux_image(), profile(), name="x'/><devices>")


def test_values_from_yaml_are_escaped_not_injected() -> None:
    folder = Path("/var/lib/compatlab/cells/it's/<cell>")
    spec = make_spec(
        linux_image(cmdline=f"console=ttyS0 {HOSTILE}"),
        profile(),
        folder=folder,
        run_id=HOSTILE,
        cell_id=HOSTILE,
        metadata=CellMetadata(
            run=HOSTILE, cell=HOSTILE, controller=Controller(host=HOSTILE, pid=1, start=2)
        ),
    )
    xml = render_domain_xml(spec, TEMPLATES)
    root = ET.fromstring(xml)
    assert len(root.findall("devices")) == 1
    assert root.findall(".//evil") == []
    assert only(root, "os/cmdline").text == f"console=ttyS0 {HOSTILE}"
    assert only(root, "metadata/c:cell/c:run").text == HOSTILE
    assert only(root, "metadata/c:cell/c:cell").text == HOSTILE
    assert only(root, "metadata/c:cell/c:controller").get("host") == HOSTILE
    assert only(root, "title").text == f"compatlab {HOSTILE}"
    assert only(root, "devices/disk[@device='disk']/source").get("file") == str(
        folder / "overlay.qcow2"
    )
    if HAS_VALIDATOR:
        validate_domain_xml(xml)


# -- names ----------------------------------------------------------------------------------------


def test_domain_names_are_short_safe_and_distinct() -> None:
    cells = [
        "demo/bios-1cpu/acme-av+other-edr",
        "demo/bios-1cpu/acme-av-other-edr",
        "DEMO/bios-1cpu/acme-av+other-edr",
        "win11-24h2/uefi-sb-tpm-4cpu/" + "+".join(f"product-{n}" for n in range(20)),
        "///",
    ]
    names = [domain_name("run-1", cell) for cell in cells]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.startswith("compatlab-")
        assert len(name) <= 64
        assert all(c.isalnum() or c == "-" for c in name)
        assert name == name.lower()
    assert names[0].startswith("compatlab-demo-bios-1cpu-acme-av-other-edr-")
    # Unique per run as well: two runs on one host never collide.
    assert domain_name("run-2", cells[0]) != names[0]
    assert domain_name("run-1", cells[0]) == names[0]


# -- profiles this lab cannot run -----------------------------------------------------------------


def test_secure_boot_on_the_pc_machine_is_refused() -> None:
    hardware = profile(firmware="uefi", secure_boot=True, machine="pc")
    with pytest.raises(ProfileNotSupported, match="Secure Boot needs machine q35") as caught:
        render_domain_xml(make_spec(linux_image(), hardware), TEMPLATES)
    # An input error pointing at the profile's file: nothing may be started.
    assert isinstance(caught.value, CatalogError)
    assert isinstance(caught.value, InputError)
    assert caught.value.file == hardware.source


def test_itco_watchdog_is_refused_on_libvirt_9_0() -> None:
    hardware = profile(watchdog=Watchdog(model="itco"))
    with pytest.raises(ProfileNotSupported, match="itco"):
        check_supported(linux_image(), hardware)


def test_firmware_the_image_cannot_boot_is_refused() -> None:
    image = replace(windows_image(), firmware=frozenset({"uefi"}))
    with pytest.raises(ProfileNotSupported, match="boots with uefi"):
        check_supported(image, profile(firmware="bios"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"accel": "hvf"}, "accel"),
        ({"on_crash": "coredump-restart"}, "on_crash"),
        ({"overlay": Path("relative/overlay.qcow2")}, "absolute"),
        ({"nvram": None}, "needs an nvram"),
        ({"serial_log": Path("/cells/x/serial.txt")}, "must end in .log"),
    ],
)
def test_spec_refuses_programming_errors(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_spec(linux_image(), profile(firmware="uefi"), **change)


def test_bios_spec_has_no_nvram() -> None:
    with pytest.raises(ValueError, match="no nvram"):
        make_spec(linux_image(), profile(), nvram=Path("/tmp/VARS.fd"))


# -- the validator --------------------------------------------------------------------------------


@pytest.mark.usefixtures("validator")
def test_invalid_xml_raises_a_lab_error_with_the_validators_message() -> None:
    xml = render_domain_xml(make_spec(linux_image(), profile()), TEMPLATES)
    broken = xml.replace("bus='virtio'", "bus='nvme'", 1)
    with pytest.raises(DomainXMLError) as caught:
        validate_domain_xml(broken)
    assert isinstance(caught.value, LabError)
    assert "Relax-NG" in caught.value.message
    assert caught.value.domain == make_spec(linux_image(), profile()).name


def test_a_missing_or_broken_template_is_a_lab_error(tmp_path: Path) -> None:
    spec = make_spec(linux_image(), profile())
    with pytest.raises(DomainXMLError, match=r"no domain\.xml\.j2 in"):
        render_domain_xml(spec, tmp_path)
    (tmp_path / "domain.xml.j2").write_text("<domain>{{ spec.no_such_field }}</domain>")
    with pytest.raises(DomainXMLError, match="UndefinedError"):
        render_domain_xml(spec, tmp_path)


def test_a_missing_validator_is_noted_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    import compatlab.lab.domain as domain

    domain._validator_missing_noted = False
    with caplog.at_level(logging.WARNING, logger="compatlab.lab.domain"):
        validate_domain_xml("<domain/>", validator="compatlab-no-such-validator")
        validate_domain_xml("<domain/>", validator="compatlab-no-such-validator")
    notes = [r for r in caplog.records if "not found" in r.getMessage()]
    assert len(notes) == 1


# -- the real libvirt: define, read back, undefine (cheap: nothing boots) -------------------------


@pytest.fixture(scope="module")
def libvirt_conn() -> Iterator[Any]:
    import libvirt

    # libvirt prints every error to stderr by default; the tests look at the exceptions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        require_lab(f"qemu:///system is not reachable: {exc}")
    yield conn
    conn.close()


@pytest.mark.parametrize(
    "hardware",
    [
        profile(firmware="uefi", secure_boot=True, tpm=True, disk_bus="nvme"),
        profile(firmware="bios", disk_bus="sata", watchdog=Watchdog()),
    ],
    ids=["uefi-sb-tpm-nvme", "bios-sata"],
)
def test_libvirt_defines_the_domain(libvirt_conn: Any, hardware: HardwareProfile) -> None:
    import libvirt

    run_id = f"unit-{uuid.uuid4().hex[:8]}"
    spec = make_spec(
        linux_image(),
        hardware,
        run_id=run_id,
        cell_id=f"tinylinux-a/{hardware.firmware}/none",
        metadata=CellMetadata(run=run_id, cell="c", controller=Controller.current()),
    )
    dom = libvirt_conn.defineXML(render_domain_xml(spec, TEMPLATES))
    try:
        assert dom.name() == spec.name
        assert dom.UUIDString() == str(spec.uuid)
        back = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, 0)
        assert parse_cell_metadata(back) == spec.metadata
        defined = ET.fromstring(dom.XMLDesc(0))
        # libvirt 9.0 resolves firmware autoselection at start, not at define.
        assert only(defined, "os").get("firmware") == (
            "efi" if hardware.firmware == "uefi" else None
        )
        assert defined.findall("devices/interface") == []
        if hardware.disk_bus == "nvme":
            assert len(defined.findall("qemu:override/qemu:device", NS)) == 1
    finally:
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            | libvirt.VIR_DOMAIN_UNDEFINE_TPM
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
    assert spec.name not in libvirt_conn.listDefinedDomains()


def test_libvirt_defines_every_variant(libvirt_conn: Any) -> None:
    """Stricter than the schema: libvirt's parser and the QEMU driver's checks at define."""
    import libvirt

    run_id = f"unit-{uuid.uuid4().hex[:8]}"
    for variant in VARIANTS:
        spec = replace(variant.spec(), name=domain_name(run_id, variant.id), uuid=uuid.uuid4())
        dom = libvirt_conn.defineXML(render_domain_xml(spec, TEMPLATES))
        try:
            assert dom.name() == spec.name
        finally:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM)


# -- compatlab xml --------------------------------------------------------------------------------


def test_render_for_cell_uses_the_cells_storage_paths(tmp_path: Path) -> None:
    from compatlab.cli import render_for_cell
    from compatlab.lab.storage import CellStorage

    hardware = profile(firmware="uefi", secure_boot=True, tpm=True)
    cell = "tinylinux-a/hw-under-test/acme-av"
    xml = render_for_cell(
        linux_image(),
        hardware,
        cell,
        template_dir=TEMPLATES,
        run_id="run-7",
        storage_root=tmp_path,
        controller=OWNER,
    )
    root = ET.fromstring(xml)
    storage = CellStorage("run-7", cell, root=tmp_path)
    assert only(root, "name").text == domain_name("run-7", cell)
    assert only(root, "devices/disk[@device='disk']/source").get("file") == str(storage.overlay)
    assert only(root, "os/nvram").text == str(storage.nvram)
    assert only(root, "devices/serial/source").get("path") == str(storage.folder / "serial")
    assert parse_cell_metadata(
        ET.tostring(only(root, "metadata/c:cell"), encoding="unicode")
    ) == CellMetadata(run="run-7", cell=cell, controller=OWNER)
    # Same run and cell, same UUID: a preview shows what the run will define.
    again = render_for_cell(
        linux_image(), hardware, cell, template_dir=TEMPLATES, run_id="run-7", controller=OWNER
    )
    assert only(ET.fromstring(again), "uuid").text == only(root, "uuid").text
    assert not (tmp_path / "cells").exists()  # nothing created


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A minimal project: one Linux image, two hardware profiles, one product, one matrix."""
    (tmp_path / "images").mkdir()
    (tmp_path / "configs" / "hardware").mkdir(parents=True)
    (tmp_path / "configs" / "products").mkdir()
    (tmp_path / "matrix").mkdir()
    (tmp_path / "payload").mkdir()
    (tmp_path / "images" / "tiny.yaml").write_text(
        "name: tiny\nos_family: linux\nbuild: '6.1'\ndisk: /var/lib/compatlab/images/t/d.qcow2\n"
        "firmware: [bios, uefi]\nchannel: agent\nkernel: /k\ninitrd: /i\ncmdline: console=ttyS0\n"
    )
    (tmp_path / "configs" / "hardware" / "uefi-sb.yaml").write_text(
        "name: uefi-sb\nvcpus: 2\nmemory: 512MiB\nfirmware: uefi\nsecure_boot: true\n"
        "tpm: true\ndisk_bus: nvme\n"
    )
    (tmp_path / "configs" / "hardware" / "sb-on-pc.yaml").write_text(
        "name: sb-on-pc\nvcpus: 1\nmemory: 256\nfirmware: uefi\nsecure_boot: true\nmachine: pc\n"
    )
    (tmp_path / "matrix" / "m.yaml").write_text(
        "candidate:\n  name: c\n  version: '1'\n  payload: ../payload\n"
        "  install: {linux: 'sh {payload}/install.sh'}\n"
        "  uninstall: {linux: 'sh {payload}/uninstall.sh'}\n"
        "axes:\n  build: [tiny]\n  hardware: [uefi-sb]\n  products: [[]]\n"
    )
    return tmp_path


def test_xml_command_prints_valid_xml(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compatlab.cli import main

    status = main(
        ["xml", str(project / "matrix" / "m.yaml"), "tiny/uefi-sb/none", "--accel", "qemu"]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    root = ET.fromstring(out)
    assert only(root, "name").text == domain_name("preview", "tiny/uefi-sb/none")
    assert only(root, "metadata/c:cell/c:cell").text == "tiny/uefi-sb/none"
    assert len(root.findall("qemu:override/qemu:device", NS)) == 1


def test_xml_command_reports_bad_input(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compatlab.cli import main

    matrix = str(project / "matrix" / "m.yaml")
    assert main(["xml", matrix, "tiny/uefi-sbb/none", "--accel", "qemu"]) == 2
    assert "did you mean tiny/uefi-sb/none" in capsys.readouterr().err
    # A profile this lab cannot run is refused when the matrix loads, naming the axis value.
    unrunnable = project / "matrix" / "sb.yaml"
    unrunnable.write_text(
        (project / "matrix" / "m.yaml").read_text().replace("[uefi-sb]", "[uefi-sb, sb-on-pc]")
    )
    assert main(["xml", str(unrunnable), "tiny/uefi-sb/none", "--accel", "qemu"]) == 2
    err = capsys.readouterr().err
    assert f"{unrunnable}:9:" in err and "Secure Boot needs machine q35" in err
    with pytest.raises(SystemExit) as usage:
        main(["xml", matrix])
    assert usage.value.code == 2
