"""Reading a file a user pointed compatlab at, without trusting what is there.

A lab runs unattended: a matrix, catalog or results file that is a FIFO must not hang the run, a
symlink to ``/dev/zero`` must not eat the host's memory, a symlink loop must not end in a
traceback. So every such file is checked before it is read -- it must be a regular file, and
not larger than its kind's limit -- and is read through a non-blocking descriptor with the limit
enforced on the bytes actually read (a file in ``/proc`` says its size is 0). Paths are resolved
with loops reported, not raised as ``RuntimeError`` (``Path.resolve`` before Python 3.13).

Every refusal is an :class:`~compatlab.errors.InputError` of the caller's type, naming the file:
the caller re-raises it at the YAML value that named the path, where there is one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

from compatlab.errors import InputError

__all__ = [
    "MAX_RESULTS_BYTES",
    "MAX_YAML_BYTES",
    "PathKind",
    "check_kind",
    "path_kind",
    "read_text",
    "resolve",
]

# A 100,000-cell matrix is a few kilobytes, a catalog file a few hundred bytes. ruamel's
# round-trip loader reads some 50 KB a second and holds over a hundred bytes per byte read
# (measured on a busy lab host: 1 MiB of flow mappings, 23 s and 150 MB; 10 MB of list items,
# 155 s): past 1 MiB a "matrix" is a pasted log or a device, and reading it would look like a hang.
MAX_YAML_BYTES = 1024 * 1024
# results.json holds every cell's events, commands and checks, with guest output capped per
# command: a few KB to a few hundred KB per cell. 256 MiB is far past any run compatlab makes,
# and still parses in memory on a lab host.
MAX_RESULTS_BYTES = 256 * 1024 * 1024

# "unknown": stat itself failed (no permission on a folder above it): not ours to judge.
PathKind = Literal[
    "missing",
    "loop",
    "unknown",
    "file",
    "folder",
    "fifo",
    "socket",
    "block device",
    "char device",
    "other",
]


def resolve(path: Path, error_type: type[InputError] = InputError) -> Path:
    """``path`` made absolute with its symlinks followed; a symlink loop is ``error_type``."""
    try:
        return path.resolve()
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from '...'"
        raise error_type(f"{path} is a symlink loop", file=path) from exc
    except OSError as exc:  # Python >= 3.13 raises ELOOP as OSError
        raise error_type(_why(exc), file=path) from exc


def path_kind(path: Path) -> PathKind:
    """What ``path`` is once symlinks are followed, without opening it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        return "unknown"
    except ValueError:  # a NUL byte in the path
        return "unknown"
    return _kind(mode)


def check_kind(
    path: Path,
    allowed: tuple[PathKind, ...],
    what: str,
    error_type: type[InputError] = InputError,
    *,
    missing_ok: bool = False,
) -> PathKind:
    """Refuse ``path`` unless it is one of ``allowed``.

    ``missing_ok`` also lets through a path that does not exist, or that this process cannot
    examine (the lab may read it as another user): what the run finds there is the run's.
    """
    kind = path_kind(path)
    if kind in allowed or (missing_ok and kind in ("missing", "unknown")):
        return kind
    if kind == "missing":
        raise error_type(f"{what} {path} does not exist", file=path)
    if kind == "loop":
        raise error_type(f"{what} {path} is a symlink loop", file=path)
    if kind == "unknown":
        raise error_type(f"{what} {path} cannot be examined", file=path)
    raise error_type(f"{what} {path} is {_a(kind)}, not {_names(allowed)}", file=path)


def read_text(
    path: Path, *, limit: int, what: str = "file", error_type: type[InputError] = InputError
) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes, or ``error_type``.

    Never blocks on a FIFO or a device (the type is checked before opening, and again on the
    open descriptor, which is opened non-blocking), never reads more than ``limit + 1`` bytes.
    """
    try:
        before = os.stat(path)
    except OSError as exc:
        raise error_type(_why(exc), file=path) from exc
    except ValueError as exc:  # embedded NUL in the path
        raise error_type(f"not a usable path: {exc}", file=path) from exc
    _check_regular(before.st_mode, before.st_size, path, limit, what, error_type)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise error_type(_why(exc), file=path) from exc
    try:
        # Swapped between the stat and the open (a FIFO now where the file was): check again.
        opened = os.fstat(fd)
        _check_regular(opened.st_mode, opened.st_size, path, limit, what, error_type)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error_type(_why(exc), file=path) from exc
    finally:
        os.close(fd)
    if size > limit:
        raise error_type(f"{what} is larger than {_size(limit)}", file=path)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error_type(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot start a character here",
            file=path,
            line=line,
            column=column,
        ) from exc


def _check_regular(
    mode: int, size: int, path: Path, limit: int, what: str, error_type: type[InputError]
) -> None:
    if not stat.S_ISREG(mode):
        raise error_type(f"{what} is {_a(_kind(mode))}, not a regular file", file=path)
    if size > limit:
        raise error_type(
            f"{what} is {_size(size)}, larger than the {_size(limit)} compatlab reads", file=path
        )


def _kind(mode: int) -> PathKind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISCHR(mode):
        return "char device"
    return "other"


def _a(kind: PathKind) -> str:
    if kind == "other":
        return "a special file"
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _names(kinds: tuple[PathKind, ...]) -> str:
    return " or ".join(_a(k) for k in kinds) if kinds else "anything"


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.0f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} bytes"


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file not found"
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a folder, not a regular file"
    return f"cannot read file: {exc.strerror or exc}"
