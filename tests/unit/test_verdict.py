"""The verdict logic on recorded-style timelines.

Timings are shaped like the lab's own measurements (LAB-NOTES.md): a tiny guest reaches its agent
~8 s after start under TCG, and a panicking guest on ``on_crash=restart`` cycles every ~7 s.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compatlab.model import SEVERITY, Attribution, Bugcheck, CommandRecord, Event, Phase, Verdict
from compatlab.verdict import (
    BootPolicy,
    BootWatcher,
    Finding,
    Observations,
    RunObservations,
    decide,
    judge,
)

PAGE_FAULT = Bugcheck(
    "0x50",
    "PAGE_FAULT_IN_NONPAGED_AREA",
    ("0xffff840500000000", "0x0", "0xfffff8025c6a1f2e", "0x2"),
)


def ev(t: float, kind: str, source: str = "libvirt", detail: str = "", **data: str) -> Event:
    return Event(t=t, source=source, kind=kind, detail=detail, data=data)


def ready(t: float) -> Event:
    return ev(t, "agent_ready", source="channel", detail="guest-ping answered")


def tick(t: float) -> Event:
    return ev(t, "tick", source="scenario")


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


# -- the watcher on whole timelines -------------------------------------------------------------


def test_clean_three_boot_pass() -> None:
    timeline = [
        ev(0.00, "started", detail="booted"),
        tick(5.0),
        ready(8.31),
        ev(20.40, "reboot"),  # the scenario asked for it: not a failure
        tick(25.0),
        ready(28.77),
        ev(41.02, "reboot"),
        ready(49.15),
        tick(50.0),
    ]
    watcher = BootWatcher(phase="candidate")
    found = watcher.feed_all(timeline)
    assert kinds(found) == ["boot_completed"] * 3
    assert [b.n for b in watcher.boots] == [1, 2, 3]
    assert [round(b.seconds, 2) for b in watcher.boots] == [8.31, 8.37, 8.13]
    assert {b.phase for b in watcher.boots} == {"candidate"}
    assert watcher.outcome is None and watcher.is_up
    assert judge(watcher.observations()) == (Verdict.PASS, "pass: 3 boots completed, no crash")


def crash_every_boot_preserve() -> list[Event]:
    """The demo's conflicting cell: bugcheck at every boot, the lab power-cycles each time."""
    bc = PAGE_FAULT.as_event_data()
    return [
        ev(0.00, "started"),
        ready(8.30),  # baseline boot fine, candidate installed, reboot asked for
        ev(21.00, "reboot"),
        ev(28.40, "crashed", detail="panicked"),
        ev(28.52, "bugcheck", source="domain-log", **bc),  # the log line lags the event
        ev(28.90, "power_cycle", source="scenario"),
        ev(28.95, "stopped", detail="destroyed"),
        ev(29.10, "started", detail="booted"),
        tick(30.0),
        ev(36.60, "crashed", detail="panicked"),
        ev(36.61, "guest_panicked", source="qmp", **bc),  # same crash, second witness
        ev(37.00, "power_cycle", source="scenario"),
        ev(37.05, "stopped", detail="destroyed"),
        ev(37.20, "started", detail="booted"),
        ev(44.70, "crashed", detail="panicked", **bc),
        ev(45.10, "power_cycle", source="scenario"),
        ev(45.20, "stopped", detail="destroyed"),
        ev(45.30, "started", detail="booted"),
        tick(200.0),
        ready(53.0),
    ]


def test_crash_at_every_boot_is_a_boot_loop_decided_at_the_third_crash() -> None:
    watcher = BootWatcher(phase="candidate")
    decided_at = None
    for event in crash_every_boot_preserve():
        for finding in watcher.feed(event):
            if finding.final:
                decided_at = event.t
    assert decided_at == 44.70  # the third crash, not a timeout later
    assert watcher.outcome is not None and watcher.outcome.kind == "boot_loop"
    assert "3 crashes" in watcher.outcome.detail
    assert watcher.crashes == 3  # the QMP duplicate was folded into the libvirt event
    assert watcher.bugcheck == PAGE_FAULT
    assert [b.outcome for b in watcher.boots] == ["completed", "crash", "crash", "crash"]

    decision = decide(run(watcher.observations()))
    assert decision.verdict is Verdict.BOOT_LOOP
    assert decision.bugcheck == PAGE_FAULT  # a boot loop WITH a crash recorded
    assert decision.attribution is Attribution.UNCONFIRMED
    assert "0x50" in decision.reason and "no rerun without the candidate" in decision.reason


