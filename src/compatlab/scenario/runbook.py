"""The life of one VM of a cell, read top to bottom like a runbook.

::

    provision   overlay on the golden image, domain defined and started, first boot
    products    each coexisting product installed from its payload ISO
    baseline    reboot: the configuration must boot clean, stay up ``bake`` seconds (what the guest
                uses meanwhile is the cost the candidate's bakes are compared with), and its
                products be healthy
    install     the candidate's installer, its exit code read by its declared meanings; with
                ``scenario.verifier``, Driver Verifier on for the named drivers from the next boot
    boots       reboot ``boots`` times; each must complete within ``boot_timeout`` and stay up
                ``bake`` seconds with no crash; what the guest uses in each bake is sampled
    checks      products still healthy, no crash evidence, boot time not regressed, custom checks
    rollback    uninstall (and ``verifier /reset``), reboot, boots clean, products healthy

A VM that starts from a cached pre-candidate layer (``vm.start``, :mod:`compatlab.cache`) has
its products installed already: its first boot, from the layer, is its baseline boot. The
layer's builder (:func:`build_book`) runs provision, products and the baseline reboot, then shuts
the guest down cleanly and hands its disk, UEFI variables and TPM state to the cache. A memory
layer's builder saves the running guest instead, and the cell restores it rather than booting:
no boot at all before the candidate's. Its boot-time reference is then the builder's baseline
boot, kept in the layer (:mod:`compatlab.scenario.layers`).

A rerun without the candidate (``with_candidate=False``) runs the same book and skips install
and rollback. Every phase is watched by the hypervisor: a failure of the guest in any of them
(:class:`GuestFailed`) ends the book there, after watching the guest settle -- so a crash in the
installer that repeats at every boot reads as the boot loop it is. A failure before the
candidate is the configuration's; the candidate is then not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compatlab.errors import LabError
from compatlab.installs import Action
from compatlab.model import CommandRecord, Phase
from compatlab.scenario import checks, layers, power
from compatlab.scenario.session import GuestFailed, Session
from compatlab.scenario.steps import enable_verifier, install, reset_verifier

__all__ = ["build_book", "run_book"]


def run_book(vm: Session) -> None:
    """Run the VM's phases in order, until one fails. The record holds what each saw."""
    _watched(vm, lambda: _phases(vm))


def build_book(vm: Session, folder: Path, *, memory: bool) -> float | None:
    """Build the cell's cached layer into ``folder``: provision, products, the baseline reboot,
    a clean shutdown -- or with ``memory`` the running guest saved -- the state captured. The
    baseline boot's seconds; None when the configuration failed (its record says how, and
    nothing may be published)."""
    built: list[float] = []
    _watched(vm, lambda: _build(vm, folder, built, memory))
    return built[0] if built and not _failed(vm) else None


def _watched(vm: Session, book: Callable[[], None]) -> None:
    try:
        book()
        vm.drain()
    except GuestFailed as failed:
        vm.settle()
        if not vm.guest_failed():
            # The book ended early on something the verdict has no word for: never a pass.
            vm.current.add(failed_checks=(f"the runbook stopped: {failed.detail}",))
        try:
            checks.bugcheck_after_crash(vm, vm.windows_baseline)
        except GuestFailed:
            vm.settle()


def _failed(vm: Session) -> bool:
    return vm.guest_failed() or any(p.extra.failed for p in vm.record.phases)


def _provision(vm: Session) -> float:
    """Start the VM and wait for its first boot; its seconds."""
    cell = vm.cell
    with vm.phase(Phase.PROVISION):
        # What the cell runs on, in the timeline: the demo's WinRM images say here that their
        # WinRM service is a stand-in, not Windows.
        image = cell.image
        vm.note("scenario", "image", f"{image.name}: {image.display_name}, over {image.channel}")
        if vm.start is not None:
            made = vm.start.manifest
            vm.note(
                "scenario",
                "cached_layer",
                f"from cached layer {vm.start.key} ({made.label or 'no label'}, built "
                f"{made.created:%Y-%m-%d %H:%M} UTC; its baseline boot took "
                f"{made.baseline_boot_seconds:.1f} s)",
            )
        restoring = vm.start is not None and vm.start.memory is not None
        if restoring:
            layers.restore(vm)  # watched like a boot, from libvirt's started/restored event
        else:
            vm.machine.start()
        # Ask the guest only once the hypervisor has said it started: an answer before that
        # would be dropped by the watcher, and the boot would never count as complete.
        vm.pump(lambda: vm.watcher.is_booting, limit=60.0)
        vm.probe.arm()
        try:
            seconds = vm.boot()
        except GuestFailed as failed:
            if vm.watcher.crashes:
                raise  # the image crashes on this hardware: the configuration's failure
            vm.lab_owns_failure = True
            what = "the cached layer" if vm.start is not None else "the golden image"
            if restoring:
                # libvirt took the image but the guest never answered: the layer's next user
                # builds it again rather than restoring the same image.
                layers.condemn(vm, f"a cell's guest did not come back from it: {failed.detail}")
            how = "come back from its memory state" if restoring else "boot"
            raise LabError(
                f"{what} did not {how}: {failed.detail}",
                host=vm.lab.hypervisor.host,
                domain=vm.machine.name,
            ) from failed
        if restoring:
            layers.set_clock(vm)  # a crash meanwhile is the guest's, seen by the watcher
        return seconds


