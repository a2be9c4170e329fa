"""The candidate's cost on the guest: CPU, memory and disk while it bakes, against the baseline.

Vendors promise that a security update "must not affect performance". During each bake -- the
``bake`` seconds a guest stays up after a completed boot, once without the candidate (baseline)
and after each boot with it -- the lab reads the VM's counters from libvirt about once a second
(:mod:`compatlab.lab.guest_cost`). This module is the pure part:

* samples -> one :class:`Window` per bake (:func:`summarize`): what results.json keeps, per
  phase, as ``"cost": {"bakes": [...]}``;
* windows -> a :class:`Comparison`, metric by metric (:func:`compare`, :func:`cell_cost`): what
  the report shows and a ring's ``cost_regression`` holds the candidate to.

The metrics (:data:`METRICS`), each a rate or a level, so bakes of different length compare:

* ``cpu`` -- CPU seconds of the VM per wall second (its vCPUs and QEMU's own threads): 0.25 is a
  quarter of one host CPU. Under TCG this is the host's emulation time, not the guest's CPU time:
  see the README's "The candidate's cost" section for what that does to a comparison;
* ``memory`` -- guest memory in use, the peak of the bake: ``available - usable`` of the balloon
  driver's report (MemTotal - MemAvailable on Linux). Only where the guest runs a balloon driver
  and the domain has a balloon device with a statistics period (configs/templates);
* ``disk_read`` / ``disk_write`` -- bytes per second, every disk of the VM summed; and the
  requests per second beside them (``*_ops``), shown, not judged;
* ``host_rss`` -- the QEMU process's resident memory on the host, peak. Shown, never judged: it
  only grows over a VM's life (pages the guest touched stay resident across its reboots), so a
  later bake always looks bigger;
* ``boot`` -- seconds to a completed boot, taken as ``boot_regression`` takes them (the baseline
  boot against the slowest boot with the candidate). Shown beside; ``boot_regression`` judges it.

The baseline side of a metric is the median of the baseline bakes; the candidate side is its
worst bake (the highest value), as the slowest boot is what ``boot_regression`` holds: a ring
must hold for every boot. A bake cut short (the guest crashed in it) or whose counters restarted
is left out. A difference below a metric's noise floor (``floor``) is never a regression, whatever
its share: 0.5% of a CPU more than an idle baseline is not "+100%". CPU is not compared where
the host kept the vCPUs waiting for a CPU :data:`STARVED` of a bake or more: the guest wanted
to run and could not, so its CPU time says what the host allowed, not what the guest needed.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from compatlab.model import CellResult

__all__ = [
    "JUDGED",
    "METRICS",
    "STARVED",
    "Comparison",
    "Metric",
    "MetricSpec",
    "Sample",
    "Window",
    "bakes_from_json",
    "cell_cost",
    "compare",
    "decimal_size",
    "format_value",
    "phase_cost_json",
    "summarize",
]

# A guest whose vCPUs waited for a host CPU this share of the time or more was starved by the
# host (compatlab.lab.activity uses the same line for boots that ran out of time).
STARVED = 0.4

Unit = Literal["cpu", "bytes", "bytes/s", "ops/s", "s"]


@dataclass(frozen=True)
class Sample:
    """The VM's cumulative counters at one moment (``taken``: seconds, ``time.monotonic()``).

    The counters start at 0 when the QEMU process starts and keep counting across the guest's
    reboots. Memory figures are KiB, as libvirt gives them, and None where libvirt did not say.
    """

    taken: float
    cpu_ns: int
    vcpus: int = 1
    vcpu_delay_ns: int | None = None  # summed over the vCPUs (libvirt's vcpu.N.delay)
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    disk_read_ops: int = 0
    disk_write_ops: int = 0
    guest_available_kib: int | None = None  # the balloon driver's MemTotal
    guest_usable_kib: int | None = None  # MemAvailable
    guest_unused_kib: int | None = None  # MemFree
    host_rss_kib: int | None = None

    @property
    def guest_used_bytes(self) -> int | None:
        """Guest memory in use: what the guest has, less what it could still hand out."""
        if self.guest_available_kib is None:
            return None
        free = self.guest_usable_kib if self.guest_usable_kib is not None else self.guest_unused_kib
        if free is None:
            return None
        return max(0, self.guest_available_kib - free) * 1024


# fmt: off
_COUNTERS = ("cpu_ns", "disk_read_bytes", "disk_write_bytes", "disk_read_ops", "disk_write_ops")
# fmt: on
@dataclass(frozen=True)
class Window:
    """One bake, summarized: what the VM used between its first and last sample.

    ``boot``: the boot of its phase that the bake followed (1-based). ``note`` says why the
    window cannot be compared ("cut short by a failure of the guest", "counters restarted");
    empty for a usable one. Totals are over ``seconds``; None where libvirt did not say.
    """

    boot: int
    seconds: float
    samples: int
    cpu_seconds: float | None = None
    vcpu_delay_share: float | None = None
    memory_peak: int | None = None  # bytes
    memory_mean: float | None = None  # bytes
    host_rss_peak: int | None = None  # bytes
    disk_read_bytes: int | None = None
    disk_write_bytes: int | None = None
    disk_read_ops: int | None = None
    disk_write_ops: int | None = None
    note: str = ""

    @property
    def usable(self) -> bool:
        return not self.note and self.seconds > 0 and self.samples >= 2

    def value(self, key: str) -> float | None:
        """The window's figure for metric ``key`` (a rate or a level; see :data:`METRICS`)."""
        if key == "cpu":
            return _per_second(self.cpu_seconds, self.seconds)
        if key == "memory":
            return _float(self.memory_peak)
        if key == "host_rss":
            return _float(self.host_rss_peak)
        if key in ("disk_read", "disk_write"):
            return _per_second(getattr(self, f"{key}_bytes"), self.seconds)
        if key in ("disk_read_ops", "disk_write_ops"):
            return _per_second(getattr(self, key), self.seconds)
        raise KeyError(key)

    def as_json(self) -> dict[str, object]:
        """Every field, in order; fractions rounded to 4 places."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)


def _per_second(total: float | None, seconds: float) -> float | None:
    return None if total is None or seconds <= 0 else total / seconds


# -- samples -> a window --------------------------------------------------------------------------


def summarize(samples: Iterable[Sample], *, boot: int, complete: bool = True) -> Window:
    """One bake's samples as a :class:`Window`. ``complete``: the bake ran its whole time (a
    failure of the guest did not end it); a window cut short is kept, with a note, and never
    compared."""
    ordered = sorted(samples, key=lambda s: s.taken)
    used = [u for u in (s.guest_used_bytes for s in ordered) if u is not None]
    rss = [s.host_rss_kib * 1024 for s in ordered if s.host_rss_kib is not None]
    memory_peak = max(used) if used else None
    memory_mean = statistics.fmean(used) if used else None
    rss_peak = max(rss) if rss else None
    note = "" if complete else "cut short by a failure of the guest"
    if len(ordered) < 2:
        note = note or f"{len(ordered)} sample{'' if len(ordered) == 1 else 's'}: no rate"
        return Window(
            boot,
            0.0,
            len(ordered),
            memory_peak=memory_peak,
            memory_mean=memory_mean,
            host_rss_peak=rss_peak,
            note=note,
        )
    first, last = ordered[0], ordered[-1]
    for before, after in itertools.pairwise(ordered):
        if any(getattr(after, c) < getattr(before, c) for c in _COUNTERS):
            note = note or "counters restarted (the VM was powered off and on)"
    seconds = last.taken - first.taken
    delay = None
    if first.vcpu_delay_ns is not None and last.vcpu_delay_ns is not None and seconds > 0:
        delay = (last.vcpu_delay_ns - first.vcpu_delay_ns) / 1e9 / seconds / max(last.vcpus, 1)
    return Window(
        boot=boot,
        seconds=seconds,
        samples=len(ordered),
        cpu_seconds=(last.cpu_ns - first.cpu_ns) / 1e9,
        vcpu_delay_share=delay,
        memory_peak=memory_peak,
        memory_mean=memory_mean,
        host_rss_peak=rss_peak,
        disk_read_bytes=last.disk_read_bytes - first.disk_read_bytes,
        disk_write_bytes=last.disk_write_bytes - first.disk_write_bytes,
        disk_read_ops=last.disk_read_ops - first.disk_read_ops,
        disk_write_ops=last.disk_write_ops - first.disk_write_ops,
        note=note,
    )


# -- results.json ---------------------------------------------------------------------------------


def phase_cost_json(bakes: Sequence[Window]) -> dict[str, object]:
    """A phase's ``cost`` in results.json."""
    return {"bakes": [w.as_json() for w in bakes]}


