"""The content key of a cached pre-candidate layer. Pure: digests come in, a key goes out.

A layer is the state a cell reaches after provision -> products -> a clean baseline boot. Two
cells may share it only when everything that shaped that state is the same, so the key is a
hash of exactly that:

- the golden image: its disk's digest, and for direct kernel boot its kernel, initrd and
  command line, and the UEFI variable template the VM starts from (a changed backing image
  changes the key, so a layer over a stale image is never found);
- the hardware profile's fields (not its name nor the file it came from: two profiles that
  describe the same VM build the same state);
- each product's payload digest and install command, in install order (installing A then B
  need not leave what B then A leaves);
- :data:`PROVISION_VERSION`, compatlab's own provisioning steps;
- for a layer that keeps the running guest's memory (``memory``), the hypervisor's versions:
  a QEMU migration stream loads only into the QEMU that can read it, so an upgraded host
  builds its layers again instead of failing a restore.

Nothing here reads a file: :mod:`compatlab.cache.digest` computes the digests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compatlab.catalog import HardwareProfile

__all__ = [
    "KEY_LENGTH",
    "PROVISION_VERSION",
    "KeyInputs",
    "ProductInput",
    "cache_key",
    "hardware_fields",
]

#: Bump whenever compatlab changes what it does to a guest before the candidate (provisioning,
#: product install steps, the baseline boot's checks): every cached layer then misses.
PROVISION_VERSION = 2  # 2: the builder may save the running guest instead of shutting down

#: Hex digits of SHA-256 kept in a key: 128 bits, folder names stay short enough to read.
KEY_LENGTH = 32

# Fields that name or locate a profile rather than describe the VM it gets.
_NOT_HARDWARE = frozenset({"name", "source"})


@dataclass(frozen=True)
class ProductInput:
    """One coexisting product as far as the layer is concerned."""

    name: str
    payload_sha256: str
    install: str


@dataclass(frozen=True)
class KeyInputs:
    """Everything the key is made of; kept in the layer's manifest so a person can see why two
    keys differ."""

    image: Mapping[str, str]
    hardware: Mapping[str, Any]
    products: tuple[ProductInput, ...]
    provision_version: int = PROVISION_VERSION
    #: The hypervisor whose QEMU saved the layer's memory state ("libvirt 9.0.0, QEMU 7.2.0");
    #: empty for a layer of disk and firmware state only, which a cell boots.
    memory: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "image": dict(sorted(self.image.items())),
            "hardware": dict(sorted(self.hardware.items())),
            "products": [dataclasses.asdict(product) for product in self.products],
            "provision_version": self.provision_version,
            "memory": self.memory,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyInputs:
        """The inverse of :meth:`to_json`. Raises KeyError/TypeError/ValueError on bad data."""
        products = tuple(
            ProductInput(str(p["name"]), str(p["payload_sha256"]), str(p["install"]))
            for p in data["products"]
        )
        return cls(
            image={str(k): str(v) for k, v in dict(data["image"]).items()},
            hardware=dict(data["hardware"]),
            products=products,
            provision_version=int(data["provision_version"]),
            memory=str(data.get("memory", "")),
        )


def hardware_fields(profile: HardwareProfile) -> dict[str, Any]:
    """The fields of ``profile`` that shape a guest, as JSON values.

    Read from the dataclass itself, so a field added to :class:`HardwareProfile` later enters
    the key without anyone remembering to add it here.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(profile):
        if f.name in _NOT_HARDWARE:
            continue
        value = getattr(profile, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def cache_key(inputs: KeyInputs) -> str:
    """The layer's key: SHA-256 of the inputs' canonical JSON, :data:`KEY_LENGTH` hex digits."""
    canonical = json.dumps(inputs.to_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]
