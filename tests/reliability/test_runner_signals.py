"""The runner itself stopped: SIGINT, SIGTERM and SIGKILL at three phases of a cell, and two
runs at once on one host (real VMs, slow).

Each scenario has its own private lab (tests/support/privatelab.py), so what a killed runner
leaves is visible -- no other run on the same daemon reaps it first -- and ``compatlab gc`` can
be pointed at that lab alone. The signal goes to the runner process (``pytest --matrix``) only,
as ``kill`` sends it, on the guest's cue:

=============  =============================================  ==============================
phase          cue on the serial console                      signals
=============  =============================================  ==============================
provisioning   ``compatlab-guest: boot 1 started``             SIGINT, SIGTERM, SIGKILL
install        ``slow-install: installing`` (its installer     SIGINT
               sleeps 10 s; payloads/slow-install-1.0)
boots          ``compatlab-guest: boot 3 started``             SIGTERM, SIGKILL (+ resume)
=============  =============================================  ==============================

What must hold: after SIGINT (Ctrl-C) and SIGTERM (what a CI runner, ``timeout`` or
``systemctl stop`` sends) the runner cleans up before it exits -- no domain, cell folder, disk
or QEMU left. SIGKILL cannot be cleaned up after by the process itself: ``compatlab gc``
removes what it left (never a live run's), and ``--matrix-resume`` finishes the run in the same
report, keeping the cells that had finished.

Two runs at once share the lab with an orphan of a dead run planted before they start: both
must pass on their own VMs (distinct names, both alive at the same moment), the orphan must be
reaped, and neither run may touch the other's VM.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultrun import (
    FaultRun,
    Leftovers,
    Outcome,
    Trigger,
    compatlab_gc,
    leftovers,
    run_matrix,
    scenario,
    signal_runner,
    threads,
    world_traversable_folder,
    write_matrix,
)
from tests.support.matrixrun import events
from tests.support.privatelab import PrivateLab

pytestmark = pytest.mark.slow

NONE_ID = "tinylinux-a/bios-1cpu/none"
AV_ID = "tinylinux-a/bios-1cpu/acme-av"
CANDIDATE = "acme-sensor-7.11.1"
PROVISIONING = "compatlab-guest: boot 1 started"
INSTALL = "slow-install: installing"
BOOTS = "compatlab-guest: boot 3 started"
#: How long a runner may take to clean up and exit after SIGINT or SIGTERM.
STOP_WITHIN = 90.0

# -- the signal scenarios ------------------------------------------------------------------------

SIGNALS: dict[str, tuple[signal.Signals, str, str]] = {
    "sigint-provisioning": (signal.SIGINT, PROVISIONING, CANDIDATE),
    "sigint-install": (signal.SIGINT, INSTALL, "slow-install-1.0"),
    "sigterm-provisioning": (signal.SIGTERM, PROVISIONING, CANDIDATE),
    "sigterm-boots": (signal.SIGTERM, BOOTS, CANDIDATE),
    "sigkill-provisioning": (signal.SIGKILL, PROVISIONING, CANDIDATE),
}
_ORDER = {
    "sigterm-boots": 30,
    "sigint-install": 32,
    "sigint-provisioning": 40,
    "sigterm-provisioning": 41,
    "sigkill-provisioning": 42,
}


def _signal_scenario(name: str) -> Callable[[Path], Outcome]:
    how, cue, payload = SIGNALS[name]

    def run(folder: Path) -> Outcome:
        with world_traversable_folder(name) as base:
            lab = PrivateLab.start(folder / "lab", base / "storage")
            try:
                matrix = write_matrix(folder / "matrices", "signal", payload)
                sent: list[float] = []

                def send(runner: subprocess.Popen[bytes]) -> None:
                    sent.append(time.monotonic())
                    signal_runner(how)(runner)

                started = time.monotonic()
                result = run_matrix(
                    name,
                    folder,
                    ["--matrix", str(matrix)],
                    lab=lab,
                    triggers=[Trigger(how.name, cue, send)],
                )
                notes: dict[str, Any] = {
                    "stopped_after": round(started + result.seconds - sent[0], 1) if sent else None
                }
                left = leftovers(lab)
                if how is signal.SIGKILL:
                    notes["before_gc"] = left
                    gc = compatlab_gc(lab)
                    notes["gc"] = (gc.returncode, gc.stdout + gc.stderr)
                    left = leftovers(lab)
                return Outcome(name, {"run": result}, left, notes)
            finally:
                lab.close()

    return run


for _name in SIGNALS:
    scenario(_name, order=_ORDER[_name])(_signal_scenario(_name))


def _outcome(campaign: Any, name: str) -> Outcome:
    return campaign.get(name)  # type: ignore[no-any-return]


def _assert_stopped_by(outcome: Outcome, how: signal.Signals) -> FaultRun:
    run = outcome.runs["run"]
    assert run.fired[how.name] is not None, f"never signalled:\n{run.output[-3000:]}"
    assert run.returncode == 2, run.output[-3000:]  # pytest: interrupted
    assert outcome.notes["stopped_after"] <= STOP_WITHIN, outcome.notes
    # The interrupted cell never finished: it has no verdict (a results.json, if written, is
    # whole and says the run is not complete).
    if run.results is not None:
        assert run.results["run"].get("complete") is not True
        assert [c["verdict"] for c in run.cells] == []
    return run


@pytest.mark.scenario("sigint-provisioning")
@pytest.mark.fault("SIGINT of the runner during provisioning")
def test_sigint_during_provisioning_leaves_nothing(campaign: Any) -> None:
    outcome = _outcome(campaign, "sigint-provisioning")
    _assert_stopped_by(outcome, signal.SIGINT)
    assert outcome.leftovers == Leftovers(), outcome.leftovers


@pytest.mark.scenario("sigint-install")
@pytest.mark.fault("SIGINT of the runner during the install")
def test_sigint_during_the_install_leaves_nothing(campaign: Any) -> None:
    outcome = _outcome(campaign, "sigint-install")
    _assert_stopped_by(outcome, signal.SIGINT)
    assert outcome.leftovers == Leftovers(), outcome.leftovers


@pytest.mark.scenario("sigterm-provisioning")
@pytest.mark.fault("SIGTERM of the runner during provisioning")
def test_sigterm_during_provisioning_leaves_nothing(campaign: Any) -> None:
    outcome = _outcome(campaign, "sigterm-provisioning")
    _assert_stopped_by(outcome, signal.SIGTERM)
    assert outcome.leftovers == Leftovers(), outcome.leftovers


@pytest.mark.scenario("sigterm-boots")
@pytest.mark.fault("SIGTERM of the runner during the boots")
def test_sigterm_during_the_boots_leaves_nothing(campaign: Any) -> None:
    outcome = _outcome(campaign, "sigterm-boots")
    _assert_stopped_by(outcome, signal.SIGTERM)
    assert outcome.leftovers == Leftovers(), outcome.leftovers


@pytest.mark.scenario("sigkill-provisioning")
@pytest.mark.fault("SIGKILL of the runner during provisioning, then compatlab gc")
def test_sigkill_during_provisioning_then_gc_removes_what_it_left(campaign: Any) -> None:
    outcome = _outcome(campaign, "sigkill-provisioning")
    run = outcome.runs["run"]
    assert run.fired["SIGKILL"] is not None, f"never signalled:\n{run.output[-3000:]}"
    assert run.returncode == -signal.SIGKILL
    before: Leftovers = outcome.notes["before_gc"]
    assert len(before.domains) == 1 and before.processes and before.disks, before
    code, said = outcome.notes["gc"]
    assert code == 0, said
    assert "removed 1 domain(s)" in said, said
    assert outcome.leftovers == Leftovers(), outcome.leftovers


# -- SIGKILL during the boots, then gc and resume ---------------------------------------------


@scenario("sigkill-boots-resume", order=12)
def _sigkill_and_resume(folder: Path) -> Outcome:
    """Two cells one after the other; the runner is killed in the second one's boots."""
    with world_traversable_folder("resume") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            matrix = write_matrix(
                folder / "matrices", "resume", CANDIDATE, products=((), ("acme-av",))
            )
            killed = run_matrix(
                "killed",
                folder,
                ["--matrix", str(matrix)],
                lab=lab,
                triggers=[Trigger("SIGKILL", BOOTS, signal_runner(signal.SIGKILL), cell=AV_ID)],
            )
            before = leftovers(lab)
            gc = compatlab_gc(lab)
            after_gc = leftovers(lab)
            resumed = run_matrix(
                "resumed",
                folder,
                ["--matrix", str(matrix), "--matrix-resume"],
                lab=lab,
                report=killed.report,
            )
            return Outcome(
                "sigkill-boots-resume",
                {"killed": killed, "resumed": resumed},
                leftovers(lab),
                {
                    "before_gc": before,
                    "gc": (gc.returncode, gc.stdout + gc.stderr),
                    "after_gc": after_gc,
                    "results_after_kill": killed.results,
                },
            )
        finally:
            lab.close()


