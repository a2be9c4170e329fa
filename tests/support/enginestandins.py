"""Loaded into ``compatlab worker`` by Dask's ``--preload``: the worker's lab seams replaced by
scripted guests on libvirt's ``test:///default`` driver (tests/support/fakeguest.py).

A stand-in lab, not a hypervisor: the worker, the scheduler, the task, placement and the
engine's failure handling are real; the guests are scripts. Each VM's channel, when made, drops
a mark ``<cell-slug>.<pid>.<ns>`` in ``$COMPATLAB_TEST_MARKS`` so a test knows which worker process
runs which cell; every boot takes ``$COMPATLAB_TEST_BOOT`` seconds (default 2).

``$COMPATLAB_TEST_BROKEN`` set: a broken host -- every VM's storage fails (a lab failure) and the
host's health check finds the problem that variable names.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import compatlab.lab.health
import compatlab.run
from compatlab.errors import StorageError
from compatlab.lab.storage import cell_slug
from tests.support.fakeguest import ScriptedGuest, TestMachine, TestStorage


def _channels(cell: Any, machine: Any, forwards: Any = ()) -> ScriptedGuest:
    marks = Path(os.environ["COMPATLAB_TEST_MARKS"])
    (marks / f"{cell_slug(cell.id)}.{os.getpid()}.{time.time_ns()}").write_text(machine.name)
    boot = float(os.environ.get("COMPATLAB_TEST_BOOT", "2"))
    return ScriptedGuest(machine, machine.storage_dir / "serial.log", boot_seconds=boot)


class _BrokenStorage(TestStorage):
    def create_overlay(self, golden: Path) -> Path:
        raise StorageError(f"stand-in: {os.environ['COMPATLAB_TEST_BROKEN']}")


def _broken_check(lab: Any, **_: Any) -> list[str]:
    return [f"stand-in: {os.environ['COMPATLAB_TEST_BROKEN']}"]


BROKEN = bool(os.environ.get("COMPATLAB_TEST_BROKEN"))
if BROKEN:
    compatlab.lab.health.check_host = _broken_check  # type: ignore[assignment]

compatlab.run.LabContext = functools.partial(  # type: ignore[misc]
    compatlab.run.LabContext,
    storages=_BrokenStorage if BROKEN else TestStorage,
    machines=TestMachine,
    channels=_channels,
    retry_wait=0.0,
)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: everything happened at import."""
