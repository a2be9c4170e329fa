"""A private libvirtd for tests that stop, restart or kill the daemon under a running client.

The system daemon is shared with other people and is never touched. This one runs in its own
mount namespace (and optionally its own network namespace), with tmpfs over its state folders,
so it shares no state with the system daemon; only its socket folder is visible outside.
Restarting or killing it disturbs no one else. It needs root (``unshare -m`` needs
CAP_SYS_ADMIN); where it cannot start, :func:`~tests.support.lab.require_lab` decides.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.lab import require_lab

__all__ = ["PrivateLibvirtd"]

Driver = Literal["test", "qemu"]

START_TIMEOUT = 30.0

DAEMON_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""

# Run inside the private mount namespace: "$1" is the daemon's folder.
_PRIVATE_STATE = """\
for d in /run/libvirt /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mount -t tmpfs none "$d" || exit 1
done
"""
# The QEMU driver logs to files: the namespace has no virtlogd.
_QEMU_LOGS = """\
echo 'stdio_handler = "file"' > /etc/libvirt/qemu.conf
"""
_EXEC = """\
exec libvirtd -p "$1/libvirtd.pid" -f "$1/libvirtd.conf"
"""


@dataclass
class PrivateLibvirtd:
    """One private ``libvirtd`` process, serving ``driver`` on a socket under ``folder``."""

    folder: Path
    driver: Driver
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.folder / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        if self.driver == "test":
            return f"test+unix:///default?socket={self.socket}"
        return f"qemu+unix:///system?socket={self.socket}"

    @classmethod
    def start(
        cls, folder: Path, *, driver: Driver = "test", network_namespace: bool = False
    ) -> PrivateLibvirtd:
        """Start a daemon in ``folder`` (again, after :meth:`stop`: same socket, same URI)."""
        sock = folder / "sock"
        sock.mkdir(parents=True, exist_ok=True)
        (sock / "libvirt-sock").unlink(missing_ok=True)
        (folder / "libvirtd.conf").write_text(DAEMON_CONF.format(sock=sock))
        script = _PRIVATE_STATE + (_QEMU_LOGS if driver == "qemu" else "") + _EXEC
        namespaces = ["-m", "-n"] if network_namespace else ["-m"]
        proc = subprocess.Popen(
            [
                "unshare",
                *namespaces,
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not (sock / "libvirt-sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                require_lab(
                    f"cannot run a private libvirtd (unshare {' '.join(namespaces)} needs "
                    "CAP_SYS_ADMIN)"
                )
            time.sleep(0.1)
        return cls(folder, driver, proc)

    def stop(self) -> None:
        """An orderly stop (SIGTERM), killed after 15 s."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Gone at once, like a crashed daemon; its QEMUs live on, as with any libvirtd."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
