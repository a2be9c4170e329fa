"""Fault runs: ``pytest --matrix`` on a private lab, with faults fired on the guest's own cue.

A fault test (tests/reliability/) writes a small matrix, starts the runner the way a developer
does (a subprocess, :func:`~tests.support.matrixrun.pytest_command`), and watches what the run
leaves in its storage root. A :class:`Trigger` fires an action -- restart libvirtd, kill
virtlogd, remove the golden image, fill the disk, signal the runner -- when a line appears in
a VM's serial log (``compatlab-guest: boot 1 started`` is provisioning, ``boot 3 started`` the
first boot after the install of a cell without products), so a fault lands in the phase it is
meant for however slow the guests are today. Afterwards :func:`leftovers` lists everything of
the run still on the lab: domains, cell folders, disks, QEMU processes, listening ports.

Scenarios register with :func:`scenario` and are run by the campaign in
``tests/reliability/conftest.py``, several at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.lab import require_lab
from tests.support.matrixrun import (
    PAYLOADS,
    ROOT,
    RUN_TIMEOUT,
    Run,
    environment,
    pytest_command,
    require_demo_lab,
)
from tests.support.privatelab import PrivateLab

__all__ = [
    "SCENARIOS",
    "FaultRun",
    "Leftovers",
    "MemoryWatch",
    "Outcome",
    "Scenario",
    "Trigger",
    "compatlab_gc",
    "fill",
    "leftovers",
    "mount_tmpfs",
    "require_fault_lab",
    "run_matrix",
    "scenario",
    "signal_runner",
    "threads",
    "wait_for",
    "world_traversable_folder",
    "write_matrix",
]

#: What the fault matrices run unless told otherwise: one boot after the install, a short bake,
#: no rollback (one boot less). The boot timeout is waited out only where a scenario expects a
#: hang or a reset that never comes (those set 90); elsewhere it must never be reached. The tiny
#: guest boots in 8-25 s here, but boots of over 60 s were seen while other people's guests and
#: fuzzers shared the two cores.
SCENARIO = {
    "boots": 1,
    "boot_timeout": 120,
    "bake": 2,
    "baseline": "on_failure",
    "rollback": False,
}
POLL = 0.2

# -- matrices -------------------------------------------------------------------------------------


def write_matrix(
    folder: Path,
    name: str,
    payload: str,
    *,
    products: Sequence[Sequence[str]] = ((),),
    scenario: dict[str, object] | None = None,
    images: Path | None = None,
    install_args: str = "",
) -> Path:
    """``folder/name.yaml``: one candidate (a built payload), tinylinux-a on bios-1cpu; its
    install command is ``sh {payload}/install.sh`` followed by ``install_args``.

    The run finds its catalog next to the matrix (``find_project_root``): ``configs`` is linked
    to the repository's, ``images`` too unless another catalog folder is given.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for link, target in (("configs", ROOT / "configs"), ("images", images or ROOT / "images")):
        if not (folder / link).exists():
            (folder / link).symlink_to(target)
    settings = {**SCENARIO, **(scenario or {})}
    install = " ".join(["sh {payload}/install.sh", *install_args.split()])
    path = folder / f"{name}.yaml"
    path.write_text(
        "candidate:\n"
        f"  name: {payload.rsplit('-', 1)[0]}\n"
        f'  version: "{payload.rsplit("-", 1)[-1]}"\n'
        f"  payload: {PAYLOADS / payload}\n"
        f'  install: {{linux: "{install}"}}\n'
        '  uninstall: {linux: "sh {payload}/uninstall.sh"}\n'
        "  exit_codes: {success: [0]}\n"
        "axes:\n"
        "  build: [tinylinux-a]\n"
        "  hardware: [bios-1cpu]\n"
        f"  products: {json.dumps([list(p) for p in products])}\n"
        f"scenario: {json.dumps(settings)}\n"
    )
    return path


# -- triggers and watches -----------------------------------------------------------------------


@dataclass
class Trigger:
    """Fire ``action(runner)`` once ``text`` appears in a serial log of the run (of ``cell``
    only, if given: its first VM's, not a rerun's). Triggers fire in order, each once."""

    name: str
    text: str
    action: Callable[[subprocess.Popen[bytes]], object] = lambda runner: None
    cell: str | None = None
    mark_memory: bool = False  # note the runner's memory here (MemoryWatch.mark)
    fired: float | None = None  # seconds into the run


