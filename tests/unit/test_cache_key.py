"""The cache key: which inputs change it and which do not; the golden image's digest sidecar;
sizes on the command line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from compatlab.cache import (
    PROVISION_VERSION,
    KeyInputs,
    ProductInput,
    cache_key,
    file_digest,
    format_size,
    hardware_fields,
    key_inputs,
    parse_size,
)
from compatlab.catalog import (
    GoldenImage,
    HardwareProfile,
    Health,
    Product,
    ProductPayload,
    Watchdog,
)
from compatlab.errors import ImageError
from compatlab.installs import Commands
from compatlab.report.provenance import file_sha256, payload_sha256

HARDWARE = HardwareProfile(
    name="uefi-2cpu",
    vcpus=2,
    memory_mib=2048,
    firmware="uefi",
    secure_boot=True,
    tpm=True,
    disk_bus="virtio",
    machine="q35",
    source=Path("/configs/hardware/uefi-2cpu.yaml"),
    watchdog=Watchdog(),
)
AV = ProductInput("acme-av", "a" * 64, "install.sh {payload}")
EDR = ProductInput("other-edr", "b" * 64, "setup --quiet")


def inputs(**changes: object) -> KeyInputs:
    base = KeyInputs(
        image={"disk": "d" * 64, "kernel": "k" * 64, "cmdline": "console=ttyS0"},
        hardware=hardware_fields(HARDWARE),
        products=(AV, EDR),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_same_inputs_give_the_same_key() -> None:
    assert cache_key(inputs()) == cache_key(inputs())
    shuffled = inputs(image={"cmdline": "console=ttyS0", "kernel": "k" * 64, "disk": "d" * 64})
    assert cache_key(shuffled) == cache_key(inputs())


def test_a_different_golden_image_digest_changes_the_key() -> None:
    assert cache_key(inputs(image={"disk": "e" * 64, "kernel": "k" * 64})) != cache_key(
        inputs(image={"disk": "d" * 64, "kernel": "k" * 64})
    )
    with_cmdline = {"disk": "d" * 64, "kernel": "k" * 64, "cmdline": "quiet"}
    assert cache_key(inputs(image=with_cmdline)) != cache_key(inputs())


HARDWARE_CHANGES: list[tuple[str, object]] = [
    ("vcpus", 4),
    ("memory_mib", 4096),
    ("firmware", "bios"),
    ("secure_boot", False),
    ("tpm", False),
    ("disk_bus", "sata"),
    ("machine", "pc"),
    ("watchdog", None),
    ("watchdog", Watchdog(action="poweroff")),
]


@pytest.mark.parametrize(("field", "value"), HARDWARE_CHANGES)
def test_any_hardware_field_changes_the_key(field: str, value: object) -> None:
    changed = dataclasses.replace(HARDWARE, **{field: value})  # type: ignore[arg-type]
    assert cache_key(inputs(hardware=hardware_fields(changed))) != cache_key(inputs())


def test_every_field_of_a_hardware_profile_but_its_name_and_file_is_in_the_key() -> None:
    # A field added to HardwareProfile later must enter the key (or be named here on purpose).
    described = {f.name for f in dataclasses.fields(HardwareProfile)} - {"name", "source"}
    assert set(hardware_fields(HARDWARE)) == described
    assert described == {name for name, _ in HARDWARE_CHANGES}


def test_a_profile_s_name_and_file_do_not_change_the_key() -> None:
    renamed = dataclasses.replace(HARDWARE, name="other", source=Path("/elsewhere.yaml"))
    assert cache_key(inputs(hardware=hardware_fields(renamed))) == cache_key(inputs())


def test_product_order_payload_and_install_command_change_the_key() -> None:
    key = cache_key(inputs())
    assert cache_key(inputs(products=(EDR, AV))) != key
    assert cache_key(inputs(products=(AV,))) != key
    assert (
        cache_key(inputs(products=(dataclasses.replace(AV, payload_sha256="c" * 64), EDR))) != key
    )
    assert cache_key(inputs(products=(dataclasses.replace(AV, install="other"), EDR))) != key


def test_the_provisioning_version_changes_the_key() -> None:
    assert cache_key(inputs(provision_version=PROVISION_VERSION + 1)) != cache_key(inputs())


def test_a_memory_layer_and_its_hypervisor_change_the_key() -> None:
    # A QEMU migration stream loads only into a QEMU that reads it: an upgraded host builds
    # its memory layers again rather than failing their restores; a disk layer is another key.
    disk = cache_key(inputs())
    memory = cache_key(inputs(memory="libvirt 9.0.0, QEMU 7.2.0"))
    assert len({disk, memory, cache_key(inputs(memory="libvirt 9.0.0, QEMU 8.0.0"))}) == 3


def test_key_inputs_survive_the_manifest_round_trip() -> None:
    for original in (inputs(), inputs(memory="libvirt 9.0.0, QEMU 7.2.0")):
        again = KeyInputs.from_json(json.loads(json.dumps(original.to_json())))
        assert cache_key(again) == cache_key(original)


# -- the golden image's digest ------------------------------------------------------------------


def test_a_digest_is_reused_while_the_file_is_unchanged(tmp_path: Path) -> None:
    disk = tmp_path / "golden.qcow2"
    disk.write_bytes(b"golden image bytes" * 1000)
    sidecars = tmp_path / "digests"
    assert file_digest(disk, sidecars) == file_sha256(disk)
    [sidecar] = sidecars.iterdir()
    # Plant a different digest: if it comes back, the file was not hashed again.
    saved = json.loads(sidecar.read_text())
    saved["sha256"] = "f" * 64
    sidecar.write_text(json.dumps(saved))
    assert file_digest(disk, sidecars) == "f" * 64


def test_a_digest_is_recomputed_when_the_file_changes_even_with_its_old_mtime(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "golden.qcow2"
    disk.write_bytes(b"A" * 4096)
    sidecars = tmp_path / "digests"
    first = file_digest(disk, sidecars)
    before = disk.stat()
    disk.write_bytes(b"B" * 4096)  # same size
    os.utime(disk, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `touch -d` would
    assert file_digest(disk, sidecars) == file_sha256(disk) != first


def test_a_damaged_sidecar_is_recomputed(tmp_path: Path) -> None:
    disk = tmp_path / "golden.qcow2"
    disk.write_bytes(b"x" * 100)
    sidecars = tmp_path / "digests"
    file_digest(disk, sidecars)
    [sidecar] = sidecars.iterdir()
    sidecar.write_text("{not json")
    assert file_digest(disk, sidecars) == file_sha256(disk)


# -- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("20g", 20 << 30), ("2KB", 2048)],
)
def test_sizes_people_write(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "ten", "5X", "1e9", "1.5", "GiB", "1iB"])
def test_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|fraction"):
        parse_size(text)


def test_sizes_print_in_binary_units() -> None:
    assert [format_size(n) for n in (512, 3 << 20, 20 << 30)] == ["512 B", "3.0 MiB", "20.0 GiB"]


# -- from catalog objects -------------------------------------------------------------------------


def _image(tmp_path: Path) -> GoldenImage:
    disk = tmp_path / "golden.qcow2"
    kernel = tmp_path / "vmlinuz"
    if not disk.exists():
        disk.write_bytes(b"disk")
        kernel.write_bytes(b"kernel")
    return GoldenImage(
        name="lin-a",
        os_family="linux",
        build="1.0",
        display_name="Linux A",
        disk=disk,
        firmware=frozenset({"bios"}),
        channel="agent",
        source=tmp_path / "lin-a.yaml",
        kernel=kernel,
        cmdline="console=ttyS0",
    )


def _product(tmp_path: Path, name: str) -> Product:
    folder = tmp_path / "payloads" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "install.sh").write_text(f"echo {name}\n")
    payload = ProductPayload(folder, Commands("sh {payload}/install.sh", "true"), Health())
    return Product(name, "vendor", {"linux": payload}, tmp_path / f"{name}.yaml")


def test_key_inputs_of_a_cell_follow_its_files(tmp_path: Path) -> None:
    sidecars = tmp_path / "digests"
    image = _image(tmp_path)
    av, edr = _product(tmp_path, "av"), _product(tmp_path, "edr")
    first = key_inputs(image, HARDWARE, [av, edr], sidecars)
    assert first.image == {
        "disk": file_sha256(image.disk),
        "kernel": file_sha256(tmp_path / "vmlinuz"),
        "cmdline": "console=ttyS0",
    }
    assert [(p.name, p.payload_sha256) for p in first.products] == [
        ("av", payload_sha256(tmp_path / "payloads" / "av")),
        ("edr", payload_sha256(tmp_path / "payloads" / "edr")),
    ]
    assert cache_key(key_inputs(image, HARDWARE, [av, edr], sidecars)) == cache_key(first)
    (tmp_path / "payloads" / "av" / "install.sh").write_text("echo changed\n")
    assert cache_key(key_inputs(image, HARDWARE, [av, edr], sidecars)) != cache_key(first)
    image.disk.write_bytes(b"a new golden image")
    changed_disk = key_inputs(image, HARDWARE, [av, edr], sidecars)
    assert changed_disk.image["disk"] == file_sha256(image.disk)


def test_a_golden_image_that_cannot_be_read_is_an_image_error(tmp_path: Path) -> None:
    image = _image(tmp_path)
    image.disk.unlink()
    with pytest.raises(ImageError, match="disk"):
        key_inputs(image, HARDWARE, [], tmp_path / "digests")
