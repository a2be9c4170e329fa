"""What a cell needs from a hypervisor host, and what a host can give: pure, no I/O but /proc.

A cell runs one VM at a time (its attempt, then any rerun without the candidate), so its
:class:`Needs` are that VM's: the hardware profile's vCPUs, its memory plus what the QEMU
process costs on top (:data:`QEMU_OVERHEAD_MIB`), and the labels its hardware asks of the host
(``tpm`` for a profile with a TPM: swtpm must be there; ``kvm`` where the lab's configuration
says a profile needs hardware virtualization).

A host's :class:`Capacity` is what its test VMs may use together. By default it is the
machine's: every online CPU as one vCPU (under TCG a busy vCPU is one busy host thread, so more
would starve the guests and turn slow boots into false hangs), and the memory available now
less :data:`HOST_RESERVE_MIB` for the host itself. ``configs/lab.yaml`` (``capacity:``) or
``compatlab worker --vcpus --memory`` set it instead; compatlab never runs more than it allows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compatlab.matrix import Cell

__all__ = [
    "HOST_RESERVE_MIB",
    "IN_SERVICE",
    "QEMU_OVERHEAD_MIB",
    "Capacity",
    "Needs",
    "cell_needs",
    "machine_capacity",
]

#: Memory a QEMU process uses besides the guest's RAM (TCG's translation buffer, device
#: models, libvirt's chardevs). Measured here: a tinylinux guest with -m 256 had an RSS of
#: 231 MiB after booting (not all of its RAM touched); a guest that touches all of its RAM costs
#: its RAM plus this.
QEMU_OVERHEAD_MIB = 192
#: What the host keeps for itself (libvirtd, the runner, page cache for the golden images).
HOST_RESERVE_MIB = 1024


#: A resource every cell needs one unit of and every host offers while it is in service: a host
#: drained for a health check (``compatlab.engine.health``) offers none, so the engine places no
#: new cell there, while the cells already running on it finish.
IN_SERVICE = "in-service"


@dataclass(frozen=True)
class Needs:
    """What one cell's VM takes from its host while it runs."""

    vcpus: int
    memory_mib: int
    labels: frozenset[str] = frozenset()

    def resources(self) -> dict[str, float]:
        """As an engine's resource request: ``vcpus``, ``memory`` (MiB), one unit per label,
        and one unit of :data:`IN_SERVICE`."""
        wanted: dict[str, float] = {"vcpus": self.vcpus, "memory": self.memory_mib}
        wanted.update({f"label-{label}": 1 for label in sorted(self.labels)})
        wanted[IN_SERVICE] = 1
        return wanted


@dataclass(frozen=True)
class Capacity:
    """What a host gives its test VMs together."""

    vcpus: int
    memory_mib: int
    labels: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.memory_mib < 1:
            raise ValueError(f"a host's capacity must be positive, not {self}")

    def fits(self, needs: Needs) -> bool:
        """Whether one such VM could ever run here (alone)."""
        return self.why_not(needs) is None

    def why_not(self, needs: Needs) -> str | None:
        """Why one such VM can never run here, or None when it can."""
        missing = []
        if needs.vcpus > self.vcpus:
            missing.append(f"{needs.vcpus} vCPUs (the host gives {self.vcpus})")
        if needs.memory_mib > self.memory_mib:
            missing.append(f"{needs.memory_mib} MiB (the host gives {self.memory_mib} MiB)")
        if not needs.labels <= self.labels:
            labels = ", ".join(sorted(needs.labels - self.labels))
            missing.append(f"label(s) {labels} (the host has {sorted(self.labels) or 'none'})")
        return "needs " + "; ".join(missing) if missing else None

    def resources(self) -> dict[str, float]:
        """As an engine worker's resources (the counterpart of :meth:`Needs.resources`).

        A label is offered as many times as there could be VMs, so it never limits how many
        run; vCPUs and memory do."""
        given: dict[str, float] = {"vcpus": self.vcpus, "memory": self.memory_mib}
        given.update({f"label-{label}": self.vcpus for label in sorted(self.labels)})
        given[IN_SERVICE] = self.vcpus
        return given


def cell_needs(cell: Cell, *, labels: Iterable[str] = ()) -> Needs:
    """A cell's needs: its hardware profile's, plus ``labels`` the lab asks for it."""
    hardware = cell.hardware
    wanted = set(labels)
    if hardware.tpm:
        wanted.add("tpm")
    return Needs(
        vcpus=hardware.vcpus,
        memory_mib=hardware.memory_mib + QEMU_OVERHEAD_MIB,
        labels=frozenset(wanted),
    )


def _available_mib(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise ValueError(f"{meminfo} has no MemAvailable line")


def machine_capacity(
    *,
    labels: Iterable[str] = (),
    meminfo: Path = Path("/proc/meminfo"),
    cpus: int | None = None,
) -> Capacity:
    """This machine's default capacity (see the module's docstring)."""
    count = cpus if cpus is not None else len(os.sched_getaffinity(0))
    memory = max(1, _available_mib(meminfo) - HOST_RESERVE_MIB)
    return Capacity(vcpus=max(1, count), memory_mib=memory, labels=frozenset(labels))
