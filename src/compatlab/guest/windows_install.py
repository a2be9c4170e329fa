"""Install and uninstall command lines for Windows payloads.

Pure: no guest, no clock. The scenario runs the lines this module builds over its channel
(WinRM runs a command line through ``cmd.exe``), reads the exit code with :func:`classify`,
retries on :data:`RETRY_1618` (both from :mod:`.exit_codes`, re-exported here), and keeps
the file named by :attr:`InstallerCommand.log` as evidence (:mod:`.installer_log`). One
builder per payload kind:

=========  ==========================================================================
kind       install / uninstall
=========  ==========================================================================
``msi``    ``msiexec /i "P" /qn /norestart /l*v "LOG"`` / ``msiexec /x "P"|{GUID} ...``
``msu``    ``wusa.exe "P" /quiet /norestart /log:"LOG"`` /
           ``wusa.exe /uninstall /kb:NNN /quiet /norestart /log:"LOG"``
``driver`` ``pnputil.exe /add-driver "X.inf" /install`` /
           ``pnputil.exe /delete-driver oemN.inf /uninstall`` (see :func:`driver_uninstall`)
``exe``    ``"P" ARG ...`` with the installer's own silent arguments
``ps1``    ``powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "P"``
=========  ==========================================================================

Quoting is for ``cmd.exe``: every path is put in double quotes, where ``& | < > ^`` and spaces
are literal. Inside quotes cmd still expands ``%VAR%`` (and ``!VAR!`` under delayed
expansion), and a ``"`` ends the quoting, so a path holding ``"``, ``%``, ``!`` or a control
character is refused with :class:`UnsafePath` -- as are the characters no Windows file name can
hold (``< > | ? *``; ``*`` and ``?`` are allowed in the file name of a driver INF, which
pnputil expands). A line longer than cmd's 8191 characters is refused too.

None of these lines has run on Windows in this repository's tests: they are checked for shape
and quoting here. The flags are Microsoft's documented ones (msiexec, wusa, pnputil command-line
references); see ``images/recipes/windows/README.md`` for what was looked up and what is not
verified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PureWindowsPath
from typing import Final, Literal

from compatlab.guest.channel import encode_powershell
from compatlab.guest.exit_codes import (
    REBOOT_CODES,
    RETRY_1618,
    RETRY_CODES,
    SUCCESS_CODES,
    Outcome,
    RetryPolicy,
    classify,
    describe,
)
from compatlab.guest.quoting import UnsafeValue

__all__ = [
    "CMD_LINE_MAX",
    "DEFAULT_LOG_DIR",
    "KINDS",
    "REBOOT_CODES",
    "RETRY_1618",
    "RETRY_CODES",
    "SETUPAPI_LOG",
    "SUCCESS_CODES",
    "InstallerCommand",
    "Outcome",
    "PayloadKind",
    "RetryPolicy",
    "UnsafePath",
    "classify",
    "cmd_quote",
    "describe",
    "driver_uninstall",
    "install_command",
    "kb_number",
    "kind_of",
    "published_names",
    "uninstall_command",
]

PayloadKind = Literal["msi", "msu", "driver", "exe", "ps1"]
KINDS: Final[tuple[PayloadKind, ...]] = ("msi", "msu", "driver", "exe", "ps1")

#: cmd.exe's limit for one command line (characters).
CMD_LINE_MAX: Final = 8191
#: Where installer logs go unless the caller names a file; created by the command itself.
DEFAULT_LOG_DIR: Final = "C:\\compatlab\\logs"
#: pnputil has no log switch: the driver installer's log is SetupAPI's device log.
SETUPAPI_LOG: Final = "C:\\Windows\\INF\\setupapi.dev.log"


_EXTENSIONS: Final[Mapping[str, PayloadKind]] = {
    ".msi": "msi",
    ".msu": "msu",
    ".inf": "driver",
    ".exe": "exe",
    ".ps1": "ps1",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CMD_EXPANDS = re.compile(r'[%!"]')
_NOT_IN_NAMES = re.compile(r"[<>|]")
_WILDCARDS = re.compile(r"[*?]")
_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:\\|\\\\[^\\]+\\[^\\]+)")
_PRODUCT_CODE = re.compile(r"^\{[0-9A-Fa-f]{8}-(?:[0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}\}$")
_PROPERTY = re.compile(r"^[A-Z_][A-Z0-9_.]*$")
_OEM_INF = re.compile(r"^oem\d+\.inf$", re.IGNORECASE)
_INF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]*\.inf$", re.IGNORECASE)
_KB = re.compile(r"(?:^|[^A-Za-z0-9])kb(\d{6,8})(?![0-9])", re.IGNORECASE)
# An argument cmd and the program's argument parser read literally as one word.
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_\-.:\\/=,+@{}]+$")
_PUBLISHED = re.compile(r"^\s*Published Name\s*:\s*(oem\d+\.inf)\s*$", re.IGNORECASE | re.MULTILINE)


class UnsafePath(UnsafeValue):
    """A path or argument that cannot be carried through ``cmd.exe`` as one literal word."""


@dataclass(frozen=True)
class InstallerCommand:
    """One command line to run in the guest, and where its installer writes its log.

    ``command`` is what the channel runs (through ``cmd.exe``). ``log`` is the guest path of
    the installer's own log, to fetch after the command as evidence (None where the installer
    writes none: an ``exe`` or ``ps1`` whose caller named no log). ``script`` is the PowerShell
    an ``-EncodedCommand`` line carries, in clear, for the report.
    """

    kind: PayloadKind
    action: Literal["install", "uninstall"]
    command: str
    log: str | None
    script: str | None = None


# -- quoting ---------------------------------------------------------------------------------


def _check_characters(text: str, what: str, *, wildcards: bool = False) -> None:
    if not text:
        raise UnsafePath(f"{what} is empty")
    if _CONTROL.search(text):
        raise UnsafePath(f"{what} {text!r} holds a control character")
    if _CMD_EXPANDS.search(text):
        raise UnsafePath(f'{what} {text!r} holds ", % or !, which cmd.exe reads even inside quotes')
    if _NOT_IN_NAMES.search(text):
        raise UnsafePath(f"{what} {text!r} holds < > or |, which no Windows path can hold")
    if not wildcards and _WILDCARDS.search(text):
        raise UnsafePath(f"{what} {text!r} holds a wildcard (* or ?)")


def cmd_quote(path: str, *, what: str = "path", wildcards: bool = False) -> str:
    """An absolute Windows path in double quotes for ``cmd.exe``; refused if it cannot be.

    Always quoted, so spaces and ``& ^ ( )`` need nothing more. A trailing backslash is
    doubled: ``"D:\\dir\\"`` would read as an escaped quote to the program's argument parser.
    """
    _check_characters(path, what, wildcards=wildcards)
    if not _ABSOLUTE.match(path):
        raise UnsafePath(
            f"{what} {path!r} is not an absolute Windows path (C:\\... or \\\\server\\share\\...)"
        )
    if wildcards and _WILDCARDS.search(str(PureWindowsPath(path).parent)):
        raise UnsafePath(f"{what} {path!r}: wildcards only in the file name")
    if path.endswith("\\"):
        path += "\\"
    return f'"{path}"'


def _cmd_arg(argument: str) -> str:
    """One installer argument: as it is when plainly literal, else in double quotes."""
    if _PLAIN_ARG.match(argument):
        return argument
    _check_characters(argument, "argument", wildcards=True)
    if argument.endswith("\\"):
        argument += "\\"
    return f'"{argument}"'


def _line(command: str) -> str:
    if len(command) > CMD_LINE_MAX:
        raise UnsafePath(
            f"the command line is {len(command)} characters, more than cmd.exe's {CMD_LINE_MAX}"
        )
    return command


def kind_of(path: str) -> PayloadKind:
    """The payload kind by file extension: .msi, .msu, .inf (driver), .exe, .ps1."""
    suffix = PureWindowsPath(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(_EXTENSIONS)
        raise UnsafePath(
            f"cannot tell the payload kind of {path!r}: the extension is not one of {known}"
        ) from None


def kb_number(path: str) -> str:
    """The KB number in an .msu file name, e.g. ``windows11.0-kb5034441-x64.msu`` -> 5034441."""
    match = _KB.search(PureWindowsPath(path).name)
    if not match:
        raise UnsafePath(
            f"no KB number in {PureWindowsPath(path).name!r}: pass kb= to uninstall an .msu"
        )
    return match.group(1)


def _default_log(path: str, action: str, extension: str, log_dir: str) -> str:
    stem = PureWindowsPath(path).stem or "payload"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "payload"
    return f"{log_dir.rstrip(chr(92))}\\{stem}-{action}{extension}"


def _with_log_dir(command: str, log: str) -> str:
    """``command`` after creating the log's folder (msiexec fails with 1622 without it)."""
    folder = str(PureWindowsPath(log).parent)
    # "mkdir" fails harmlessly when the folder exists; "&" runs the installer either way and
    # the line's exit code is the installer's.
    return f"mkdir {cmd_quote(folder, what='log folder')} 2>nul & {command}"


