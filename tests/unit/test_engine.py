"""Cells side by side on Dask distributed (issue 10): the embedded engine, a lab's workers, and a
worker lost mid-cell -- on libvirt's test driver with scripted guests, everything else real.

The real-VM side (the demo's cells side by side on QEMU) is tests/lab/test_scenario.py, which
runs through the same engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from compatlab.capacity import Capacity
from compatlab.engine import DaskEngine, EvidenceBundle
from compatlab.engine import task as engine_task
from compatlab.errors import MatrixError
from compatlab.lab.connection import Hypervisor
from compatlab.matrix import Cell, load_matrix
from compatlab.model import Verdict
from compatlab.run import LabSettings, load_lab_settings
from compatlab.scenario import LabContext
from tests.support.catalogs import make_project, matrix
from tests.support.fakeguest import ScriptedGuest, TestMachine, scripted_lab

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "scenario: {boots: 1, boot_timeout: 20, bake: 0.1, baseline: never, rollback: false}\n"


def cells(
    tmp_path: Path, hardware: tuple[str, ...] = ("bios-1cpu",), scenario: str = SCENARIO
) -> list[Cell]:
    root = make_project(tmp_path / "project", builds=("lin",), hardware=hardware)
    for name in ("av", "edr", "dlp", "candidate"):
        (root / "payloads" / name).mkdir(parents=True, exist_ok=True)
        (root / "payloads" / name / "install.sh").write_text("exit 0\n")
    hw = ", ".join(hardware)
    body = f"axes: {{build: [lin], hardware: [{hw}], products: [[], [av], [edr], [dlp]]}}\n"
    return list(load_matrix(matrix(root, body + scenario), catalog_root=root).cells)


# -- configs/lab.yaml ---------------------------------------------------------------------------


def test_lab_yaml_names_the_scheduler_and_the_capacity(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("scheduler: tcp://127.0.0.1:8786\ncapacity: {vcpus: 3, memory: 4096}\n")
    settings = load_lab_settings(lab)
    assert settings.scheduler == "tcp://127.0.0.1:8786"
    assert settings.capacity == Capacity(3, 4096)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("hosts: [{uri: 'qemu+ssh://lab7/system'}]\n", r"lab\.yaml:1:.*remote hypervisor"),
        (
            "hosts: [{uri: 'qemu:///system'}, {uri: 'qemu:///system'}]\n",
            r"lab\.yaml:1:.*one hypervisor",
        ),
        ("capacity: {vcpus: 0, memory: 4096}\n", r"lab\.yaml:1:.*vcpus"),
    ],
)
def test_lab_yaml_refuses_what_it_cannot_run(tmp_path: Path, text: str, said: str) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(text)
    with pytest.raises(MatrixError, match=said):
        load_lab_settings(lab)


# -- evidence in transit ------------------------------------------------------------------------


def test_a_flooded_log_travels_as_head_and_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_task, "FILE_LIMIT", 4000)
    monkeypatch.setattr(engine_task, "_HEAD", 1000)
    folder = tmp_path / "worker" / "cells" / "c"
    folder.mkdir(parents=True)
    (folder / "serial.log").write_text("boot 1 started\n" + "x" * 100_000 + "\npanic at the end\n")
    (folder / "small.txt").write_text("kept whole")
    bundle = EvidenceBundle.pack(tmp_path / "worker", folder)
    assert bundle is not None
    import pickle

    travelled = pickle.loads(pickle.dumps(bundle))  # as to another host's controller
    out = tmp_path / "controller"
    travelled.unpack(out)
    log = (out / "cells" / "c" / "serial.log").read_text()
    assert log.startswith("boot 1 started") and log.endswith("panic at the end\n")
    assert "bytes of this" in log and "cut here in transit" in log
    assert len(log) < 4200
    assert (out / "cells" / "c" / "small.txt").read_text() == "kept whole"


def test_evidence_in_the_same_process_is_moved_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded engine passes results without pickling: nothing is cut (a flooded serial
    log keeps its first boots and its end, as tests/reliability's serial flood asks)."""
    monkeypatch.setattr(engine_task, "FILE_LIMIT", 4000)
    staging = tmp_path / "staging"
    folder = staging / "cells" / "c"
    folder.mkdir(parents=True)
    text = "boot 1 started\n" + "x" * 100_000 + "\n"
    (folder / "serial.log").write_text(text)
    bundle = EvidenceBundle.pack(staging, folder)
    assert bundle is not None
    bundle.unpack(tmp_path / "report")
    assert (tmp_path / "report" / "cells" / "c" / "serial.log").read_text() == text
    assert not staging.exists()


# -- the embedded engine ------------------------------------------------------------------------


