"""A cell's observations, phase by phase -> one verdict, its attribution, one line of reason. Pure.

The rules, in the order they apply (the README's "Verdicts" and "Attribution" sections state
them word for word):

1. One run's verdict is the most severe failure it saw, by :data:`~compatlab.model.SEVERITY`:
   boot_loop > crash > hang > install_failed > check_failed > rollback_failed > infra_error >
   pass. A boot loop absorbs the crashes that made it (it keeps the first bugcheck). A guest that
   booted but whose channel never answered is ``check_failed`` ("unreachable"), never ``hang``.
2. A failure in a phase before the candidate was installed (provision, products, baseline) is
   the configuration's: the verdict is that failure, attributed to ``baseline``. The candidate
   is never installed on a configuration that already failed.
3. A crash, boot loop or hang during rollback is ``rollback_failed``, with its bugcheck kept.
4. ``infra_error`` is attributed to ``infra``. ``install_failed`` and ``rollback_failed`` are the
   candidate's own commands failing: ``candidate``.
5. Any other failure is compared with the reruns of the cell without the candidate, each judged
   on its whole run (its own phases before the candidate included):
   - a rerun that failed at least as severely: ``baseline``;
   - else, at least one rerun that ran: ``candidate``;
   - else (no rerun asked, or none could run): ``unconfirmed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from compatlab.model import Attribution, Bugcheck, CommandRecord, Phase, Verdict

__all__ = [
    "Decision",
    "Observations",
    "RunObservations",
    "bugcheck_text",
    "decide",
    "judge",
    "one_line",
]


@dataclass(frozen=True)
class Observations:
    """What one phase (or a whole run) saw. The default (nothing went wrong) judges as ``pass``.

    ``boot_loop``, ``hang`` and ``unreachable`` hold the watcher's evidence line when it decided
    them (:meth:`BootWatcher.observations` fills the boot fields; the runner adds the rest).
    """

    boots_completed: int = 0
    crashes: int = 0
    bugcheck: Bugcheck | None = None
    boot_loop: str | None = None
    hang: str | None = None
    unreachable: str | None = None  # the guest booted, its channel never answered
    install_failure: CommandRecord | None = None  # the installer that failed
    failed_checks: tuple[str, ...] = ()
    rollback_failure: str | None = None
    infra_error: str | None = None
    activity: str | None = None  # what the domain stats said when a boot timed out

    def __add__(self, other: Observations) -> Observations:
        """Both together: counts add up, the first of each finding is kept."""
        return Observations(
            boots_completed=self.boots_completed + other.boots_completed,
            crashes=self.crashes + other.crashes,
            bugcheck=self.bugcheck or other.bugcheck,
            boot_loop=self.boot_loop or other.boot_loop,
            hang=self.hang or other.hang,
            unreachable=self.unreachable or other.unreachable,
            install_failure=self.install_failure or other.install_failure,
            failed_checks=self.failed_checks + other.failed_checks,
            rollback_failure=self.rollback_failure or other.rollback_failure,
            infra_error=self.infra_error or other.infra_error,
            activity=self.activity or other.activity,
        )

    @property
    def failed(self) -> bool:
        return judge(self)[0] is not Verdict.PASS


@dataclass(frozen=True)
class RunObservations:
    """One VM's run of a cell, phase by phase, in the order the phases ran."""

    phases: Mapping[Phase, Observations] = field(default_factory=dict)
    with_candidate: bool = True

    def before_candidate(self) -> Observations:
        return _sum(o for p, o in self.phases.items() if p.before_candidate)

    def with_it(self) -> Observations:
        """From the candidate's install on; a failure during rollback is a rollback failure."""
        after = _sum(
            o for p, o in self.phases.items() if not p.before_candidate and p is not Phase.ROLLBACK
        )
        rollback = self.phases.get(Phase.ROLLBACK)
        return after + _as_rollback_failure(rollback) if rollback else after

    def whole(self) -> Observations:
        return self.before_candidate() + self.with_it()

    def failed_phase(self) -> Phase | None:
        """The first phase that saw a failure."""
        return next((p for p, o in self.phases.items() if o.failed), None)


@dataclass(frozen=True)
class Decision:
    """A cell's verdict, who it belongs to, one line of evidence, and the bugcheck kept."""

    verdict: Verdict
    attribution: Attribution | None
    reason: str
    bugcheck: Bugcheck | None = None


def judge(obs: Observations) -> tuple[Verdict, str]:
    """The most severe verdict one run's (or phase's) observations support, with its evidence."""
    present: list[tuple[Verdict, str]] = []
    bug = f"; bugcheck {bugcheck_text(obs.bugcheck)}" if obs.bugcheck else ""
    if obs.boot_loop is not None:
        present.append((Verdict.BOOT_LOOP, f"boot loop: {obs.boot_loop}{bug}"))
    elif obs.crashes:
        after = f", {obs.boots_completed} boots completed" if obs.boots_completed else ""
        what = f"bugcheck {bugcheck_text(obs.bugcheck)}" if obs.bugcheck else "no bugcheck code"
        present.append((Verdict.CRASH, f"crash: {what} ({_count(obs.crashes, 'crash')}{after})"))
    activity = f"; {obs.activity}" if obs.activity else ""
    if obs.hang is not None:
        present.append((Verdict.HANG, f"hang: {obs.hang}{activity}"))
    if obs.install_failure is not None:
        cmd = obs.install_failure
        code = "did not exit" if cmd.exit_code is None else f"exited {cmd.exit_code}"
        meaning = f" ({cmd.meaning})" if cmd.meaning else ""
        command = one_line(cmd.command, 80)
        present.append((Verdict.INSTALL_FAILED, f"install failed: `{command}` {code}{meaning}"))
    if obs.unreachable is not None:
        present.append((Verdict.CHECK_FAILED, f"unreachable: {obs.unreachable}{activity}"))
    if obs.failed_checks:
        present.append((Verdict.CHECK_FAILED, f"checks failed: {', '.join(obs.failed_checks)}"))
    if obs.rollback_failure is not None:
        present.append((Verdict.ROLLBACK_FAILED, f"rollback failed: {obs.rollback_failure}"))
    if obs.infra_error is not None:
        present.append((Verdict.INFRA_ERROR, f"infra error: {obs.infra_error}"))
    if not present:
        return Verdict.PASS, f"pass: {_count(obs.boots_completed, 'boot')} completed, no crash"
    return min(present, key=lambda item: item[0].severity)