def bakes_from_json(value: object) -> list[Window]:
    """A phase's ``cost`` back into windows. Raises ValueError naming the path inside ``cost``
    (``bakes[1].seconds: expected a number``) for anything that breaks the shape."""
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    bakes = value.get("bakes")
    if not isinstance(bakes, list):
        raise ValueError("bakes: expected a list")
    return [_window(item, f"bakes[{i}]") for i, item in enumerate(bakes)]


def _window(value: object, where: str) -> Window:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")

    def number(key: str, whole: bool, *, required: bool = False) -> float | None:
        item = value.get(key)
        if item is None:
            if required:
                raise ValueError(f"{where}: missing key '{key}'")
            return None
        kind = int if whole else (int, float)
        if isinstance(item, bool) or not isinstance(item, kind):
            raise ValueError(f"{where}.{key}: expected {'an integer' if whole else 'a number'}")
        if not math.isfinite(item) or item < 0:
            raise ValueError(f"{where}.{key}: {item} is not a count or a duration")
        return item

    def whole(key: str, *, required: bool = False) -> int | None:
        item = number(key, True, required=required)
        return None if item is None else int(item)

    note = value.get("note", "")
    if not isinstance(note, str):
        raise ValueError(f"{where}.note: expected a string")
    return Window(
        boot=whole("boot", required=True) or 0,
        seconds=number("seconds", False, required=True) or 0.0,
        samples=whole("samples", required=True) or 0,
        cpu_seconds=number("cpu_seconds", False),
        vcpu_delay_share=number("vcpu_delay_share", False),
        memory_peak=whole("memory_peak"),
        memory_mean=number("memory_mean", False),
        host_rss_peak=whole("host_rss_peak"),
        disk_read_bytes=whole("disk_read_bytes"),
        disk_write_bytes=whole("disk_write_bytes"),
        disk_read_ops=whole("disk_read_ops"),
        disk_write_ops=whole("disk_write_ops"),
        note=note,
    )


