"""The checks a cell makes from inside a booted guest, each through the watched session.

Health (the products' services and commands), crash evidence the hypervisor did not report,
boot time against the baseline, and the user's own checks. Each returns the failure lines it
found ([] when all passed) and records every check it made on the VM's record.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from compatlab.bugcheck import parse_linux_panic
from compatlab.checks.windows import WindowsEvidence, crash_evidence, findings
from compatlab.checks.windows import bugcheck as stop_code
from compatlab.model import Phase

if TYPE_CHECKING:
    from compatlab.scenario.session import Session

__all__ = [
    "COMMAND_TIMEOUT",
    "boot_time",
    "bugcheck_after_crash",
    "custom",
    "health",
    "inside_crash_evidence",
    "windows_baseline",
]

COMMAND_TIMEOUT = 120.0  # routine commands: mount, health checks


def health(vm: Session, when: str) -> list[str]:
    """Every product's declared services running and health command passing."""
    from compatlab.scenario.steps import run_command, shell_word

    failed: list[str] = []
    template = vm.cell.image.conventions.service_check
    for product in vm.cell.products:
        payload = product.payload_for(vm.cell.os_family)
        assert payload is not None  # the matrix loader checked this
        for service in payload.health.services:
            command = template.format(service=shell_word(vm, service))
            ok = run_command(vm, command, COMMAND_TIMEOUT).exit_code == 0
            name = f"{product.name}: service {service} running"
            vm.record.checks.append({"name": name, "when": when, "passed": ok})
            if not ok:
                failed.append(f"{product.name}: service {service} not running ({when})")
        if payload.health.command:
            record = run_command(vm, payload.health.command, COMMAND_TIMEOUT)
            ok = record.exit_code == 0
            name = f"{product.name}: health command"
            vm.record.checks.append({"name": name, "when": when, "passed": ok})
            if not ok:
                failed.append(f"{product.name}: health command exited {record.exit_code}")
    return failed


def _event_log(vm: Session, baseline: WindowsEvidence | None) -> WindowsEvidence:
    """A Windows guest's crash evidence since the baseline boot (all of it without one)."""
    since = baseline.now if baseline else None
    return vm.call(
        "reading the event log",
        lambda: crash_evidence(vm.channel, since=since, domain=vm.machine.name),
    )


def windows_baseline(vm: Session) -> WindowsEvidence | None:
    """What a clean boot of a Windows image already logs (e.g. 7026 for 'dam' at every boot),
    so that only what comes after counts as crash evidence."""
    if vm.cell.os_family != "windows":
        return None
    return _event_log(vm, None)


def inside_crash_evidence(vm: Session, baseline: WindowsEvidence | None) -> list[str]:
    """Crash evidence from inside the guest that the hypervisor did not report.

    Linux: a panic in the serial log (a kernel without the pvpanic driver panics silently).
    Windows: event log 41/6008/1001/7000/7026 and dumps since the baseline boot. Skipped when the
    watcher saw crashes: the lab's own power cycles leave such traces too.
    """
    if vm.watcher.crashes:
        return []
    if vm.cell.os_family == "windows":
        seen = _event_log(vm, baseline)
        lines = findings(seen, baseline=baseline)
        vm.record.checks.append(
            {
                "name": "no crash evidence in the Windows event log",
                "passed": not lines,
                "detail": "; ".join(lines),
            }
        )
        return [f"crash evidence: {line}" for line in lines]
    panic = parse_linux_panic(vm.evidence.serial_text(0))
    vm.record.checks.append({"name": "no kernel panic in the serial log", "passed": panic is None})
    return [] if panic is None else [f"the serial log shows a panic: {panic.name}"]


def bugcheck_after_crash(vm: Session, baseline: WindowsEvidence | None) -> None:
    """A Windows guest that crashed without telling the hypervisor its code (pvpanic: the Hyper-V
    crash registers are KVM-only) wrote it to its event log: read it once the guest is back up,
    and record it on the timeline, where the watcher takes it for the phase that crashed."""
    if vm.cell.os_family != "windows" or not vm.watcher.crashes or vm.watcher.bugcheck:
        return
    if not vm.watcher.is_up:
        return  # it never came back (a boot loop): nothing to read it with
    seen = stop_code(_event_log(vm, baseline))
    if seen is not None:
        # Titled with the faulting module where a WER BlueScreen report names it.
        found = replace(seen, source="eventlog")
        vm.note("eventlog", "bugcheck", f"{found.code} {found.name}", **found.as_event_data())
        vm.drain()


def boot_time(vm: Session, baseline: float) -> list[str]:
    """The slowest boot with the candidate against the baseline boot, by the scenario's ratio."""
    limit = vm.cell.scenario.boot_regression
    after = [
        b.seconds
        for b in vm.watcher.boots
        if b.outcome == "completed" and b.phase == Phase.BOOTS.value
    ]
    if limit is None or not after or baseline <= 0:
        return []
    worst = max(after)
    ok = worst <= baseline * limit
    vm.record.checks.append(
        {
            "name": f"boot time within {limit:g}x the baseline",
            "passed": ok,
            "detail": f"{worst:.1f} s vs {baseline:.1f} s",
        }
    )
    return [] if ok else [f"boot time regressed: {worst:.1f} s vs baseline {baseline:.1f} s"]


def custom(vm: Session) -> list[str]:
    """The user's checks (tests marked ``matrix``), run in the guest while it is watched."""
    failed = []
    for check in vm.call("custom checks", lambda: vm.lab.checks(vm.channel, vm.cell)):
        vm.record.checks.append(
            {"name": check.name, "passed": check.passed, "detail": check.detail}
        )
        if not check.passed:
            failed.append(f"{check.name}: {check.detail}" if check.detail else check.name)
    return failed
