"""What one VM of a cell saw, phase by phase: the records ``decide`` and the report read.

A :class:`~compatlab.scenario.session.Session` fills a :class:`VMRecord` as it runs -- one
:class:`PhaseRecord` per phase, with what the runner saw besides the hypervisor's watcher
(a failed install, a check, a hang in shutdown, an unreachable channel) -- and, when it closes,
the watcher's findings, boots and timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from compatlab.cost import Window, phase_cost_json
from compatlab.errors import CompatlabError
from compatlab.model import Boot, CommandRecord, Event, Phase
from compatlab.verdict import Finding, Observations, RunObservations, judge

__all__ = ["PhaseRecord", "VMRecord", "describe"]


@dataclass
class PhaseRecord:
    """One phase of one VM: when it ran, and what the runner saw besides the watcher."""

    phase: Phase
    started: float
    ended: float | None = None
    extra: Observations = field(default_factory=Observations)
    # What the guest used in each bake of the phase (compatlab.cost): results.json's ``cost``.
    bakes: list[Window] = field(default_factory=list)

    def add(self, **changes: Any) -> None:
        self.extra = replace(self.extra, **changes)


@dataclass
class VMRecord:
    """Everything one VM of a cell saw, phase by phase: what ``decide`` and the report read."""

    label: str  # "attempt-1", "rerun-1", "attempt-1-layer"
    with_candidate: bool
    #: The VM built the cached pre-candidate layer its cell's VM (``part_of``) starts from.
    part_of: str | None = None
    #: A builder's baseline boot seconds, set when its layer was captured (None: it failed).
    layer_seconds: float | None = None
    phases: list[PhaseRecord] = field(default_factory=list)
    findings: tuple[Finding, ...] = ()
    observed: dict[Phase, Observations] = field(default_factory=dict)
    boots: list[Boot] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    commands: list[CommandRecord] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)

    def observations(self) -> RunObservations:
        return RunObservations(dict(self.observed), with_candidate=self.with_candidate)

    def guest_failed(self) -> bool:
        return any(o.failed for o in self.observed.values())

    def phases_json(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for record in self.phases:
            verdict, evidence = judge(self.observed.get(record.phase, Observations()))
            phase: dict[str, object] = {
                "phase": record.phase.value,
                "outcome": verdict.value,
                "detail": evidence,
                "t": round(record.started, 3),
                "seconds": round((record.ended or record.started) - record.started, 2),
            }
            if record.bakes:
                phase["cost"] = phase_cost_json(record.bakes)
            out.append(phase)
        return out


def describe(exc: BaseException) -> str:
    """An unexpected exception as one line for an ``infra_error`` reason."""
    if isinstance(exc, CompatlabError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
