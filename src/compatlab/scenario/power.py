"""Asking a guest to go down, and watching it go: reboots and the cache builder's shutdown.

Until the hypervisor sees the guest go down, the watcher still counts the old boot as up; and a
guest whose channel stopped answering can never receive the request. Both are decided here, in
the phase that was running: a guest that never goes down hung in its shutdown (a driver can do
that), one whose channel is dead is ``unreachable`` -- never a hang waited out for a reset
nobody could ask for.
"""

from __future__ import annotations

import time
from typing import NoReturn

from compatlab.errors import GuestError
from compatlab.scenario.session import GuestFailed, GuestRestarted, Session

__all__ = ["must_answer", "reboot", "shutdown"]


def reboot(vm: Session) -> None:
    """Ask the guest to reboot and wait until the hypervisor sees it go down.

    Until the reset is seen the watcher still counts the old boot as up, so waiting for the
    next boot right away would count the old one. A guest that never goes down has hung in
    its shutdown (a driver can do that): recorded as a hang in the running phase.
    """
    vm.probe.disarm()
    vm.serial_offset = vm.evidence.serial_size()
    timeout, end = _asking(vm, "reboot_requested")
    try:
        vm.call("reboot", vm.channel.reboot)
    except GuestRestarted:
        pass  # what was asked for
    except GuestError:
        if vm.watcher.is_up and not vm.ping(5):
            pass  # the guest went away without a reset yet: wait for it below
        elif vm.watcher.is_up:
            raise
    vm.pump(lambda: not vm.watcher.is_up or time.monotonic() >= end)
    if vm.watcher.is_up:
        _hung(vm, f"no reset within {timeout:g} s of a reboot request")
    vm.probe.arm()


def shutdown(vm: Session) -> None:
    """Ask the guest to power off and wait until the hypervisor sees it off (the cache
    builder's last step). A crash meanwhile fails the running phase, as anywhere; a guest
    that does not go down is recorded as a hang in its shutdown, as in :meth:`reboot`."""
    vm.probe.disarm()
    timeout, end = _asking(vm, "shutdown_requested")
    try:
        vm.call("shutdown", vm.channel.shutdown)
    except (GuestRestarted, GuestError):
        if vm.watcher.is_up and vm.ping(5):
            raise
    vm.pump(lambda: not vm.machine.state().is_active or time.monotonic() >= end)
    if vm.machine.state().is_active:
        _hung(vm, f"still running {timeout:g} s after a shutdown request")


def _asking(vm: Session, kind: str) -> tuple[float, float]:
    """Before a request to go down: the channel must answer (:func:`must_answer`); the request
    goes on the timeline. The boot timeout, and when it runs out."""
    timeout = vm.cell.scenario.boot_timeout
    must_answer(vm, timeout)
    vm.note("scenario", kind, vm.channel.name)
    return timeout, time.monotonic() + timeout


def _hung(vm: Session, hang: str) -> NoReturn:
    """The guest did not go down: a hang in its shutdown, in the running phase."""
    vm.current.add(hang=hang)
    vm.evidence.screenshot(f"{vm.current.phase.value}-shutdown-hang")
    raise GuestFailed(hang)


def must_answer(vm: Session, window: float) -> None:
    """Before a reboot request: the guest is up, so its channel must answer within
    ``window``. A channel that stopped answering (a candidate killed the agent) can never
    deliver the request, so no reset is coming: that is ``unreachable`` (the guest is up, its
    channel is dead), never a hang waited out for a reset nobody asked the guest for."""
    if not vm.watcher.is_up:
        return
    end = time.monotonic() + window
    while vm.watcher.is_up:
        left = end - time.monotonic()
        if vm.ping(max(1.0, min(5.0, left))):
            return
        if left <= 0:
            break
        vm._wait(min(left, 1.0))
    if not vm.watcher.is_up:
        return  # it went down by itself meanwhile: the watcher judges that boot
    boot = vm.watcher.boots[-1]
    detail = (
        f"boot {boot.n}: the guest is up (it completed its boot and no crash or reset "
        f"followed), but its channel stopped answering: no answer within {window:g} s, "
        "so the lab's reboot request could not be delivered"
    )
    vm.current.add(unreachable=detail)
    vm.note("scenario", "decided", f"unreachable: {detail}")
    vm.evidence.screenshot(f"{vm.current.phase.value}-unreachable")
    raise GuestFailed(detail)
