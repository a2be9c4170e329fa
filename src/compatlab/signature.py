"""Crash signatures: a short title that stays the same for the same bug, as syzbot titles crashes.

A report groups crashes by this title across cells and runs, so it is made only of what does
not change between two crashes of one bug -- what kind of crash, and the function to blame --
and nothing that does: addresses, offsets, line numbers, CPUs, PIDs, process names, taint flags.

**Linux** (:func:`linux_signature`): the oops header in today's kernel words, then the guilty
frame with its module, e.g. ``BUG: kernel NULL pointer dereference in acme_check_neighbours
[acme_sensor]``. Older and arm64 wordings of one kind get the same words ("unable to handle
kernel NULL pointer dereference at ..." is "BUG: kernel NULL pointer dereference").

The guilty frame is the first of, in log order: the function the header names itself (WARNING,
KASAN), the faulting instruction (``RIP:``, ``IP:``, ``pc :``) and the stack after ``Call
Trace:`` -- that is neither marked unreliable (``? func``) nor the kernel's own machinery
(:data:`SKIP`: oops and panic reporting, stack dumps, locks, allocators, string helpers,
sanitizers, syscall entry). A frame of a loadable module is never skipped: modules are what the
lab tests. Suffixes (``.isra.0``, ``.cold``) and syscall prefixes (``__x64_sys_``) are dropped.

Which crash, when a serial log holds several boots and reports:

1. the first boot that panicked -- the panic :func:`~compatlab.bugcheck.parse_linux_panic`
   names (the first is the root cause; in a boot loop every boot repeats it); a log without a
   panic: the first boot with an oops;
2. in that boot, before the panic, the first *fatal* oops (BUG, page fault, GPF, kernel BUG,
   divide error, KASAN, ...): the one ``oops=panic`` turned into the panic, or the first domino;
   without one, the first *warning-class* report (WARNING, soft lockup, hung task, RCU stall,
   UBSAN), which ``panic_on_warn`` and friends turned into the panic;
3. without either, the panic line itself, with the frame from the trace ``panic()`` printed.

**Windows** (:func:`windows_signature`): stop code name and code, and the faulting module where
some evidence names it: ``PAGE_FAULT_IN_NONPAGED_AREA (0x50) in sensor.sys``.

Borrowed from syzkaller's ``pkg/report/linux.go`` (Apache-2.0): the oops kinds and their titles,
much of :data:`SKIP`, skipping ``?`` frames and the syscall prefixes. Where the titles differ
from syzkaller's, ``tests/support/crashes/README.md`` says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from compatlab.model import Bugcheck
from compatlab.text import one_line

__all__ = [
    "SIGNATURE_WORDS",
    "SKIP",
    "TITLE_LENGTH",
    "linux_signature",
    "module_name",
    "strip_printk",
    "windows_signature",
]

TITLE_LENGTH = 200  # characters of a signature
REPORT_LINES = 300  # lines of one report searched for its guilty frame

# Every line the signature reads holds one of these, so a reader may pass only those lines.
SIGNATURE_WORDS = (
    "Linux version", "Kernel panic", "BUG", "WARNING:", "INFO: ", "UBSAN: ", "LOCKUP",
    "general protection fault", "stack segment", "divide error", "divide_error",
    "invalid opcode", "Unable to handle kernel", "Internal error: ", "Oops",
    "+0x", "Call Trace", "Call trace", "Backtrace", "---[ end", "NMI backtrace", "Sending NMI",
)  # fmt: skip

# Kernel functions never blamed: matched at the start of a name, leading underscores ignored.
SKIP = (
    # panic, oops and warning reporting; traps and page-fault handling (x86, arm64)
    "panic", "die$", "die_", "oops_", "page_fault_oops", "kernelmode_fixup_or_oops", "warn",
    "report_bug", "fixup_bug", "handle_bug", "bug_handler", "brk_handler", "call_break_hook",
    "invalid_op", "do_error_trap", "do_trap", "do_int3", "exc_", "asm_exc_", "asm_sysvec_",
    "sysvec_", "no_context", "bad_area", "do_user_addr_fault", "do_kern_addr_fault",
    "spurious_kernel_fault", "is_prefetch", "do_page_fault", "page_fault$", "handle_page_fault",
    "do_mem_abort", "el1_abort", "el1h_64_sync", "el1_sync", "do_kernel_fault",
    "do_translation_fault", "die_kernel_fault", "do_debug_exception", "el1_dbg",
    # stack dumps
    "dump_stack", "show_stack", "show_regs", "show_trace", "dump_backtrace", "walk_stack",
    "unwind_", "arch_stack_walk", "stack_trace_", "print_report", "print_address_description",
    "print_tainted", "nmi_cpu_backtrace", "nmi_trigger_cpumask_backtrace",
    # sanitizers and printing
    "kasan", "asan_", "hwasan", "kmsan", "kcsan", "ubsan", "kfence", "check_memory_region",
    "printk", "vprintk", "dev_printk", "dev_emerg", "dev_alert", "dev_crit", "dev_err",
    "dev_warn",
    # locks, sleeping and waiting
    "lock_acquire", "lock_release", "lockdep", "mark_lock", "raw_spin_", "do_raw_spin_",
    "spin_", "queued_spin_", "native_queued_spin_", "raw_read_", "raw_write_", "read_lock",
    "write_lock", "read_unlock", "write_unlock", "mutex_", "rt_mutex_", "down$", "down_",
    "up_read", "up_write", "rwsem_", "schedule", "io_schedule", "preempt_schedule",
    "context_switch", "switch_to", "wait_for_", "synchronize_", "rcu_barrier", "refcount_",
    "kref_", "might_sleep", "might_fault", "might_resched",
    # allocators
    "kmalloc", "kzalloc", "kcalloc", "kvmalloc", "kvzalloc", "krealloc", "vmalloc", "vzalloc",
    "kmem_cache_", "alloc_pages", "alloc_frozen_pages", "slab_", "kfree", "kvfree",
    # library helpers a bug only passes through
    "memcpy", "memset", "memmove", "memcmp", "memchr", "memdup", "strcpy", "strncpy",
    "strlcpy", "strscpy", "strlen", "strnlen", "strcmp", "strncmp", "strchr", "strrchr",
    "strstr", "strdup", "strndup", "copy_to_user", "copy_from_user", "copy_to_iter",
    "copy_from_iter", "list_add", "list_del", "rb_", "lock_page", "unlock_page", "xas_",
    "find_lock_entries", "truncate_inode_pages", "lock_timer_base", "mod_timer", "assertfail",
    "fortify_", "pfx_",
    # entry points, too general to blame
    "do_syscall_", "entry_SYSCALL", "ret_from_fork", "kthread$", "worker_thread",
    "smpboot_thread_fn", "task_work_run", "exit_to_user_mode", "syscall_exit_to_user_mode",
    "traceiter_",  # a tracepoint calling its probes: the probe is what runs
)  # fmt: skip
_SKIP = re.compile("|".join(f"(?:{pattern})" for pattern in SKIP))
_SYSCALL_PREFIX = re.compile(r"^_*(?:(?:x64|ia32|arm64|se|do)_)?(?:compat_)?(?:sys|SyS|ksys)_")

# -- reading lines ---------------------------------------------------------------------------------

# printk prefixes: "[    3.724559] " and, with caller ids, "[ 1139.416143][ T5301] ".
_PRINTK_PREFIX = re.compile(r"^(?:<\d>)?(?:\[\s*\d+\.\d+\])?(?:\[\s*[CT]\d+\])?\s*")
_BANNER = re.compile(r"^Linux version ")
_PANIC = re.compile(r"^Kernel panic - not syncing: (?P<what>.*)")
_END = re.compile(r"^-+\[ end ")  # "---[ end trace 0000000000000000 ]---"
_STACK = re.compile(r"^(?:Call [Tt]race|Backtrace)\b")
# Other CPUs' stacks, printed after a report's own (a stall's own stack may come as one).
_OTHER_CPUS = re.compile(r"^(?:Sending NMI from CPU|NMI backtrace for cpu)")
# The faulting instruction: "RIP: 0010:f+0x1c/0x40", "IP: [<ffffffff81..>] f+..", "pc : f+..".
_PC = re.compile(r"^(?:RIP: [0-9a-f]{4}:|IP:|pc :|PC is at)\s*")
# A frame: "[<ffffffff810..>] ? func.isra.0+0x1c/0x40 [module 1a2b..]" (the PC and the build id
# in brackets optional); arm's "(func) from [<80163e94>] (caller+0x184/0x1a4)" gives both.
_FRAME = re.compile(
    r"(?:\[<[0-9a-fx]+>\]\s*)*(?P<unsure>\?\s+)?(?P<func>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
    r"(?:\s+\[(?P<module>\w+)(?:\s+[0-9a-f]+)?\])?"
)
_ARM_FRAME = re.compile(
    r"^\[<[0-9a-f]+>\] \((?P<func>[A-Za-z_][\w.]*)(?:\+0x[0-9a-f]+/0x[0-9a-f]+)?"
    r"(?: \[(?P<module>\w+)\])?\)"
    r" from \[<[0-9a-f]+>\] \((?P<caller>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
    r"(?: \[(?P<caller_module>\w+)\])?\)"
)


def strip_printk(line: str) -> str:
    """A serial log line without its printk prefix, line end and indentation."""
    return _PRINTK_PREFIX.sub("", line.rstrip("\r\n")).rstrip()


# -- oops headers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """One kind of oops header: ``pattern`` matches its first line; ``title`` names it, with
    ``{what}`` filled from the line; ``fatal`` is False for warning-class reports; ``follows``
    for lines that carry on the report of a header before them (``Oops: 0000 [#1] SMP``)."""

    pattern: re.Pattern[str]
    title: str
    fatal: bool = True
    follows: bool = False


def _kind(pattern: str, title: str, *, fatal: bool = True, follows: bool = False) -> _Kind:
    return _Kind(re.compile(pattern), title, fatal, follows)


# In order: the first that matches a line names it ("watchdog: BUG: soft lockup" is no plain BUG).
_KINDS = (
    _kind(r"(?:watchdog: )?BUG: soft lockup", "BUG: soft lockup", fatal=False),
    _kind(r"(?:NMI )?(?:watchdog: )?Watchdog detected hard LOCKUP", "hard LOCKUP", fatal=False),
    _kind(r"INFO: task .* blocked for more than", "INFO: task hung", fatal=False),
    _kind(r"(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stall", "INFO: rcu detected stall", fatal=False),  # noqa: E501
    _kind(r"BUG: workqueue lockup", "BUG: workqueue lockup", fatal=False),
    _kind(r"WARNING: (?P<what>.*)", "WARNING", fatal=False),
    _kind(r"UBSAN: (?P<what>.*?)(?: in |$)", "UBSAN: {what}", fatal=False),
    _kind(r"(?:BUG: (?:unable to handle kernel|Kernel|kernel)|Unable to handle kernel) NULL pointer dereference", "BUG: kernel NULL pointer dereference"),  # noqa: E501
    _kind(r"BUG: unable to handle (?:kernel paging request|page fault)|BUG: Unable to handle kernel data access|Unable to handle kernel ", "BUG: unable to handle page fault"),  # noqa: E501
    _kind(r"BUG: (?P<tool>KASAN|KFENCE|KMSAN|KCSAN): (?P<what>.*?)(?: in |$)", "BUG: {tool}: {what}"),  # noqa: E501
    _kind(r"(?:Oops: )?general protection fault", "general protection fault"),
    _kind(r"(?:Oops: )?stack segment", "stack segment fault"),
    _kind(r"kernel BUG at (?P<file>[^:\s]+)", "kernel BUG"),
    _kind(r"(?:Oops: )?divide[ _]error", "divide error"),
    _kind(r"BUG: (?P<what>.*)", "BUG: {what}"),
    _kind(r"(?:Oops: )?invalid opcode", "invalid opcode", follows=True),
    _kind(r"Internal error: (?P<what>.*)", "Internal error: {what}", follows=True),
    _kind(r"Oops: (?:Oops: )?(?P<what>.*)", "Oops: {what}", follows=True),
)  # fmt: skip

# What varies between two crashes of one bug, removed from the words a title keeps.
_CUT = re.compile(r"[:,!(\[=]|\s(?:at|in process|on CPU|for address)\b")
_VARYING = re.compile(r"\bCPU#?\s?\d+|\b0x[0-9a-fA-F]+\b|\b[0-9a-f]{8,}\b|\b\d+\b")


def _words(text: str) -> str:
    """The constant words at the start of a header's free text: 'scheduling while atomic' out
    of 'scheduling while atomic: syz-fuzzer/2188/0x00000101'."""
    text = _VARYING.sub(" ", _CUT.split(text, maxsplit=1)[0])
    return " ".join(text.split()).strip(" -.;")


@dataclass(frozen=True)
class _Header:
    at: int  # index of its line
    kind: _Kind
    title: str  # its words, without the frame
    fallback: str  # the title when no frame is found ("kernel BUG at fs/btrfs/ctree.h")


def _header(line: str, at: int) -> _Header | None:
    for kind in _KINDS:
        match = kind.pattern.match(line)
        if match is None:
            continue
        found = {k: _words(v) for k, v in match.groupdict().items() if v is not None}
        title = kind.title.format_map(found).removesuffix(": ")
        where = match["file"] if "file" in found else ""
        if kind.title == "WARNING":
            title, where = _warning(match["what"])
        return _Header(at, kind, title, f"{title} at {where}" if where else title)
    return None


_SOURCE = re.compile(r"(?P<file>[\w./-]+\.[a-zA-Z]+):\d+")


def _warning(text: str) -> tuple[str, str]:
    """A WARN() at a source line is 'WARNING' (its frame says which) and that file; a warning
    with words of its own keeps them: 'WARNING: possible circular locking dependency detected'."""
    source = _SOURCE.search(text)
    if source:
        return "WARNING", source["file"]
    words = _words(text)
    return (f"WARNING: {words}" if words else "WARNING"), ""


# -- frames ----------------------------------------------------------------------------------------


def _blamed(func: str, module: str | None) -> str | None:
    """``func [module]`` if the frame may be blamed, else None."""
    func = func.split(".", 1)[0]  # acme_exec.isra.0, print_address_description.cold
    if module:
        return f"{func} [{module}]"
    if _SKIP.match(func.lstrip("_")):
        return None
    return _SYSCALL_PREFIX.sub("", func) or func


def _frames(line: str, in_stack: bool) -> Iterable[str | None]:
    """The frames on one line of a report (None for one not to blame): a PC line's anywhere,
    a stack line's after ``Call Trace:``."""
    if _PC.match(line):
        frame = _FRAME.match(_PC.sub("", line, count=1))
        if frame and not frame["unsure"]:
            yield _blamed(frame["func"], frame["module"])
    elif in_stack and (arm := _ARM_FRAME.match(line)):
        yield _blamed(arm["func"], arm["module"])
        yield _blamed(arm["caller"], arm["caller_module"])
    elif in_stack and (frame := _FRAME.match(line)) and not frame["unsure"]:
        yield _blamed(frame["func"], frame["module"])


def _guilty_frame(report: Sequence[str]) -> str:
    """The first frame of a report that may be blamed ("" when none): see the module doc."""
    in_stack = False
    for n, line in enumerate(report[:REPORT_LINES]):
        if n == 0:
            named = _FRAME.search(line)  # WARNING: ... at f.c:12 func+0x1c/0x40 [mod]
            if named and (frame := _blamed(named["func"], named["module"])):
                return frame
            continue
        in_stack = in_stack or bool(_STACK.match(line))
        for frame in _frames(line, in_stack):
            if frame:
                return frame
    return ""


def _report(lines: Sequence[str], start: int) -> Sequence[str]:
    """The report that starts at ``lines[start]``: up to its ``---[ end`` line, the next header
    that is not part of it, the other CPUs' stacks after its own, or :data:`REPORT_LINES`. A
    panic line does not end it: a panic called from the report prints the stack after it."""
    end = min(len(lines), start + REPORT_LINES)
    stacked = False  # its own stack was printed
    for n in range(start + 1, end):
        line = lines[n]
        if _END.match(line) or _BANNER.match(line):
            return lines[start:n]
        if _OTHER_CPUS.match(line) and (stacked or line.startswith("Sending")):
            return lines[start:n]
        stacked = stacked or bool(_STACK.match(line))
        header = _header(line, n)
        if header is not None and not header.kind.follows:
            return lines[start:n]
    return lines[start:end]


# -- Linux -----------------------------------------------------------------------------------------


def _crash_boot(lines: Sequence[str]) -> Sequence[str]:
    """The lines of the boot to title: the first that panicked, else the first with an oops."""
    starts = [0] + [n for n, line in enumerate(lines) if _BANNER.match(line)] + [len(lines)]
    boots = [lines[a:b] for a, b in pairwise(starts) if b > a]
    for boot in boots:
        if any(_PANIC.match(line) for line in boot):
            return boot
    for boot in boots:
        if any(_header(line, n) for n, line in enumerate(boot)):
            return boot
    return []


def linux_signature(log: str | Iterable[str]) -> str:
    """The signature of the crash in a Linux serial log, "" when it shows none.

    ``log`` is the text or its lines, printk prefixes allowed; which crash of several is
    titled, and how, is in the module doc.
    """
    raw = log.splitlines() if isinstance(log, str) else log
    boot = _crash_boot([strip_printk(line) for line in raw])
    panic = next((n for n, line in enumerate(boot) if _PANIC.match(line)), len(boot))
    headers = [h for n, line in enumerate(boot[:panic]) if (h := _header(line, n))]
    chosen = next((h for h in headers if h.kind.fatal), headers[0] if headers else None)
    if chosen is not None:
        frame = _guilty_frame(_report(boot, chosen.at))
        title = f"{chosen.title} in {frame}" if frame else chosen.fallback
    elif panic < len(boot):
        match = _PANIC.match(boot[panic])
        assert match is not None
        title = f"Kernel panic - not syncing: {_panic_words(match['what'])}".rstrip(": ")
        frame = _guilty_frame(_report(boot, panic))
        title = f"{title} in {frame}" if frame else title
    else:
        return ""
    return one_line(title, TITLE_LENGTH)


def _panic_words(message: str) -> str:
    """A panic message without its numbers: 'VFS: Unable to mount root fs on unknown-block'."""
    text = re.sub(r"\(\W*\)|\[\W*\]", "", _VARYING.sub("", message))
    return " ".join(text.split()).strip(" -.;:,=")


# -- Windows ---------------------------------------------------------------------------------------

_M_VARIANT = 0x10000000  # "0x1000007E": the same stop as 0x7E, its "_M" twin
_MODULE = re.compile(r"[\w.-]{1,64}")


def module_name(text: str | None) -> str | None:
    """A Windows module as a signature names it: ``sensor.sys`` out of
    ``\\SystemRoot\\System32\\drivers\\Sensor.SYS`` or ``sensor.sys!Foo+0x12``; None when
    ``text`` is empty or not a file name."""
    if not text:
        return None
    name = re.split(r"[\\/]", text.strip())[-1].split("!", 1)[0].strip().lower()
    return name if _MODULE.fullmatch(name) else None


def windows_signature(bugcheck: Bugcheck, module: str | None = None) -> str:
    """``PAGE_FAULT_IN_NONPAGED_AREA (0x50)``, plus `` in sensor.sys`` when ``module`` names the
    faulting module (from a dump or an event that says so; never guessed).

    An ``_M`` stop (``0x1000007E``) has the title of its twin (``0x7E``): one bug.
    """
    code, name = bugcheck.code, bugcheck.name
    try:
        number = int(code, 16)
    except ValueError:
        number = None
    if number is not None and number & _M_VARIANT and name.endswith("_M"):
        code, name = f"0x{number & ~_M_VARIANT:X}", name.removesuffix("_M")
    if not name or name.startswith("UNKNOWN_"):
        name = "UNKNOWN_BUGCHECK"
    title = f"{name} ({code})"
    found = module_name(module)
    return one_line(f"{title} in {found}" if found else title, TITLE_LENGTH)
