"""Crash evidence from inside a Windows guest, read after a boot completed.

The hypervisor sees a bugcheck as it happens (``bugcheck.py``); this module reads what Windows
itself kept about it, for the crashes the hypervisor cannot see (no ``hyperv`` panic device, a
hard reset, a boot-start driver that failed quietly) and for the details it does not carry:

- the System log: Kernel-Power 41 (the system rebooted without shutting down cleanly; its
  ``BugcheckCode`` -- decimal -- and ``BugcheckParameter1..4`` when a bugcheck caused it),
  EventLog 6008 (the previous shutdown was unexpected), WER-SystemErrorReporting 1001 (the
  computer has rebooted from a bugcheck: code and parameters in its text), Service Control
  Manager 7000 (a service failed to start) and 7026 (boot-start or system-start drivers did not
  load);
- the crash dumps: ``%SystemRoot%\\Minidump\\*.dmp`` and ``%SystemRoot%\\MEMORY.DMP``;
- ``LastBootUpTime`` and the guest's own clock (``now``).

One PowerShell script (:data:`EVIDENCE_SCRIPT`) gathers all of it in one round trip over any
:class:`~compatlab.guest.channel.Channel` and prints one JSON document; :func:`parse_evidence`
turns that into frozen dataclasses, :func:`findings` into one line per sign of a crash and
:func:`bugcheck` into the stop code. Output that is not the document the script prints raises
:class:`~compatlab.errors.GuestError`: the lab failed to read the guest, the guest did not crash.

``since`` is compared on the guest's clock, which is not the controller's (a Windows guest's RTC
often runs on local time). Take it from an earlier call's :attr:`WindowsEvidence.now`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PureWindowsPath
from typing import Final

from compatlab.bugcheck import bugcheck_name, format_code
from compatlab.errors import GuestError
from compatlab.guest.channel import Channel
from compatlab.model import Bugcheck
from compatlab.signature import windows_signature

__all__ = [
    "CMD_LINE_BUDGET",
    "EVENT_IDS",
    "EVIDENCE_SCRIPT",
    "DumpFile",
    "WindowsEvent",
    "WindowsEvidence",
    "bugcheck",
    "crash_evidence",
    "evidence_script",
    "findings",
    "parse_evidence",
]

# System log event ids the script asks for, and who writes them. Another provider may use the
# same id in the System log; only these (id, provider) pairs count as evidence.
KERNEL_POWER: Final = "Microsoft-Windows-Kernel-Power"
EVENTLOG: Final = "EventLog"
# Windows 7 / 2008 R2 show the 1001 source as "BugCheck"; Get-WinEvent names the provider.
WER_SYSTEM: Final = frozenset({"Microsoft-Windows-WER-SystemErrorReporting", "BugCheck"})
SCM: Final = "Service Control Manager"
EVENT_IDS: Final = (41, 6008, 1001, 7000, 7026)
# Enough for a golden image's whole history of these events; Get-WinEvent returns newest first.
MAX_EVENTS: Final = 256

# Over WinRM a command runs through cmd.exe, whose command line stops at 8191 characters, and
# -EncodedCommand spends 8/3 of a character per script character: this script is sent without
# its comments and indentation (see _compact), and must stay within CMD_LINE_BUDGET so.
CMD_LINE_BUDGET: Final = 8191

# Filled with %-formatting: a literal percent sign in it must be written %%. No here-strings, and
# no line that starts with "#" but a comment: _compact drops those lines.
EVIDENCE_SCRIPT: Final = """\
# compatlab crash evidence: one compressed JSON document on stdout, nothing else.
# Written for Windows PowerShell 5.1 (the powershell.exe every supported Windows has).
$ErrorActionPreference = 'Stop'
# Progress records would reach the controller as CLIXML on stderr, and slow the CIM query.
$ProgressPreference = 'SilentlyContinue'
# 5.1's type data gives arrays an extra Count property, with which ConvertTo-Json may print an
# array as {"value":[...],"Count":n}. Not there (PowerShell 7): nothing to remove.
try { Remove-TypeData -TypeName System.Array } catch { }

# Dates leave as UTC ISO 8601: 5.1's ConvertTo-Json would write "\\/Date(ms)\\/".
function ConvertTo-IsoUtc([datetime]$Date) { $Date.ToUniversalTime().ToString('o') }

