"""A lab of two hypervisor hosts on real QEMU guests (issue 10, item 5): Dask's scheduler and two
``compatlab worker`` processes on 127.0.0.1, each with its own capacity (one 1-vCPU VM) and
storage folder, both driving this machine's libvirtd; the controller is ``pytest --matrix
--matrix-scheduler`` in a subprocess, as a nightly runs it.

Three runs, each of bios-1cpu cells with one candidate boot and no rollback (the
demo's scenario, shortened: what is tested here is where cells run, not the scenario):
the cells run across both workers; ``kill -9`` of a worker mid-cell reruns the cell on the
other, and the dead worker's VM is reaped; ``kill -9`` of the controller, then
``--matrix-resume``, reports every cell exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import dasklab
from tests.support.matrixrun import RUN_TIMEOUT, STORAGE_ROOT, SYSTEM_URI, require_demo_lab

pytestmark = pytest.mark.slow

MATRIX = """\
catalog: {{images: {root}/images, hardware: {root}/configs/hardware,
          products: {root}/configs/products}}
candidate:
  name: acme-sensor
  version: "7.11.1"
  payload: {root}/payloads/build/acme-sensor-7.11.1
  install: {{linux: "sh {{payload}}/install.sh"}}
  uninstall: {{linux: "sh {{payload}}/uninstall.sh"}}
  exit_codes: {{success: [0]}}
axes:
  build: {builds}
  hardware: [bios-1cpu]
  products: {products}
scenario: {{boots: 1, boot_timeout: 120, bake: 1, baseline: never, rollback: false}}
{extra}"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    require_demo_lab(["acme-sensor-7.11.1", "acme-av"])
    folder = tmp_path_factory.mktemp("lab")
    # The workers' storage where QEMU's user can reach it (not under /tmp/pytest-of-root).
    STORAGE_ROOT.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="lab-workers-test-", dir=STORAGE_ROOT))
    storage.chmod(0o755)
    scheduler, address = dasklab.scheduler(folder)
    workers = {name: _start(folder, address, name, storage) for name in ("host-a", "host-b")}
    try:
        from distributed import Client

        with Client(address, set_as_default=False, timeout=30) as client:
            dasklab.wait_workers(client, 2)
        yield storage, address, workers
    finally:
        dasklab.stop(*workers.values(), scheduler)
        shutil.rmtree(storage, ignore_errors=True)


def _start(folder: Path, address: str, name: str, storage: Path) -> subprocess.Popen[str]:
    return dasklab.worker(
        folder,
        address,
        name,
        standins=False,
        vcpus=1,
        memory=2048,
        log=folder / f"{name}.log",
        storage=storage / name,
    )


def _matrix(folder: Path, products: str, builds: str = "[tinylinux-a]", extra: str = "") -> Path:
    path = folder / f"m-{len(list(folder.glob('m-*.yaml')))}.yaml"
    path.write_text(MATRIX.format(root=dasklab.ROOT, products=products, builds=builds, extra=extra))
    return path


def _controller(matrix: Path, address: str, report: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"),
            *("--matrix", str(matrix), "--matrix-scheduler", address),
            *("--matrix-report", str(report), "--matrix-cache", "off", *extra),
        ],
        cwd=matrix.parent,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _cells(report: Path) -> dict[str, dict[str, Any]]:
    doc = json.loads((report / "results.json").read_text())
    ids = [c["id"] for c in doc["cells"]]
    assert len(ids) == len(set(ids)), f"a cell reported twice: {ids}"
    return {c["id"]: c for c in doc["cells"]}


def _worker_of(cell: dict[str, Any]) -> str:
    [placed] = [e["detail"] for e in cell["events"] if e["kind"] == "placed"]
    return str(placed.removeprefix("on worker "))


def _domains_of(pid: int) -> list[str]:
    import libvirt

    from compatlab.lab.owner import NS_URI, parse_cell_metadata

    conn = libvirt.open(SYSTEM_URI)
    try:
        found = []
        for dom in conn.listAllDomains():
            try:
                meta = parse_cell_metadata(
                    dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI)
                )
            except libvirt.libvirtError:
                continue
            if meta is not None and meta.controller.pid == pid:
                found.append(dom.name())
        return found
    finally:
        conn.close()


