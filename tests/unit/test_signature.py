"""Crash signatures on recorded crash texts, and the signature's way into results.json.

The Linux texts are real console output (``tests/support/crashes``; each file's source is in
that folder's README). Where a test builds a log, it builds it from those recorded lines and
says how. The Windows inputs are named where they are used: the Hyper-V line is recorded, the
event-log document is hand-written (``tests/support/windows/README.md``).
"""

from __future__ import annotations

import re
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.bugcheck import (
    PANIC_WORDS,
    bugcheck_name,
    parse_guest_panicked,
    parse_hyperv_log_line,
    parse_linux_panic,
)
from compatlab.checks.windows import bugcheck, parse_evidence
from compatlab.lab.evidence import serial_lines
from compatlab.model import Bugcheck, Event
from compatlab.report.reader import cell_from_json
from compatlab.signature import TITLE_LENGTH, linux_signature, module_name, windows_signature
from compatlab.verdict import bugcheck_of
from tests.support.cells import crashed_cell

CRASHES = Path(__file__).parents[1] / "support" / "crashes"
WINDOWS = Path(__file__).parents[1] / "support" / "windows"

ACME = "BUG: kernel NULL pointer dereference in acme_check_neighbours [acme_sensor]"

# What each recorded crash must be titled: the oops header in today's kernel words, then the
# first frame that is neither unreliable ("?") nor the kernel's own machinery, with its module.
EXPECTED = {
    # compatlab's demo guests: the fault is in the function RIP names, in the module.
    "demo-acme-sensor-boot-loop.log": ACME,
    "demo-acme-sensor-install.log": ACME,
    "demo-flaky-edr-once.log": (
        "BUG: kernel NULL pointer dereference in flaky_migrate_db [flaky_edr]"  # .constprop.0
    ),
    "demo-fence-filter-rollback.log": (
        "BUG: kernel NULL pointer dereference in fence_flush_cache [fence_filter]"
    ),
    # Old x86 wording, "IP: strlen" (a helper) and "? rtnl_fill_ifinfo" (unreliable) passed over.
    "syzkaller-174-null-deref-old-x86.log": (
        "BUG: kernel NULL pointer dereference in rtnl_dump_ifinfo"
    ),
    # RIP in do_raw_spin_lock, then lock_timer_base and __mod_timer: all machinery.
    "syzkaller-736-page-fault-x86.log": "BUG: unable to handle page fault in process_srcu",
    # "Oops: general protection fault", RIP __se_sys_mremap without its syscall prefix.
    "syzkaller-738-gpf-x86.log": "general protection fault in mremap",
    # "kernel BUG at fs/btrfs/ctree.h:3615!", RIP in assertfail: the line number goes.
    "syzkaller-656-kernel-bug-x86.log": "kernel BUG in close_ctree",
    # The WARN() is in the page allocator; the allocation came from v9fs.
    "syzkaller-745-warning-x86.log": "WARNING in v9fs_fid_get_acl",
    "syzkaller-704-kasan-uaf-x86.log": "BUG: KASAN: slab-use-after-free in btrfs_evict_inode",
    # A module's function is blamed even with an allocator-like name.
    "syzkaller-338-kasan-oob-module-x86.log": (
        "BUG: KASAN: slab-out-of-bounds in kmalloc_oob_right [test_kasan]"
    ),
    # arm64: "Unable to handle kernel NULL pointer dereference", "pc : unlock_page".
    "syzkaller-693-null-deref-arm64.log": (
        "BUG: kernel NULL pointer dereference in ni_readpage_cmpr"
    ),
    "syzkaller-264-soft-lockup-x86.log": "BUG: soft lockup in d_walk",
    # The hung task waits in schedule/mutex/rcu_barrier: blamed is who waits.
    "syzkaller-692-hung-task-x86.log": "INFO: task hung in netdev_run_todo",
    "syzkaller-522-divide-error-x86.log": "divide error in tabledist",
    "syzkaller-641-atomic-sleep-arm64.log": (
        "BUG: scheduling while atomic in simple_recursive_removal"
    ),
    "syzkaller-643-atomic-sleep-arm32.log": (
        "BUG: scheduling while atomic in simple_recursive_removal"
    ),
    "syzkaller-453-ubsan-module-x86.log": (
        "UBSAN: Undefined behaviour in lkdtm_ARRAY_BOUNDS [lkdtm]"
    ),
}

