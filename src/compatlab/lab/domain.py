"""The libvirt domain a cell runs in: a frozen spec, rendered through a Jinja2 template.

A :class:`DomainSpec` says everything one cell's VM needs (golden image, hardware profile, the
cell's own files, who owns it); :func:`render_domain_xml` turns it into domain XML using
``configs/templates/domain.xml.j2``; :func:`validate_domain_xml` checks the result against
libvirt's own schema. Nothing here talks to libvirt: defining and starting is the lab's job.

What libvirt 9.0 / QEMU 7.2 accept was measured on the lab hosts; the template says why each
block looks the way it does. :func:`check_supported` refuses, before anything is created, the
profiles that cannot run here (see its docstring). It and :class:`ProfileNotSupported` live in
:mod:`compatlab.catalog`, which needs no libvirt, so the matrix loader runs the same check when
a matrix loads; they are re-exported here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from uuid import UUID, uuid5

import jinja2

from compatlab.catalog import GoldenImage, HardwareProfile, ProfileNotSupported, check_supported
from compatlab.errors import LabError
from compatlab.lab.owner import NS_URI, CellMetadata, Controller
from compatlab.lab.storage import CellStorage

__all__ = [
    "TEMPLATE_NAME",
    "Accel",
    "CrashPolicy",
    "DomainSpec",
    "DomainXMLError",
    "Forward",
    "ProfileNotSupported",
    "check_supported",
    "domain_name",
    "domain_uuid",
    "render_cell_domain",
    "render_domain_xml",
    "validate_domain_xml",
]

log = logging.getLogger(__name__)

Accel = Literal["kvm", "qemu"]
CrashPolicy = Literal["preserve", "restart", "destroy"]

TEMPLATE_NAME = "domain.xml.j2"
DOMAIN_PREFIX = "compatlab-"

# libvirt forbids only '/' in names, but names also become file names (logs, sockets, swtpm
# state) and shell arguments in runbooks: keep them boring.
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_SLUG_LENGTH = 40


class DomainXMLError(LabError):
    """The rendered domain XML does not satisfy libvirt's schema (a bug in the lab, not input)."""


@dataclass(frozen=True)
class Forward:
    """A guest TCP port reachable from this host only, at ``127.0.0.1:host_port``."""

    host_port: int
    guest_port: int

    def __post_init__(self) -> None:
        for port in (self.host_port, self.guest_port):
            if not 0 < port < 65536:
                raise ValueError(f"port {port} out of range")


@dataclass(frozen=True)
class DomainSpec:
    """Everything one cell's VM is made of. Paths are on the hypervisor host."""

    name: str
    uuid: UUID
    accel: Accel
    image: GoldenImage
    hardware: HardwareProfile
    overlay: Path
    #: Where the runner keeps the serial console (``lab/console.py``): ``<base>.log``, with the
    #: FIFOs QEMU writes and reads beside it (:attr:`console`).
    serial_log: Path
    #: Who owns the domain, for the reaper (``lab/reaper.py`` reads it back).
    metadata: CellMetadata
    #: Per-VM UEFI variable store; libvirt creates it from the firmware's template. UEFI only.
    nvram: Path | None = None
    on_crash: CrashPolicy = "preserve"
    #: ISO in the payload drive at start; None leaves the drive empty.
    cdrom: Path | None = None
    #: QEMU binary; None lets libvirt pick the host's default for x86_64.
    emulator: Path | None = None
    #: Guest TCP ports forwarded from 127.0.0.1 (a user-mode NIC); empty: no NIC at all.
    forwards: tuple[Forward, ...] = ()
    #: A cached pre-candidate layer (``compatlab.cache``) between the overlay and the golden
    #: image; None: the overlay is directly on the golden image.
    layer: Path | None = None

    def __post_init__(self) -> None:
        # Programming errors, not input errors: names come from domain_name(), paths from
        # CellStorage.
        if not _DOMAIN_NAME.match(self.name):
            raise ValueError(f"domain name {self.name!r} is not libvirt-safe")
        if self.accel not in get_args(Accel):
            raise ValueError(f"accel must be one of {get_args(Accel)}, not {self.accel!r}")
        if self.on_crash not in get_args(CrashPolicy):
            raise ValueError(
                f"on_crash must be one of {get_args(CrashPolicy)}, not {self.on_crash!r}"
            )
        for what, path in (
            ("overlay", self.overlay),
            ("serial_log", self.serial_log),
            ("nvram", self.nvram),
            ("cdrom", self.cdrom),
            ("emulator", self.emulator),
            ("layer", self.layer),
        ):
            if path is not None and not path.is_absolute():
                raise ValueError(f"{what} must be an absolute path, not {path}")
        if self.serial_log.suffix != ".log":
            raise ValueError(f"serial_log must end in .log, not {self.serial_log.name}")
        if self.hardware.firmware == "uefi" and self.nvram is None:
            raise ValueError("a UEFI domain needs an nvram path")
        if self.hardware.firmware == "bios" and self.nvram is not None:
            raise ValueError("a BIOS domain has no nvram")

    @property
    def console(self) -> Path:
        """The serial console's FIFO pair without its ``.in``/``.out``: the serial log's path
        without ``.log`` (``lab/console.py`` finds the log from it)."""
        return self.serial_log.with_suffix("")


