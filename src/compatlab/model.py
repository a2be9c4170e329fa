"""The lab's vocabulary for what happened: events, boots, bugchecks, verdicts, cell results.

Pure data, shared by the lab (which records events), ``verdict`` (which judges them) and
``report`` (which writes them out). Field names follow the results.json contract in DESIGN.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "SEVERITY",
    "Attribution",
    "Boot",
    "BootKind",
    "BootOutcome",
    "Bugcheck",
    "CellResult",
    "CommandRecord",
    "Event",
    "Phase",
    "Repeat",
    "Timeline",
    "Verdict",
]


class Verdict(StrEnum):
    """One per cell. Which one wins when several apply is :data:`SEVERITY`'s order."""

    CRASH = "crash"
    BOOT_LOOP = "boot_loop"
    HANG = "hang"
    INSTALL_FAILED = "install_failed"
    CHECK_FAILED = "check_failed"
    ROLLBACK_FAILED = "rollback_failed"
    INFRA_ERROR = "infra_error"
    PASS = "pass"

    @property
    def severity(self) -> int:
        """This verdict's rank in :data:`SEVERITY`: 0 is the worst."""
        return SEVERITY.index(self)

    @property
    def is_failure(self) -> bool:
        return self is not Verdict.PASS


# The one severity table. It decides a cell's verdict when one run saw several failures, and
# what attribution compares: a failure without the candidate that is at least as severe as the
# failure with it belongs to the configuration. Worst first. A boot loop outranks a crash: a
# guest that crashes at every boot never comes back, one that crashed once did. The README's
# "Verdicts" section states this table word for word.
SEVERITY: tuple[Verdict, ...] = (
    Verdict.BOOT_LOOP,
    Verdict.CRASH,
    Verdict.HANG,
    Verdict.INSTALL_FAILED,
    Verdict.CHECK_FAILED,
    Verdict.ROLLBACK_FAILED,
    Verdict.INFRA_ERROR,
    Verdict.PASS,
)


class Attribution(StrEnum):
    """Who a failing cell's failure belongs to, and how sure the lab is."""

    CANDIDATE = "candidate"  # fails with the update; a rerun without it did not fail as badly
    BASELINE = "baseline"  # fails without the update too (before it was installed, or in a rerun)
    INFRA = "infra"  # the lab failed
    UNCONFIRMED = "unconfirmed"  # failed with the update; no rerun without it could tell


class Phase(StrEnum):
    """The phases of one VM's run, in order. Each keeps its own observations."""

    PROVISION = "provision"  # overlay, define, start, first boot of the golden image
    PRODUCTS = "products"  # the coexisting products installed
    BASELINE = "baseline"  # reboot without the candidate: the configuration must boot clean
    INSTALL = "install"  # the candidate's installer
    BOOTS = "boots"  # reboots with the candidate, each baked
    CHECKS = "checks"  # health, crash evidence, boot time, custom checks
    ROLLBACK = "rollback"  # uninstall, reboot, health

    @property
    def before_candidate(self) -> bool:
        return self in (Phase.PROVISION, Phase.PRODUCTS, Phase.BASELINE)


@dataclass(frozen=True)
class Event:
    """One thing seen about a guest, stamped when it arrived.

    ``t`` is seconds on the cell's monotonic clock (0 = cell start). ``source`` is where it was
    seen: ``libvirt`` (event stream), ``qmp``, ``domain-log``, ``serial``, ``channel``,
    ``scenario``. ``data`` carries structured extras (e.g. bugcheck parameters).
    """

    t: float
    source: str
    kind: str
    detail: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "t": round(self.t, 3),
            "source": self.source,
            "kind": self.kind,
            "detail": self.detail,
        }
        if self.data:
            out["data"] = dict(self.data)
        return out