def _properties(properties: Mapping[str, str] | None) -> str:
    if not properties:
        return ""
    parts = []
    for name, value in properties.items():
        if not _PROPERTY.match(name):
            raise UnsafePath(
                f"MSI property {name!r}: public properties are upper case (A-Z, 0-9, _ and .)"
            )
        if value:
            _check_characters(value, f"MSI property {name}", wildcards=True)
        parts.append(f'{name}="{value}"')
    return " " + " ".join(parts)


# -- builders --------------------------------------------------------------------------------


def install_command(
    path: str,
    *,
    kind: PayloadKind | None = None,
    log: str | None = None,
    log_dir: str = DEFAULT_LOG_DIR,
    args: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
    subdirs: bool = False,
) -> InstallerCommand:
    """The line that installs the payload at ``path`` (absolute, in the guest).

    ``kind`` defaults to :func:`kind_of`. ``log`` is the installer log's guest path (default:
    ``<log_dir>\\<name>-install.log``, ``.evtx`` for wusa, whose log is an event log); for
    ``exe`` and ``ps1`` it is only recorded -- pass the installer's own log switch in ``args``.
    ``args`` go to an ``exe`` or ``ps1``; ``properties`` (``NAME=value``) to an ``msi``;
    ``subdirs`` lets pnputil search the INF's subfolders (with ``*.inf``).
    """
    kind = kind or kind_of(path)
    if args and kind not in ("exe", "ps1"):
        raise ValueError(f"args are for exe and ps1 payloads, not {kind}")
    if properties and kind != "msi":
        raise ValueError(f"properties are for msi payloads, not {kind}")
    if subdirs and kind != "driver":
        raise ValueError(f"subdirs is for driver payloads, not {kind}")
    if kind == "msi":
        log = log or _default_log(path, "install", ".log", log_dir)
        line = (
            f"msiexec.exe /i {cmd_quote(path)} /qn /norestart /l*v {cmd_quote(log, what='log')}"
            f"{_properties(properties)}"
        )
        return InstallerCommand(kind, "install", _line(_with_log_dir(line, log)), log)
    if kind == "msu":
        log = log or _default_log(path, "install", ".evtx", log_dir)
        line = f"wusa.exe {cmd_quote(path)} /quiet /norestart /log:{cmd_quote(log, what='log')}"
        return InstallerCommand(kind, "install", _line(_with_log_dir(line, log)), log)
    if kind == "driver":
        if PureWindowsPath(path).suffix.lower() != ".inf":
            raise UnsafePath(f"a driver payload is installed from its .inf, not {path!r}")
        line = f"pnputil.exe /add-driver {cmd_quote(path, wildcards=True)}"
        line += " /subdirs /install" if subdirs else " /install"
        return InstallerCommand(kind, "install", _line(line), log or SETUPAPI_LOG)
    return _program(kind, "install", path, args, log)


