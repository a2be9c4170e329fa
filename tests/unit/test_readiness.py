"""The readiness probe: answers from before a reset are dropped; the thread outlives any error."""

from __future__ import annotations

import threading
from typing import Any

from compatlab.guest.readiness import ReadinessProbe
from compatlab.lab.events import DomainWatch


class _Machine:
    def __init__(self) -> None:
        self.watch = DomainWatch("probe-test")


class _Channel:
    name = "agent"

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.in_ping = threading.Event()
        self.release = threading.Event()

    def ping(self, timeout: float) -> bool:
        answer = self.answers.pop(0) if self.answers else False
        if answer == "block-then-true":
            self.in_ping.set()
            self.release.wait(5)
            return True
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)


def test_an_answer_to_a_ping_sent_before_a_reset_is_not_the_new_boots() -> None:
    """The old boot answered just before it went down; the reset re-armed the probe while the
    answer was on its way. The old probe recorded it as the new boot's completion."""
    machine, channel = _Machine(), _Channel(["block-then-true"])
    probe = ReadinessProbe(channel, machine)  # type: ignore[arg-type]
    try:
        probe.arm()
        assert channel.in_ping.wait(5)
        probe.arm()  # the reset of the next boot
        channel.release.set()
        assert machine.watch.wait({"agent_ready"}, timeout=0.8) is None
    finally:
        probe.stop()


def test_the_probe_survives_an_unexpected_exception_and_answers_later() -> None:
    machine = _Machine()
    channel = _Channel([RuntimeError("a bug in a channel"), ValueError("another"), True])
    probe = ReadinessProbe(channel, machine)  # type: ignore[arg-type]
    try:
        probe.arm()
        assert machine.watch.wait({"agent_ready"}, timeout=5) is not None
    finally:
        probe.stop()