def test_on_crash_restart_boot_loop() -> None:
    timeline = [ev(0.0, "started")]
    for i in range(3):
        base = 7.1 * i
        timeline += [ev(base + 6.9, "crashed", detail="panicked"), ev(base + 7.1, "reboot")]
    watcher = BootWatcher(BootPolicy(loop_threshold=3))
    found = watcher.feed_all(timeline)
    assert kinds(found) == ["crash", "crash", "crash", "boot_loop"]
    assert found[-1].t == pytest.approx(7.1 * 2 + 6.9)
    # the reboot after each crash is its consequence, not another failure
    assert [b.outcome for b in watcher.boots] == ["crash"] * 3


def test_one_crash_then_clean_boots_is_crash() -> None:
    timeline = [
        ev(0.0, "started"),
        ready(8.2),
        ev(20.0, "reboot"),
        ev(26.5, "crashed", detail="panicked", **PAGE_FAULT.as_event_data()),
        ev(27.0, "power_cycle", source="scenario"),
        ev(27.1, "started"),
        ready(35.4),
        ev(47.0, "reboot"),
        ready(55.1),
    ]
    watcher = BootWatcher()
    assert kinds(watcher.feed_all(timeline)) == [
        "boot_completed",
        "crash",
        "boot_completed",
        "boot_completed",
    ]
    assert watcher.outcome is None
    decision = decide(run(watcher.observations()))
    assert decision.verdict is Verdict.CRASH
    assert decision.bugcheck == PAGE_FAULT
    assert "1 crash, 3 boots completed" in decision.reason


def test_no_agent_within_timeout_is_a_hang_decided_at_the_tick_past_it() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=60.0))
    assert watcher.feed(ev(2.0, "started")) == []
    assert watcher.deadline() == 62.0
    for t in (10.0, 30.0, 50.0, 62.0):  # exactly at the deadline is still in time
        assert watcher.feed(tick(t)) == []
    [hang] = watcher.feed(tick(62.5))
    assert hang.kind == "hang" and hang.final and hang.t == 62.5
    assert hang.boot is not None and hang.boot.outcome == "hang"
    assert watcher.feed(ready(63.0)) == []  # too late: decided
    assert judge(watcher.observations())[0] is Verdict.HANG


def test_late_event_past_the_deadline_is_a_hang_even_without_a_tick() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=60.0))
    watcher.feed(ev(0.0, "started"))
    assert kinds(watcher.feed(ready(61.0))) == ["hang"]


def test_watchdog_resets_loop() -> None:
    timeline = [ev(0.0, "started")]
    for start in (0.0, 30.05, 60.1):
        timeline += [
            ev(start + 30.0, "watchdog", detail="reset"),
            ev(start + 30.05, "reboot"),
        ]
    watcher = BootWatcher()
    found = watcher.feed_all(timeline)
    assert kinds(found) == ["reset", "reset", "reset", "boot_loop"]
    assert found[-1].t == 90.1
    assert "3 watchdog resets" in found[-1].detail
    assert [b.outcome for b in watcher.boots] == ["watchdog"] * 3
    assert watcher.crashes == 0
    assert judge(watcher.observations())[0] is Verdict.BOOT_LOOP


def test_guest_resetting_itself_before_boot_completes_loops() -> None:
    # A triple fault: QEMU resets the guest, libvirt says 'reboot', no crash event.
    timeline = [ev(0.0, "started"), ev(3.2, "reboot"), ev(6.3, "reboot"), ev(9.5, "reboot")]
    found = BootWatcher().feed_all(timeline)
    assert kinds(found) == ["reset", "reset", "reset", "boot_loop"]
    assert found[-1].t == 9.5


def test_one_reboot_reported_twice_is_one_reset() -> None:
    # Recorded on the lab host (QEMU 7.2, SeaBIOS): a guest-agent reboot reaches libvirt as two
    # REBOOT events 36 ms apart. That is one boot, not a failed boot of 0.04 s.
    timeline = [
        ev(0.455, "started", detail="booted"),
        ready(8.989),
        ev(11.519, "reboot"),
        ev(11.555, "reboot"),
        ready(20.044),
        ev(23.731, "reboot"),
        ev(23.769, "reboot"),
        ready(37.779),
    ]
    watcher = BootWatcher()
    assert kinds(watcher.feed_all(timeline)) == ["boot_completed"] * 3
    assert [b.outcome for b in watcher.boots] == ["completed"] * 3
    assert watcher.boots[1].seconds == pytest.approx(20.044 - 11.519)


