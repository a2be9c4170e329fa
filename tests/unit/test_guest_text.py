"""Guest text is bounded where it enters (issue 8): the serial log at crash time, panic titles,
and what reaches the terminal. Command output: ``test_command_output.py``.

Each test feeds what a crashing or hostile guest produces -- a flooded console, a panic line of
a megabyte, escape sequences -- through the real code path.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import cast

from compatlab.bugcheck import (
    NAME_LENGTH,
    PARAM_LENGTH,
    parse_guest_panicked,
    parse_hyperv_log_line,
    parse_linux_panic,
)
from compatlab.lab.evidence import SERIAL_LINE, SERIAL_WINDOW, CellEvidence, serial_lines
from compatlab.lab.machine import Machine
from compatlab.lab.storage import CellStorage
from compatlab.model import Bugcheck, CellResult, Verdict
from compatlab.plugin import CellFailed
from compatlab.text import OutputBuffer, cap_bytes, cap_text, cut_mark, one_line, printable

MiB = 1024 * 1024
PANIC = "[  812.000001] Kernel panic - not syncing: Fatal exception in interrupt\n"
OOPS = "[  811.900000] BUG: unable to handle page fault for address: ffff888000000000\n"
FLOOD_LINE = b"[  100.000000] acme-av: scanning /usr/lib/x86_64-linux-gnu/libfoo.so again\n"


# -- the helpers ----------------------------------------------------------------------------------


def test_cap_text_keeps_head_and_tail_and_counts_the_cut_bytes() -> None:
    text = "head " + "é" * 1000 + " tail"
    capped = cap_text(text, 20)
    assert capped.startswith("head ") and capped.endswith(" tail")
    kept = capped.split("\n")
    assert kept[1] == cut_mark(len(text.encode()) - len(kept[0].encode()) - len(kept[2].encode()))
    assert cap_text("short", 20) == "short"


def test_cap_text_twice_still_counts_what_the_first_cut_left_out() -> None:
    original = "x" * 10_000
    twice = cap_text(cap_text(original, 1000) + "y" * 500, 100)
    assert twice.count("bytes cut") == 1
    assert twice == "x" * 50 + "\n" + cut_mark(10_000 + 500 - 50 - 50) + "\n" + "y" * 50


def test_cap_bytes_decodes_what_it_keeps() -> None:
    assert cap_bytes(b"abc", 10) == "abc"
    assert cap_bytes(b"a" * 100 + b"\xff", 10) == "aaaaa\n" + cut_mark(91) + "\naaaa\ufffd"


def test_output_buffer_holds_at_most_its_limit_whatever_arrives() -> None:
    buffer = OutputBuffer(1000)
    for n in range(10_000):
        buffer.append(f"line {n:05d}\n".encode())
        assert len(buffer) <= 1000
    text = buffer.text()
    assert text.startswith("line 00000\n") and text.endswith("line 09999\n")
    assert cut_mark(buffer.total - 1000) in text
    assert buffer.total == 110_000


def test_output_buffer_without_limit_keeps_everything() -> None:
    buffer = OutputBuffer(None)
    for _ in range(100):
        buffer.append(b"0123456789")
    assert buffer.data() == b"0123456789" * 100 and buffer.cut == 0


def test_printable_strips_escapes_and_controls_but_keeps_newlines_and_tabs() -> None:
    hostile = (
        "\x1b[2J\x1b[H\x1b[31mred\x1b[0m\t\x1b]0;owned\x07title"
        "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \x9b6n\x00nul\x07bel\rcr\x85c1"
        "\x1bPdcs-payload\x1b\\ \u202eevil\u202c\r\nnext\x1b["
    )
    assert printable(hostile) == "red\ttitlelink nulbelcrc1 evil\nnext"


def test_one_line_folds_and_bounds() -> None:
    assert one_line("a\n\tb  \x1b[1mc\x1b[0m", 10) == "a b c"
    long = one_line("Kernel panic - not syncing: " + "A" * 10 * MiB, 200)
    assert len(long) == 200 and long.endswith("…")


# -- 1. the serial log at crash time --------------------------------------------------------------


def _evidence(tmp_path: Path) -> CellEvidence:
    storage = CellStorage("run-1", "demo/bios-1cpu/acme-av", root=tmp_path / "storage")
    storage.serial_log.parent.mkdir(parents=True)
    # Only the Windows path asks the machine (for the domain log); a Linux crash reads the file.
    return CellEvidence(storage, cast(Machine, None), tmp_path / "report" / "c", tmp_path)


def _flood(path: Path, mib: int, *, then: str = "") -> int:
    block = FLOOD_LINE * (MiB // len(FLOOD_LINE))
    with path.open("ab") as log:
        for _ in range(mib):
            log.write(block)
        log.write(then.encode())
        return log.tell()


def test_a_panic_after_a_flooded_console_is_found_without_reading_the_log_into_memory(
    tmp_path: Path,
) -> None:
    evidence = _evidence(tmp_path)
    _flood(evidence.storage.serial_log, 64, then=OOPS + PANIC)

    tracemalloc.start()
    try:
        bugcheck = evidence.bugcheck("linux", 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert bugcheck is not None
    assert bugcheck.name == "Kernel panic - not syncing: Fatal exception in interrupt"
    assert bugcheck.params == ("BUG: unable to handle page fault for address: ffff888000000000",)
    # Before: the whole 64 MiB read, decoded and split (~200 MiB traced).
    assert peak < 2 * MiB, f"{peak / MiB:.1f} MiB traced to find one panic line"


def test_serial_text_is_bounded_to_the_window(tmp_path: Path) -> None:
    evidence = _evidence(tmp_path)
    _flood(evidence.storage.serial_log, 24, then=PANIC)
    text = evidence.serial_text(0)
    assert len(text) <= SERIAL_WINDOW
    assert text.endswith(PANIC)
    assert text.startswith("[  100.000000]")  # starts at a line, not inside one
    assert parse_linux_panic(text) is not None


def test_serial_lines_reads_from_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"Linux version 6.1\n" + PANIC.encode() + b"Linux version 6.1\nok\n")
    offset = len(b"Linux version 6.1\n" + PANIC.encode())
    assert list(serial_lines(log, offset)) == ["Linux version 6.1\n", "ok\n"]
    assert list(serial_lines(log, log.stat().st_size + 10)) == []


def test_a_line_without_end_is_cut_and_the_panic_after_it_still_found(tmp_path: Path) -> None:
    evidence = _evidence(tmp_path)
    evidence.storage.serial_log.write_bytes(b"\x00" * (3 * MiB) + b"\n" + PANIC.encode())
    lines = list(serial_lines(evidence.storage.serial_log))
    assert [len(line) for line in lines] == [SERIAL_LINE, len(PANIC)]
    assert evidence.linux_panic(0) is not None


def test_no_serial_log_is_no_bugcheck(tmp_path: Path) -> None:
    evidence = _evidence(tmp_path)
    assert evidence.bugcheck("linux", 0) is None
    assert evidence.serial_text() == ""


def test_the_streamed_reader_keeps_the_parser_s_rules(tmp_path: Path) -> None:
    evidence = _evidence(tmp_path)
    log = OOPS + "[    0.000000] Linux version 6.1.0\n" + "Oops: 0002 [#1] SMP\n" + PANIC
    evidence.storage.serial_log.write_text(log)
    # The Oops headline belongs to the previous boot; the Oops line and the panic to this one.
    assert evidence.linux_panic(0) == parse_linux_panic(log)
    bugcheck = evidence.linux_panic(0)
    assert bugcheck is not None and bugcheck.params == ("Oops: 0002 [#1] SMP",)


# -- 2. panic titles and bugcheck parameters ------------------------------------------------------


def test_a_megabyte_panic_line_becomes_a_bounded_name() -> None:
    line = "[    3.7] Kernel panic - not syncing: " + "\x1b[31m" + "X" * MiB + "\n"
    oops = "[    3.6] BUG: " + "Y" * MiB + "\n"
    bugcheck = parse_linux_panic(oops + line)
    assert bugcheck is not None
    assert len(bugcheck.name) <= NAME_LENGTH
    assert bugcheck.name.startswith("Kernel panic - not syncing: XXX")
    assert "\x1b" not in bugcheck.name
    assert [len(p) for p in bugcheck.params] == [PARAM_LENGTH]


def test_a_coloured_panic_line_is_still_a_panic() -> None:
    bugcheck = parse_linux_panic("\x1b[1;31mKernel panic - not syncing: boom\x1b[0m\r\n")
    assert bugcheck is not None and bugcheck.name == "Kernel panic - not syncing: boom"


def test_hyperv_values_beyond_64_bits_are_ignored_not_a_traceback() -> None:
    # int() refuses more than 4300 decimal digits: this was a ValueError out of the parser.
    line = "panic hyper-v: arg1='0x50', arg2='" + "9" * 5000 + "', arg3='0x" + "f" * 5000 + "'"
    bugcheck = parse_hyperv_log_line(line)
    assert bugcheck is not None
    assert bugcheck.code == "0x50" and bugcheck.params == ()
    assert parse_hyperv_log_line("panic hyper-v: arg1='0x" + "1" * 40 + "'") is None


def test_qmp_values_beyond_64_bits_are_ignored() -> None:
    payload = {"info": {"type": "hyper-v", "arg1": 0x50, "arg2": 2**200, "arg3": -1}}
    bugcheck = parse_guest_panicked(payload)
    assert bugcheck is not None and bugcheck.params == ()
    assert parse_guest_panicked({"info": {"type": "hyper-v", "arg1": "0x" + "f" * 400}}) is None


# -- 3. the terminal ------------------------------------------------------------------------------


def test_the_failure_line_on_the_terminal_carries_no_escapes() -> None:
    name = "Kernel panic - not syncing: \x1b]0;pwned\x07\x1b[2J\x1b[31mboom\x1b[0m\x9b5n"
    result = CellResult(
        id="demo/bios-1cpu/acme-av",
        build="demo",
        hardware="bios-1cpu",
        products=("acme-av",),
        verdict=Verdict.CRASH,
        bugcheck=Bugcheck("panic", name),
        reason="crash: the serial log shows a panic: " + name + "\r\n" + "z" * 100_000,
    )
    line = CellFailed(result).summary()
    assert "\x1b" not in line and "\x9b" not in line and "\r" not in line and "\x07" not in line
    assert "boom" in line
    assert len(line) < 2100


def test_an_unterminated_string_escape_does_not_hide_the_lines_after_it() -> None:
    # A guest (or a log cut mid-escape) that opens an OSC or DCS string and never ends it must
    # not blank the rest of its serial log on the report: the string ends with its line.
    text = "boot ok\n\x1b]0;never ended\nBUG: kernel NULL pointer dereference\n\x1bPdcs\npanic\n"
    assert printable(text) == "boot ok\n\nBUG: kernel NULL pointer dereference\n\npanic\n"
