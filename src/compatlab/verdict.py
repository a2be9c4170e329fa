"""Observations -> verdict + attribution. Pure: no clock, no I/O, no libvirt.

Two pieces:

* :class:`BootWatcher` is fed a cell's :class:`~compatlab.model.Event` s one at a time (libvirt
  lifecycle events, the lab's ``agent_ready`` / ``power_cycle``, and synthetic ``tick`` events that
  carry the current time) and answers, as soon as each is decidable: a boot completed, a boot
  ended in a crash or a reset, the guest is in a boot loop, a boot hung. It has no clock of its
  own -- a hang is decided by the first event or tick past the deadline -- so a recorded timeline
  replays to the same answers in milliseconds.
* :func:`decide` turns the observations of a whole cell (the candidate phase, optionally the
  pre-install boots and a baseline rerun) into one :class:`Decision`: verdict, attribution and a
  one-line reason.

Crash versus boot loop
----------------------
``crash`` outranks ``boot_loop`` in the verdict order, but a guest that crashes at *every* boot is
worse than one that crashed once and came back: it never comes back. The rule:

* a boot loop -- ``loop_threshold`` (default 3) crashes or resets in a row without a completed
  boot in between -- is the verdict ``boot_loop``, **whatever the resets were made of**; if any of
  them was a crash its bugcheck is kept on the decision (so the report says "boot_loop, 0x50");
* one or more crashes that did *not* add up to a boot loop (the guest booted again in between, or
  the scenario ended first) are the verdict ``crash``;
* every other failure follows the DESIGN order: crash > boot_loop > hang > install_failed >
  check_failed > rollback_failed > infra_error > pass.

So the July 2024 case (bugcheck 0x50 at every boot) is ``boot_loop`` with bugcheck 0x50, decided
at the third crash, and a sensor that bugchecks once and then boots cleanly is ``crash``.

Attribution
-----------
``infra`` for ``infra_error``; ``None`` for ``pass``. Otherwise the failure is ``baseline`` when
the guest failed *at least as badly* without the candidate -- in the same run before the
candidate was installed, or in the baseline rerun -- and ``candidate`` otherwise. A rerun that
failed less badly (say, a check without the update, a boot loop with it) leaves the failure on the
candidate: the update made it worse. Without a rerun, a failure seen only after the candidate was
installed is ``candidate`` when the pre-install boot passed, and the reason says that no rerun
confirmed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from compatlab.bugcheck import parse_guest_panicked
from compatlab.model import Attribution, Boot, BootOutcome, Bugcheck, CommandRecord, Event, Verdict

__all__ = [
    "BootPolicy",
    "BootWatcher",
    "Decision",
    "Finding",
    "FindingKind",
    "Observations",
    "bugcheck_of",
    "decide",
    "judge",
]

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


FindingKind = Literal["boot_completed", "crash", "reset", "boot_loop", "hang"]


@dataclass(frozen=True)
class Finding:
    """Something the watcher decided, at the time ``t`` of the event that made it decidable.

    ``boot_loop`` and ``hang`` are final: the watcher decides nothing after them. ``crash`` and
    ``reset`` are not: the lab restarts the guest (or the guest itself does) and watching goes on.
    """

    kind: FindingKind
    t: float
    detail: str
    boot: Boot | None = None
    bugcheck: Bugcheck | None = None

    @property
    def final(self) -> bool:
        return self.kind in ("boot_loop", "hang")


class _State(Enum):
    OFF = "off"  # not running: before 'started', or after a clean power-off
    BOOTING = "booting"  # running since a start or reset; the channel has not answered yet
    UP = "up"  # the channel answered after the last reset: the boot completed
    DOWN = "down"  # a crash or watchdog ended the boot; waiting for the guest to come back


class BootWatcher:
    """State machine over one cell's events: boots completed, crashes, boot loop, hang.

    Feed every event in arrival order with :meth:`feed`, plus ``tick`` events whenever no event
    arrives for a while (:meth:`deadline` says when the next one matters). A crash is data: it
    comes back as a ``crash`` :class:`Finding`, never as an exception. The guest may come back from
    a crash or reset in three ways, all handled: the lab power-cycles it (``crashed``,
    ``power_cycle``, ``stopped``, ``started``), libvirt restarts it (``on_crash=restart``:
    ``crashed``, ``reboot``), or it resets itself (a watchdog or triple fault: ``reboot`` with no
    crash, possibly after a ``watchdog`` event).

    A ``reboot`` after a *completed* boot is an ordinary reboot (the scenario asks for those) and
    is not counted as a failure; every crash is, and so is any reset before the boot completed.

    While the guest is down after a crash the watcher sets no deadline: bringing it back is the
    lab's move (it sees the ``crash`` finding and power-cycles), not the guest's. The next boot's
    timeout runs from its ``started`` or ``reboot`` event.
    """

    def __init__(self, policy: BootPolicy | None = None, *, phase: str = "", first_boot: int = 1):
        self.policy = policy or BootPolicy()
        #: Label for the boots recorded from now on ("baseline", "candidate", "rollback").
        self.phase = phase
        self._state = _State.OFF
        self._next_n = first_boot
        self._start: float | None = None  # when the boot in progress started
        self._boots: list[Boot] = []
        self._findings: list[Finding] = []
        self._failures: list[str] = []  # failed boots since the last completed one, by outcome
        self._crashes = 0
        self._bugchecks: list[Bugcheck] = []
        self._pending_bugcheck: Bugcheck | None = None  # seen before its crash event
        self._outcome: Finding | None = None

    # -- answers --------------------------------------------------------------------------------

    @property
    def outcome(self) -> Finding | None:
        """The final finding (``boot_loop`` or ``hang``), or None while undecided."""
        return self._outcome

    @property
    def boots(self) -> tuple[Boot, ...]:
        return tuple(self._boots)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._findings)

    @property
    def crashes(self) -> int:
        return self._crashes

    @property
    def bugcheck(self) -> Bugcheck | None:
        """The first bugcheck seen: the root cause, when later crashes repeat it."""
        return self._bugchecks[0] if self._bugchecks else None

    @property
    def is_up(self) -> bool:
        """True while the last boot has completed and nothing has reset the guest since."""
        return self._state is _State.UP and self._outcome is None

    def deadline(self) -> float | None:
        """When the boot in progress will be declared hung; None when no boot is in progress."""
        if self._state is _State.BOOTING and self._start is not None and self._outcome is None:
            return self._start + self.policy.boot_timeout
        return None

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
            boot = self._close("hang", event.t)
            detail = (
                f"boot {boot.n} not complete {boot.seconds:.1f} s after it started "
                f"(timeout {self.policy.boot_timeout:g} s)"
            )
            return self._final(Finding("hang", event.t, detail, boot))
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
            # Before the boot completed: a reset (triple fault, firmware). From UP: an ordinary
            # reboot. From DOWN: the way back after a crash (on_crash=restart) or a watchdog.
            found = self._fail(event, "reset") if state is _State.BOOTING else []
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
            self._begin(event.t)
        elif kind == "agent_ready" and state is _State.BOOTING:
            boot = self._close("completed", event.t)
            self._state = _State.UP
            self._failures.clear()
            finding = Finding(
                "boot_completed", event.t, f"boot {boot.n} completed in {boot.seconds:.1f} s", boot
            )
            self._findings.append(finding)
            return [finding]
        # 'tick', 'power_cycle' (its stopped/started follow), a stale 'agent_ready', and kinds
        # the watcher does not judge only advance time, which the deadline check has used.
        return []

    # -- helpers --------------------------------------------------------------------------------

    def _fail(self, event: Event, what: str) -> list[Finding]:
        """A crash, watchdog, reset or power-off: ends the boot in progress, counts to a loop."""
        bugcheck = None
        if what == "crash":
            self._crashes += 1
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
            detail += f" (bugcheck {_bugcheck_text(bugcheck)})"
        self._state = _State.OFF if what == "power-off" else _State.DOWN
        self._failures.append(what)
        kind: FindingKind = "crash" if what == "crash" else "reset"
        found = [Finding(kind, event.t, detail, boot, bugcheck)]
        self._findings.append(found[0])
        if len(self._failures) >= self.policy.loop_threshold:
            counts = Counter(self._failures).most_common()
            parts = ", ".join(f"{n} {_plural(w, n)}" for w, n in counts)
            detail = f"{len(self._failures)} failed boots in a row ({parts}), none completed"
            found += self._final(Finding("boot_loop", event.t, detail, None, self.bugcheck))
        return found

    def _begin(self, t: float) -> None:
        self._state = _State.BOOTING
        self._start = t

    def _close(self, outcome: BootOutcome, t: float) -> Boot:
        seconds = max(t - self._start, 0.0) if self._start is not None else 0.0
        boot = Boot(n=self._next_n, outcome=outcome, seconds=seconds, phase=self.phase)
        self._next_n += 1
        self._boots.append(boot)
        self._start = None
        return boot

    def _note_bugcheck(self, bugcheck: Bugcheck) -> None:
        if not self._bugchecks or self._bugchecks[-1] != bugcheck:
            self._bugchecks.append(bugcheck)
        if self._state is not _State.DOWN:
            # Arrived before its crash event (the domain log can beat the lifecycle event).
            self._pending_bugcheck = bugcheck

    def _final(self, finding: Finding) -> list[Finding]:
        self._outcome = finding
        self._findings.append(finding)
        return [finding]

    def observations(self) -> Observations:
        """What this watcher saw, as :func:`decide` takes it (boot fields only)."""
        loop = self._outcome if self._outcome and self._outcome.kind == "boot_loop" else None
        hang = self._outcome if self._outcome and self._outcome.kind == "hang" else None
        return Observations(
            boots_completed=sum(1 for b in self._boots if b.outcome == "completed"),
            crashes=self._crashes,
            bugcheck=self.bugcheck,
            boot_loop=loop.detail if loop else None,
            hang=hang.detail if hang else None,
        )


def bugcheck_of(event: Event) -> Bugcheck | None:
    """A bugcheck the event carries: under the shared keys, or in the lab's raw QMP payload."""
    found = Bugcheck.from_event_data(event.data)
    if found is None and event.kind == "guest_panicked" and "payload" in event.data:
        found = parse_guest_panicked(event.data["payload"])  # None for a Linux pvpanic
    return found