# The recorded texts that end in a kernel panic (the others are oops reports alone).
PANICKED = {
    "demo-acme-sensor-boot-loop.log",
    "demo-acme-sensor-install.log",
    "demo-flaky-edr-once.log",
    "demo-fence-filter-rollback.log",
    "syzkaller-174-null-deref-old-x86.log",
    "syzkaller-736-page-fault-x86.log",
    "syzkaller-738-gpf-x86.log",
    "syzkaller-656-kernel-bug-x86.log",
    "syzkaller-704-kasan-uaf-x86.log",
    "syzkaller-264-soft-lockup-x86.log",
    "syzkaller-643-atomic-sleep-arm32.log",
}

# RECORDED on this machine (as in tests/unit/test_panic.py): Debian 6.1 kernel under QEMU 7.2,
# `echo c > /proc/sysrq-trigger`; a panic() with no oops before it.
RECORDED_SYSRQ_SERIAL = """\
labguest: panicking
[    3.724089] sysrq: Trigger a crash
[    3.724559] Kernel panic - not syncing: sysrq triggered crash
[    3.724813] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[    3.727804] Call Trace:
[    3.728943]  <TASK>
[    3.729779]  dump_stack_lvl+0x44/0x5c
[    3.730553]  panic+0x118/0x2f4
[    3.731618]  sysrq_handle_crash+0x16/0x20
"""

# RECORDED: a Windows guest's bugcheck as libvirt logged it, quoted in "i386/kvm: Prefill
# default value for MSR 0x3a" on qemu-devel, 2025-06-09.
RECORDED_HYPERV_LINE = (
    "panic hyper-v: arg1='0x3e', arg2='0x46d359bbdff', arg3='0x56d359bbdff', arg4='0x0', arg5='0x0'"
)


def recorded(name: str) -> str:
    return (CRASHES / name).read_bytes().decode("utf-8", errors="replace")


def lines_between(name: str, first: str, last: str) -> list[str]:
    """The recorded lines of ``name`` from the first holding ``first`` to the next holding
    ``last``, both kept."""
    lines = recorded(name).splitlines()
    start = next(n for n, line in enumerate(lines) if first in line)
    end = next(n for n in range(start, len(lines)) if last in lines[n])
    return lines[start : end + 1]


# -- Linux: the recorded crashes ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "title"), EXPECTED.items(), ids=list(EXPECTED))
def test_a_recorded_crash_gets_its_title(name: str, title: str) -> None:
    assert linux_signature(recorded(name)) == title


def test_every_recorded_crash_has_an_expected_title() -> None:
    assert {p.name for p in CRASHES.glob("*.log")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(PANICKED))
def test_a_panic_s_bugcheck_carries_the_signature_of_its_crash(name: str) -> None:
    found = parse_linux_panic(recorded(name))
    assert found is not None and found.code == "panic"
    assert found.signature == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - PANICKED))
def test_an_oops_without_a_panic_is_no_bugcheck_but_has_a_title(name: str) -> None:
    assert parse_linux_panic(recorded(name)) is None
    assert linux_signature(recorded(name)) == EXPECTED[name]


def test_the_log_read_as_a_stream_gives_the_same_signature(tmp_path: Path) -> None:
    # How the lab reads it: only the lines holding a panic word, a chunk at a time.
    log = tmp_path / "serial.log"
    log.write_bytes((CRASHES / "demo-acme-sensor-boot-loop.log").read_bytes())
    streamed = parse_linux_panic(serial_lines(log, containing=PANIC_WORDS))
    assert streamed is not None and streamed.signature == ACME


# -- Linux: the same bug, the same title ----------------------------------------------------------


