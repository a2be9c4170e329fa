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
  the TPM state moved into the folder the store publishes.

The builder is an ordinary watched VM of the cell (``runbook.build_book``): a crash or a failed
product install while building is the configuration's failure, seen and decided like in a cell
that never heard of the cache, and nothing is published.

libvirt 9.0 keeps a domain's TPM state in ``/var/lib/libvirt/swtpm/<uuid>/tpm2`` and offers no
way to point a domain elsewhere, so the state is copied out of there after the builder's clean
shutdown and into the next VM's folder before it starts; libvirt then finds it and does not
manufacture a new TPM.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.cache import KeyInputs, Layer, cache_key, key_inputs
from compatlab.cache.store import LAYER_DISK, TPM_STATE, UEFI_VARS
from compatlab.errors import ImageError, LabError, StorageError
from compatlab.lab.domain import domain_uuid
from compatlab.lab.storage import CellStorage

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.scenario.context import LabContext
    from compatlab.scenario.session import Session

__all__ = [
    "BUILDER_SUFFIX",
    "SWTPM_ROOT",
    "capture",
    "key_for",
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


def capture(vm: Session, folder: Path) -> None:
    """Shut the builder down cleanly and move its state into ``folder``.

    A guest that crashes while it shuts down has failed in the running phase (the session's
    watcher raises ``GuestFailed``); one that does not power off in ``boot_timeout`` is the
    lab's problem (LabError): nothing is published either way.
    """
    from compatlab.scenario import power  # power imports the session, which imports this

    host, storage = vm.lab.hypervisor.host, vm.storage
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
