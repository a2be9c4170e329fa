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
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compatlab.errors import LabError
from compatlab.model import CellResult, Event

if TYPE_CHECKING:
    from compatlab.matrix import Cell
    from compatlab.scenario import LabContext

__all__ = [
    "FILE_LIMIT",
    "CellTask",
    "EvidenceBundle",
    "TaskOutcome",
    "follow_phases",
    "lab_for",
    "phase_topic",
    "register_lab",
    "run_cell_task",
    "set_lab_factory",
    "unregister_lab",
    "worker_address",
    "worker_name",
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


def phase_topic(run_id: str) -> str:
    """The Dask event topic on which a lab's workers send run ``run_id``'s cells' phases."""
    return f"compatlab-phases-{run_id}"


def follow_phases(client: Any, run_id: str, progress: Callable[..., None]) -> None:
    """The controller's side: phases sent by the lab's workers go to ``progress`` as
    ``(cell, phase, elapsed)``. The client calls it on its own thread: it only records."""

    def received(event: tuple[float, Any]) -> None:
        try:
            message = event[1]
            cell, phase = str(message["cell"]), str(message["phase"])
            elapsed = float(message["elapsed"])
        except (TypeError, KeyError, IndexError, ValueError):
            return  # not one of ours
        progress(cell, phase, elapsed)

    client.subscribe_topic(phase_topic(run_id), received)


def _published(lab: LabContext, task: CellTask) -> LabContext:
    """On a lab's worker, the cell's phases also go to the controller as Dask events
    (``log_event``: 2.6 ms median from a worker process to the controller, measured in
    benchmarks/results/engine_choice.json), with the seconds since the attempt began here:
    this host's clock is not the controller's. The embedded engine's lab records them in
    the controller's display directly."""
    with _lock:
        if task.run_id in _labs:
            return lab
    worker = _this_worker()
    if worker is None:
        return lab
    began, topic, own = time.monotonic(), phase_topic(task.run_id), lab.progress

    def publish(cell: str, phase: str) -> None:
        own(cell, phase)
        message = {"cell": cell, "phase": phase, "elapsed": time.monotonic() - began}
        try:
            worker.log_event(topic, message)
        except Exception as exc:  # a display's line is never worth a cell
            log.debug("compatlab: phase of %s not sent: %s", cell, exc)

    return replace(lab, progress=publish)


def lab_for(run_id: str) -> LabContext:
    with _lock:
        registered, factory = _labs.get(run_id), _factory
    if registered is not None:
        return registered()
    if factory is not None:
        return factory(run_id)
    raise LabError(f"this worker ({worker_name()}) has no lab for run {run_id}")


@dataclass(frozen=True)
class CellTask:
    """What the controller sends: the cell, its run, and the attempt's key (claimed once)."""

    cell: Cell
    run_id: str
    key: str
    #: Which run of the cell this is (``--matrix-repeat``): its evidence gets its own folder.
    repeat: int = 1


@dataclass
class TaskOutcome:
    """What comes back: the cell's result and its evidence, or ``duplicate`` (see module)."""

    result: CellResult | None
    worker: str
    evidence: EvidenceBundle | None = None
    duplicate: bool = False
    #: The worker's address on the engine (to drain it); empty outside a worker.
    address: str = ""


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
        f"from worker {worker_name()}; the whole file stayed on the worker]\n"
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


def _this_worker() -> Any:
    """The Dask worker running this task (only the task's own thread can ask), or None."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def worker_name() -> str:
    worker = _this_worker()
    return f"{socket.gethostname()}:{os.getpid()}" if worker is None else str(worker.name)


def worker_address() -> str:
    worker = _this_worker()
    return "" if worker is None else str(worker.address)


def _claim(key: str) -> bool:
    """Whether this is the first run of attempt ``key`` (outside a Dask worker: always)."""
    if _this_worker() is None:
        return True
    import dask
    from distributed import Lock

    # A lease that never expires: with the default (30 s) a rerun could take the claim of a
    # holder that died (distributed/semaphore.py, _check_lease_timeout).
    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "inf"}):
        return bool(Lock(f"compatlab-claim-{key}").acquire(blocking=False))


def _released(dask_worker: Any, key: str) -> bool:
    """Whether the engine no longer wants attempt ``key``'s result.

    The controller cancelled it (Ctrl-C, SIGTERM, ``-x``), or the controller is gone (killed):
    the scheduler releases a departed client's tasks, and a task already running on a worker
    goes to ``cancelled`` there. Dask cannot stop a running thread; the cell must stop itself.
    """
    state = dask_worker.state.tasks.get(key)
    return state is None or state.state in ("cancelled", "released", "forgotten")


class _StopWhenReleased:
    """A stop event for one attempt: set when its run stops or the engine releases the task.

    The cell watches it (as it watches its run's stop) and tears its VM down within a tick, so
    a cancelled or orphaned attempt neither runs on for its whole length nor holds the host's
    capacity that the scheduler has already given to other cells.
    """

    def __init__(self, key: str, run_stop: threading.Event, poll: float = 0.5) -> None:
        self.event = threading.Event()
        self._done = threading.Event()
        # Asked here, on the task's thread: Dask tells only that thread which worker runs it.
        dask_worker = _this_worker()
        self._thread = threading.Thread(
            target=self._watch,
            args=(dask_worker, key, run_stop, poll),
            name=f"watch-{key}",
            daemon=True,
        )
        self._thread.start()

    def _watch(self, dask_worker: Any, key: str, run_stop: threading.Event, poll: float) -> None:
        while not self._done.wait(poll):
            if run_stop.is_set() or (dask_worker is not None and _released(dask_worker, key)):
                self.event.set()
                return

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def _staging(lab: LabContext) -> Path:
    """A folder for one attempt's evidence, inside the run's storage folder on this host: if
    the worker dies, the reaper removes it with the rest of the dead run's folder."""
    from compatlab.lab.owner import run_folder

    folder = run_folder(lab.storage_root, lab.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="evidence-", dir=folder))


def _judge_host(run_id: str, result: CellResult) -> None:
    """This host's health after a cell (on a worker): drained after repeated lab failures,
    before the result leaves it, so the engine places nothing more here until it is checked."""
    dask_worker = _this_worker()
    if dask_worker is None:
        return
    from compatlab.engine.health import worker_health
    from compatlab.model import Verdict

    worker_health(dask_worker).after_cell(
        lab_failure=result.verdict is Verdict.INFRA_ERROR, check=lambda: _check_host(run_id)
    )


def _check_host(run_id: str) -> list[str]:
    from compatlab.lab import health

    try:
        lab = lab_for(run_id)
    except LabError as exc:
        return [str(exc)]
    return health.check_host(lab)


def _own_folder(result: CellResult, folder: Path, repeat: int) -> Path:
    """Move a repeat's evidence beside the cell's folder, and its artifacts' paths with it."""
    from compatlab.repeats import evidence_prefix

    moved = folder.with_name(evidence_prefix(folder.name, repeat))
    if folder.is_dir():
        folder.rename(moved)
    old, new = f"cells/{folder.name}/", f"cells/{moved.name}/"
    result.artifacts = {
        name: new + path.removeprefix(old) if path.startswith(old) else path
        for name, path in result.artifacts.items()
    }
    return moved


def run_cell_task(task: CellTask) -> TaskOutcome:
    """Run one cell to a verdict on this worker (see the module's docstring)."""
    from compatlab.lab.storage import cell_slug
    from compatlab.scenario import infra_error_result, run_cell

    worker, address = worker_name(), worker_address()
    if not _claim(task.key):
        log.warning("compatlab: %s ran again by the engine; refused", task.key)
        return TaskOutcome(None, worker, duplicate=True, address=address)
    try:
        lab = _published(lab_for(task.run_id), task)
        staging = _staging(lab)
    except (LabError, OSError) as exc:
        result = infra_error_result(task.cell, str(exc))
        _judge_host(task.run_id, result)
        return TaskOutcome(result, worker, address=address)
    bundle = None
    stop = _StopWhenReleased(task.key, lab.stop)
    try:
        lab.progress(task.cell.id, "starting")
        result = run_cell(task.cell, replace(lab, report_dir=staging, stop=stop.event))
        # Which host ran it: what a lab engineer looks at first when one host misbehaves.
        result.events.insert(0, Event(0.0, "engine", "placed", f"on worker {worker}"))
        cell = task.cell
        folder = staging / "cells" / cell_slug(f"{Path(cell.matrix).stem}/{cell.id}")
        if task.repeat > 1:
            folder = _own_folder(result, folder, task.repeat)
        bundle = EvidenceBundle.pack(staging, folder)
        _judge_host(task.run_id, result)
        return TaskOutcome(result, worker, bundle, address=address)
    finally:
        stop.close()
        lab.progress(task.cell.id, "")  # done
        if bundle is None:  # else the bundle owns the staging folder
            shutil.rmtree(staging, ignore_errors=True)
