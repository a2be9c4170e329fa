"""What a published layer is: its files, its manifest, and how ``cache list`` and ``prune`` see
it. Data only; :mod:`compatlab.cache.store` keeps layers on disk and decides about them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from compatlab.cache.key import KeyInputs

__all__ = [
    "DAMAGED",
    "LAYER_DISK",
    "MANIFEST",
    "MEMORY_STATE",
    "TPM_STATE",
    "UEFI_VARS",
    "Entry",
    "Layer",
    "Manifest",
    "PruneReport",
    "allocated",
]

LAYER_DISK = "layer.qcow2"
UEFI_VARS = "VARS.fd"
TPM_STATE = "tpm"
MANIFEST = "manifest.json"
MEMORY_STATE = "memory.save"
DAMAGED = "DAMAGED"  # written by LayerStore.condemn: the next use builds the layer again
_SCHEMA = 1


@dataclass(frozen=True)
class Manifest:
    key: str
    inputs: Mapping[str, Any]
    baseline_boot_seconds: float
    files: Mapping[str, int]  # path relative to the layer -> size in bytes
    bytes: int  # disk space the layer takes (allocated blocks)
    created: datetime
    last_used: datetime
    label: str = ""  # for people: the cell that built it, e.g. "win11/uefi-2cpu/acme-av"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": _SCHEMA,
            "key": self.key,
            "inputs": dict(self.inputs),
            "baseline_boot_seconds": self.baseline_boot_seconds,
            "files": dict(self.files),
            "bytes": self.bytes,
            "created": self.created.isoformat(),
            "last_used": self.last_used.isoformat(),
            "label": self.label,
        }

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Raises ValueError (or KeyError/TypeError) when ``data`` is not a manifest."""
        if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
            raise ValueError("not a schema-1 manifest")
        files = {str(name): int(size) for name, size in dict(data["files"]).items()}
        KeyInputs.from_json(data["inputs"])  # must still read as key inputs
        return cls(
            key=str(data["key"]),
            inputs=dict(data["inputs"]),
            baseline_boot_seconds=float(data["baseline_boot_seconds"]),
            files=files,
            bytes=int(data["bytes"]),
            created=datetime.fromisoformat(data["created"]),
            last_used=datetime.fromisoformat(data["last_used"]),
            label=str(data.get("label", "")),
        )


@dataclass(frozen=True)
class Layer:
    """A published layer, held with a shared lock while the ``use`` block runs."""

    key: str
    folder: Path
    manifest: Manifest
    built: bool  # built by this call, rather than found
    rebuilt_because: str | None = None  # what was wrong with the layer found in its place

    @property
    def disk(self) -> Path:
        return self.folder / LAYER_DISK

    @property
    def uefi_vars(self) -> Path | None:
        return self.folder / UEFI_VARS if UEFI_VARS in self.manifest.files else None

    @property
    def tpm_state(self) -> Path | None:
        path = self.folder / TPM_STATE
        return path if path.is_dir() else None

    @property
    def memory(self) -> Path | None:
        """The saved running guest a cell restores instead of booting; None: boot the disk."""
        return self.folder / MEMORY_STATE if MEMORY_STATE in self.manifest.files else None


@dataclass(frozen=True)
class Entry:
    """One ``<key>/`` folder as ``cache list`` sees it: a manifest, or what is wrong."""

    key: str
    folder: Path
    manifest: Manifest | None
    problem: str | None
    in_use: bool

    @property
    def bytes(self) -> int:
        return self.manifest.bytes if self.manifest else allocated(self.folder)


@dataclass
class PruneReport:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)  # kept although the prune wanted them
    remaining_bytes: int = 0

    @property
    def freed_bytes(self) -> int:
        return sum(entry.bytes for entry in self.removed)


def allocated(folder: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total