def test_the_same_bug_in_another_cell_and_phase_gets_the_same_title() -> None:
    loop, install = (
        recorded("demo-acme-sensor-boot-loop.log"),
        recorded("demo-acme-sensor-install.log"),
    )
    # Not the same text: another process, other addresses, other times.
    assert "PID: 305 " in loop and "PID: 362 " in install
    assert "CR2: ffffffffc0642ffa" in loop and "CR2: ffffffffc0500ffa" in install
    assert linux_signature(loop) == linux_signature(install) == ACME


def test_the_same_bug_on_another_cpu_and_architecture_gets_the_same_title() -> None:
    arm64, arm = (
        recorded("syzkaller-641-atomic-sleep-arm64.log"),
        recorded("syzkaller-643-atomic-sleep-arm32.log"),
    )
    assert "CPU: 0 PID: 2188 Comm: syz-fuzzer" in arm64
    assert "CPU: 1 PID: 5582 Comm: syz-executor.0" in arm
    assert linux_signature(arm64) == linux_signature(arm)


def _moved(text: str) -> str:
    """The recorded acme crash as it would read on CPU 3, in another process, at other
    addresses and offsets, later: every number that varies between two crashes changed."""
    text = re.sub(r"\b[0-9a-f]{16}\b", lambda m: f"{int(m[0], 16) ^ 0x5A5A000:016x}", text)
    text = re.sub(r"\+0x([0-9a-f]+)/", lambda m: f"+0x{int(m[1], 16) + 8:x}/", text)
    text = re.sub(r"\[\s*(\d+)\.(\d+)\]", lambda m: f"[{int(m[1]) + 300:5d}.{m[2]}]", text)
    return text.replace("CPU: 0 PID: 362 Comm: svc", "CPU: 3 PID: 4711 Comm: sensor-helper")


def test_addresses_offsets_cpus_pids_and_times_do_not_change_the_title() -> None:
    recorded_text = recorded("demo-acme-sensor-install.log")
    moved = _moved(recorded_text)
    assert "+0x2c/0x60 [acme_sensor]" in moved and "CPU: 3 PID: 4711" in moved
    assert "000000000000009c" not in moved
    assert linux_signature(moved) == ACME
    # ... while the function does: the title is not a constant.
    renamed = moved.replace("acme_check_neighbours", "acme_check_rules")
    assert linux_signature(renamed) == ACME.replace("acme_check_neighbours", "acme_check_rules")


def test_different_bugs_get_different_titles() -> None:
    titles = {
        linux_signature(recorded(name))
        for name in (
            "demo-acme-sensor-install.log",
            "demo-flaky-edr-once.log",
            "demo-fence-filter-rollback.log",
            "syzkaller-174-null-deref-old-x86.log",
        )
    }
    assert len(titles) == 4


# -- Linux: which crash of several ----------------------------------------------------------------