def _plural(kind: str, n: int) -> str:
    word = {"crash": "crash", "reset": "reset", "watchdog": "watchdog reset"}.get(kind, kind)
    if n == 1:
        return word
    return word + ("es" if word.endswith("sh") else "s")


def _bugcheck_text(bugcheck: Bugcheck) -> str:
    return f"{bugcheck.code} {bugcheck.name}".strip()


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- the whole cell -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observations:
    """What one run of a cell saw. The default (nothing went wrong) judges as ``pass``.

    ``boot_loop`` and ``hang`` hold the watcher's evidence line when it decided them
    (:meth:`BootWatcher.observations` fills the boot fields; the scenario adds the rest with
    :func:`dataclasses.replace`).
    """

    boots_completed: int = 0
    crashes: int = 0
    bugcheck: Bugcheck | None = None
    boot_loop: str | None = None
    hang: str | None = None
    install_failure: CommandRecord | None = None  # the installer that failed
    failed_checks: tuple[str, ...] = ()
    rollback_failure: str | None = None
    infra_error: str | None = None


@dataclass(frozen=True)
class Decision:
    """A cell's verdict, who it belongs to, one line of evidence, and the bugcheck kept."""

    verdict: Verdict
    attribution: Attribution | None
    reason: str
    bugcheck: Bugcheck | None = None