# Filled in by the controller: '' (everything) or a UTC time in the guest's clock.
$sinceText = '%(since)s'
$since = $null
if ($sinceText) {
    $since = [datetime]::ParseExact($sinceText, 'o', [Globalization.CultureInfo]::InvariantCulture,
        [Globalization.DateTimeStyles]::RoundtripKind)
}
# A source that cannot be read is reported, not fatal: the other sources still count.
$problems = New-Object 'System.Collections.Generic.List[string]'

# -- the System log ---------------------------------------------------------------------------
$filter = @{ LogName = 'System'; Id = %(event_ids)s }
if ($since) { $filter.StartTime = $since }
$records = @()
try {
    # "No events were found" is an error to Get-WinEvent; here it is the good news.
    $records = @(Get-WinEvent -FilterHashtable $filter -MaxEvents %(max_events)d `
        -ErrorAction SilentlyContinue -ErrorVariable readErrors)
    foreach ($err in $readErrors) {
        if ($err.FullyQualifiedErrorId -notlike 'NoMatchingEventsFound*') {
            $problems.Add("System log: $err")
        }
    }
} catch {
    $problems.Add("System log: $_")
}
$events = @(foreach ($record in $records) {
    # The event's own fields, by name (BugcheckCode, param1, ...); classic events such as 6008
    # have unnamed ones, numbered here from 1. SelectNodes, not the XML adapter: the adapter
    # hands back a bare string for an element without attributes.
    $xml = [xml]$record.ToXml()
    $data = [ordered]@{}
    $n = 0
    $path = "/*[local-name()='Event']/*[local-name()='EventData']/*[local-name()='Data']"
    foreach ($node in $xml.SelectNodes($path)) {
        $n++
        $name = $node.GetAttribute('Name')
        if (-not $name) { $name = [string]$n }
        $data[$name] = $node.InnerText
    }
    [pscustomobject]@{
        Id       = $record.Id
        Provider = $record.ProviderName
        Time     = ConvertTo-IsoUtc $record.TimeCreated
        # $null when the provider's message file is gone (an uninstalled driver's events).
        Message  = [string]$record.Message
        Data     = $data
    }
})

# -- crash dumps --------------------------------------------------------------------------------
$dumps = @(foreach ($pattern in "$env:SystemRoot\\Minidump\\*.dmp", "$env:SystemRoot\\MEMORY.DMP") {
    # No folder, no file: the normal case. Anything else (access denied) is a problem.
    $files = @(Get-ChildItem -Path $pattern -Force -ErrorAction SilentlyContinue `
        -ErrorVariable listErrors)
    foreach ($err in $listErrors) {
        if ($err.FullyQualifiedErrorId -notlike 'PathNotFound*') {
            $problems.Add("${pattern}: $err")
        }
    }
    foreach ($file in $files) {
        if ($since -and $file.LastWriteTimeUtc -lt $since.ToUniversalTime()) { continue }
        [pscustomobject]@{
            Path = $file.FullName
            Size = $file.Length
            Time = ConvertTo-IsoUtc $file.LastWriteTime
        }
    }
})

# -- this boot ----------------------------------------------------------------------------------
$lastBoot = $null
try {
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $lastBoot = ConvertTo-IsoUtc $os.LastBootUpTime
} catch {
    $problems.Add("Win32_OperatingSystem: $_")
}

