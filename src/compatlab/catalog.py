"""The lab's inventory: golden images, hardware profiles and coexisting security products.

Each is one YAML file in its folder (``images/``, ``configs/hardware/``, ``configs/products/``),
read once into a frozen dataclass. Paths inside a file are relative to that file. A credential is
only ever a *reference* (an environment variable or a file), never a password in the YAML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar, cast

from compatlab import files
from compatlab._yaml import Node, load
from compatlab.capabilities import (
    WINRM_TRANSPORTS,
    WINRM_TRANSPORTS_REFUSED,
    ProfileNotSupported,
    check_supported,
)
from compatlab.errors import CatalogError, InputError
from compatlab.guest.conventions import GuestConventions, parse_conventions
from compatlab.installs import (
    COMMAND_CHARACTERS,
    Commands,
    ExitCodes,
    WindowsPackage,
    parse_commands,
    parse_exit_codes,
)

__all__ = [
    "OS_FAMILIES",
    "Catalog",
    "Commands",
    "Credentials",
    "ExitCodes",
    "GoldenImage",
    "GuestConventions",
    "HardwareProfile",
    "Health",
    "Product",
    "ProductPayload",
    "ProfileNotSupported",
    "Watchdog",
    "WindowsPackage",
    "check_supported",
    "load_catalog",
]

OsFamily = Literal["windows", "linux"]
Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "sata", "nvme"]
ChannelKind = Literal["winrm", "agent"]
WinRMTransport = Literal["ntlm", "basic", "ssl", "credssp", "kerberos"]

OS_FAMILIES: tuple[OsFamily, ...] = ("windows", "linux")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names become VM names, cell ids and report file names; a cell id joins several of them.
MAX_NAME_LENGTH = 64
# What any lab host can give one VM: QEMU's q35 takes up to 288 vCPUs; no host has 4 TiB spare.
MAX_VCPUS = 256
MAX_MEMORY_MIB = 4 * 1024 * 1024


@dataclass(frozen=True)
class Credentials:
    """Where a guest's login comes from. Resolved at the edge (the WinRM channel), not here."""

    username: str
    password_env: str | None = None
    password_file: Path | None = None


@dataclass(frozen=True)
class GoldenImage:
    """A read-only base disk of one OS build; every cell boots a copy-on-write overlay of it."""

    name: str
    os_family: OsFamily
    build: str
    display_name: str
    disk: Path
    firmware: frozenset[Firmware]
    channel: ChannelKind
    source: Path
    credentials: Credentials | None = None
    # Direct kernel boot (the demo's Linux images); None for images that boot from their disk.
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    recipe: str | None = None
    variant: str | None = None
    guest: GuestConventions | None = None
    # UEFI variable store each VM's NVRAM starts from: whose Secure Boot keys are enrolled.
    # None lets libvirt use the firmware's own template (Microsoft keys with Secure Boot).
    uefi_vars: Path | None = None
    # The serial console line that says the OS finished booting (searched in each line, so
    # anchor it with ^): a second sign of a completed boot besides the guest channel. None
    # where the image prints no such line (Windows, unless the lab installs a serial logger).
    boot_complete: re.Pattern[str] | None = None
    # How the WinRM channel authenticates (pywinrm's transport, ``winrm_transport:`` in the
    # image): NTLM for Windows over HTTP; "basic" only where the guest takes Basic over HTTP
    # (the demo's WinRS stand-in). The loader refuses the rest, which cannot work here.
    winrm_transport: WinRMTransport = "ntlm"
    # WinRM over HTTPS (the guest's port 5986), the server certificate checked against this PEM
    # (the guest's own self-signed certificate, or the lab CA's) -- ``winrm_certificate:`` in
    # the image. None: HTTP on 5985, NTLM's message encryption protecting the traffic.
    winrm_certificate: Path | None = None

    @property
    def conventions(self) -> GuestConventions:
        return self.guest or GuestConventions.default(self.os_family)


@dataclass(frozen=True)
class Watchdog:
    model: str = "i6300esb"
    action: str = "reset"


