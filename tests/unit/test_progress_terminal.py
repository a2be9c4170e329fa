"""The live display in a real ``pytest --matrix`` run: four cells on libvirt's ``test:///default``
driver with scripted guests (tests/support/fakeguest.py), two at a time on the embedded engine.

Each run is a process of its own (an in-process nested run would start the Dask engine inside
this test process). In a pseudo-terminal the display is drawn -- its bytes are in the output --
and the screen a terminal shows at the end, played by a VT emulator (pyte), is pytest's own:
the progress line, the ``-v`` lines, the failures and the summary, with nothing of the display
left. In a pipe (a CI log) not one byte of it is written.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import termios
import time
from pathlib import Path

import pyte
import pytest

from tests.support.catalogs import stand_in_project
from tests.unit.test_runner_sigterm import STAND_INS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
COLUMNS, ROWS = 100, 30
# The scripted guests: a cell with a product crashes at its first boot (a failed item), the
# others pass; each bakes a second, so the display is drawn a few times per item.
SCENARIO = (
    "scenario: {boots: 1, boot_timeout: 60, bake: 1.0, boot_loop: 3, baseline: never,"
    " rollback: false}\n"
)
ITEMS = [
    ("lin-a/bios-1cpu/none", "PASSED"),
    ("lin-a/bios-1cpu/av", "FAILED"),
    ("lin-b/bios-1cpu/none", "PASSED"),
    ("lin-b/bios-1cpu/av", "FAILED"),
]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    crash = STAND_INS.replace('["hang"] if cell.product_names', '["crash"] if cell.product_names')
    assert crash != STAND_INS
    root = stand_in_project(pytester.path, SCENARIO, crash, "{vcpus: 2, memory: 4096}")
    # A developer's terminal: not a CI run (CI=true would keep the display quiet on its own).
    # Nor an xdist worker's child: under `make test` (-n 2) the run would inherit the worker's
    # PYTEST_XDIST_WORKER_COUNT and take half the capacity, one cell at a time.
    for name in (
        "CI",
        "BUILD_NUMBER",
        "PYTEST_ADDOPTS",
        "NO_COLOR",
        "PY_COLORS",
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    monkeypatch.setenv("LINES", str(ROWS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(root)]))
    return root


def _args(report: str, *more: str) -> list[str]:
    return [
        # -rN: no short summary, whose lines pytest cuts to different lengths with and
        # without colour (its own quirk, not the display's).
        *("-p", "stand_ins", "-p", "no:cacheprovider", "-rN"),
        *("--matrix", "matrix/m.yaml", "--matrix-hosts", "lab.yaml", "--matrix-report", report),
        *more,
    ]


def run_in_a_terminal(pytester: pytest.Pytester, *args: str) -> tuple[bytes, list[str]]:
    """Run pytest with a pseudo-terminal as its stdout and stderr: what it wrote, and the
    screen's lines at the end (all of them: those scrolled off the top too)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    runner = pytester.popen(
        [*pytester._getpytestargs(), *args], stdout=follower, stderr=follower, close_fds=True
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the runner exited and closed the terminal
                break
            if not chunk:
                break
            output += chunk
        else:
            pytest.fail(f"the run did not finish:\n{output[-3000:]!r}")
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait()
        os.close(leader)
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10000)
    pyte.ByteStream(screen).feed(output)
    old = ["".join(line[x].data for x in range(COLUMNS)) for line in screen.history.top]
    lines = [line.rstrip() for line in [*old, *screen.display]]
    while lines and not lines[-1]:
        lines.pop()
    return output, lines


def _wrapped(lines: list[str]) -> list[str]:
    """Lines as a terminal of :data:`COLUMNS` shows them (they are ASCII here)."""
    return [
        line[i : i + COLUMNS].rstrip() for line in lines for i in range(0, len(line) or 1, COLUMNS)
    ]


def _normal(lines: list[str]) -> list[str]:
    """Lines as two runs of the same cells share them: no durations."""
    text = "\n".join(lines)
    text = re.sub(r" in \d+\.\d+s( \(\S+\))? ", " in Ns ", text)
    return [re.sub(r"=+ (.*?) =+$", r"== \1 ==", line) for line in text.splitlines()]


def test_the_display_is_drawn_and_leaves_pytests_screen_as_a_pipe_shows_it(
    pytester: pytest.Pytester, project: Path
) -> None:
    raw, screen = run_in_a_terminal(pytester, *_args("report-1"))
    # Drawn: the header and the cells' phases went to the terminal while the cells ran.
    assert re.search(rb"2 running, \d+ done, \d+ queued", raw), raw[-3000:]
    assert b"baking 1 s (boot 1 of 1)" in raw
    piped = pytester.runpytest_subprocess(*_args("report-2"))
    piped.assert_outcomes(passed=2, failed=2)
    text = piped.stdout.str()
    # Quiet in a pipe: no header, no cell line, no cursor move.
    assert "running," not in text and "\x1b" not in text, text
    # What the terminal shows at the end is what the pipe got: nothing of the display is left.
    expected = _wrapped([line.replace("report-2", "report-1") for line in piped.stdout.lines])
    assert _normal(screen) == _normal(expected), "\n".join(screen)
    assert re.fullmatch(r"matrix/m\.yaml \.F\.F +\[100%\]", _line(screen, "matrix/m.yaml "))


def test_the_verbose_lines_stay_whole(pytester: pytest.Pytester, project: Path) -> None:
    raw, screen = run_in_a_terminal(pytester, *_args("report", "-v"))
    assert re.search(rb"2 running, \d+ done, \d+ queued", raw), raw[-3000:]
    items = [line for line in screen if line.startswith("matrix/m.yaml::")]
    assert [line.split()[0:2] for line in items] == [
        [f"matrix/m.yaml::{cell}", outcome] for cell, outcome in ITEMS
    ], "\n".join(screen)
    assert all(re.search(r"(PASSED|FAILED) +\[ *\d+%\]$", line) for line in items), items
    assert not any("running," in line for line in screen)
    assert re.fullmatch(r"=+ 2 failed, 2 passed in [\d.]+s( \(.*\))? =+", screen[-1]), screen[-1]


def test_quiet_under_q_even_on_a_terminal(pytester: pytest.Pytester, project: Path) -> None:
    raw, screen = run_in_a_terminal(pytester, *_args("report", "-q"))
    assert b"running," not in raw and b"baking" not in raw, raw[-3000:]
    assert re.fullmatch(r"2 failed, 2 passed in [\d.]+s( \(.*\))?", screen[-1]), screen[-1]


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return found[0]
