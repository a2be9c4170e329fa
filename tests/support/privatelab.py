"""A private lab for fault injection: libvirtd *and* virtlogd in their own namespaces.

:class:`~tests.support.libvirtd.PrivateLibvirtd` runs one daemon that can be killed; a fault
test also needs to *restart* libvirtd the way ``systemctl restart libvirtd`` does -- the new
daemon finds the running guests again from its state files -- and to kill ``virtlogd``. So the
namespaces here belong to a holder process (``sleep``) that outlives the daemons:

* ``unshare -m -n`` makes a mount and a network namespace; tmpfs over libvirt's state, config,
  cache, log and runtime folders shares nothing with the system daemons (the host's
  ``/run/virtlogd.pid`` and sockets are never touched: every pid file is under the lab's
  folder). No network of libvirt's is ever started, and none could reach the host's.
* ``virtlogd`` and ``libvirtd`` are started into those namespaces with ``nsenter``, as often as
  a test likes; the QEMU processes libvirtd starts share the network namespace (each gets a
  mount namespace of its own from libvirtd), so the lab can always tell which processes are
  its own (:meth:`PrivateLab.processes`) and end them all at :meth:`PrivateLab.close` -- never
  anything else on the host.
* the lab's storage root (the runner's ``storage:``) is a folder the caller gives, so the
  reaper of a run on this lab, and ``compatlab gc`` pointed at it, see only this lab's cells.

The QEMU driver runs with its default ``stdio_handler = "logd"``: QEMU's output goes through
virtlogd, as on the system daemon. Mounts made on the host *after* :meth:`PrivateLab.start`
are not seen inside (private propagation): a tmpfs storage root must be mounted before.

Needs root (``unshare``/``nsenter``); where it cannot start, require_lab decides.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lab import require_lab

__all__ = ["PrivateLab"]

START_TIMEOUT = 30.0

_DAEMON_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""

_UNSHARE = ("unshare", "-m", "-n", "--propagation", "private")
# The holder: private state folders, then a file that says so, then nothing, for ever.
_HOLDER = """\
for d in /run/libvirt /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mount -t tmpfs none "$d" || exit 1
done
: > "$1/namespaces-ready"
exec sleep 2147483647
"""


@dataclass
class PrivateLab:
    """A holder of private namespaces, with a libvirtd (QEMU driver) and a virtlogd in them."""

    folder: Path
    storage_root: Path
    holder: subprocess.Popen[bytes]
    libvirtd: subprocess.Popen[bytes] | None = None
    virtlogd: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _ns: str = field(default="", repr=False)

    # -- life cycle -----------------------------------------------------------------------------

    @classmethod
    def start(cls, folder: Path, storage_root: Path) -> PrivateLab:
        """Namespaces, virtlogd, libvirtd; the socket answers when this returns."""
        if os.geteuid() != 0:
            require_lab("a private lab (libvirtd + virtlogd in their own namespaces) needs root")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sock").mkdir(exist_ok=True)
        (folder / "libvirtd.conf").write_text(_DAEMON_CONF.format(sock=folder / "sock"))
        storage_root.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [*_UNSHARE, "sh", "-c", _HOLDER, "sh", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lab = cls(folder, storage_root, holder)
        try:
            lab._wait(lambda: (folder / "namespaces-ready").exists(), "the namespaces")
            lab._ns = os.readlink(f"/proc/{holder.pid}/ns/net")
            lab.start_virtlogd()
            lab.start_libvirtd()
        except BaseException:
            lab.close()
            raise
        return lab

    @property
    def socket(self) -> Path:
        return self.folder / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    def hosts_file(self, path: Path) -> Path:
        """A lab file (``--matrix-hosts``) naming this lab's URI and storage root.

        Its capacity is one guest at a time: a fault scenario fires on "the first of two cells"
        and counts its guests against the campaign's budget, as the runner ran cells before
        they ran side by side by default."""
        path.write_text(
            f'hosts: [{{uri: "{self.uri}"}}]\nstorage: "{self.storage_root}"\n'
            "capacity: {vcpus: 1, memory: 4096}\n"
        )
        return path

    def start_virtlogd(self) -> None:
        self.virtlogd = self._enter(["virtlogd", "-p", str(self.folder / "virtlogd.pid")])
        # Its socket is inside the private /run/libvirt: ask the namespace.
        self._wait(
            lambda: self._in_ns(["test", "-S", "/run/libvirt/virtlogd-sock"]) == 0, "virtlogd"
        )

    def start_libvirtd(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.libvirtd = self._enter(
            [
                "libvirtd",
                "-p",
                str(self.folder / "libvirtd.pid"),
                "-f",
                str(self.folder / "libvirtd.conf"),
            ]
        )
        self._wait(self.socket.exists, "libvirtd")

    def restart_libvirtd(self) -> None:
        """``systemctl restart libvirtd``: SIGTERM, wait, start again. Guests keep running."""
        self.stop_libvirtd()
        self.start_libvirtd()
        self.restarts += 1

    def stop_libvirtd(self) -> None:
        if self.libvirtd is not None:
            _end(self.libvirtd, signal.SIGTERM, 20)

    def kill_virtlogd(self) -> None:
        """virtlogd gone at once (SIGKILL), as a crash or the OOM killer would leave it."""
        if self.virtlogd is not None:
            _end(self.virtlogd, signal.SIGKILL, 10)

    def close(self) -> None:
        """End every process in the lab's namespaces (daemons, QEMUs left running by a run
        that could not clean up), then the holder."""
        for proc in (self.libvirtd, self.virtlogd):
            if proc is not None:
                _end(proc, signal.SIGTERM, 15)
        for pid in self.processes():
            if pid != self.holder.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _end(self.holder, signal.SIGKILL, 10)

    # -- looking at it --------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Pids of every process in the lab's network namespace (the holder included).

        The network namespace, not the mount namespace: libvirtd gives each QEMU a mount
        namespace of its own (qemu.conf ``namespaces``, a private /dev), but no network one.
        """
        if not self._ns:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "net") == self._ns:
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def qemu_processes(self) -> list[int]:
        """The lab's QEMU processes (guests that still run, whoever's)."""
        out = []
        for pid in self.processes():
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if b"qemu-system" in exe:
                out.append(pid)
        return out

    def listening_ports(self) -> list[str]:
        """TCP and UDP sockets listening in the lab's network namespace (VNC, SPICE, a
        forwarded WinRM port...): compatlab's guests have no NIC and no display, so none."""
        done = subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-n", "ss", "-Hltun"],
            capture_output=True,
            text=True,
            check=False,
        )
        return [line for line in done.stdout.splitlines() if line.strip()]

    # -- internals ------------------------------------------------------------------------------

    def _enter(self, command: list[str]) -> subprocess.Popen[bytes]:
        log = (self.folder / f"{command[0]}.log").open("ab")
        try:
            # nsenter execs the daemon (no --fork for mount and network namespaces): the Popen's
            # pid is the daemon's own.
            return subprocess.Popen(
                ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def _in_ns(self, command: list[str]) -> int:
        return subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", "--", *command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        ).returncode

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():  # type: ignore[operator]
            dead = [
                p
                for p in (self.holder, self.libvirtd, self.virtlogd)
                if p is not None and p.poll() is not None
            ]
            if dead or time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-800:] for p in self.folder.glob("*.log")}
                require_lab(f"the private lab could not start {what}: {logs}")
            time.sleep(0.1)


def _end(proc: subprocess.Popen[bytes], how: signal.Signals, wait: float) -> None:
    if proc.poll() is None:
        proc.send_signal(how)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