class CountingMachine(TestMachine):
    running = 0
    most = 0
    lock = threading.Lock()

    def __enter__(self) -> CountingMachine:
        with CountingMachine.lock:
            CountingMachine.running += 1
            CountingMachine.most = max(CountingMachine.most, CountingMachine.running)
        return super().__enter__()  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            with CountingMachine.lock:
                CountingMachine.running -= 1


@pytest.fixture(scope="module")
def hv() -> Iterator[Hypervisor]:
    with Hypervisor("test:///default") as hypervisor:
        yield hypervisor


def embedded(hv: Hypervisor, tmp_path: Path, capacity: Capacity) -> tuple[DaskEngine, LabContext]:
    def guests(cell: Cell, machine: Any, forwards: Any = ()) -> ScriptedGuest:
        return ScriptedGuest(machine, machine.storage_dir / "serial.log", boot_seconds=1.0)

    lab = scripted_lab(hv, tmp_path, guests, run_id="engine-test", machines=CountingMachine)
    engine = DaskEngine(
        run_id="engine-test",
        report_dir=tmp_path / "report",
        scheduler=None,
        capacity=capacity,
        attempts=2,
        lab=lambda: lab,
        stop=lab.stop,
    )
    engine.start()
    return engine, lab


def test_cells_run_side_by_side_up_to_the_capacity_and_never_beyond(
    hv: Hypervisor, tmp_path: Path
) -> None:
    CountingMachine.running = CountingMachine.most = 0
    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=2, memory_mib=64 * 1024))
    try:
        handles = [engine.submit(cell) for cell in cells(tmp_path)]
        results = [h.wait() for h in handles]
    finally:
        engine.close()
    assert [r.verdict for r in results] == [Verdict.PASS] * 4, [r.reason for r in results]
    assert CountingMachine.most == 2  # two 1-vCPU cells at once on 2 vCPUs, never three
    for result in results:  # the evidence came back where the report looks for it
        assert result.artifacts
        assert all((tmp_path / "report" / path).exists() for path in result.artifacts.values())


def test_a_cell_no_worker_can_ever_hold_is_infra_error_at_once(
    hv: Hypervisor, tmp_path: Path
) -> None:
    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=1, memory_mib=300))
    try:
        result = engine.submit(cells(tmp_path)[0]).wait()  # 256 MiB of RAM, plus QEMU's
    finally:
        engine.close()
    assert result.verdict is Verdict.INFRA_ERROR
    assert "needs 448 MiB (the host gives 300 MiB)" in result.reason, result.reason


def test_a_stopping_run_tears_down_the_running_cells(hv: Hypervisor, tmp_path: Path) -> None:
    CountingMachine.running = CountingMachine.most = 0
    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=2, memory_mib=64 * 1024))
    for cell in cells(tmp_path):
        engine.submit(cell)
    deadline = time.monotonic() + 30
    while CountingMachine.running < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert CountingMachine.running == 2
    engine.close(stop=True)
    assert CountingMachine.running == 0
    assert not [d.name() for d in hv.domains() if d.name().startswith("compatlab-")]


def test_the_workers_come_from_the_scheduler_not_the_clients_refreshed_cache(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Client.scheduler_info() updates a cache and returns it; the client's own periodic
    # refresh rewrites that cache with *no* workers (n_workers=0). Interleaved, the engine saw
    # an empty lab and refused cells as "no worker is connected" (found by benchmarks/sim_lab.py:
    # 7 of 5,000 cells). Here the refresh lands right after every update, deterministically.
    from distributed import Client

    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=1, memory_mib=64 * 1024))
    update = Client._update_scheduler_info

    async def update_then_refresh(self: Any, n_workers: int = 0) -> None:
        await update(self, n_workers=n_workers)
        await update(self, n_workers=0)  # the periodic refresh, in between

    monkeypatch.setattr(Client, "_update_scheduler_info", update_then_refresh)
    try:
        assert len(engine.workers()) == 1
    finally:
        engine.close()


# -- order and flow: longest expected first, a bounded window (compatlab.engine.order) ----------


