"""The geometry of the report's charts (pure) and its SVG markup: scales that survive odd
numbers, crashes drawn on top, bounded marks, and text that is escaped.
"""

from __future__ import annotations

import math

from compatlab.model import Boot, Event, Verdict
from compatlab.report.changes import Outcome
from compatlab.report.charts import (
    MARKS_PER_LANE,
    STRIP_LABEL,
    STRIP_WIDTH,
    boot_chart,
    timeline_strip,
    trend_marks,
)
from compatlab.report.svg import boots_svg, strip_svg, trend_svg


def test_strip_scales_time_to_the_width_and_draws_crashes_last() -> None:
    events = [
        Event(0.0, "scenario", "phase", "provision"),
        Event(50.0, "libvirt", "crashed", "panicked"),
        Event(50.0, "libvirt", "reboot"),
        Event(50.0, "channel", "agent_ready"),
        Event(100.0, "scenario", "phase", "boots"),
        Event(200.0, "libvirt", "started"),
        Event(math.inf, "libvirt", "started"),  # left out of the scale, not drawn
        Event(5.0, "scenario", "tick"),  # progress ticks are not events worth a mark
    ]
    strip = timeline_strip(events)
    assert strip is not None
    (lane,) = strip.lanes
    assert [m.level for m in lane.marks] == ["", "good", "warn", "bad"]
    crash = lane.marks[-1]
    assert crash.x == STRIP_LABEL + 50 / 200 * (STRIP_WIDTH - STRIP_LABEL - 8)
    assert [b.phase for b in lane.bands] == ["provision", "boots"]
    assert lane.bands[0].x + lane.bands[0].width == lane.bands[1].x  # a phase ends at the next
    assert [label for _, label in strip.ticks][:3] == ["0 s", "30 s", "60 s"]
    assert timeline_strip([]) is None


def test_strip_bounds_the_marks_and_keeps_the_crashes() -> None:
    noise = [Event(float(i), "libvirt", "agent", "connected") for i in range(3 * MARKS_PER_LANE)]
    crashes = [Event(1000.0 + i, "qmp", "guest_panicked") for i in range(3)]
    strip = timeline_strip(noise + crashes)
    assert strip is not None
    (lane,) = strip.lanes
    assert len(lane.marks) == MARKS_PER_LANE
    assert lane.left_out == len(noise) + len(crashes) - MARKS_PER_LANE
    assert sum(1 for m in lane.marks if m.level == "bad") == 3


def test_boot_chart_compares_the_baseline_with_the_candidate() -> None:
    boots = [
        Boot(1, "completed", 30.0, "provision"),
        Boot(2, "completed", 10.0, "baseline"),
        Boot(3, "completed", 12.0, "boots"),
        Boot(4, "crash", 2.0, "boots"),  # a crash is no boot time
        Boot(5, "completed", 16.0, "boots"),
        Boot(6, "completed", math.nan, "boots"),
    ]
    chart = boot_chart(boots)
    assert chart is not None
    assert (chart.baseline_median, chart.candidate_median) == (10.0, 14.0)
    assert chart.ratio == 1.4
    assert [b.group for b in chart.bars] == ["provision", "baseline"] + ["candidate"] * 4
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.title.startswith("boot 1 ")
    # without a baseline boot the provisioning boots stand in
    only = boot_chart([Boot(1, "completed", 20.0, "provision"), Boot(2, "completed", 25, "")])
    assert only is not None and only.ratio == 1.25
    assert boot_chart([]) is None


def test_svg_escapes_every_text() -> None:
    evil = '<script>alert("x")</script>'
    strip = timeline_strip([Event(1.0, f"rerun-1/{evil}", evil, evil + "\x1b[31m")])
    boots = boot_chart([Boot(1, "completed", 3.0, evil)])
    marks = trend_marks([Outcome(evil, "2026-01-01", Verdict.CRASH, (evil, evil, ""))])
    assert strip is not None and boots is not None
    for markup in (strip_svg(strip), boots_svg(boots), trend_svg(marks)):
        assert "<script" not in markup and "&lt;script&gt;" in markup
        assert "\x1b" not in markup
    assert trend_svg(()) == ""


def test_a_restored_cells_boots_say_what_they_were() -> None:
    boots = [
        Boot(0, "completed", 20.0, "baseline", kind="layer"),
        Boot(1, "completed", 0.3, "provision", kind="restore"),
        Boot(2, "completed", 22.0, "boots"),
    ]
    chart = boot_chart(boots)
    assert chart is not None
    assert (chart.baseline_median, chart.candidate_median) == (20.0, 22.0)  # not the restore
    titles = [b.title for b in chart.bars]
    assert titles[0].endswith("(the cached layer's baseline boot, by its builder)")
    assert titles[1].endswith("(restored from the cached layer's memory state)")
    assert "(" not in titles[2].split(":", 1)[1]