def test_warm_reset_after_each_crash_is_one_restart_and_the_loop_is_counted() -> None:
    # Recorded on the lab host: the lab resets + resumes a crashed guest (on_crash=preserve);
    # libvirt reports that one restart as three REBOOT events within 60 ms.
    timeline = [
        ev(0.431, "started", detail="booted"),
        ready(10.211),
        ev(34.310, "reboot"),
        ev(34.373, "reboot"),
        ev(45.121, "crashed", detail="panicked"),
        ev(45.144, "power_cycle", source="scenario"),
        ev(45.151, "reboot"),
        ev(45.201, "reboot"),
        ev(45.202, "reboot"),
        ev(58.597, "crashed", detail="panicked"),
        ev(58.618, "power_cycle", source="scenario"),
        ev(58.625, "reboot"),
        ev(58.681, "reboot"),
        ev(58.683, "reboot"),
        ev(69.469, "crashed", detail="panicked"),
    ]
    watcher = BootWatcher()
    found = watcher.feed_all(timeline)
    assert kinds(found) == ["boot_completed", "crash", "crash", "crash", "boot_loop"]
    assert found[-1].t == 69.469
    assert [b.outcome for b in watcher.boots] == ["completed", "crash", "crash", "crash"]
    assert watcher.boots[2].seconds == pytest.approx(58.597 - 45.151)


def test_resets_a_second_apart_still_count() -> None:
    timeline = [ev(0.0, "started"), ev(1.2, "reboot"), ev(2.4, "reboot"), ev(3.6, "reboot")]
    assert kinds(BootWatcher().feed_all(timeline)) == ["reset", "reset", "reset", "boot_loop"]


def test_crash_after_a_completed_boot_counts_towards_a_loop() -> None:
    timeline = [
        ev(0.0, "started"),
        ready(8.0),
        ev(40.0, "crashed", detail="panicked"),  # e.g. the sensor loads its content late
        ev(40.2, "reboot"),
        ev(47.0, "crashed", detail="panicked"),
        ev(47.2, "reboot"),
        ev(54.0, "crashed", detail="panicked"),
    ]
    watcher = BootWatcher()
    found = watcher.feed_all(timeline)
    assert kinds(found) == ["boot_completed", "crash", "crash", "crash", "boot_loop"]
    assert found[1].boot is None  # boot 1 stays 'completed'
    assert "after boot 1 had completed" in found[1].detail


def test_a_completed_boot_resets_the_loop_count() -> None:
    timeline = [
        ev(0.0, "started"),
        ev(7.0, "crashed"),
        ev(7.2, "reboot"),
        ev(14.0, "crashed"),
        ev(14.2, "reboot"),
        ready(22.0),  # came back: the two crashes do not start a loop
        ev(30.0, "reboot"),
        ev(37.0, "crashed"),
        ev(37.2, "reboot"),
        ready(45.0),
    ]
    watcher = BootWatcher()
    watcher.feed_all(timeline)
    assert watcher.outcome is None and watcher.crashes == 3
    assert judge(watcher.observations())[0] is Verdict.CRASH


def test_bugcheck_seen_before_its_crash_event_is_attached_to_the_crash() -> None:
    watcher = BootWatcher()
    watcher.feed(ev(0.0, "started"))
    watcher.feed(ev(6.99, "bugcheck", source="domain-log", **PAGE_FAULT.as_event_data()))
    [crash] = watcher.feed(ev(7.0, "crashed", detail="panicked"))
    assert crash.bugcheck == PAGE_FAULT and "0x50" in crash.detail


def test_bugcheck_from_the_labs_raw_qmp_payload() -> None:
    # What lab/events.py records for QMP GUEST_PANICKED: the payload flattened, JSON kept.
    info = {
        "type": "hyper-v",
        "arg1": 0x50,
        "arg2": 0xFFFF840500000000,
        "arg3": 0,
        "arg4": 0xFFFFF8025C6A1F2E,
        "arg5": 2,
    }
    payload = json.dumps({"action": "pause", "info": info})
    data = {"payload": payload, "action": "pause", "type": "hyper-v", "arg1": "0x50"}
    watcher = BootWatcher()
    watcher.feed(ev(0.0, "started"))
    [crash] = watcher.feed(ev(7.0, "guest_panicked", "qmp", "hyper-v", **data))
    assert crash.bugcheck == PAGE_FAULT
    assert watcher.feed(ev(7.01, "crashed", detail="panicked")) == []  # the same crash