def test_the_engine_hands_cells_to_dask_longest_expected_first_within_its_window(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []

    def guests(cell: Cell, machine: Any, forwards: Any = ()) -> ScriptedGuest:
        started.append(cell.id)
        return ScriptedGuest(machine, machine.storage_dir / "serial.log", boot_seconds=0.5)

    lab = scripted_lab(hv, tmp_path, guests, run_id="engine-order")
    engine = DaskEngine(
        run_id="engine-order",
        report_dir=tmp_path / "report",
        scheduler=None,
        capacity=Capacity(vcpus=1, memory_mib=64 * 1024),  # one cell at a time
        attempts=2,
        lab=lambda: lab,
        stop=lab.stop,
    )
    out: list[int] = []
    send = engine._send

    def counted(handle: Any) -> None:
        out.append(engine._window.out)
        send(handle)

    monkeypatch.setattr(engine, "_send", counted)
    expected = {"none": 10.0, "av": 40.0, "edr": 20.0, "dlp": 30.0}
    engine.start()
    try:
        batch = cells(tmp_path)
        handles = engine.submit_many((c, 1, expected[c.id.rsplit("/", 1)[1]]) for c in batch)
        # One fits at once; the window is 1.25 x that, so two are Dask's and two are held.
        assert [h.cell.id.rsplit("/", 1)[1] for h in handles if h.future] == ["av", "dlp"]
        priorities = _scheduler_priorities(engine, 2)
        assert sorted(priorities.values()) == [-40, -30]  # Dask's: higher runs first
        results = [h.wait() for h in handles]
    finally:
        engine.close()
    # Every cell ran, once, to its own verdict; only the order followed the expectation.
    assert [r.verdict for r in results] == [Verdict.PASS] * 4, [r.reason for r in results]
    assert [r.id for r in results] == [c.id for c in batch]
    assert [s.rsplit("/", 1)[1] for s in started] == ["av", "dlp", "edr", "none"]
    assert max(out) == 2  # never more than the window handed over


def _scheduler_priorities(engine: DaskEngine, count: int) -> dict[str, int]:
    """The user priority the scheduler holds for each of the run's tasks, once ``count`` are
    there (a submit reaches the scheduler a moment after it returns)."""

    def user_priorities(dask_scheduler: Any) -> dict[str, int]:
        return {str(k): ts.priority[0] for k, ts in dask_scheduler.tasks.items() if ts.priority}

    deadline = time.monotonic() + 30
    found: dict[str, int] = {}
    while len(found) < count:
        assert time.monotonic() < deadline, found
        found = dict(engine._client.run_on_scheduler(user_priorities))
        time.sleep(0.05)
    return found


def test_a_cell_without_an_expectation_keeps_item_order(hv: Hypervisor, tmp_path: Path) -> None:
    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=1, memory_mib=64 * 1024))
    try:
        handles = engine.submit_many((c, 1, None) for c in cells(tmp_path))
        assert [h.priority for h in handles] == [0, 0, 0, 0]
        assert [h.future is not None for h in handles] == [True, True, False, False]
        results = [h.wait() for h in handles]
    finally:
        engine.close()
    assert [r.verdict for r in results] == [Verdict.PASS] * 4, [r.reason for r in results]


def test_held_cells_never_start_once_the_run_stops(hv: Hypervisor, tmp_path: Path) -> None:
    from concurrent.futures import CancelledError

    engine, _ = embedded(hv, tmp_path, Capacity(vcpus=1, memory_mib=64 * 1024))
    handles = engine.submit_many((c, 1, None) for c in cells(tmp_path))
    held = [h for h in handles if h.future is None]
    assert held
    engine.close(stop=True)
    for handle in held:
        assert handle.future is None
        with pytest.raises(CancelledError):
            handle.wait(poll=0.05)


def test_placeability_is_asked_once_per_needs_and_again_when_the_workers_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dask
    from distributed import LocalCluster

    from compatlab.capacity import IN_SERVICE, Needs
    from compatlab.engine import cluster as engine_cluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lab = LocalCluster(
            n_workers=1,
            processes=False,
            threads_per_worker=1,
            resources=Capacity(2, 4096).resources(),
            dashboard_address="127.0.0.1:0",
        )
    engine = DaskEngine(
        run_id="engine-placeable",
        report_dir=tmp_path / "report",
        scheduler=lab.scheduler_address,
        capacity=Capacity(1, 1),
        attempts=1,
    )
    asked: list[Needs] = []
    decide = engine._why_not

    def counted(needs: Needs, offers: dict[str, dict[str, float]]) -> str | None:
        asked.append(needs)
        return decide(needs, offers)

    monkeypatch.setattr(engine, "_why_not", counted)
    monkeypatch.setattr(engine_cluster, "OFFERS_FOR", 0.0)  # every call sees the lab as it is
    plain, tpm = Needs(1, 448), Needs(1, 448, frozenset({"tpm"}))
    engine.start()
    try:
        for _ in range(20):
            assert engine.why_not(plain) is None
            assert "tpm=1" in (engine.why_not(tpm) or "")
        assert asked == [plain, tpm]
        # Drained for a health check: still a host that could run them. Nothing asked again.
        _set_resources(engine, {IN_SERVICE: 0})
        assert engine.why_not(plain) is None
        assert asked == [plain, tpm]
        # The host now offers tpm: asked again, and the cell can run.
        _set_resources(engine, {"label-tpm": 2})
        assert engine.why_not(tpm) is None
        assert asked == [plain, tpm, tpm]
    finally:
        engine.close()
        lab.close()


