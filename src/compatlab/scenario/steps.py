"""The guest commands of a cell: run one and keep it as evidence, install a payload from its ISO.

Every command goes through :meth:`Session.call`, so a crash while it runs ends it at once and is
recorded in the running phase. An installer's line is written by hand or built from a Windows
package (:mod:`compatlab.installs`); a built line names the installer's log, which is read back
after every run and kept as an artifact (:class:`InstallerLogKeeper`). Driver Verifier is turned
on after the candidate's install and off again at rollback (:func:`enable_verifier`,
:func:`reset_verifier`). None of the Windows lines has run on a real Windows here.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING

import tenacity

from compatlab.errors import GuestError, ImageError, LabError, StorageError
from compatlab.guest import verifier
from compatlab.guest.installer_log import LogAnswerError, parse_answer, read_script
from compatlab.guest.media import cached_iso
from compatlab.guest.quoting import UnsafeValue, quote
from compatlab.guest.windows_install import RETRY_1618, InstallerCommand, classify
from compatlab.installs import Action, Commands, ExitCodes, installer_line
from compatlab.model import CommandRecord
from compatlab.scenario.checks import COMMAND_TIMEOUT
from compatlab.scenario.session import GuestRestarted

if TYPE_CHECKING:
    from compatlab.scenario.session import Session

__all__ = [
    "INSTALL_TIMEOUT",
    "MOUNT_WAIT",
    "PAYLOAD_LABEL",
    "InstallerLogKeeper",
    "enable_verifier",
    "install",
    "mount_payload",
    "must",
    "reset_verifier",
    "run_command",
    "shell_word",
]

PAYLOAD_LABEL = "COMPATLAB"
INSTALL_TIMEOUT = 900.0  # an installer that runs longer has hung: install_failed
MOUNT_WAIT = 30.0  # how long the guest may take to see a medium just inserted


def run_command(
    vm: Session, command: str, timeout: float, codes: ExitCodes | None = None
) -> CommandRecord:
    """Run ``command`` in the guest and keep it. With ``codes`` (an installer), a command that
    never finished in a guest that still answers is the installer's failure, not the lab's."""
    phase = vm.current.phase.value
    try:
        result = vm.call("a command", lambda: vm.channel.run(command, timeout=timeout))
    except GuestError as exc:
        if codes is None or not vm.ping(5):
            raise
        record = CommandRecord(phase, command, None, "", str(exc), timeout, "failure")
        vm.record.commands.append(record)
        return record
    meaning = codes.meaning(result.exit_code) if codes else ""
    record = CommandRecord(
        phase, command, result.exit_code, result.stdout, result.stderr, result.seconds, meaning
    )
    vm.record.commands.append(record)
    return record


def must(vm: Session, command: str, what: str) -> None:
    """A routine command of the lab's (mount, unmount): failing is the lab's failure."""
    record = run_command(vm, command, COMMAND_TIMEOUT)
    if record.exit_code != 0:
        raise GuestError(
            f"could not {what}: exit {record.exit_code}: "
            f"{record.stderr.strip() or record.stdout.strip()}",
            channel=vm.channel.name,
            domain=vm.machine.name,
        )


def shell_word(vm: Session, value: str) -> str:
    """``value`` quoted for the guest's shell; a value that cannot be is the lab's error."""
    try:
        return quote(value, vm.cell.os_family)
    except UnsafeValue as exc:
        raise ImageError(f"image {vm.cell.image.name}: {exc}", host=vm.lab.hypervisor.host) from exc


def mount_payload(vm: Session, command: str) -> None:
    """Mount the medium just inserted, retrying while the guest does not see it yet.

    A medium change reaches the guest's kernel, and then udev, a moment after libvirt returns:
    a mount command that does not wait by itself (the catalog default ``mount -o ro -L``) fails
    in that moment. The lab waits for the guest rather than rely on each image's script: it
    retries the mount for up to :data:`MOUNT_WAIT` seconds, then gives up as the lab's failure.
    """
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(MOUNT_WAIT),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
        retry=tenacity.retry_if_exception_type(GuestError),
        reraise=True,
    )
    tries = 0
    for attempt in retrying:
        with attempt:
            tries += 1
            must(vm, command, "mount the payload")
    if tries > 1:
        vm.note("scenario", "mount_retried", f"the payload mounted at try {tries}")


class InstallerLogKeeper:
    """Keeps the installer's log after each run of one installer, as an artifact named by phase,
    payload and run: ``installer-install-acme-sensor-2.log`` is the second run (after a 1618) of
    the candidate's installer. Never decides anything: a log that is missing, unreadable or not
    written is a line on the timeline."""

    def __init__(self, vm: Session, log: str | None, name: str) -> None:
        self.vm = vm
        self.log = log
        self.stem = f"{vm.current.phase.value}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"
        self.name = name
        self.run = 0

    def keep(self) -> None:
        """Read the log of run :attr:`run` from the guest and keep it (Windows packages only)."""
        if self.log is None or not self.vm.watcher.is_up:
            return
        vm, log = self.vm, self.log
        what = f"{self.name}: installer log {log}"
        try:
            result = vm.call(
                "reading the installer log",
                lambda: vm.channel.run(
                    read_script(log), timeout=COMMAND_TIMEOUT, shell="powershell"
                ),
            )
        except GuestRestarted:
            vm.note("scenario", "installer_log", f"{what} not read: the guest restarted")
            return
        except GuestError as exc:
            vm.note("scenario", "installer_log", f"{what} not read: {exc}")
            return
        if result.exit_code != 0:
            reason = (result.stderr.strip() or result.stdout.strip())[:200]
            vm.note(
                "scenario", "installer_log", f"{what} not read: exit {result.exit_code}: {reason}"
            )
            return
        try:
            kept = parse_answer(result.stdout)
        except LogAnswerError as exc:
            vm.note("scenario", "installer_log", f"{what} not read: {exc}")
            return
        if kept.missing:
            vm.note("scenario", "installer_log", f"{what} is not there (the installer wrote none)")
            return
        file = f"installer-{self.stem}-{self.run}.log"
        try:
            vm.evidence_folder.mkdir(parents=True, exist_ok=True)
            (vm.evidence_folder / file).write_text(kept.text, encoding="utf-8")
        except OSError as exc:
            vm.note("scenario", "installer_log", f"{what} not kept: {exc.strerror or exc}")
            return
        folder = vm.evidence_folder.relative_to(vm.lab.report_dir).as_posix()
        vm.record.artifacts[f"installer-log-{self.stem}-{self.run}"] = f"{folder}/{file}"
        cut = f" (head and tail; {kept.cut} bytes cut)" if kept.cut else ""
        vm.note("scenario", "installer_log", f"{what}: {kept.size} bytes kept as {file}{cut}")


def _run_installer(
    vm: Session, line: str, codes: ExitCodes, logs: InstallerLogKeeper
) -> CommandRecord:
    """Run an installer, keeping its log after each run; on Windows, 1618 (another installation
    is in progress: Windows Update or a product's own servicing) is run again after a pause, by
    :data:`RETRY_1618`."""
    attempt = 1
    while True:
        logs.run = attempt
        record = run_command(vm, line, INSTALL_TIMEOUT, codes)
        logs.keep()
        code = record.exit_code
        if vm.cell.os_family != "windows" or code is None or classify(code, codes) != "retry":
            return record
        attempt += 1
        wait = RETRY_1618.wait_before(attempt)
        if wait is None:
            return replace(record, meaning="failure")
        vm.note(
            "scenario",
            "install_busy",
            f"exit {code}: another installation runs; again in {wait:g} s",
        )
        vm.bake(wait)  # watched: a crash while waiting is seen


def _line_for(vm: Session, commands: Commands, action: Action) -> InstallerCommand | str:
    """The line for ``action`` with the image's payload path: as written, or built from the
    package. A payload path the line cannot carry is the image's fault: the lab's."""
    try:
        return installer_line(commands, action, vm.cell.image.conventions.payload_path)
    except (UnsafeValue, ValueError) as exc:
        raise ImageError(
            f"image {vm.cell.image.name}: cannot build the {action} line: {exc}",
            host=vm.lab.hypervisor.host,
        ) from exc


def _check_package_file(folder: Path, commands: Commands) -> None:
    """The declared package file must be in the payload folder: its absence is the lab's (an
    unbuilt or incomplete payload), not an installer failing with 1619."""
    package = commands.package
    if package is None or not folder.is_dir():
        return  # a missing folder is named by cached_iso
    if not (folder / PureWindowsPath(package.file).as_posix()).is_file():
        raise StorageError(f"payload {folder} has no {package.file} (the package's file)")


def install(
    vm: Session,
    folder: Path,
    commands: Commands,
    action: Action,
    name: str,
    *,
    restarts: int = 0,
) -> CommandRecord:
    """Pack ``folder`` as an ISO, insert it, mount it, run the installer (``action`` of
    ``commands``), keep its log, clean up.

    ``restarts``: how often the installer may restart the guest by itself. A restart in the
    middle of the command then ends it with the meaning ``reboot`` once the guest is back; an
    undeclared one is an install failure.
    """
    conventions = vm.cell.image.conventions
    built = _line_for(vm, commands, action)
    line, log = (built, None) if isinstance(built, str) else (built.command, built.log)
    _check_package_file(folder, commands)
    iso = cached_iso(folder, vm.lab.iso_cache, label=PAYLOAD_LABEL)
    vm.machine.insert_cdrom(iso)
    quoted = shell_word(vm, conventions.payload_path)
    if conventions.mount_payload:
        label = shell_word(vm, PAYLOAD_LABEL)
        mount_payload(vm, conventions.mount_payload.format(label=label, path=quoted))
    logs = InstallerLogKeeper(vm, log, name)
    vm.watcher.allow_restarts(restarts)
    try:
        record = _run_installer(vm, line, commands.exit_codes, logs)
    except GuestRestarted:
        phase = vm.current.phase.value
        if restarts:
            detail, meaning = "restarted the guest (declared)", "reboot"
        else:
            detail = "restarted the guest mid-command, and declares no restarts (reboots: N)"
            meaning = "failure"
        record = CommandRecord(phase, line, None, "", detail, 0.0, meaning)
        vm.record.commands.append(record)
        vm.note("scenario", "install", f"{name}: {detail}")
        vm.boot()  # back up before anything else is asked of the guest
        logs.keep()  # what the installer wrote before the restart
        vm.machine.eject_cdrom()
        return record
    vm.note("scenario", "install", f"{name}: exit {record.exit_code} ({record.meaning})")
    if conventions.unmount_payload:
        must(vm, conventions.unmount_payload.format(path=quoted), "unmount the payload")
    vm.machine.eject_cdrom()
    return record


# -- Driver Verifier ----------------------------------------------------------------------------


def enable_verifier(vm: Session, drivers: tuple[str, ...]) -> None:
    """Standard verification of ``drivers`` from the next boot: after the candidate's install,
    before its first boot. verifier.exe's exit codes are undocumented, so its effect is read
    back with ``/querysettings``; a driver it does not list is the lab's failure (the image's
    Driver Verifier did not take the setting), not the candidate's."""
    run_command(vm, verifier.enable_command(drivers), COMMAND_TIMEOUT)
    record = run_command(vm, verifier.query_settings_command(), COMMAND_TIMEOUT)
    missing = verifier.missing_drivers(record.stdout, drivers)
    if missing:
        said = (record.stderr.strip() or record.stdout.strip())[:200]
        raise LabError(
            f"Driver Verifier is not set up for {', '.join(missing)}: verifier /querysettings "
            f"(exit {record.exit_code}) does not list them: {said}",
            host=vm.lab.hypervisor.host,
            domain=vm.machine.name,
        )
    vm.note(
        "scenario", "verifier", f"standard verification from the next boot: {', '.join(drivers)}"
    )


def reset_verifier(vm: Session) -> None:
    """No verification from the next boot on (rollback). Its exit code is not judged."""
    record = run_command(vm, verifier.reset_command(), COMMAND_TIMEOUT)
    vm.note("scenario", "verifier", f"verifier /reset: exit {record.exit_code}")
