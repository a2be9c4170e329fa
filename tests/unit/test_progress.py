"""The live display: its text on a fake clock, its rules for staying quiet, the thread rule, and
what its drawing does to a terminal's screen (a VT emulator, pyte, plays the bytes).

The end-to-end runs (a matrix on libvirt's test driver, in a pseudo-terminal and in a pipe)
are tests/unit/test_progress_terminal.py.
"""

from __future__ import annotations

import io
import re
import threading

import pyte
import pytest
from _pytest._io import TerminalWriter
from rich.cells import cell_len

from compatlab.display import Running, Snapshot, TerminalBlock, compose, elapsed
from compatlab.progress import Progress, quiet_reason

pytest_plugins = ["pytester"]


class Clock:
    """A fake monotonic clock: seconds move only when the test says."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    """A terminal's file as pytest's writer sees it: a tty, recording what is written."""

    def isatty(self) -> bool:
        return True


def terminal(columns: int = 60, *, tty: bool = True) -> tuple[TerminalWriter, io.StringIO]:
    file: io.StringIO = Tty() if tty else io.StringIO()
    tw = TerminalWriter(file)
    tw.hasmarkup = False
    tw.fullwidth = columns
    return tw, file


# -- the text -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-1, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (605, "10m05s"), (3600, "1h00m"),
     (3 * 3600 + 7 * 60 + 59, "3h07m")],
)  # fmt: skip
def test_elapsed_times(seconds: float, shown: str) -> None:
    assert elapsed(seconds) == shown


def test_every_running_cell_with_its_phase_and_elapsed_time_under_the_counts() -> None:
    clock = Clock()
    progress = Progress(None, clock=clock)
    progress.plan(24)
    for n in range(9):
        progress(f"done/{n}", "starting")
        progress.finished(f"done/{n}")
    progress("lin-a/bios-1cpu/none", "starting")
    clock.now += 2
    progress("win11/uefi-tpm/av+edr", "installing av")
    clock.now += 60
    progress("lin-b/bios-1cpu/av", "starting")
    clock.now += 5
    progress("lin-a/bios-1cpu/none", "boot 1 of 2")  # a later phase keeps the cell's start
    lines = compose(progress.snapshot(), width=80, height=20, color=False)
    assert lines == [
        "3 running, 9 done, 12 queued",
        "  lin-a/bios-1cpu/none   boot 1 of 2    1m07s",
        "  win11/uefi-tpm/av+edr  installing av  1m05s",
        "  lin-b/bios-1cpu/av     starting          5s",
    ]


def test_a_phase_measured_on_a_lab_worker_keeps_its_elapsed_time() -> None:
    clock = Clock()
    progress = Progress(None, clock=clock)
    progress("c", "boot 2 of 2", elapsed=95.0)
    clock.now += 10
    progress("c", "baking 60 s", elapsed=104.8)  # the worker's own count; ours goes on
    assert compose(progress.snapshot(), width=40, height=5, color=False)[1:] == [
        "  c  baking 60 s  1m45s"
    ]


def test_a_cell_whose_attempt_was_lost_runs_again() -> None:
    progress = Progress(None, clock=Clock())
    progress.plan(2)
    progress("a", "starting")
    progress("a", "")  # the attempt ended without a result the controller took
    assert (progress.snapshot().done, progress.snapshot().queued) == (1, 1)
    progress("a", "starting")
    snapshot = progress.snapshot()
    assert ([r.cell for r in snapshot.running], snapshot.done, snapshot.queued) == (["a"], 0, 1)


def test_nothing_to_show_before_anything_was_planned() -> None:
    assert compose(Progress(None).snapshot(), width=80, height=20, color=False) == []


@pytest.mark.parametrize("width", [12, 20, 33, 60, 120])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    running = (
        Running("win11-24h2/uefi-tpm-8cpu/" + "+".join(["edr"] * 30), "installing 防病毒 " * 9, 0),
        Running("lin/bios-1cpu/none", "boot 1 of 2", 3599.0),
    )
    lines = compose(Snapshot(running, 10, 20, 4000.0), width=width, height=10, color=False)
    assert all(cell_len(line) <= width for line in lines), lines
    assert lines[0].startswith("2 running")
    if width >= 20:  # room for a cell's line: the elapsed time is never the part cut
        assert [line.split()[-1] for line in lines[1:]] == ["1h06m", "6m41s"]
    else:
        assert len(lines) == 1


def test_more_running_cells_than_rows_are_counted_on_a_last_line() -> None:
    running = tuple(Running(f"cell-{n}", "baking", float(n)) for n in range(10))
    lines = compose(Snapshot(running, 0, 0, 100.0), width=60, height=5, color=False)
    assert [line.split()[0] for line in lines] == ["10", "cell-0", "cell-1", "cell-2", "…"]
    assert lines[-1] == "  … and 7 more running"


def test_phase_text_is_shown_as_spelt_never_as_markup_or_escapes() -> None:
    running = (Running("lin/x/[bold]av", "installing [red]av\x1b[2J\x1b]0;owned\x07", 0.0),)
    plain = compose(Snapshot(running, 0, 0, 1.0), width=80, height=5, color=False)
    assert plain[1].split() == ["lin/x/[bold]av", "installing", "[red]av", "1s"]
    colored = "".join(compose(Snapshot(running, 0, 0, 1.0), width=80, height=5, color=True))
    assert "[red]av" in colored
    # Only SGR styles are left: no cursor move, screen clear or title change of the text's.
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored).isprintable()


# -- when it stays quiet --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"verbosity": -1}, "-q"),
        ({"verbosity": -2}, "-q"),
        ({"xdist_worker": True}, "xdist worker"),
        ({"live_logging": True}, "log_cli"),
        ({"environ": {"TERM": "dumb"}}, "TERM=dumb"),
        ({"environ": {"CI": "true"}}, "CI"),
        ({"environ": {"BUILD_NUMBER": "7"}}, "CI"),
        ({"verbosity": 2, "environ": {"TERM": "xterm-256color"}}, None),
    ],
)
def test_quiet_rules(kwargs: dict[str, object], said: str | None) -> None:
    given: dict[str, object] = {
        "verbosity": 0,
        "xdist_worker": False,
        "live_logging": False,
        "environ": {"TERM": "xterm"},
    }
    reason = quiet_reason(**{**given, **kwargs})  # type: ignore[arg-type]
    assert reason is None if said is None else said in str(reason)


@pytest.mark.parametrize(
    ("args", "quiet"),
    [((), None), (("-v",), None), (("-q",), "-q"), (("-o", "log_cli=true"), "log_cli")],
)
def test_quiet_rules_read_from_pytest_options(
    pytester: pytest.Pytester, args: tuple[str, ...], quiet: str | None
) -> None:
    config = pytester.parseconfigure(*args)
    progress = Progress.for_config(config, environ={"TERM": "xterm"})
    if quiet is None:
        assert (progress.block is not None, progress.quiet) == (True, None)
    else:
        assert progress.block is None and quiet in str(progress.quiet)


def test_an_xdist_worker_is_quiet(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfigure()
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]  # as xdist marks it
    assert "xdist" in str(Progress.for_config(config, environ={"TERM": "xterm"}).quiet)


def test_not_a_terminal_draws_nothing_and_stays_quiet() -> None:
    tw, file = terminal(tty=False)
    progress = Progress(TerminalBlock(tw, None), clock=Clock())
    progress.plan(1)
    progress("c", "starting")
    progress.render()
    progress.clear()
    assert (file.getvalue(), progress.block, progress.quiet) == (
        "",
        None,
        "stdout is not a terminal",
    )


# -- the thread rule ------------------------------------------------------------------------


def test_engine_threads_only_record_and_the_main_thread_draws() -> None:
    tw, file = terminal()
    progress = Progress(TerminalBlock(tw, None), clock=Clock())
    progress.plan(8)

    def cell(n: int) -> None:
        for phase in ("starting", "provision", f"boot 1 of {n}"):
            progress(f"cell-{n}", phase)
        progress.render()  # from an engine thread: must draw nothing

    threads = [threading.Thread(target=cell, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert file.getvalue() == ""
    progress.render()
    drawn = file.getvalue()
    assert "8 running, 0 done, 0 queued" in drawn
    assert all(f"cell-{n}" in drawn and f"boot 1 of {n}" in drawn for n in range(8))


# -- what the drawing does to a screen ------------------------------------------------------


def screen_lines(screen: pyte.HistoryScreen) -> list[str]:
    """Every line the screen showed, scrolled off or not, trailing blanks dropped."""
    old = ["".join(line[x].data for x in range(screen.columns)) for line in screen.history.top]
    lines = [line.rstrip() for line in [*old, *screen.display]]
    while lines and not lines[-1]:
        lines.pop()
    return lines


BEFORE = "".join(f"line {n}\r\n" for n in range(8))


@pytest.mark.parametrize("rows", [6, 40], ids=["at-the-bottom-scrolling", "mid-screen"])
@pytest.mark.parametrize(
    ("current", "outcome"),
    [
        ("matrix/m.yaml ..", "F.   [100%]\r\n== 1 failed, 3 passed in 9.1s ==\r\n"),
        ("matrix/m.yaml::lin/bios-1cpu/av ", "FAILED   [ 50%]\r\nmatrix/m.yaml::next "),
        ("", "== 1 failed ==\r\n"),
    ],
    ids=["progress-dots", "verbose", "empty-line"],
)
def test_the_display_leaves_pytests_lines_as_it_found_them(
    monkeypatch: pytest.MonkeyPatch, rows: int, current: str, outcome: str
) -> None:
    monkeypatch.setenv("LINES", str(rows))
    tw, file = terminal(columns=50)
    clock = Clock()
    progress = Progress(TerminalBlock(tw, None), clock=clock)
    progress.plan(5)
    tw.write(BEFORE + current)
    for n in range(4):  # the display grows, changes and shrinks while pytest's line waits
        progress(f"lin/bios-1cpu/c{n}", "boot 1 of 2")
        clock.now += 1
        progress.render()
    progress("lin/bios-1cpu/c0", "")
    progress.render()
    assert "3 running, 1 done, 1 queued" in file.getvalue()
    progress.clear()
    tw.write(outcome)

    shown = pyte.HistoryScreen(50, rows, history=1000)
    pyte.Stream(shown).feed(file.getvalue())
    expected = pyte.HistoryScreen(50, rows, history=1000)
    pyte.Stream(expected).feed(BEFORE + current + outcome)
    assert screen_lines(shown) == screen_lines(expected)
    assert shown.cursor.x == expected.cursor.x


def test_a_line_that_ends_at_the_terminals_edge_gets_no_display() -> None:
    tw, file = terminal(columns=20)
    progress = Progress(TerminalBlock(tw, None), clock=Clock())
    progress.plan(2)
    progress("c", "starting")
    tw.write("x" * 20)  # the cursor waits to wrap: there is no column to come back to
    before = file.getvalue()
    progress.render()
    progress.clear()
    assert file.getvalue() == before


def test_the_display_fits_the_screen_with_pytests_line_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LINES", "8")
    tw, file = terminal(columns=50)
    progress = Progress(TerminalBlock(tw, None), clock=Clock())
    for n in range(30):
        progress(f"cell-{n}", "baking")
    tw.write("matrix/m.yaml ")
    progress.render()
    assert progress.block is not None and progress.block.shown == 7  # 8 rows: pytest's + 7
    screen = pyte.Screen(50, 8)
    pyte.Stream(screen).feed(file.getvalue())
    assert screen.display[0].rstrip() == "matrix/m.yaml"
