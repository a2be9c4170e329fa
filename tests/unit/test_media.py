"""Payload ISOs: what goes in comes back out (names, contents, executable bits), byte-for-byte
the same every time."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from compatlab.errors import StorageError
from compatlab.guest.media import (
    DEFAULT_LABEL,
    FIXED_TIMESTAMP,
    build_iso,
    cached_iso,
    payload_digest,
)

LONG_NAME = "Acme Sensor Content Update (2025-06-11) - build 7.11.1.txt"
FILES: dict[str, tuple[bytes, bool]] = {
    "install.sh": (b"#!/bin/sh\necho installing\n", True),
    "uninstall.sh": (b"#!/bin/sh\necho removing\n", True),
    "README": (b"read me\n", False),
    LONG_NAME: (b"long names survive\n", False),
    "drivers/x64/acmeflt.sys": (b"\x4d\x5a" + bytes(range(256)) * 40, False),
    "drivers/x64/Setup Helper.exe": (b"MZ helper", True),
    "content/channel/C-00000291-00000000-00000032.sys": (b"\x00" * 3000, False),
    "empty.txt": (b"", False),
}


def make_payload(folder: Path, files: dict[str, tuple[bytes, bool]] = FILES) -> Path:
    for name, (data, executable) in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if executable else 0o644)
    (folder / "logs").mkdir()  # an empty folder is kept too
    return folder


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    return make_payload(tmp_path / "payload")


@pytest.fixture
def opened(payload: Path, tmp_path: Path) -> Iterator[Any]:
    iso = pycdlib.PyCdlib()
    iso.open(str(build_iso(payload, tmp_path / "payload.iso")))
    yield iso
    iso.close()


def read(iso: Any, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def tree(iso: Any, *, joliet: bool) -> set[str]:
    """Every path in the Joliet or the Rock Ridge view."""
    found: set[str] = set()
    key = "joliet_path" if joliet else "rr_path"
    for root, dirs, files in iso.walk(**{key: "/"}):
        for name in [*dirs, *files]:
            found.add(f"{root.rstrip('/')}/{name}".lstrip("/"))
    return found


def test_rock_ridge_keeps_names_contents_and_the_executable_bit(opened: Any) -> None:
    expected_dirs = {"drivers", "drivers/x64", "content", "content/channel", "logs"}
    assert tree(opened, joliet=False) == set(FILES) | expected_dirs
    for name, (data, executable) in FILES.items():
        assert read(opened, rr_path=f"/{name}") == data, name
        mode = opened.get_record(rr_path=f"/{name}").rock_ridge.get_file_mode()
        assert bool(mode & 0o111) == executable, name
        assert mode & 0o222 == 0, name  # read-only media
    assert opened.get_record(rr_path="/logs").rock_ridge.get_file_mode() & 0o040000


def test_joliet_keeps_long_names_for_windows(opened: Any) -> None:
    expected_dirs = {"drivers", "drivers/x64", "content", "content/channel", "logs"}
    assert tree(opened, joliet=True) == set(FILES) | expected_dirs
    assert read(opened, joliet_path=f"/{LONG_NAME}") == FILES[LONG_NAME][0]
    assert read(opened, joliet_path="/drivers/x64/Setup Helper.exe") == b"MZ helper"


def test_plain_iso9660_names_are_valid_and_unique(tmp_path: Path) -> None:
    files = {
        "Readme.txt": (b"a", False),
        "README.TXT": (b"b", False),
        "a b+c.tar.gz": (b"c", False),
    }
    iso = pycdlib.PyCdlib()
    iso.open(str(build_iso(make_payload(tmp_path / "p", files), tmp_path / "p.iso")))
    try:
        names = {
            child.file_identifier().decode()
            for child in iso.list_children(iso_path="/")
            if not (child.is_dot() or child.is_dotdot())
        }
        assert names == {"README.TXT;1", "README_1.TXT;1", "A_B_C_TAR.GZ;1", "LOGS"}
        assert read(iso, rr_path="/Readme.txt") == b"a"
        assert read(iso, rr_path="/README.TXT") == b"b"
    finally:
        iso.close()


def test_label(payload: Path, tmp_path: Path) -> None:
    for label in (DEFAULT_LABEL, "ACME_SENSOR_7_11"):
        iso = pycdlib.PyCdlib()
        iso.open(str(build_iso(payload, tmp_path / f"{label}.iso", label=label)))
        try:
            assert iso.pvd.volume_identifier.decode().rstrip() == label
            assert iso.joliet_vd is not None
            assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == label
        finally:
            iso.close()
    with pytest.raises(ValueError, match="label"):
        build_iso(payload, tmp_path / "bad.iso", label="lower case")
    with pytest.raises(ValueError, match="label"):
        build_iso(payload, tmp_path / "bad.iso", label="X" * 33)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_input_same_bytes(
    payload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sha256(build_iso(payload, tmp_path / "1.iso"))
    # Later, elsewhere: another clock, another timezone, files touched since.
    time.sleep(1.1)
    for path in payload.rglob("*"):
        os.utime(path)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        second = sha256(build_iso(payload, tmp_path / "2.iso"))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert first == second


def test_dates_in_the_image_are_the_fixed_timestamp(opened: Any) -> None:
    expected = time.gmtime(FIXED_TIMESTAMP)
    date = opened.get_record(rr_path="/install.sh").date
    assert (date.years_since_1900 + 1900, date.month, date.day_of_month) == (
        expected.tm_year,
        expected.tm_mon,
        expected.tm_mday,
    )
    assert date.gmtoffset == 0
    assert opened.pvd.volume_creation_date.year == expected.tm_year


def test_the_clock_is_restored_after_a_build(payload: Path, tmp_path: Path) -> None:
    import pycdlib.dates
    import pycdlib.pycdlib

    build_iso(payload, tmp_path / "x.iso")
    assert getattr(pycdlib.pycdlib, "time") is time  # noqa: B009 (not re-exported)
    assert getattr(pycdlib.dates, "time") is time  # noqa: B009


def test_digest_follows_the_content(payload: Path) -> None:
    base = payload_digest(payload)
    assert payload_digest(payload) == base
    assert payload_digest(payload, label="OTHER") != base

    (payload / "README").write_bytes(b"changed\n")
    changed = payload_digest(payload)
    assert changed != base

    (payload / "README").chmod(0o755)
    assert payload_digest(payload) != changed
    (payload / "README").chmod(0o644)
    assert payload_digest(payload) == changed

    (payload / "README").rename(payload / "README.md")
    assert payload_digest(payload) != changed


def test_cached_iso_is_built_once(payload: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = cached_iso(payload, cache)
    built = first.stat().st_mtime_ns
    assert first.name == f"{payload_digest(payload)[:32]}.iso"
    assert sha256(first) == sha256(build_iso(payload, tmp_path / "direct.iso"))

    again = cached_iso(payload, cache)
    assert again == first
    assert again.stat().st_mtime_ns == built
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary files left

    (payload / "README").write_bytes(b"v2\n")
    assert cached_iso(payload, cache) != first


def test_what_cannot_go_on_the_disc_is_refused(tmp_path: Path) -> None:
    folder = make_payload(tmp_path / "p", {"a.txt": (b"a", False)})
    (folder / "link").symlink_to(folder / "a.txt")
    with pytest.raises(StorageError, match="symlink"):
        build_iso(folder, tmp_path / "x.iso")
    (folder / "link").unlink()

    (folder / ("n" * 65)).write_bytes(b"")
    with pytest.raises(StorageError, match="longer than Joliet's 64"):
        build_iso(folder, tmp_path / "x.iso")

    with pytest.raises(StorageError, match="does not exist"):
        build_iso(tmp_path / "missing", tmp_path / "x.iso")


def test_a_failed_write_is_a_storage_error(payload: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write payload ISO"):
        build_iso(payload, tmp_path / "no-such-folder" / "x.iso")


def test_small_payloads_are_padded_past_label_probe_windows(tmp_path: Path) -> None:
    # busybox findfs reads 0x11000 bytes to find a label; a shorter medium was invisible.
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "install.sh").write_text("exit 67\n")
    iso = build_iso(folder, tmp_path / "p.iso")
    assert iso.stat().st_size >= 0x11000
    assert iso.stat().st_size % 2048 == 0
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    try:
        assert reader.get_record(rr_path="/install.sh").is_file()
    finally:
        reader.close()