def decide(run: RunObservations, *, reruns: Sequence[RunObservations | str] = ()) -> Decision:
    """One verdict for a cell, with attribution and a one-line reason (module docstring).

    ``reruns``: each baseline rerun without the candidate, or the reason it could not run.
    """
    before = run.before_candidate()
    before_verdict, before_evidence = judge(before)
    if before_verdict is not Verdict.PASS:
        if before_verdict is Verdict.INFRA_ERROR:
            return _infra(before_evidence)
        phase = run.failed_phase()
        where = f" (phase {phase})" if phase else ""
        reason = f"{before_evidence} -> baseline: before the candidate was installed{where}"
        return Decision(
            before_verdict,
            Attribution.BASELINE,
            one_line(reason, 300),
            _kept(before, before_verdict),
        )
    after = run.with_it()
    verdict, evidence = judge(after)
    if verdict is Verdict.PASS:
        return Decision(verdict, None, one_line(evidence, 300), None)
    if verdict is Verdict.INFRA_ERROR:
        return _infra(evidence)
    attribution, why = _attribute(verdict, reruns)
    return Decision(
        verdict, attribution, one_line(f"{evidence} -> {why}", 300), _kept(after, verdict)
    )


def _attribute(
    verdict: Verdict, reruns: Sequence[RunObservations | str]
) -> tuple[Attribution, str]:
    if verdict is Verdict.INSTALL_FAILED:
        return Attribution.CANDIDATE, "candidate: its installer failed"
    if verdict is Verdict.ROLLBACK_FAILED:
        return Attribution.CANDIDATE, "candidate: its rollback failed"
    ran: list[Verdict] = []
    lost: list[str] = []
    for rerun in reruns:
        if isinstance(rerun, str):
            lost.append(rerun)
            continue
        again, _ = judge(rerun.whole())
        if again is Verdict.INFRA_ERROR:
            lost.append(rerun.whole().infra_error or "the lab failed")
            continue
        if again is not Verdict.PASS and again.severity <= verdict.severity:
            n = len(ran) + len(lost) + 1
            return Attribution.BASELINE, f"baseline: rerun {n} without the candidate: {again}"
        ran.append(again)
    note = f"; {_count(len(lost), 'rerun')} could not run" if lost else ""
    if ran:
        worst = min(ran, key=lambda v: v.severity)
        if worst is Verdict.PASS:
            clean = f"{_count(len(ran), 'rerun')} without the candidate passed"
            return Attribution.CANDIDATE, f"candidate: {clean}{note}"
        return Attribution.CANDIDATE, f"candidate: without it only {worst}, with it {verdict}{note}"
    if lost:
        return (
            Attribution.UNCONFIRMED,
            f"unconfirmed: no rerun without the candidate ran ({lost[0]})",
        )
    return Attribution.UNCONFIRMED, "unconfirmed: no rerun without the candidate was made"


def _as_rollback_failure(obs: Observations) -> Observations:
    """A crash, boot loop, hang or dead channel during rollback: the rollback failed."""
    guest, evidence = judge(
        Observations(
            crashes=obs.crashes,
            bugcheck=obs.bugcheck,
            boot_loop=obs.boot_loop,
            hang=obs.hang,
            unreachable=obs.unreachable,
        )
    )
    if guest is Verdict.PASS:
        return obs
    failure = f"{evidence}" + (f"; {obs.rollback_failure}" if obs.rollback_failure else "")
    return Observations(
        boots_completed=obs.boots_completed,
        bugcheck=obs.bugcheck,
        rollback_failure=failure,
        failed_checks=obs.failed_checks,
        infra_error=obs.infra_error,
    )


def _infra(evidence: str) -> Decision:
    return Decision(
        Verdict.INFRA_ERROR,
        Attribution.INFRA,
        one_line(f"{evidence} -> infra: the lab failed", 300),
    )


def _kept(obs: Observations, verdict: Verdict) -> Bugcheck | None:
    keeps = (Verdict.CRASH, Verdict.BOOT_LOOP, Verdict.ROLLBACK_FAILED)
    return obs.bugcheck if verdict in keeps else None


def _sum(parts: Iterable[Observations]) -> Observations:
    total = Observations()
    for part in parts:
        total = total + part
    return total


def bugcheck_text(bugcheck: Bugcheck) -> str:
    """``0x50 PAGE_FAULT_IN_NONPAGED_AREA``: code and name, as reasons write them."""
    return f"{bugcheck.code} {bugcheck.name}".strip()


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("sh") else "s"))


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
