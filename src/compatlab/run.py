"""A run of the lab: the session object the pytest plugin hands cells to.

Two halves, because under pytest-xdist they live in different processes:

* :class:`LabRun` runs cells (in each worker, or in the one pytest process). It connects to the
  hypervisor lazily -- ``--collect-only`` never touches libvirt -- and on first use reaps what
  dead runs left, claims its storage folder (``owner.json``) and probes the accelerator once.
* :class:`ReportSink` writes the report (in the controller only): results.json and the cell's
  evidence page after every cell, junit.xml and index.html at the end.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from compatlab._yaml import Node, load
from compatlab.cache import LayerStore, parse_size
from compatlab.capacity import Capacity
from compatlab.errors import InputError, LabError, MatrixError
from compatlab.guest.channel import Channel
from compatlab.lab.connection import DEFAULT_URI, Hypervisor
from compatlab.lab.owner import OWNER_FILE, Controller, run_folder, write_run_owner
from compatlab.lab.reaper import reap
from compatlab.lab.storage import DEFAULT_ROOT
from compatlab.matrix import Cell, Matrix
from compatlab.model import CellResult
from compatlab.report import LiveReport, PlannedCell, ResultsWriter, RunInfo
from compatlab.scenario import CheckOutcome, LabContext, infra_error_result, run_cell

__all__ = ["LabRun", "LabSettings", "ReportSink", "load_lab_settings", "new_run_id"]

log = logging.getLogger("compatlab.run")


def new_run_id(now: datetime | None = None) -> str:
    """``20261123T174500-3f9a``: sortable by time, unique across controllers."""
    moment = now or datetime.now(UTC)
    return f"{moment:%Y%m%dT%H%M%S}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class LabSettings:
    """Where the lab is: this host's hypervisor and folder for cells' disks, what its test VMs
    may use together (``capacity``; None: the machine's), and the lab's scheduler (None: cells
    run on an engine embedded in the runner)."""

    uri: str = DEFAULT_URI
    storage_root: Path = DEFAULT_ROOT
    attempts: int = 2
    capacity: Capacity | None = None
    scheduler: str | None = None
    #: Keep cached pre-candidate layers under ``storage_root/cache`` (``compatlab.cache``).
    cache: bool = True
    #: Their size bound, least recently used evicted first; None: a quarter of the file system.
    cache_bytes: int | None = None
    #: Layers keep the running baseline guest's memory where a cell allows it (``cache:
    #: {memory: false}``: every cell boots its layer's disk).
    cache_memory: bool = True

    def layer_store(self) -> LayerStore | None:
        """This host's layer cache, or None when the lab keeps none. libvirt's test:/// driver
        boots no disk, so a lab on it (the stand-in labs of the unit tier) keeps none."""
        if not self.cache or self.uri.startswith("test:"):
            return None
        bound = self.cache_bytes
        if bound is None:
            try:
                bound = shutil.disk_usage(self.storage_root).total // 4
            except OSError:
                bound = None  # no storage folder yet: the cell's own error will say so
        return LayerStore(self.storage_root, max_bytes=bound, memory=self.cache_memory)


# Tries of a cell the lab failed: past a few, the lab is down and more only delays the report.
MAX_ATTEMPTS = 10


def load_lab_settings(path: Path | None) -> LabSettings:
    """``configs/lab.yaml``::

        hosts: [{uri: qemu:///system}]   # this host's hypervisor (one, local)
        storage: /var/lib/compatlab
        attempts: 2
        capacity: {vcpus: 8, memory: 16384}   # default: the machine's
        scheduler: tcp://lab-scheduler:8786   # default: an engine embedded in the runner
        cache: {size: 50G}   # cached pre-candidate layers, least recently used evicted first
                             # (default: a quarter of the storage file system); cache: false
                             # memory: false -- layers without the guest's memory state

    A remote hypervisor URI is refused: overlays, ISOs and logs are local files of whoever
    drives libvirt, so each hypervisor host runs ``compatlab worker`` and the controller names
    the lab's scheduler.
    """
    if path is None:
        return LabSettings()
    root = load(path, MatrixError).mapping(
        "lab", optional=("hosts", "storage", "attempts", "capacity", "scheduler", "cache")
    )
    uri = DEFAULT_URI
    if "hosts" in root:
        hosts = root["hosts"].items("hosts")
        if len(hosts) != 1:
            raise root["hosts"].error(
                "hosts names this host's one hypervisor",
                "more hosts are `compatlab worker`s of a scheduler: set scheduler: instead",
            )
        node = hosts[0].mapping("host", required=("uri",), optional=("name",))["uri"]
        uri = node.text("uri")
        if urlsplit(uri).hostname:
            raise node.error(
                f"{uri} is a remote hypervisor: its disks and logs would be files of that host",
                "run `compatlab worker` on that host and set scheduler: here",
            )
    capacity = None
    if "capacity" in root:
        c = root["capacity"].mapping("capacity", required=("vcpus", "memory"))
        capacity = Capacity(
            vcpus=c["vcpus"].integer("vcpus", minimum=1, maximum=4096),
            memory_mib=c["memory"].integer("memory", minimum=64, maximum=64 * 1024 * 1024),
        )
    cache, cache_bytes, cache_memory = (
        _cache_setting(root["cache"]) if "cache" in root else (True, None, True)
    )
    return LabSettings(
        uri=uri,
        storage_root=Path(root["storage"].text("storage")) if "storage" in root else DEFAULT_ROOT,
        attempts=root["attempts"].integer("attempts", minimum=1, maximum=MAX_ATTEMPTS)
        if "attempts" in root
        else 2,
        capacity=capacity,
        scheduler=root["scheduler"].text("scheduler") if "scheduler" in root else None,
        cache=cache,
        cache_bytes=cache_bytes,
        cache_memory=cache_memory,
    )


def _cache_setting(node: Node) -> tuple[bool, int | None, bool]:
    """``cache: false`` / ``cache: true`` / ``cache: {size: 50G, memory: false}``."""
    if not node.is_mapping():
        return node.flag("cache"), None, True
    fields = node.mapping("cache", optional=("size", "memory"))
    memory = fields["memory"].flag("memory") if "memory" in fields else True
    if "size" not in fields:
        return True, None, memory
    size = fields["size"]
    try:
        return True, parse_size(size.text("size")), memory
    except ValueError as exc:
        raise size.error(str(exc)) from exc


class LabRun:
    """Runs cells on the lab. One per process; thread-safe first connection."""

    def __init__(
        self,
        *,
        run_id: str,
        worker: str,
        report_dir: Path,
        template_dir: Path,
        settings: LabSettings,
        progress: Callable[[str, str], None] = lambda cell, phase: None,
        checks: Callable[[Channel, Cell], list[CheckOutcome]] = lambda guest, cell: [],
    ) -> None:
        self.checks = checks
        self.run_id = run_id
        # Each process (xdist worker) owns its own storage folder and owner.json, so the reaper
        # can tell whose cells are whose when one worker dies.
        self.storage_id = f"{run_id}.{worker}"
        self.report_dir = report_dir
        self.template_dir = template_dir
        self.settings = settings
        self.progress = progress
        self._lab: LabContext | None = None
        self._hypervisor: Hypervisor | None = None
        self._lock = threading.Lock()
        #: Set when the run stops: cells running on the engine's threads tear their VMs down.
        self.stop = threading.Event()

    def lab(self) -> LabContext:
        with self._lock:
            if self._lab is None:
                self._lab = self._open()
            return self._lab

    def _open(self) -> LabContext:
        hypervisor = Hypervisor(self.settings.uri)
        hypervisor.open()
        try:
            report = reap(hypervisor, self.settings.storage_root)
            if report.removed_anything:
                log.warning("compatlab: removed what dead runs left behind: %s", report.summary())
            controller = Controller.current()
            self._claim(run_folder(self.settings.storage_root, self.storage_id), controller)
            accelerator = hypervisor.accelerator()
        except BaseException:
            # The next cell tries again with a connection of its own: this one would leak.
            hypervisor.close()
            raise
        self._hypervisor = hypervisor
        return LabContext(
            hypervisor=hypervisor,
            accel=accelerator.domain_type,
            run_id=self.storage_id,
            storage_root=self.settings.storage_root,
            template_dir=self.template_dir,
            report_dir=self.report_dir,
            iso_cache=self.settings.storage_root / "iso-cache",
            controller=controller,
            attempts=self.settings.attempts,
            progress=self.progress,
            checks=self.checks,
            stop=self.stop,
            layers=self.settings.layer_store(),
        )

    @staticmethod
    def _claim(folder: Path, controller: Controller) -> None:
        """Create the run's storage folder with its owner.json, or leave no folder at all.

        Without owner.json (the disk is full) no reaper could tell whose the folder is.
        """
        try:
            write_run_owner(folder, controller)
        except BaseException:
            if not (folder / OWNER_FILE).exists():  # never another run's claim
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def run(self, cell: Cell) -> CellResult:
        """One cell to a verdict. A lab that cannot be reached at all is ``infra_error`` too."""
        try:
            lab = self.lab()
        except LabError as exc:
            return infra_error_result(cell, str(exc))
        return run_cell(cell, lab)

    def close(self) -> None:
        """Disconnect and remove this run's (now empty) storage folder."""
        if self._hypervisor is not None:
            self._hypervisor.close()
        folder = run_folder(self.settings.storage_root, self.storage_id)
        if folder.is_dir() and not any(
            p for p in folder.rglob("*") if p.is_file() and p.name != OWNER_FILE
        ):
            shutil.rmtree(folder, ignore_errors=True)


class ReportSink:
    """Collects cell results in the controller and writes the run's report."""

    def __init__(
        self, report_dir: Path, run: RunInfo, matrices: Iterable[Matrix], *, resume: bool
    ) -> None:
        self.report_dir = report_dir
        self.writer = (
            ResultsWriter.resume(report_dir, run) if resume else ResultsWriter(report_dir, run)
        )
        self.added = 0
        self.planned = [
            PlannedCell(
                matrix=str(m.path),
                build=c.build,
                hardware=c.hardware.name,
                products=c.product_names,
            )
            for m in matrices
            for c in m.cells
        ]
        # Each cell's evidence page is written as the cell is reported; finish() the index.
        self.pages = LiveReport(report_dir, self.writer.run, self.planned, done=self.writer.cells)

    def add(self, result: CellResult) -> None:
        self.added += 1
        self.writer.add(result)
        self.pages.add(self.writer.result(result.matrix, result.id) or result)

    def finish(self, *, complete: bool = True) -> Path:
        """junit.xml and the HTML pages; results.json marked complete unless the run was
        stopped before its end (it keeps the cells that finished, and says it is not)."""
        if complete:
            self.writer.finish(datetime.now(UTC))
        cells = self.writer.cells
        ran = {(c.matrix, c.id) for c in cells}
        planned = [p for p in self.planned if (p.matrix, p.id) not in ran]
        # junit.xml, and the run into reports/history.sqlite, whose changes the index shows.
        return self.pages.finish(self.writer.run, cells, planned)


def check_report_dir(path: Path) -> None:
    """Refuse a report folder that is a file, before anything starts."""
    if path.exists() and not path.is_dir():
        raise InputError("--matrix-report must be a folder", file=path)
