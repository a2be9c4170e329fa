"""How a payload is installed and removed: command lines, Windows packages, exit codes.

A product's payload (``configs/products/*.yaml``, per OS family) and the candidate (a matrix's
``candidate``, per OS family) say how they are installed in one of two ways:

- a command line written by hand (``install: sh {payload}/install.sh``), ``{payload}`` being
  where the lab mounts the payload medium; ``uninstall`` is a command line too;
- on Windows, a *package*: ``install: {kind: msi, file: sensor.msi}``. The lab builds the lines
  with :mod:`compatlab.guest.windows_install` (``msiexec /i ... /l*v LOG``, ``wusa``,
  ``pnputil``, the installer's own silent arguments), keeps the installer's log as evidence,
  and builds the uninstall line too for ``msi``, ``msu`` and ``driver``. ``exe`` and ``ps1``
  have no standard uninstall: ``uninstall`` stays a command line there. A hand-written
  ``uninstall`` next to a package is used as written.

The keys of a package, besides ``kind`` and ``file`` (a path inside the payload):

=========  ==================================================================================
kind       keys
=========  ==================================================================================
``msi``    ``properties`` (public MSI properties, ``NAME: value``), ``product_code`` ({GUID},
           to uninstall by; default: the package file)
``msu``    ``kb`` (the update's KB number; default: the one in the file name)
``driver`` none: ``file`` is the driver package's ``.inf``
``exe``    ``args`` (the installer's silent arguments), ``log`` (where it writes its log)
``ps1``    ``args``, ``log``
=========  ==================================================================================

A package without ``exit_codes`` uses Windows Installer's table (:data:`WINDOWS_EXIT_CODES`).
Everything a package holds is checked when it is loaded, by building its lines (errors at the
file and line of the value); none of these lines has run on a real Windows here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PureWindowsPath
from typing import Final, Literal, cast

from compatlab._yaml import Node
from compatlab.errors import InputError
from compatlab.guest.exit_codes import REBOOT_CODES, SUCCESS_CODES
from compatlab.guest.quoting import UnsafeValue
from compatlab.guest.windows_install import (
    KINDS,
    InstallerCommand,
    PayloadKind,
    install_command,
    kb_number,
    kind_of,
    uninstall_command,
)

__all__ = [
    "BUILT_UNINSTALL",
    "COMMAND_CHARACTERS",
    "EXIT_CODE_RANGE",
    "WINDOWS_EXIT_CODES",
    "Action",
    "Commands",
    "ExitCodes",
    "WindowsPackage",
    "installer_line",
    "package_command",
    "parse_commands",
    "parse_exit_codes",
]

Action = Literal["install", "uninstall"]

# An installer's exit code, as Windows (a DWORD, often shown signed) and Linux give it.
EXIT_CODE_RANGE: Final = (-(2**31), 2**32 - 1)
# Commands may be shell scripts written as a YAML block: tabs and line breaks are theirs.
COMMAND_CHARACTERS: Final = "\t\n"
#: The kinds whose uninstall line the lab knows; exe and ps1 need one written by hand.
BUILT_UNINSTALL: Final[tuple[PayloadKind, ...]] = ("msi", "msu", "driver")
# Where the lab checks a package's lines at load: the Windows images' payload drive. At run
# time the lines are built again with the cell's image's own payload path.
_PROBE_PATH: Final = "D:\\"
_KEYS: Final[Mapping[PayloadKind, tuple[str, ...]]] = {
    "msi": ("properties", "product_code"),
    "msu": ("kb",),
    "driver": (),
    "exe": ("args", "log"),
    "ps1": ("args", "log"),
}
_ALL_KEYS: Final = ("kind", "file", "args", "log", "properties", "product_code", "kb")
_MAX_ARGS: Final = 64  # an installer's silent arguments are a handful; more is a mistake


@dataclass(frozen=True)
class ExitCodes:
    """What an installer's exit code means. Anything not listed is a failure."""

    success: tuple[int, ...] = (0,)
    reboot: tuple[int, ...] = ()

    def meaning(self, code: int) -> Literal["success", "reboot", "failure"]:
        if code in self.success:
            return "success"
        if code in self.reboot:
            return "reboot"
        return "failure"


#: Windows Installer's codes (shared by wusa and pnputil): 0 done; 3010 and 1641 done, with a
#: restart to come. For Windows packages that declare no ``exit_codes``.
WINDOWS_EXIT_CODES: Final = ExitCodes(success=SUCCESS_CODES, reboot=REBOOT_CODES)


@dataclass(frozen=True)
class WindowsPackage:
    """A Windows payload declared by kind: the lab builds its install and uninstall lines.

    ``file`` is relative to the payload's root, with backslashes (``drivers\\sensor.inf``).
    """

    kind: PayloadKind
    file: str
    args: tuple[str, ...] = ()
    properties: tuple[tuple[str, str], ...] = ()
    product_code: str | None = None
    kb: str | None = None
    log: str | None = None