def _products(vm: Session) -> bool:
    """Install the coexisting products; False when one failed (recorded on the phase)."""
    cell = vm.cell
    with vm.phase(Phase.PRODUCTS) as phase:
        if vm.start is not None:
            names = ", ".join(product.name for product in cell.products) or "none"
            vm.note("scenario", "cached_layer", f"products installed in the cached layer: {names}")
            return True
        for product in cell.products:
            payload = product.payload_for(cell.os_family)
            assert payload is not None  # the matrix loader checked this
            vm.say(f"installing {product.name}")
            record = install(vm, payload.folder, payload.commands, "install", product.name)
            if record.meaning == "failure":
                phase.add(install_failure=record)
                return False
    return True


def _baseline_reboot(vm: Session) -> float:
    """The configuration's clean reboot: its boot's seconds. A baseline boot that never
    completes is the lab's failure (the first boot of the same disk just did)."""
    power.reboot(vm)
    try:
        return vm.boot()
    except GuestFailed as failed:
        if vm.watcher.outcome is not None and vm.watcher.outcome.kind == "hang":
            vm.lab_owns_failure = True
            raise LabError(
                f"the baseline boot never completed: {failed.detail}",
                host=vm.lab.hypervisor.host,
                domain=vm.machine.name,
            ) from failed
        raise


def _build(vm: Session, folder: Path, built: list[float], memory: bool) -> None:
    _provision(vm)
    if not _products(vm):
        return
    with vm.phase(Phase.BASELINE):
        seconds = _baseline_reboot(vm)
        vm.say("keeping the cached layer")
        layers.capture(vm, folder, memory=memory)
        built.append(seconds)


def _phases(vm: Session) -> None:
    scenario = vm.cell.scenario
    first_boot = _provision(vm)
    # The baseline boot the candidate's boots are compared with (the boot-time check, the
    # sign-off, the report); None: the baseline reboot below measures it.
    reference: float | None = None
    if vm.start is not None and vm.start.memory is not None:
        # Restored, not booted: the layer's baseline boot (its builder's, kept with the layer)
        # is the reference, carried as boot 0 of kind "layer".
        reference = vm.start.manifest.baseline_boot_seconds
        vm.watcher.carry_layer_boot(reference, Phase.BASELINE.value)
    elif vm.start is not None:
        # From a cached layer the first boot is the configured guest's: its baseline boot,
        # measured here beside the candidate's boots (the builder's is in the layer's note).
        reference = first_boot
        vm.watcher.count_boot_in(vm.watcher.boots[-1].n, Phase.BASELINE.value)
    if not _products(vm):
        return

    with vm.phase(Phase.BASELINE) as phase:
        baseline_seconds = _baseline_reboot(vm) if reference is None else reference
        # Like each boot with the candidate: up ``bake`` seconds, its cost sampled meanwhile.
        vm.say(f"baking {scenario.bake:g} s (baseline)")
        vm.bake(scenario.bake, measure=1)
        failed_checks = checks.health(vm, "baseline")
        windows = vm.windows_baseline = checks.windows_baseline(vm)
        if failed_checks:
            phase.add(failed_checks=tuple(failed_checks))
            return

    if vm.record.with_candidate:
        with vm.phase(Phase.INSTALL) as phase:
            record = _candidate(vm, "install")
            if record.meaning == "failure":
                phase.add(install_failure=record)
                return
            if scenario.verifier:
                # Before the candidate's first boot: every boot with it runs verified.
                enable_verifier(vm, scenario.verifier)

    with vm.phase(Phase.BOOTS):
        for n in range(1, scenario.boots + 1):
            vm.say(f"boot {n} of {scenario.boots}")
            power.reboot(vm)
            vm.boot()
            vm.say(f"baking {scenario.bake:g} s (boot {n} of {scenario.boots})")
            vm.bake(scenario.bake, measure=n)

    with vm.phase(Phase.CHECKS) as phase:
        failed_checks = checks.health(vm, "after update" if vm.record.with_candidate else "rerun")
        failed_checks += checks.inside_crash_evidence(vm, windows)
        failed_checks += checks.boot_time(vm, baseline_seconds)
        failed_checks += checks.custom(vm)
        if failed_checks:
            phase.add(failed_checks=tuple(failed_checks))
            return

    if vm.record.with_candidate and scenario.rollback:
        with vm.phase(Phase.ROLLBACK) as phase:
            record = _candidate(vm, "uninstall")
            if record.meaning == "failure":
                code = record.exit_code
                how = "did not exit" if code is None else f"exited {code}"
                phase.add(rollback_failure=f"uninstaller {how}")
                return
            if scenario.verifier:
                reset_verifier(vm)  # the configuration as it was: nothing verified
            power.reboot(vm)
            vm.boot()
            failed_checks = checks.health(vm, "after rollback")
            if failed_checks:
                phase.add(rollback_failure="; ".join(failed_checks))


def _candidate(vm: Session, action: Action) -> CommandRecord:
    """Run the candidate's installer or uninstaller from its payload ISO."""
    candidate = vm.cell.candidate
    commands = candidate.commands[vm.cell.os_family]
    return install(
        vm, candidate.payload, commands, action, candidate.name, restarts=candidate.reboots
    )