@pytest.fixture(scope="module")
def resume(campaign: Any) -> Outcome:
    return _outcome(campaign, "sigkill-boots-resume")


@pytest.mark.scenario("sigkill-boots-resume")
@pytest.mark.fault("SIGKILL of the runner during the boots, then compatlab gc")
def test_sigkill_during_the_boots_then_gc_removes_what_it_left(resume: Outcome) -> None:
    killed = resume.runs["killed"]
    assert killed.fired["SIGKILL"] is not None, f"never signalled:\n{killed.output[-3000:]}"
    assert killed.returncode == -signal.SIGKILL
    before: Leftovers = resume.notes["before_gc"]
    assert len(before.domains) == 1 and before.processes and before.disks, before
    code, said = resume.notes["gc"]
    assert code == 0, said
    assert resume.notes["after_gc"] == Leftovers(), resume.notes["after_gc"]


@pytest.mark.scenario("sigkill-boots-resume")
@pytest.mark.fault("SIGKILL of the runner during the boots, then --matrix-resume")
def test_matrix_resume_after_sigkill_keeps_what_finished_and_runs_the_rest(
    resume: Outcome,
) -> None:
    killed, resumed = resume.runs["killed"], resume.runs["resumed"]
    # What the killed run had finished was on disk already: the first cell, nothing else.
    at_kill = resume.notes["results_after_kill"]
    assert at_kill is not None, killed.output[-3000:]
    assert [(c["id"], c["verdict"]) for c in at_kill["cells"]] == [(NONE_ID, "pass")]
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "finished in the resumed run" in resumed.output
    results = resumed.results
    assert results is not None
    assert results["run"]["id"] == at_kill["run"]["id"]
    assert results["run"]["complete"] is True
    cells = {c["id"]: c for c in results["cells"]}
    assert sorted(cells) == sorted([NONE_ID, AV_ID])
    assert cells[NONE_ID] == at_kill["cells"][0], "the finished cell is kept as it was"
    assert (cells[AV_ID]["verdict"], cells[AV_ID]["attempts"]) == ("pass", 1)


