"""What a matrix file means once it is validated: a candidate, settings, and a list of cells."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compatlab.catalog import Catalog, GoldenImage, HardwareProfile, OsFamily, Product
from compatlab.fleet import Fleet
from compatlab.installs import Commands

__all__ = ["Candidate", "Cell", "Matrix", "ScenarioSettings", "Strategy", "cell_id"]

Baseline = Literal["always", "on_failure", "never"]


@dataclass(frozen=True)
class Candidate:
    """The update under test. ``commands`` holds install/uninstall per OS family."""

    name: str
    version: str
    payload: Path
    commands: Mapping[OsFamily, Commands]
    # How often its installer restarts the guest by itself (Windows servicing does): resets up
    # to this many before the next completed boot are restarts, not a boot loop.
    reboots: int = 0


@dataclass(frozen=True)
class ScenarioSettings:
    """How a cell is exercised. Matrix-wide, with per-cell overrides through ``include``."""

    boots: int = 3
    boot_timeout: float = 600.0
    bake: float = 60.0
    baseline: Baseline = "on_failure"
    # Baseline reruns without the candidate for a failing cell: more than one tells an
    # intermittent failure of the configuration from the candidate's.
    reruns: int = 1
    rollback: bool = True
    # N resets or crashes without a completed boot between them make a boot loop.
    boot_loop: int = 3
    # Largest allowed ratio of a post-update boot's time to the baseline boot's; None = no check.
    boot_regression: float | None = None
    # Windows only: drivers (plain *.sys names) put under Driver Verifier's standard checks
    # after the candidate's install, before its first boot; reset at rollback.
    verifier: tuple[str, ...] = ()
    # Start from a cached pre-candidate layer (compatlab.cache) when the lab keeps one: the
    # first boot, the products' installs and the baseline reboot are then done once per
    # configuration. False runs every step in every cell (``--matrix-cache off`` for a run).
    cache: bool = True


@dataclass(frozen=True)
class Strategy:
    kind: Literal["full", "pairwise"] = "full"
    strength: int = 2
    seed: int = 0


def cell_id(build: str, hardware: str, products: tuple[str, ...]) -> str:
    """The contracted id: ``<build>/<hardware>/<products joined by + or none>``."""
    return f"{build}/{hardware}/{'+'.join(products) if products else 'none'}"


@dataclass(frozen=True, slots=True)
class Cell:
    """One combination of the matrix: one VM, one verdict."""

    matrix: Path
    image: GoldenImage
    hardware: HardwareProfile
    products: tuple[Product, ...]
    candidate: Candidate
    scenario: ScenarioSettings = field(default_factory=ScenarioSettings)
    # The share of the fleet running this cell's configuration (0..1, from the matrix's
    # ``fleet:`` weights, see compatlab.fleet); None when the matrix gives no weights.
    fleet_share: float | None = None

    @property
    def build(self) -> str:
        return self.image.name

    @property
    def product_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.products)

    @property
    def id(self) -> str:
        return cell_id(self.image.name, self.hardware.name, self.product_names)

    @property
    def os_family(self) -> OsFamily:
        return self.image.os_family


@dataclass(frozen=True)
class Matrix:
    """A validated, expanded matrix file."""

    path: Path
    candidate: Candidate
    strategy: Strategy
    scenario: ScenarioSettings
    catalog: Catalog
    cells: tuple[Cell, ...]
    fleet: Fleet | None = None  # the ``fleet:`` weights, normalised; None when not given

    def cell(self, cell_id: str) -> Cell:
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        raise KeyError(cell_id)
