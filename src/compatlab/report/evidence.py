"""A cell's evidence page, as data for ``cell.html.j2``: the event timeline (strip and table),
the boots and their chart, the serial log's tail, the screenshot, the commands, the checks, the
repeats and the history.

Artifacts are read only from inside the run folder, whatever a results.json says. Guest text
(serial lines, command output, event details) is cut to a bound here or by the page's
``guest`` filter, with a visible mark where it was cut.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from markupsafe import Markup

from compatlab.model import Bugcheck, CellResult, CommandRecord, Event
from compatlab.report.changes import CellHistory
from compatlab.report.charts import boot_chart, event_level, timeline_strip, trend_marks
from compatlab.report.results import output_artifact
from compatlab.report.stats import failure_rate
from compatlab.text import cap_text, printable
from compatlab.verdict import bugcheck_of

__all__ = ["GUEST_LINE", "OUTPUT_EXCERPT", "SERIAL_TAIL_LINES", "evidence", "inside", "serial_tail"]

SERIAL_TAIL_LINES = 80
_SERIAL_TAIL_BYTES = 256 * 1024  # enough for 80 long lines; never read a 2 GB log whole
_SERIAL_WINDOW = 8 * 1024  # the first read from the end: 80 lines of a kernel log are ~5 KiB
OUTPUT_EXCERPT = 64 * 1024  # characters of one command output stream shown on a page
GUEST_LINE = 2000  # characters of one serial line or event detail shown
EVENT_ROWS = 2000  # rows of an event timeline shown: the first and the last half
# Serial lines worth the reader's eye: Linux panics and oopses, Windows stop screens.
_HOT_WORDS = (
    "Kernel panic", "BUG:", "Oops", "Call Trace", "general protection", "*** STOP", "STOP: 0x",
    "bugcheck", "PAGE_FAULT", "_NOT_HANDLED", "IRQL_NOT", "INACCESSIBLE_BOOT", "KMODE_EXCEPTION",
    "watchdog",
)  # fmt: skip
_HOT_LINE = re.compile("|".join(map(re.escape, _HOT_WORDS)), re.IGNORECASE)
_HOT_LOWER = re.compile("|".join(re.escape(word.lower()) for word in _HOT_WORDS))
_MARK = re.compile(r"\[… \d+ bytes cut\]")
# An event's data once its bugcheck is decoded: the bugcheck keys and the raw QMP payload would
# only repeat it.
_DECODED = frozenset({*Bugcheck.EVENT_KEYS, "payload", "arg1", "arg2", "arg3", "arg4", "arg5"})


def marked(text: str, limit: int) -> Markup:
    """Guest text for a page: without control characters, at most ``limit`` characters,
    escaped, and every place it was cut shown as a ``<mark class="cut">``."""
    if len(text) <= limit and text.isprintable() and "bytes cut]" not in text:
        return Markup.escape(text)  # most guest text: short, clean, never cut
    text = cap_text(text, limit)
    escaped = str(Markup.escape(text if text.isprintable() else printable(text)))
    if "bytes cut]" not in escaped:
        return Markup(escaped)
    return Markup(_MARK.sub(lambda m: f'<mark class="cut">{m.group(0)}</mark>', escaped))


@dataclass(frozen=True)
class EventRow:
    t: str
    source: str
    kind: str
    detail: Markup  # escaped and cut here (as the ``guest`` filter would): 50 rows a page
    level: str


@dataclass(frozen=True)
class Output:
    """One output stream of a command, as the page shows it."""

    name: str  # "stdout", "stderr"
    excerpt: Markup  # escaped and cleaned here: the page's own value limit must not cut it again
    lines: int
    cut: bool  # the excerpt is not the whole output
    href: str | None  # the whole output, where the run kept it as a file


@dataclass(frozen=True)
class Command:
    record: CommandRecord
    outputs: list[Output]


def inside(run_dir: Path, relative: str) -> Path | None:
    """The artifact's path if it lies inside the run folder, else None (never follow ../..).

    A path no file can have (a NUL in it, a name too long) is None too, not an error.
    """
    try:
        return _inside(os.path.realpath(run_dir), relative)
    except (OSError, ValueError):
        return None


def _inside(root: str, relative: str) -> Path | None:
    """:func:`inside` for a run folder already resolved (once per page, not per artifact); on
    strings, as pathlib's parsing cost more than the checks."""
    if not relative or os.path.isabs(relative):
        return None
    try:
        path = os.path.realpath(os.path.join(root, relative))
        within = path == root or path.startswith(root.rstrip(os.sep) + os.sep)
        return Path(path) if within and os.path.isfile(path) else None
    except (OSError, ValueError):
        return None


