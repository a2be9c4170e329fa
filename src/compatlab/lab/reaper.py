"""Clean up after runners that died without cleaning up (SIGKILL, OOM, power loss).

Every domain compatlab creates carries its owner in the domain XML's ``<metadata>``. The exact
shape, agreed with the XML renderer (``lab/domain.py``)::

    <metadata>
      <compatlab:cell xmlns:compatlab="https://compatlab.dev/xmlns/cell/1">
        <compatlab:run>20250611-0212-7f3a</compatlab:run>
        <compatlab:cell>demo/bios-1cpu/acme-av+other-edr</compatlab:cell>
        <compatlab:controller host="lab-ctl-01" pid="48213" start="1234567"/>
      </compatlab:cell>
    </metadata>

- namespace URI ``https://compatlab.dev/xmlns/cell/1`` (:data:`NS_URI`), prefix ``compatlab``;
- ``run``: the run id, also the name of the run's folder ``<storage root>/cells/<run>/``;
- ``cell``: the cell id;
- ``controller``: the runner process that owns the domain -- ``host`` is its
  ``socket.gethostname()``, ``pid`` its process id, ``start`` its start time in clock ticks
  since boot (field 22 of ``/proc/<pid>/stat``), so a recycled pid is not mistaken for the
  owner. :meth:`Controller.current` gives all three; :func:`render_cell_metadata` writes the
  element. libvirt hands the element back without prefixes; the reader matches local names.

Each run folder holds ``owner.json`` -- ``{"host": ..., "pid": ..., "start": ...}`` -- written
by the run a moment after it creates the folder and before it creates anything in it
(:func:`write_run_owner`; atomically, so it is whole or absent). A run that cannot write it
(disk full) removes the folder again (``run.py``).

The rules, in :func:`reap`: a domain is an orphan when it has compatlab metadata, its controller
host is this host, and that pid is gone, a zombie, or has another start time. Orphans are
destroyed and undefined (NVRAM and TPM state too); then run folders whose ``owner.json`` says
the same are deleted. Never touched: domains without compatlab metadata, domains whose
controller is alive, domains whose controller is on another host, folders a kept domain belongs
to, folders whose ``owner.json`` exists but does not parse.

A folder with no ``owner.json`` at all is what a runner killed between creating the folder and
writing the file leaves (or an older compatlab whose write the disk refused): nobody can say
whose it is, so it is judged by what it holds. It is *abandoned*, and deleted, when all of:

- nothing in it -- the folder, its files and sub-folders, by mtime and ctime, symlinks not
  followed -- has changed for :data:`ABANDONED_AFTER` (an hour): a live run writes its
  ``owner.json`` within milliseconds of creating the folder, and a live run's disks change;
- no domain on the hypervisor claims its run in its metadata (see above);
- no domain on the hypervisor, compatlab's or not, running or not, names a path in it in its
  XML (a disk, NVRAM, a log, a CD-ROM); when the domains cannot be read, none is deleted.

A reaped domain that proved the run dead removes the folder whatever it holds, as before. A
live run's folder always has its ``owner.json`` after that first moment, so the rule never
reaches it; a runner on another host sharing the storage root is the one case it cannot see --
each host needs a storage root of its own (the default, ``/var/lib/compatlab``, is).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import libvirt

from compatlab.errors import HypervisorError, LabError, StorageError
from compatlab.lab.connection import DEFAULT_URI, Hypervisor
from compatlab.lab.machine import destroy_domain, undefine_domain

__all__ = [
    "ABANDONED_AFTER",
    "CELLS_DIR",
    "NS_PREFIX",
    "NS_URI",
    "OWNER_FILE",
    "STORAGE_ROOT",
    "CellMetadata",
    "Controller",
    "KeptDomain",
    "KeptFolder",
    "ReapReport",
    "ReapedDomain",
    "gc",
    "orphan_reason",
    "parse_cell_metadata",
    "process_start_time",
    "read_cell_metadata",
    "read_run_owner",
    "reap",
    "render_cell_metadata",
    "run_folder",
    "write_run_owner",
]

log = logging.getLogger("compatlab.lab")

NS_URI = "https://compatlab.dev/xmlns/cell/1"
NS_PREFIX = "compatlab"
# The default storage root. Callers pass the root in (configuration flows inward); this is the
# value the CLI and the plugin use when the lab file does not say otherwise.
STORAGE_ROOT = Path("/var/lib/compatlab")
CELLS_DIR = "cells"
OWNER_FILE = "owner.json"
#: Seconds a run folder without ``owner.json`` must have been left unchanged before a reaper
#: may call it abandoned. A run writes owner.json a moment after it creates the folder; an
#: hour is far beyond that moment, and beyond any pause of a live run's writes in it.
ABANDONED_AFTER = 3600.0

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- who owns what ------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time, ticks since boot); None if no such process.

    A zombie counts as gone: it has exited and only waits for its parent.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # "pid (comm) state ppid ..." -- comm may hold spaces and parentheses: split at the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Controller:
    """A runner process: the owner of a run folder and of the domains it created."""

    host: str
    pid: int
    start: int

    @classmethod
    def current(cls) -> Controller:
        """This process."""
        pid = os.getpid()
        start = process_start_time(pid)
        if start is None:  # /proc is always there on a hypervisor host; be explicit if not
            raise LabError("cannot read /proc/self/stat to identify this runner")
        return cls(host=socket.gethostname(), pid=pid, start=start)

    def is_alive(self) -> bool:
        """The same process (pid *and* start time) still runs here. Only meaningful locally."""
        return self.pid > 0 and process_start_time(self.pid) == self.start

    def as_json(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "start": self.start}


@dataclass(frozen=True)
class CellMetadata:
    """What a compatlab domain says about itself."""

    run: str
    cell: str
    controller: Controller
    #: Host ports on 127.0.0.1 forwarded into the guest (lab/ports.py leases them).
    ports: tuple[int, ...] = ()


def render_cell_metadata(meta: CellMetadata) -> str:
    """The ``<compatlab:cell>`` element, to be placed inside the domain's ``<metadata>``."""
    c = meta.controller
    return (
        f'<{NS_PREFIX}:cell xmlns:{NS_PREFIX}="{NS_URI}">'
        f"<{NS_PREFIX}:run>{escape(meta.run)}</{NS_PREFIX}:run>"
        f"<{NS_PREFIX}:cell>{escape(meta.cell)}</{NS_PREFIX}:cell>"
        f"<{NS_PREFIX}:controller host={quoteattr(c.host)} pid={quoteattr(str(c.pid))}"
        f" start={quoteattr(str(c.start))}/>"
        + "".join(f"<{NS_PREFIX}:port>{port}</{NS_PREFIX}:port>" for port in meta.ports)
        + f"</{NS_PREFIX}:cell>"
    )


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_cell_metadata(xml: str) -> CellMetadata | None:
    """Read the element back (as libvirt returns it: prefixed or not). None if malformed."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    if _local(root.tag) != "cell":
        return None
    children = {_local(child.tag): child for child in root}
    run = (children["run"].text or "").strip() if "run" in children else ""
    cell = (children["cell"].text or "").strip() if "cell" in children else ""
    controller = children.get("controller")
    if not run or controller is None:
        return None
    try:
        pid = int(controller.get("pid", ""))
        start = int(controller.get("start", ""))
    except ValueError:
        return None
    host = controller.get("host", "")
    if not host:
        return None
    texts = [(child.text or "").strip() for child in root if _local(child.tag) == "port"]
    ports = tuple(int(text) for text in texts if text.isdigit())
    return CellMetadata(run=run, cell=cell, controller=Controller(host, pid, start), ports=ports)


class _Malformed(Exception):
    """The domain has an element in our namespace that does not parse."""


class _Vanished(Exception):
    """The domain went away between listing and reading it (someone else removed it)."""


def read_cell_metadata(dom: Any, *, host: str = "") -> CellMetadata | None:
    """A domain's compatlab metadata; None when it has none (not ours) or it does not parse."""
    try:
        return _read_metadata(dom, host)
    except _Malformed:
        return None
    except _Vanished as exc:
        raise HypervisorError(
            "reading domain metadata: the domain is gone", host=host, domain=str(exc)
        ) from exc.__cause__


