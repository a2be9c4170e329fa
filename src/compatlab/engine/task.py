"""One cell on an engine worker: the task the engine runs, wherever it runs.

The same function runs a cell in the embedded engine (a thread of the pytest process) and on a
``compatlab worker`` of another host: :func:`run_cell_task` looks up the lab this process runs
cells on (:func:`register_lab`; ``compatlab worker`` registers a factory that opens one per run),
runs :func:`~compatlab.scenario.run_cell` with the cell's evidence going to a staging folder on
this host, and returns a :class:`TaskOutcome`: the result and an :class:`EvidenceBundle`.

An attempt is **claimed once** before anything runs (a ``distributed.Lock`` named after the
attempt's key, whose lease never expires). An engine that runs a task a second time by itself --
Dask reschedules the tasks of a worker it retires gracefully, and, unless the scheduler is
configured with ``allowed-failures: 0``, those of a worker that died -- finds the claim taken and
gets :attr:`TaskOutcome.duplicate` back at once: the controller treats the attempt as lost and
decides itself whether to submit another. A cell is never run twice behind compatlab's back.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.errors import LabError
from compatlab.model import CellResult

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.scenario import LabContext

__all__ = [
    "FILE_LIMIT",
    "CellTask",
    "EvidenceBundle",
    "TaskOutcome",
    "register_lab",
    "run_cell_task",
    "set_lab_factory",
    "unregister_lab",
]

log = logging.getLogger("compatlab.engine")

#: A file of a cell's evidence larger than this travels as its head and its tail, with a line
#: saying what was cut between them (a flooded serial log: the first boots and the panic at
#: the end are what matter). The whole file stays on the worker until the cell is removed.
FILE_LIMIT = 64 * 1024 * 1024
_HEAD = FILE_LIMIT // 4

_labs: dict[str, Callable[[], LabContext]] = {}
_factory: Callable[[str], LabContext] | None = None
_lock = threading.Lock()


def register_lab(run_id: str, lab: Callable[[], LabContext]) -> None:
    """Cells of run ``run_id`` run on ``lab()`` in this process (the embedded engine)."""
    with _lock:
        _labs[run_id] = lab


def unregister_lab(run_id: str) -> None:
    with _lock:
        _labs.pop(run_id, None)


def set_lab_factory(factory: Callable[[str], LabContext] | None) -> None:
    """Cells of a run nobody registered run on ``factory(run_id)`` (``compatlab worker``)."""
    global _factory
    with _lock:
        _factory = factory


def _lab_for(run_id: str) -> LabContext:
    with _lock:
        registered, factory = _labs.get(run_id), _factory
    if registered is not None:
        return registered()
    if factory is not None:
        return factory(run_id)
    raise LabError(f"this worker ({_worker_name()}) has no lab for run {run_id}")


@dataclass(frozen=True)
class CellTask:
    """What the controller sends: the cell, its run, and the attempt's key (claimed once)."""

    cell: Cell
    run_id: str
    key: str


@dataclass
class TaskOutcome:
    """What comes back: the cell's result and its evidence, or ``duplicate`` (see module)."""

    result: CellResult | None
    worker: str
    evidence: EvidenceBundle | None = None
    duplicate: bool = False


