"""What a run hands every cell: the hypervisor, where things go, and the seams.

The seams are the three things a cell's runner makes for each VM -- its storage, its machine and
its channel into the guest. :class:`LabContext` carries a factory for each, so the runbook is the
same code whether it drives QEMU guests on the system libvirtd (the defaults below) or libvirt's
``test:///default`` driver with a scripted guest (the unit tests), and the tests reach every
verdict path in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from compatlab.errors import LabError
from compatlab.guest.agent import AgentChannel
from compatlab.guest.channel import Channel
from compatlab.lab.connection import Hypervisor
from compatlab.lab.machine import Machine
from compatlab.lab.reaper import Controller
from compatlab.lab.storage import CellStorage

if TYPE_CHECKING:
    from compatlab.matrix import Cell

__all__ = [
    "ChannelFactory",
    "CheckOutcome",
    "LabContext",
    "MachineFactory",
    "StorageFactory",
    "default_channel",
]


@dataclass(frozen=True)
class CheckOutcome:
    """One custom check's result in one cell."""

    name: str
    passed: bool
    detail: str = ""


class StorageFactory(Protocol):
    """Makes the storage folder of one VM of a cell (nothing is created until asked)."""

    def __call__(self, run_id: str, cell_id: str, *, root: Path, host: str) -> CellStorage: ...


class MachineFactory(Protocol):
    """Makes one VM from its rendered domain XML (defined on entering the context)."""

    def __call__(
        self, hypervisor: Hypervisor, xml: str, storage_dir: Path, *, epoch: float
    ) -> Machine: ...


class ChannelFactory(Protocol):
    """Opens the channel into a cell's guest, once its machine is defined."""

    def __call__(self, cell: Cell, machine: Machine) -> Channel: ...


def default_channel(cell: Cell, machine: Machine) -> Channel:
    """The channel the cell's golden image names."""
    if cell.image.channel == "agent":
        return AgentChannel(machine.domain, os_family=cell.os_family)
    raise LabError(
        "WinRM cells need a guest NIC with a port forwarded to 127.0.0.1; provisioning it "
        "is not built yet (use channel: agent with the QEMU guest agent installed)",
        host=machine.host,
    )


@dataclass(frozen=True)
class LabContext:
    """What the run hands every cell: one hypervisor, where things go, and the seams."""

    hypervisor: Hypervisor
    accel: str  # "kvm" or "qemu" (TCG)
    run_id: str
    storage_root: Path
    template_dir: Path
    report_dir: Path  # reports/<run-id>/ -- evidence is copied under cells/<slug>/
    iso_cache: Path
    controller: Controller
    attempts: int = 2  # tries for a cell whose lab failed
    retry_wait: float = 2.0  # seconds between them: a restarting libvirtd needs a moment
    progress: Callable[[str, str], None] = field(default=lambda cell, phase: None)
    # The user's own checks (pytest tests marked ``matrix``), run after the boots.
    checks: Callable[[Channel, Cell], list[CheckOutcome]] = field(default=lambda guest, cell: [])
    storages: StorageFactory = CellStorage
    machines: MachineFactory = Machine
    channels: ChannelFactory = default_channel
