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
- the Application log: Windows Error Reporting 1001 of a ``BlueScreen`` report, whose fault
  bucket names the faulting module where Windows analysed the crash (``windows_events.py``);
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PureWindowsPath
from typing import Final

from compatlab.checks.windows_events import (
    WER_REPORT,
    WindowsEvent,
    event_findings,
    interpret,
    stop_code,
    when,
)
from compatlab.errors import GuestError
from compatlab.guest.channel import Channel
from compatlab.model import Bugcheck

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

# System log event ids the script asks for (who writes them: windows_events.py); and from the
# Application log, Windows Error Reporting's 1001.
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

# -- the System log, and WER's reports in the Application log --------------------------------
$filters = @(
    @{ LogName = 'System'; Id = %(event_ids)s },
    @{ LogName = 'Application'; ProviderName = '%(wer_report)s'; Id = 1001 }
)
$records = @()
foreach ($filter in $filters) {
    if ($since) { $filter.StartTime = $since }
    try {
        # "No events were found" is an error to Get-WinEvent; here it is the good news.
        $records += @(Get-WinEvent -FilterHashtable $filter -MaxEvents %(max_events)d `
            -ErrorAction SilentlyContinue -ErrorVariable readErrors)
        foreach ($err in $readErrors) {
            if ($err.FullyQualifiedErrorId -notlike 'NoMatchingEventsFound*') {
                $problems.Add("$($filter.LogName) log: $err")
            }
        }
    } catch {
        $problems.Add("$($filter.LogName) log: $_")
    }
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
        "wer_report": WER_REPORT,
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
    return interpret(event, message)


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


# -- verdict inputs --------------------------------------------------------------------------


def findings(evidence: WindowsEvidence, *, baseline: WindowsEvidence | None = None) -> list[str]:
    """One line per sign that the guest crashed or failed to start something; [] if none.

    With ``baseline`` (evidence read before the update), a line the baseline has too is not
    new and left out: a clean Windows 10 logs ``7026`` for ``dam`` on every boot, and old
    events reappear when ``since`` did not exclude them.
    """
    lines: list[str] = []
    for event in evidence.events:
        lines.extend(event_findings(event))
    for dump in evidence.dumps:
        lines.append(f"{dump.kind} {dump.name} ({_size(dump.size)}) written {when(dump.time)}")
    if baseline is None:
        return lines
    known = set(findings(baseline))
    return [line for line in lines if line not in known]


def bugcheck(evidence: WindowsEvidence) -> Bugcheck | None:
    """The first stop code the guest recorded (Kernel-Power 41 or a 1001), oldest first, titled
    with the faulting module when a WER BlueScreen report names one."""
    return stop_code(evidence.events)


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} B"