@pytest.mark.scenario("sigkill-boots-resume")
def test_sigkill_gc_and_resume_leave_nothing(resume: Outcome) -> None:
    assert resume.leftovers == Leftovers(), resume.leftovers


# -- two runs at once on one host --------------------------------------------------------------

ORPHAN_RUN = "20200101T000000-dead.main"
ORPHAN_DOMAIN = "compatlab-orphan-of-a-dead-run"


def _plant_orphan(lab: PrivateLab) -> None:
    """What a SIGKILLed run of long ago left: a defined domain and a folder, both claiming a
    controller that is gone (a pid that exited, a start time no process has)."""
    import libvirt

    from compatlab.lab.owner import CellMetadata, Controller, render_cell_metadata, write_run_owner

    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = Controller(host=socket.gethostname(), pid=gone.pid, start=1)
    meta = render_cell_metadata(CellMetadata(ORPHAN_RUN, NONE_ID, owner))
    xml = (
        f"<domain type='qemu'><name>{ORPHAN_DOMAIN}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
        f"<metadata>{meta}</metadata></domain>"
    )
    conn = libvirt.open(lab.uri)
    try:
        conn.defineXML(xml)
    finally:
        conn.close()
    folder = lab.storage_root / "cells" / ORPHAN_RUN
    write_run_owner(folder, owner)
    (folder / "cell").mkdir()
    (folder / "cell" / "overlay.qcow2").write_bytes(b"")


