"""No domain compatlab renders can reach beyond this host (the network rule).

Every image of the repository's catalog on every hardware profile it supports, with and without
forwarded ports: no libvirt <interface> at all (libvirt's NICs join bridges and NAT networks),
and the one NIC compatlab gives a guest itself is QEMU's user-mode network with ``restrict=on``
and forwards that listen on 127.0.0.1 only.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from compatlab.catalog import ProfileNotSupported, check_supported, load_catalog
from compatlab.lab.domain import Forward, render_cell_domain
from compatlab.lab.owner import Controller, parse_cell_metadata
from compatlab.lab.storage import CellStorage

ROOT = Path(__file__).resolve().parents[2]
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
CATALOG = load_catalog(
    ROOT / "images", ROOT / "configs" / "hardware", ROOT / "configs" / "products"
)


def combinations() -> list[tuple[str, str]]:
    out = []
    for image, hardware in itertools.product(CATALOG.images.values(), CATALOG.hardware.values()):
        if hardware.firmware not in image.firmware:
            continue
        try:
            check_supported(image, hardware)
        except ProfileNotSupported:
            continue
        out.append((image.name, hardware.name))
    return out


def netdevs(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    args = [a.get("value", "") for a in root.iter(f"{QEMU_NS}arg")]
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-netdev"]


def assert_host_only(xml: str) -> None:
    root = ET.fromstring(xml)
    assert root.find("devices/interface") is None, "a libvirt NIC can join a bridge or NAT"
    for netdev in netdevs(xml):
        kind, _, options = netdev.partition(",")
        assert kind == "user", netdev
        parts = options.split(",")
        assert "restrict=on" in parts, netdev
        for fwd in (p for p in parts if p.startswith(("hostfwd=", "guestfwd="))):
            assert re.fullmatch(r"hostfwd=tcp:127\.0\.0\.1:\d+-:\d+", fwd), fwd


@pytest.mark.parametrize(("image", "hardware"), combinations())
@pytest.mark.parametrize("forwards", [(), (Forward(47123, 5985),)])
def test_every_rendered_domain_reaches_nothing_beyond_this_host(
    image: str, hardware: str, forwards: tuple[Forward, ...], tmp_path: Path
) -> None:
    storage = CellStorage("net-test", f"{image}/{hardware}/none", root=tmp_path)
    xml = render_cell_domain(
        CATALOG.images[image],
        CATALOG.hardware[hardware],
        storage,
        template_dir=ROOT / "configs" / "templates",
        accel="qemu",
        controller=Controller("h", 1, 1),
        forwards=forwards,
    )
    assert_host_only(xml)
    assert len(netdevs(xml)) == (1 if forwards else 0)  # no NIC at all without a forward
    if forwards:
        assert "hostfwd=tcp:127.0.0.1:47123-:5985" in netdevs(xml)[0]
        meta = ET.fromstring(xml).find("metadata")
        assert meta is not None
        element = ET.tostring(meta[0], encoding="unicode")
        parsed = parse_cell_metadata(element)
        assert parsed is not None and parsed.ports == (47123,)


@pytest.mark.parametrize(
    "netdev",
    [
        "user,id=n,hostfwd=tcp:0.0.0.0:5985-:5985,restrict=on",
        "user,id=n,hostfwd=tcp::5985-:5985,restrict=on",
        "user,id=n,hostfwd=tcp:127.0.0.1:5985-:5985",
        "tap,id=n,ifname=tap0",
        "user,id=n,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:nc 10.1.1.1 80",
    ],
)
def test_the_check_itself_catches_nics_that_reach_further(netdev: str) -> None:
    xml = (
        "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><devices/>"
        f"<qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='{netdev}'/>"
        "</qemu:commandline></domain>"
    )
    with pytest.raises(AssertionError):
        assert_host_only(xml)
