"""Whole cells through the real runner, on libvirt's ``test:///default`` driver with a scripted
guest (tests/support/fakeguest.py): every wrong-verdict path of issue 7, in milliseconds.

Each test names the path it guards. On the runner as it was (events read only inside the boot
wait, one set of observations per VM, enum-order comparisons), each of these ended differently:
a crash while a command ran surfaced as a GuestError and the cell as ``infra_error``; a product's
crash at the baseline boot was counted against the candidate; a lost rerun still said
``candidate``; a dead agent read as ``hang``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compatlab.errors import LabError, StorageError
from compatlab.guest.channel import CommandResult
from compatlab.lab.connection import Hypervisor
from compatlab.lab.machine import Machine
from compatlab.matrix import Cell, load_matrix
from compatlab.model import Attribution, CellResult, Verdict
from compatlab.scenario import run_cell
from tests.support.catalogs import make_project, matrix
from tests.support.fakeguest import (
    BootScript,
    ScriptedGuest,
    TestStorage,
    scripted_lab,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = (
    "scenario: {boots: 2, boot_timeout: 1.5, bake: 0.1, boot_loop: 3, baseline: on_failure,"
    " rollback: true}\n"
)
INSTALL = "payload/install.sh"
UNINSTALL = "payload/uninstall.sh"
PRODUCT = "payload/i.sh"
EXIT_1 = CommandResult(1, "", "not running", 0.01)


@pytest.fixture(scope="module")
def hv() -> Iterator[Hypervisor]:
    with Hypervisor("test:///default") as hypervisor:
        yield hypervisor


def cell(tmp_path: Path, products: str = "[[]]", extra: str = "", candidate: str = "") -> Cell:
    root = make_project(tmp_path / "project", builds=("lin",), hardware=("bios-1cpu",))
    for name in ("av", "edr", "dlp", "candidate"):
        (root / "payloads" / name).mkdir(parents=True, exist_ok=True)
        (root / "payloads" / name / "install.sh").write_text("exit 0\n")
    body = f"axes: {{build: [lin], hardware: [bios-1cpu], products: {products}}}\n"
    path = matrix(root, body + SCENARIO + extra)
    if candidate:
        path.write_text(path.read_text().replace("  exit_codes:", candidate + "  exit_codes:", 1))
    loaded = load_matrix(path, catalog_root=root)
    assert len(loaded.cells) == 1
    return loaded.cells[0]


class Guests:
    """One script per VM, in the order the runner makes them (attempts, then reruns)."""

    def __init__(self, *scripts: dict[str, Any]) -> None:
        self.scripts = list(scripts)
        self.made: list[ScriptedGuest] = []

    def __call__(self, cell: Cell, machine: Machine, forwards: Any = ()) -> ScriptedGuest:
        script = self.scripts.pop(0) if self.scripts else {}
        if isinstance(script, Exception):
            raise script
        assert machine.storage_dir is not None
        guest = ScriptedGuest(machine, machine.storage_dir / "serial.log", **script)
        self.made.append(guest)
        return guest


def run(
    hv: Hypervisor, tmp_path: Path, the_cell: Cell, guests: Callable[..., Any], **lab: Any
) -> CellResult:
    context = scripted_lab(hv, tmp_path, guests, **lab)
    result = run_cell(the_cell, context)
    json.dumps(result.as_json())  # always serialisable
    left = [d.name() for d in hv.domains() if d.name().startswith("compatlab-")]
    assert not left, f"left behind: {left}"
    return result


def boots(*scripts: BootScript) -> list[BootScript]:
    return list(scripts)


# -- no blind window ---------------------------------------------------------------------------


def test_a_crash_while_the_installer_runs_then_at_every_boot_is_the_candidates_boot_loop(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """The July 2024 shape: the running sensor loads new content while its installer runs."""
    guests = Guests(
        {"commands": {INSTALL: "crash"}, "boots": boots("ok", "ok", "crash", "crash")}, {}
    )
    started = time.monotonic()
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert time.monotonic() - started < 60  # the installer's call was abandoned, not waited out
    assert (result.verdict, result.attribution) == (Verdict.BOOT_LOOP, Attribution.CANDIDATE)
    assert result.attempts == 1  # never retried
    assert result.bugcheck is not None and result.bugcheck.code == "panic"
    install = next(p for p in result.phases if p["phase"] == "install")
    assert install["outcome"] == "boot_loop"
    assert [r["verdict"] for r in result.reruns] == ["pass"]


def test_a_crash_while_the_installer_runs_and_clean_boots_after_is_a_crash(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"commands": {INSTALL: "crash"}}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)
    assert "1 crash" in result.reason


def test_a_crash_during_a_custom_check_is_seen_in_the_checks_phase(
    hv: Hypervisor, tmp_path: Path
) -> None:
    def check(guest: Any, _cell: Cell) -> list[Any]:
        guest.run("probe-the-sensor", timeout=600)
        return []

    guests = Guests({"commands": {"probe-the-sensor": "crash"}}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests, checks=check)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)
    checks = next(p for p in result.phases if p["phase"] == "checks")
    assert checks["outcome"] == "crash"


def test_a_crash_in_the_uninstaller_is_rollback_failed_with_its_evidence(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"commands": {UNINSTALL: "crash"}})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (
        Verdict.ROLLBACK_FAILED,
        Attribution.CANDIDATE,
    )
    assert result.bugcheck is not None and result.bugcheck.code == "panic"
    assert "rollback failed: crash" in result.reason
    rollback = next(p for p in result.phases if p["phase"] == "rollback")
    assert rollback["outcome"] == "crash"
    shots = sorted(p.name for p in (tmp_path / "report").rglob("*.png"))
    assert "rollback-crash-1.png" in shots


# -- observations scoped by phase --------------------------------------------------------------


def test_a_products_crash_at_the_baseline_boot_is_the_configurations_never_the_candidates(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"boots": boots("ok", "crash")})
    result = run(hv, tmp_path, cell(tmp_path, products="[[edr]]"), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.BASELINE)
    assert "before the candidate was installed (phase baseline)" in result.reason
    assert not any(INSTALL in c for c in guests.made[0].ran)  # the candidate was never installed
    assert result.reruns == []


def test_a_rerun_that_crashes_before_its_own_candidate_phase_makes_it_baseline(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """The rerun's whole outcome counts: here it crashed at its baseline boot."""
    guests = Guests({"boots": boots("ok", "ok", "crash")}, {"boots": boots("ok", "crash")})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.BASELINE)
    assert result.reruns[0]["verdict"] == "crash"


