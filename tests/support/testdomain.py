"""A defined, shut-off domain on libvirt's test driver, with a disk and ``devices`` of the
test's own, removed afterwards (unless the test removed it)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from compatlab.lab.connection import Hypervisor


@contextlib.contextmanager
def test_domain(hv: Hypervisor, devices: str = "") -> Iterator[Any]:
    name = f"compatlab-unit-{uuid.uuid4().hex[:8]}"
    dom = hv.connection.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><source file='/guest/{name}.qcow2'/>"
        f"<target dev='vda' bus='virtio'/></disk>{devices}"
        "</devices></domain>"
    )
    yield dom
    if name not in {d.name() for d in hv.connection.listAllDomains()}:
        return  # the test removed it
    if dom.isActive():
        dom.destroy()
    dom.undefine()


test_domain.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name