$evidence = [pscustomobject]@{
    Now            = ConvertTo-IsoUtc (Get-Date)
    LastBootUpTime = $lastBoot
    Events         = $events
    Dumps          = $dumps
    Problems       = $problems.ToArray()
}
# -InputObject, not the pipeline: piped, an array of one would be unrolled into an object.
$json = ConvertTo-Json -InputObject $evidence -Depth 4 -Compress
# ASCII only, so no console code page can mangle it (6008's dates hold U+200E marks).
[regex]::Replace($json, '[^\\x00-\\x7F]', [Text.RegularExpressions.MatchEvaluator]{
    param($m) '\\u{0:x4}' -f [int][char]$m.Value
})
"""


@dataclass(frozen=True)
class WindowsEvent:
    """One System log event the script returned.

    ``message`` is the first line of the rendered message, ``detail`` the rest joined into one
    line (7000's reason). ``data`` is the event's own fields by name (unnamed ones by position,
    from ``"1"``). ``bugcheck`` is set for a Kernel-Power 41 with a non-zero ``BugcheckCode`` and
    for a WER 1001; ``services`` holds the service (7000: display name) or drivers (7026) that
    failed to start.
    """

    id: int
    provider: str
    time: datetime
    message: str
    detail: str = ""
    data: Mapping[str, str] = field(default_factory=dict)
    bugcheck: Bugcheck | None = None
    services: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """Who wrote it, as people say it: ``Kernel-Power``, ``WER``, ``SCM``, ``EventLog``."""
        if self.provider == KERNEL_POWER:
            return "Kernel-Power"
        if self.provider in WER_SYSTEM:
            return "WER"
        if self.provider == SCM:
            return "SCM"
        return self.provider


@dataclass(frozen=True)
class DumpFile:
    """A crash dump the guest kept: its full path, size in bytes and last write time (UTC)."""

    path: str
    size: int
    time: datetime

    @property
    def name(self) -> str:
        """The file name, e.g. ``112325-7031-01.dmp``."""
        return PureWindowsPath(self.path).name

    @property
    def kind(self) -> str:
        """``minidump`` for ``Minidump\\*.dmp``, else ``memory dump`` (``MEMORY.DMP``)."""
        parent = PureWindowsPath(self.path).parent.name
        return "minidump" if parent.lower() == "minidump" else "memory dump"


@dataclass(frozen=True)
class WindowsEvidence:
    """What a Windows guest kept about crashes since a moment of its own clock.

    ``events`` are in time order, oldest first. ``now`` is the guest's clock when the script
    ran (pass it as the next call's ``since``); ``last_boot`` its ``LastBootUpTime``.
    ``problems`` names the sources the script could not read: an empty answer from them does
    not mean "no crash".
    """

    now: datetime | None
    last_boot: datetime | None
    events: tuple[WindowsEvent, ...] = ()
    dumps: tuple[DumpFile, ...] = ()
    problems: tuple[str, ...] = ()


# -- running it ------------------------------------------------------------------------------


def evidence_script(since: datetime | None) -> str:
    """:data:`EVIDENCE_SCRIPT` for events and dumps at or after ``since`` (None: all of them).

    Returned as sent: without comments and indentation, to fit a cmd.exe command line.

    ``since`` must be timezone-aware: a naive time names no instant, and guessing the zone is
    how a crash slips out of the window.
    """
    if since is None:
        text = ""
    else:
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError(f"since must be timezone-aware, not {since!r}")
        utc = since.astimezone(UTC)
        # .NET's round-trip format ('o'), which ParseExact wants to the digit: 7 decimals.
        text = f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}0Z"
    script = EVIDENCE_SCRIPT % {
        "since": text,
        "event_ids": ", ".join(str(i) for i in EVENT_IDS),
        "max_events": MAX_EVENTS,
    }
    return _compact(script)


def _compact(script: str) -> str:
    """``script`` without comment lines, blank lines and indentation: what is sent."""
    lines = (line.strip() for line in script.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#")) + "\n"


def crash_evidence(
    channel: Channel,
    *,
    since: datetime | None,
    timeout: float = 120.0,
    domain: str | None = None,
) -> WindowsEvidence:
    """Run :data:`EVIDENCE_SCRIPT` in the guest behind ``channel`` and parse what it printed.

    ``domain`` names the guest in errors. Raises :class:`~compatlab.errors.GuestError` when the
    script fails or prints something else than its document (and the channel's own errors).
    """
    result = channel.run(evidence_script(since), timeout=timeout, shell="powershell")
    if not result.succeeded:
        reason = (result.stderr.strip() or result.stdout.strip() or "no output")[:500]
        raise GuestError(
            f"the crash evidence script failed (exit {result.exit_code}): {reason}",
            channel=channel.name,
            domain=domain,
        )
    return parse_evidence(result.stdout, channel=channel.name, domain=domain)


# -- parsing ---------------------------------------------------------------------------------


class _Malformed(ValueError):
    """The script's output is not its document; becomes a GuestError at parse_evidence."""


def parse_evidence(
    text: str, *, channel: str = "unknown", domain: str | None = None
) -> WindowsEvidence:
    """The JSON document :data:`EVIDENCE_SCRIPT` prints -> :class:`WindowsEvidence`.

    Raises :class:`~compatlab.errors.GuestError` (of ``channel``, for ``domain``) when ``text``
    is not JSON or not of the document's shape. Two quirks of Windows PowerShell 5.1 are
    accepted although the script avoids them: a list of one printed as its only element, and
    dates as ``\\/Date(ms)\\/``.
    """
    body = text.lstrip("\ufeff").strip()
    try:
        document = json.loads(body)
        return _evidence(document)
    except ValueError as exc:  # json.JSONDecodeError and _Malformed; a bug stays a bug
        shown = body if len(body) <= 200 else body[:200] + "..."
        raise GuestError(
            f"the crash evidence script printed no evidence document ({exc}): {shown!r}",
            channel=channel,
            domain=domain,
        ) from exc


def _evidence(document: object) -> WindowsEvidence:
    root = _mapping(document, "the document")
    events = [_event(item, n) for n, item in enumerate(_list(root, "Events"))]
    dumps = [_dump(item, n) for n, item in enumerate(_list(root, "Dumps"))]
    problems = tuple(_text(p, "Problems[]") for p in _list(root, "Problems"))
    return WindowsEvidence(
        now=_optional_time(root.get("Now"), "Now"),
        last_boot=_optional_time(root.get("LastBootUpTime"), "LastBootUpTime"),
        events=tuple(sorted(events, key=lambda e: e.time)),
        dumps=tuple(sorted(dumps, key=lambda d: d.time)),
        problems=problems,
    )


def _event(item: object, n: int) -> WindowsEvent:
    where = f"Events[{n}]"
    record = _mapping(item, where)
    event_id = record.get("Id")
    if not isinstance(event_id, int) or isinstance(event_id, bool):
        raise _Malformed(f"{where}.Id is not a number: {event_id!r}")
    raw_data = record.get("Data") or {}
    data = {
        str(k): "" if v is None else str(v) for k, v in _mapping(raw_data, f"{where}.Data").items()
    }
    message = _text(record.get("Message") or "", f"{where}.Message")
    # Windows puts U+200E marks around the parts of 6008's date; they only get in the way.
    message = "".join(c for c in message if unicodedata.category(c) != "Cf")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    event = WindowsEvent(
        id=event_id,
        provider=_text(record.get("Provider") or "", f"{where}.Provider"),
        time=_time(record.get("Time"), f"{where}.Time"),
        message=lines[0] if lines else "",
        detail=" ".join(lines[1:]),
        data=data,
    )
    return _interpret(event, message)


def _dump(item: object, n: int) -> DumpFile:
    where = f"Dumps[{n}]"
    record = _mapping(item, where)
    size = record.get("Size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _Malformed(f"{where}.Size is not a size: {size!r}")
    return DumpFile(
        path=_text(record.get("Path"), f"{where}.Path"),
        size=size,
        time=_time(record.get("Time"), f"{where}.Time"),
    )


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an object but {type(value).__name__}")
    return value


def _list(root: Mapping[str, object], key: str) -> Sequence[object]:
    if key not in root:
        raise _Malformed(f"no {key!r} in the document")
    value = root[key]
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]  # 5.1 printing a list of one as that one object
    if not isinstance(value, list):
        raise _Malformed(f"{key} is not a list but {type(value).__name__}")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{where} is not text: {value!r}")
    return value


_MS_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")


def _time(value: object, where: str) -> datetime:
    text = _text(value, where)
    legacy = _MS_DATE.match(text)
    try:
        if legacy:
            return datetime.fromtimestamp(int(legacy.group(1)) / 1000, UTC)
        parsed = datetime.fromisoformat(text)
    except (ValueError, OverflowError) as exc:
        raise _Malformed(f"{where} is not a time: {text!r}") from exc
    # The script writes UTC ('Z'); a time without an offset is taken as UTC too.
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _optional_time(value: object, where: str) -> datetime | None:
    return None if value is None or value == "" else _time(value, where)


# -- what the events say ---------------------------------------------------------------------

# WER 1001's param1 and text: "0x00000050 (0xffffd20000000000, 0x0, ...)". The text around it
# is localised; the code and parameters are not.
_WER_BUGCHECK = re.compile(
    r"\b0x(?P<code>[0-9A-Fa-f]{1,16})\s*\((?P<params>\s*0x[0-9A-Fa-f]+(?:\s*,\s*0x[0-9A-Fa-f]+)*)\s*\)"
)
_SCM_7000 = re.compile(r"^The (?P<name>.+?) service failed to start\b")


def _interpret(event: WindowsEvent, message: str) -> WindowsEvent:
    """Fill ``bugcheck`` and ``services`` from the fields (not localised) or the message."""
    if event.id == 41 and event.provider == KERNEL_POWER:
        return replace(event, bugcheck=_kernel_power_bugcheck(event.data))
    if event.id == 1001 and event.provider in WER_SYSTEM:
        found = _WER_BUGCHECK.search(event.data.get("param1", "")) or _WER_BUGCHECK.search(message)
        if found is None:
            return event
        code = int(found["code"], 16)
        params = [int(p, 16) for p in re.findall(r"0x([0-9A-Fa-f]+)", found["params"])]
        return replace(event, bugcheck=_windows_bugcheck(code, params))
    if event.id == 7000 and event.provider == SCM:
        name = event.data.get("param1", "").strip()
        if not name and (match := _SCM_7000.match(event.message)):
            name = match["name"]
        return replace(event, services=(name,) if name else ())
    if event.id == 7026 and event.provider == SCM:
        # param1 is the driver names, one a line after a leading line break; the message says
        # the same after its first line.
        listed = event.data.get("param1") or "\n".join(message.splitlines()[1:])
        return replace(event, services=tuple(n.strip() for n in listed.splitlines() if n.strip()))
    return event


def _kernel_power_bugcheck(data: Mapping[str, str]) -> Bugcheck | None:
    """BugcheckCode is decimal (80 is 0x50); 0 or missing: no bugcheck was recorded."""
    code = _number(data.get("BugcheckCode", ""), decimal=True)
    if not code:
        return None
    params = [_number(data.get(f"BugcheckParameter{i}", ""), decimal=False) for i in range(1, 5)]
    return _windows_bugcheck(code, [p for p in params if p is not None])


def _number(text: str, *, decimal: bool) -> int | None:
    """``"80"`` (decimal) or ``"0xffff..."`` (hex, as the event XML writes HexInt64)."""
    text = text.strip()
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        return int(text, 10 if decimal else 16) if text else None
    except ValueError:
        return None


def _windows_bugcheck(code: int, params: Iterable[int]) -> Bugcheck:
    # Written as bugcheck.py writes the hypervisor's: 0x50 upper-case, parameters lower-case.
    found = Bugcheck(
        code=format_code(code), name=bugcheck_name(code), params=tuple(f"0x{p:x}" for p in params)
    )
    # Neither 41 nor 1001 names the faulting driver (7026 lists drivers that did not load, not
    # one that crashed): the signature is the stop code's alone.
    return replace(found, signature=windows_signature(found))


# -- verdict inputs --------------------------------------------------------------------------


def findings(evidence: WindowsEvidence, *, baseline: WindowsEvidence | None = None) -> list[str]:
    """One line per sign that the guest crashed or failed to start something; [] if none.

    With ``baseline`` (evidence read before the update), a line the baseline has too is not
    new and left out: a clean Windows 10 logs ``7026`` for ``dam`` on every boot, and old
    events reappear when ``since`` did not exclude them.
    """
    lines: list[str] = []
    for event in evidence.events:
        lines.extend(_event_findings(event))
    for dump in evidence.dumps:
        lines.append(f"{dump.kind} {dump.name} ({_size(dump.size)}) written {_when(dump.time)}")
    if baseline is None:
        return lines
    known = set(findings(baseline))
    return [line for line in lines if line not in known]


def _event_findings(event: WindowsEvent) -> list[str]:
    at = f"{event.source} {event.id} at {_when(event.time)}"
    if event.id == 41 and event.provider == KERNEL_POWER:
        if event.bugcheck is not None:
            return [f"{at}: bugcheck {event.bugcheck.code} {event.bugcheck.name}"]
        return [f"{at}: unexpected reboot without a bugcheck (power loss, reset or hang)"]
    if event.id == 6008 and event.provider == EVENTLOG:
        return [f"{at}: {event.message or 'the previous shutdown was unexpected'}"]
    if event.id == 1001 and event.provider in WER_SYSTEM:
        if event.bugcheck is None:
            return [f"{at}: {event.message or 'rebooted from a bugcheck'}"]
        params = ", ".join(event.bugcheck.params)
        return [f"{at}: bugcheck {event.bugcheck.code} {event.bugcheck.name} ({params})"]
    if event.id == 7000 and event.provider == SCM:
        reason = f": {event.detail}" if event.detail else ""
        names = event.services or ("(unnamed)",)
        return [f"service {name} failed to start (7000){reason}" for name in names]
    if event.id == 7026 and event.provider == SCM:
        names = event.services or ("(unnamed)",)
        return [f"boot-start driver {name} did not load (7026)" for name in names]
    return []


def bugcheck(evidence: WindowsEvidence) -> Bugcheck | None:
    """The first stop code the guest recorded (WER 1001 or Kernel-Power 41), oldest first."""
    for event in evidence.events:
        if event.bugcheck is not None:
            return event.bugcheck
    return None


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"
