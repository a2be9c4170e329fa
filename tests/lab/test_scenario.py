"""Whole cells, end to end: the real plugin drives real QEMU guests to a verdict (slow).

Each run is ``pytest --matrix ...`` in a subprocess, the way a developer or the nightly runs it,
and the tests read what it left: ``results.json``, the evidence files, the HTML pages, and what
is (not) left on the hypervisor and in the storage folder. Subprocesses rather than ``pytester``
so that one run of several cells is shared by the tests that look at it (module fixtures), and
so that the libvirt event loop, connections and signal handling are a real runner's own.

The cells (tinylinux-a on bios-1cpu; boots take ~8-14 s here under TCG, ~20 s when the two
cores are shared):

* ``matrix/demo.yaml`` -- ``acme-av``: pass; ``acme-av+other-edr``: the candidate's driver
  panics the kernel at every boot, a boot loop with the panic recorded, attributed to the
  candidate by the baseline rerun;
* ``matrix/demo-hang.yaml`` (hang), ``matrix/demo-check-failed.yaml`` (check_failed),
  ``matrix/demo-install-failed.yaml`` (install_failed): the fault demos;
* infra_error: a private ``libvirtd`` (own mount and network namespaces, as in
  ``test_machine.py``'s reconnect test, here with the QEMU driver) is killed under a running
  cell, before and after the candidate is installed. The system daemon is shared with other
  people and is never touched.

Wall time measured here (2 cores, TCG, other people's cells running too): the first four in one
session with two xdist workers, ~5 min; install_failed alone, ~25 s (~80 s while the small-ISO
defect below makes it an infra_error tried twice); the two infra runs side by side, ~2.5 min.
The whole file: 7.8-8.6 min.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab import require_lab
from tests.support.libvirtd import PrivateLibvirtd
from tests.support.matrixrun import (
    PAYLOADS,
    ROOT,
    RUN_TIMEOUT,
    STORAGE_ROOT,
    Run,
    assert_nothing_left,
    environment,
    events,
    finish,
    is_png,
    leftover_folders,
    pytest_command,
    require_demo_lab,
    run_matrices,
)

pytestmark = pytest.mark.slow


# The matrix files' own cells, as the README tells developers to select them.
DEMO = "matrix/demo.yaml"
HANG = "matrix/demo-hang.yaml"
CHECK = "matrix/demo-check-failed.yaml"
INSTALL = "matrix/demo-install-failed.yaml"
PASS_ID = "tinylinux-a/bios-1cpu/acme-av"
LOOP_ID = "tinylinux-a/bios-1cpu/acme-av+other-edr"
NONE_ID = "tinylinux-a/bios-1cpu/none"

# -- shared checks --------------------------------------------------------------------------------


def phases(cell: dict[str, Any]) -> list[str]:
    return [e["detail"] for e in cell["events"] if e["kind"] == "phase"]


@pytest.fixture(scope="module")
def lab_ready() -> None:
    """The demo's prerequisites (``make test`` builds them): without them, require_lab."""
    require_demo_lab(
        (
            "acme-sensor-7.11.1",
            "other-edr",
            "acme-av",
            "hang-sensor-1.0",
            "health-breaker-1.0",
            "broken-installer-1.0",
        )
    )


# -- the demo subset: pass, boot loop, hang, check_failed -----------------------------------------