def test_linux_pvpanic_payload_is_a_crash_without_a_code() -> None:
    payload = json.dumps({"action": "pause"})
    watcher = BootWatcher()
    watcher.feed(ev(0.0, "started"))
    [crash] = watcher.feed(ev(6.1, "guest_panicked", "qmp", payload=payload, action="pause"))
    assert crash.kind == "crash" and crash.bugcheck is None


def test_destroyed_on_crash_counts_as_a_crash_even_without_the_crashed_event() -> None:
    watcher = BootWatcher()
    watcher.feed(ev(0.0, "started"))
    [crash] = watcher.feed(ev(6.0, "stopped", detail="crashed"))
    assert crash.kind == "crash" and watcher.crashes == 1


@pytest.mark.parametrize("action", ["pause", "none", "debug"])
def test_watchdog_that_does_not_reset_leaves_the_boot_to_its_timeout(action: str) -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=60.0))
    watcher.feed(ev(0.0, "started"))
    assert watcher.feed(ev(30.0, "watchdog", detail=action)) == []
    assert watcher.feed(ev(30.0, "suspended", detail="watchdog")) == []
    assert kinds(watcher.feed(tick(61.0))) == ["hang"]


def test_stale_agent_answer_while_down_is_ignored() -> None:
    watcher = BootWatcher()
    watcher.feed_all([ev(0.0, "started"), ev(6.0, "crashed")])
    assert watcher.feed(ready(6.5)) == []
    assert watcher.deadline() is None  # down: the lab's move, no timeout runs
    assert watcher.feed(tick(10_000.0)) == []


def test_guest_powering_off_mid_boot_is_a_failed_boot() -> None:
    watcher = BootWatcher()
    [reset] = watcher.feed_all([ev(0.0, "started"), ev(4.0, "shutdown"), ev(4.1, "stopped")])
    assert reset.kind == "reset" and "power-off" in reset.detail


def test_clean_shutdown_and_start_is_not_a_failure() -> None:
    timeline = [ev(0, "started"), ready(8), ev(20, "shutdown"), ev(21, "stopped")]
    timeline += [ev(30, "power_cycle", source="scenario"), ev(30.5, "started"), ready(38.6)]
    found = BootWatcher().feed_all(timeline)
    assert kinds(found) == ["boot_completed", "boot_completed"]
    assert found[1].boot is not None and found[1].boot.seconds == pytest.approx(8.1)


def test_verdict_stays_pure() -> None:
    """verdict imports the lab's pure panic parser; that must never drag libvirt in."""
    code = "import sys, compatlab.verdict; print('libvirt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="boot_timeout"):
        BootPolicy(boot_timeout=0)
    with pytest.raises(ValueError, match="loop_threshold"):
        BootPolicy(loop_threshold=0)


# -- decide: precedence ---------------------------------------------------------------------------

INSTALL = CommandRecord("candidate", "setup.exe /quiet", 1603, "", "fatal error", 12.0, "failure")

ONE_OF_EACH: dict[Verdict, Observations] = {
    Verdict.CRASH: Observations(crashes=1, boots_completed=2, bugcheck=PAGE_FAULT),
    Verdict.BOOT_LOOP: Observations(crashes=3, boot_loop="3 failed boots in a row (3 crashes)"),
    Verdict.HANG: Observations(hang="boot 2 not complete 300.5 s after it started"),
    Verdict.INSTALL_FAILED: Observations(install_failure=INSTALL),
    Verdict.CHECK_FAILED: Observations(failed_checks=("service acme-av", "kernel-power-41")),
    Verdict.ROLLBACK_FAILED: Observations(rollback_failure="uninstaller exited 5"),
    Verdict.INFRA_ERROR: Observations(infra_error="libvirt: connection reset [host lab-3]"),
    Verdict.PASS: Observations(boots_completed=3),
}


def merged(*parts: Observations) -> Observations:
    """Every failure the parts show, at once."""
    out = Observations()
    for part in parts:
        changes = {
            f.name: getattr(part, f.name)
            for f in dataclasses.fields(part)
            if getattr(part, f.name) != getattr(Observations(), f.name)
        }
        out = dataclasses.replace(out, **changes)
    return out


def run(after: Observations, before: Observations | None = None) -> RunObservations:
    """A run whose baseline saw ``before`` (clean by default) and whose boots saw ``after``."""
    return RunObservations({Phase.BASELINE: before or PASSED, Phase.BOOTS: after})


def test_the_severity_table_is_every_verdict_once_with_boot_loop_worst() -> None:
    assert sorted(SEVERITY) == sorted(Verdict)
    assert SEVERITY[0] is Verdict.BOOT_LOOP and SEVERITY[1] is Verdict.CRASH
    assert SEVERITY[-1] is Verdict.PASS


