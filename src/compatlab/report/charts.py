"""The report's pictures, as geometry the templates draw in inline SVG (no script, nothing
fetched): a cell's event timeline strip, its boot-time chart (baseline vs candidate boots) and
a trend strip of its last runs.

Pure: events, boots and outcomes in, coordinates and tooltip texts out. Tooltip texts are plain
strings; the templates escape them. Numbers a results.json may hold that are not finite are
left out of the scales, so one ``inf`` cannot flatten a chart.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from compatlab.model import Boot, Event
from compatlab.report.changes import Outcome, failing

__all__ = [
    "BAD_KINDS",
    "BootChart",
    "Strip",
    "TrendMark",
    "boot_chart",
    "event_level",
    "timeline_strip",
    "trend_marks",
]

BAD_KINDS = frozenset({"crashed", "guest_panicked", "bugcheck", "panic"})
WARN_KINDS = frozenset({"watchdog", "reboot", "power_cycle", "hang", "shutdown", "stopped"})
GOOD_KINDS = frozenset({"agent_ready"})
_PRIORITY = {"bad": 0, "warn": 1, "good": 2, "": 3}

# Timeline strip layout, in SVG user units (the SVG scales to the page's width).
STRIP_WIDTH = 960
STRIP_LABEL = 96  # left margin holding the lane's name
STRIP_LANE = 30
STRIP_AXIS = 18
MARKS_PER_LANE = 400  # more would only blur into one another; the table below has them all
TOOLTIP = 200  # characters of an event's detail in its tooltip

# Boot chart layout.
BOOT_HEIGHT = 120
BOOT_BAR = 22
BOOT_GAP = 8
BOOT_LEFT = 44
BOOTS_SHOWN = 60
BASELINE_PHASES = frozenset({"provision", "products", "baseline"})


def event_level(event: Event) -> str:
    """``bad`` (a crash), ``warn`` (a reset, a watchdog), ``good`` (the guest answered) or ""."""
    if event.kind in BAD_KINDS or "bugcheck_code" in event.data:
        return "bad"
    if event.kind in WARN_KINDS:
        return "warn"
    return "good" if event.kind in GOOD_KINDS else ""


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _step(span: float, most: int = 8) -> float:
    """A round axis step giving at most ``most`` ticks over ``span`` seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400):
        if span / step <= most:
            return step
    return float(10 ** math.ceil(math.log10(span / most)))


@dataclass(frozen=True)
class Mark:
    x: float
    level: str
    title: str


@dataclass(frozen=True)
class Band:
    x: float
    width: float
    phase: str


@dataclass(frozen=True)
class Lane:
    label: str
    y: float
    bands: tuple[Band, ...]
    marks: tuple[Mark, ...]
    left_out: int  # events not drawn (beyond MARKS_PER_LANE)


@dataclass(frozen=True)
class Strip:
    lanes: tuple[Lane, ...]
    ticks: tuple[tuple[float, str], ...]  # x, label
    height: float
    width: float = STRIP_WIDTH
    label_width: float = STRIP_LABEL


def _lane_of(event: Event) -> tuple[str, str]:
    """The VM an event belongs to and its plain source: a rerun's events carry its label
    (``rerun-1/libvirt``); the deciding VM's are plain."""
    label, sep, source = event.source.partition("/")
    return (label, source) if sep else ("candidate", event.source)


def _tooltip(event: Event, source: str) -> str:
    head = f"{event.t:.1f} s · {source} {event.kind}"
    if not event.detail:
        return head
    detail = event.detail if len(event.detail) <= TOOLTIP else event.detail[: TOOLTIP - 1] + "…"
    return f"{head}: {detail}"


def timeline_strip(events: Sequence[Event]) -> Strip | None:
    """The strip of a cell's events: one lane per VM, phases as bands, events as ticks."""
    lanes: dict[str, list[tuple[Event, str]]] = {}
    for event in events:
        if event.kind == "tick" or not math.isfinite(event.t):
            continue
        label, source = _lane_of(event)
        lanes.setdefault(label, []).append((event, source))
    if not lanes:
        return None
    span = max(1.0, *(e.t for group in lanes.values() for e, _ in group))
    inner = STRIP_WIDTH - STRIP_LABEL - 8

    def x(t: float) -> float:
        return round(STRIP_LABEL + max(0.0, t) / span * inner, 1)

    drawn = []
    for n, (label, group) in enumerate(lanes.items()):
        phases = [
            (e.t, e.detail) for e, source in group if e.kind == "phase" and source == "scenario"
        ]
        end = max(e.t for e, _ in group)
        bands = tuple(
            Band(x(t), max(x(phases[i + 1][0] if i + 1 < len(phases) else end) - x(t), 0.5), p)
            for i, (t, p) in enumerate(phases)
        )
        shown = [(e, source, event_level(e)) for e, source in group if e.kind != "phase"]
        kept = sorted(shown, key=lambda item: _PRIORITY[item[2]])[:MARKS_PER_LANE]
        # Drawn quietest first, so a crash is on top of the resets around it.
        kept.sort(key=lambda item: (-_PRIORITY[item[2]], item[0].t))
        marks = tuple(Mark(x(e.t), level, _tooltip(e, source)) for e, source, level in kept)
        left_out = len(shown) - len(marks)
        drawn.append(Lane(label, STRIP_AXIS + n * STRIP_LANE, bands, marks, left_out))
    step = _step(span)
    ticks = tuple((x(t), f"{t:g} s") for t in _ticks(span, step))
    return Strip(tuple(drawn), ticks, STRIP_AXIS + len(drawn) * STRIP_LANE + 2)


