"""The report's charts drawn as inline SVG markup from :mod:`compatlab.report.charts`' geometry.

Written in Python rather than as Jinja macros because a 10,000-cell report draws a strip, a
boot chart and a trend per cell, and a template spends several times as long per element. Every
text that reaches the markup -- lane names, phases, tooltips built from guest text -- goes
through :func:`markupsafe.escape`; numbers are the charts' own floats.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from compatlab.report.charts import TREND_STEP, BootChart, Strip, TrendMark
from compatlab.text import printable

__all__ = ["boots_svg", "strip_svg", "trend_svg"]


def _text(value: str) -> str:
    # isprintable() is False for every character printable() removes (controls, format
    # characters, surrogates): the common clean text skips its regular expressions.
    return str(escape(value if value.isprintable() else printable(value)))


def _title(value: str) -> str:
    return f"<title>{_text(value)}</title>"


def strip_svg(strip: Strip) -> Markup:
    """A cell's event timeline: lanes of phase bands and event ticks, a time axis on top."""
    out = [
        f'<svg class="strip" viewBox="0 0 {strip.width} {strip.height}" width="100%" role="img"'
        ' aria-label="event timeline: one lane per VM, phases as bands, events as ticks">'
    ]
    for x, label in strip.ticks:
        out.append(
            f'<line class="grid" x1="{x}" y1="12" x2="{x}" y2="{strip.height}"/>'
            f'<text class="axis" x="{x}" y="10">{_text(label)}</text>'
        )
    for lane in strip.lanes:
        out.append(
            f'<text class="lane" x="{strip.label_width - 6}" y="{lane.y + 18}">'
            f"{_text(lane.label)}</text>"
        )
        for band in lane.bands:
            phase = _text(band.phase)
            out.append(
                f'<rect class="band p-{phase}" x="{band.x}" y="{lane.y + 2}" '
                f'width="{band.width}" height="26">{_title(band.phase)}</rect>'
            )
            if band.width > 48:
                out.append(f'<text class="phase" x="{band.x + 3}" y="{lane.y + 11}">{phase}</text>')
        for mark in lane.marks:
            level = mark.level or "plain"
            y, height, width = {"bad": (1, 28, 3), "warn": (4, 24, 2)}.get(level, (13, 13, 2))
            out.append(
                f'<rect class="mark m-{level}" x="{mark.x - 1}" y="{lane.y + y}" width="{width}"'
                f' height="{height}">{_title(mark.title)}</rect>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def boots_svg(chart: BootChart) -> Markup:
    """Bars of boot times, with the baseline boots' median as a dashed line."""
    height = chart.height + 4
    out = [
        f'<svg class="boots" width="{chart.width}" height="{height}" viewBox="0 0 {chart.width} '
        f'{height}" role="img" aria-label="boot times in seconds, baseline and candidate boots">'
    ]
    for y, label in chart.ticks:
        out.append(
            f'<line class="grid" x1="38" y1="{y}" x2="{chart.width}" y2="{y}"/>'
            f'<text class="axis" x="34" y="{y + 4}">{_text(label)} s</text>'
        )
    for bar in chart.bars:
        out.append(
            f'<rect class="bar g-{bar.group} o-{_text(bar.outcome)}" x="{bar.x}" y="{bar.y}" '
            f'width="22" height="{bar.height}">{_title(bar.title)}</rect>'
        )
    if chart.baseline_y is not None and chart.baseline_median is not None:
        out.append(
            f'<line class="median" x1="38" y1="{chart.baseline_y}" x2="{chart.width}" '
            f'y2="{chart.baseline_y}">{_title(f"baseline median: {chart.baseline_median:.1f} s")}'
            "</line>"
        )
    out.append("</svg>")
    return Markup("".join(out))


def trend_svg(marks: Sequence[TrendMark]) -> Markup:
    """A cell's last results, one square each, oldest first; this run's outlined."""
    if not marks:
        return Markup("")
    width = len(marks) * TREND_STEP
    out = [
        f'<svg class="trend" width="{width}" height="12" viewBox="0 0 {width} 12" role="img" '
        f'aria-label="the last {len(marks)} results of this cell, oldest first">'
    ]
    for m in marks:
        current = " current" if m.current else ""
        out.append(
            f'<rect class="f-{_text(m.verdict)}{current}" x="{m.x + 1}" y="1" width="9" '
            f'height="10" rx="1.5">{_title(m.title)}</rect>'
        )
    out.append("</svg>")
    return Markup("".join(out))
