"""A host's health check: can this host run a cell at all, whatever the cell?

What LAVA does before a device that failed takes jobs again, here for a hypervisor host that
the engine drained after its cells kept ending in lab failures (:mod:`compatlab.engine.health`):
the hypervisor answers, the storage folder takes a file and has room for a cell's overlay, and
the hypervisor starts and destroys a VM. The VM is the smallest there is -- no disk, no NIC, 16
MiB -- so the check takes about a second, and it carries the run's metadata so that a worker
killed between start and destroy leaves nothing the reaper would not remove.

It answers with the problems found, in words a lab engineer can act on; none means healthy.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.errors import CompatlabError
from compatlab.lab.domain import domain_name
from compatlab.lab.owner import CellMetadata, render_cell_metadata, run_folder

if TYPE_CHECKING:
    from compatlab.scenario import LabContext

__all__ = ["MIN_FREE_MIB", "check_host"]

#: Free space the storage folder must have: a cell's overlay grows by what its guest writes
#: (a few hundred MiB for the demo's guests, GiBs for Windows servicing).
MIN_FREE_MIB = 2048


def check_host(lab: LabContext, *, min_free_mib: int = MIN_FREE_MIB) -> list[str]:
    """The problems that keep this host from running cells (empty: healthy)."""
    problems = _storage(run_folder(lab.storage_root, lab.run_id), min_free_mib)
    problems += _hypervisor(lab)
    return problems


def _storage(folder: Path, min_free_mib: int) -> list[str]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix="health-") as probe:
            probe.write(b"compatlab health check\n")
            probe.flush()
            os.fsync(probe.fileno())
        stats = os.statvfs(folder)
    except OSError as exc:
        return [f"the storage folder {folder} cannot be written: {exc}"]
    free = stats.f_bavail * stats.f_frsize // (1024 * 1024)
    if free < min_free_mib:
        return [f"the storage folder {folder} has {free} MiB free (a cell needs {min_free_mib})"]
    return []


def _hypervisor(lab: LabContext) -> list[str]:
    hypervisor = lab.hypervisor
    try:
        hypervisor.connection.getVersion()
    except Exception as exc:  # libvirtError, a closed connection, LabError
        return [f"the hypervisor {hypervisor.uri} does not answer: {exc}"]
    name = domain_name(lab.run_id, f"health-check-{uuid.uuid4().hex[:8]}")
    try:
        domain = hypervisor.connection.createXML(_health_xml(lab, name), 0)
    except Exception as exc:
        return [f"the hypervisor {hypervisor.uri} cannot start a VM: {_message(exc)}"]
    try:
        if not domain.isActive():
            return [f"the hypervisor {hypervisor.uri} started a VM that did not run"]
        return []
    finally:
        try:
            domain.destroy()
        except Exception as exc:  # the reaper removes it: it carries the run's metadata
            return [f"the hypervisor {hypervisor.uri} cannot stop a VM: {_message(exc)}"]


def _health_xml(lab: LabContext, name: str) -> str:
    meta = CellMetadata(run=lab.run_id, cell="health-check", controller=lab.controller)
    # libvirt's test driver runs domains of its own type; every real host runs kvm or qemu.
    kind = "test" if lab.hypervisor.uri.startswith("test:") else lab.accel
    return (
        f"<domain type='{kind}'><name>{name}</name>"
        "<memory unit='MiB'>16</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os>"
        f"<metadata>{render_cell_metadata(meta)}</metadata>"
        "<on_crash>destroy</on_crash><devices/></domain>"
    )


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    text = get() if callable(get) else None
    if isinstance(exc, CompatlabError) or not text:
        return str(exc)
    return str(text)