@pytest.mark.parametrize(
    ("higher", "lower"),
    [(a, b) for a in Verdict for b in Verdict if a.severity < b.severity],
)
def test_severity_table_decides_the_verdict(higher: Verdict, lower: Verdict) -> None:
    obs = merged(ONE_OF_EACH[lower], ONE_OF_EACH[higher])
    assert judge(obs)[0] is higher
    assert decide(run(obs)).verdict is higher


def test_reasons_name_the_evidence() -> None:
    reasons = {v: judge(o)[1] for v, o in ONE_OF_EACH.items()}
    assert reasons[Verdict.INSTALL_FAILED] == (
        "install failed: `setup.exe /quiet` exited 1603 (failure)"
    )
    assert reasons[Verdict.CHECK_FAILED] == "checks failed: service acme-av, kernel-power-41"
    assert reasons[Verdict.CRASH].startswith("crash: bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA")


def test_reason_is_one_line_even_from_multiline_inputs() -> None:
    cmd = dataclasses.replace(INSTALL, command="install.sh \\\n  --force\n")
    decision = decide(run(Observations(install_failure=cmd, rollback_failure="a\nb")))
    assert "\n" not in decision.reason


# -- decide: attribution --------------------------------------------------------------------------

LOOP = ONE_OF_EACH[Verdict.BOOT_LOOP]
CRASH = ONE_OF_EACH[Verdict.CRASH]
PASSED = Observations(boots_completed=3)


def rerun(obs: Observations) -> RunObservations:
    return RunObservations({Phase.BASELINE: PASSED, Phase.BOOTS: obs}, with_candidate=False)


def test_pass_has_no_attribution() -> None:
    assert decide(run(PASSED)).attribution is None


def test_infra_error_is_attributed_to_infra() -> None:
    d = decide(run(dataclasses.replace(ONE_OF_EACH[Verdict.INFRA_ERROR], infra_error="a\nb")))
    assert (d.verdict, d.attribution) == (Verdict.INFRA_ERROR, Attribution.INFRA)
    assert "\n" not in d.reason


def test_rerun_passes_without_the_candidate() -> None:
    d = decide(run(LOOP), reruns=[rerun(PASSED)])
    assert d.attribution is Attribution.CANDIDATE
    assert "1 rerun without the candidate passed" in d.reason


def test_rerun_fails_the_same_way_without_the_candidate() -> None:
    d = decide(run(LOOP), reruns=[rerun(LOOP)])
    assert d.attribution is Attribution.BASELINE
    assert "rerun 1 without the candidate: boot_loop" in d.reason


def test_rerun_fails_less_badly_leaves_it_on_the_candidate() -> None:
    d = decide(run(LOOP), reruns=[rerun(ONE_OF_EACH[Verdict.CHECK_FAILED])])
    assert d.attribution is Attribution.CANDIDATE
    assert "only check_failed" in d.reason


def test_a_single_crash_without_the_candidate_does_not_explain_a_boot_loop_with_it() -> None:
    """The old comparison followed the enum order (crash before boot_loop) and called this
    baseline, against the module's own rule: the update made a crash into a loop."""
    d = decide(run(LOOP), reruns=[rerun(CRASH)])
    assert d.attribution is Attribution.CANDIDATE
    assert "only crash, with it boot_loop" in d.reason


def test_a_boot_loop_without_the_candidate_explains_a_crash_with_it() -> None:
    d = decide(run(CRASH), reruns=[rerun(LOOP)])
    assert d.attribution is Attribution.BASELINE


def test_the_reruns_own_phases_before_the_candidate_count() -> None:
    """A rerun that crashed at its baseline boot (its boots then passed) failed as badly."""
    crashed_early = RunObservations(
        {Phase.BASELINE: CRASH, Phase.BOOTS: PASSED}, with_candidate=False
    )
    d = decide(run(CRASH), reruns=[crashed_early])
    assert d.attribution is Attribution.BASELINE


def test_rerun_lost_to_the_lab_is_unconfirmed() -> None:
    d = decide(run(LOOP), reruns=["libvirtd went away"])
    assert (d.verdict, d.attribution) == (Verdict.BOOT_LOOP, Attribution.UNCONFIRMED)
    assert "no rerun without the candidate ran (libvirtd went away)" in d.reason


def test_no_rerun_at_all_is_unconfirmed() -> None:
    d = decide(run(ONE_OF_EACH[Verdict.CHECK_FAILED]))
    assert d.attribution is Attribution.UNCONFIRMED
    assert "no rerun without the candidate was made" in d.reason