def _set_resources(
    engine: DaskEngine, resources: dict[str, float], workers: list[str] | None = None
) -> None:
    async def offer(dask_worker: Any) -> None:
        await dask_worker.set_resources(**resources)

    engine._client.run(offer, workers=workers)
    deadline = time.monotonic() + 30
    while not all(
        all(o.get(k) == v for k, v in resources.items())
        for a, o in engine.workers().items()
        if workers is None or a in workers
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_next_attempt_whose_only_hosts_failed_their_checks_ends_infra_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lab failed the cell on one worker; its next attempt may only go to the other, which
    # went out of service and failed its checks before the attempt started. Dask leaves such an
    # attempt unplaced for ever; the cell ends infra_error, as when no host is left at all.
    import dask
    from distributed import LocalCluster

    from compatlab.capacity import IN_SERVICE, cell_needs
    from compatlab.engine import cluster as engine_cluster
    from compatlab.engine.handle import CellHandle
    from compatlab.engine.health import HostState, worker_health

    def failed_its_checks(dask_worker: Any) -> None:
        health = worker_health(dask_worker).health
        health.state, health.findings = HostState.BAD, ["stand-in: array gone"]

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lab = LocalCluster(
            n_workers=2,
            processes=False,
            threads_per_worker=1,
            resources=Capacity(1, 4096).resources(),
            dashboard_address="127.0.0.1:0",
        )
    engine = DaskEngine(
        run_id="engine-bad-hosts",
        report_dir=tmp_path / "report",
        scheduler=lab.scheduler_address,
        capacity=Capacity(1, 1),
        attempts=2,
    )
    monkeypatch.setattr(engine_cluster, "TEND_EVERY", 0.0)
    engine.start()
    try:
        failed_on, bad = sorted(engine.workers())
        engine._client.run(failed_its_checks, workers=[bad])
        _set_resources(engine, {IN_SERVICE: 0}, workers=[bad])
        cell = cells(tmp_path)[0]
        handle = CellHandle(cell, engine, cell_needs(cell), avoid={failed_on})
        handle.lost.append(f"lab failure on {failed_on}")
        engine._handles.append(handle)
        engine.submit_attempt(handle)
        deadline = time.monotonic() + 30
        while handle.result is None:
            assert time.monotonic() < deadline, "the attempt waits for ever"
            engine.tend()
            time.sleep(0.1)
    finally:
        engine.close()
        lab.close()
    assert handle.result.verdict is Verdict.INFRA_ERROR
    assert "stand-in: array gone" in handle.result.reason, handle.result.reason


@dataclass
class QueueRun:
    """What ``CellQueue`` takes from a ``LabRun`` (the lab on the test driver, as the
    embedded engine's tests use it): a stand-in for the run, not for the engine."""

    lab: Any
    run_id: str = "engine-queue"
    settings: LabSettings = field(default_factory=lambda: LabSettings(attempts=1))
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Any = None


def test_the_session_queue_hands_its_expectations_to_the_engine(
    hv: Hypervisor, tmp_path: Path
) -> None:
    from compatlab.engine.order import cell_key
    from compatlab.engine.queue import CellQueue

    started: list[str] = []

    def guests(cell: Cell, machine: Any, forwards: Any = ()) -> ScriptedGuest:
        started.append(cell.id.rsplit("/", 1)[1])
        return ScriptedGuest(machine, machine.storage_dir / "serial.log", boot_seconds=0.5)

    lab = scripted_lab(hv, tmp_path, guests, run_id="engine-queue")
    run = QueueRun(lambda: lab, stop=lab.stop)
    seconds = {"none": 10.0, "av": 20.0, "edr": 40.0, "dlp": 30.0}
    asked: list[list[str]] = []

    def expect(batch: Sequence[Cell]) -> dict[tuple[str, str], float]:
        asked.append([c.id for c in batch])
        return {cell_key(c): seconds[c.id.rsplit("/", 1)[1]] for c in batch}

    queue = CellQueue(
        run,  # type: ignore[arg-type]
        report_dir=tmp_path / "report",
        scheduler=None,
        capacity=Capacity(vcpus=1, memory_mib=64 * 1024),
        expect=expect,
    )
    batch = cells(tmp_path)
    try:
        queue.submit(batch)
        queue.submit(batch)  # once only
        results = [queue.wait(cell) for cell in batch]  # pytest's items, in item order
    finally:
        queue.close(stop=False)
    assert asked == [[c.id for c in batch]]
    assert [r.id for r in results] == [c.id for c in batch]
    assert [r.verdict for r in results] == [Verdict.PASS] * 4, [r.reason for r in results]
    assert started == ["edr", "dlp", "av", "none"]
