"""A lab's scheduler and workers on 127.0.0.1 (issue 10): cells placed on ``compatlab worker``
processes, a worker lost mid-cell, a cancelled or orphaned cell stopping on its worker, and a
killed controller resumed.

The scheduler, the workers and the engine are real; the workers' guests are scripted guests on
libvirt's test driver (tests/support/enginestandins.py): a stand-in lab, not a hypervisor. The
real-VM form of these runs is tests/lab/test_lab_workers.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compatlab.capacity import Capacity
from compatlab.engine import DaskEngine
from compatlab.errors import LabError
from compatlab.lab.connection import Hypervisor
from compatlab.lab.reaper import reap
from compatlab.lab.storage import cell_slug
from compatlab.model import Verdict
from tests.support import dasklab
from tests.unit.test_engine import cells

#: Boots that may take as long as the stand-in's boots (``boot=`` of the worker).
LONG = "scenario: {boots: 1, boot_timeout: 900, bake: 0.1, baseline: never, rollback: false}\n"


def _engine(tmp_path: Path, address: str, run_id: str = "engine-lab") -> DaskEngine:
    return DaskEngine(
        run_id=run_id,
        report_dir=tmp_path / "report",
        scheduler=address,
        capacity=Capacity(1, 1),  # a lab's engine asks its workers, not this
        attempts=2,
    )


def _started(marks: Path, slug: str, limit: float = 60) -> list[Path]:
    deadline = time.monotonic() + limit
    while not (found := list(marks.glob(f"{slug}.*"))):
        assert time.monotonic() < deadline, f"{slug} never started"
        time.sleep(0.05)
    return found


def _executing(address: str) -> dict[str, int]:
    from distributed import Client

    with Client(address, set_as_default=False, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.executing_count)
    return {str(k): int(v) for k, v in counts.items()}


def _until_idle(address: str, limit: float) -> float:
    """Seconds until no worker executes a task (fails after ``limit``)."""
    began = time.monotonic()
    while any(_executing(address).values()):
        assert time.monotonic() - began < limit, "the worker still runs the cell"
        time.sleep(0.5)
    return time.monotonic() - began


def test_a_worker_lost_mid_cell_is_a_lab_failure_and_the_cell_runs_once_elsewhere(
    tmp_path: Path,
) -> None:
    tmp = {n: tmp_path / f"tmp-{n}" for n in ("w1", "w2")}
    scheduler, address = dasklab.scheduler(tmp_path)
    workers = []
    for name, folder in tmp.items():
        folder.mkdir()
        workers.append(dasklab.worker(tmp_path, address, name, env={"TMPDIR": str(folder)}))
    engine = _engine(tmp_path, address)
    try:
        engine.start()
        dasklab.wait_workers(engine, 2)
        first = cells(tmp_path)[0]
        handle = engine.submit(first)
        slug = cell_slug(first.id)
        mark = _started(tmp_path / "marks", slug)[0]
        pid = int(mark.name.split(".")[-2])
        victim = next(w for w in workers if w.pid == pid)
        victim.kill()  # mid-boot: the boot takes 3 s
        result = handle.wait()
    finally:
        engine.close()
        dasklab.stop(*workers, scheduler)
    assert result.verdict is Verdict.PASS, result.reason
    assert result.attempts == 2
    lost = [e for e in result.events if e.kind == "worker_lost"]
    assert len(lost) == 1 and "KilledWorker" in lost[0].detail, lost
    pids = sorted(m.name.split(".")[-2] for m in (tmp_path / "marks").glob(f"{slug}.*"))
    assert len(pids) == 2 and pids[0] != pids[1], "ran once on each worker, no more"
    # What the dead worker staged is in its run's storage folder, where its reaper finds it;
    # nothing of it is left in the temporary folder, which no reaper looks at.
    victim_name = "w1" if victim is workers[0] else "w2"
    assert not list(tmp[victim_name].iterdir())
    storage = tmp_path / victim_name
    assert list(storage.glob("cells/*/evidence-*"))
    reap(Hypervisor("test:///default"), storage)
    assert not list(storage.glob("cells/*"))


def test_a_cancelled_cell_stops_on_its_worker_at_once(tmp_path: Path) -> None:
    # Dask cannot stop a running task: before, a cancelled cell ran on for its whole length
    # (here a 600 s boot) while the scheduler gave its capacity to the next cells.
    scheduler, address = dasklab.scheduler(tmp_path)
    worker = dasklab.worker(tmp_path, address, "w1", boot=600)
    engine = _engine(tmp_path, address)
    try:
        engine.start()
        dasklab.wait_workers(engine, 1)
        first = cells(tmp_path, scenario=LONG)[0]
        engine.submit(first)
        _started(tmp_path / "marks", cell_slug(first.id))
        assert sum(_executing(address).values()) == 1
        engine.close(stop=True)
        _until_idle(address, limit=60)
    finally:
        engine.close()
        dasklab.stop(worker, scheduler)
    assert not list((tmp_path / "w1").glob("cells/*/*.qcow2"))


def test_a_scheduler_that_would_rerun_a_cell_by_itself_is_refused(tmp_path: Path) -> None:
    scheduler, address = dasklab.scheduler(tmp_path, allowed_failures=None)
    engine = _engine(tmp_path, address)
    try:
        with pytest.raises(LabError, match="allowed-failures: 3"):
            engine.start()
    finally:
        engine.close()
        dasklab.stop(scheduler)


# -- the controller killed, then --matrix-resume ----------------------------------------------


def _controller(project: Path, address: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
            *("--matrix", "matrix/m.yaml", "--matrix-scheduler", address),
            *("--matrix-report", "out", *extra),
        ],
        cwd=project,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, (str(dasklab.ROOT), os.environ.get("PYTHONPATH")))
            ),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _results(project: Path) -> dict[str, dict[str, object]]:
    doc = json.loads((project / "out" / "results.json").read_text())
    ids = [c["id"] for c in doc["cells"]]
    assert len(ids) == len(set(ids)), f"a cell reported twice: {ids}"
    return {c["id"]: c for c in doc["cells"]}


# Seconds of each boot of the killed controller's cells (two boots a cell: provision, then the
# candidate's). A cell cut short has ~2 * BOOT left when the controller dies: twice what the
# workers are given to stop it, so a cell run to its end fails the test.
BOOT = 12


def test_a_killed_controller_resumes_every_cell_exactly_once(tmp_path: Path) -> None:
    project = cells(tmp_path, scenario=LONG)[0].matrix.parent.parent  # 4 cells, 1 per product set
    scheduler, address = dasklab.scheduler(tmp_path)
    workers = [dasklab.worker(tmp_path, address, n, boot=BOOT) for n in ("w1", "w2")]
    try:
        from distributed import Client

        with Client(address, set_as_default=False, timeout=30) as client:
            dasklab.wait_workers(client, 2)
        first = _controller(project, address)
        # Two cells finish (one per worker), then two more start: kill -9 the controller then.
        deadline = time.monotonic() + 10 * BOOT
        while True:
            done = (project / "out" / "results.json").exists() and len(_results(project)) >= 2
            if done and sum(_executing(address).values()) == 2:
                break
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the first run never had two cells done"
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        kept = _results(project)
        # The scheduler releases a departed controller's cells; their workers stop them, well
        # before their boots would have ended (before, they ran on, holding their hosts).
        assert _until_idle(address, limit=60) < BOOT
        second = _controller(project, address, "--matrix-resume")
        out, _ = second.communicate(timeout=300)
    finally:
        dasklab.stop(*workers, scheduler)
    assert second.returncode == 0, out
    final = _results(project)
    assert len(final) == 4
    for cell_id, cell in kept.items():
        assert final[cell_id] == cell, "a finished cell is kept as it was, not run again"
    assert all(c["verdict"] == "pass" for c in final.values()), final
    starts = {}
    for mark in (tmp_path / "marks").iterdir():
        slug = mark.name.rsplit(".", 2)[0]
        starts[slug] = starts.get(slug, 0) + 1
    assert sorted(starts.values()) == [1, 1, 2, 2], "the cells cut short ran again, once"
