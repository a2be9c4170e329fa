"""Payload media: a folder packed into an ISO 9660 image, attached to the guest's CD-ROM drive.

Built in Python with pycdlib, no mkisofs on the host. Joliet carries the long names Windows
reads, Rock Ridge the long names and the executable bit Linux reads; the plain ISO 9660 names
are mangled 8.3-style and only there for the standard's sake.

The image is byte-for-byte the same for the same input (same names, contents, executable bits
and label), whenever and wherever it is built: every timestamp is fixed and written in UTC. So
an ISO can be cached under :func:`payload_digest`, which :func:`cached_iso` does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import struct_time
from types import ModuleType
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from compatlab.errors import StorageError

__all__ = ["DEFAULT_LABEL", "FIXED_TIMESTAMP", "build_iso", "cached_iso", "payload_digest"]

DEFAULT_LABEL = "COMPATLAB"
#: 300 KiB, mkisofs's own padding: far past any label probe's read window.
MIN_ISO_BYTES = 300 * 1024
#: Every date in the image: 2000-01-01T00:00:00Z.
FIXED_TIMESTAMP = 946684800.0

_LABEL = re.compile(r"^[A-Z0-9_]{1,32}$")
_JOLIET_MAX = 64  # UCS-2 characters per name component (pycdlib enforces it)
_ISO_NAME_MAX = 30  # name + extension at interchange level 3
_ISO_EXT_MAX = 3
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")
_DIR_MODE = 0o040555
_EXEC_MODE = 0o100555
_FILE_MODE = 0o100444


@dataclass(frozen=True)
class _Entry:
    relative: tuple[str, ...]
    path: Path
    is_dir: bool
    executable: bool


def build_iso(folder: Path, output: Path, *, label: str = DEFAULT_LABEL) -> Path:
    """Pack ``folder`` into an ISO 9660 image at ``output`` (Joliet + Rock Ridge).

    Plain files and folders only; a symlink, a name longer than Joliet's 64 characters, or an
    unreadable file raise :class:`StorageError`, as does a failed write (disk full).
    """
    _check_label(label)
    entries = _scan(Path(folder))
    iso = pycdlib.PyCdlib()
    opened = False
    try:
        with _frozen_clock():
            iso.new(interchange_level=3, vol_ident=label, joliet=3, rock_ridge="1.09")
            opened = True
            names: dict[tuple[str, ...], str] = {(): ""}
            taken: dict[tuple[str, ...], set[str]] = {}
            for entry in entries:
                parent = entry.relative[:-1]
                iso_name = _iso_name(
                    entry.relative[-1], entry.is_dir, taken.setdefault(parent, set())
                )
                names[entry.relative] = f"{names[parent]}/{iso_name}"
                joliet_path = "/" + "/".join(entry.relative)
                if entry.is_dir:
                    iso.add_directory(
                        iso_path=names[entry.relative],
                        rr_name=entry.relative[-1],
                        joliet_path=joliet_path,
                        file_mode=_DIR_MODE,
                    )
                else:
                    iso.add_file(
                        str(entry.path),
                        iso_path=f"{names[entry.relative]};1",
                        rr_name=entry.relative[-1],
                        joliet_path=joliet_path,
                        file_mode=_EXEC_MODE if entry.executable else _FILE_MODE,
                    )
            output = Path(output)
            iso.write(str(output))
            _pad(output)
    except PyCdlibException as exc:
        raise StorageError(f"cannot build payload ISO from {folder}: {exc}") from exc
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StorageError(f"cannot write payload ISO {output}: {reason}") from exc
    finally:
        if opened:
            iso.close()
    return output


def _pad(path: Path) -> None:
    """Grow a small ISO to :data:`MIN_ISO_BYTES` with zeros, as mkisofs pads its images.

    Label probes read a fixed window from the start of the device: busybox's findfs reads
    0x11000 bytes and, on a shorter medium, gives up before it looks at the ISO 9660 header
    (measured: a 67,584-byte payload was invisible in the guest, a 69,632-byte one was found).
    """
    size = path.stat().st_size
    if size < MIN_ISO_BYTES:
        with path.open("r+b") as handle:
            handle.truncate(MIN_ISO_BYTES)


def payload_digest(folder: Path, *, label: str = DEFAULT_LABEL) -> str:
    """SHA-256 of everything that goes into the ISO: names, kinds, executable bits, contents."""
    _check_label(label)
    # The format version is in the key: an ISO cached by an older builder is not reused.
    digest = hashlib.sha256(f"compatlab-iso/2\0{label}\0".encode())
    for entry in _scan(Path(folder)):
        kind = "d" if entry.is_dir else ("x" if entry.executable else "f")
        digest.update(f"{kind}\0{'/'.join(entry.relative)}\0".encode())
        if not entry.is_dir:
            try:
                with entry.path.open("rb") as file:
                    for block in iter(lambda: file.read(1 << 20), b""):
                        digest.update(block)
            except OSError as exc:
                raise StorageError(f"cannot read payload file {entry.path}: {exc}") from exc
            digest.update(b"\0")
    return digest.hexdigest()


def cached_iso(folder: Path, cache: Path, *, label: str = DEFAULT_LABEL) -> Path:
    """The ISO of ``folder`` in ``cache``, named by :func:`payload_digest`; built when missing.

    Safe when several cells build the same payload at once: each builds to a private temporary
    file and renames it into place.
    """
    cache = Path(cache)
    target = cache / f"{payload_digest(folder, label=label)[:32]}.iso"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=cache, suffix=".iso.tmp")
        os.close(handle)
    except OSError as exc:
        raise StorageError(f"cannot create ISO cache {cache}: {exc}") from exc
    try:
        build_iso(folder, Path(temporary), label=label)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


# -- helpers ------------------------------------------------------------------------------------


def _check_label(label: str) -> None:
    if not _LABEL.match(label):
        raise ValueError(f"ISO label {label!r}: 1-32 of A-Z, 0-9 and _")


def _scan(folder: Path) -> list[_Entry]:
    """Every folder and file under ``folder``, parents first, in a fixed (sorted) order."""
    if not folder.is_dir():
        raise StorageError(f"payload folder {folder} does not exist")
    entries: list[_Entry] = []

    def walk(directory: Path, relative: tuple[str, ...]) -> None:
        try:
            children = sorted(os.scandir(directory), key=lambda child: child.name)
        except OSError as exc:
            raise StorageError(f"cannot read payload folder {directory}: {exc}") from exc
        for child in children:
            path = Path(child.path)
            if child.is_symlink():
                raise StorageError(f"payload {path} is a symlink; payloads hold plain files")
            if len(child.name) > _JOLIET_MAX:
                raise StorageError(
                    f"payload name {child.name!r} is longer than Joliet's {_JOLIET_MAX} characters"
                )
            mode = child.stat().st_mode
            if stat.S_ISDIR(mode):
                entries.append(_Entry((*relative, child.name), path, True, False))
                walk(path, (*relative, child.name))
            elif stat.S_ISREG(mode):
                executable = bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
                entries.append(_Entry((*relative, child.name), path, False, executable))
            else:
                raise StorageError(f"payload {path} is not a plain file or folder")

    walk(folder, ())
    return entries


def _iso_name(name: str, is_dir: bool, taken: set[str]) -> str:
    """A unique ISO 9660 level-3 identifier for ``name`` within its folder."""
    stem, dot, extension = name.upper().rpartition(".")
    if not dot or is_dir:
        stem, extension = name.upper(), ""
    stem = _NOT_D_CHAR.sub("_", stem) or "_"
    extension = _NOT_D_CHAR.sub("_", extension)[:_ISO_EXT_MAX]
    room = _ISO_NAME_MAX - len(extension)
    candidate = _join(stem[:room], extension)
    counter = 1
    while candidate in taken:
        suffix = f"_{counter}"
        candidate = _join(stem[: room - len(suffix)] + suffix, extension)
        counter += 1
    taken.add(candidate)
    return candidate


def _join(stem: str, extension: str) -> str:
    return f"{stem}.{extension}" if extension else stem


class _FrozenTime:
    """Stands in for the ``time`` module inside pycdlib: a fixed clock, in UTC."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def time(self) -> float:
        return FIXED_TIMESTAMP

    def localtime(self, seconds: float | None = None) -> struct_time:
        # UTC, so the timezone offset written into every date is 0 wherever the ISO is built.
        return time.gmtime(FIXED_TIMESTAMP if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_clock_lock = threading.Lock()


@contextmanager
def _frozen_clock() -> Iterator[None]:
    """Fix pycdlib's clock while an image is made.

    pycdlib stamps every record with ``time.time()`` in local time and has no parameter for it.
    Its modules' ``time`` name is swapped for :class:`_FrozenTime` (any pycdlib module that
    imports ``time``, so new call sites are covered too), under a lock because the swap is
    process-wide. The determinism test catches a pycdlib release that gets the time otherwise.
    """
    with _clock_lock:
        patched = [
            module
            for name, module in list(sys.modules.items())
            if (name == "pycdlib" or name.startswith("pycdlib."))
            and getattr(module, "time", None) is time
        ]
        frozen = _FrozenTime(time)
        for module in patched:
            module.time = frozen  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module in patched:
                module.time = time  # type: ignore[attr-defined]