class Timeline:
    """Append-only, thread-safe list of events for one cell (the event thread appends)."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def append(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


@dataclass(frozen=True)
class Bugcheck:
    """A crash code. Windows: stop code + 4 parameters. Linux: code 'panic', name = panic line."""

    code: str
    name: str
    params: tuple[str, ...] = ()
    # Where the code was read: "hyperv-msr" (QMP or the domain log), "serial" (a Linux panic),
    # "eventlog" (Windows' Kernel-Power 41 after the next boot). Not part of equality: the same
    # crash read from two sources is one crash.
    source: str = field(default="", compare=False)
    # The crash's stable title (compatlab.signature), e.g. "BUG: kernel NULL pointer dereference
    # in acme_check_neighbours [acme_sensor]" or "PAGE_FAULT_IN_NONPAGED_AREA (0x50)": what the
    # report groups crashes by. Not part of equality either: it is derived from the crash.
    signature: str = field(default="", compare=False)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "name": self.name, "params": list(self.params)}
        if self.source:
            out["source"] = self.source
        if self.signature:
            out["signature"] = self.signature
        return out

    # An Event's ``data`` is a flat str -> str mapping, so a bugcheck rides on the event that saw
    # it (QMP GUEST_PANICKED, the domain log's ``panic hyper-v`` line, a serial panic line) under
    # these keys. One encoding, here, so the lab that writes it and the verdict that reads it agree.
    EVENT_KEYS = ("bugcheck_code", "bugcheck_name", "bugcheck_params")

    def as_event_data(self) -> dict[str, str]:
        """This bugcheck as ``Event.data`` entries (params joined by commas)."""
        data = {
            "bugcheck_code": self.code,
            "bugcheck_name": self.name,
            "bugcheck_params": ",".join(self.params),
        }
        if self.source:
            data["bugcheck_source"] = self.source
        if self.signature:
            data["bugcheck_signature"] = self.signature
        return data

    @classmethod
    def from_event_data(cls, data: Mapping[str, str]) -> Bugcheck | None:
        """The bugcheck an event carries, or None when it carries none."""
        code = data.get("bugcheck_code", "")
        if not code:
            return None
        params = data.get("bugcheck_params", "")
        return cls(
            code=code,
            name=data.get("bugcheck_name", ""),
            params=tuple(p.strip() for p in params.split(",") if p.strip()),
            source=data.get("bugcheck_source", ""),
            signature=data.get("bugcheck_signature", ""),
        )


# "restart": a reset the candidate declared (its installer restarts the guest, ``reboots: N``).
BootOutcome = Literal["completed", "crash", "reset", "hang", "watchdog", "restart"]
#: ``boot``: the VM booted. ``restore``: it came back from a cached layer's saved memory state
#: instead (``seconds``: the restore's, to the channel's first answer). ``layer``: the baseline
#: boot of the builder that made the cell's cached layer, carried with the layer as the
#: reference the candidate's boots are compared with (a VM restored from memory boots none).
BootKind = Literal["boot", "restore", "layer"]


@dataclass(frozen=True)
class Boot:
    """One boot attempt: how it ended and how long it took (seconds, monotonic)."""

    n: int
    outcome: BootOutcome
    seconds: float
    phase: str = ""  # a Phase value: "provision", "baseline", "boots", "rollback", ...
    kind: BootKind = "boot"

    @property
    def note(self) -> str:
        """What a reader is told beside a boot that was not this VM's own boot."""
        return {
            "restore": "restored from the cached layer's memory state",
            "layer": "the cached layer's baseline boot, by its builder",
        }.get(self.kind, "")

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "n": self.n,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 2),
        }
        if self.phase:
            out["phase"] = self.phase
        if self.kind != "boot":
            out["kind"] = self.kind
        return out


@dataclass(frozen=True)
class CommandRecord:
    """A command run in the guest, kept as evidence."""

    phase: str
    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    meaning: str = ""  # "success", "reboot", "failure", or "" when not an installer

    def as_json(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "command": self.command,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "seconds": round(self.seconds, 2),
            "meaning": self.meaning,
        }


@dataclass(frozen=True)
class Repeat:
    """One of a cell's runs when it ran N > 1 times (``--matrix-repeat N``).

    The cell's own verdict is the worst of its repeats, so a cell that failed once in N never
    reads as pass; the repeats keep the ratio the report turns into a failure rate.
    """

    verdict: Verdict
    attribution: Attribution | None = None
    seconds: float = 0.0
    signature: str = ""  # the crash signature of this repeat, "" when it did not crash

    def as_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "attribution": self.attribution.value if self.attribution else None,
            "seconds": round(self.seconds, 2),
            "signature": self.signature,
        }


@dataclass
class CellResult:
    """Everything the report needs about one cell. Serialised as a results.json cell."""

    id: str
    build: str
    hardware: str
    products: tuple[str, ...]
    verdict: Verdict
    attribution: Attribution | None = None
    bugcheck: Bugcheck | None = None
    boots: list[Boot] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    reason: str = ""  # one line of evidence: why this verdict
    commands: list[CommandRecord] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)
    matrix: str = ""
    attempts: int = 1
    # Per phase of the deciding run: {"phase", "outcome", "detail", "t", "seconds"}, and for a
    # phase with bakes (baseline, boots) "cost": {"bakes": [...]}, what the guest used in each
    # (compatlab.cost; optional: files from before it was sampled have none).
    phases: list[dict[str, object]] = field(default_factory=list)
    # Every baseline rerun without the candidate: {"n", "verdict", "reason"}.
    reruns: list[dict[str, object]] = field(default_factory=list)
    # The share of the fleet's endpoints this cell stands for (0..1), None when the matrix
    # gives no fleet weights: what the report sums into the failing cells' blast radius.
    fleet_share: float | None = None
    # Every run of the cell when it ran N > 1 times; empty when it ran once.
    repeats: list[Repeat] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "matrix": self.matrix,
            "build": self.build,
            "hardware": self.hardware,
            "products": list(self.products),
            "verdict": self.verdict.value,
            "attribution": self.attribution.value if self.attribution else None,
            "bugcheck": self.bugcheck.as_json() if self.bugcheck else None,
            "reason": self.reason,
            "boots": [b.as_json() for b in self.boots],
            "events": [e.as_json() for e in self.events],
            "artifacts": dict(self.artifacts),
            "commands": [c.as_json() for c in self.commands],
            "checks": list(self.checks),
            "attempts": self.attempts,
            "phases": list(self.phases),
            "reruns": list(self.reruns),
            "fleet_share": self.fleet_share,
            "repeats": [r.as_json() for r in self.repeats],
            "seconds": round(self.seconds, 2),
        }