# -- windows -> a comparison ----------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    unit: Unit
    floor: float  # a difference below this is noise, whatever its share
    judged: bool  # a ring's cost_regression holds the candidate to it


MIB = 1024 * 1024
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("cpu", "CPU", "cpu", 0.02, True),
    MetricSpec("memory", "guest memory in use (peak)", "bytes", 4 * MIB, True),
    MetricSpec("disk_read", "disk read", "bytes/s", 64 * 1024, True),
    MetricSpec("disk_write", "disk written", "bytes/s", 64 * 1024, True),
    MetricSpec("disk_read_ops", "disk read requests", "ops/s", 5.0, False),
    MetricSpec("disk_write_ops", "disk write requests", "ops/s", 5.0, False),
    MetricSpec("host_rss", "host memory of the VM (QEMU RSS, peak)", "bytes", 4 * MIB, False),
)
BOOT = MetricSpec("boot", "boot time", "s", 1.0, False)
# The metrics a ring's cost_regression may name (all of them, by default).
JUDGED: tuple[str, ...] = tuple(m.key for m in METRICS if m.judged)


@dataclass(frozen=True)
class Metric:
    """One metric, baseline against candidate. ``worst``: the boot whose bake gave the
    candidate's value. ``note``: why it is not compared (empty when it is)."""

    spec: MetricSpec
    baseline: float | None
    candidate: float | None
    worst: int | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def measured(self) -> bool:
        return self.baseline is not None and self.candidate is not None

    @property
    def comparable(self) -> bool:
        return self.measured and not self.note

    @property
    def delta(self) -> float | None:
        if self.baseline is None or self.candidate is None:
            return None
        return self.candidate - self.baseline

    @property
    def change(self) -> float | None:
        """The difference as a share of the baseline (0.25: 25% more); None where the baseline
        is 0 (any rise is then infinitely many times it) or a side is missing."""
        if self.delta is None or not self.baseline:
            return None
        return self.delta / self.baseline

    def over(self, share: float) -> bool:
        """The candidate exceeds the baseline by more than ``share`` of it, and by more than the
        noise floor. Never for a metric that cannot be compared."""
        if not self.comparable or self.delta is None or self.delta <= self.spec.floor:
            return False
        return self.change is None or self.change > share

    def describe(self) -> str:
        """``CPU +42% (0.300 CPU-s/s vs 0.211 CPU-s/s, boot 2)``: as a sign-off says it."""
        if not self.measured:
            return f"{self.spec.label}: not measured"
        change = "new" if self.change is None else f"{self.change:+.0%}"
        base = format_value(self.spec.unit, self.baseline)
        after = format_value(self.spec.unit, self.candidate)
        boot = f", boot {self.worst}" if self.worst is not None else ""
        return f"{self.spec.label} {change} ({after} vs {base}{boot})"


@dataclass(frozen=True)
class Comparison:
    """A cell's cost with the candidate against its baseline, one :class:`Metric` each."""

    metrics: tuple[Metric, ...]
    boot: Metric
    baseline_bakes: int  # usable bakes on each side
    candidate_bakes: int
    left_out: int  # bakes not comparable (cut short, counters restarted)

    def metric(self, key: str) -> Metric:
        for metric in (*self.metrics, self.boot):
            if metric.key == key:
                return metric
        raise KeyError(key)

    def judged(self, keys: Iterable[str] = JUDGED) -> list[Metric]:
        """The metrics of ``keys`` that can be compared on this cell."""
        wanted = set(keys)
        return [m for m in self.metrics if m.key in wanted and m.comparable]

    def over(self, limits: Mapping[str, float]) -> list[Metric]:
        """The metrics over their limit (metric key -> allowed share), in :data:`METRICS`
        order."""
        return [m for m in self.judged(limits) if m.over(limits[m.key])]