@pytest.fixture(scope="module")
def demo(lab_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Four cells in one run, two at a time: about half the wall time of one after another."""
    report = tmp_path_factory.mktemp("demo") / "report"
    return run_matrices(
        report,
        "-n",
        "2",
        "--matrix",
        DEMO,
        "--matrix",
        HANG,
        "--matrix",
        CHECK,
        # demo.yaml's acme-av and acme-av+other-edr cells, demo-check-failed's only cell (also
        # acme-av), demo-hang's only cell.
        "-k",
        "(tinylinux-a and bios-1cpu and acme-av) or demo-hang",
    )


def test_demo_subset_runs_the_four_cells(demo: Run) -> None:
    ran = sorted((Path(c["matrix"]).name, c["id"]) for c in demo.results["cells"])
    assert ran == sorted(
        [
            ("demo.yaml", PASS_ID),
            ("demo.yaml", LOOP_ID),
            ("demo-hang.yaml", NONE_ID),
            ("demo-check-failed.yaml", PASS_ID),
        ]
    ), demo.output[-3000:]
    assert demo.results["run"]["complete"] is True
    assert demo.returncode == 1  # failing cells are failed tests, nothing else went wrong
    out = pytest.LineMatcher(demo.output.splitlines())
    out.re_match_lines([r"^BOOT_LOOP \[candidate\] bugcheck panic Kernel panic - not syncing"])
    out.re_match_lines([r"^CHECK_FAILED \[candidate\]: checks failed: acme-av: service acme-av"])
    junit = ET.parse(demo.report / "junit.xml").getroot()
    assert len(list(junit.iter("testcase"))) == 4


def test_pass_cell(demo: Run) -> None:
    cell = demo.cell(DEMO, PASS_ID)
    assert (cell["verdict"], cell["attribution"], cell["bugcheck"]) == ("pass", None, None)
    assert cell["attempts"] == 1
    # demo.yaml: boots 2 and a rollback; every boot completed, none crashed or hung.
    assert [b["phase"] for b in cell["boots"]] == [
        "provision",
        "baseline",
        "boots",
        "boots",
        "rollback",
    ]
    assert {b["outcome"] for b in cell["boots"]} == {"completed"}
    assert all(0 < b["seconds"] < 90 for b in cell["boots"])
    assert "rollback" in phases(cell)
    assert not events(cell, "crashed") and not events(cell, "decided")
    assert not events(cell, "phase", rerun=True), "a passing cell needs no baseline rerun"
    checks = {(c["name"], c.get("when")): c["passed"] for c in cell["checks"]}
    assert checks[("acme-av: service acme-av running", "after update")] is True
    assert checks[("acme-av: service acme-av running", "after rollback")] is True
    assert all(checks.values()), checks
    installs = [c for c in cell["commands"] if c["meaning"]]  # installers have meanings
    assert [(c["phase"], c["exit_code"]) for c in installs] == [
        ("products", 0),
        ("install", 0),
        ("rollback", 0),
    ]
    demo.artifact(cell, "serial_log")  # its content: see the evidence test below
    assert "pass" in demo.page(cell)


def test_boot_loop_cell_is_the_candidates_with_the_panic_recorded(demo: Run) -> None:
    cell = demo.cell(DEMO, LOOP_ID)
    assert (cell["verdict"], cell["attribution"]) == ("boot_loop", "candidate")
    assert "1 rerun without the candidate passed" in cell["reason"]
    bugcheck = cell["bugcheck"]
    assert bugcheck["code"] == "panic"
    assert bugcheck["name"].startswith("Kernel panic - not syncing")
    assert "address: 000000000000009c" in bugcheck["params"]
    # Three crashes in a row after the install (boot_loop: 3); the boots before it completed.
    outcomes = [(b["phase"], b["outcome"]) for b in cell["boots"]]
    assert outcomes[:2] == [("provision", "completed"), ("baseline", "completed")]
    assert outcomes[2:] == [("boots", "crash")] * 3
    assert len(events(cell, "crashed")) == 3
    assert all(e["detail"] == "panicked" for e in events(cell, "crashed"))
    assert len(events(cell, "power_cycle")) == 2  # the lab restarted it twice, then decided
    recorded = events(cell, "bugcheck")
    assert recorded and recorded[0]["data"]["bugcheck_code"] == "panic"
    decided = events(cell, "decided")
    assert len(decided) == 1 and decided[0]["detail"].startswith("boot_loop: 3 failed boots")
    # The baseline rerun: a fresh VM with the products and no candidate, booted clean.
    assert "boots" in [e["detail"] for e in events(cell, "phase", rerun=True)]
    assert not events(cell, "crashed", rerun=True)
    serial = demo.artifact(cell, "serial_log").read_text(errors="replace")
    assert serial.count("Kernel panic - not syncing") >= 3
    rerun_serial = demo.artifact(cell, "rerun-1/serial_log").read_text(errors="replace")
    assert "Kernel panic" not in rerun_serial and "other_edr" in rerun_serial
    assert is_png(demo.artifact(cell, "screenshot"))
    page = demo.page(cell)
    assert "Kernel panic - not syncing" in page and "<img" in page


def test_hang_cell_is_decided_at_the_boot_timeout_with_a_screenshot(demo: Run) -> None:
    cell = demo.cell(HANG, NONE_ID)
    assert (cell["verdict"], cell["attribution"], cell["bugcheck"]) == ("hang", "candidate", None)
    assert "timeout 45 s" in cell["reason"]
    assert "1 rerun without the candidate passed" in cell["reason"]
    last = cell["boots"][-1]
    assert (last["phase"], last["outcome"]) == ("boots", "hang")
    assert 45 <= last["seconds"] < 50  # decided by the first tick past the deadline
    decided = events(cell, "decided")
    assert len(decided) == 1 and decided[0]["detail"].startswith("hang: ")
    assert not events(cell, "crashed")
    serial = demo.artifact(cell, "serial_log").read_text(errors="replace")
    assert "hang-sensor: waiting for /dev/hang_sensor" in serial
    shot = demo.artifact(cell, "screenshot")
    assert shot.name == "boots-hang.png" and is_png(shot)
    assert "<img" in demo.page(cell)


def test_check_failed_cell_names_the_broken_service(demo: Run) -> None:
    cell = demo.cell(CHECK, PASS_ID)
    assert (cell["verdict"], cell["attribution"], cell["bugcheck"]) == (
        "check_failed",
        "candidate",
        None,
    )
    assert "acme-av: service acme-av not running (after update)" in cell["reason"]
    assert "1 rerun without the candidate passed" in cell["reason"]
    assert {b["outcome"] for b in cell["boots"]} == {"completed"}  # it booted fine
    checks = {(c["name"], c.get("when")): c["passed"] for c in cell["checks"]}
    assert checks[("acme-av: service acme-av running", "baseline")] is True
    assert checks[("acme-av: service acme-av running", "after update")] is False
    failing = [c for c in cell["commands"] if c["phase"] == "checks" and c["exit_code"] != 0]
    assert [(c["command"], c["exit_code"]) for c in failing] == [("svc status acme-av", 3)]
    assert "rollback" not in phases(cell)  # a failed cell is not rolled back
    assert events(cell, "phase", rerun=True)
    demo.artifact(cell, "serial_log")
    assert "service acme-av not running" in demo.page(cell)


def test_cells_with_the_same_id_keep_their_own_evidence(demo: Run) -> None:
    """demo.yaml's and demo-check-failed.yaml's cells are both tinylinux-a/bios-1cpu/acme-av."""
    passed = demo.cell(DEMO, PASS_ID)
    broken = demo.cell(CHECK, PASS_ID)
    assert passed["artifacts"]["serial_log"] != broken["artifacts"]["serial_log"]
    serial = demo.artifact(passed, "serial_log").read_text(errors="replace")
    assert "acme_sensor: 7.11.1 channel 312" in serial  # the candidate's driver really ran
    assert "Kernel panic" not in serial
    other = demo.artifact(broken, "serial_log").read_text(errors="replace")
    assert "acme_sensor" not in other  # health-breaker's cell never had the sensor


def test_demo_subset_leaves_nothing_behind(demo: Run) -> None:
    assert_nothing_left(demo)


# -- install_failed ----------------------------------------------------------------------------


def test_install_failed_cell_reports_the_installers_exit_code(
    lab_ready: None, tmp_path: Path
) -> None:
    run = run_matrices(tmp_path / "report", "--matrix", INSTALL)
    assert_nothing_left(run)
    cell = run.cell(INSTALL, NONE_ID)
    assert (cell["verdict"], cell["attribution"]) == ("install_failed", "candidate")
    assert "exited 67 (failure)" in cell["reason"]
    install = [c for c in cell["commands"] if c["phase"] == "install" and c["meaning"]]
    assert [(c["exit_code"], c["meaning"]) for c in install] == [(67, "failure")]
    assert "prerequisite check failed" in install[0]["stderr"]
    # Decided by the installer: no boots after it and no baseline rerun.
    assert [b["phase"] for b in cell["boots"]] == ["provision", "baseline"]
    assert not events(cell, "phase", rerun=True)
    assert "exited 67" in run.page(cell)


# -- infra_error: libvirtd dies under a running cell ------------------------------------------

# The private libvirtd (tests/support/libvirtd.py, as in test_machine.py's reconnect test) runs
# the QEMU driver here, in private mount and network namespaces: no bridge or network of its can
# reach the host's.

# The demo candidate on a cell where it is harmless (no other-edr): it passes when the lab holds.
INFRA_MATRIX = """\
candidate:
  name: acme-sensor
  version: "7.11.1"
  payload: {payload}
  install: {{linux: "sh {{payload}}/install.sh"}}
  uninstall: {{linux: "sh {{payload}}/uninstall.sh"}}
  exit_codes: {{success: [0]}}
axes: {{build: [tinylinux-a], hardware: [bios-1cpu], products: [[]]}}
scenario: {{boots: 1, boot_timeout: 45, bake: 2, baseline: on_failure, rollback: true}}
"""


def qemu_processes_of(storage_folder: Path) -> list[int]:
    """QEMUs whose command line holds this run's storage folder: only ever this run's."""
    needle = f"{storage_folder}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline.split(b"\0", 1)[0] and needle in cmdline:
            pids.append(int(entry.name))
    return pids


@dataclass
class InfraRun:
    run: Run
    killed_at: str  # the guest's serial line that triggered the kill
    storage_folder: Path


def run_and_kill_libvirtd(folder: Path, kill_when: str) -> InfraRun:
    """Run one cell on a private libvirtd; SIGKILL the daemon once the guest logs ``kill_when``."""
    matrices = folder / "matrices"
    matrices.mkdir(parents=True)
    # The run finds configs/templates next to the matrix (plugin: find_project_root), not
    # through a `catalog:` key, so the catalog folders are linked in beside it.
    (matrices / "images").symlink_to(ROOT / "images")
    (matrices / "configs").symlink_to(ROOT / "configs")
    matrix = matrices / "infra.yaml"
    matrix.write_text(INFRA_MATRIX.format(payload=PAYLOADS / "acme-sensor-7.11.1"))
    daemon = PrivateLibvirtd.start(folder / "libvirtd", driver="qemu", network_namespace=True)
    hosts = folder / "lab.yaml"
    hosts.write_text(f'hosts: [{{uri: "{daemon.uri}"}}]\n')
    report = folder / "report"
    started = time.monotonic()
    log = folder / "pytest.log"
    storage: Path | None = None
    try:
        with log.open("w") as out:
            runner = subprocess.Popen(
                pytest_command(report, "--matrix", str(matrix), "--matrix-hosts", str(hosts)),
                cwd=ROOT,
                env=environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                storage = _kill_when_logged(daemon, runner, kill_when)
                runner.wait(timeout=RUN_TIMEOUT)
            finally:
                if runner.poll() is None:
                    runner.kill()
                    runner.wait()
    finally:
        daemon.kill()
        if storage is not None:
            for pid in qemu_processes_of(storage):  # orphaned by the kill: ours to end
                os.kill(pid, signal.SIGKILL)
    assert storage is not None, f"the guest never logged {kill_when!r}:\n{log.read_text()[-3000:]}"
    run = finish(report, runner.returncode, log.read_text(), started)
    return InfraRun(run, kill_when, storage)


def _kill_when_logged(
    daemon: PrivateLibvirtd, runner: subprocess.Popen[bytes], kill_when: str
) -> Path | None:
    """Find the runner's storage folder by its owner.json, watch the serial log, kill."""
    while runner.poll() is None:
        for owner in (STORAGE_ROOT / "cells").glob("*/owner.json"):
            try:
                if json.loads(owner.read_text()).get("pid") != runner.pid:
                    continue
            except (OSError, ValueError):
                continue
            for serial in owner.parent.glob("*/serial.log"):
                if kill_when in serial.read_text(errors="replace"):
                    daemon.kill()
                    return owner.parent
        time.sleep(0.2)
    return None


@pytest.fixture(scope="module")
def infra(lab_ready: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, InfraRun]:
    """Both kills side by side (each has its own daemon): most of their time is waiting."""
    if os.geteuid() != 0:
        require_lab("a private libvirtd with the QEMU driver needs root")
    plans = {
        # Provisioning: the golden image is booting, nothing of the update is there yet.
        "before_install": "compatlab-guest: boot 1 started",
        # The first boot after the candidate's install (boot 1 provision, 2 baseline).
        "after_install": "compatlab-guest: boot 3 started",
    }
    done: dict[str, InfraRun] = {}
    failed: dict[str, BaseException] = {}

    def one(name: str, marker: str) -> None:
        try:
            done[name] = run_and_kill_libvirtd(tmp_path_factory.mktemp(name), marker)
        except BaseException as exc:  # handed to the test below, with its traceback
            failed[name] = exc

    threads = [threading.Thread(target=one, args=item) for item in plans.items()]
    for thread in threads:
        thread.start()
        time.sleep(5)  # the two guests' first boots do not compete for the cores
    for thread in threads:
        thread.join()
    for exc in failed.values():
        raise exc
    return done


def _assert_infra_error(infra_run: InfraRun) -> None:
    run = infra_run.run
    # Checked first: what the run leaves must be gone whatever the verdict.
    assert leftover_folders(run.run_id) == []
    assert not infra_run.storage_folder.exists()
    cell = run.cell("infra.yaml", NONE_ID)
    assert (cell["verdict"], cell["attribution"]) == ("infra_error", "infra"), cell["reason"]
    assert cell["bugcheck"] is None
    assert cell["reason"].startswith("infra error: ")
    assert cell["attempts"] == 2  # retried on a fresh VM before it was reported
    assert run.returncode == 1
    pytest.LineMatcher(run.output.splitlines()).re_match_lines([r"^INFRA_ERROR \[infra\]: "])


def test_libvirtd_lost_before_the_install_is_infra_error(infra: dict[str, InfraRun]) -> None:
    _assert_infra_error(infra["before_install"])


def test_libvirtd_lost_after_the_install_is_infra_error_not_the_updates(
    infra: dict[str, InfraRun],
) -> None:
    _assert_infra_error(infra["after_install"])
