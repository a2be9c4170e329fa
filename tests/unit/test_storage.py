"""A cell's folder and overlay disk, on real qcow2 images made with qemu-img in tmp."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.errors import ImageError, LabError, StorageError
from compatlab.lab.storage import CellStorage, cell_slug
from tests.support.lab import require_lab

CELL = "demo/bios-1cpu/acme-av+other-edr"


@pytest.fixture(autouse=True)
def _qemu_utils() -> None:
    """Every test here makes real qcow2 images (``make test`` installs qemu-utils)."""
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        require_lab("qemu-img / qemu-io (qemu-utils) not installed")


def qemu(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return done.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def golden() -> Iterator[Path]:
    """A 64 MiB qcow2 golden image with 1 MiB of 0xab at offset 0.

    Not under tmp_path: pytest's base folder is private (0700), and the golden image must be
    reachable by the qemu user.
    """
    folder = Path(tempfile.mkdtemp(prefix="compatlab-golden-"))
    try:
        folder.chmod(0o755)
        path = folder / "disk.qcow2"
        qemu("qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M")
        qemu("qemu-io", "-c", "write -P 0xab 0 1M", str(path))
        yield path
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def storage(tmp_path: Path) -> CellStorage:
    return CellStorage("run-1", CELL, root=tmp_path / "lab", host="hv-test")


def test_paths_follow_the_layout(storage: CellStorage, tmp_path: Path) -> None:
    folder = tmp_path / "lab" / "cells" / "run-1" / cell_slug(CELL)
    assert storage.folder == folder
    assert storage.overlay == folder / "overlay.qcow2"
    assert storage.nvram == folder / "VARS.fd"
    assert storage.serial_log == folder / "serial.log"
    assert storage.screenshot("boot-2") == folder / "screenshots" / "boot-2.png"
    assert storage.payload_iso("candidate") == folder / "payloads" / "candidate.iso"
    assert not folder.exists()  # nothing is created until asked


def test_cell_slugs_are_safe_and_distinct() -> None:
    ids = [CELL, CELL.replace("+", "-"), CELL.upper(), "a/b", "a+b", "../..", ""]
    slugs = [cell_slug(cell) for cell in ids]
    assert len(set(slugs)) == len(slugs)
    for slug in slugs:
        assert "/" not in slug
        assert not slug.startswith(".")
    assert cell_slug(CELL).startswith("demo-bios-1cpu-acme-av-other-edr-")


def test_unsafe_file_and_run_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CellStorage("../etc", CELL, root=tmp_path)
    storage = CellStorage("run-1", CELL, root=tmp_path)
    with pytest.raises(ValueError):
        storage.payload_iso("../../golden")


def test_overlay_on_the_golden_image(storage: CellStorage, golden: Path) -> None:
    overlay = storage.create_overlay(golden)

    assert overlay == storage.overlay
    info = json.loads(qemu("qemu-img", "info", "--output=json", str(overlay)))
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(golden.resolve())
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 64 * 1024 * 1024
    # Only metadata was written: the overlay is tiny whatever the golden image holds.
    assert overlay.stat().st_size < 1024 * 1024
    # The guest sees the golden image's data through the overlay.
    qemu("qemu-io", "-r", "-c", "read -P 0xab 0 1M", str(overlay))


def test_golden_image_is_untouched_when_the_guest_writes(
    storage: CellStorage, golden: Path
) -> None:
    before = (digest(golden), golden.stat().st_mtime_ns, golden.stat().st_mode)
    overlay = storage.create_overlay(golden)

    # What a guest does to its disk: overwrite data that came from the golden image.
    qemu("qemu-io", "-c", "write -P 0xcd 0 1M", str(overlay))
    qemu("qemu-io", "-c", "write -P 0xef 32M 1M", str(overlay))

    qemu("qemu-io", "-r", "-c", "read -P 0xcd 0 1M", str(overlay))
    qemu("qemu-io", "-r", "-c", "read -P 0xab 0 1M", str(golden))
    assert (digest(golden), golden.stat().st_mtime_ns, golden.stat().st_mode) == before


def test_folders_are_traversable_by_the_qemu_user(storage: CellStorage, golden: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not make the folders private
    try:
        storage.create_overlay(golden)
    finally:
        os.umask(old)
    for folder in (storage.folder.parent, storage.folder, storage.screenshots, storage.payloads):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


def test_a_missing_golden_image_is_an_image_error(storage: CellStorage, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist") as caught:
        storage.create_overlay(tmp_path / "images" / "gone" / "disk.qcow2")
    assert isinstance(caught.value, LabError)
    assert caught.value.host == "hv-test"
    assert not storage.folder.exists()


def test_a_golden_image_qemu_cannot_read_is_an_image_error(
    storage: CellStorage, golden: Path
) -> None:
    golden.chmod(0o600)
    with pytest.raises(ImageError, match="not readable by the hypervisor's qemu user"):
        storage.create_overlay(golden)
    golden.chmod(0o644)
    golden.parent.chmod(0o700)
    with pytest.raises(ImageError, match="lacks o\\+x"):
        storage.create_overlay(golden)


def test_an_unreadable_golden_image_is_an_image_error(storage: CellStorage, golden: Path) -> None:
    broken = CellStorage("run-1", CELL, root=storage.root, qemu_img="false")
    with pytest.raises(ImageError, match="qemu-img info failed"):
        broken.create_overlay(golden)


def test_golden_images_must_be_standalone_qcow2(storage: CellStorage, golden: Path) -> None:
    raw = golden.with_name("disk.raw")
    qemu("qemu-img", "create", "-q", "-f", "raw", str(raw), "1M")
    with pytest.raises(ImageError, match="is raw, not qcow2"):
        storage.create_overlay(raw)
    layered = golden.with_name("layered.qcow2")
    qemu("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(golden), str(layered))
    with pytest.raises(ImageError, match="has a backing file"):
        storage.create_overlay(layered)


def test_qemu_img_failures_are_storage_errors_with_the_host(
    storage: CellStorage, golden: Path
) -> None:
    storage.create_overlay(golden)
    with pytest.raises(StorageError, match="exists already") as caught:
        storage.create_overlay(golden)
    assert caught.value.host == "hv-test"

    # A dangling symlink in the overlay's place, into a folder that does not exist: qemu-img
    # create itself fails.
    broken = CellStorage("run-1", "broken/cell/none", root=storage.root, host="hv-test")
    broken.create()
    broken.overlay.symlink_to(storage.root / "no-such-folder" / "overlay.qcow2")
    with pytest.raises(StorageError, match=r"qemu-img create failed: .*No such file") as caught:
        broken.create_overlay(golden)
    assert caught.value.host == "hv-test"

    missing = CellStorage("run-1", "x/y/z", root=storage.root, qemu_img="compatlab-no-qemu-img")
    with pytest.raises(StorageError, match="not installed"):
        missing.create_overlay(golden)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up for real."""
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        require_lab("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        require_lab(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_a_full_disk_is_a_storage_error_naming_the_host(
    tiny_filesystem: Path, golden: Path
) -> None:
    storage = CellStorage("run-1", CELL, root=tiny_filesystem, host="hv-test")
    storage.create()
    filler = tiny_filesystem / "filler"
    with filler.open("wb", buffering=0) as file, pytest.raises(OSError):
        while True:
            file.write(b"\0" * 65536)
    with pytest.raises(StorageError, match="disk full") as caught:
        storage.create_overlay(golden)
    assert caught.value.host == "hv-test"
    # Nothing half-written is left in the way of a retry once there is room again.
    assert not storage.overlay.exists()
    filler.unlink()
    storage.create_overlay(golden)


def test_remove_leaves_nothing(storage: CellStorage, golden: Path) -> None:
    neighbour = CellStorage("run-1", "demo/uefi/none", root=storage.root)
    neighbour.create_overlay(golden)
    storage.create_overlay(golden)
    storage.serial_log.write_text("boot\n")
    storage.screenshot("boot-1").write_bytes(b"\x89PNG")
    storage.payload_iso("candidate").write_bytes(b"iso")

    storage.remove()
    assert not storage.folder.exists()
    assert neighbour.overlay.exists()  # the run's other cells are left alone

    neighbour.remove()
    assert not (storage.root / "cells" / "run-1").exists()  # the empty run folder goes too
    neighbour.remove()  # idempotent