def _read_metadata(dom: Any, host: str) -> CellMetadata | None:
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, 0)
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            raise _Vanished(dom.name()) from exc
        raise HypervisorError(
            f"reading domain metadata: {exc.get_error_message()}", host=host, domain=dom.name()
        ) from exc
    meta = parse_cell_metadata(xml)
    if meta is None:
        raise _Malformed(xml)
    return meta


# -- owner.json --------------------------------------------------------------------------------


def run_folder(storage_root: Path, run_id: str) -> Path:
    """``<storage root>/cells/<run id>``; the run id must be a plain name."""
    if not _RUN_ID.match(run_id):
        raise StorageError(f"run id {run_id!r} is not a plain folder name")
    return storage_root / CELLS_DIR / run_id


def write_run_owner(folder: Path, controller: Controller | None = None) -> Path:
    """Create the run folder (if needed) and write its ``owner.json`` (atomically).

    A write the disk refuses (full) leaves no temporary file behind.
    """
    owner = controller or Controller.current()
    target = folder / OWNER_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(owner.as_json(), sort_keys=True) + "\n", encoding="utf-8")
            tmp.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"writing {target}: {exc}") from exc
    return target


def read_run_owner(folder: Path) -> Controller | None:
    """The controller in a run folder's ``owner.json``; None when missing or unreadable."""
    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        return Controller(host=str(data["host"]), pid=int(data["pid"]), start=int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReapedDomain:
    name: str
    run: str
    cell: str
    controller: Controller
    was_running: bool
    reason: str


@dataclass(frozen=True)
class KeptDomain:
    name: str
    reason: str


@dataclass(frozen=True)
class KeptFolder:
    path: Path
    reason: str


@dataclass
class ReapReport:
    """What one reaper pass removed, what it left alone and why, and what failed."""

    host: str
    removed_domains: list[ReapedDomain] = field(default_factory=list)
    removed_folders: list[Path] = field(default_factory=list)
    kept_domains: list[KeptDomain] = field(default_factory=list)
    kept_folders: list[KeptFolder] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def removed_anything(self) -> bool:
        return bool(self.removed_domains or self.removed_folders)

    def summary(self) -> str:
        """One line for a terminal."""
        return (
            f"{self.host}: removed {len(self.removed_domains)} domain(s) and "
            f"{len(self.removed_folders)} folder(s); kept {len(self.kept_domains)} domain(s)"
            + (f"; {len(self.errors)} error(s)" if self.errors else "")
        )

    def as_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "removed_domains": [
                {
                    "name": d.name,
                    "run": d.run,
                    "cell": d.cell,
                    "controller": d.controller.as_json(),
                    "was_running": d.was_running,
                    "reason": d.reason,
                }
                for d in self.removed_domains
            ],
            "removed_folders": [str(p) for p in self.removed_folders],
            "kept_domains": [{"name": d.name, "reason": d.reason} for d in self.kept_domains],
            "kept_folders": [{"path": str(f.path), "reason": f.reason} for f in self.kept_folders],
            "errors": list(self.errors),
        }