def serial_tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a serial log, stripped of terminal escapes.

    Reads from the end, a window at a time, until the window holds one line more than it
    returns (so every line returned is whole), the whole file or :data:`_SERIAL_TAIL_BYTES`:
    80 lines are a few KiB, and stripping escapes from the whole 200 KiB log a boot writes cost
    more than the rest of the page (2 ms a cell). As at that bound before, an escape string
    (OSC, DCS) begun before the window is not seen as one: the lines from the window are shown.
    """
    with path.open("rb") as log:
        size = log.seek(0, 2)
        window = _SERIAL_WINDOW
        while True:
            start = max(0, size - window)
            log.seek(start)
            out = printable(log.read(size - start).decode("utf-8", errors="replace")).split("\n")
            while out and not out[-1].strip():
                out.pop()
            if len(out) > lines or start == 0 or window >= _SERIAL_TAIL_BYTES:
                return out[-lines:]
            window = min(window * 4, _SERIAL_TAIL_BYTES)


@dataclass(frozen=True)
class SerialTail:
    """The serial log's tail as the page shows it: one ``<pre>``'s content, each line escaped
    and cut, the lines :data:`_HOT_LINE` finds in a ``<span class="hot">``. Built here rather
    than by a template loop: 80 lines a page, 10,000 pages a big run."""

    lines: int
    html: Markup


def _serial(path: Path | None) -> SerialTail | None:
    if path is None:
        return None
    try:
        lines = serial_tail(path)
    except OSError:
        return None  # unreadable: the page says there is no serial log, the link stays
    if not lines:
        return None
    html = "".join(
        f'<span class="hot">{text}</span>\n' if hot else f"{text}\n"
        for text, hot in zip(_escaped(lines), _hot(lines), strict=True)
    )
    return SerialTail(len(lines), Markup(html))


def _escaped(lines: list[str]) -> list[Markup]:
    """``marked(line, GUEST_LINE)`` of each line, by one escape of the whole tail where no
    line is long or holds a cut mark (80 calls a page otherwise). The lines are printable
    already (:func:`serial_tail`) and escaping leaves newlines alone."""
    if any(len(line) > GUEST_LINE for line in lines):
        return [marked(line, GUEST_LINE) for line in lines]
    text = str(Markup.escape("\n".join(lines)))
    if "bytes cut]" in text:
        return [marked(line, GUEST_LINE) for line in lines]
    return [Markup(line) for line in text.split("\n")] if lines else []


def _hot(lines: list[str]) -> list[bool]:
    """Which lines :data:`_HOT_LINE` finds. One pass of a case-sensitive pattern over the
    lowered text where it is ASCII (a case-blind search cost 20 us a line, more than the rest
    of the page); line by line otherwise, as Unicode case folding is not lowering (the long
    s, U+017F, folds to an s)."""
    text = "\n".join(lines)
    if not text.isascii():
        return [bool(_HOT_LINE.search(line)) for line in lines]
    hot = {text.count("\n", 0, m.start()) for m in _HOT_LOWER.finditer(text.lower())}
    return [n in hot for n in range(len(lines))]


def event_row(event: Event) -> EventRow:
    if not event.data:  # most events: nothing to decode or append
        detail = event.detail.strip()
        return EventRow(
            f"{event.t:.3f}",
            event.source,
            event.kind,
            marked(detail, GUEST_LINE),
            event_level(event),
        )
    bugcheck = bugcheck_of(event)
    shown = (
        event.data.items()
        if bugcheck is None
        else [(k, v) for k, v in event.data.items() if k not in _DECODED]
    )
    extra = " ".join(f"{k}={v}" for k, v in shown)
    if bugcheck is not None:
        params = f" ({', '.join(bugcheck.params)})" if bugcheck.params else ""
        extra = f"{bugcheck.code} {bugcheck.name}{params} {extra}"
    detail = f"{event.detail} {extra}".strip()
    return EventRow(
        f"{event.t:.3f}", event.source, event.kind, marked(detail, GUEST_LINE), event_level(event)
    )


def _check_rows(checks: Sequence[dict[str, object]]) -> list[tuple[str, str, str]]:
    rows = []
    for check in checks:
        name = str(check.get("name", ""))
        value = next((check[k] for k in ("ok", "passed", "status") if k in check), "")
        status = ("ok" if value else "failed") if isinstance(value, bool) else str(value)
        rest = " ".join(
            f"{k}={v}" for k, v in check.items() if k not in ("name", "ok", "passed", "status")
        )
        rows.append((name, status, rest))
    return rows


def _commands(root: str, cell: CellResult) -> list[Command]:
    out = []
    for n, record in enumerate(cell.commands, start=1):
        outputs = []
        for name in ("stdout", "stderr"):
            text = getattr(record, name)
            if not text:
                continue
            kept = cell.artifacts.get(output_artifact(n, name), "")
            excerpt = cap_text(text, OUTPUT_EXCERPT)
            lines = text.count("\n") + (not text.endswith("\n"))
            href = "../" + quote(kept) if _inside(root, kept) else None
            cut = excerpt != text or "bytes cut]" in text
            outputs.append(Output(name, marked(excerpt, OUTPUT_EXCERPT), lines, cut, href))
        out.append(Command(record, outputs))
    return out


def _timeline(events: Sequence[Event]) -> list[EventRow | None]:
    """The rows of the event timeline; None stands for the rows left out of a huge one."""
    if len(events) <= EVENT_ROWS:
        return [event_row(e) for e in events]
    half = EVENT_ROWS // 2
    return [
        *(event_row(e) for e in events[:half]),
        None,
        *(event_row(e) for e in events[-half:]),
    ]


def evidence(run_dir: Path, cell: CellResult, history: CellHistory | None) -> dict[str, object]:
    """Everything ``cell.html.j2`` shows of ``cell`` beyond its own fields."""
    root = os.path.realpath(run_dir)
    found = {name: _inside(root, rel) for name, rel in cell.artifacts.items()}
    hrefs = {name: "../" + quote(rel) for name, rel in cell.artifacts.items() if found[name]}
    artifacts = [(name, hrefs.get(name), rel) for name, rel in sorted(cell.artifacts.items())]
    events = [e for e in cell.events if e.kind != "tick"]
    return {
        "events": _timeline(events),
        "events_total": len(events),
        "strip": timeline_strip(events),
        "boot_chart": boot_chart(cell.boots),
        "commands": _commands(root, cell),
        "serial": _serial(found.get("serial_log")),
        "serial_name": cell.artifacts.get("serial_log", ""),
        "screenshot": hrefs.get("screenshot"),
        "artifacts": artifacts,
        "checks": _check_rows(cell.checks),
        "rate": failure_rate(cell),
        "history": history,
        "trend": trend_marks(history.trend) if history else (),
    }