def test_one_clean_rerun_among_lost_ones_confirms_and_says_so() -> None:
    d = decide(run(LOOP), reruns=["host gone", rerun(PASSED)])
    assert d.attribution is Attribution.CANDIDATE
    assert "1 rerun could not run" in d.reason


def test_an_intermittent_baseline_failure_is_found_by_a_later_rerun() -> None:
    d = decide(run(CRASH), reruns=[rerun(PASSED), rerun(CRASH)])
    assert d.attribution is Attribution.BASELINE
    assert "rerun 2" in d.reason


def test_failure_already_before_install_is_baseline() -> None:
    d = decide(run(PASSED, before=ONE_OF_EACH[Verdict.HANG]))
    assert (d.verdict, d.attribution) == (Verdict.HANG, Attribution.BASELINE)
    assert "before the candidate was installed (phase baseline)" in d.reason


def test_a_crash_before_the_candidate_is_never_the_candidates_even_if_worse_after() -> None:
    d = decide(run(LOOP, before=CRASH), reruns=[rerun(PASSED)])
    assert (d.verdict, d.attribution) == (Verdict.CRASH, Attribution.BASELINE)


def test_install_and_rollback_failures_are_the_candidates_own() -> None:
    for verdict in (Verdict.INSTALL_FAILED, Verdict.ROLLBACK_FAILED):
        d = decide(run(ONE_OF_EACH[verdict]))
        assert (d.verdict, d.attribution) == (verdict, Attribution.CANDIDATE)


def test_a_crash_during_rollback_is_rollback_failed_with_its_bugcheck() -> None:
    d = decide(
        RunObservations({Phase.BASELINE: PASSED, Phase.BOOTS: PASSED, Phase.ROLLBACK: CRASH})
    )
    assert (d.verdict, d.attribution) == (Verdict.ROLLBACK_FAILED, Attribution.CANDIDATE)
    assert d.bugcheck == PAGE_FAULT
    assert "rollback failed: crash: bugcheck 0x50" in d.reason


def test_a_crash_during_the_install_is_the_candidates_crash() -> None:
    d = decide(
        RunObservations({Phase.BASELINE: PASSED, Phase.INSTALL: LOOP}), reruns=[rerun(PASSED)]
    )
    assert (d.verdict, d.attribution) == (Verdict.BOOT_LOOP, Attribution.CANDIDATE)


def test_a_dead_channel_is_check_failed_and_says_so_never_hang() -> None:
    obs = Observations(unreachable="the guest finished booting but its channel did not answer")
    d = decide(run(obs), reruns=[rerun(PASSED)])
    assert (d.verdict, d.attribution) == (Verdict.CHECK_FAILED, Attribution.CANDIDATE)
    assert d.reason.startswith("unreachable: the guest finished booting")


# -- the watcher: restarts, dead channels, phases -------------------------------------------------


def test_declared_restarts_before_the_first_boot_completes_are_not_failures() -> None:
    """A cumulative update restarts the machine twice while servicing, then boots."""
    watcher = BootWatcher(BootPolicy(loop_threshold=2), phase="boots")
    watcher.feed_all([ev(0.0, "started"), ready(8.0)])
    watcher.allow_restarts(2)
    # 20.0 is the reboot the scenario asked for; 35.0 and 50.0 are the update's own.
    found = watcher.feed_all(
        [ev(20.0, "reboot"), ev(35.0, "reboot"), ev(50.0, "reboot"), ready(60.0)]
    )
    assert kinds(found) == ["restart", "restart", "boot_completed"]
    assert watcher.outcome is None
    assert [b.outcome for b in watcher.boots] == ["completed", "restart", "restart", "completed"]


def test_one_restart_more_than_declared_counts_as_a_failed_boot() -> None:
    watcher = BootWatcher(BootPolicy(loop_threshold=2))
    watcher.feed_all([ev(0.0, "started"), ready(8.0)])
    watcher.allow_restarts(1)
    # 20.0 is the reboot the scenario asked for (from a completed boot): not a restart.
    found = watcher.feed_all([ev(t, "reboot") for t in (20.0, 35.0, 50.0, 65.0)])
    assert kinds(found) == ["restart", "reset", "reset", "boot_loop"]