# -- the rules ----------------------------------------------------------------------------------


def orphan_reason(controller: Controller, this_host: str) -> str | None:
    """Why ``controller``'s leftovers are orphans, or None when they must be left alone."""
    if controller.host != this_host:
        return None
    start = process_start_time(controller.pid)
    if start is None:
        return f"controller pid {controller.pid} is gone"
    if start != controller.start:
        return f"controller pid {controller.pid} was reused (start {start} != {controller.start})"
    return None


def _keep_reason(controller: Controller, this_host: str) -> str:
    if controller.host != this_host:
        return f"controller is on another host ({controller.host})"
    return f"controller pid {controller.pid} is alive"


def reap(
    hypervisor: Hypervisor,
    storage_root: Path = STORAGE_ROOT,
    *,
    this_host: str | None = None,
    now: float | None = None,
) -> ReapReport:
    """Remove orphaned compatlab domains on ``hypervisor`` and dead runs' folders under root.

    ``now`` (``time.time()`` by default) is what a folder's age is measured against.
    """
    here = this_host or socket.gethostname()
    report = ReapReport(host=hypervisor.host)
    live_runs: set[str] = set()
    dead_runs: set[str] = set()

    for dom in hypervisor.domains():
        try:
            name = str(dom.name())
            meta = _read_metadata(dom, hypervisor.host)
        except _Malformed:
            report.kept_domains.append(KeptDomain(name, "compatlab metadata does not parse"))
            continue
        except _Vanished:
            continue  # gone by itself (a transient domain stopped, another tool undefined it)
        except LabError as exc:
            report.errors.append(str(exc))
            continue
        if meta is None:
            report.kept_domains.append(KeptDomain(name, "no compatlab metadata"))
            continue
        why = orphan_reason(meta.controller, here)
        if why is None:
            live_runs.add(meta.run)
            report.kept_domains.append(KeptDomain(name, _keep_reason(meta.controller, here)))
            continue
        try:
            was_running = destroy_domain(dom, host=hypervisor.host, name=name)
            undefine_domain(dom, host=hypervisor.host, name=name)
        except LabError as exc:
            live_runs.add(meta.run)  # its folder may still be in use by the leftover domain
            report.errors.append(str(exc))
            continue
        dead_runs.add(meta.run)
        log.warning("reaped orphaned domain %s (run %s): %s", name, meta.run, why)
        report.removed_domains.append(
            ReapedDomain(name, meta.run, meta.cell, meta.controller, was_running, why)
        )

    _reap_folders(
        storage_root / CELLS_DIR,
        here,
        live_runs,
        dead_runs,
        report,
        in_use=lambda: _paths_in_use(hypervisor),
        now=time.time() if now is None else now,
    )
    return report


