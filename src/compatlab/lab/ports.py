"""Host ports on 127.0.0.1 for guests' forwarded services (WinRM), leased without races.

A cell whose image needs a network channel gets a user-mode NIC whose forwarded port listens on
127.0.0.1 only. Concurrent cells of one run, and concurrent runs on one host, must never be
handed the same port, and a runner killed with SIGKILL must not keep its ports forever.

A lease is an exclusive ``flock`` on ``<root>/ports/<port>.lock``, held by an open file for as
long as the cell's VM exists. The kernel drops the lock when its holder dies, however it dies,
so a dead run's ports come back by themselves; ``compatlab gc`` only tidies the files. A port is
also tried with a ``bind`` on 127.0.0.1 before it is handed out, so a port something else
listens on (another program, a VM a dead run left running) is passed over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from compatlab.errors import StorageError

__all__ = ["DEFAULT_RANGE", "PortLease", "lease_port", "tidy_leases"]

DEFAULT_RANGE = range(47000, 48000)  # below Linux's ephemeral range (32768-60999 overlaps; see
# lease_port: a port the kernel handed out as ephemeral is busy and passed over by the bind test)


@dataclass
class PortLease:
    """A port held for one VM. :meth:`release` (or the holder's death) gives it back."""

    port: int
    path: Path
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _free_on_loopback(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def lease_port(root: Path, owner: str, *, ports: range = DEFAULT_RANGE) -> PortLease:
    """Lease a free port of ``ports`` on 127.0.0.1 for ``owner`` (written into the lock file).

    Raises :class:`StorageError` when every port of the range is held or busy.
    """
    folder = root / "ports"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc
    start = os.getpid() % len(ports)  # concurrent runners start their search apart
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        path = folder / f"{port}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # another VM holds it
            raise StorageError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        if not _free_on_loopback(port):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner}\n".encode())
        return PortLease(port, path, fd)
    raise StorageError(
        f"no free port in {ports.start}-{ports.stop - 1} on 127.0.0.1 ({folder} holds the leases)"
    )


def tidy_leases(root: Path) -> int:
    """Remove lock files nobody holds (their holder died). The number removed."""
    folder = root / "ports"
    removed = 0
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held: a live VM's
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
        os.close(fd)
    return removed
