"""The boot watcher: a cell's events in, boots, crashes, boot loops and hangs out. Pure.

:class:`BootWatcher` is fed a VM's :class:`~compatlab.model.Event` s one at a time (libvirt
lifecycle events, the lab's ``agent_ready`` / ``power_cycle``, the serial console's
``boot_marker``, and synthetic ``tick`` events that carry the current time) and answers, as soon
as each is decidable: a boot completed, a boot ended in a crash or a reset, the guest is in a
boot loop, a boot hung, the guest booted but its channel never answered. It has no clock of its
own -- a hang is decided by the first event or tick past the deadline -- so a recorded timeline
replays to the same answers in milliseconds.

One watcher follows a VM through all its phases (the runner sets :attr:`BootWatcher.phase`), so a
crash while the candidate's installer runs and the crashes at the boots after it add up to one
boot loop; every finding and boot carries the phase it happened in, and
:meth:`BootWatcher.observations` answers per phase.

Boot loop: ``loop_threshold`` (default 3) crashes or resets in a row without a completed boot in
between, whatever they were made of; the first bugcheck is kept with it. Resets the candidate
declared (``reboots: N``, :meth:`BootWatcher.allow_restarts`) are restarts, not failures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from compatlab.bugcheck import parse_guest_panicked
from compatlab.model import Boot, BootKind, BootOutcome, Bugcheck, Event
from compatlab.verdict.decide import Observations, bugcheck_text, one_line

__all__ = ["BootPolicy", "BootWatcher", "Finding", "FindingKind", "bugcheck_of"]

# Event kinds a crash arrives as: libvirt lifecycle CRASHED (detail 'panicked') and QMP's
# GUEST_PANICKED. Both may arrive for one crash; the second is folded into the first.
CRASH_KINDS = frozenset({"crashed", "guest_panicked"})
# Watchdog actions (libvirt's words) that end the boot; 'pause', 'none', 'debug' leave the guest
# where it is (a paused guest then runs into the boot timeout), 'inject-nmi' bugchecks it.
_RESETTING_WATCHDOG = frozenset({"reset", "poweroff", "shutdown", ""})


@dataclass(frozen=True)
class BootPolicy:
    """How long a boot may take and how many failed boots in a row make a boot loop."""

    boot_timeout: float = 300.0
    loop_threshold: int = 3
    # One guest reboot can reach libvirt as two REBOOT events (measured here: 35-40 ms apart,
    # QEMU 7.2 with SeaBIOS and OVMF). A reset this soon after the last one is the same reset;
    # no firmware gets a guest to a second reset that fast, even under KVM.
    reset_debounce: float = 1.0

    def __post_init__(self) -> None:
        if self.boot_timeout <= 0:
            raise ValueError(f"boot_timeout must be positive, not {self.boot_timeout}")
        if self.loop_threshold < 1:
            raise ValueError(f"loop_threshold must be at least 1, not {self.loop_threshold}")


FindingKind = Literal[
    "boot_completed", "crash", "reset", "restart", "boot_loop", "hang", "unreachable"
]


@dataclass(frozen=True)
class Finding:
    """Something the watcher decided, at the time ``t`` of the event that made it decidable.

    ``boot_loop``, ``hang`` and ``unreachable`` (the guest booted, its channel never answered)
    are final: the watcher decides nothing after them. ``crash`` and ``reset`` are not: the lab
    restarts the guest (or the guest itself does) and watching goes on. ``restart`` is a reset
    the candidate declared; it is no failure.
    """

    kind: FindingKind
    t: float
    detail: str
    boot: Boot | None = None
    bugcheck: Bugcheck | None = None
    phase: str = ""

    @property
    def final(self) -> bool:
        return self.kind in ("boot_loop", "hang", "unreachable")

    @property
    def failure(self) -> bool:
        """A crash or a final finding: the phase it happened in has failed.

        A reset before a boot completed (a watchdog, a triple fault) is not one by itself: the
        boot starts over and the reset counts towards a boot loop, which is.
        """
        return self.kind == "crash" or self.final


class _State(Enum):
    OFF = "off"  # not running: before 'started', or after a clean power-off
    BOOTING = "booting"  # running since a start or reset; the channel has not answered yet
    UP = "up"  # the channel answered after the last reset: the boot completed
    DOWN = "down"  # a crash or watchdog ended the boot; waiting for the guest to come back


class BootWatcher:
    """State machine over one VM's events: boots completed, crashes, boot loop, hang.

    Feed every event in arrival order with :meth:`feed`, plus ``tick`` events whenever no event
    arrives for a while (:meth:`deadline` says when the next one matters). A crash is data: it
    comes back as a ``crash`` :class:`Finding`, never as an exception. The guest may come back from
    a crash or reset in three ways, all handled: the lab power-cycles it (``crashed``,
    ``power_cycle``, ``stopped``, ``started``), libvirt restarts it (``on_crash=restart``:
    ``crashed``, ``reboot``), or it resets itself (a watchdog or triple fault: ``reboot`` with no
    crash, possibly after a ``watchdog`` event).

    A ``reboot`` after a *completed* boot is an ordinary reboot (the scenario asks for those) and
    is not counted as a failure; every crash is, and so is any reset before the boot completed --
    except the resets :meth:`allow_restarts` declared.

    A boot that does not complete within ``boot_timeout`` is a ``hang`` -- unless a
    ``boot_marker`` (the serial console's boot-complete line) arrived during it: then the guest
    is up and only its channel is dead, which is the final finding ``unreachable``.

    While the guest is down after a crash the watcher sets no deadline: bringing it back is the
    lab's move (it sees the ``crash`` finding and power-cycles), not the guest's. The next boot's
    timeout runs from its ``started`` or ``reboot`` event.
    """

    def __init__(self, policy: BootPolicy | None = None, *, phase: str = "", first_boot: int = 1):
        self.policy = policy or BootPolicy()
        #: The phase findings and boots are recorded under from now on (a Phase value).
        self.phase = phase
        self._state = _State.OFF
        self._next_n = first_boot
        self._start: float | None = None  # when the boot in progress started
        self._kind: BootKind = "boot"  # of the boot in progress: "restore" from a saved state
        self._marker: Event | None = None  # the boot-complete line of the boot in progress
        self._boots: list[Boot] = []
        self._findings: list[Finding] = []
        self._failures: list[str] = []  # failed boots since the last completed one, by outcome
        self._bugchecks: list[tuple[str, Bugcheck]] = []  # (phase, bugcheck), in order seen
        self._pending_bugcheck: Bugcheck | None = None  # seen before its crash event
        self._restarts_allowed = 0
        self._outcome: Finding | None = None

    # -- answers --------------------------------------------------------------------------------

    @property
    def outcome(self) -> Finding | None:
        """The final finding (``boot_loop``, ``hang``, ``unreachable``), or None while undecided."""
        return self._outcome

    @property
    def boots(self) -> tuple[Boot, ...]:
        return tuple(self._boots)

    def count_boot_in(self, n: int, phase: str) -> None:
        """Boot ``n`` belongs to ``phase``, not to the one it ended in: a VM started from a
        cached layer boots first in its provision, and that boot is its baseline boot."""
        self._boots = [replace(b, phase=phase) if b.n == n else b for b in self._boots]

    def carry_layer_boot(self, seconds: float, phase: str) -> None:
        """Record the cached layer's baseline boot (its builder's, ``seconds`` long) as this VM's
        boot 0 in ``phase``: a VM restored from the layer's memory state boots none of its own,
        and its candidate's boots are compared with that one."""
        boot = Boot(n=0, outcome="completed", seconds=seconds, phase=phase, kind="layer")
        self._boots.insert(0, boot)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._findings)

    @property
    def crashes(self) -> int:
        return sum(1 for f in self._findings if f.kind == "crash")

    @property
    def bugcheck(self) -> Bugcheck | None:
        """The first bugcheck seen: the root cause, when later crashes repeat it."""
        return self._bugchecks[0][1] if self._bugchecks else None

    @property
    def is_up(self) -> bool:
        """True while the last boot has completed and nothing has reset the guest since."""
        return self._state is _State.UP and self._outcome is None

    @property
    def is_booting(self) -> bool:
        """True while a boot is in progress (started or reset, not yet complete)."""
        return self._state is _State.BOOTING and self._outcome is None

    def deadline(self) -> float | None:
        """When the boot in progress will be declared hung; None when no boot is in progress."""
        if self._state is _State.BOOTING and self._start is not None and self._outcome is None:
            return self._start + self.policy.boot_timeout
        return None

    def allow_restarts(self, count: int) -> None:
        """The next ``count`` resets before a boot completes are the candidate's own restarts.

        Windows cumulative updates restart the machine by themselves while servicing; a
        candidate declares how often (``reboots: N``). More resets than that still count.
        """
        self._restarts_allowed = max(count, 0)

    # -- input ----------------------------------------------------------------------------------

    def feed_all(self, events: Iterable[Event]) -> list[Finding]:
        """Feed events in order; the findings they made decidable."""
        found: list[Finding] = []
        for event in events:
            found.extend(self.feed(event))
        return found

    def feed(self, event: Event) -> list[Finding]:
        """Feed one event; the findings it made decidable (usually none or one)."""
        if self._outcome is not None:
            return []  # decided: nothing, not even a late boot, changes a final answer
        deadline = self.deadline()
        if deadline is not None and event.t > deadline:
            # Checked on every event, not just ticks: a late event proves the deadline passed.
            return self._timed_out(event.t)
        carried = bugcheck_of(event)
        if carried is not None:
            self._note_bugcheck(carried)
        kind, state = event.kind, self._state
        if kind in CRASH_KINDS or (kind == "stopped" and event.detail == "crashed"):
            # In DOWN this is the same crash seen again (QMP and libvirt, then on_crash=destroy).
            return self._fail(event, "crash") if state is not _State.DOWN else []
        if kind == "watchdog" and event.detail in _RESETTING_WATCHDOG:
            return self._fail(event, "watchdog") if state is not _State.DOWN else []
        if kind == "reboot":
            if (
                state is _State.BOOTING
                and self._start is not None
                and event.t - self._start < self.policy.reset_debounce
            ):
                return []  # the same reset, reported twice
            # Before the boot completed: a reset (triple fault, firmware) or a declared restart.
            # From UP: an ordinary reboot. From DOWN: the way back after a crash or a watchdog.
            found: list[Finding] = []
            if state is _State.BOOTING:
                found = (
                    self._restart(event) if self._restarts_allowed else self._fail(event, "reset")
                )
            if self._outcome is None:
                self._begin(event.t)
            return found
        if kind in ("stopped", "shutdown"):
            if state is _State.BOOTING:
                return self._fail(event, "power-off")  # off before the boot completed
            if state is _State.UP:
                self._state = _State.OFF
            # In DOWN: the crashed guest destroyed before a power cycle; stay DOWN.
        elif kind == "started" and state is not _State.BOOTING:
            # A restore (detail 'restored') is watched like a boot: a crash, a hang or a dead
            # channel before the guest answers count the same; its seconds are the restore's.
            self._begin(event.t, kind="restore" if event.detail == "restored" else "boot")
        elif kind == "boot_marker" and state is _State.BOOTING and self._marker is None:
            self._marker = event
        elif kind == "agent_ready" and state is _State.BOOTING:
            boot = self._close("completed", event.t)
            self._state = _State.UP
            self._failures.clear()
            self._restarts_allowed = 0  # the candidate's restarts end with its first full boot
            detail = f"boot {boot.n} completed in {boot.seconds:.1f} s"
            return [self._found(Finding("boot_completed", event.t, detail, boot))]
        # 'tick', 'power_cycle' (its stopped/started follow), a stale 'agent_ready', and kinds
        # the watcher does not judge only advance time, which the deadline check has used.
        return []

    # -- helpers --------------------------------------------------------------------------------

    def _timed_out(self, t: float) -> list[Finding]:
        marker = self._marker
        boot = self._close("hang", t)
        if marker is not None:  # _begin forgets the marker, so this one is of this boot
            up = marker.t - (t - boot.seconds)
            detail = (
                f"boot {boot.n}: the guest finished booting ({one_line(marker.detail, 80)!r} "
                f"on the serial console {up:.1f} s in), but its channel did not answer within "
                f"{self.policy.boot_timeout:g} s"
            )
            return self._final(Finding("unreachable", t, detail, boot))
        detail = (
            f"boot {boot.n} not complete {boot.seconds:.1f} s after it started "
            f"(timeout {self.policy.boot_timeout:g} s)"
        )
        return self._final(Finding("hang", t, detail, boot))

    def _restart(self, event: Event) -> list[Finding]:
        self._restarts_allowed -= 1
        boot = self._close("restart", event.t)
        detail = f"boot {boot.n} restarted by the candidate after {boot.seconds:.1f} s (declared)"
        return [self._found(Finding("restart", event.t, detail, boot))]

    def _fail(self, event: Event, what: str) -> list[Finding]:
        """A crash, watchdog, reset or power-off: ends the boot in progress, counts to a loop."""
        bugcheck = None
        if what == "crash":
            bugcheck, self._pending_bugcheck = self._pending_bugcheck, None
        if self._state is _State.UP:
            # The boot had completed and stays recorded so; the failure still counts to a loop.
            boot = None
            detail = f"{what} after boot {self._next_n - 1} had completed"
        else:
            outcome: BootOutcome = "crash" if what == "crash" else "reset"
            boot = self._close("watchdog" if what == "watchdog" else outcome, event.t)
            detail = f"boot {boot.n} ended by a {what} after {boot.seconds:.1f} s"
        if bugcheck is not None:
            detail += f" (bugcheck {bugcheck_text(bugcheck)})"
        self._state = _State.OFF if what == "power-off" else _State.DOWN
        self._failures.append(what)
        kind: FindingKind = "crash" if what == "crash" else "reset"
        found = [self._found(Finding(kind, event.t, detail, boot, bugcheck))]
        if len(self._failures) >= self.policy.loop_threshold:
            counts = Counter(self._failures).most_common()
            parts = ", ".join(f"{n} {_plural(w, n)}" for w, n in counts)
            detail = f"{len(self._failures)} failed boots in a row ({parts}), none completed"
            found += self._final(Finding("boot_loop", event.t, detail, None, self.bugcheck))
        return found

    def _begin(self, t: float, *, kind: BootKind = "boot") -> None:
        self._state = _State.BOOTING
        self._start = t
        self._marker = None
        self._kind = kind

    def _close(self, outcome: BootOutcome, t: float) -> Boot:
        seconds = max(t - self._start, 0.0) if self._start is not None else 0.0
        boot = Boot(
            n=self._next_n,
            outcome=outcome,
            seconds=seconds,
            phase=self.phase,
            kind=self._kind,
        )
        self._next_n += 1
        self._boots.append(boot)
        self._start = None
        self._kind = "boot"
        return boot

    def _note_bugcheck(self, bugcheck: Bugcheck) -> None:
        if not self._bugchecks or self._bugchecks[-1][1] != bugcheck:
            self._bugchecks.append((self.phase, bugcheck))
        if self._state is not _State.DOWN:
            # Arrived before its crash event (the domain log can beat the lifecycle event).
            self._pending_bugcheck = bugcheck

    def _found(self, finding: Finding) -> Finding:
        finding = replace(finding, phase=self.phase)
        self._findings.append(finding)
        return finding

    def _final(self, finding: Finding) -> list[Finding]:
        self._outcome = self._found(finding)
        return [self._outcome]

    def observations(self, phases: Collection[str] | None = None) -> Observations:
        """What this watcher saw, as :func:`~compatlab.verdict.decide` takes it (boot fields).

        ``phases``: only what happened in these phases (None: all of them). A boot loop or hang
        belongs to the phase it was decided in, a bugcheck to the phase it was read in.
        """

        def mine(phase: str) -> bool:
            return phases is None or phase in phases

        outcome = self._outcome if self._outcome and mine(self._outcome.phase) else None
        bugchecks = [b for p, b in self._bugchecks if mine(p)]
        return Observations(
            boots_completed=sum(  # the layer's boot 0 is its builder's, not this VM's
                1
                for b in self._boots
                if b.outcome == "completed" and b.kind != "layer" and mine(b.phase)
            ),
            crashes=sum(1 for f in self._findings if f.kind == "crash" and mine(f.phase)),
            bugcheck=bugchecks[0] if bugchecks else None,
            boot_loop=outcome.detail if outcome and outcome.kind == "boot_loop" else None,
            hang=outcome.detail if outcome and outcome.kind == "hang" else None,
            unreachable=outcome.detail if outcome and outcome.kind == "unreachable" else None,
        )


def bugcheck_of(event: Event) -> Bugcheck | None:
    """A bugcheck the event carries: under the shared keys, or in the lab's raw QMP payload."""
    found = Bugcheck.from_event_data(event.data)
    if found is None and event.kind == "guest_panicked" and "payload" in event.data:
        found = parse_guest_panicked(event.data["payload"])  # None for a Linux pvpanic
        if found is not None:
            found = replace(found, source="hyperv-msr")
    return found


def _plural(kind: str, n: int) -> str:
    word = {"crash": "crash", "reset": "reset", "watchdog": "watchdog reset"}.get(kind, kind)
    if n == 1:
        return word
    return word + ("es" if word.endswith("sh") else "s")
