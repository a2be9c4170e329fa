"""An interrupt (Ctrl-C, or SIGTERM made ``Terminated``) ends the run as interrupted, exit 2.

A signal's exception is raised wherever the main thread is, and on Python 3.11 that can be an
instruction without a line number: the traceback entry's ``tb_lineno`` is None, and pytest's
own rendering of the interrupt then fails (``TypeError`` in ``TracebackEntry.lineno``; seen in
``make test`` under load, and upstream in pytest-dev/pytest-xdist#1196): the run exits 1, an
internal error, instead of 2. Here such a traceback is made on purpose (an entry pointing at
an instruction that has no line) and raised as the interrupt.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TEST = """
import sys
import types


def _frame():
    try:
        x = 1
    finally:
        y = 2
    return sys._getframe()


def test_interrupted_where_there_is_no_line():
    frame = _frame()
    lasti = next(
        i for i in range(0, 400, 2) if types.TracebackType(None, frame, i, -1).tb_lineno is None
    )
    raise KeyboardInterrupt().with_traceback(types.TracebackType(None, frame, lasti, -1))
"""


def test_an_interrupt_raised_where_there_is_no_line_still_exits_interrupted(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_stop=TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])
    assert "TypeError" not in result.stdout.str() + result.stderr.str()
