"""Who owns a domain and a run folder: the records the reaper (``lab/reaper.py``) reads back.

Every domain compatlab creates carries its owner in the domain XML's ``<metadata>``. The exact
shape, agreed with the XML renderer (``lab/domain.py``)::

    <metadata>
      <compatlab:cell xmlns:compatlab="https://compatlab.dev/xmlns/cell/1">
        <compatlab:run>20250611-0212-7f3a</compatlab:run>
        <compatlab:cell>demo/bios-1cpu/acme-av+other-edr</compatlab:cell>
        <compatlab:controller host="lab-ctl-01" pid="48213" start="1234567"/>
      </compatlab:cell>
    </metadata>

- namespace URI ``https://compatlab.dev/xmlns/cell/1`` (:data:`NS_URI`), prefix ``compatlab``;
- ``run``: the run id, also the name of the run's folder ``<storage root>/cells/<run>/``;
- ``cell``: the cell id;
- ``controller``: the runner process that owns the domain -- ``host`` is its
  ``socket.gethostname()``, ``pid`` its process id, ``start`` its start time in clock ticks
  since boot (field 22 of ``/proc/<pid>/stat``), so a recycled pid is not mistaken for the
  owner. :meth:`Controller.current` gives all three; :func:`render_cell_metadata` writes the
  element. libvirt hands the element back without prefixes; the reader matches local names.

Each run folder holds ``owner.json`` -- ``{"host": ..., "pid": ..., "start": ...}`` -- written
by the run a moment after it creates the folder and before it creates anything in it
(:func:`write_run_owner`; atomically, so it is whole or absent). A run that cannot write it
(disk full) removes the folder again (``run.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import libvirt

from compatlab.errors import HypervisorError, LabError, StorageError

__all__ = [
    "CELLS_DIR",
    "NS_PREFIX",
    "NS_URI",
    "OWNER_FILE",
    "STORAGE_ROOT",
    "CellMetadata",
    "Controller",
    "DomainVanished",
    "MalformedMetadata",
    "parse_cell_metadata",
    "process_start_time",
    "read_cell_metadata",
    "read_metadata_strict",
    "read_run_owner",
    "render_cell_metadata",
    "run_folder",
    "write_run_owner",
]

NS_URI = "https://compatlab.dev/xmlns/cell/1"
NS_PREFIX = "compatlab"
# The default storage root. Callers pass the root in (configuration flows inward); this is the
# value the CLI and the plugin use when the lab file does not say otherwise.
STORAGE_ROOT = Path("/var/lib/compatlab")
CELLS_DIR = "cells"
OWNER_FILE = "owner.json"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- who owns what ------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time, ticks since boot); None if no such process.

    A zombie counts as gone: it has exited and only waits for its parent.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # "pid (comm) state ppid ..." -- comm may hold spaces and parentheses: split at the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Controller:
    """A runner process: the owner of a run folder and of the domains it created."""

    host: str
    pid: int
    start: int

    @classmethod
    def current(cls) -> Controller:
        """This process."""
        pid = os.getpid()
        start = process_start_time(pid)
        if start is None:  # /proc is always there on a hypervisor host; be explicit if not
            raise LabError("cannot read /proc/self/stat to identify this runner")
        return cls(host=socket.gethostname(), pid=pid, start=start)

    def is_alive(self) -> bool:
        """The same process (pid *and* start time) still runs here. Only meaningful locally."""
        return self.pid > 0 and process_start_time(self.pid) == self.start

    def as_json(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "start": self.start}


@dataclass(frozen=True)
class CellMetadata:
    """What a compatlab domain says about itself."""

    run: str
    cell: str
    controller: Controller
    #: Host ports on 127.0.0.1 forwarded into the guest (lab/ports.py leases them).
    ports: tuple[int, ...] = ()


def render_cell_metadata(meta: CellMetadata) -> str:
    """The ``<compatlab:cell>`` element, to be placed inside the domain's ``<metadata>``."""
    c = meta.controller
    return (
        f'<{NS_PREFIX}:cell xmlns:{NS_PREFIX}="{NS_URI}">'
        f"<{NS_PREFIX}:run>{escape(meta.run)}</{NS_PREFIX}:run>"
        f"<{NS_PREFIX}:cell>{escape(meta.cell)}</{NS_PREFIX}:cell>"
        f"<{NS_PREFIX}:controller host={quoteattr(c.host)} pid={quoteattr(str(c.pid))}"
        f" start={quoteattr(str(c.start))}/>"
        + "".join(f"<{NS_PREFIX}:port>{port}</{NS_PREFIX}:port>" for port in meta.ports)
        + f"</{NS_PREFIX}:cell>"
    )


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_cell_metadata(xml: str) -> CellMetadata | None:
    """Read the element back (as libvirt returns it: prefixed or not). None if malformed."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    if _local(root.tag) != "cell":
        return None
    children = {_local(child.tag): child for child in root}
    run = (children["run"].text or "").strip() if "run" in children else ""
    cell = (children["cell"].text or "").strip() if "cell" in children else ""
    controller = children.get("controller")
    if not run or controller is None:
        return None
    try:
        pid = int(controller.get("pid", ""))
        start = int(controller.get("start", ""))
    except ValueError:
        return None
    host = controller.get("host", "")
    if not host:
        return None
    texts = [(child.text or "").strip() for child in root if _local(child.tag) == "port"]
    ports = tuple(int(text) for text in texts if text.isdigit())
    return CellMetadata(run=run, cell=cell, controller=Controller(host, pid, start), ports=ports)


class MalformedMetadata(Exception):
    """The domain has an element in our namespace that does not parse."""


class DomainVanished(Exception):
    """The domain went away between listing and reading it (someone else removed it)."""


def read_cell_metadata(dom: Any, *, host: str = "") -> CellMetadata | None:
    """A domain's compatlab metadata; None when it has none (not ours) or it does not parse."""
    try:
        return read_metadata_strict(dom, host)
    except MalformedMetadata:
        return None
    except DomainVanished as exc:
        raise HypervisorError(
            "reading domain metadata: the domain is gone", host=host, domain=str(exc)
        ) from exc.__cause__


