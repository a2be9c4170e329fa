"""A cell's VM from a cached pre-candidate layer: what goes in, what comes out, where it lands.

The cache (:mod:`compatlab.cache`) keeps, per content key, the state a configuration reaches
after provision -> products -> a clean baseline boot: the disk as a qcow2 layer over the golden
image, the UEFI variable store and the software TPM's state. This module is the scenario's side
of it:

* :func:`wanted` and :func:`key_for` -- whether a cell uses the cache, and its key;
* :func:`seed` -- a VM's disk and firmware state before it starts: an overlay on the layer (or
  on the golden image), the UEFI variables from the layer (or from the image's template), the
  TPM state from the layer;
* :func:`capture` -- the builder's end: a clean shutdown, then the overlay, the variables and
  the TPM state moved into the folder the store publishes. A *memory layer* saves the running
  guest instead (``virDomainSave``) and keeps the save image with them;
* :func:`restore` -- a cell's start from a memory layer: its own renamed copy of the save image
  restored into the cell's domain, then the guest clock set from the host's.

Memory layers (issue 12; measured in benchmarks/results/memory_state.json): restoring the
baseline guest took 1.9-2.7 s to an answering agent where booting the layer's disk took
29-80 s. The guest comes back with its clock where it was saved (minutes behind: the image's
age), so the host's time is set through the agent at once (offset 0.005 s after it). A cell
restores from memory only where all of that holds (:func:`memory_wanted`): the QEMU driver on
this host, the guest agent as the channel (its ``guest-set-time``), and no NIC -- a WinRM
cell's forwarded port is leased per cell and lives in QEMU's network state, so such a cell
boots its layer's disk. ``cache: {memory: false}`` in lab.yaml turns memory layers off.

The builder is an ordinary watched VM of the cell (``runbook.build_book``): a crash or a failed
product install while building is the configuration's failure, seen and decided like in a cell
that never heard of the cache, and nothing is published.

libvirt 9.0 keeps a domain's TPM state in ``/var/lib/libvirt/swtpm/<uuid>/tpm2`` and offers no
way to point a domain elsewhere, so the state is copied out of there after the builder's clean
shutdown and into the next VM's folder before it starts; libvirt then finds it and does not
manufacture a new TPM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.cache import KeyInputs, Layer, cache_key, key_inputs
from compatlab.cache.store import LAYER_DISK, MEMORY_STATE, TPM_STATE, UEFI_VARS
from compatlab.errors import (
    GuestError,
    HypervisorError,
    ImageError,
    LabError,
    SaveImageError,
    StorageError,
)
from compatlab.lab.connection import libvirt_errors
from compatlab.lab.domain import TEMPLATE_NAME, domain_name, domain_uuid
from compatlab.lab.saveimage import renamed_copy
from compatlab.lab.storage import CellStorage

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.scenario.context import LabContext
    from compatlab.scenario.session import Session

__all__ = [
    "BUILDER_SUFFIX",
    "SWTPM_ROOT",
    "capture",
    "condemn",
    "key_for",
    "memory_wanted",
    "restore",
    "seed",
    "swtpm_state",
    "wanted",
]

log = logging.getLogger("compatlab.scenario")

#: libvirt's folder of software TPM states, one ``<uuid>/tpm2`` per domain (not configurable).
SWTPM_ROOT = Path("/var/lib/libvirt/swtpm")
#: The builder VM's storage and domain are the cell's with this suffix (reruns use ``#rerun``).
BUILDER_SUFFIX = "#layer"
_LAYER_MODE = 0o644  # the qemu user opens the layer by path, read-only


def wanted(cell: Cell, lab: LabContext) -> bool:
    """The cell starts from a cached layer: the lab keeps a cache and the cell allows it."""
    return lab.layers is not None and cell.scenario.cache


def memory_wanted(cell: Cell, lab: LabContext) -> str:
    """What the cell's memory layer depends on, when its layer keeps the guest's memory; else ''.

    Only the QEMU driver of this host, a Linux guest reached through its agent (which sets the
    restored guest's clock; Windows after a restore is not established) and no NIC; and only
    where the lab's cache allows memory layers. A restore runs the saved virtual hardware, so
    the string names what made it: libvirt's and QEMU's versions (a migration stream loads
    only into a QEMU that reads it), the accelerator and the domain template's digest.
    Raises HypervisorError or StorageError.
    """
    hypervisor = lab.hypervisor
    if lab.layers is None or not lab.layers.memory:
        return ""
    if cell.image.channel != "agent" or cell.os_family != "linux":
        return ""
    if not hypervisor.uri.startswith("qemu") or not hypervisor.is_local:
        return ""
    with libvirt_errors("reading the hypervisor's versions", host=hypervisor.host):
        conn = hypervisor.connection
        versions = f"libvirt {_version(conn.getLibVersion())}, QEMU {_version(conn.getVersion())}"
    template = lab.template_dir / TEMPLATE_NAME
    try:
        digest = hashlib.sha256(template.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise StorageError(f"cannot read the domain template {template}: {exc}") from exc
    return f"{versions}, {lab.accel}, template {digest}"


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def key_for(cell: Cell, lab: LabContext) -> tuple[str, KeyInputs]:
    """The cell's layer key and what it is made of. Raises ImageError when the golden image or
    a payload cannot be read (a lab failure: the cell could not run either way)."""
    assert lab.layers is not None
    if not cell.image.disk.is_file():  # said as the storage says it, whichever looks first
        raise ImageError(f"golden image {cell.image.disk} does not exist")
    try:
        inputs = key_inputs(cell.image, cell.hardware, cell.products, lab.layers.root / ".digests")
    except OSError as exc:
        raise ImageError(f"cannot compute the cached layer's key: {exc}") from exc
    inputs = dataclasses.replace(inputs, memory=memory_wanted(cell, lab))
    return cache_key(inputs), inputs


def swtpm_state(lab: LabContext, storage: CellStorage) -> Path | None:
    """Where libvirt keeps this VM's TPM 2.0 state; None where the driver has no swtpm."""
    if not lab.hypervisor.uri.startswith("qemu"):
        return None  # test:/// (the unit tier) runs no swtpm
    return SWTPM_ROOT / str(domain_uuid(storage.run_id, storage.cell_id)) / "tpm2"


# -- before a VM starts -------------------------------------------------------------------------


def seed(cell: Cell, lab: LabContext, storage: CellStorage, layer: Layer | None) -> None:
    """The VM's disk and firmware state, before its domain is defined.

    Raises ImageError (a template or layer file that cannot be read) or StorageError.
    """
    host = lab.hypervisor.host
    if layer is None:
        storage.create_overlay(cell.image.disk)
    else:
        storage.create_overlay(cell.image.disk, layer=layer.disk)
    uefi = cell.hardware.firmware == "uefi"
    # Secure Boot keys come with the image's template; a layer's variables carry them on, with
    # what the guest wrote since (boot entries).
    variables = layer.uefi_vars if layer is not None else cell.image.uefi_vars
    if uefi and variables is not None:
        # libvirt keeps an NVRAM file that exists at first start; it cannot be told the template
        # itself when it autoselects the firmware (measured with libvirt 9.0).
        try:
            shutil.copyfile(variables, storage.nvram)
        except OSError as exc:
            raise ImageError(
                f"cannot seed UEFI variables from {variables}: {exc}", host=host
            ) from exc
    if layer is not None and layer.tpm_state is not None and cell.hardware.tpm:
        target = swtpm_state(lab, storage)
        if target is not None:
            _copy_tree(layer.tpm_state, target, host)


def _copy_tree(source: Path, target: Path, host: str) -> None:
    """``source`` as ``target``, replacing a stale one. libvirt hands the files to its swtpm
    user at start (``virFileChownFiles``), and runs no ``swtpm_setup`` over a state it finds."""
    try:
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target)
    except OSError as exc:
        raise StorageError(f"cannot copy TPM state to {target}: {exc}", host=host) from exc