def test_the_allowance_ends_with_the_first_completed_boot() -> None:
    watcher = BootWatcher(BootPolicy(loop_threshold=1))
    watcher.feed_all([ev(0.0, "started"), ready(8.0)])
    watcher.allow_restarts(3)
    watcher.feed_all([ev(20.0, "reboot"), ready(30.0), ev(40.0, "reboot")])
    assert kinds(watcher.feed_all([ev(50.0, "reboot")])) == ["reset", "boot_loop"]


def test_a_crash_is_never_a_declared_restart() -> None:
    watcher = BootWatcher(BootPolicy(loop_threshold=1))
    watcher.feed_all([ev(0.0, "started"), ready(8.0), ev(20.0, "reboot")])
    watcher.allow_restarts(5)
    assert kinds(watcher.feed_all([ev(25.0, "crashed", detail="panicked")])) == [
        "crash",
        "boot_loop",
    ]


def test_a_boot_whose_console_said_it_finished_but_whose_channel_never_answered() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=60.0))
    watcher.feed_all([ev(0.0, "started"), ev(21.5, "boot_marker", source="serial", detail="up")])
    [final] = watcher.feed(tick(60.5))
    assert final.kind == "unreachable" and final.final
    assert "finished booting ('up' on the serial console 21.5 s in)" in final.detail
    assert watcher.observations().unreachable == final.detail
    assert watcher.observations().hang is None


def test_a_marker_from_an_earlier_boot_does_not_make_a_hang_unreachable() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=60.0))
    watcher.feed_all([ev(0.0, "started"), ev(9.0, "boot_marker", source="serial"), ready(10.0)])
    watcher.feed_all([ev(20.0, "reboot")])
    [final] = watcher.feed(tick(81.0))
    assert final.kind == "hang"


def test_observations_are_kept_per_phase() -> None:
    watcher = BootWatcher(phase="baseline")
    watcher.feed_all([ev(0.0, "started"), ready(8.0)])
    watcher.phase = "install"
    crash = ev(20.0, "crashed", detail="panicked")
    watcher.feed_all([crash, ev(20.1, "bugcheck", source="serial", **PAGE_FAULT.as_event_data())])
    watcher.feed_all([ev(20.2, "reboot"), ready(30.0)])
    baseline = watcher.observations(["baseline"])
    install = watcher.observations(["install"])
    assert (baseline.crashes, baseline.boots_completed, baseline.bugcheck) == (0, 1, None)
    assert (install.crashes, install.bugcheck) == (1, PAGE_FAULT)
    assert [f.phase for f in watcher.findings] == ["baseline", "install", "install"]


# -- properties ------------------------------------------------------------------------------------

observations = st.builds(
    Observations,
    boots_completed=st.integers(0, 5),
    crashes=st.integers(0, 4),
    bugcheck=st.none() | st.just(PAGE_FAULT),
    boot_loop=st.none() | st.just("3 failed boots in a row"),
    hang=st.none() | st.just("boot 1 not complete"),
    install_failure=st.none() | st.just(INSTALL),
    failed_checks=st.lists(st.sampled_from(["svc", "eventlog"]), max_size=2).map(tuple),
    rollback_failure=st.none() | st.just("uninstall failed"),
    infra_error=st.none() | st.just("host gone"),
)


@given(observations)
def test_verdict_is_the_highest_precedence_failure_present(obs: Observations) -> None:
    present = {Verdict.PASS}
    if obs.boot_loop is not None:
        present.add(Verdict.BOOT_LOOP)
    elif obs.crashes:
        present.add(Verdict.CRASH)
    if obs.hang is not None:
        present.add(Verdict.HANG)
    if obs.install_failure is not None:
        present.add(Verdict.INSTALL_FAILED)
    if obs.failed_checks:
        present.add(Verdict.CHECK_FAILED)
    if obs.rollback_failure is not None:
        present.add(Verdict.ROLLBACK_FAILED)
    if obs.infra_error is not None:
        present.add(Verdict.INFRA_ERROR)
    decision = decide(run(obs))
    assert decision.verdict is min(present, key=lambda v: v.severity)
    assert (decision.attribution is None) == (decision.verdict is Verdict.PASS)
    assert "\n" not in decision.reason


KINDS = ["started", "stopped", "shutdown", "crashed", "guest_panicked", "reboot", "watchdog"]
KINDS += ["agent_ready", "power_cycle", "tick"]


def _timeline(steps: list[tuple[float, str]]) -> list[Event]:
    """Events from (gap, kind) steps: times only move forward, as the event thread stamps them."""
    t, out = 0.0, []
    for gap, kind in steps:
        t += gap
        out.append(ev(t, kind))
    return out


timelines = st.lists(st.tuples(st.floats(0.0, 50.0), st.sampled_from(KINDS)), max_size=40).map(
    _timeline
)