def judge(obs: Observations) -> tuple[Verdict, str]:
    """The highest-precedence verdict one run's observations support, with its evidence.

    A boot loop absorbs the crashes that made it (see the module docstring).
    """
    present: list[tuple[Verdict, str]] = []
    bug = f"; bugcheck {_bugcheck_text(obs.bugcheck)}" if obs.bugcheck else ""
    if obs.boot_loop is not None:
        present.append((Verdict.BOOT_LOOP, f"boot loop: {obs.boot_loop}{bug}"))
    elif obs.crashes:
        after = f", {obs.boots_completed} boots completed" if obs.boots_completed else ""
        what = f"bugcheck {_bugcheck_text(obs.bugcheck)}" if obs.bugcheck else "no bugcheck code"
        present.append((Verdict.CRASH, f"crash: {what} ({_count(obs.crashes, 'crash')}{after})"))
    if obs.hang is not None:
        present.append((Verdict.HANG, f"hang: {obs.hang}"))
    if obs.install_failure is not None:
        cmd = obs.install_failure
        code = "did not exit" if cmd.exit_code is None else f"exited {cmd.exit_code}"
        meaning = f" ({cmd.meaning})" if cmd.meaning else ""
        present.append(
            (
                Verdict.INSTALL_FAILED,
                f"install failed: `{_one_line(cmd.command, 80)}` {code}{meaning}",
            )
        )
    if obs.failed_checks:
        present.append((Verdict.CHECK_FAILED, f"checks failed: {', '.join(obs.failed_checks)}"))
    if obs.rollback_failure is not None:
        present.append((Verdict.ROLLBACK_FAILED, f"rollback failed: {obs.rollback_failure}"))
    if obs.infra_error is not None:
        present.append((Verdict.INFRA_ERROR, f"infra error: {obs.infra_error}"))
    if not present:
        return Verdict.PASS, f"pass: {_count(obs.boots_completed, 'boot')} completed, no crash"
    return min(present, key=lambda item: item[0].precedence)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("sh") else "s"))


