"""The life of one cell, read top to bottom like a runbook.

::

    provision      overlay on the golden image, domain defined and started, first boot
    products       each coexisting product installed from its payload ISO, then its health
    baseline boot  reboot: the cell must boot clean before the update (else not its fault)
    candidate      install, exit code read by its declared meanings
    boots          reboot ``boots`` times; each must complete within ``boot_timeout`` and stay
                   up ``bake`` seconds with no crash
    checks         products still healthy, no crash evidence, boot time not regressed
    rollback       uninstall, reboot, boots clean
    rerun          (``baseline: on_failure``) a failing cell again on a fresh VM, without the
                   candidate, to tell ``candidate`` from ``baseline``

Crashes, boot loops and hangs are *observations*: the hypervisor's events are fed to a
:class:`~compatlab.verdict.BootWatcher`, and a crashed guest is power-cycled by the lab the way a
bugchecked Windows machine restarts itself. Exceptions are for the lab failing
(:class:`~compatlab.errors.LabError`, :class:`~compatlab.errors.GuestError`): before the candidate
is installed, or after it with no failure seen, they are retried on a fresh VM and finally
reported as ``infra_error``. A crash seen after the candidate was installed is never retried.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import tenacity

from compatlab.catalog import Commands, ExitCodes
from compatlab.checks.windows import WindowsEvidence, crash_evidence, findings
from compatlab.errors import GuestError, HypervisorError, ImageError, LabError
from compatlab.guest.agent import AgentChannel
from compatlab.guest.channel import Channel
from compatlab.guest.media import cached_iso
from compatlab.guest.readiness import ReadinessProbe
from compatlab.lab.connection import Hypervisor
from compatlab.lab.domain import DomainSpec, domain_name, render_domain_xml
from compatlab.lab.evidence import CellEvidence
from compatlab.lab.machine import Machine
from compatlab.bugcheck import parse_linux_panic
from compatlab.lab.reaper import CellMetadata, Controller
from compatlab.lab.storage import CellStorage, cell_slug
from compatlab.matrix import Cell
from compatlab.model import Boot, CellResult, CommandRecord, Event, Verdict
from compatlab.verdict import BootPolicy, BootWatcher, Finding, Observations, decide

__all__ = ["CheckOutcome", "LabContext", "infra_error_result", "run_cell"]

PAYLOAD_LABEL = "COMPATLAB"
COMMAND_TIMEOUT = 120.0  # routine commands: mount, health checks
INSTALL_TIMEOUT = 900.0  # an installer that runs longer has hung: install_failed
EVENT_POLL = 0.25  # how long the runner sleeps on the event queue before a tick


@dataclass(frozen=True)
class LabContext:
    """What the run hands every cell: one hypervisor and where things go."""

    hypervisor: Hypervisor
    accel: str  # "kvm" or "qemu" (TCG)
    run_id: str
    storage_root: Path
    template_dir: Path
    report_dir: Path  # reports/<run-id>/ -- evidence is copied under cells/<slug>/
    iso_cache: Path
    controller: Controller
    attempts: int = 2  # tries for a cell whose lab failed
    retry_wait: float = 2.0  # seconds between them: a restarting libvirtd needs a moment
    progress: Callable[[str, str], None] = field(default=lambda cell, phase: None)
    # The user's own checks (pytest tests marked ``matrix``), run after the boots.
    checks: Callable[[Channel, Cell], list[CheckOutcome]] = field(default=lambda guest, cell: [])


@dataclass(frozen=True)
class CheckOutcome:
    """One custom check's result in one cell."""

    name: str
    passed: bool
    detail: str = ""