@dataclass(frozen=True)
class HardwareProfile:
    """The virtual machine a cell gets: the axis that stands in for the fleet's hardware."""

    name: str
    vcpus: int
    memory_mib: int
    firmware: Firmware
    secure_boot: bool
    tpm: bool
    disk_bus: DiskBus
    machine: str
    source: Path
    watchdog: Watchdog | None = None


@dataclass(frozen=True)
class Health:
    """What must hold after every boot for a product to count as healthy."""

    services: tuple[str, ...] = ()
    command: str | None = None


@dataclass(frozen=True)
class ProductPayload:
    folder: Path
    commands: Commands
    health: Health


@dataclass(frozen=True)
class Product:
    """A coexisting security product (AV, EDR, DLP...): the third axis of the matrix."""

    name: str
    vendor: str
    payloads: Mapping[OsFamily, ProductPayload]
    source: Path

    def payload_for(self, os_family: OsFamily) -> ProductPayload | None:
        return self.payloads.get(os_family)


@dataclass(frozen=True)
class Catalog:
    images: Mapping[str, GoldenImage]
    hardware: Mapping[str, HardwareProfile]
    products: Mapping[str, Product]


# -- parsing ------------------------------------------------------------------------------------


def _name(node: Node, what: str) -> str:
    name = node.text(what, max_length=MAX_NAME_LENGTH)
    if not _NAME.match(name):
        raise node.error(
            f"{what} '{name}' may only hold letters, digits, '.', '_' and '-'",
            "names become VM names and cell ids",
        )
    return name


def _path(node: Node, base: Path, what: str, kinds: tuple[files.PathKind, ...] = ("file",)) -> Path:
    """A path relative to the catalog file, resolved; if it exists, it must be one of ``kinds``.

    A missing path is left to the run (a disk built later, a folder on the lab host); a
    symlink loop, or a folder where a file belongs, is wrong whenever it is read.
    """
    given = Path(node.text(what))
    try:
        # Relative paths are resolved, as they always were; absolute ones are kept as written.
        path = given if given.is_absolute() else files.resolve(base / given)
        files.check_kind(path, kinds, what, missing_ok=True)
    except InputError as exc:
        raise node.error(exc.message) from exc
    return path


# A serial marker is one line's worth of pattern; anything longer is a mistake, not a need.
_MAX_PATTERN_LENGTH = 500


def _line_pattern(node: Node, what: str) -> re.Pattern[str]:
    """A regular expression searched in single serial console lines, checked at load."""
    text = node.text(what, allow="\n\r")  # line breaks get their own message, below
    if len(text) > _MAX_PATTERN_LENGTH:
        raise node.error(
            f"{what} is {len(text)} characters long, more than {_MAX_PATTERN_LENGTH}",
            "it is matched against one console line: name the line, not the whole boot",
        )
    if "\n" in text or "\r" in text:
        raise node.error(f"{what} holds a line break", "it is matched against one line at a time")
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise node.error(
            f"{what} is not a valid regular expression: {exc.msg} at position {exc.pos}"
        ) from exc
    if pattern.search("") is not None:
        raise node.error(
            f"{what} '{text}' matches an empty line, so every line would mark a completed boot",
            "write the line the guest prints, e.g. '^compatlab-guest: services started'",
        )
    return pattern


# Twelve digits are already past any host; more would only be a very long int() to refuse.
_MEMORY = re.compile(r"^\s*(\d{1,12})\s*(MiB|GiB|M|G)?\s*$")


def _memory_mib(node: Node) -> int:
    if isinstance(node.value, int) and not isinstance(node.value, bool):
        amount = node.integer("memory", minimum=64)
    else:
        match = _MEMORY.match(node.text("memory"))
        if not match:
            raise node.error(
                f"memory '{str(node.value)[:40]}' is not a size", "write e.g. 2048, 512MiB or 4GiB"
            )
        amount = int(match.group(1)) * (1024 if (match.group(2) or "M").startswith("G") else 1)
    if amount < 64:
        raise node.error(f"memory must be at least 64 MiB, not {amount} MiB")
    if amount > MAX_MEMORY_MIB:
        raise node.error(
            f"memory must be at most 4 TiB ({MAX_MEMORY_MIB} MiB), not {amount} MiB",
            "no lab host can give one VM more",
        )
    return amount