def _at_least_as_bad(other: Verdict, verdict: Verdict) -> bool:
    """``other`` is a real failure (not the lab's) no less severe than ``verdict``."""
    return (
        other.is_failure
        and other is not Verdict.INFRA_ERROR
        and other.precedence <= verdict.precedence
    )


def decide(
    candidate: Observations,
    *,
    pre_install: Observations | None = None,
    rerun: Observations | None = None,
) -> Decision:
    """One verdict for a cell, with attribution and a one-line reason.

    ``candidate``: from installing the candidate on. ``pre_install``: the same run's boots before
    the candidate was installed (the baseline boot). ``rerun``: the baseline rerun -- the same
    cell run again without the candidate (``baseline: on_failure``). The cell's verdict is the
    worse of the two phases of the run; attribution follows the module docstring.
    """
    verdict, evidence = judge(candidate)
    bugcheck = candidate.bugcheck
    before, before_evidence = judge(pre_install) if pre_install else (None, "")
    if before is not None and before.precedence < verdict.precedence:
        verdict, evidence = before, before_evidence
        bugcheck = pre_install.bugcheck if pre_install else None
    if verdict is Verdict.PASS:
        return Decision(verdict, None, _one_line(evidence, 300), None)
    keep = bugcheck if verdict in (Verdict.CRASH, Verdict.BOOT_LOOP) else None
    if verdict is Verdict.INFRA_ERROR:
        reason = _one_line(f"{evidence} -> infra: the lab failed", 300)
        return Decision(verdict, Attribution.INFRA, reason, None)
    attribution, why = _attribute(verdict, before, rerun)
    return Decision(verdict, attribution, _one_line(f"{evidence} -> {why}", 300), keep)


def _attribute(
    verdict: Verdict, before: Verdict | None, rerun: Observations | None
) -> tuple[Attribution, str]:
    if before is not None and _at_least_as_bad(before, verdict):
        return (
            Attribution.BASELINE,
            f"baseline: already {before} before the candidate was installed",
        )
    note = ""
    if rerun is not None:
        again, _ = judge(rerun)
        if _at_least_as_bad(again, verdict):
            return Attribution.BASELINE, f"baseline: the rerun without the candidate: {again}"
        if again is Verdict.PASS:
            return Attribution.CANDIDATE, "candidate: the rerun without the candidate passed"
        if again is not Verdict.INFRA_ERROR:
            return (
                Attribution.CANDIDATE,
                f"candidate: without it only {again}, with it {verdict}",
            )
        note = "; the baseline rerun failed in the lab"
    if before is Verdict.PASS:
        return (
            Attribution.CANDIDATE,
            f"candidate: the pre-install boot passed (not confirmed by a baseline rerun{note})",
        )
    if before is not None and before is not Verdict.INFRA_ERROR:
        return Attribution.CANDIDATE, f"candidate: before it only {before}{note}"
    return Attribution.CANDIDATE, f"candidate: seen after install, no baseline evidence{note}"
