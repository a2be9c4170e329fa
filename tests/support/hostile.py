"""Helpers for the hostile-input tests (issue 8): a bounded call, and matrix loading errors."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from compatlab.errors import InputError, MatrixError
from compatlab.matrix import load_matrix
from tests.support.catalogs import matrix

T = TypeVar("T")

AXES = """
axes:
  build: [lin-a, lin-b]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av], [av, edr]]
"""
# The standard candidate is lines 1-7, AXES lines 8-12: a body appended to AXES starts at 13.
BODY_LINE = 13


def bounded(call: Callable[[], T], seconds: float = 10.0, unblock: Path | None = None) -> T:
    """``call()``, failing the test if it is still running after ``seconds`` (a hang).

    ``unblock`` is a FIFO the call may be stuck reading: opening it for writing, then closing
    it, gives the reader an end of file so the thread can finish.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(5)
        pytest.fail(f"still running after {seconds} s: a hang")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def load_error(path: Path, project: Path, kind: type[InputError] = MatrixError) -> InputError:
    with pytest.raises(kind) as info:
        bounded(lambda: load_matrix(path, catalog_root=project))
    return info.value


def matrix_error(project: Path, body: str, kind: type[InputError] = MatrixError) -> InputError:
    return load_error(matrix(project, body), project, kind)