def uninstall_command(
    path: str | None = None,
    *,
    kind: PayloadKind | None = None,
    product_code: str | None = None,
    kb: str | None = None,
    inf_name: str | None = None,
    log: str | None = None,
    log_dir: str = DEFAULT_LOG_DIR,
    args: Sequence[str] = (),
    force: bool = False,
) -> InstallerCommand:
    """The line that removes a payload again.

    - ``msi``: ``msiexec /x`` of ``product_code`` (``{GUID}``) if given, else of the package
      at ``path``;
    - ``msu``: ``wusa /uninstall /kb:`` with ``kb``, or the KB number in ``path``'s name;
    - ``driver``: see :func:`driver_uninstall` (``inf_name``: ``oemN.inf`` or the package's
      original INF name, e.g. ``sensor.inf``; default: ``path``'s file name); ``force`` adds
      pnputil's ``/force`` (delete even while a device uses it);
    - ``exe`` / ``ps1``: the uninstaller at ``path`` with its ``args``.
    """
    if kind is None:
        if path is None:
            if product_code is not None:
                kind = "msi"
            elif kb is not None:
                kind = "msu"
            elif inf_name is not None:
                kind = "driver"
            else:
                raise ValueError("nothing to uninstall: give a path, product_code, kb or inf_name")
        else:
            kind = kind_of(path)
    if kind == "msi":
        if product_code is not None:
            if not _PRODUCT_CODE.match(product_code):
                raise UnsafePath(f"product code {product_code!r} is not a {{GUID}}")
            target, name = product_code, product_code.strip("{}")
        elif path is not None:
            target, name = cmd_quote(path), path
        else:
            raise ValueError("an msi uninstall needs the package path or its product code")
        log = log or _default_log(name, "uninstall", ".log", log_dir)
        line = f"msiexec.exe /x {target} /qn /norestart /l*v {cmd_quote(log, what='log')}"
        return InstallerCommand(kind, "uninstall", _line(_with_log_dir(line, log)), log)
    if kind == "msu":
        number = kb if kb is not None else kb_number(path or "")
        number = number.upper().removeprefix("KB")
        if not re.fullmatch(r"\d{6,8}", number):
            raise UnsafePath(f"KB number {number!r} is not 6 to 8 digits")
        log = log or f"{log_dir.rstrip(chr(92))}\\KB{number}-uninstall.evtx"
        line = (
            f"wusa.exe /uninstall /kb:{number} /quiet /norestart /log:{cmd_quote(log, what='log')}"
        )
        return InstallerCommand(kind, "uninstall", _line(_with_log_dir(line, log)), log)
    if kind == "driver":
        inf = inf_name or (PureWindowsPath(path).name if path else "")
        if not inf:
            raise ValueError("a driver uninstall needs the INF name (oemN.inf or original name)")
        return driver_uninstall(inf, force=force, log=log)
    if path is None:
        raise ValueError(f"an {kind} uninstall needs the uninstaller's path")
    return _program(kind, "uninstall", path, args, log)