class _SerialScan:
    """Reads the run's serial logs incrementally, looking for one text at a time."""

    def __init__(self, storage_root: Path) -> None:
        self.cells = storage_root / "cells"
        self.read: dict[Path, tuple[int, int, bytes]] = {}  # path -> (inode, offset, tail)

    def find(self, text: str, cell: str | None) -> bool:
        from compatlab.lab.storage import cell_slug

        needle = text.encode()
        pattern = f"*/{cell_slug(cell)}/serial.log" if cell else "*/*/serial.log"
        for path in self.cells.glob(pattern):
            try:
                with path.open("rb") as handle:
                    inode = os.fstat(handle.fileno()).st_ino
                    old_inode, offset, tail = self.read.get(path, (inode, 0, b""))
                    if old_inode != inode:
                        offset, tail = 0, b""
                    handle.seek(offset)
                    while chunk := handle.read(1 << 20):
                        window = tail + chunk
                        if needle in window:
                            self.read[path] = (inode, offset + len(chunk), b"")
                            return True
                        offset += len(chunk)
                        tail = window[-len(needle) :]
                    self.read[path] = (inode, offset, tail)
            except OSError:
                continue
        return False


class MemoryWatch:
    """The runner's resident memory, sampled: ``VmRSS`` and ``VmHWM`` from /proc/PID/status.

    :meth:`mark` notes the RSS at a moment (the flood starting) and resets the peak there
    (``clear_refs`` 5, Linux >= 4.0, root), so :attr:`peak_since_mark` is the highest RSS
    the process reached from then on -- short spikes included, which sampling alone misses.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_at_mark: int | None = None  # bytes
        self.peak_since_mark: int | None = None
        self.peak: int = 0  # VmHWM over the whole run, as last read
        self.marked_at: float | None = None

    def _status(self) -> dict[str, int]:
        out = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        except (OSError, ValueError):
            pass
        return out

    def sample(self) -> None:
        status = self._status()
        if "VmHWM" not in status:
            return  # gone (or a zombie): the last sample stands
        self.peak = max(self.peak, status["VmHWM"])
        if self.rss_at_mark is not None:
            self.peak_since_mark = max(self.peak_since_mark or 0, status["VmHWM"])

    def mark(self) -> None:
        status = self._status()
        self.rss_at_mark = status.get("VmRSS")
        self.marked_at = time.monotonic()
        # Not resettable: the peak since the mark is then at most the overall peak.
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.peak_since_mark = self.rss_at_mark

    def as_json(self) -> dict[str, int | None]:
        return {
            "peak": self.peak,
            "rss_at_mark": self.rss_at_mark,
            "peak_since_mark": self.peak_since_mark,
        }


# -- one run --------------------------------------------------------------------------------------


@dataclass
class FaultRun:
    """One ``pytest --matrix`` run under faults, and what it left."""

    name: str
    report: Path
    returncode: int
    output: str
    seconds: float
    triggers: list[Trigger]
    pid: int
    memory: MemoryWatch | None = None
    results: dict[str, Any] | None = None

    @property
    def fired(self) -> dict[str, float | None]:
        return {t.name: t.fired for t in self.triggers}

    @property
    def run(self) -> Run:
        """The run as :mod:`tests.support.matrixrun` reads it (results.json must exist)."""
        assert self.results is not None, f"{self.name}: no results.json:\n{self.output[-3000:]}"
        return Run(self.report, self.returncode, self.output, self.seconds, self.results)

    @property
    def cells(self) -> list[dict[str, Any]]:
        return list((self.results or {}).get("cells", []))

    def cell(self, matrix: str, cell_id: str) -> dict[str, Any]:
        return self.run.cell(matrix, cell_id)


def run_matrix(
    name: str,
    folder: Path,
    args: Iterable[str],
    *,
    lab: PrivateLab,
    triggers: Sequence[Trigger] = (),
    memory: bool = False,
    report: Path | None = None,
    timeout: float = RUN_TIMEOUT,
) -> FaultRun:
    """Run ``pytest --matrix-report <report> --matrix-hosts <lab> *args`` to its end.

    ``report`` defaults to ``folder/report``; the output goes to ``folder/<name>.log``.
    Triggers are watched while it runs; a trigger that never fired leaves ``fired`` None (the
    test says so). A runner still alive after ``timeout`` is killed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    report = report or folder / "report"
    hosts = lab.hosts_file(folder / f"{name}-lab.yaml")
    command = pytest_command(report, "-ra", "--matrix-hosts", str(hosts), *args)
    log = folder / f"{name}.log"
    started = time.monotonic()
    pending = list(triggers)
    scan = _SerialScan(lab.storage_root)
    with log.open("wb") as out:
        runner = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_sigint,
        )
    watch = MemoryWatch(runner.pid) if memory else None
    try:
        deadline = started + timeout
        while runner.poll() is None and time.monotonic() < deadline:
            if watch is not None:
                watch.sample()
            if pending and scan.find(pending[0].text, pending[0].cell):
                trigger = pending.pop(0)
                trigger.fired = round(time.monotonic() - started, 2)
                if trigger.mark_memory and watch is not None:
                    watch.mark()
                trigger.action(runner)
                continue
            time.sleep(POLL)
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait()
    results = None
    path = report / "results.json"
    if path.is_file():
        results = json.loads(path.read_text())
    return FaultRun(
        name=name,
        report=report,
        returncode=runner.returncode,
        output=log.read_text(errors="replace"),
        seconds=round(time.monotonic() - started, 1),
        triggers=list(triggers),
        pid=runner.pid,
        memory=watch,
        results=results,
    )