class _LabFailed(Exception):
    """The lab failed with no failure of the guest seen: the cell may be tried again.

    Carries what the attempt saw, so an ``infra_error`` cell still shows its evidence.
    """

    def __init__(self, reason: str, seen: _Outcome | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seen = seen


@dataclass
class _Outcome:
    """What one provisioned VM saw."""

    pre_install: Observations = field(default_factory=Observations)
    candidate: Observations = field(default_factory=Observations)
    boots: list[Boot] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    checks: list[dict[str, object]] = field(default_factory=list)


def run_cell(cell: Cell, lab: LabContext) -> CellResult:
    """Run one cell to a verdict. Never raises for the lab failing: that is ``infra_error``."""
    started = time.monotonic()
    # The matrix is part of the folder: two matrices of one run may hold the same cell id.
    evidence = lab.report_dir / "cells" / cell_slug(f"{Path(cell.matrix).stem}/{cell.id}")
    attempts = 0

    def attempt() -> _Outcome:
        nonlocal attempts
        attempts += 1
        return _VM(cell, lab, evidence, with_candidate=True).run()

    def tell(state: tenacity.RetryCallState) -> None:
        failed = state.outcome.exception() if state.outcome else None
        lab.progress(cell.id, f"lab failed ({failed}); trying again on a fresh VM")

    outcome: _Outcome | None = None
    seen: _Outcome | None = None
    reason = ""
    try:
        # Only _LabFailed is retried: the lab failed and no failure of the guest was seen.
        outcome = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(lab.attempts),
            retry=tenacity.retry_if_exception_type(_LabFailed),
            wait=tenacity.wait_fixed(lab.retry_wait),
            before_sleep=tell,
            reraise=True,
        )(attempt)
    except _LabFailed as failed:
        reason = failed.reason
        seen = failed.seen
    if outcome is None:
        result = infra_error_result(
            cell, reason, seconds=time.monotonic() - started, attempts=attempts
        )
        if seen is not None:
            result.events, result.commands = seen.events, seen.commands
            result.artifacts, result.checks = seen.artifacts, seen.checks
        return result

    rerun = None
    first = decide(outcome.candidate, pre_install=outcome.pre_install)
    wants_rerun = cell.scenario.baseline == "always" or (
        cell.scenario.baseline == "on_failure"
        and first.verdict.is_failure
        and first.verdict not in (Verdict.INFRA_ERROR, Verdict.INSTALL_FAILED)
        and first.attribution is not None
        and first.attribution.value == "candidate"
    )
    if wants_rerun:
        lab.progress(cell.id, "baseline rerun without the candidate")
        try:
            rerun_outcome = _VM(cell, lab, evidence / "rerun", with_candidate=False).run()
            rerun = rerun_outcome.candidate
            outcome.events.extend(
                replace(e, source=f"rerun/{e.source}") for e in rerun_outcome.events
            )
            outcome.artifacts.update({f"rerun_{k}": v for k, v in rerun_outcome.artifacts.items()})
        except _LabFailed as failed:
            rerun = Observations(infra_error=failed.reason)
    decision = decide(outcome.candidate, pre_install=outcome.pre_install, rerun=rerun)
    return CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=decision.verdict,
        attribution=decision.attribution,
        bugcheck=decision.bugcheck,
        boots=outcome.boots,
        events=outcome.events,
        artifacts=outcome.artifacts,
        seconds=time.monotonic() - started,
        reason=decision.reason,
        commands=outcome.commands,
        checks=outcome.checks,
        matrix=str(cell.matrix),
        attempts=attempts,
    )


def infra_error_result(
    cell: Cell, reason: str, *, seconds: float = 0.0, attempts: int = 0
) -> CellResult:
    """The result of a cell the lab could not run: ``infra_error``, attributed to ``infra``."""
    decision = decide(Observations(infra_error=reason))
    return CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=decision.verdict,
        attribution=decision.attribution,
        reason=decision.reason,
        seconds=seconds,
        matrix=str(cell.matrix),
        attempts=attempts,
    )