def domain_name(run_id: str, cell_id: str) -> str:
    """``compatlab-<readable cell id>-<hash>``: libvirt-safe, at most 61 characters.

    The readable part is the cell id lower-cased with every other run of characters turned into
    ``-`` (cell ids hold ``/`` and ``+``) and cut to 40 characters; the hash of run id and cell
    id keeps names distinct where that folds two cells together, and across runs on one host.
    """
    slug = _NOT_SLUG.sub("-", cell_id.lower()).strip("-")[:_SLUG_LENGTH].rstrip("-") or "cell"
    digest = hashlib.sha256(f"{run_id}\0{cell_id}".encode()).hexdigest()[:10]
    return f"{DOMAIN_PREFIX}{slug}-{digest}"


@dataclass(frozen=True)
class _DiskLayout:
    dev: str
    bus: str
    nvme: bool


def _disk_layout(hardware: HardwareProfile) -> _DiskLayout:
    if hardware.disk_bus == "sata":
        return _DiskLayout(dev="sda", bus="sata", nvme=False)
    # NVMe rides on a virtio disk whose front end the template overrides.
    return _DiskLayout(dev="vda", bus="virtio", nvme=hardware.disk_bus == "nvme")


@functools.lru_cache(maxsize=8)
def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        # On for every template, whatever its extension: YAML values must not become XML.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def find_template_dir(project: Path) -> Path:
    """The project's ``configs/templates``; else compatlab's own (a matrix repository may not
    carry templates)."""
    own = project / "configs" / "templates"
    if (own / TEMPLATE_NAME).is_file():
        return own
    return Path(__file__).resolve().parents[3] / "configs" / "templates"


def render_domain_xml(spec: DomainSpec, template_dir: Path) -> str:
    """The domain XML for ``spec`` from ``template_dir/domain.xml.j2``.

    Raises :class:`ProfileNotSupported` for profiles :func:`check_supported` refuses, and
    :class:`DomainXMLError` when the template is missing or broken.
    """
    check_supported(spec.image, spec.hardware)
    folder = Path(template_dir).resolve()
    try:
        return (
            _environment(folder)
            .get_template(TEMPLATE_NAME)
            .render(
                spec=spec,
                image=spec.image,
                hw=spec.hardware,
                disk=_disk_layout(spec.hardware),
                windows=spec.image.os_family == "windows",
                kvm=spec.accel == "kvm",
                metadata_ns=NS_URI,
            )
        )
    except jinja2.TemplateNotFound as exc:
        raise DomainXMLError(f"no {TEMPLATE_NAME} in {folder}", domain=spec.name) from exc
    except jinja2.TemplateError as exc:
        raise DomainXMLError(
            f"{folder / TEMPLATE_NAME}: {exc.__class__.__name__}: {exc}", domain=spec.name
        ) from exc


_validator_missing_noted = False


def validate_domain_xml(xml: str, *, validator: str = "virt-xml-validate") -> None:
    """Check ``xml`` against libvirt's domain schema with ``virt-xml-validate``.

    Raises :class:`DomainXMLError` carrying the validator's message. Where the tool is not
    installed (it comes with libvirt-clients), logs a note once and returns.
    """
    global _validator_missing_noted
    executable = shutil.which(validator)
    if executable is None:
        if not _validator_missing_noted:
            log.warning(
                "%s not found: domain XML is not checked against libvirt's schema", validator
            )
            _validator_missing_noted = True
        return
    name = _name_of(xml)
    with tempfile.NamedTemporaryFile("w", suffix=".xml", encoding="utf-8") as file:
        file.write(xml)
        file.flush()
        try:
            done = subprocess.run(
                [executable, file.name, "domain"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DomainXMLError(f"{validator} could not run: {exc}", domain=name) from exc
    if done.returncode != 0:
        # The validator names the temporary file; the reader wants the domain.
        message = (done.stderr or done.stdout).replace(file.name, "<domain xml>").strip()
        raise DomainXMLError(f"domain XML fails libvirt's schema: {message}", domain=name)


def _name_of(xml: str) -> str | None:
    try:
        return ET.fromstring(xml).findtext("name")
    except ET.ParseError:
        return None


# Domain UUIDs are derived from run and cell, so `compatlab xml` shows the very XML a run defines.
_DOMAIN_UUIDS = UUID("5f0b8e52-3c1e-4d1a-9a57-0c8d2f6b7a11")


def domain_uuid(run_id: str, cell_id: str) -> UUID:
    """The UUID of a cell's domain: libvirt keeps its TPM state under it."""
    return uuid5(_DOMAIN_UUIDS, f"{run_id}\0{cell_id}")


def render_cell_domain(
    image: GoldenImage,
    hardware: HardwareProfile,
    storage: CellStorage,
    *,
    template_dir: Path,
    accel: Accel,
    controller: Controller,
    on_crash: CrashPolicy = "preserve",
    forwards: tuple[Forward, ...] = (),
    layer: Path | None = None,
) -> str:
    """The domain XML of one VM of a cell: the one function a run and ``compatlab xml`` share.

    Names, UUID and paths come from ``storage`` (its run id and cell id). Creates nothing.
    Raises :class:`ProfileNotSupported` for profiles this lab cannot run.
    """
    run_id, cell_id = storage.run_id, storage.cell_id
    spec = DomainSpec(
        name=domain_name(run_id, cell_id),
        uuid=domain_uuid(run_id, cell_id),
        accel=accel,
        image=image,
        hardware=hardware,
        overlay=storage.overlay,
        serial_log=storage.serial_log,
        nvram=storage.nvram if hardware.firmware == "uefi" else None,
        metadata=CellMetadata(
            run=run_id,
            cell=cell_id,
            controller=controller,
            ports=tuple(f.host_port for f in forwards),
        ),
        on_crash=on_crash,
        forwards=forwards,
        layer=layer,
    )
    return render_domain_xml(spec, template_dir)