def test_a_demo_subset_runs_across_both_workers(
    lab: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    folder, address, _ = lab
    report = tmp_path / "report"
    run = _controller(_matrix(folder, "[[], [acme-av]]"), address, report)
    out, _ = run.communicate(timeout=RUN_TIMEOUT)
    assert run.returncode == 0, out
    cells = _cells(report)
    assert [c["verdict"] for c in cells.values()] == ["pass", "pass"], out
    assert {_worker_of(c) for c in cells.values()} == {"host-a", "host-b"}
    for cell in cells.values():  # the evidence came back from the worker's host
        assert (report / cell["artifacts"]["serial_log"]).stat().st_size > 0


def test_a_worker_killed_mid_cell_reruns_the_cell_on_the_other(
    lab: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    folder, address, workers = lab
    report = tmp_path / "report"
    run = _controller(_matrix(folder, "[[]]"), address, report)
    try:
        deadline = time.monotonic() + 300
        while not (busy := {n: w for n, w in workers.items() if _domains_of(w.pid)}):
            assert run.poll() is None and time.monotonic() < deadline, "no VM ever started"
            time.sleep(0.5)
        [(victim_name, victim)] = busy.items()
        victim.send_signal(signal.SIGKILL)  # its VM runs on under libvirtd: an orphan
        victim.wait()
        out, _ = run.communicate(timeout=RUN_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    [cell] = _cells(report).values()
    assert cell["verdict"] == "pass", out
    assert cell["attempts"] == 2
    assert _worker_of(cell) != victim_name
    assert [e for e in cell["events"] if e["kind"] == "worker_lost"]
    # The dead worker's VM and folder: removed by the reaper, as `compatlab gc` runs it.
    gc = subprocess.run(
        [sys.executable, "-m", "compatlab.cli", "gc", "--storage-root", str(folder / victim_name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gc.returncode == 0, gc.stderr
    assert _domains_of(victim.pid) == []
    assert not list((folder / victim_name).glob("cells/*"))
    # A worker for the next test, in its place.
    workers[victim_name] = _start(tmp_path, address, victim_name, folder)


def test_a_killed_controller_resumes_and_reports_every_cell_once(
    lab: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    folder, address, workers = lab
    from distributed import Client

    with Client(address, set_as_default=False, timeout=30) as client:
        dasklab.wait_workers(client, 2)
    report = tmp_path / "report"
    # Three cells on two 1-vCPU workers: at least one finished and kept, one or two running
    # when the controller dies, then reaped and run again side by side. (It was four: the
    # fourth, not started yet at the kill, added a second round to the resumed run, ~95 s.)
    matrix = _matrix(
        folder,
        "[[], [acme-av]]",
        builds="[tinylinux-a, tinylinux-b]",
        extra="exclude: [{build: tinylinux-b, products: [acme-av]}]\n",
    )
    first = _controller(matrix, address, report)
    deadline = time.monotonic() + 600
    while True:  # a cell done and the next one started: kill -9 the controller then
        done = (report / "results.json").exists() and len(_cells(report)) >= 1
        running = sum(len(_domains_of(w.pid)) for w in workers.values())
        if done and running >= 1:
            break
        assert first.poll() is None and time.monotonic() < deadline, "the first run stalled"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    kept = _cells(report)
    # The workers stop the killed controller's cells and remove their VMs.
    deadline = time.monotonic() + 120
    while any(_domains_of(w.pid) for w in workers.values()):
        assert time.monotonic() < deadline, "the killed controller's VMs were not torn down"
        time.sleep(1)
    second = _controller(matrix, address, report, "--matrix-resume")
    out, _ = second.communicate(timeout=RUN_TIMEOUT)
    assert second.returncode == 0, out
    final = _cells(report)
    assert len(final) == 3
    for cell_id, cell in kept.items():
        assert final[cell_id] == cell, "a finished cell is kept as it was"
    assert all(c["verdict"] == "pass" for c in final.values()), out
