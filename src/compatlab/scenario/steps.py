"""The guest commands of a cell: run one and keep it as evidence, install a payload from its ISO.

Every command goes through :meth:`Session.call`, so a crash while it runs ends it at once and is
recorded in the running phase.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import tenacity

from compatlab.catalog import ExitCodes
from compatlab.errors import GuestError, ImageError
from compatlab.guest.media import cached_iso
from compatlab.guest.quoting import UnsafeValue, quote
from compatlab.guest.windows_install import RETRY_1618, classify
from compatlab.model import CommandRecord
from compatlab.scenario.checks import COMMAND_TIMEOUT
from compatlab.scenario.session import GuestRestarted

if TYPE_CHECKING:
    from compatlab.scenario.session import Session

__all__ = [
    "INSTALL_TIMEOUT",
    "MOUNT_WAIT",
    "PAYLOAD_LABEL",
    "install",
    "mount_payload",
    "must",
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


def _run_installer(vm: Session, line: str, codes: ExitCodes) -> CommandRecord:
    """Run an installer; on Windows, 1618 (another installation is in progress: Windows Update
    or a product's own servicing) is run again after a pause, by :data:`RETRY_1618`."""
    attempt = 1
    while True:
        record = run_command(vm, line, INSTALL_TIMEOUT, codes)
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


def install(
    vm: Session,
    folder: Path,
    command: str,
    codes: ExitCodes,
    name: str,
    *,
    restarts: int = 0,
) -> CommandRecord:
    """Pack ``folder`` as an ISO, insert it, mount it, run the installer ``command``, clean up.

    ``restarts``: how often the installer may restart the guest by itself. A restart in the
    middle of the command then ends it with the meaning ``reboot`` once the guest is back; an
    undeclared one is an install failure.
    """
    conventions = vm.cell.image.conventions
    iso = cached_iso(folder, vm.lab.iso_cache, label=PAYLOAD_LABEL)
    vm.machine.insert_cdrom(iso)
    path = conventions.payload_path
    quoted = shell_word(vm, path)
    if conventions.mount_payload:
        label = shell_word(vm, PAYLOAD_LABEL)
        mount_payload(vm, conventions.mount_payload.format(label=label, path=quoted))
    # str.replace, not format: installer command lines hold braces of their own. The user's
    # command quotes {payload} as its shell wants it; the path itself is checked at load.
    line = command.replace("{payload}", path)
    vm.watcher.allow_restarts(restarts)
    try:
        record = _run_installer(vm, line, codes)
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
        vm.machine.eject_cdrom()
        return record
    vm.note("scenario", "install", f"{name}: exit {record.exit_code} ({record.meaning})")
    if conventions.unmount_payload:
        must(vm, conventions.unmount_payload.format(path=quoted), "unmount the payload")
    vm.machine.eject_cdrom()
    return record