def test_several_boots_are_titled_by_the_first_that_panicked() -> None:
    # flaky_edr panics once among five boots; the acme_sensor boot loop follows it.
    log = recorded("demo-flaky-edr-once.log") + recorded("demo-acme-sensor-boot-loop.log")
    assert linux_signature(log) == EXPECTED["demo-flaky-edr-once.log"]
    found = parse_linux_panic(log)  # the bugcheck names the same crash: flaky_edr's address 0x8
    assert found is not None and found.signature == linux_signature(log)
    assert found.params[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000008"


def test_a_boot_that_panicked_outranks_an_earlier_boot_with_an_oops_only() -> None:
    # A WARNING in one boot (no panic), then a boot that panics: the panic is the crash.
    log = recorded("syzkaller-745-warning-x86.log") + recorded("demo-acme-sensor-install.log")
    assert linux_signature(log) == ACME


def test_in_the_boot_a_fatal_oops_outranks_an_earlier_warning() -> None:
    # The recorded WARNING, then (same boot) the recorded acme oops up to its panic.
    warning = lines_between("syzkaller-745-warning-x86.log", "cut here", "</TASK>")
    oops = lines_between("demo-acme-sensor-install.log", "BUG: kernel NULL", "Kernel panic")
    assert linux_signature(warning + oops) == ACME
    # Without the oops, the warning is what panic_on_warn turned into the panic.
    panic = "[   61.300000][ T5830] Kernel panic - not syncing: panic_on_warn set ..."
    assert linux_signature([*warning, panic]) == "WARNING in v9fs_fid_get_acl"


def test_a_panic_without_an_oops_is_titled_by_its_message_and_the_caller_of_panic() -> None:
    assert linux_signature(RECORDED_SYSRQ_SERIAL) == (
        "Kernel panic - not syncing: sysrq triggered crash in sysrq_handle_crash"
    )
    found = parse_linux_panic(RECORDED_SYSRQ_SERIAL)
    assert found is not None and found.signature == linux_signature(RECORDED_SYSRQ_SERIAL)


@pytest.mark.parametrize("device", ["0,0", "8,1"])
def test_a_panic_message_keeps_its_words_and_loses_its_numbers(device: str) -> None:
    message = f"VFS: Unable to mount root fs on unknown-block({device})"
    line = f"[    3.712345] Kernel panic - not syncing: {message}"
    assert linux_signature(line) == (
        "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block"
    )


def test_a_panic_whose_oops_was_not_read_is_titled_by_the_panic_line() -> None:
    tail = lines_between("demo-acme-sensor-install.log", "---[ end trace", "Kernel panic")
    assert linux_signature(tail) == "Kernel panic - not syncing: Fatal exception"


def test_user_space_and_unreliable_frames_are_not_blamed() -> None:
    # The recorded acme oops without its kernel RIP line: what is left is the user-space
    # "RIP: 0033:0x7f..." after the trace, and the trace itself.
    oops = lines_between("demo-acme-sensor-install.log", "BUG: kernel NULL", "Kernel panic")
    no_rip = [line for line in oops if "RIP: 0010:" not in line]
    assert linux_signature(no_rip) == ACME.replace("acme_check_neighbours", "acme_exec")
    unsure = [line.replace("  acme_exec+", "  ? acme_exec+") for line in no_rip]
    assert linux_signature(unsure) == "BUG: kernel NULL pointer dereference in bprm_execve"


def test_other_cpus_stacks_are_not_blamed() -> None:
    # The recorded hung task with its stack cut below rcu_barrier (all of it machinery): what
    # follows is khungtaskd's own stack ("watchdog"), which did not hang.
    lines = recorded("syzkaller-692-hung-task-x86.log").splitlines()
    cut = next(n for n, line in enumerate(lines) if "rcu_barrier+" in line)
    resumed = next(n for n, line in enumerate(lines) if line.startswith("NMI backtrace for cpu 0"))
    assert any("watchdog+0x" in line for line in lines[resumed:])
    assert linux_signature(lines[: cut + 1] + lines[resumed:]) == "INFO: task hung"


def test_a_log_without_a_crash_has_no_title() -> None:
    clean = lines_between("demo-acme-sensor-install.log", "Linux version", "boot-start 40-other")
    assert linux_signature(clean) == ""
    assert linux_signature("") == ""


# -- Linux: what a guest prints stays bounded -----------------------------------------------------


def test_a_title_is_one_bounded_line_whatever_the_guest_printed() -> None:
    name = "acme_" + "x" * 5000
    log = f"BUG: kernel NULL pointer dereference, address: 0\nRIP: 0010:{name}+0x1/0x2 [acme]\n"
    title = linux_signature(log + "\x1b[31mKernel panic - not syncing: Fatal exception\x1b[0m\n")
    assert len(title) <= TITLE_LENGTH and "\n" not in title and "\x1b" not in title
    assert title.startswith("BUG: kernel NULL pointer dereference in acme_xxx")


def test_a_flooded_boot_is_titled_with_bounded_memory() -> None:
    # The recorded acme oops, then 6,000 stack lines (a trace printed again and again), then
    # the panic: the signature reads what it keeps of the boot, not all of it.
    oops = lines_between("demo-acme-sensor-install.log", "BUG: kernel NULL", "---[ end trace")
    flood = (" bprm_execve+0x5eb/0x650\n" for _ in range(6_000))
    panic = ["[   23.757858] Kernel panic - not syncing: Fatal exception\n"]

    def log() -> Iterator[str]:
        yield from (line + "\n" for line in oops)
        yield from flood
        yield from panic

    tracemalloc.start()
    try:
        found = parse_linux_panic(log())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found is not None and found.signature == ACME
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.1f} MiB traced"