def read_metadata_strict(dom: Any, host: str) -> CellMetadata | None:
    """As :func:`read_cell_metadata`, but a malformed element raises :class:`MalformedMetadata`
    and a domain removed meanwhile :class:`DomainVanished` (the reaper tells them apart)."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, 0)
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            raise DomainVanished(dom.name()) from exc
        raise HypervisorError(
            f"reading domain metadata: {exc.get_error_message()}", host=host, domain=dom.name()
        ) from exc
    meta = parse_cell_metadata(xml)
    if meta is None:
        raise MalformedMetadata(xml)
    return meta


# -- owner.json --------------------------------------------------------------------------------


def run_folder(storage_root: Path, run_id: str) -> Path:
    """``<storage root>/cells/<run id>``; the run id must be a plain name."""
    if not _RUN_ID.match(run_id):
        raise StorageError(f"run id {run_id!r} is not a plain folder name")
    return storage_root / CELLS_DIR / run_id


def write_run_owner(folder: Path, controller: Controller | None = None) -> Path:
    """Create the run folder (if needed) and write its ``owner.json`` (atomically).

    A write the disk refuses (full) leaves no temporary file behind.
    """
    owner = controller or Controller.current()
    target = folder / OWNER_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{OWNER_FILE}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(owner.as_json(), sort_keys=True) + "\n", encoding="utf-8")
            tmp.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"writing {target}: {exc}") from exc
    return target


def read_run_owner(folder: Path) -> Controller | None:
    """The controller in a run folder's ``owner.json``; None when missing or unreadable."""
    try:
        data = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        return Controller(host=str(data["host"]), pid=int(data["pid"]), start=int(data["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
