"""Crash codes out of what the hypervisor saw: pure parsers, no libvirt, no I/O.

Three sources, one result type (:class:`~compatlab.model.Bugcheck`):

- the domain log line libvirt writes when a Windows guest with ``<panic model='hyperv'/>``
  bugchecks: ``<timestamp>: panic hyper-v: arg1='0x50', arg2='0x...', ..., arg5='0x...'``
  (arg1 is the stop code, arg2..arg5 its four parameters);
- QEMU's ``GUEST_PANICKED`` QMP event, whose ``info`` carries the same registers as integers:
  ``{"action": "pause", "info": {"type": "hyper-v", "arg1": 80, ...}}``;
- a Linux serial log: the first ``Kernel panic - not syncing: ...`` line is the name, the Oops
  lines before it (``BUG: unable to handle page fault for address: ...``, ``Oops: ...``) are the
  parameters; the code is ``panic``.

Each bugcheck carries its crash signature (:mod:`compatlab.signature`), made here from the same
text: for Linux the oops and its guilty frame, for Windows the stop code's name and code.

:data:`BUGCHECK_NAMES` is the single table of Windows stop-code names; ``verdict`` and
``report`` import it from here. Codes are written ``0x`` + upper-case hex without padding
(``0x7E``, ``0x133``); parameters as libvirt writes them, lower-case (``0xfffff80012345678``).

What a guest prints is bounded here, where it becomes a bugcheck: a panic line (the name) and
Oops lines (the parameters) are cut to :data:`NAME_LENGTH` / :data:`PARAM_LENGTH` characters,
with terminal escapes and control characters removed; register values are 64-bit or ignored.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace

from compatlab.model import Bugcheck
from compatlab.signature import SIGNATURE_WORDS, linux_signature, strip_printk, windows_signature
from compatlab.text import one_line, printable

__all__ = [
    "BUGCHECK_NAMES",
    "NAME_LENGTH",
    "PANIC_WORDS",
    "PARAM_LENGTH",
    "bugcheck_name",
    "find_hyperv_panic",
    "format_code",
    "parse_guest_panicked",
    "parse_hyperv_log_line",
    "parse_linux_panic",
]

# Windows stop codes seen in the field (names as in Microsoft's bug check reference).
BUGCHECK_NAMES: Mapping[int, str] = {
    0x0A: "IRQL_NOT_LESS_OR_EQUAL",
    0x19: "BAD_POOL_HEADER",
    0x1A: "MEMORY_MANAGEMENT",
    0x1E: "KMODE_EXCEPTION_NOT_HANDLED",
    0x24: "NTFS_FILE_SYSTEM",
    0x3B: "SYSTEM_SERVICE_EXCEPTION",
    0x3D: "INTERRUPT_EXCEPTION_NOT_HANDLED",
    0x3E: "MULTIPROCESSOR_CONFIGURATION_NOT_SUPPORTED",
    0x3F: "NO_MORE_SYSTEM_PTES",
    0x4E: "PFN_LIST_CORRUPT",
    0x50: "PAGE_FAULT_IN_NONPAGED_AREA",
    0x5A: "CRITICAL_SERVICE_FAILED",
    0x7A: "KERNEL_DATA_INPAGE_ERROR",
    0x7B: "INACCESSIBLE_BOOT_DEVICE",
    0x7E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
    0x7F: "UNEXPECTED_KERNEL_MODE_TRAP",
    0x9F: "DRIVER_POWER_STATE_FAILURE",
    0xA0: "INTERNAL_POWER_ERROR",
    0xBE: "ATTEMPTED_WRITE_TO_READONLY_MEMORY",
    0xC2: "BAD_POOL_CALLER",
    0xC4: "DRIVER_VERIFIER_DETECTED_VIOLATION",
    0xC5: "DRIVER_CORRUPTED_EXPOOL",
    0xD1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
    0xD5: "DRIVER_PAGE_FAULT_IN_FREED_SPECIAL_POOL",
    0xE2: "MANUALLY_INITIATED_CRASH",
    0xEA: "THREAD_STUCK_IN_DEVICE_DRIVER",
    0xEF: "CRITICAL_PROCESS_DIED",
    0xF4: "CRITICAL_OBJECT_TERMINATION",
    0xFC: "ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY",
    0x101: "CLOCK_WATCHDOG_TIMEOUT",
    0x109: "CRITICAL_STRUCTURE_CORRUPTION",
    0x116: "VIDEO_TDR_FAILURE",
    0x124: "WHEA_UNCORRECTABLE_ERROR",
    0x133: "DPC_WATCHDOG_VIOLATION",
    0x139: "KERNEL_SECURITY_CHECK_FAILURE",
    0x13A: "KERNEL_MODE_HEAP_CORRUPTION",
    0x154: "UNEXPECTED_STORE_EXCEPTION",
    0x18B: "SECURE_KERNEL_ERROR",
    0x1C8: "MANUALLY_INITIATED_POWER_BUTTON_HOLD",
    0xC000021A: "WINLOGON_FATAL_ERROR",
}

NAME_LENGTH = 200  # characters of a panic line kept as the bugcheck's name
PARAM_LENGTH = 200  # characters of an Oops line kept as a parameter
_REGISTER_MAX = 2**64 - 1  # the crash MSRs are 64-bit: a larger "value" is not one

# Windows sets this bit on some stop codes ("0x1000007E"): same check, "_M" variant.
_M_VARIANT = 0x10000000


def format_code(code: int) -> str:
    """A stop code as this project writes it: ``0x7E``."""
    return f"0x{code:X}"


def bugcheck_name(code: int | str) -> str:
    """The stop code's name, e.g. ``PAGE_FAULT_IN_NONPAGED_AREA``; ``UNKNOWN_0x..`` if unlisted."""
    number = int(code, 16) if isinstance(code, str) else code
    if number in BUGCHECK_NAMES:
        return BUGCHECK_NAMES[number]
    if number & _M_VARIANT and (number & ~_M_VARIANT) in BUGCHECK_NAMES:
        return BUGCHECK_NAMES[number & ~_M_VARIANT] + "_M"
    return f"UNKNOWN_{format_code(number)}"


