"""The save image's header rewrite (compatlab.lab.saveimage), on images laid out as libvirt
9.0 writes them. That libvirt restores such a copy is shown by the real-VM tier (a cell that
starts from a layer's memory state: tests/lab/test_fault_phases.py)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from compatlab.errors import SaveImageError, StorageError
from compatlab.lab.saveimage import SAVE_MAGIC, read_header, renamed_copy, restore_definition

XML = (
    "<domain type='qemu'>\n  <name>compatlab-run1-cell#layer</name>\n"
    "  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n  <memory>1024</memory>\n</domain>\n"
)
COOKIE = b"<qemu-migration><name>compatlab-run1-cell#layer</name></qemu-migration>"
STREAM = bytes(range(256)) * 64  # stands in for QEMU's migration stream: must not change


def image(
    path: Path,
    *,
    xml: str = XML,
    cookie: bytes | None = COOKIE,
    room: int = 4096,
    version: int = 2,
    compressed: int = 0,
    magic: bytes = SAVE_MAGIC,
) -> Path:
    body = xml.encode() + b"\0"
    offset = 0
    if cookie is not None:
        offset = len(body)
        body += cookie + b"\0"
    data_len = len(body) + room
    words = [version, data_len, 1, compressed, offset] + [0] * 14
    path.write_bytes(struct.pack("=16s19I", magic, *words) + body + b"\0" * room + STREAM)
    return path


def test_a_renamed_copy_carries_the_new_name_and_uuid_and_the_same_memory(tmp_path: Path) -> None:
    source = image(tmp_path / "memory.save")
    before = source.read_bytes()
    target = tmp_path / "cell.save"
    renamed_copy(
        source, target, name="compatlab-run1-cell", uuid="aaaaaaaa-0000-0000-0000-000000000001"
    )
    header = read_header(target)
    assert header.name == "compatlab-run1-cell"
    assert header.uuid == "aaaaaaaa-0000-0000-0000-000000000001"
    assert "<memory>1024</memory>" in header.xml
    # The cookie moved to stay right after the (shorter) XML, and is whole.
    assert header.cookie == COOKIE
    assert header.fields[4] == len(header.xml.encode()) + 1
    assert header.data_len == read_header(source).data_len
    data = target.read_bytes()
    assert len(data) == len(before)
    assert data.endswith(STREAM)
    assert source.read_bytes() == before  # the layer's image is never touched


def test_an_image_without_a_cookie_is_renamed_too(tmp_path: Path) -> None:
    source = image(tmp_path / "memory.save", cookie=None)
    target = tmp_path / "cell.save"
    renamed_copy(source, target, name="a-longer-name-than-before-for-this-cell", uuid="u-2")
    header = read_header(target)
    assert (header.name, header.uuid, header.cookie) == (
        "a-longer-name-than-before-for-this-cell",
        "u-2",
        b"",
    )
    assert header.fields[4] == 0


def test_a_name_that_does_not_fit_the_header_is_refused(tmp_path: Path) -> None:
    source = image(tmp_path / "memory.save", room=4)
    with pytest.raises(SaveImageError, match="does not fit"):
        renamed_copy(source, tmp_path / "cell.save", name="x" * 100, uuid="u")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"magic": b"NotLibvirtSave!!"}, "not a libvirt QEMU save image"),
        ({"version": 3}, "header version 3"),
        ({"compressed": 1}, "compressed"),
        ({"xml": "<domain><name>x</name"}, "unreadable"),
    ],
)
def test_what_is_not_a_plain_save_image_is_refused_by_name(
    tmp_path: Path, kwargs: dict[str, object], said: str
) -> None:
    source = image(tmp_path / "memory.save", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SaveImageError, match=said) as caught:
        renamed_copy(source, tmp_path / "cell.save", name="n", uuid="u")
    assert "memory.save" in str(caught.value)
    assert not (tmp_path / "cell.save").exists()


def test_a_cut_short_image_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "memory.save"
    source.write_bytes(SAVE_MAGIC + b"\0" * 10)
    with pytest.raises(SaveImageError, match="too short"):
        read_header(source)


SAVED = """<domain type='qemu'>
  <name>compatlab-run1-cell-layer</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <title>compatlab cell#layer</title>
  <metadata><c:cell xmlns:c="urn:x"><c:run>run1</c:run></c:cell></metadata>
  <memory unit='KiB'>1048576</memory>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' secure='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.ms.fd'>/var/lib/c/run1/cell-layer/VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/c/run1/cell-layer/overlay.qcow2'/>
      <backingStore type='file'><format type='qcow2'/>
        <source file='/img/golden.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/c/run1/cell-layer/acme-av.iso'/>
      <target dev='sdz' bus='sata'/>
    </disk>
    <serial type='pipe'>
      <source path='/var/lib/c/run1/cell-layer/console'/><target port='0'/></serial>
    <console type='pipe'>
      <source path='/var/lib/c/run1/cell-layer/console'/><target type='serial' port='0'/></console>
  </devices>