def test_evidence_of_attempts_and_reruns_is_kept_apart(hv: Hypervisor, tmp_path: Path) -> None:
    guests = Guests({"boots": boots("ok", "ok", "crash")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert result.artifacts["screenshot"].split("/")[-2] == "attempt-1"
    assert any(k.startswith("rerun-1/") for k in result.artifacts)
    assert result.artifacts["screenshot"].endswith("boots-crash-1.png")


# -- a hung boot is not an unreachable guest ---------------------------------------------------


def test_a_guest_that_booted_but_whose_agent_is_dead_is_not_a_hang(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"boots": boots("ok", "ok", "dead-agent")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CHECK_FAILED, Attribution.CANDIDATE)
    assert result.reason.startswith("unreachable: boot 3: the guest finished booting")


def test_an_agent_that_dies_after_a_completed_boot_is_unreachable_not_a_hang(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """The candidate killed the lab's channel into a guest that stays up: the reboot request
    can never be delivered, so no reset is coming. Waiting for one read as "hang: no reset
    within N s of a reboot request" -- the guest never hung (tests/reliability agent-killed)."""
    guests = Guests({"boots": boots("ok", "ok", "agent-dies")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CHECK_FAILED, Attribution.CANDIDATE)
    assert result.reason.startswith("unreachable: boot 3:"), result.reason
    assert "stopped answering" in result.reason, result.reason
    assert result.attempts == 1


def test_a_boot_with_no_sign_of_life_is_still_a_hang(hv: Hypervisor, tmp_path: Path) -> None:
    guests = Guests({"boots": boots("ok", "ok", "hang")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.HANG, Attribution.CANDIDATE)


# -- installers that restart the machine -------------------------------------------------------


def test_declared_restarts_during_the_install_are_not_failures(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"commands": {INSTALL: "restart"}})
    the_cell = cell(tmp_path, candidate="  reboots: 1\n")
    assert the_cell.candidate.reboots == 1
    result = run(hv, tmp_path, the_cell, guests)
    assert result.verdict is Verdict.PASS, result.reason


def test_an_undeclared_restart_during_the_install_is_an_install_failure(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"commands": {INSTALL: "restart"}})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (
        Verdict.INSTALL_FAILED,
        Attribution.CANDIDATE,
    )
    assert "declares no restarts" in json.dumps(result.as_json()["commands"])


# -- attribution that says how sure it is ------------------------------------------------------


def test_a_rerun_the_lab_could_not_run_leaves_the_failure_unconfirmed(
    hv: Hypervisor, tmp_path: Path
) -> None:
    broken = LabError("libvirtd went away", host="lab-1")
    guests = Guests({"boots": boots("ok", "ok", "crash")}, broken, broken)  # type: ignore[arg-type]
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.UNCONFIRMED)
    assert result.reruns[0]["verdict"] == "infra_error"


def test_more_reruns_find_an_intermittent_failure_of_the_configuration(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests(
        {"boots": boots("ok", "ok", "crash")}, {}, {"boots": boots("ok", "ok", "crash")}
    )
    the_cell = cell(tmp_path, extra="include: [{scenario: {reruns: 3}}]\n")
    result = run(hv, tmp_path, the_cell, guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.BASELINE)
    assert [r["verdict"] for r in result.reruns] == ["pass", "crash"]  # stopped at the second


# -- every selected cell gets exactly one result -----------------------------------------------


def test_an_unexpected_exception_in_the_runner_is_infra_error_with_its_text(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests(RuntimeError("a bug in a channel"))  # type: ignore[arg-type]
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "RuntimeError: a bug in a channel" in result.reason


class FailingRemoval(TestStorage):
    def remove(self) -> None:
        super().remove()
        raise StorageError("removing the folder: device busy", host="lab-1")


def test_a_storage_removal_error_after_a_verdict_keeps_the_verdict(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"boots": boots("ok", "ok", "crash")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests, storages=FailingRemoval)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)
    assert any(e.kind == "cleanup_failed" and "device busy" in e.detail for e in result.events)


def test_an_evidence_copy_error_keeps_the_verdict(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compatlab.lab.evidence import CellEvidence

    def broken(self: CellEvidence) -> dict[str, str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CellEvidence, "keep", broken)
    guests = Guests({"boots": boots("ok", "ok", "crash")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)
    assert any("No space left" in e.detail for e in result.events)


def test_a_lab_failure_with_no_guest_failure_is_retried_then_infra_error(
    hv: Hypervisor, tmp_path: Path
) -> None:
    broken = LabError("cannot open the agent socket", host="lab-1")
    guests = Guests(broken, broken)  # type: ignore[arg-type]
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert result.attempts == 2


def test_a_guest_paused_by_a_full_host_disk_is_the_labs_failure_not_a_hang(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """QEMU pauses a guest whose overlay cannot grow (libvirt: an I/O error event, then
    lifecycle suspended/ioerror). The guest did nothing wrong: the attempt is the lab's failure,
    retried, and the reason says the disk is full -- never a hang of the candidate
    (tests/reliability storage-full-mid-run)."""
    full = {"commands": {INSTALL: "disk-full"}}
    guests = Guests(full, full)
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert result.attempts == 2
    assert "No space left on device" in result.reason, result.reason
    assert "overlay" in result.reason, result.reason


def test_a_crash_in_the_last_moment_of_the_book_is_still_judged(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """The guest panics just after the last check returned, while no call is running: the
    event is on the queue when the book ends, and is judged before the VM goes."""

    panicked: list[bool] = []

    def check(guest: Any, _cell: Cell) -> list[Any]:
        if not panicked:  # the candidate's VM only: the rerun's guest stays up
            panicked.append(True)
            # What the guest does a moment after answering the last check.
            threading.Timer(0.3, guest._panic).start()
        return []

    guests = Guests({}, {})
    the_cell = cell(tmp_path, extra="include: [{scenario: {rollback: false}}]\n")
    result = run(hv, tmp_path, the_cell, guests, checks=check)
    assert (result.verdict, result.attribution) == (Verdict.CRASH, Attribution.CANDIDATE)


# -- values in the lab's own command lines; the payload medium --------------------------------


def test_a_service_name_is_quoted_into_the_health_check(hv: Hypervisor, tmp_path: Path) -> None:
    """Issue 8: a catalog's service name was substituted into the shell command unquoted."""
    the_cell = cell(tmp_path, products="[[av]]")
    product = the_cell.products[0]
    linux = product.payload_for("linux")
    assert linux is not None
    hostile = "acme; touch /tmp/pwned"
    health = dataclasses.replace(linux.health, services=(hostile,))
    payload = dataclasses.replace(linux, health=health)
    the_cell = dataclasses.replace(
        the_cell, products=(dataclasses.replace(product, payloads={"linux": payload}),)
    )
    guests = Guests({})
    run(hv, tmp_path, the_cell, guests)
    checks = [c for c in guests.made[0].ran if "is-active" in c]
    assert checks and all(c.endswith("'acme; touch /tmp/pwned'") for c in checks), checks


def test_the_lab_waits_for_the_guest_to_see_the_payload_medium(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """Issue 8: a mount that does not wait for udev failed the first tries after the media
    change; every cell ended infra_error ("could not mount the payload")."""
    not_yet = CommandResult(32, "", "mount: can't find LABEL=COMPATLAB", 0.01)
    mounted = CommandResult(0, "", "", 0.01)
    guests = Guests({"commands": {"mount -o ro": [not_yet, not_yet, mounted]}})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert any(e.kind == "mount_retried" for e in result.events)


def test_a_medium_the_guest_never_sees_is_the_labs_failure_bounded(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compatlab.scenario import steps

    monkeypatch.setattr(steps, "MOUNT_WAIT", 1.0)
    never = CommandResult(32, "", "mount: can't find LABEL=COMPATLAB", 0.01)
    guests = Guests({"commands": {"mount -o ro": [never]}}, {"commands": {"mount -o ro": [never]}})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "could not mount the payload" in result.reason


# -- Windows: the bugcheck code from the event log when the hypervisor had none ------------------

WINDOWS_FIXTURES = ROOT / "tests" / "support" / "windows"


def windows_cell(tmp_path: Path) -> Cell:
    root = make_project(tmp_path / "project", builds=(), hardware=("uefi-2cpu",), products=())
    (root / "payloads" / "candidate").mkdir(parents=True, exist_ok=True)
    body = "axes: {build: [win11], hardware: [uefi-2cpu], products: [[]]}\n"
    path = matrix(root, body + SCENARIO)
    return load_matrix(path, catalog_root=root).cells[0]


def windows_crash(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evidence_file: str
) -> CellResult:
    """A Windows cell whose first boot with the candidate crashes without a code (pvpanic);
    the event log read after the next boot answers with ``evidence_file``."""
    monkeypatch.setenv("LAB_PASSWORD", "not-used-by-the-scripted-guest")
    baseline = (WINDOWS_FIXTURES / "clean_boot.json").read_text()
    crashed = (WINDOWS_FIXTURES / evidence_file).read_text()
    evidence = [CommandResult(0, baseline, "", 0.1), CommandResult(0, crashed, "", 0.1)]
    guests = Guests(
        {"boots": boots("ok", "ok", "crash"), "commands": {"Get-WinEvent": evidence}}, {}
    )
    return run(hv, tmp_path, windows_cell(tmp_path), guests)


def test_a_windows_crash_without_a_code_gets_it_from_the_event_log_after_the_next_boot(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TCG there are no Hyper-V crash registers: pvpanic says "crashed", not 0x50. Once
    the guest is back up, Kernel-Power 41 in its event log gives the code, marked as such.
    (A scripted guest answering with a recorded-format fixture: no Windows ran here.)"""
    result = windows_crash(hv, tmp_path, monkeypatch, "bugcheck_0x50.json")
    assert result.verdict is Verdict.CRASH, result.reason
    assert result.bugcheck is not None
    assert (result.bugcheck.code, result.bugcheck.source) == ("0x50", "eventlog")
    assert "0x50 PAGE_FAULT_IN_NONPAGED_AREA" in result.reason


def test_a_blue_screen_report_puts_the_faulting_module_in_the_cells_crash_title(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crash, and Windows Error Reporting analysed it: its fault bucket names the
    module, which the cell's crash signature carries. (Scripted guest, hand-written evidence.)"""
    result = windows_crash(hv, tmp_path, monkeypatch, "bugcheck_0x50_reported.json")
    assert result.verdict is Verdict.CRASH, result.reason
    assert result.bugcheck is not None
    assert result.bugcheck.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50) in acmesensor"


def test_a_golden_image_that_does_not_boot_is_the_labs_failure_not_the_configurations(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """A hang at the first boot (the image, or a starved host) is retried, then infra_error.
    The split scenario first recorded it as hang [baseline]: the watcher's outcome made the
    LabError raised for it look like a failure of the guest."""
    guests = Guests({"boots": boots("hang")}, {"boots": boots("hang")})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert result.attempts == 2
    assert "the golden image did not boot" in result.reason


def test_a_baseline_boot_that_never_completes_is_the_labs_failure(
    hv: Hypervisor, tmp_path: Path
) -> None:
    guests = Guests({"boots": boots("ok", "hang")}, {"boots": boots("ok", "hang")})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "the baseline boot never completed" in result.reason


def test_a_windows_installer_told_another_install_runs_is_run_again(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1618 (ERROR_INSTALL_ALREADY_RUNNING) is Windows busy servicing, not the update failing."""
    from compatlab.guest.windows_install import RetryPolicy
    from compatlab.scenario import steps

    monkeypatch.setattr(steps, "RETRY_1618", RetryPolicy(attempts=3, waits=(0.1, 0.1)))
    monkeypatch.setenv("LAB_PASSWORD", "not-used-by-the-scripted-guest")
    busy = CommandResult(1618, "", "another installation is in progress", 0.1)
    done = CommandResult(0, "", "", 0.1)
    clean = (WINDOWS_FIXTURES / "clean_boot.json").read_text()
    guests = Guests(
        {
            "commands": {
                "install.cmd": [busy, busy, done],
                "Get-WinEvent": [CommandResult(0, clean, "", 0.1)],
            }
        }
    )
    result = run(hv, tmp_path, windows_cell(tmp_path), guests)
    assert result.verdict is Verdict.PASS, result.reason
    assert sum(1 for e in result.events if e.kind == "install_busy") == 2


def test_a_boot_that_ran_out_of_time_on_a_starved_host_is_the_labs_failure(
    hv: Hypervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen on real guests here: with other guests on the two cores, a tinylinux boot took more
    than 120 s while its vCPU waited for a host CPU half of the time, and was judged a hang of
    the candidate. A boot the host would not let run is not evidence against the update."""
    from compatlab.lab import activity
    from compatlab.scenario import session

    samples = iter(range(1000))

    def starved_sample(domain: object) -> activity.Activity:
        n = next(samples)
        return activity.Activity(float(n), 0, 0, taken=float(n), vcpu_delay_seconds=0.6 * n)

    monkeypatch.setattr(session.activity, "sample", starved_sample)
    guests = Guests({"boots": boots("ok", "ok", "hang")}, {"boots": boots("ok", "ok", "hang")})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert (result.verdict, result.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "the host starved the guest" in result.reason
    assert result.attempts == 2


def test_a_reset_during_a_boot_is_counted_and_the_book_goes_on(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """Seen on a real guest: a watchdog reset a slow boot once, the next boot completed, and
    the split runner stopped the book there -- no checks, no rollback -- and called it a pass.
    A single reset is no failure (it counts towards a boot loop); the book must go on."""
    guests = Guests({"boots": boots("ok", "ok", "ok", "reset")}, {})
    result = run(hv, tmp_path, cell(tmp_path), guests)
    assert [p["phase"] for p in result.phases][-2:] == ["checks", "rollback"], result.phases
    assert result.verdict is Verdict.PASS, result.reason
    assert [b.outcome for b in result.boots].count("reset") == 1