def _windows_bugcheck(code: int, params: Iterable[int]) -> Bugcheck:
    found = Bugcheck(
        code=format_code(code),
        name=bugcheck_name(code),
        params=tuple(f"0x{p:x}" for p in params),
    )
    # The crash registers name no module: the title is the stop code's alone.
    return replace(found, signature=windows_signature(found))


# -- the domain log --------------------------------------------------------------------------------

_HYPERV_LINE = re.compile(r"\bpanic hyper-v:\s*(?P<args>.*)$")
# At most 16 hex or 20 decimal digits: a 64-bit register (and no int() of a 5000-digit number).
_HYPERV_ARG = re.compile(
    r"arg(?P<n>[1-5])=['\"]?(?P<value>0x[0-9a-fA-F]{1,16}|\d{1,20})(?![0-9a-zA-Z])['\"]?"
)


def parse_hyperv_log_line(line: str) -> Bugcheck | None:
    """``... panic hyper-v: arg1='0x50', arg2='0x...', ...`` -> Bugcheck; None for other lines.

    Parameters missing from the line are left out, not invented.
    """
    match = _HYPERV_LINE.search(line.rstrip("\r\n"))
    if not match:
        return None
    args = {int(m["n"]): int(m["value"], 0) for m in _HYPERV_ARG.finditer(match["args"])}
    args = {n: value for n, value in args.items() if value <= _REGISTER_MAX}
    if 1 not in args:
        return None
    return _windows_bugcheck(args[1], (args[n] for n in range(2, 6) if n in args))


def find_hyperv_panic(lines: Iterable[str]) -> Bugcheck | None:
    """The first hyper-v panic in a domain log (the crash that started it all)."""
    for line in lines:
        found = parse_hyperv_log_line(line)
        if found is not None:
            return found
    return None


# -- QMP -------------------------------------------------------------------------------------------


def parse_guest_panicked(payload: str | Mapping[str, object]) -> Bugcheck | None:
    """QMP ``GUEST_PANICKED`` data (JSON text or decoded) -> Bugcheck when it has hyper-v info.

    A Linux pvpanic payload is just ``{"action": "pause"}``: no code in it, so None (the code
    comes from the serial log). Malformed payloads are None too; this never raises.
    """
    if isinstance(payload, str):
        try:
            decoded = json.loads(payload)
        except ValueError:
            return None
    else:
        decoded = payload
    if not isinstance(decoded, Mapping):
        return None
    info = decoded.get("info")
    if not isinstance(info, Mapping) or info.get("type") != "hyper-v":
        return None
    values: dict[int, int] = {}
    for n in range(1, 6):
        raw = info.get(f"arg{n}")
        if isinstance(raw, bool):
            continue
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and len(raw) <= 24:
            try:
                value = int(raw, 0)
            except ValueError:
                continue
        else:
            continue
        if 0 <= value <= _REGISTER_MAX:
            values[n] = value
    if 1 not in values:
        return None
    return _windows_bugcheck(values[1], (values[n] for n in range(2, 6) if n in values))