class _DomainLog:
    """Which compatlab domains exist on the lab, sampled every half second."""

    def __init__(self, lab: PrivateLab) -> None:
        self.lab = lab
        self.seen: dict[str, str] = {}  # domain name -> run id
        self.together = 0  # most runs with a domain alive at the same sample
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="domain-log")
        self.thread.start()

    def _loop(self) -> None:
        import libvirt

        from compatlab.lab.owner import read_cell_metadata

        conn = libvirt.open(self.lab.uri)
        try:
            while not self.stop.wait(0.5):
                runs = set()
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    try:
                        meta = read_cell_metadata(dom)
                        name = dom.name()
                    except Exception:  # gone while listing
                        continue
                    if meta is not None:
                        self.seen[name] = meta.run
                        runs.add(meta.run)
                self.together = max(self.together, len(runs))
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


@scenario("two-runs", guests=2, order=26)
def _two_runs(folder: Path) -> Outcome:
    with world_traversable_folder("two") as base:
        lab = PrivateLab.start(folder / "lab", base / "storage")
        try:
            _plant_orphan(lab)
            matrix = write_matrix(folder / "matrices", "two", CANDIDATE)
            log = _DomainLog(lab)
            try:
                first, second = threads(
                    lambda: run_matrix("a", folder / "a", ["--matrix", str(matrix)], lab=lab),
                    lambda: run_matrix("b", folder / "b", ["--matrix", str(matrix)], lab=lab),
                )
            finally:
                log.close()
            return Outcome(
                "two-runs",
                {"a": first, "b": second},  # type: ignore[dict-item]
                leftovers(lab),
                {"domains": log.seen, "together": log.together},
            )
        finally:
            lab.close()


@pytest.fixture(scope="module")
def two(campaign: Any) -> Outcome:
    return _outcome(campaign, "two-runs")


@pytest.mark.scenario("two-runs")
@pytest.mark.fault("two runs at once on one host")
def test_two_runs_at_once_each_on_its_own_vm(two: Outcome) -> None:
    a, b = two.runs["a"], two.runs["b"]
    assert a.results is not None and b.results is not None, a.output[-2000:] + b.output[-2000:]
    assert a.results["run"]["id"] != b.results["run"]["id"]
    for run in (a, b):
        cell = run.cell("two.yaml", NONE_ID)
        assert (cell["verdict"], cell["attempts"]) == ("pass", 1), cell["reason"]
        assert not events(cell, "cleanup_failed")
    runs_seen = {run.split(".")[0] for run in two.notes["domains"].values()}
    assert runs_seen == {a.results["run"]["id"], b.results["run"]["id"]}, two.notes
    assert two.notes["together"] == 2, "the two runs' guests were never up at the same time"


@pytest.mark.scenario("two-runs")
def test_two_runs_reap_the_dead_runs_orphan_and_nothing_else(two: Outcome) -> None:
    assert ORPHAN_DOMAIN not in two.leftovers.domains
    assert two.leftovers == Leftovers(), two.leftovers