def _winrm_transport(node: Node, channel: ChannelKind) -> WinRMTransport:
    """How the WinRM channel logs on: one of :data:`WINRM_TRANSPORTS`; the other transports
    pywinrm knows are refused with the reason they cannot work here."""
    if channel != "winrm":
        raise node.error(
            f"winrm_transport is for images with channel: winrm, not {channel}",
            "remove it, or set channel: winrm",
        )
    text = node.choice((*WINRM_TRANSPORTS, *WINRM_TRANSPORTS_REFUSED), "winrm_transport")
    if text in WINRM_TRANSPORTS_REFUSED:
        why, hint = WINRM_TRANSPORTS_REFUSED[text]
        raise node.error(f"winrm_transport {text} cannot work here: it {why}", hint)
    return cast(WinRMTransport, text)


def parse_image(path: Path) -> GoldenImage:
    root = load(path, CatalogError)
    e = root.mapping(
        "image",
        required=("name", "os_family", "build", "disk", "firmware", "channel"),
        optional=(
            "display_name",
            "credentials",
            "kernel",
            "initrd",
            "cmdline",
            "recipe",
            "variant",
            "guest",
            "uefi_vars",
            "boot_complete",
            "winrm_transport",
            "winrm_certificate",
        ),
    )
    base = path.parent
    os_family = cast(OsFamily, e["os_family"].choice(OS_FAMILIES, "os_family"))
    firmware_node = e["firmware"]
    firmware_items = firmware_node.items("firmware") if firmware_node.is_list() else [firmware_node]
    firmware = frozenset(
        cast(Firmware, item.choice(("bios", "uefi"), "firmware")) for item in firmware_items
    )
    channel = cast(ChannelKind, e["channel"].choice(("winrm", "agent"), "channel"))
    credentials = None
    if "credentials" in e and not e["credentials"].is_null():
        c = e["credentials"].mapping(
            "credentials", required=("username",), optional=("password_env", "password_file")
        )
        if "password_env" not in c and "password_file" not in c:
            raise e["credentials"].error(
                "credentials need password_env or password_file",
                "passwords are never written in the catalog",
            )
        credentials = Credentials(
            username=c["username"].text("username"),
            password_env=c["password_env"].text("password_env") if "password_env" in c else None,
            password_file=_path(c["password_file"], base, "password_file", ("file",))
            if "password_file" in c
            else None,
        )
    if channel == "winrm" and credentials is None:
        raise root.error("a winrm image needs credentials (username and password_env or _file)")
    transport = _winrm_transport(e["winrm_transport"], channel) if "winrm_transport" in e else None
    certificate = None
    if "winrm_certificate" in e:
        if channel != "winrm":
            raise e["winrm_certificate"].error(
                f"winrm_certificate is for images with channel: winrm, not {channel}",
                "remove it, or set channel: winrm",
            )
        certificate = _path(e["winrm_certificate"], base, "winrm_certificate")
    kernel = _path(e["kernel"], base, "kernel") if "kernel" in e else None
    initrd = _path(e["initrd"], base, "initrd") if "initrd" in e else None
    if initrd is not None and kernel is None:
        raise e["initrd"].error("an initrd needs a kernel")
    guest = parse_conventions(e["guest"], os_family) if "guest" in e else None
    return GoldenImage(
        guest=guest,
        uefi_vars=_path(e["uefi_vars"], base, "uefi_vars") if "uefi_vars" in e else None,
        name=_name(e["name"], "image name"),
        os_family=os_family,
        build=e["build"].text("build"),
        display_name=e["display_name"].text("display_name") if "display_name" in e else "",
        disk=_path(e["disk"], base, "disk", ("file", "block device")),
        firmware=firmware,
        channel=channel,
        source=path,
        credentials=credentials,
        kernel=kernel,
        initrd=initrd,
        cmdline=e["cmdline"].text("cmdline") if "cmdline" in e else None,
        recipe=e["recipe"].text("recipe") if "recipe" in e else None,
        variant=e["variant"].text("variant") if "variant" in e else None,
        boot_complete=_line_pattern(e["boot_complete"], "boot_complete")
        if "boot_complete" in e and not e["boot_complete"].is_null()
        else None,
        **({"winrm_transport": transport} if transport else {}),
        winrm_certificate=certificate,
    )