# -- the builder's end --------------------------------------------------------------------------


def capture(vm: Session, folder: Path, *, memory: bool) -> None:
    """Stop the builder and move its state into ``folder``: with ``memory``, saved running
    (its memory state kept as ``memory.save``); else shut down cleanly.

    A guest that crashes while it shuts down has failed in the running phase (the session's
    watcher raises ``GuestFailed``); one that does not power off in ``boot_timeout`` is the
    lab's problem (LabError), and so is a save that fails: nothing is published either way.
    """
    from compatlab.scenario import power  # power imports the session, which imports this

    host, storage = vm.lab.hypervisor.host, vm.storage
    if memory:
        began = time.monotonic()
        vm.machine.save(folder / MEMORY_STATE)  # the disk is flushed, the domain stops
        vm.note(
            "scenario", "memory_saved", f"memory state saved in {time.monotonic() - began:.1f} s"
        )
        os.chmod(folder / MEMORY_STATE, _LAYER_MODE)
    else:
        power.shutdown(vm)
    try:
        os.replace(storage.overlay, folder / LAYER_DISK)
        os.chmod(folder / LAYER_DISK, _LAYER_MODE)
        if vm.cell.hardware.firmware == "uefi" and storage.nvram.is_file():
            shutil.copyfile(storage.nvram, folder / UEFI_VARS)
    except OSError as exc:
        raise StorageError(f"cannot keep the layer's disk in {folder}: {exc}", host=host) from exc
    if vm.cell.hardware.tpm:
        state = swtpm_state(vm.lab, storage)
        if state is not None:
            if not state.is_dir():
                raise LabError(f"the builder's TPM state {state} is missing", host=host)
            try:
                shutil.copytree(state, folder / TPM_STATE)
            except OSError as exc:
                raise StorageError(f"cannot keep the TPM state: {exc}", host=host) from exc


