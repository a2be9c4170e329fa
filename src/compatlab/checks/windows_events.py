"""What a Windows guest's event log says about a crash: one event at a time.

:mod:`compatlab.checks.windows` runs the evidence script and parses its document; each event it
returns is read here (:func:`interpret`): the stop code of a Kernel-Power 41 (``BugcheckCode``
is decimal) or of a WER-SystemErrorReporting 1001 (its text), the services of SCM 7000 and the
drivers of 7026 -- and, from the Application log, Windows Error Reporting's own 1001 for a
``BlueScreen`` report, whose fault bucket is the only event that names the faulting module:
``AV_R_INVALID_csagent!unknown_function`` or ``0x9F_3_POWER_DOWN_iaStorA_IMAGE_iaStorA.sys``.

How a bucket names its module (:func:`bucket_module`), from the shapes WinDbg's ``!analyze``
gives ``FAILURE_BUCKET_ID``: the file after the last ``_IMAGE_``; else the module of the first
``module!function``, which is the bucket's last ``_``-separated word before the ``!`` (a module
whose own name holds ``_`` is cut to its last part: a known limit, never a wrong stop code).
A bucket that is a number (the report was not analysed, or was not sent: the usual case in a
lab without a network), empty, or of another shape names no module, and none is guessed.

No Windows runs in this project's tests: the shapes come from Microsoft's documentation of the
events (the message templates, WER_EL_BUCKET_LOG's 21 insertions) and are tested against
hand-written documents (``tests/support/windows/README.md``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final

from compatlab.bugcheck import bugcheck_name, format_code
from compatlab.model import Bugcheck
from compatlab.signature import module_name, windows_signature

__all__ = [
    "EVENTLOG",
    "KERNEL_POWER",
    "SCM",
    "WER_REPORT",
    "WER_SYSTEM",
    "WindowsEvent",
    "bucket_module",
    "event_findings",
    "interpret",
    "stop_code",
    "when",
]

# Event ids and who writes them. Another provider may use the same id in the same log; only
# these (id, provider) pairs count as evidence.
KERNEL_POWER: Final = "Microsoft-Windows-Kernel-Power"
EVENTLOG: Final = "EventLog"
# Windows 7 / 2008 R2 show the 1001 source as "BugCheck"; Get-WinEvent names the provider.
WER_SYSTEM: Final = frozenset({"Microsoft-Windows-WER-SystemErrorReporting", "BugCheck"})
SCM: Final = "Service Control Manager"
# The Application log's 1001 (WER_EL_BUCKET_LOG): one for every report, BlueScreen among them.
WER_REPORT: Final = "Windows Error Reporting"
BLUE_SCREEN: Final = "BlueScreen"


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
    module: str | None = None

    @property
    def source(self) -> str:
        """Who wrote it, as people say it: ``Kernel-Power``, ``WER``, ``SCM``, ``EventLog``."""
        if self.provider == KERNEL_POWER:
            return "Kernel-Power"
        if self.provider in WER_SYSTEM:
            return "WER"
        if self.provider == SCM:
            return "SCM"
        if self.provider == WER_REPORT:
            return "WER report"
        return self.provider


# -- what the events say ---------------------------------------------------------------------

# WER 1001's param1 and text: "0x00000050 (0xffffd20000000000, 0x0, ...)". The text around it
# is localised; the code and parameters are not.
_WER_BUGCHECK = re.compile(
    r"\b0x(?P<code>[0-9A-Fa-f]{1,16})\s*\((?P<params>\s*0x[0-9A-Fa-f]+(?:\s*,\s*0x[0-9A-Fa-f]+)*)\s*\)"
)
_SCM_7000 = re.compile(r"^The (?P<name>.+?) service failed to start\b")


def interpret(event: WindowsEvent, message: str) -> WindowsEvent:
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
    if event.id == 1001 and event.provider == WER_REPORT:
        return _blue_screen(event, message)
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


def _windows_bugcheck(code: int, params: Iterable[int], module: str | None = None) -> Bugcheck:
    # Written as bugcheck.py writes the hypervisor's: 0x50 upper-case, parameters lower-case.
    found = Bugcheck(
        code=format_code(code), name=bugcheck_name(code), params=tuple(f"0x{p:x}" for p in params)
    )
    # Neither 41 nor the System log's 1001 names the faulting driver (7026 lists drivers that
    # did not load, not one that crashed); only a BlueScreen report's bucket does.
    return replace(found, signature=windows_signature(found, module))


# WER_EL_BUCKET_LOG: "Fault bucket %1, type %2%nEvent Name: %3%n...P1: %6 ... P5: %10"; the
# insertions are unnamed <Data> elements, which the script numbers from 1.
_FAULT_BUCKET = re.compile(r"^Fault bucket (?P<bucket>\S*), type\b", re.MULTILINE)
_EVENT_NAME = re.compile(r"^Event Name: (?P<name>\S+)", re.MULTILINE)
_P = re.compile(r"^P(?P<n>[1-5]): (?P<value>\S*)", re.MULTILINE)
_IMAGE = re.compile(r"_IMAGE_(?P<file>[\w.-]+)$")


def bucket_module(bucket: str) -> str | None:
    """The faulting module a WER fault bucket names (see the module doc), or None."""
    bucket = bucket.strip()
    if not bucket or bucket.isdigit():
        return None
    if image := _IMAGE.search(bucket):
        return module_name(image["file"])
    head = bucket.split("!", 1)[0]
    if head == bucket:
        return None  # no "module!function": a class of failure, not a place
    word = head.rsplit("_", 1)[-1]
    if not re.fullmatch(r"[A-Za-z][\w.-]*", word) or word.lower().startswith("0x"):
        return None
    return module_name(word)


def _blue_screen(event: WindowsEvent, message: str) -> WindowsEvent:
    """A WER report of a BlueScreen: its stop code (P1, hex without 0x), parameters (P2-P5) and
    the module its bucket names. Any other report (an application's crash) is not evidence."""
    data = event.data
    name = data.get("3") or ((m := _EVENT_NAME.search(message)) and m["name"]) or ""
    if name != BLUE_SCREEN:
        return event
    shown = {int(m["n"]): m["value"] for m in _P.finditer(message)}
    values = [data.get(str(5 + n)) or shown.get(n, "") for n in range(1, 6)]
    code = _number(values[0], decimal=False)
    bucket = data.get("1") or ((m := _FAULT_BUCKET.search(message)) and m["bucket"]) or ""
    module = bucket_module(bucket)
    if not code:
        return replace(event, module=module)
    params = [p for p in (_number(v, decimal=False) for v in values[1:]) if p is not None]
    return replace(event, bugcheck=_windows_bugcheck(code, params, module), module=module)


# -- findings --------------------------------------------------------------------------------


def event_findings(event: WindowsEvent) -> list[str]:
    at = f"{event.source} {event.id} at {when(event.time)}"
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
    if event.id == 1001 and event.provider == WER_REPORT and event.bugcheck is not None:
        found = event.bugcheck
        where = f" in {event.module}" if event.module else ""
        return [f"{at}: BlueScreen {found.code} {found.name}{where}"]
    if event.id == 7000 and event.provider == SCM:
        reason = f": {event.detail}" if event.detail else ""
        names = event.services or ("(unnamed)",)
        return [f"service {name} failed to start (7000){reason}" for name in names]
    if event.id == 7026 and event.provider == SCM:
        names = event.services or ("(unnamed)",)
        return [f"boot-start driver {name} did not load (7026)" for name in names]
    return []


def stop_code(events: Iterable[WindowsEvent]) -> Bugcheck | None:
    """The first stop code the guest recorded (41, either 1001), oldest first; titled with the
    faulting module when a BlueScreen report of the same stop code names one."""
    events = list(events)
    found = next((e.bugcheck for e in events if e.bugcheck is not None), None)
    if found is None:
        return None
    module = next(
        (e.module for e in events if e.module and e.bugcheck and e.bugcheck.code == found.code),
        None,
    )
    return replace(found, signature=windows_signature(found, module)) if module else found


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