@dataclass(frozen=True)
class Commands:
    """How a payload is installed and removed.

    ``install`` and ``uninstall`` are command lines written by hand (``{payload}`` is where the
    payload is mounted); None where ``package`` builds that line instead.
    """

    install: str | None
    uninstall: str | None
    exit_codes: ExitCodes = field(default_factory=ExitCodes)
    package: WindowsPackage | None = None

    def __post_init__(self) -> None:
        if self.package is None and (self.install is None or self.uninstall is None):
            raise ValueError("commands without a package need install and uninstall lines")
        if self.uninstall is None and self.package and self.package.kind not in BUILT_UNINSTALL:
            raise ValueError(f"{_a(self.package.kind)} package needs an uninstall line")


def _a(kind: str) -> str:
    """``kind`` with its article, as said aloud: an msi, an exe, a driver, a ps1."""
    return f"an {kind}" if kind in ("msi", "msu", "exe") else f"a {kind}"


# -- building the lines -----------------------------------------------------------------------


def _in_payload(payload_path: str, file: str) -> str:
    return f"{payload_path.rstrip(chr(92))}\\{file}"


def package_command(package: WindowsPackage, action: Action, payload_path: str) -> InstallerCommand:
    """The line that installs (or removes) ``package`` from the payload at ``payload_path``.

    Raises :class:`~compatlab.guest.quoting.UnsafeValue` (or ValueError) for a value the line
    cannot carry; a loaded package only does so for a payload path that cannot be quoted.
    """
    path = _in_payload(payload_path, package.file)
    if action == "install":
        return install_command(
            path,
            kind=package.kind,
            args=package.args,
            properties=dict(package.properties),
            log=package.log,
        )
    if package.kind == "msi":
        if package.product_code is not None:
            return uninstall_command(kind="msi", product_code=package.product_code)
        return uninstall_command(path, kind="msi")
    if package.kind == "msu":
        return uninstall_command(kind="msu", kb=package.kb or kb_number(path))
    if package.kind == "driver":
        return uninstall_command(kind="driver", inf_name=PureWindowsPath(path).name)
    raise ValueError(f"{_a(package.kind)} package has no standard uninstall line")


def installer_line(commands: Commands, action: Action, payload_path: str) -> InstallerCommand | str:
    """What runs for ``action``: the hand-written line with ``{payload}`` filled in, or the line
    built from the package (with the guest path of its installer's log)."""
    written = commands.install if action == "install" else commands.uninstall
    if written is not None:
        # str.replace, not format: installer command lines hold braces of their own. The user's
        # command quotes {payload} as its shell wants it; the path itself is checked at load.
        return written.replace("{payload}", payload_path)
    assert commands.package is not None  # Commands refuses anything else
    return package_command(commands.package, action, payload_path)


# -- parsing ------------------------------------------------------------------------------------


def _int_list(node: Node, what: str) -> tuple[int, ...]:
    low, high = EXIT_CODE_RANGE
    out = []
    for item in node.items(what):
        code = item.integer(what)
        if not low <= code <= high:
            raise item.error(f"{what}: {code} is not an exit code ({low} to {high})")
        out.append(code)
    return tuple(out)


def parse_exit_codes(node: Node) -> ExitCodes:
    entries = node.mapping("exit_codes", optional=("success", "reboot"))
    return ExitCodes(
        success=_int_list(entries["success"], "success codes") if "success" in entries else (0,),
        reboot=_int_list(entries["reboot"], "reboot codes") if "reboot" in entries else (),
    )


def _command(node: Node, what: str) -> str:
    if node.is_mapping():
        raise node.error(
            f"{what} is a command line here",
            "only install may declare a Windows package (kind, file)",
        )
    return node.text(what, allow=COMMAND_CHARACTERS)


def parse_commands(
    install: Node,
    uninstall: Node | None,
    exit_codes: ExitCodes | None,
    *,
    family: str,
    what: str,
) -> Commands:
    """A payload's commands for one OS ``family``: written by hand, or a Windows package.

    ``uninstall`` is None where the file has none for this family; ``exit_codes`` None where
    it declares none. ``what`` names the payload in messages (``candidate``, ``product 'av'``).
    """
    if install.is_mapping():
        if family != "windows":
            raise install.error(
                f"{what}: a package (kind, file) is for Windows payloads, not {family}",
                f"write the {family} install command",
            )
        package = _package(install, what)
        written = _command(uninstall, f"{what} uninstall") if uninstall is not None else None
        if written is None and package.kind not in BUILT_UNINSTALL:
            raise install.error(
                f"{what}: {_a(package.kind)} package has no standard uninstall",
                f"write the {family} uninstall command",
            )
        return Commands(None, written, exit_codes or WINDOWS_EXIT_CODES, package)
    if uninstall is None:
        raise install.error(f"{what} has no {family} uninstall command")
    return Commands(
        install=_command(install, f"{what} install"),
        uninstall=_command(uninstall, f"{what} uninstall"),
        exit_codes=exit_codes or ExitCodes(),
    )