</domain>"""

CELL = """<domain type='qemu'>
  <name>compatlab-run2-cell</name>
  <uuid>99999999-2222-3333-4444-555555555555</uuid>
  <title>compatlab cell</title>
  <metadata><c:cell xmlns:c="urn:x"><c:run>run2</c:run></c:cell></metadata>
  <memory unit='KiB'>1048576</memory>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <nvram>/var/lib/c/run2/cell/VARS.fd</nvram>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/c/run2/cell/overlay.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/cache/k/layer.qcow2'/>
        <backingStore type='file'><format type='qcow2'/>
        <source file='/img/golden.qcow2'/></backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdz' bus='sata'/>
    </disk>
    <serial type='pipe'>
      <source path='/var/lib/c/run2/cell/console'/><target port='0'/></serial>
    <console type='pipe'>
      <source path='/var/lib/c/run2/cell/console'/><target type='serial' port='0'/></console>
  </devices>
</domain>"""


def test_the_restore_definition_is_the_saved_hardware_with_the_cells_identity_and_files() -> None:
    out = ET.fromstring(restore_definition(SAVED, CELL))
    assert out.findtext("name") == "compatlab-run2-cell"
    assert out.findtext("uuid") == "99999999-2222-3333-4444-555555555555"
    assert out.findtext("title") == "compatlab cell"
    assert out.findtext("metadata/{urn:x}cell/{urn:x}run") == "run2"  # the cell's owner
    # The firmware libvirt resolved for the builder stays: a restore selects none.
    assert out.findtext("os/loader") == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert out.findtext("os/nvram") == "/var/lib/c/run2/cell/VARS.fd"
    disk = out.find("devices/disk[@device='disk']")
    assert disk is not None
    assert [c.tag for c in disk] == ["driver", "source", "backingStore", "target", "address"]
    chain = [s.get("file") for s in disk.iter("source")]
    assert chain == [
        "/var/lib/c/run2/cell/overlay.qcow2",
        "/cache/k/layer.qcow2",
        "/img/golden.qcow2",
    ]
    cdrom = out.find("devices/disk[@device='cdrom']")
    assert cdrom is not None and cdrom.find("source") is None  # the builder's ISO is gone
    for kind in ("serial", "console"):
        assert out.find(f"devices/{kind}/source").get("path") == "/var/lib/c/run2/cell/console"  # type: ignore[union-attr]
    assert out.find("memory").text == "1048576"  # type: ignore[union-attr]


def test_a_cell_that_is_not_the_saved_hardware_is_refused() -> None:
    no_cdrom = CELL.replace("device='cdrom'", "device='floppy'")
    with pytest.raises(SaveImageError, match="no cdrom in one"):
        restore_definition(SAVED, no_cdrom)


def test_a_copy_that_cannot_be_written_is_the_storages_failure_not_the_images(
    tmp_path: Path,
) -> None:
    source = image(tmp_path / "memory.save")
    with pytest.raises(StorageError, match="cannot copy the save image") as caught:
        renamed_copy(source, tmp_path / "no-such-folder" / "cell.save", name="n", uuid="u")
    assert not isinstance(caught.value, SaveImageError)  # the layer is not to blame


def test_namespaced_elements_keep_their_prefixes() -> None:
    from compatlab.lab.owner import NS_URI

    qemu = "http://libvirt.org/schemas/domain/qemu/1.0"
    saved = SAVED.replace(
        "<domain type='qemu'>", f"<domain type='qemu' xmlns:qemu='{qemu}'>"
    ).replace("</devices>", "</devices>\n  <qemu:override><qemu:device alias='x'/></qemu:override>")
    cell = CELL.replace('<c:cell xmlns:c="urn:x">', f'<compatlab:cell xmlns:compatlab="{NS_URI}">')
    cell = cell.replace(
        "<c:run>run2</c:run></c:cell>", "<compatlab:run>run2</compatlab:run></compatlab:cell>"
    )
    out = restore_definition(saved, cell)
    assert "<qemu:override>" in out and "<compatlab:run>run2</compatlab:run>" in out
    assert "ns0:" not in out and "ns1:" not in out
    assert ET.fromstring(out).findtext(f"metadata/{{{NS_URI}}}cell/{{{NS_URI}}}run") == "run2"