def _ticks(span: float, step: float) -> list[float]:
    count = int(span // step)
    return [i * step for i in range(count + 1)]


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    group: str  # "provision", "baseline", "candidate", "rollback"
    outcome: str
    title: str


@dataclass(frozen=True)
class BootChart:
    bars: tuple[Bar, ...]
    width: float
    height: float
    ticks: tuple[tuple[float, str], ...]  # y, label
    baseline_median: float | None  # of completed boots, seconds
    candidate_median: float | None
    baseline_y: float | None  # where the baseline median's line goes
    left_out: int

    @property
    def ratio(self) -> float | None:
        """Candidate boots' median time over the baseline's: 1.4 means 40% slower."""
        if not self.baseline_median or self.candidate_median is None:
            return None
        return self.candidate_median / self.baseline_median


def _group(boot: Boot) -> str:
    """``provision`` (the golden image, products not yet in), ``baseline`` (the configuration
    without the candidate), ``candidate`` or ``rollback``."""
    if boot.phase in ("provision", "products"):
        return "provision"
    if boot.phase in BASELINE_PHASES:
        return "baseline"
    return "rollback" if boot.phase == "rollback" else "candidate"


def _median(boots: Sequence[Boot], group: str) -> float | None:
    times = _finite([b.seconds for b in boots if _group(b) == group and b.outcome == "completed"])
    return statistics.median(times) if times else None


def _baseline_median(boots: Sequence[Boot]) -> float | None:
    """The boot time the candidate's boots compare with: the baseline boots' (the same
    configuration without the candidate), else the provisioning boots' where no baseline ran."""
    found = _median(boots, "baseline")
    return found if found is not None else _median(boots, "provision")


def boot_chart(boots: Sequence[Boot]) -> BootChart | None:
    """Bars of each boot's time, coloured by baseline / candidate / rollback and outcome."""
    if not boots:
        return None
    shown = list(boots[:BOOTS_SHOWN])
    top = max([1.0, *_finite([b.seconds for b in shown])])
    step = _step(top, 4)
    top = math.ceil(top / step) * step
    plot = BOOT_HEIGHT - 16

    def y(seconds: float) -> float:
        return round(8 + plot - min(max(seconds, 0.0), top) / top * plot, 1)

    bars = []
    for i, boot in enumerate(shown):
        seconds = boot.seconds if math.isfinite(boot.seconds) else top
        phase = f" ({boot.phase})" if boot.phase else ""
        bars.append(
            Bar(
                x=BOOT_LEFT + BOOT_GAP + i * (BOOT_BAR + BOOT_GAP),
                y=y(seconds),
                height=round(max(y(0) - y(seconds), 1.0), 1),
                group=_group(boot),
                outcome=boot.outcome,
                title=f"boot {boot.n}{phase}: {boot.outcome} after {boot.seconds:.1f} s"
                + (f" ({boot.note})" if boot.note else ""),
            )
        )
    baseline, candidate = _baseline_median(boots), _median(boots, "candidate")
    return BootChart(
        bars=tuple(bars),
        width=BOOT_LEFT + BOOT_GAP + len(shown) * (BOOT_BAR + BOOT_GAP) + 4,
        height=BOOT_HEIGHT,
        ticks=tuple((y(t), f"{t:g}") for t in _ticks(top, step)),
        baseline_median=baseline,
        candidate_median=candidate,
        baseline_y=y(baseline) if baseline is not None else None,
        left_out=len(boots) - len(shown),
    )


@dataclass(frozen=True)
class TrendMark:
    x: float
    verdict: str
    current: bool
    title: str


TREND_STEP = 11  # SVG units per run in a trend strip


def trend_marks(trend: Sequence[Outcome]) -> tuple[TrendMark, ...]:
    """One square per run, oldest first; this run's is the last."""
    marks = []
    for i, outcome in enumerate(trend):
        state = "fail" if failing(outcome.verdict) else "pass"
        name, version, _ = outcome.candidate
        marks.append(
            TrendMark(
                x=i * TREND_STEP,
                verdict=outcome.verdict.value,
                current=i == len(trend) - 1,
                title=f"{outcome.run_id} ({outcome.started[:16]}): {outcome.verdict.value} "
                f"[{state}] with {name} {version}",
            )
        )
    return tuple(marks)