def _reap_folders(
    cells: Path,
    here: str,
    live_runs: set[str],
    dead_runs: set[str],
    report: ReapReport,
    *,
    in_use: Callable[[], list[str]],
    now: float,
) -> None:
    try:
        folders = sorted(p for p in cells.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return
    except OSError as exc:
        report.errors.append(f"listing {cells}: {exc}")
        return
    used: list[str] | None = None  # the domains' XML, read once and only when needed
    unknown = False  # ... and could not be: nothing without owner.json is removed then
    for folder in folders:
        run = folder.name
        if run in live_runs:
            report.kept_folders.append(KeptFolder(folder, "a kept domain belongs to this run"))
            continue
        owner = read_run_owner(folder)
        if owner is not None and orphan_reason(owner, here) is None:
            report.kept_folders.append(KeptFolder(folder, _keep_reason(owner, here)))
            continue
        if owner is None and run not in dead_runs:
            if (folder / OWNER_FILE).exists() or (folder / OWNER_FILE).is_symlink():
                report.kept_folders.append(KeptFolder(folder, f"{OWNER_FILE} does not parse"))
                continue
            age = _quiet_for(folder, now)
            if age is None or age < ABANDONED_AFTER:
                changed = "cannot be read" if age is None else f"changed {age / 60:.0f} min ago"
                report.kept_folders.append(KeptFolder(folder, f"no {OWNER_FILE}; {changed}"))
                continue
            if used is None:
                try:
                    used = in_use()
                except LabError as exc:
                    report.errors.append(str(exc))
                    used = []
                    unknown = True
            if unknown or any(_names_a_file_in(xml, folder) for xml in used):
                why = "the domains cannot be read" if unknown else "a domain uses a file in it"
                report.kept_folders.append(KeptFolder(folder, f"no {OWNER_FILE}, but {why}"))
                continue
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            report.errors.append(f"removing {folder}: {exc}")
            continue
        log.warning("removed dead run's folder %s", folder)
        report.removed_folders.append(folder)


def _quiet_for(folder: Path, now: float) -> float | None:
    """Seconds since anything in ``folder`` (itself included; symlinks not followed) was
    last written or changed; None when part of it cannot be read."""
    latest = 0.0
    try:
        for path in (folder, *folder.rglob("*")):
            info = path.lstat()
            # ctime too: a file's mtime can be set back (touch -d, tar), its ctime cannot.
            latest = max(latest, info.st_mtime, info.st_ctime)
    except OSError:
        return None
    return now - latest


def _paths_in_use(hypervisor: Hypervisor) -> list[str]:
    """The XML of every domain on the hypervisor, compatlab's or not, running or not."""
    xmls: list[str] = []
    for dom in hypervisor.domains():
        try:
            xmls.append(str(dom.XMLDesc(0)))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                continue  # gone meanwhile
            raise HypervisorError(
                f"reading the domain XML: {exc.get_error_message()}",
                host=hypervisor.host,
                domain=str(dom.name()),
            ) from exc
    return xmls


def _names_a_file_in(xml: str, folder: Path) -> bool:
    """The domain XML mentions a path inside ``folder`` (or the folder itself)."""
    return any(
        escape(name) + end in xml
        for name in {str(folder), os.path.realpath(folder)}
        for end in ("/", "'", '"', "<")
    )


def gc(uri: str = DEFAULT_URI, *, storage_root: Path = STORAGE_ROOT) -> ReapReport:
    """``compatlab gc``: one reaper pass over the hypervisor at ``uri``."""
    with Hypervisor(uri) as hypervisor:
        return reap(hypervisor, storage_root)