def _unsafe(node: Node, exc: Exception, what: str) -> InputError:
    return node.error(f"{what}: {exc}")


def _package(node: Node, what: str) -> WindowsPackage:
    """A package declaration, each value checked by building the line that carries it."""
    entries = node.mapping(f"{what} package", required=("kind", "file"), optional=_ALL_KEYS)
    kind = cast(PayloadKind, entries["kind"].choice(KINDS, "package kind"))
    for key, value in entries.items():
        if key not in ("kind", "file") and key not in _KEYS[kind]:
            allowed = ", ".join(_KEYS[kind]) or "nothing but kind and file"
            raise value.error(
                f"'{key}' does not apply to {_a(kind)} package", f"{kind} takes {allowed}"
            )
    file = _file(entries["file"], kind)
    probe = _in_payload(_PROBE_PATH, file)
    args = tuple(_arg(item, kind, probe) for item in _items(entries, "args"))
    properties = _properties(entries["properties"], probe) if "properties" in entries else ()
    product_code = _value(
        entries, "product_code", lambda v: uninstall_command(kind="msi", product_code=v)
    )
    kb = _value(
        entries,
        "kb",
        lambda v: uninstall_command(kind="msu", kb=v),
        lambda v: v.upper().removeprefix("KB"),
    )
    log = _value(entries, "log", lambda v: install_command(probe, kind=kind, log=v))
    package = WindowsPackage(kind, file, args, properties, product_code, kb, log)
    if kind == "msu" and kb is None:
        try:
            kb_number(file)
        except UnsafeValue as exc:
            raise entries["file"].error(str(exc), "add kb: NNNNNNN to the package") from exc
    try:  # the whole lines: what no single value breaks, such as cmd.exe's line length
        actions: tuple[Action, ...] = ("install", "uninstall")
        for action in actions if kind in BUILT_UNINSTALL else actions[:1]:
            package_command(package, action, _PROBE_PATH)
    except (UnsafeValue, ValueError) as exc:
        raise _unsafe(node, exc, f"{what} package") from exc
    return package


def _value(
    entries: Mapping[str, Node],
    key: str,
    check: Callable[[str], object],
    clean: Callable[[str], str] = str,
) -> str | None:
    """The text at ``key`` (None if absent), cleaned and checked by building a line with it."""
    if key not in entries:
        return None
    value = clean(entries[key].text(key))
    try:
        check(value)
    except (UnsafeValue, ValueError) as exc:
        raise _unsafe(entries[key], exc, key) from exc
    return value


def _items(entries: Mapping[str, Node], key: str) -> list[Node]:
    if key not in entries:
        return []
    items = entries[key].items(key)
    if len(items) > _MAX_ARGS:
        raise entries[key].error(f"{key} holds {len(items)} arguments, more than {_MAX_ARGS}")
    return items


_RELATIVE_PART = re.compile(r"^[^\\/:]+$")


def _file(node: Node, kind: PayloadKind) -> str:
    """``file`` as a relative Windows path inside the payload, checked for ``kind``."""
    text = node.text("file")
    parts = re.split(r"[\\/]", text)
    if text.startswith(("\\", "/")) or ":" in text:
        raise node.error(
            f"file '{text}' is not a path inside the payload",
            "write it relative to the payload folder, e.g. sensor.msi or drivers/sensor.inf",
        )
    if any(part in ("", ".", "..") or not _RELATIVE_PART.match(part) for part in parts):
        raise node.error(f"file '{text}' has an empty, '.' or '..' part", "name the file plainly")
    file = "\\".join(parts)
    try:
        found = kind_of(file)
        install_command(_in_payload(_PROBE_PATH, file), kind=kind)
    except (UnsafeValue, ValueError) as exc:
        raise _unsafe(node, exc, "file") from exc
    if found != kind:
        want = ".inf" if kind == "driver" else f".{kind}"
        raise node.error(
            f"file '{text}' is not for {_a(kind)} package", f"kind {kind} installs a {want} file"
        )
    return file


def _arg(node: Node, kind: PayloadKind, probe: str) -> str:
    arg = node.text("argument")
    try:
        install_command(probe, kind=kind, args=[arg])
    except (UnsafeValue, ValueError) as exc:
        raise _unsafe(node, exc, "argument") from exc
    return arg


def _properties(node: Node, probe: str) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in node.mapping("properties", optional=None).items():
        text = value.text(f"MSI property {name}")
        try:
            install_command(probe, kind="msi", properties={name: text})
        except (UnsafeValue, ValueError) as exc:
            raise _unsafe(value, exc, "properties") from exc
        out.append((name, text))
    return tuple(out)
