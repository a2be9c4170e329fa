"""A libvirt QEMU save image, copied under another domain's name and UUID. Pure file work.

A cell that starts from a cached layer's memory state restores the image its layer's builder
saved (``virDomainSave``). libvirt 9.0 refuses a restore whose XML names another domain or
UUID than the saved one (its ABI check compares UUIDs), and two domains of one name or UUID
cannot run at once, so each cell restores its own copy of the image, renamed in the header.
libvirt offers no call for that (``virDomainSaveImageDefineXML`` runs the same check), so
this module rewrites the header, which is stable: ``virQEMUSaveHeader`` version 2 since
libvirt 0.9, read by ``qemuSaveImageOpen``.

Layout (``src/qemu/qemu_saveimage.h``): 16 bytes of magic ``LibvirtQemudSave``, then 19
native-endian 32-bit words -- version, ``data_len``, ``was_running``, ``compressed``,
``cookieOffset``, 15 unused -- then ``data_len`` bytes: the domain XML NUL-terminated at 0,
the migration cookie at ``cookieOffset``, zeros to the end (libvirt leaves room so the XML can
grow). QEMU's migration stream follows, untouched here. Measured on these hosts
(benchmarks/results/memory_state.json): two renamed copies of one image restore and run at
once; the original's name and UUID do not.
"""

from __future__ import annotations

import shutil
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from compatlab.errors import SaveImageError, StorageError
from compatlab.lab.owner import NS_URI

__all__ = ["SAVE_MAGIC", "SaveHeader", "read_header", "renamed_copy", "restore_definition"]

SAVE_MAGIC = b"LibvirtQemudSave"
# Prefixes kept when a definition is written back (ElementTree would say ns0:, ns1:): libvirt
# matches by namespace URI, people reading a domain's XML by prefix.
_PREFIXES = {"qemu": "http://libvirt.org/schemas/domain/qemu/1.0", "compatlab": NS_URI}
_HEADER = struct.Struct("=16s19I")
_VERSION = 2


@dataclass(frozen=True)
class SaveHeader:
    """What compatlab reads of a save image's header."""

    xml: str
    cookie: bytes  # without its NUL; empty where the image has none
    data_len: int
    fields: tuple[int, ...]  # the 19 words, as read

    @property
    def name(self) -> str:
        return ET.fromstring(self.xml).findtext("name") or ""

    @property
    def uuid(self) -> str:
        return ET.fromstring(self.xml).findtext("uuid") or ""