@given(timelines, st.lists(st.floats(0.0, 10_000.0), max_size=10))
def test_ticks_never_change_a_decided_outcome(events: list[Event], extra: list[float]) -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=120.0))
    watcher.feed_all(events)
    before = (watcher.outcome, watcher.boots, watcher.crashes)
    last = events[-1].t if events else 0.0
    late = [tick(last + x) for x in sorted(extra)]
    if watcher.outcome is not None:
        assert watcher.feed_all(late) == []
        assert (watcher.outcome, watcher.boots, watcher.crashes) == before
    else:
        # Undecided: ticks may decide a hang, but nothing else.
        assert set(kinds(watcher.feed_all(late))) <= {"hang"}


@given(st.lists(st.booleans(), min_size=1, max_size=12), st.integers(1, 4), st.booleans())
def test_boot_loop_decided_exactly_at_the_nth_crash_in_a_row(
    crashes: list[bool], threshold: int, restart: bool
) -> None:
    """Boot i crashes when crashes[i]; the loop is decided at the threshold-th crash in a row."""
    events, t, crash_times = [ev(0.0, "started")], 0.0, []
    run, expected_at = 0, None
    for crashed in crashes:
        t += 7.0
        if crashed:
            events.append(ev(t, "crashed", detail="panicked"))
            crash_times.append(t)
            run += 1
            if run == threshold and expected_at is None:
                expected_at = t
            if restart:
                events.append(ev(t + 0.2, "reboot"))
            else:
                events += [ev(t + 0.3, "power_cycle"), ev(t + 0.4, "stopped")]
                events.append(ev(t + 0.5, "started"))
        else:
            run = 0
            events += [ready(t), ev(t + 1.0, "reboot")]
        t += 1.0
    watcher = BootWatcher(BootPolicy(loop_threshold=threshold))
    watcher.feed_all(events)
    if expected_at is None:
        assert watcher.outcome is None
    else:
        assert watcher.outcome is not None and watcher.outcome.kind == "boot_loop"
        assert watcher.outcome.t == expected_at


# -- a start from a saved memory state (a cached layer's, issue 12) -----------------------------


def test_a_restore_is_watched_like_a_boot_and_said_to_be_one() -> None:
    watcher = BootWatcher(phase="provision")
    found = watcher.feed_all(
        [
            ev(0.70, "started", detail="restored"),
            ev(0.71, "resumed", detail="from_snapshot"),
            ready(1.00),
            ev(20.0, "reboot"),
            ready(38.0),
        ]
    )
    assert kinds(found) == ["boot_completed", "boot_completed"]
    first, second = watcher.boots
    assert first.kind == "restore" and round(first.seconds, 2) == 0.30
    assert first.as_json()["kind"] == "restore"
    assert second.kind == "boot" and "kind" not in second.as_json()


def test_the_layers_baseline_boot_is_carried_as_boot_0_and_compared_with() -> None:
    watcher = BootWatcher(phase="provision")
    watcher.feed_all([ev(0.70, "started", detail="restored"), ready(1.00)])
    watcher.carry_layer_boot(23.9, "baseline")
    watcher.phase = "boots"
    watcher.feed_all([ev(5.0, "reboot"), ready(25.0)])
    assert [(b.n, b.kind, b.phase) for b in watcher.boots] == [
        (0, "layer", "baseline"),
        (1, "restore", "provision"),
        (2, "boot", "boots"),
    ]
    assert watcher.boots[0].seconds == 23.9 and watcher.boots[0].outcome == "completed"
    # This VM booted once and was restored once: the builder's boot is no boot of its own.
    assert watcher.observations().boots_completed == 2
    assert watcher.observations(["baseline"]).boots_completed == 0


def test_a_guest_that_crashes_as_it_comes_back_from_its_memory_state_has_crashed() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=90, loop_threshold=3), phase="provision")
    found = watcher.feed_all(
        [ev(0.70, "started", detail="restored"), ev(1.50, "crashed", detail="panicked")]
    )
    assert kinds(found) == ["crash"]
    assert watcher.boots[0].outcome == "crash" and watcher.boots[0].kind == "restore"


def test_a_restored_guest_whose_channel_never_answers_hangs_at_the_boot_timeout() -> None:
    watcher = BootWatcher(BootPolicy(boot_timeout=90), phase="provision")
    found = watcher.feed_all([ev(0.70, "started", detail="restored"), tick(91.0)])
    assert kinds(found) == ["hang"] and watcher.boots[0].kind == "restore"
