"""One VM of a cell, watched by the hypervisor whatever the runner is doing.

A :class:`Session` owns the VM's storage, machine, guest channel, readiness probe and evidence,
and one :class:`~compatlab.verdict.BootWatcher` that follows the VM through every phase. The
runner never talks to the guest directly: every channel call goes through :meth:`Session.call`,
which runs it on its own thread while the main thread consumes the hypervisor's events. So there
is no blind window -- a guest that crashes while an installer, a health check or an uninstaller
runs ends that call at once (the call is abandoned, not waited out to its timeout), and the
crash is recorded in the phase that was running.

Exceptions, and who failed:

* :class:`GuestFailed` -- the guest failed in the running phase (a crash, a failed boot, a hang,
  a boot loop). Control flow for the runbook: the phase ends, the run watches the guest settle.
* :class:`GuestRestarted` -- the guest restarted by itself while a call ran (an installer that
  reboots the machine). Whether that is allowed is the caller's decision.
* :class:`~compatlab.errors.LabError` / :class:`~compatlab.errors.GuestError` -- the lab failed,
  and no failure of the guest explains it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from compatlab import cost
from compatlab.checks.windows import WindowsEvidence
from compatlab.errors import GuestError, HypervisorError, LabError, RunStopped
from compatlab.guest.readiness import ReadinessProbe
from compatlab.lab import activity, guest_cost
from compatlab.lab.domain import Forward, render_cell_domain
from compatlab.lab.evidence import CellEvidence
from compatlab.lab.ports import PortLease, lease_port
from compatlab.lab.serial import SerialWatch
from compatlab.model import Event, Phase
from compatlab.scenario import layers
from compatlab.scenario.context import LabContext, needs_network
from compatlab.scenario.record import PhaseRecord, VMRecord, describe
from compatlab.verdict import (
    BootPolicy,
    BootWatcher,
    Finding,
)

if TYPE_CHECKING:
    from compatlab.cache import Layer
    from compatlab.matrix import Cell

__all__ = ["GuestFailed", "GuestRestarted", "PhaseRecord", "Session", "VMRecord", "describe"]

log = logging.getLogger("compatlab.scenario")

_T = TypeVar("_T")

EVENT_POLL = 0.25  # how long the runner sleeps on the event queue before a tick
# After a channel call failed: how long to wait for a crash or reset event that explains it.
# libvirt reports a panic within milliseconds; the agent's error can beat it by a little.
GRACE = 1.5


class GuestFailed(Exception):
    """The guest failed in the running phase; ``detail`` is the watcher's evidence line."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class GuestRestarted(Exception):
    """The guest restarted by itself while ``what`` ran (the reset was seen, no crash)."""

    def __init__(self, what: str, cause: BaseException | None = None) -> None:
        super().__init__(f"the guest restarted while {what} ran")
        self.what = what
        self.cause = cause