def read_header(path: Path) -> SaveHeader:
    """The header of the save image at ``path``. Raises SaveImageError for anything that is
    not an uncompressed version-2 libvirt QEMU save image."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEADER.size)
            if len(head) < _HEADER.size:
                raise SaveImageError(f"{path} is too short to be a libvirt save image")
            magic, *words = _HEADER.unpack(head)
            data = handle.read(words[1])
    except OSError as exc:
        raise SaveImageError(f"cannot read the save image {path}: {exc}") from exc
    version, data_len, _running, compressed, cookie_offset = words[:5]
    if magic != SAVE_MAGIC:
        raise SaveImageError(f"{path} is not a libvirt QEMU save image (magic {magic!r})")
    if version != _VERSION:
        raise SaveImageError(f"{path}: save image header version {version}, not {_VERSION}")
    if compressed != 0:
        raise SaveImageError(f"{path}: a compressed save image (format {compressed})")
    if len(data) < data_len or (cookie_offset and cookie_offset >= data_len):
        raise SaveImageError(f"{path}: the save image's header is cut short")
    end = cookie_offset or data_len
    xml_bytes, nul, _ = data[:end].partition(b"\0")
    if not nul:
        raise SaveImageError(f"{path}: the save image's domain XML is not terminated")
    cookie = data[cookie_offset:].partition(b"\0")[0] if cookie_offset else b""
    try:
        xml = xml_bytes.decode()
        ET.fromstring(xml)
    except (UnicodeDecodeError, ET.ParseError) as exc:
        raise SaveImageError(f"{path}: the save image's domain XML is unreadable: {exc}") from exc
    return SaveHeader(xml=xml, cookie=cookie, data_len=data_len, fields=tuple(words))


def renamed_copy(source: Path, target: Path, *, name: str, uuid: str) -> None:
    """Copy the save image ``source`` to ``target`` with ``name`` and ``uuid`` in its header.

    Only the domain's ``<name>`` and ``<uuid>`` change; the cookie moves to stay right after
    the XML, as libvirt writes it. Raises StorageError (an unreadable image, a header with no
    room for the longer name, a copy that fails): the lab's failure, never the cell's.
    """
    header = read_header(source)
    old = f"<name>{escape(header.name)}</name>", f"<uuid>{header.uuid}</uuid>"
    if old[0] not in header.xml or old[1] not in header.xml:
        raise SaveImageError(f"{source}: no <name>/<uuid> to rename in the save image's XML")
    xml = header.xml.replace(old[0], f"<name>{escape(name)}</name>", 1)
    xml = xml.replace(old[1], f"<uuid>{uuid}</uuid>", 1)
    body = xml.encode() + b"\0"
    fields = list(header.fields)
    if fields[4]:  # cookieOffset: the cookie follows the XML
        fields[4] = len(body)
        body += header.cookie + b"\0"
    if len(body) > header.data_len:
        raise SaveImageError(f"{source}: the renamed XML does not fit in the save image's header")
    try:
        shutil.copyfile(source, target)
        with target.open("r+b") as handle:
            handle.write(_HEADER.pack(SAVE_MAGIC, *fields))
            handle.write(body + b"\0" * (header.data_len - len(body)))
    except OSError as exc:
        raise StorageError(f"cannot copy the save image to {target}: {exc}") from exc


def restore_definition(saved: str, cell: str) -> str:
    """The domain XML a cell restores with: the saved one, carrying the cell's own identity
    and files.

    ``saved`` is the image's XML (what the builder ran, with what libvirt resolved at its start,
    such as the UEFI firmware's files: a restore runs no firmware selection, and a definition
    without them leaves QEMU without the flash its memory state holds). ``cell`` is the cell's
    domain as defined. From ``cell`` come: name, UUID, title, compatlab's metadata (who owns
    the domain), the NVRAM file, the disk's chain (the cell's overlay on the layer), the CD-ROM's
    medium and the serial console's pipe. Everything else -- the virtual hardware the memory
    state belongs to -- stays as saved; libvirt checks that it matches.
    """
    for prefix, uri in _PREFIXES.items():
        ET.register_namespace(prefix, uri)
    root, mine = ET.fromstring(saved), ET.fromstring(cell)
    for tag in ("name", "uuid", "title", "metadata"):
        _replace(root, mine, tag)
    _replace(root, mine, "os/nvram")
    for device in ("disk", "cdrom"):
        path = f"devices/disk[@device='{device}']"
        target, source = root.find(path), mine.find(path)
        if target is None or source is None:
            raise SaveImageError(f"the saved domain and the cell's differ: no {device} in one")
        for child in [c for c in target if c.tag in ("source", "backingStore")]:
            target.remove(child)
        at = 1 + max((i for i, c in enumerate(target) if c.tag == "driver"), default=-1)
        for offset, child in enumerate(c for c in source if c.tag in ("source", "backingStore")):
            target.insert(at + offset, child)
    for kind in ("serial", "console"):
        target, source = root.find(f"devices/{kind}/source"), mine.find(f"devices/{kind}/source")
        if target is not None and source is not None:
            target.attrib.clear()
            target.attrib.update(source.attrib)
    return ET.tostring(root, encoding="unicode")


def _replace(root: ET.Element, mine: ET.Element, path: str) -> None:
    """``root``'s element at ``path`` becomes ``mine``'s (added or removed to match)."""
    parent_path, _, tag = path.rpartition("/")
    parent = root.find(parent_path) if parent_path else root
    source = mine.find(path)
    if parent is None:
        if source is None:
            return
        raise SaveImageError(f"the saved domain has no <{parent_path}> for the cell's <{tag}>")
    target = parent.find(tag)
    if target is not None:
        index = list(parent).index(target)
        parent.remove(target)
    else:
        index = len(parent)
    if source is not None:
        parent.insert(index, source)