# -- Linux serial log ------------------------------------------------------------------------------

_PANIC = re.compile(r"^Kernel panic - not syncing: .*")
_OOPS_FIRST = re.compile(
    r"^(?:BUG: |general protection fault|kernel BUG at |Unable to handle kernel |"
    r"Internal error: |watchdog: BUG: )"
)
_OOPS_LINE = re.compile(r"^Oops: ")
_BOOT = re.compile(r"^Linux version ")
_PANIC_END = re.compile(r"^-+\[ end Kernel panic")
# Every line the parser acts on holds one of these: the rest of a flooded log is skipped cheaply
# (by the parser, or by a reader that hands it only the lines holding one). The signature's
# words bring the stack frames ("+0x") and the other oops headers.
PANIC_WORDS = tuple(
    dict.fromkeys(
        (
            "Kernel panic",
            "Linux version",
            "BUG",
            "Oops: ",
            "general protection fault",
            "Unable to handle kernel",
            "Internal error: ",
            *SIGNATURE_WORDS,
        )
    )
)
_WORTH_A_LOOK = re.compile("|".join(re.escape(word) for word in PANIC_WORDS))

# What the signature reads of the boot that panicked, bounded whatever the guest printed: the
# boot's first and last lines holding a panic word, and the trace panic() prints after its line.
BOOT_LINES = 1000  # lines kept from the start of the boot, and as many from its end
AFTER_PANIC = 200  # lines read after the panic line
KEPT_LINE = 512  # characters of a line kept for the signature


class _BootLines:
    """The lines of one boot the signature needs, at most ``2 * BOOT_LINES`` of them."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.tail: deque[str] = deque(maxlen=BOOT_LINES)

    def add(self, line: str) -> None:
        line = line[:KEPT_LINE]
        (self.head if len(self.head) < BOOT_LINES else self.tail).append(line)

    def lines(self) -> list[str]:
        return [*self.head, *self.tail]


def parse_linux_panic(log: str | Iterable[str]) -> Bugcheck | None:
    """The first kernel panic in a serial log -> ``Bugcheck('panic', <panic line>, <oops>)``.

    ``params`` holds, in log order, the first Oops headline (``BUG: ...``, ``general protection
    fault ...``, ``kernel BUG at ...``) and the first ``Oops: ...`` line seen before the panic,
    in the same boot, when there are any. None when the log has no panic line. The name and
    the parameters are printable single lines of at most :data:`NAME_LENGTH` /
    :data:`PARAM_LENGTH` characters. ``signature`` titles the same crash
    (:func:`~compatlab.signature.linux_signature` of that boot's lines). ``log`` may be an
    iterator of lines (a log read as a stream): it is consumed up to the end of the panic's
    trace (its ``---[ end Kernel panic`` line, the next boot, or :data:`AFTER_PANIC` lines).
    """
    lines = log.splitlines() if isinstance(log, str) else log
    headline: str | None = None
    oops: str | None = None
    panic: str | None = None
    boot = _BootLines()
    after: list[str] = []
    for raw in lines:
        if not _WORTH_A_LOOK.search(raw):
            continue
        line = strip_printk(printable(raw))
        if panic is not None:  # the trace panic() prints, up to the next boot
            if _BOOT.match(line) or len(after) >= AFTER_PANIC:
                break
            after.append(line[:KEPT_LINE])
            if _PANIC_END.match(line):
                break
        elif _PANIC.match(line):
            panic = line
            boot.add(line)
        elif _BOOT.match(line):
            # A new boot in the same log: earlier Oops lines belong to an earlier life.
            headline = oops = None
            boot = _BootLines()
        else:
            boot.add(line)
            if headline is None and _OOPS_FIRST.match(line):
                headline = one_line(line, PARAM_LENGTH)
            elif oops is None and _OOPS_LINE.match(line):
                oops = one_line(line, PARAM_LENGTH)
    if panic is None:
        return None
    return Bugcheck(
        code="panic",
        name=one_line(panic, NAME_LENGTH),
        params=tuple(p for p in (headline, oops) if p is not None),
        signature=linux_signature(boot.lines() + after),
    )
