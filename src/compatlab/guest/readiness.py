"""Knowing when a boot has completed: the guest channel answers after the last reset.

A :class:`ReadinessProbe` pings the channel on its own thread while a boot is in progress and
puts the answer onto the domain's event queue as ``agent_ready`` -- so the runner learns of a
completed boot the same way it learns of a crash, and a ping that blocks (libvirt re-syncs an
agent for up to 5 s after a timeout) never delays acting on a crash.
"""

from __future__ import annotations

import threading
import time

from compatlab.errors import CompatlabError
from compatlab.guest.channel import Channel
from compatlab.lab.machine import Machine

__all__ = ["PING_INTERVAL", "ReadinessProbe"]

PING_INTERVAL = 0.2  # a ping to an agent that is not there yet returns at once


class ReadinessProbe:
    """Pings the guest channel on its own thread while a boot is in progress.

    A boot counts as complete only when the channel answers after the last reset; the answer
    goes onto the domain's event queue as ``agent_ready``, so the runner learns of it the same
    way it learns of a crash -- and a ping that blocks never delays acting on a crash.
    """

    def __init__(self, channel: Channel, machine: Machine) -> None:
        self.channel = channel
        self.machine = machine
        self._armed = threading.Event()
        self._stopped = threading.Event()
        self._poked = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="compatlab-probe", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        self._armed.set()

    def disarm(self) -> None:
        self._armed.clear()

    def poke(self) -> None:
        """Ping now instead of at the end of the current wait."""
        self._poked.set()

    def stop(self) -> None:
        self._stopped.set()
        self._armed.set()
        self._poked.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            self._armed.wait()
            if self._stopped.is_set():
                return
            try:
                answered = self.channel.ping(2.0)
            except CompatlabError:
                answered = False
            if answered and self._armed.is_set():
                self._armed.clear()
                self.machine.watch.record(
                    time.monotonic(), "channel", "agent_ready", f"{self.channel.name} answered"
                )
            else:
                self._poked.wait(PING_INTERVAL)
                self._poked.clear()