class Session:
    """One provisioned VM of a cell. ``with Session(...) as vm:`` makes it; leaving removes it."""

    def __init__(
        self,
        cell: Cell,
        lab: LabContext,
        evidence: Path,
        *,
        label: str,
        with_candidate: bool,
        start: Layer | None = None,
        builds_for: str | None = None,
    ) -> None:
        """``start``: the cached layer the VM starts from (None: the golden image).
        ``builds_for``: this VM builds the cached layer for the cell's VM of that label."""
        self.cell = cell
        self.lab = lab
        self.evidence_folder = evidence
        self.epoch = time.monotonic()
        self.start = start
        self.record = VMRecord(label=label, with_candidate=with_candidate, part_of=builds_for)
        suffix = "" if with_candidate else "#rerun"
        if builds_for is not None:
            suffix += layers.BUILDER_SUFFIX
        self.storage = lab.storages(
            lab.run_id, cell.id + suffix, root=lab.storage_root, host=lab.hypervisor.host
        )
        scenario = cell.scenario
        self.policy = BootPolicy(
            boot_timeout=scenario.boot_timeout, loop_threshold=scenario.boot_loop
        )
        self.watcher = BootWatcher(self.policy)
        self.serial_offset = 0
        self._machine_cm: Any = None
        self._leases: list[PortLease] = []
        #: Set by the runbook when what the watcher saw is the lab's failure, not the guest's.
        self.lab_owns_failure = False
        # What a clean boot of a Windows image already logs, read at the baseline boot.
        self.windows_baseline: WindowsEvidence | None = None
        self.forwards: tuple[Forward, ...] = ()
        self._boot_activity: activity.Activity | None = None
        self._boot_log = 0  # the serial log's size when the boot in progress began

    # -- making and removing the VM -------------------------------------------------------

    def __enter__(self) -> Session:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        cell, lab = self.cell, self.lab
        if lab.stop.is_set():
            raise RunStopped("the run stopped before this cell started")
        self.storage.create()
        layers.seed(cell, lab, self.storage, self.start)
        # A NIC only where the channel needs one, its ports on 127.0.0.1 leased for this VM.
        for guest_port in needs_network(cell):
            lease = lease_port(lab.storage_root, f"{lab.run_id} {cell.id}")
            self._leases.append(lease)
            self.forwards += (Forward(lease.port, guest_port),)
        xml = render_cell_domain(
            cell.image,
            cell.hardware,
            self.storage,
            template_dir=lab.template_dir,
            accel=lab.accel,  # type: ignore[arg-type]
            controller=lab.controller,
            forwards=self.forwards,
            layer=self.start.disk if self.start is not None else None,
        )
        self._machine_cm = lab.machines(lab.hypervisor, xml, self.storage.folder, epoch=self.epoch)
        self.machine = self._machine_cm.__enter__()
        self.evidence = CellEvidence(
            self.storage, self.machine, self.evidence_folder, lab.report_dir
        )
        self.channel = lab.channels(cell, self.machine, self.forwards)
        self.probe = ReadinessProbe(self.channel, self.machine)
        # The second signal of a completed boot, where the image prints one on its console.
        self.serial: SerialWatch | None = None
        if cell.image.boot_complete is not None:
            self.serial = SerialWatch(
                self.storage.serial_log, cell.image.boot_complete, self.machine.watch
            )
            self.serial.start()

    def close(self) -> None:
        """Stop watching, keep the evidence, remove the VM and its storage. Never raises: a
        cleanup failure is recorded and logged, and must not take the verdict with it (the
        reaper removes what is left)."""
        problems: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = []
        if hasattr(self, "probe"):
            steps.append(("stopping the readiness probe", self.probe.stop))
        if getattr(self, "serial", None) is not None:
            steps.append(("stopping the serial watch", self.serial.stop))  # type: ignore[union-attr]
        if self._machine_cm is not None:
            steps.append(("reading the timeline", self._snapshot))
            steps.append(("keeping the evidence", self._keep_evidence))
            steps.append(("removing the VM", lambda: self._machine_cm.__exit__(None, None, None)))
        steps.append(("removing the storage", self.storage.remove))
        steps.extend(("releasing a port", lease.release) for lease in self._leases)
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log.error("%s of %s: %s", what, self.cell.id, exc)
                problems.append(f"{what}: {exc}")
        self._machine_cm = None
        for problem in problems:
            t = time.monotonic() - self.epoch
            self.record.events.append(Event(t, "scenario", "cleanup_failed", problem))

    def _snapshot(self) -> None:
        self.record.events = self.machine.watch.timeline.snapshot()
        self.record.boots = list(self.watcher.boots)
        self.record.findings = self.watcher.findings
        self.record.observed = {
            p.phase: self.watcher.observations([p.phase.value]) + p.extra
            for p in self.record.phases
        }

    def _keep_evidence(self) -> None:
        self.record.artifacts.update(self.evidence.keep())

    # -- phases ---------------------------------------------------------------------------

    @contextmanager
    def phase(self, phase: Phase) -> Iterator[PhaseRecord]:
        """Run a phase: its findings, boots and evidence are recorded under its name."""
        record = PhaseRecord(phase, started=time.monotonic() - self.epoch)
        self.record.phases.append(record)
        self.watcher.phase = phase.value
        self.note("scenario", "phase", phase.value)
        self.say(phase.value)
        try:
            yield record
        finally:
            record.ended = time.monotonic() - self.epoch

    @property
    def current(self) -> PhaseRecord:
        return self.record.phases[-1]

    def say(self, text: str) -> None:
        """Progress for people: the cell's current step."""
        prefix = "" if self.record.with_candidate else "rerun: "
        self.lab.progress(self.cell.id, prefix + text)

    def note(self, source: str, kind: str, detail: str = "", **data: str) -> None:
        self.machine.watch.record(source, kind, detail, **data)

    # -- watching -------------------------------------------------------------------------

    def pump(
        self, done: Callable[[], bool], *, fail: bool = True, limit: float | None = None
    ) -> None:
        """Consume the hypervisor's events until ``done()`` or a final finding.

        With ``fail``, a failure of the guest raises :class:`GuestFailed` as soon as it is seen.
        ``limit``: seconds after which the lab gives up (a watcher that can decide nothing, e.g.
        a guest that stays powered off), a :class:`LabError`.
        """
        end = None if limit is None else time.monotonic() + limit
        watch = self.machine.watch
        while not done() and self.watcher.outcome is None:
            if self.lab.stop.is_set():
                raise RunStopped(
                    "the run stopped before this cell finished", domain=self.machine.name
                )
            if end is not None and time.monotonic() > end:
                raise LabError(
                    f"nothing was decided about the guest within {limit:g} s",
                    host=self.lab.hypervisor.host,
                    domain=self.machine.name,
                )
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
            elif event.kind == "io_error" or (
                event.kind == "suspended" and event.detail == "ioerror"
            ):
                raise self._host_io_error(event)
            offset = event.data.get("offset") if event.kind == "boot_marker" else None
            if offset is not None and int(offset) < self._boot_log:
                # Printed before the reset that began this boot, read after it: not this boot's.
                event = replace(event, kind="stale_boot_marker")
            was_booting = self.watcher.is_booting
            failure: Finding | None = None
            for finding in self.watcher.feed(event):
                self._on_finding(finding)
                failure = failure or (finding if finding.failure else None)
            if self.watcher.is_booting and not was_booting:
                self.probe.arm()  # a boot began (however it began): ask until it answers
                self._boot_activity = self._sample()
                self._boot_log = self.evidence.serial_size()
            if failure is not None and fail:
                raise GuestFailed(failure.detail)
        if fail and self.watcher.outcome is not None:
            raise GuestFailed(self.watcher.outcome.detail)

    def _host_io_error(self, event: Event) -> LabError:
        """QEMU could not read or write a disk image on the host (a full disk pauses the guest:
        QEMU's default ``werror=enospc``): whatever the guest does from here is the lab's doing.
        A failure the guest showed before it is kept (see ``scenario.cell``)."""
        if event.kind == "suspended":
            io_errors = [e for e in self.machine.watch.timeline.snapshot() if e.kind == "io_error"]
            if io_errors:
                event = io_errors[-1]
        reason = event.detail if event.kind == "io_error" else ""
        said = {"enospc": "No space left on device (disk full)"}.get(reason, f"I/O error {reason}")
        where = event.data.get("path") or event.data.get("device") or "a disk image"
        return LabError(
            f"the host could not write {where}: {said.strip()}; QEMU paused the guest",
            host=self.lab.hypervisor.host,
            domain=self.machine.name,
        )

    def drain(self) -> None:
        """Watch a last moment (:data:`GRACE`) after the book's last step: a crash that came
        just after the last command answered, while no call was running, is judged too."""
        end = time.monotonic() + GRACE
        self.pump(lambda: time.monotonic() >= end)

    def _on_finding(self, finding: Finding) -> None:
        phase = finding.phase or "run"
        if finding.kind == "boot_completed":
            self.serial_offset = self.evidence.serial_size()
            return
        if finding.kind == "crash":
            self.probe.disarm()
            self.evidence.screenshot(f"{phase}-crash-{self.watcher.crashes}")
            bugcheck = self.evidence.bugcheck(self.cell.os_family, self.serial_offset)
            if bugcheck is not None:
                source = "serial" if bugcheck.code == "panic" else "domain-log"
                bugcheck = replace(
                    bugcheck, source="serial" if source == "serial" else "hyperv-msr"
                )
                text = f"{bugcheck.code} {bugcheck.name}"
                self.note(source, "bugcheck", text, **bugcheck.as_event_data())
            if self.watcher.outcome is None:
                # What a bugchecked machine does by itself: restart. Here the lab does it, after
                # keeping the evidence that on_crash=preserve left on the screen.
                self.note("scenario", "power_cycle", "warm reset after the crash")
                self.machine.restart_after_crash()
                self.probe.arm()
        elif finding.kind in ("reset", "restart") and self.watcher.outcome is None:
            if not self.machine.state().is_active:
                self.note("scenario", "power_cycle", "the guest powered itself off mid-boot")
                self.machine.power_cycle()
            self.probe.arm()
        if finding.final:
            # The moment the runner knew: the panic-to-verdict benchmark measures up to here.
            self.note("scenario", "decided", f"{finding.kind}: {finding.detail}")
            if finding.kind in ("hang", "unreachable") and self._boot_activity is not None:
                now = self._sample()
                if now is not None:
                    said = f"during the boot: {activity.describe(self._boot_activity, now)}"
                    self.current.add(activity=said)
                    self.note("libvirt", "activity", said)
                    earlier = self.watcher.crashes or any(
                        p.extra.failed for p in self.record.phases
                    )
                    if activity.starved(self._boot_activity, now) and not earlier:
                        # The guest wanted to run and the host would not let it: a boot that
                        # ran out of time here says nothing about the update.
                        self.lab_owns_failure = True
                        raise LabError(
                            f"the host starved the guest: {finding.detail} {said}",
                            host=self.lab.hypervisor.host,
                            domain=self.machine.name,
                        )
            self.probe.disarm()
            self.evidence.screenshot(f"{phase}-{finding.kind}")

    def _sample(self) -> activity.Activity | None:
        try:
            return activity.sample(self.machine.domain)
        except LabError:
            return None

    # -- talking to the guest -------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run one channel call on its own thread while the hypervisor is watched.

        A failure of the guest meanwhile ends the call at once: it is abandoned (its thread
        runs out against a guest that no longer answers, bounded by the channel's own timeouts)
        and :class:`GuestFailed` raised. A channel error is looked at before it is believed: a
        crash or reset that arrives within :data:`GRACE` explains it.
        """
        box: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def target() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                finished.set()

        was_up = self.watcher.is_up
        threading.Thread(target=target, name=f"compatlab-{what}", daemon=True).start()
        self.pump(finished.is_set)
        ok, value = box[0]
        if ok:
            if was_up and not self.watcher.is_up:
                raise GuestRestarted(what)
            return value  # type: ignore[no-any-return]
        if isinstance(value, GuestError):
            self._explain(what, value)
        raise value

    def _explain(self, what: str, error: GuestError) -> None:
        """A channel call failed: a crash or a reset of the guest may be why."""
        end = time.monotonic() + GRACE
        self.pump(lambda: time.monotonic() >= end or not self.watcher.is_up)
        if not self.watcher.is_up:
            raise GuestRestarted(what, error) from error
        try:
            crashed = self.machine.state().is_crashed
        except LabError:
            crashed = False
        if crashed:
            # The crash event is on its way; wait for it so it is recorded as itself.
            self.pump(lambda: False, limit=10.0)

    def ping(self, timeout: float) -> bool:
        try:
            return self.call("ping", lambda: self.channel.ping(timeout))
        except (GuestError, GuestRestarted):
            return False

    def boot(self) -> float:
        """Wait for the boot in progress to complete; its seconds."""
        self.pump(lambda: self.watcher.is_up, limit=self._boot_limit())
        return self.watcher.boots[-1].seconds

    def bake(self, seconds: float, *, measure: int | None = None) -> None:
        """Stay up ``seconds``; a crash meanwhile is a failure of the phase.

        ``measure``: the boot (of the phase) this bake follows. What the guest uses meanwhile --
        CPU, memory, disk -- is then sampled on a thread of its own (the events are watched here
        as ever) and kept in the phase's record as one window (:mod:`compatlab.cost`); a bake
        a failure of the guest cut short is kept too, marked so.
        """
        if measure is None:
            self._wait(seconds)
            return
        sampler = guest_cost.Sampler(lambda: guest_cost.read(self.machine.domain))
        sampler.start()
        complete = False
        try:
            self._wait(seconds)
            complete = True
        finally:
            window = cost.summarize(sampler.stop(), boot=measure, complete=complete)
            self.current.bakes.append(window)

    def _wait(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.pump(lambda: time.monotonic() >= end)

    def settle(self) -> None:
        """After a failure: watch until the guest is back up or the watcher decides (a boot
        loop, a hang). Tells a crash the guest came back from from a boot loop."""
        if self.current.extra.hang is not None:
            return  # hung in its shutdown: there is no boot to wait for
        self.pump(lambda: self.watcher.is_up, fail=False, limit=self._boot_limit())

    def _boot_limit(self) -> float:
        # Every boot has its deadline; this bounds only what no deadline covers (a guest left
        # down), with room for a whole boot loop.
        return self.policy.boot_timeout * (self.policy.loop_threshold + 1) + 60.0

    def guest_failed(self) -> bool:
        """The guest failed in this VM -- unless the runbook judged that failure the lab's
        (:attr:`lab_owns_failure`: a golden image that does not boot, a baseline that hangs)."""
        if self.lab_owns_failure:
            return False
        return (
            self.watcher.crashes > 0
            or self.watcher.outcome is not None
            or any(p.extra.failed for p in self.record.phases)
        )
