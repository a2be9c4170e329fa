"""Knowing when a boot has completed: the guest channel answers after the last reset.

A :class:`ReadinessProbe` pings the channel on its own thread while a boot is in progress and
puts the answer onto the domain's event queue as ``agent_ready`` -- so the runner learns of a
completed boot the same way it learns of a crash, and a ping that blocks (libvirt re-syncs an
agent for up to 5 s after a timeout) never delays acting on a crash.
"""

from __future__ import annotations

import logging
import threading

from compatlab.errors import CompatlabError
from compatlab.guest.channel import Channel
from compatlab.lab.machine import Machine

__all__ = ["PING_INTERVAL", "ReadinessProbe"]

log = logging.getLogger("compatlab.guest")

PING_INTERVAL = 0.2  # a ping to an agent that is not there yet returns at once


class ReadinessProbe:
    """Pings the guest channel on its own thread while a boot is in progress.

    A boot counts as complete only when the channel answers after the last reset; the answer
    goes onto the domain's event queue as ``agent_ready``, so the runner learns of it the same
    way it learns of a crash -- and a ping that blocks never delays acting on a crash.

    Every :meth:`arm` starts a new generation: an answer to a ping sent before it (the old boot
    answering just before its reset) is dropped, never taken as the new boot's. The thread
    survives any exception a channel raises; it ends only with :meth:`stop`.
    """

    def __init__(self, channel: Channel, machine: Machine) -> None:
        self.channel = channel
        self.machine = machine
        self._lock = threading.Lock()
        self._generation = 0
        self._armed = threading.Event()
        self._stopped = threading.Event()
        self._poked = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="compatlab-probe", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        """A new boot is in progress: ping until it answers."""
        with self._lock:
            self._generation += 1
            self._armed.set()
        self._poked.set()

    def disarm(self) -> None:
        with self._lock:
            self._generation += 1
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
                self._once()
            except Exception:
                log.exception("readiness probe: ping failed unexpectedly; probing on")
                self._poked.wait(PING_INTERVAL)
                self._poked.clear()

    def _once(self) -> None:
        with self._lock:
            generation = self._generation
        try:
            answered = self.channel.ping(2.0)
        except CompatlabError:
            answered = False
        with self._lock:
            current = answered and self._armed.is_set() and generation == self._generation
            if current:
                self._armed.clear()
                # Recorded under the probe's lock: a reset's arm() cannot slip in between.
                self.machine.watch.record("channel", "agent_ready", f"{self.channel.name} answered")
        if not answered:
            self._poked.wait(PING_INTERVAL)
            self._poked.clear()