class EvidenceBundle:
    """A cell's evidence, as the worker left it in its staging folder.

    In the process that made it (the embedded engine: Dask passes results between threads
    without pickling) :meth:`unpack` moves the files as they are -- a flooded serial log whole.
    Pickled to travel to another host's controller, it becomes a tar of the files, each capped
    at :data:`FILE_LIMIT` (head and tail). The staging folder goes when the bundle is unpacked,
    discarded or garbage-collected.
    """

    def __init__(self, staging: Path, folder: Path) -> None:
        self.staging: Path | None = staging  # the worker's report_dir for this cell
        self.folder = folder  # the cell's evidence, under staging
        self.data: bytes | None = None
        self._cleanup: Callable[[], object] = weakref.finalize(self, shutil.rmtree, staging, True)

    @classmethod
    def pack(cls, staging: Path, folder: Path) -> EvidenceBundle | None:
        """``folder`` (under ``staging``) as a bundle; None when there is no evidence."""
        if not folder.is_dir():
            return None
        return cls(staging, folder)

    def _tar(self) -> bytes:
        assert self.staging is not None
        with tempfile.TemporaryFile() as packed:
            with tarfile.open(fileobj=packed, mode="w:gz", compresslevel=1) as tar:
                for file in sorted(p for p in self.folder.rglob("*") if p.is_file()):
                    arcname = file.relative_to(self.staging).as_posix()
                    size = file.stat().st_size
                    if size <= FILE_LIMIT:
                        tar.add(file, arcname=arcname, recursive=False)
                    else:
                        _add_capped(tar, file, arcname, size)
            packed.seek(0)
            return packed.read()

    def __getstate__(self) -> dict[str, object]:
        if self.data is None and self.staging is not None:
            self.data = self._tar()
            self.discard_staging()
        return {"data": self.data}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.staging = None
        self.data = state["data"]  # type: ignore[assignment]
        self._cleanup = _nothing

    def unpack(self, report_dir: Path) -> None:
        """Put the evidence under ``report_dir``, where the result's artifacts point."""
        if self.staging is not None:
            target = report_dir / self.folder.relative_to(self.staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(self.folder, target, dirs_exist_ok=True)
        elif self.data is not None:
            with tarfile.open(fileobj=io.BytesIO(self.data), mode="r:gz") as tar:
                tar.extractall(report_dir, filter="data")  # no link or path outside report_dir
        self.discard()

    def discard_staging(self) -> None:
        self._cleanup()
        self.staging = None

    def discard(self) -> None:
        self.discard_staging()
        self.data = None


def _nothing() -> None:
    return None


def _add_capped(tar: tarfile.TarFile, file: Path, arcname: str, size: int) -> None:
    tail = FILE_LIMIT - _HEAD
    marker = (
        f"\n[compatlab: {size - FILE_LIMIT} bytes of this {size}-byte file cut here in transit "
        f"from worker {_worker_name()}; the whole file stayed on the worker]\n"
    ).encode()
    with tempfile.TemporaryFile() as capped, file.open("rb") as whole:
        shutil.copyfileobj(_Limited(whole, _HEAD), capped)
        capped.write(marker)
        whole.seek(size - tail)
        shutil.copyfileobj(whole, capped)
        info = tar.gettarinfo(str(file), arcname=arcname)
        info.size = capped.tell()
        capped.seek(0)
        tar.addfile(info, capped)


class _Limited(io.RawIOBase):
    def __init__(self, stream: io.BufferedReader, limit: int) -> None:
        self.stream, self.left = stream, limit

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            return 0
        data = self.stream.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def readable(self) -> bool:
        return True


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _claim(key: str) -> bool:
    """Whether this is the first run of attempt ``key`` (outside a Dask worker: always)."""
    try:
        import dask
        from distributed import Lock, get_worker

        get_worker()
    except (ImportError, ValueError):
        return True
    # A lease that never expires: with the default (30 s) a rerun could take the claim of a
    # holder that died (distributed/semaphore.py, _check_lease_timeout).
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "inf"}):
        return bool(Lock(f"compatlab-claim-{key}").acquire(blocking=False))


def run_cell_task(task: CellTask) -> TaskOutcome:
    """Run one cell to a verdict on this worker (see the module's docstring)."""
    from compatlab.lab.storage import cell_slug
    from compatlab.scenario import infra_error_result, run_cell

    worker = _worker_name()
    if not _claim(task.key):
        log.warning("compatlab: %s ran again by the engine; refused", task.key)
        return TaskOutcome(None, worker, duplicate=True)
    try:
        lab = _lab_for(task.run_id)
    except LabError as exc:
        return TaskOutcome(infra_error_result(task.cell, str(exc)), worker)
    staging = Path(tempfile.mkdtemp(prefix="compatlab-report-"))
    bundle = None
    try:
        lab.progress(task.cell.id, "starting")
        result = run_cell(task.cell, replace(lab, report_dir=staging))
        cell = task.cell
        folder = staging / "cells" / cell_slug(f"{Path(cell.matrix).stem}/{cell.id}")
        bundle = EvidenceBundle.pack(staging, folder)
        return TaskOutcome(result, worker, bundle)
    finally:
        lab.progress(task.cell.id, "")  # done
        if bundle is None:  # else the bundle owns the staging folder
            shutil.rmtree(staging, ignore_errors=True)