def compare(
    baseline: Sequence[Window],
    candidate: Sequence[Window],
    *,
    baseline_boots: Sequence[float] = (),
    candidate_boots: Sequence[float] = (),
) -> Comparison | None:
    """Baseline bakes against the candidate's, metric by metric; None when a side has no usable
    bake. Boot times (seconds of completed boots) are compared beside, as ``boot_regression``
    takes them."""
    base = [w for w in baseline if w.usable]
    after = [w for w in candidate if w.usable]
    if not base or not after:
        return None
    starved = [
        w
        for w in (*base, *after)
        if w.vcpu_delay_share is not None and w.vcpu_delay_share >= STARVED
    ]
    metrics = []
    for spec in METRICS:
        base_values = [v for v in (w.value(spec.key) for w in base) if v is not None]
        worst = max(
            ((v, w.boot) for w in after if (v := w.value(spec.key)) is not None),
            default=None,
        )
        note = ""
        if not base_values or worst is None:
            note = _UNMEASURED.get(spec.key, "not measured on both sides")
        elif spec.key == "cpu" and starved:
            waited = max(w.vcpu_delay_share or 0.0 for w in starved)
            note = f"not compared: the host kept the vCPUs waiting for a CPU {waited:.0%} of a bake"
        metrics.append(
            Metric(
                spec,
                statistics.median(base_values) if base_values else None,
                worst[0] if worst else None,
                worst[1] if worst else None,
                note,
            )
        )
    return Comparison(
        metrics=tuple(metrics),
        boot=_boot(baseline_boots, candidate_boots),
        baseline_bakes=len(base),
        candidate_bakes=len(after),
        left_out=len(baseline) + len(candidate) - len(base) - len(after),
    )


_UNMEASURED = {
    "memory": "not reported: the guest runs no balloon driver",
    "host_rss": "libvirt did not say",
}


def _boot(baseline: Sequence[float], candidate: Sequence[float]) -> Metric:
    base = [s for s in baseline if math.isfinite(s) and s > 0]
    after = [s for s in candidate if math.isfinite(s) and s > 0]
    return Metric(
        BOOT,
        statistics.median(base) if base else None,
        max(after) if after else None,
        None,
        "" if base and after else "no completed boot on one side",
    )


def cell_cost(cell: CellResult) -> Comparison | None:
    """The cell's comparison from its results.json phases (``baseline`` against ``boots``) and
    boots; None when it has no usable bake on one side (a cell from before costs were sampled,
    or one that failed before its candidate's first bake)."""
    sides: dict[str, list[Window]] = {"baseline": [], "boots": []}
    for phase in cell.phases:
        name = phase.get("phase")
        if name in sides and phase.get("cost") is not None:
            try:
                sides[str(name)] += bakes_from_json(phase["cost"])
            except ValueError:
                continue  # the reader refuses such a file; a hand-made result is just unmeasured
    completed = [b for b in cell.boots if b.outcome == "completed"]
    return compare(
        sides["baseline"],
        sides["boots"],
        baseline_boots=[b.seconds for b in completed if b.phase == "baseline"],
        candidate_boots=[b.seconds for b in completed if b.phase == "boots"],
    )


# -- words ----------------------------------------------------------------------------------------


def format_value(unit: Unit, value: float | None) -> str:
    """A metric's value as a reader wants it: ``0.214 CPU-s/s``, ``48.2 MB``, ``1.3 MB/s``,
    ``4.1 ops/s``, ``20.3 s``; ``—`` where not measured. Decimal units, as disk traffic is
    usually written."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit == "cpu":  # an idle guest under TCG is 0.02-0.03: three places tell those apart
        return f"{value:.3f} CPU-s/s" if abs(value) < 1 else f"{value:.2f} CPU-s/s"
    if unit == "s":
        return f"{value:.1f} s"
    if unit == "ops/s":
        return f"{value:.1f} ops/s"
    text = decimal_size(value)
    return f"{text}/s" if unit == "bytes/s" else text


def decimal_size(count: float) -> str:
    """Bytes in decimal units, as disk traffic is usually written: 1.2 MB is 1,200,000 bytes
    (a difference may be negative)."""
    if abs(count) < 1000:
        return f"{count:.0f} B"
    value = float(count)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if abs(value) < 999.95 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
