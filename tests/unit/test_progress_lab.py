"""Phases from a lab's workers reach the controller's display: a real Dask scheduler and a
``compatlab worker`` process on 127.0.0.1 (tests/support/dasklab.py), whose guests are
scripted guests on libvirt's test driver. The worker sends each phase as a Dask event; the
controller's client receives it on its own thread, where it is only recorded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from compatlab.capacity import Capacity
from compatlab.engine import DaskEngine
from compatlab.engine.task import follow_phases, phase_topic
from compatlab.model import Verdict
from compatlab.progress import Progress
from tests.support import dasklab
from tests.unit.test_engine import cells


class Recorder:
    """What the engine hands the display, and on which thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float | None]] = []
        self.threads: set[int] = set()
        self.progress = Progress(None)

    def __call__(self, cell: str, phase: str, elapsed: float | None = None) -> None:
        self.calls.append((cell, phase, elapsed))
        self.threads.add(threading.get_ident())
        self.progress(cell, phase, elapsed)


def test_a_lab_workers_phases_come_back_with_their_elapsed_times(tmp_path: Path) -> None:
    scheduler, address = dasklab.scheduler(tmp_path)
    worker = dasklab.worker(tmp_path, address, "w1", boot=1)
    recorder = Recorder()
    engine = DaskEngine(
        run_id="progress-lab",
        report_dir=tmp_path / "report",
        scheduler=address,
        capacity=Capacity(1, 1),
        attempts=1,
        progress=recorder,
    )
    try:
        engine.start()
        dasklab.wait_workers(engine, 1)
        cell = cells(tmp_path)[0]
        result = engine.submit(cell).wait()
        # The last event may come just after the result: both leave the worker in order, but
        # the result is fetched from the worker and the event relayed by the scheduler.
        for _ in range(100):
            if recorder.calls and recorder.calls[-1][1] == "":
                break
            time.sleep(0.1)
    finally:
        engine.close()
        dasklab.stop(worker, scheduler)
    assert result.verdict is Verdict.PASS, result.reason
    phases = [phase for who, phase, _ in recorder.calls if who == cell.id]
    assert phases[0] == "starting" and phases[-1] == "", phases
    assert "boot 1 of 1" in phases, phases
    elapsed = [e for who, _, e in recorder.calls if who == cell.id and e is not None]
    assert len(elapsed) == len(phases)  # each with the seconds measured on the worker
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert elapsed[-1] >= 1.0  # the boot alone takes a second on the worker
    assert threading.get_ident() not in recorder.threads  # the client's thread, not this one
    snapshot = recorder.progress.snapshot()
    assert (snapshot.running, snapshot.done) == ((), 1)


class FakeClient:
    """Stands in for a Dask client's subscription only: what it calls the handler with."""

    def __init__(self) -> None:
        self.handlers: dict[str, object] = {}

    def subscribe_topic(self, topic: str, handler: object) -> None:
        self.handlers[topic] = handler


def test_events_that_are_not_phases_are_ignored() -> None:
    client, calls = FakeClient(), []
    follow_phases(client, "r1", lambda *args: calls.append(args))
    handler = client.handlers[phase_topic("r1")]
    for event in [
        (0.0, {"cell": "c", "phase": "boot 1 of 2", "elapsed": 3.5}),
        (0.0, {"cell": "c"}),
        (0.0, "hello"),
        (0.0, {"cell": "c", "phase": "x", "elapsed": "soon"}),
        (),
    ]:
        handler(event)  # type: ignore[operator]
    assert calls == [("c", "boot 1 of 2", 3.5)]