# -- Windows --------------------------------------------------------------------------------------


def test_a_hyperv_crash_line_has_the_stop_code_s_title() -> None:
    found = parse_hyperv_log_line(RECORDED_HYPERV_LINE)
    assert found is not None
    assert found.signature == "MULTIPROCESSOR_CONFIGURATION_NOT_SUPPORTED (0x3E)"
    # The same registers through QMP: the same crash, the same title.
    qmp = {"info": {"type": "hyper-v", "arg1": 0x3E, "arg2": 0x46D359BBDFF, "arg3": 0}}
    from_qmp = parse_guest_panicked(qmp)
    assert from_qmp is not None and from_qmp.signature == found.signature


def test_the_event_log_s_bugcheck_has_the_same_title_as_the_hypervisor_s() -> None:
    # HAND-WRITTEN evidence document (tests/support/windows/README.md): 41 and 1001 of a 0x50.
    evidence = parse_evidence((WINDOWS / "bugcheck_0x50.json").read_bytes().decode("ascii"))
    seen = [e.bugcheck.signature for e in evidence.events if e.bugcheck is not None]
    assert seen == ["PAGE_FAULT_IN_NONPAGED_AREA (0x50)"] * 2  # Kernel-Power 41 and WER 1001
    found = bugcheck(evidence)
    assert found is not None and found.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50)"
    hyperv = parse_hyperv_log_line("panic hyper-v: arg1='0x50', arg2='0xffffd20012345678'")
    assert hyperv is not None and hyperv.signature == found.signature


@pytest.mark.parametrize(
    ("given", "module"),
    [
        ("sensor.sys", "sensor.sys"),
        ("\\SystemRoot\\System32\\drivers\\Sensor.SYS", "sensor.sys"),
        ("C:/Windows/System32/drivers/SENSOR.sys", "sensor.sys"),
        ("sensor!AcmeFilter+0x12", "sensor"),  # WinDbg's module!function: the module part
        ("", None),
        (None, None),
        ("<script>alert(1)</script>", None),  # not a file name: left out, not escaped in
    ],
)
def test_windows_module_names_are_normalised(given: str | None, module: str | None) -> None:
    assert module_name(given) == module
    code_50 = Bugcheck("0x50", "PAGE_FAULT_IN_NONPAGED_AREA")
    expected = "PAGE_FAULT_IN_NONPAGED_AREA (0x50)" + (f" in {module}" if module else "")
    assert windows_signature(code_50, given) == expected


def test_an_m_stop_is_titled_as_its_twin_and_an_unknown_stop_by_its_code() -> None:
    twin = Bugcheck("0x1000007E", bugcheck_name(0x1000007E))
    assert twin.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert windows_signature(twin) == windows_signature(Bugcheck("0x7E", bugcheck_name(0x7E)))
    assert windows_signature(twin) == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (0x7E)"
    assert windows_signature(Bugcheck("0x1D4", bugcheck_name(0x1D4))) == "UNKNOWN_BUGCHECK (0x1D4)"


# -- carried to the verdict and into results.json -------------------------------------------------


def test_the_signature_rides_on_the_bugcheck_event_to_the_watcher() -> None:
    found = parse_linux_panic(recorded("demo-acme-sensor-install.log"))
    assert found is not None
    event = Event(23.8, "serial", "bugcheck", found.name, data=found.as_event_data())
    read = bugcheck_of(event)
    assert read is not None and read.signature == ACME


def test_results_json_keeps_the_signature_and_reads_files_written_before_it() -> None:
    panic = parse_linux_panic(recorded("demo-acme-sensor-install.log"))
    assert panic is not None
    written = crashed_cell(bugcheck=panic).as_json()
    assert written["bugcheck"]["signature"] == ACME  # type: ignore[index]
    read = cell_from_json(written).bugcheck
    assert read is not None and read.signature == ACME
    # An older results.json has no "signature": it still reads, with none.
    del written["bugcheck"]["signature"]  # type: ignore[attr-defined]
    old = cell_from_json(written).bugcheck
    assert old is not None and old.signature == "" and old == panic
