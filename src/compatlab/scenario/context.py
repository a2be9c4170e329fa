"""What a run hands every cell: the hypervisor, where things go, and the seams.

The seams are the three things a cell's runner makes for each VM -- its storage, its machine and
its channel into the guest. :class:`LabContext` carries a factory for each, so the runbook is the
same code whether it drives QEMU guests on the system libvirtd (the defaults below) or libvirt's
``test:///default`` driver with a scripted guest (the unit tests), and the tests reach every
verdict path in milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from compatlab.errors import ImageError, LabError
from compatlab.guest.agent import AgentChannel
from compatlab.guest.channel import Channel
from compatlab.lab.connection import Hypervisor
from compatlab.lab.domain import Forward
from compatlab.lab.machine import Machine
from compatlab.lab.owner import Controller
from compatlab.lab.storage import CellStorage

if TYPE_CHECKING:
    from compatlab.cache import LayerStore
    from compatlab.matrix import Cell

__all__ = [
    "ChannelFactory",
    "CheckOutcome",
    "LabContext",
    "MachineFactory",
    "StorageFactory",
    "default_channel",
    "needs_network",
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
    """Opens the channel into a cell's guest, once its machine is defined. ``forwards``: the
    guest ports reachable on 127.0.0.1 (only images whose channel needs a network get any)."""

    def __call__(self, cell: Cell, machine: Machine, forwards: tuple[Forward, ...]) -> Channel: ...


#: The guest ports a WinRM channel talks to: Windows's HTTP listener, and its HTTPS listener
#: (images that name a ``winrm_certificate``).
WINRM_PORT = 5985
WINRM_HTTPS_PORT = 5986


def winrm_port(cell: Cell) -> int:
    return WINRM_HTTPS_PORT if cell.image.winrm_certificate is not None else WINRM_PORT


def needs_network(cell: Cell) -> tuple[int, ...]:
    """The guest ports the cell's channel needs forwarded from 127.0.0.1 (none for the agent)."""
    return (winrm_port(cell),) if cell.image.channel == "winrm" else ()


def default_channel(cell: Cell, machine: Machine, forwards: tuple[Forward, ...]) -> Channel:
    """The channel the cell's golden image names: the guest agent, or WinRM through its
    forwarded port on 127.0.0.1."""
    if cell.image.channel == "agent":
        return AgentChannel(machine.domain, os_family=cell.os_family)
    from compatlab.guest.winrm import WinRMChannel

    guest_port = winrm_port(cell)
    port = next((f.host_port for f in forwards if f.guest_port == guest_port), None)
    if port is None or cell.image.credentials is None:
        raise LabError(
            "a WinRM cell needs a forwarded port and the image's credentials", host=machine.host
        )
    certificate = cell.image.winrm_certificate
    if certificate is not None and not certificate.is_file():
        raise ImageError(
            f"image {cell.image.name}: its WinRM certificate {certificate} does not exist "
            "(the Windows recipe writes it beside the disk: winrm-https.pem)",
            host=machine.host,
        )
    return WinRMChannel(
        "127.0.0.1",
        port,
        cell.image.credentials,
        transport=cell.image.winrm_transport,
        scheme="https" if certificate is not None else "http",
        server_cert_validation="validate",
        ca_trust_path=str(certificate) if certificate is not None else None,
        domain=machine.name,
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
    #: Set when the run stops while cells run side by side on the engine's threads: each
    #: cell's watcher sees it within a tick and tears its VM down (``RunStopped``).
    stop: threading.Event = field(default_factory=threading.Event)
    #: This host's cache of pre-candidate layers; None: every cell starts from its golden image.
    layers: LayerStore | None = None