def _program(
    kind: PayloadKind,
    action: Literal["install", "uninstall"],
    path: str,
    args: Sequence[str],
    log: str | None,
) -> InstallerCommand:
    if log is not None:
        cmd_quote(log, what="log")  # refused like any path the lab will fetch
    tail = "".join(f" {_cmd_arg(a)}" for a in args)
    if kind == "exe":
        return InstallerCommand(kind, action, _line(f"{cmd_quote(path)}{tail}"), log)
    if kind == "ps1":
        line = (
            "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
            f"-File {cmd_quote(path)}{tail}"
        )
        return InstallerCommand(kind, action, _line(line), log)
    raise ValueError(f"unknown payload kind {kind!r}; one of {', '.join(KINDS)}")


# -- drivers: finding the published name ------------------------------------------------------

# Get-WindowsDriver names each third-party package by its published name (Driver: oemN.inf)
# and the path of its INF in the driver store (OriginalFileName: ...\sensor.inf_amd64_<hash>\
# sensor.inf): the original name, whatever language Windows speaks. pnputil's exit code of
# each deletion is kept; the worst wins (failure > reboot > success). No package: exit 2
# (ERROR_FILE_NOT_FOUND), a failure. No $ErrorActionPreference = 'Stop': under Windows
# PowerShell 5.1 with redirected output, a native program's stderr line would then throw.
_DRIVER_UNINSTALL_SCRIPT: Final = """\
$name = '%(name)s'
$packages = @(Get-WindowsDriver -Online -ErrorAction Stop | Where-Object {
    [IO.Path]::GetFileName($_.OriginalFileName) -ieq $name -or $_.Driver -ieq $name })
if ($packages.Count -eq 0) { [Console]::Error.WriteLine("no driver package named $name"); exit 2 }
$worst = 0
foreach ($package in $packages) {
    Write-Output "pnputil /delete-driver $($package.Driver) (from $name)"
    & pnputil.exe /delete-driver $package.Driver /uninstall%(force)s
    $code = $LASTEXITCODE
    if ($code -ne 0 -and $code -ne 3010 -and $code -ne 1641) { $worst = $code }
    elseif ($code -ne 0 -and $worst -eq 0) { $worst = $code }
}
exit $worst
"""


def driver_uninstall(
    inf_name: str, *, force: bool = False, log: str | None = None
) -> InstallerCommand:
    """Remove a driver package: ``pnputil /delete-driver oemN.inf /uninstall``.

    Windows renames an INF when it enters the driver store: ``sensor.inf`` is *published* as
    ``oemN.inf``, N chosen at install. Given ``oemN.inf``, the line is pnputil itself. Given the
    original name, the line is a PowerShell (``-EncodedCommand``) that finds the published
    name(s) with ``Get-WindowsDriver -Online`` (its ``OriginalFileName`` ends in the original
    name; locale-independent, unlike pnputil's ``/enum-drivers`` text) and runs pnputil for
    each. The published name is also in the install's output: :func:`published_names`.
    """
    suffix = " /force" if force else ""
    if _OEM_INF.match(inf_name):
        line = f"pnputil.exe /delete-driver {inf_name.lower()} /uninstall{suffix}"
        return InstallerCommand("driver", "uninstall", line, log or SETUPAPI_LOG)
    if not _INF_NAME.match(inf_name):
        raise UnsafePath(
            f"driver INF name {inf_name!r}: give a plain file name such as sensor.inf or oem12.inf"
        )
    script = _DRIVER_UNINSTALL_SCRIPT % {"name": inf_name.replace("'", "''"), "force": suffix}
    line = (
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
        f"-EncodedCommand {encode_powershell(script)}"
    )
    return InstallerCommand("driver", "uninstall", _line(line), log or SETUPAPI_LOG, script)


def published_names(output: str) -> tuple[str, ...]:
    """The ``oemN.inf`` names in ``pnputil /add-driver`` output (English Windows only).

    pnputil prints ``Published Name: oem12.inf`` for each package it added; the label is
    translated on other display languages, where this finds nothing: use
    :func:`driver_uninstall` with the original INF name there.
    """
    return tuple(dict.fromkeys(m.group(1).lower() for m in _PUBLISHED.finditer(output)))