def default_sigint() -> None:
    """In a child: Ctrl-C acts as a person's would. A suite started in the background of a
    non-interactive shell (``make test &``) runs with SIGINT ignored, and a child inherits
    that: the runner would never see the SIGINT a test sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_runner(how: signal.Signals) -> Callable[[subprocess.Popen[bytes]], None]:
    """An action: send ``how`` to the runner process alone (not its process group)."""

    def action(runner: subprocess.Popen[bytes]) -> None:
        runner.send_signal(how)

    return action


# -- what is left ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leftovers:
    """What is still on a private lab: all of it came from the runs on that lab."""

    domains: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    disks: tuple[str, ...] = ()  # overlays, NVRAM, payload ISOs in cell folders
    # (any other file left is inside a folder that is listed)
    processes: tuple[int, ...] = ()  # QEMUs
    ports: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(
            len(x) for x in (self.domains, self.folders, self.disks, self.processes, self.ports)
        )

    def as_json(self) -> dict[str, list[Any]]:
        return {
            "domains": list(self.domains),
            "folders": list(self.folders),
            "disks": list(self.disks),
            "qemu_processes": list(self.processes),
            "ports": list(self.ports),
        }


_DISK_SUFFIXES = (".qcow2", ".fd", ".iso", ".img", ".raw")


def leftovers(lab: PrivateLab) -> Leftovers:
    """Everything of compatlab's still on ``lab``: its daemon's domains, the storage root's
    cell folders and files in them (the ISO cache is a cache, kept by design), the lab's
    QEMU processes, listening ports in its network namespace."""
    import libvirt

    domains: tuple[str, ...] = ()
    if lab.libvirtd is not None and lab.libvirtd.poll() is None:
        conn = libvirt.open(lab.uri)
        try:
            domains = tuple(sorted(d.name() for d in conn.listAllDomains(0)))
        finally:
            conn.close()
    cells = lab.storage_root / "cells"
    folders = tuple(sorted(str(p) for p in cells.glob("*") if p.is_dir()))
    disks = tuple(sorted(str(p) for p in cells.rglob("*") if p.suffix in _DISK_SUFFIXES))
    return Leftovers(
        domains, folders, disks, tuple(lab.qemu_processes()), tuple(lab.listening_ports())
    )


def compatlab_gc(lab: PrivateLab) -> subprocess.CompletedProcess[str]:
    """``compatlab gc`` pointed at the private lab's daemon and storage root only."""
    compatlab = Path(sys.executable).parent / "compatlab"
    return subprocess.run(
        [
            str(compatlab),
            "gc",
            "--uri",
            lab.uri,
            "--storage-root",
            str(lab.storage_root),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- scenarios ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario did: its runs, what it left on its lab at the end, notes."""

    name: str
    runs: dict[str, FaultRun] = field(default_factory=dict)
    leftovers: Leftovers = field(default_factory=Leftovers)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "leftovers": self.leftovers.as_json(),
            "runs": {
                k: {
                    "returncode": r.returncode,
                    "seconds": r.seconds,
                    "fired": r.fired,
                    "verdicts": [(c["id"], c["verdict"], c.get("attempts")) for c in r.cells],
                    "memory": r.memory.as_json() if r.memory else None,
                }
                for k, r in self.runs.items()
            },
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Scenario:
    """A fault scenario: ``run(folder)`` makes its lab, runs, checks what is left, closes."""

    name: str
    run: Callable[[Path], Outcome]
    guests: int  # guests it runs at once (for the campaign's budget)
    order: int  # lower starts first: the long ones


SCENARIOS: dict[str, Scenario] = {}


@dataclass
class GuestBudget:
    """How many guests the fault campaign may run at once, and how many of those are free.

    ``cap`` is its own budget (``COMPATLAB_RELIABILITY_GUESTS``), never exceeded. ``size`` is
    what it may use now: what the tests beside it leave, or ``cap`` once :meth:`widen` made it
    final. ``free`` is ``size`` less the guests of the scenarios running; it is below zero for
    a while when the size shrank under them: they finish, the next ones wait."""

    cap: int
    size: int
    free: int = field(init=False)
    final: bool = False

    def __post_init__(self) -> None:
        self.size = min(self.size, self.cap)
        self.free = self.size

    def share(self, size: int) -> None:
        """What the test beside it leaves, from now on (ignored once final)."""
        if not self.final:
            self._resize(min(size, self.cap))

    def widen(self) -> None:
        """The whole budget, for good: the tests it shared the host with are done."""
        self.final = True
        self._resize(self.cap)

    def _resize(self, size: int) -> None:
        self.free += size - self.size
        self.size = size

    def need(self, scenario: Scenario) -> int:
        return min(scenario.guests, self.cap)

    def next(self, waiting: Sequence[Scenario]) -> Scenario | None:
        """The next scenario to start (``waiting`` in order), or None: wait for guests.

        The first in order whose guests are free now. One that needs more than the whole
        size of the moment (two-runs beside tests/lab's guests) lets the ones after it pass
        until the size grows, instead of holding them all back; one that fits the size but
        not what is free keeps its place, so a wide scenario is not starved by narrow ones.
        A scenario with no guest starts at once."""
        for scenario in waiting:
            need = self.need(scenario)
            if need == 0 or need <= self.free:
                return scenario
            if need <= self.size:
                return None
        return None


def scenario(
    name: str, *, guests: int = 1, order: int = 50
) -> Callable[[Callable[[Path], Outcome]], Callable[[Path], Outcome]]:
    """Register a scenario function under ``name``."""

    def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        SCENARIOS[name] = Scenario(name, fn, guests, order)
        return fn

    return register


def require_fault_lab() -> None:
    """Root (namespaces, tmpfs, /proc/PID/clear_refs), the demo image, the payloads the fault
    matrices install and libvirtd: else require_lab says what is missing."""
    if os.geteuid() != 0:
        require_lab("the fault campaign needs root (private namespaces, tmpfs mounts)")
    require_demo_lab(
        (
            "acme-sensor-7.11.1",
            "acme-av",
            "agent-killer-1.0",
            "console-flood-1.0",
            "slow-install-1.0",
        )
    )
    for tool in ("unshare", "nsenter", "ss", "mount"):
        if shutil.which(tool) is None:
            require_lab(f"no {tool} on PATH (util-linux, iproute2)")


@contextlib.contextmanager
def world_traversable_folder(prefix: str) -> Iterator[Path]:
    """A fresh folder under /var/tmp that the hypervisor's qemu user can traverse (pytest's
    temporary folders are 0700): storage roots and golden-image copies go there. Removed after
    (unmounting anything still mounted below it first)."""
    path = Path(tempfile.mkdtemp(prefix=f"compatlab-reliability-{prefix}-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for mount in sorted(_mounts_under(path), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == str(path) or target.startswith(f"{path}/"):
            mounts.append(target)
    return mounts


def mount_tmpfs(path: Path, size: str) -> None:
    """A tmpfs of ``size`` (e.g. ``16m``) at ``path``: a storage root that can fill up. Mount it
    before the private lab starts, or the lab's namespace never sees it."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True
    )


def fill(path: Path, leave: int = 0) -> int:
    """Fill the filesystem holding ``path`` with one file, ``path/filler``, leaving ``leave``
    bytes free; the bytes written."""
    stat = os.statvfs(path)
    size = stat.f_bavail * stat.f_frsize - leave
    filler = path / "filler"
    with filler.open("ab") as handle:
        if size > 0:
            os.posix_fallocate(handle.fileno(), handle.tell(), size)
    return max(size, 0)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


def threads(*jobs: Callable[[], object]) -> list[object]:
    """Run jobs side by side; their results in order; the first exception raised."""
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def one(i: int, job: Callable[[], object]) -> None:
        try:
            results[i] = job()
        except BaseException as exc:  # handed to the caller, with its traceback
            errors.append(exc)

    workers = [threading.Thread(target=one, args=(i, job)) for i, job in enumerate(jobs)]
    for worker in workers:
        worker.start()
        time.sleep(1)
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results
