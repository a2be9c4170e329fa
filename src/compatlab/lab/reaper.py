"""Clean up after runners that died without cleaning up (SIGKILL, OOM, power loss).

Who owns a domain or a run folder is recorded as ``lab/owner.py`` describes: the domain XML's
``<compatlab:cell>`` metadata and the run folder's ``owner.json``.

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
- no domain on the hypervisor claims its run in its metadata (``lab/owner.py``);
- no domain on the hypervisor, compatlab's or not, running or not, names a path in it in its
  XML (a disk, NVRAM, a log, a CD-ROM); when the domains cannot be read, none is deleted.

A reaped domain that proved the run dead removes the folder whatever it holds, as before. A
live run's folder always has its ``owner.json`` after that first moment, so the rule never
reaches it; a runner on another host sharing the storage root is the one case it cannot see --
each host needs a storage root of its own (the default, ``/var/lib/compatlab``, is).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from compatlab.errors import HypervisorError, LabError
from compatlab.lab.connection import DEFAULT_URI, Hypervisor
from compatlab.lab.machine import destroy_domain, undefine_domain
from compatlab.lab.owner import (
    CELLS_DIR,
    OWNER_FILE,
    STORAGE_ROOT,
    Controller,
    DomainVanished,
    MalformedMetadata,
    process_start_time,
    read_metadata_strict,
    read_run_owner,
)

__all__ = [
    "ABANDONED_AFTER",
    "KeptDomain",
    "KeptFolder",
    "ReapReport",
    "ReapedDomain",
    "gc",
    "orphan_reason",
    "reap",
]

log = logging.getLogger("compatlab.lab")

#: Seconds a run folder without ``owner.json`` must have been left unchanged before a reaper
#: may call it abandoned. A run writes owner.json a moment after it creates the folder; an
#: hour is far beyond that moment, and beyond any pause of a live run's writes in it.
ABANDONED_AFTER = 3600.0


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
            meta = read_metadata_strict(dom, hypervisor.host)
        except MalformedMetadata:
            report.kept_domains.append(KeptDomain(name, "compatlab metadata does not parse"))
            continue
        except DomainVanished:
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