def parse_hardware(path: Path) -> HardwareProfile:
    root = load(path, CatalogError)
    e = root.mapping(
        "hardware profile",
        required=("name", "vcpus", "memory", "firmware"),
        optional=("secure_boot", "tpm", "disk_bus", "machine", "watchdog"),
    )
    firmware = cast(Firmware, e["firmware"].choice(("bios", "uefi"), "firmware"))
    secure_boot = e["secure_boot"].flag("secure_boot") if "secure_boot" in e else False
    if secure_boot and firmware != "uefi":
        raise e["secure_boot"].error("secure_boot needs firmware: uefi")
    watchdog = None
    if "watchdog" in e and not e["watchdog"].is_null():
        w = e["watchdog"].mapping("watchdog", optional=("model", "action"))
        watchdog = Watchdog(
            model=w["model"].choice(("i6300esb", "ib700", "itco"), "watchdog model")
            if "model" in w
            else "i6300esb",
            action=w["action"].choice(
                ("reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi"),
                "watchdog action",
            )
            if "action" in w
            else "reset",
        )
    return HardwareProfile(
        name=_name(e["name"], "hardware name"),
        vcpus=e["vcpus"].integer("vcpus", minimum=1, maximum=MAX_VCPUS),
        memory_mib=_memory_mib(e["memory"]),
        firmware=firmware,
        secure_boot=secure_boot,
        tpm=e["tpm"].flag("tpm") if "tpm" in e else False,
        disk_bus=cast(DiskBus, e["disk_bus"].choice(("virtio", "sata", "nvme"), "disk_bus"))
        if "disk_bus" in e
        else "virtio",
        machine=e["machine"].choice(("q35", "pc"), "machine") if "machine" in e else "q35",
        source=path,
        watchdog=watchdog,
    )


def parse_product(path: Path) -> Product:
    root = load(path, CatalogError)
    e = root.mapping("product", required=("name", "vendor"), optional=OS_FAMILIES)
    base = path.parent
    name = _name(e["name"], "product name")
    payloads: dict[OsFamily, ProductPayload] = {}
    for family in OS_FAMILIES:
        if family not in e:
            continue
        p = e[family].mapping(
            f"{family} payload",
            required=("payload", "install"),
            optional=("uninstall", "exit_codes", "health"),
        )
        health = Health()
        if "health" in p:
            h = p["health"].mapping("health", optional=("services", "command"))
            health = Health(
                services=tuple(s.text("service") for s in h["services"].items("services"))
                if "services" in h
                else (),
                command=h["command"].text("command", allow=COMMAND_CHARACTERS)
                if "command" in h
                else None,
            )
        payloads[family] = ProductPayload(
            folder=_path(p["payload"], base, "payload folder", ("folder",)),
            commands=parse_commands(
                p["install"],
                p.get("uninstall"),
                parse_exit_codes(p["exit_codes"]) if "exit_codes" in p else None,
                family=family,
                what=f"product '{name}'",
            ),
            health=health,
        )
    if not payloads:
        raise root.error("a product needs a payload for at least one OS family (windows, linux)")
    return Product(
        name=name,
        vendor=e["vendor"].text("vendor"),
        payloads=payloads,
        source=path,
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> Path: ...


_T = TypeVar("_T", bound=_Named)


def _load_folder(folder: Path, parse: Callable[[Path], _T], what: str) -> dict[str, _T]:
    kind = files.path_kind(folder)
    if kind == "missing":
        raise CatalogError(f"{what} folder does not exist", file=folder)
    files.check_kind(folder, ("folder",), f"{what} folder", CatalogError)
    found: dict[str, _T] = {}
    for path in sorted(folder.glob("*.yaml")):
        item = parse(path)
        if item.name in found:
            other = found[item.name].source
            raise CatalogError(
                f"{what} '{item.name}' is defined twice (also in {other})", file=path
            )
        found[item.name] = item
    return found


def load_catalog(images: Path, hardware: Path, products: Path) -> Catalog:
    """Read every definition in the three folders. Files are read in name order."""
    return Catalog(
        images=_load_folder(images, parse_image, "image"),
        hardware=_load_folder(hardware, parse_hardware, "hardware profile"),
        products=_load_folder(products, parse_product, "product"),
    )