class _VM:
    """One provisioned VM of a cell, from overlay to undefine, and everything it saw."""

    def __init__(self, cell: Cell, lab: LabContext, evidence: Path, *, with_candidate: bool):
        self.cell = cell
        self.lab = lab
        self.evidence_folder = evidence
        self.with_candidate = with_candidate
        self.label = "candidate" if with_candidate else "rerun"
        self.epoch = time.monotonic()
        self.out = _Outcome()
        self.candidate_installed = False
        self.storage = CellStorage(
            lab.run_id,
            cell.id + ("" if with_candidate else "#rerun"),
            root=lab.storage_root,
            host=lab.hypervisor.host,
        )
        self.policy = BootPolicy(
            boot_timeout=cell.scenario.boot_timeout, loop_threshold=cell.scenario.boot_loop
        )
        self.watcher = BootWatcher(self.policy, phase="provision")
        self._rollback_boots: tuple[Boot, ...] = ()
        self._shutdown_hang: str | None = None
        self._windows_baseline: WindowsEvidence | None = None
        self._serial_offset = 0

    # -- the runbook ------------------------------------------------------------------------

    def run(self) -> _Outcome:
        try:
            self.storage.create()
            self.storage.create_overlay(self.cell.image.disk)
            self._seed_nvram()
            with Machine(
                self.lab.hypervisor, self._xml(), self.storage.folder, epoch=self.epoch
            ) as machine:
                self.machine = machine
                self.evidence = CellEvidence(
                    self.storage, machine, self.evidence_folder, self.lab.report_dir
                )
                self.channel = self._channel()
                self.probe = ReadinessProbe(self.channel, machine)
                try:
                    self._runbook()
                finally:
                    self.probe.stop()
                    self.out.events = machine.watch.timeline.snapshot()
                    self.out.boots = [*self.watcher.boots, *self._rollback_boots]
                    self.out.artifacts.update(self.evidence.keep())
        except (LabError, GuestError) as exc:
            if self.candidate_installed and self._guest_failed():
                # The update already failed; the lab's later trouble does not change that.
                self.out.candidate = replace(self._observed(), infra_error=str(exc))
                return self.out
            raise _LabFailed(str(exc), self.out) from exc
        finally:
            self.storage.remove()
        return self.out

    def _runbook(self) -> None:
        scenario = self.cell.scenario
        self._phase("provisioning")
        self.machine.start()
        self.probe.arm()
        if not self._boot():
            raise LabError(
                f"the golden image did not boot: {self._failure_text()}",
                host=self.lab.hypervisor.host,
                domain=self.machine.name,
            )

        self._phase("installing products")
        pre = Observations()
        for product in self.cell.products:
            payload = product.payload_for(self.cell.os_family)
            assert payload is not None  # the matrix loader checked this
            record = self._install(
                "product",
                payload.folder,
                payload.commands.install,
                payload.commands.exit_codes,
                product.name,
            )
            if record.meaning == "failure":
                self.out.pre_install = replace(pre, install_failure=record)
                return
        self._phase("baseline boot")
        self.watcher.phase = "baseline"
        self._reboot()
        if not self._boot():
            if self.watcher.outcome and self.watcher.outcome.kind == "hang":
                raise LabError(
                    f"the baseline boot never completed: {self._failure_text()}",
                    host=self.lab.hypervisor.host,
                    domain=self.machine.name,
                )
            self.out.pre_install = self._observed()
            return
        baseline_seconds = self.watcher.boots[-1].seconds
        failed = self._health_checks("baseline")
        if self.cell.os_family == "windows":
            # What a clean boot of this image already logs (e.g. 7026 for 'dam' on every
            # boot), so that only what came after counts as crash evidence.
            self._windows_baseline = crash_evidence(
                self.channel, since=None, domain=self.machine.name
            )
        if failed:
            self.out.pre_install = replace(self._observed(), failed_checks=tuple(failed))
            return
        pre_boots = len(self.watcher.boots)

        if self.with_candidate:
            self._phase("installing candidate")
            commands = self.cell.candidate.commands[self.cell.os_family]
            self.candidate_installed = True
            record = self._install(
                "candidate",
                self.cell.candidate.payload,
                commands.install,
                commands.exit_codes,
                self.cell.candidate.name,
            )
            if record.meaning == "failure":
                self.out.candidate = Observations(install_failure=record)
                return
        self.watcher.phase = "candidate" if self.with_candidate else "rerun"
        for n in range(1, scenario.boots + 1):
            self._phase(f"boot {n} of {scenario.boots}")
            self._reboot()
            if not self._boot():
                break
            self._phase(f"baking {scenario.bake:g} s (boot {n} of {scenario.boots})")
            if not self._bake(scenario.bake):
                break
        observed = self._observed()
        if self.watcher.outcome is not None or not self.watcher.is_up or self._shutdown_hang:
            self.out.candidate = observed
            return

        self._phase("checks")
        failed = self._health_checks("after update")
        failed += self._crash_evidence()
        failed += self._boot_time(baseline_seconds, pre_boots)
        failed += self._custom_checks()
        self.out.candidate = replace(observed, failed_checks=tuple(failed))
        if failed or not self.with_candidate or not scenario.rollback:
            return
        self._phase("rollback")
        self.out.candidate = replace(self.out.candidate, rollback_failure=self._rollback(commands))

    # -- boots ------------------------------------------------------------------------------

    def _boot(self) -> bool:
        """Watch until the boot in progress completes (True) or ends the watching (False)."""
        if self._shutdown_hang:
            return False
        self._watch(lambda: self.watcher.is_up)
        return self.watcher.is_up

    def _bake(self, seconds: float) -> bool:
        """Stay up ``seconds`` with no crash; a crash restarts the guest and is counted."""
        end = time.monotonic() + seconds
        self._watch(lambda: time.monotonic() >= end and self.watcher.is_up)
        return self.watcher.outcome is None and self.watcher.is_up

    def _watch(self, done: Callable[[], bool]) -> None:
        """Feed hypervisor events (and ticks) to the watcher until ``done`` or a final finding.

        Waits on the event queue, so a crash is acted on as soon as libvirt reports it.
        """
        watch = self.machine.watch
        while not done() and self.watcher.outcome is None:
            event = watch.wait(None, timeout=EVENT_POLL)
            if event is None:
                event = Event(t=time.monotonic() - self.epoch, source="scenario", kind="tick")
            elif event.kind == "agent" and event.detail == "connected":
                self.probe.poke()  # the agent just opened its port: ask now, not at the next poll
            elif event.kind == "connection_lost":
                # Events may have been lost with the connection: what the watcher would decide
                # from here on (a hang, most likely) would be the lab's doing, not the guest's.
                raise HypervisorError(
                    f"lost the connection to libvirtd while watching the guest ({event.detail})",
                    host=self.lab.hypervisor.host,
                    domain=self.machine.name,
                )
            for finding in self.watcher.feed(event):
                self._on_finding(finding)

    def _on_finding(self, finding: Finding) -> None:
        if finding.kind == "boot_completed":
            self._serial_offset = self.evidence.serial_size()
            return
        if finding.kind == "crash":
            self.probe.disarm()
            self.evidence.screenshot(f"crash-{self.watcher.crashes}")
            bugcheck = self.evidence.bugcheck(self.cell.os_family, self._serial_offset)
            if bugcheck is not None:
                self._record(
                    "serial" if bugcheck.code == "panic" else "domain-log",
                    "bugcheck",
                    f"{bugcheck.code} {bugcheck.name}",
                    **bugcheck.as_event_data(),
                )
            if self.watcher.outcome is None:
                # What a bugchecked machine does by itself: restart. Here the lab does it, after
                # keeping the evidence that on_crash=preserve left on the screen.
                self._record("scenario", "power_cycle", "warm reset after the crash")
                self.machine.restart_after_crash()
                self.probe.arm()
        elif finding.kind == "reset":
            self.probe.arm()
        if finding.final:
            # The moment the runner knew: the panic-to-verdict benchmark measures up to here.
            self._record("scenario", "decided", f"{finding.kind}: {finding.detail}")
            self.probe.disarm()
            self.evidence.screenshot(finding.kind)

    def _reboot(self) -> None:
        """Ask the guest to reboot and wait until the hypervisor sees it go down.

        Until the reset is seen the watcher still counts the old boot as up, so waiting for the
        next boot right away would count the old one. A guest that never goes down has hung in
        its shutdown (a driver can do that): recorded as a hang, and the boot is over.
        """
        self.probe.disarm()
        self._serial_offset = self.evidence.serial_size()
        self._record("scenario", "reboot_requested", self.channel.name)
        self.channel.reboot()
        end = time.monotonic() + self.cell.scenario.boot_timeout
        self._watch(lambda: not self.watcher.is_up or time.monotonic() >= end)
        if self.watcher.is_up:
            self._shutdown_hang = (
                f"no reset within {self.cell.scenario.boot_timeout:g} s of a reboot request"
            )
            self.evidence.screenshot("shutdown-hang")
            return
        self.probe.arm()

    def _observed(self) -> Observations:
        observed = self.watcher.observations()
        if self._shutdown_hang and observed.hang is None:
            observed = replace(observed, hang=self._shutdown_hang)
        return observed

    def _guest_failed(self) -> bool:
        return (
            self.watcher.crashes > 0
            or self.watcher.outcome is not None
            or self._shutdown_hang is not None
        )

    def _failure_text(self) -> str:
        outcome = self.watcher.outcome
        return outcome.detail if outcome else "no boot completed"

    # -- commands ---------------------------------------------------------------------------

    def _install(
        self, phase: str, folder: Path, command: str, codes: ExitCodes, name: str
    ) -> CommandRecord:
        conventions = self.cell.image.conventions
        iso = cached_iso(folder, self.lab.iso_cache, label=PAYLOAD_LABEL)
        self.machine.insert_cdrom(iso)
        path = conventions.payload_path
        if conventions.mount_payload:
            self._must(
                conventions.mount_payload.format(label=PAYLOAD_LABEL, path=path),
                "mount the payload",
            )
        # str.replace, not format: installer command lines hold braces of their own.
        record = self._run(phase, command.replace("{payload}", path), INSTALL_TIMEOUT, codes)
        self._record(
            "scenario", "install", f"{phase} {name}: exit {record.exit_code} ({record.meaning})"
        )
        if conventions.unmount_payload:
            self._must(conventions.unmount_payload.format(path=path), "unmount the payload")
        self.machine.eject_cdrom()
        return record

    def _run(
        self, phase: str, command: str, timeout: float, codes: ExitCodes | None = None
    ) -> CommandRecord:
        try:
            result = self.channel.run(command, timeout=timeout)
        except GuestError as exc:
            if codes is None or not self.channel.ping(5):
                raise
            # The guest is alive but the command never finished: that is the installer's doing.
            record = CommandRecord(phase, command, None, "", str(exc), timeout, "failure")
            self.out.commands.append(record)
            return record
        meaning = codes.meaning(result.exit_code) if codes else ""
        record = CommandRecord(
            phase, command, result.exit_code, result.stdout, result.stderr, result.seconds, meaning
        )
        self.out.commands.append(record)
        return record

    def _must(self, command: str, what: str) -> None:
        record = self._run("lab", command, COMMAND_TIMEOUT)
        if record.exit_code != 0:
            raise GuestError(
                f"could not {what}: exit {record.exit_code}: "
                f"{record.stderr.strip() or record.stdout.strip()}",
                channel=self.channel.name,
                domain=self.machine.name,
            )

    # -- checks -----------------------------------------------------------------------------

    def _health_checks(self, when: str) -> list[str]:
        failed: list[str] = []
        template = self.cell.image.conventions.service_check
        for product in self.cell.products:
            payload = product.payload_for(self.cell.os_family)
            assert payload is not None
            for service in payload.health.services:
                record = self._run("check", template.format(service=service), COMMAND_TIMEOUT)
                ok = record.exit_code == 0
                self.out.checks.append(
                    {
                        "name": f"{product.name}: service {service} running",
                        "when": when,
                        "passed": ok,
                    }
                )
                if not ok:
                    failed.append(f"{product.name}: service {service} not running ({when})")
            if payload.health.command:
                record = self._run("check", payload.health.command, COMMAND_TIMEOUT)
                ok = record.exit_code == 0
                self.out.checks.append(
                    {"name": f"{product.name}: health command", "when": when, "passed": ok}
                )
                if not ok:
                    failed.append(f"{product.name}: health command exited {record.exit_code}")
        return failed

    def _crash_evidence(self) -> list[str]:
        """Crash evidence from inside the guest that the hypervisor did not report.

        Linux: a panic in the serial log (a kernel without the pvpanic driver panics silently).
        Windows: event log 41/6008/1001/7000/7026 and dumps since the baseline boot. Skipped
        when the watcher saw crashes: the lab's own power cycles leave such traces too.
        """
        if self.watcher.crashes:
            return []
        if self.cell.os_family == "windows":
            baseline = self._windows_baseline
            seen = crash_evidence(
                self.channel, since=baseline.now if baseline else None, domain=self.machine.name
            )
            lines = findings(seen, baseline=baseline)
            self.out.checks.append(
                {
                    "name": "no crash evidence in the Windows event log",
                    "passed": not lines,
                    "detail": "; ".join(lines),
                }
            )
            return [f"crash evidence: {line}" for line in lines]
        panic = parse_linux_panic(self.evidence.serial_text(0))
        ok = panic is None
        self.out.checks.append({"name": "no kernel panic in the serial log", "passed": ok})
        return [] if ok else [f"the serial log shows a panic: {panic.name}"]  # type: ignore[union-attr]

    def _boot_time(self, baseline: float, first: int) -> list[str]:
        limit = self.cell.scenario.boot_regression
        after = [b.seconds for b in self.watcher.boots[first:] if b.outcome == "completed"]
        if limit is None or not after or baseline <= 0:
            return []
        worst = max(after)
        ok = worst <= baseline * limit
        self.out.checks.append(
            {
                "name": f"boot time within {limit:g}x the baseline",
                "passed": ok,
                "detail": f"{worst:.1f} s vs {baseline:.1f} s",
            }
        )
        return [] if ok else [f"boot time regressed: {worst:.1f} s vs baseline {baseline:.1f} s"]

    def _custom_checks(self) -> list[str]:
        failed = []
        for check in self.lab.checks(self.channel, self.cell):
            self.out.checks.append(
                {"name": check.name, "passed": check.passed, "detail": check.detail}
            )
            if not check.passed:
                failed.append(f"{check.name}: {check.detail}" if check.detail else check.name)
        return failed

    def _rollback(self, commands: Commands) -> str | None:
        record = self._install(
            "rollback",
            self.cell.candidate.payload,
            commands.uninstall,
            commands.exit_codes,
            self.cell.candidate.name,
        )
        if record.meaning == "failure":
            return f"uninstaller exited {record.exit_code}"
        rollback = BootWatcher(
            self.policy, phase="rollback", first_boot=len(self.watcher.boots) + 1
        )
        main, self.watcher = self.watcher, rollback
        try:
            self._reboot()
            if not self._boot():
                return f"the boot after rollback failed: {self._failure_text()}"
            failed = self._health_checks("after rollback")
            return "; ".join(failed) if failed else None
        finally:
            self.watcher = main
            self._rollback_boots = rollback.boots

    # -- plumbing ---------------------------------------------------------------------------

    def _xml(self) -> str:
        cell, lab = self.cell, self.lab
        name = domain_name(lab.run_id, self.storage.cell_id)
        spec = DomainSpec(
            name=name,
            uuid=uuid.uuid4(),
            accel=lab.accel,  # type: ignore[arg-type]
            image=cell.image,
            hardware=cell.hardware,
            overlay=self.storage.overlay,
            serial_log=self.storage.serial_log,
            metadata=CellMetadata(run=lab.run_id, cell=cell.id, controller=lab.controller),
            nvram=self.storage.nvram if cell.hardware.firmware == "uefi" else None,
        )
        return render_domain_xml(spec, lab.template_dir)

    def _seed_nvram(self) -> None:
        """Start the VM's UEFI variables from the image's template (its Secure Boot keys).

        libvirt keeps an NVRAM file that exists at first start; it cannot be told the template
        itself when it autoselects the firmware (measured with libvirt 9.0).
        """
        template = self.cell.image.uefi_vars
        if template is None or self.cell.hardware.firmware != "uefi":
            return
        try:
            shutil.copyfile(template, self.storage.nvram)
        except OSError as exc:
            raise ImageError(
                f"cannot seed UEFI variables from {template}: {exc}", host=self.lab.hypervisor.host
            ) from exc

    def _channel(self) -> Channel:
        if self.cell.image.channel == "agent":
            return AgentChannel(self.machine.domain, os_family=self.cell.os_family)
        raise LabError(
            "WinRM cells need a guest NIC with a port forwarded to 127.0.0.1; provisioning it "
            "is not built yet (use channel: agent with the QEMU guest agent installed)",
            host=self.lab.hypervisor.host,
        )

    def _phase(self, text: str) -> None:
        self._record("scenario", "phase", text)
        prefix = "" if self.with_candidate else "rerun: "
        self.lab.progress(self.cell.id, prefix + text)

    def _record(self, source: str, kind: str, detail: str = "", **data: str) -> None:
        self.machine.watch.record(time.monotonic(), source, kind, detail, **data)