# -- a cell's start from a memory layer ---------------------------------------------------------


def restore(vm: Session) -> None:
    """Start the cell's VM from its layer's memory state: a copy of the save image renamed to
    the cell's domain, restored into it. Raises LabError (the copy or libvirt's restore
    failed). Where the layer itself is at fault -- its image unreadable or not the cell's
    hardware, or libvirt refusing it on a connection that stayed up -- the layer is marked
    damaged first (:func:`condemn`), so the cell's next attempt builds it again."""
    assert vm.start is not None and vm.start.memory is not None
    storage, hypervisor = vm.storage, vm.lab.hypervisor
    image = storage.folder / MEMORY_STATE
    reconnects = hypervisor.reconnects
    began = time.monotonic()
    try:
        renamed_copy(
            vm.start.memory,
            image,
            name=domain_name(storage.run_id, storage.cell_id),
            uuid=str(domain_uuid(storage.run_id, storage.cell_id)),
        )
        copied = time.monotonic() - began
        xml = vm.machine.restore_xml(image)  # its HypervisorErrors are not the layer's
        try:
            vm.machine.restore(image, xml)
        except HypervisorError as exc:
            # Refused on a connection that stayed up (asked without reconnecting): the image.
            gone = not hypervisor.alive() or hypervisor.reconnects != reconnects
            if not gone and not vm.lab.stop.is_set():
                condemn(vm, f"libvirt could not restore its memory state: {exc.message}")
            raise
    except SaveImageError as exc:
        condemn(vm, f"a cell could not use its memory state: {exc.message}")
        raise
    finally:
        image.unlink(missing_ok=True)  # QEMU has read it (or never will): 100+ MB back
    restored = time.monotonic() - began - copied
    vm.note(
        "scenario",
        "memory_restored",
        f"restored from the layer's memory state (copy {copied:.2f} s, restore {restored:.2f} s)",
        copy_seconds=f"{copied:.3f}",
        restore_seconds=f"{restored:.3f}",
    )


def condemn(vm: Session, why: str) -> None:
    """Mark the layer the VM started from damaged: its next user builds it again."""
    if vm.lab.layers is not None and vm.start is not None:
        vm.lab.layers.condemn(vm.start.key, why)


def set_clock(vm: Session) -> None:
    """The restored guest's clock, set from the host's (it comes back where it was saved).

    Run while the hypervisor is watched: a crash meanwhile is the guest's (GuestFailed); an
    agent that does not do it is the lab's (LabError)."""
    from compatlab.guest.agent import AgentChannel

    channel = vm.channel
    if not isinstance(channel, AgentChannel):
        return
    try:
        offset = vm.call("setting the guest clock", channel.set_time)
    except GuestError as exc:
        raise LabError(
            f"cannot set the restored guest's clock: {exc}",
            host=vm.lab.hypervisor.host,
            domain=vm.machine.name,
        ) from exc
    vm.note("scenario", "clock_set", f"guest clock set from the host's ({offset:+.1f} s)")
