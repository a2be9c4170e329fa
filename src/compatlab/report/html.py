"""``index.html`` and ``cells/<slug>.html``: the report a release manager signs off from.

Static, self-contained pages (inline CSS, no JavaScript, nothing fetched) rendered with Jinja2,
autoescape on -- cell ids, reasons, serial output and installer output are all guest- or
user-controlled text. The index is a header (candidate, run, counts, a go/no-go line), a grid of
builds x hardware with one coloured chip per product set, and the failing cells; each chip links
to the cell's evidence page: verdict, reason, bugcheck, boots, the event timeline, the serial
log's tail, the console screenshot, the commands run.

This module builds a small view model in Python and leaves layout to the templates; it reads
artifacts only from inside the run folder, whatever a results.json says.

It renders whatever a results.json that parses holds: infinite, NaN or huge numbers and naive
timestamps are shown as they are; every value reaches the page without terminal escapes or
control characters and at most :data:`VALUE_LIMIT` characters long; a command's output shows
as an excerpt of :data:`OUTPUT_EXCERPT` characters, linked to the whole output where the run
kept it as a file; page names are capped at :data:`SLUG_LENGTH` characters and unique.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from compatlab.model import Attribution, Bugcheck, CellResult, CommandRecord, Event, Verdict
from compatlab.report.junit import write_junit
from compatlab.report.results import RunInfo, load_results, output_artifact, write_text_atomic
from compatlab.text import cap_text, printable
from compatlab.verdict import bugcheck_of

__all__ = [
    "INDEX_FILE",
    "OUTPUT_EXCERPT",
    "SLUG_LENGTH",
    "VALUE_LIMIT",
    "PlannedCell",
    "Summary",
    "cell_slug",
    "render_html",
    "render_report",
    "serial_tail",
    "summarize",
]

INDEX_FILE = "index.html"
SERIAL_TAIL_LINES = 80
_SERIAL_TAIL_BYTES = 256 * 1024  # enough for 80 long lines; never read a 2 GB log whole
_TEMPLATES = Path(__file__).parent / "templates"
SLUG_LENGTH = 120  # characters of a page's file name, without ".html": far below NAME_MAX
OUTPUT_EXCERPT = 64 * 1024  # characters of one command output stream shown on a page
VALUE_LIMIT = 16 * 1024  # characters of any other value shown on a page
EVENT_ROWS = 2000  # rows of an event timeline shown: the first and the last half

# Short tags beside the colour, so the grid reads without colour vision too.
TAGS: dict[str, str] = {
    "crash": "CRASH",
    "boot_loop": "LOOP",
    "hang": "HANG",
    "install_failed": "INSTALL",
    "check_failed": "CHECK",
    "rollback_failed": "ROLLBACK",
    "infra_error": "INFRA",
    "pass": "PASS",
    "not_run": "NOT RUN",
}
_BAD_KINDS = frozenset({"crashed", "guest_panicked", "bugcheck", "panic"})
_WARN_KINDS = frozenset({"watchdog", "reboot", "power_cycle", "hang", "shutdown", "stopped"})
_GOOD_KINDS = frozenset({"agent_ready"})
# Serial lines worth the reader's eye: Linux panics and oopses, Windows stop screens.
_HOT_LINE = re.compile(
    r"Kernel panic|BUG:|Oops|Call Trace|general protection|\*\*\* STOP|STOP: 0x|bugcheck"
    r"|PAGE_FAULT|_NOT_HANDLED|IRQL_NOT|INACCESSIBLE_BOOT|KMODE_EXCEPTION|watchdog",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PlannedCell:
    """A cell the matrix holds, so cells that never ran still show (as white chips)."""

    matrix: str
    build: str
    hardware: str
    products: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.build}/{self.hardware}/{'+'.join(self.products) or 'none'}"


@dataclass(frozen=True)
class Summary:
    """The one line a release manager reads first."""

    level: Literal["go", "no-go", "incomplete"]
    headline: str
    detail: str


@dataclass(frozen=True)
class _Chip:
    label: str
    verdict: str
    tag: str
    href: str | None
    title: str
    code: str


@dataclass
class _Grid:
    matrix: str
    builds: list[str]
    hardware: list[str]
    chips: dict[tuple[str, str], list[_Chip]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Signature:
    """Failing cells that failed the same way: what a release manager triages by."""

    verdict: str
    bugcheck: str
    bugcheck_name: str
    attribution: str
    cells: int
    common: str
    example: str
    example_href: str


@dataclass(frozen=True)
class _EventRow:
    t: str
    source: str
    kind: str
    detail: str
    level: str


@dataclass(frozen=True)
class _Output:
    """One output stream of a command, as the page shows it."""

    name: str  # "stdout", "stderr"
    excerpt: Markup  # escaped and cleaned here: the page's own value limit must not cut it again
    lines: int
    cut: bool  # the excerpt is not the whole output
    href: str | None  # the whole output, where the run kept it as a file


@dataclass(frozen=True)
class _Command:
    record: CommandRecord
    outputs: list[_Output]


def cell_slug(cell: CellResult, *, qualify: bool = False) -> str:
    """File-name-safe name of a cell's evidence page (``qualify`` adds the matrix file).

    At most :data:`SLUG_LENGTH` characters: a longer name is cut and ends with a hash of the
    whole one, so two long ids that differ only at their end still get two pages.
    """
    base = f"{Path(cell.matrix).stem}--{cell.id}" if qualify and cell.matrix else cell.id
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "cell"
    if len(slug) <= SLUG_LENGTH:
        return slug
    digest = hashlib.sha256(base.encode("utf-8", errors="replace")).hexdigest()[:10]
    return f"{slug[: SLUG_LENGTH - len(digest) - 1].rstrip('._-')}-{digest}"


def _natural(text: str) -> list[tuple[int, str]]:
    """Sort key that puts build 9 before build 10 (numbers compared by value, any length)."""
    key = []
    for n, part in enumerate(re.split(r"(\d+)", text)):
        if n % 2:  # a run of digits: shorter is smaller, then digit by digit
            digits = part.lstrip("0") or "0"
            key.append((len(digits), digits))
        else:
            key.append((-1, part.lower()))
    return key


def _products(products: Sequence[str]) -> str:
    return "+".join(products) or "none"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "in progress"
    offset = moment.utcoffset()
    zone = "" if offset is None else (" UTC" if not offset else moment.strftime(" %z"))
    return moment.strftime("%Y-%m-%d %H:%M:%S") + zone


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return f"{seconds} s"  # "inf s", "nan s": shown as the file has it
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def summarize(cells: Sequence[CellResult], not_run: int = 0) -> Summary:
    """Go / no-go from the verdicts alone. ``compatlab signoff`` applies the ring policy."""
    total = len(cells) + not_run
    blamed = [c for c in cells if c.verdict.is_failure and c.attribution is not Attribution.INFRA]
    candidate = [c for c in blamed if c.attribution is not Attribution.BASELINE]
    baseline = len(blamed) - len(candidate)
    unknown = sum(1 for c in cells if c.attribution is Attribution.INFRA) + not_run
    notes = []
    if baseline:
        verb = "fails" if baseline == 1 else "fail"
        notes.append(f"{baseline} {verb} without the candidate too (baseline)")
    if unknown:
        notes.append(f"{unknown} without a verdict on the candidate (infra error or not run)")
    if candidate:
        kinds = Counter(c.verdict for c in candidate)
        parts = [f"{n} {v.value}" for v, n in sorted(kinds.items(), key=lambda i: i[0].severity)]
        codes = sorted({f"{c.bugcheck.code} {c.bugcheck.name}" for c in candidate if c.bugcheck})
        detail = "; ".join([", ".join(parts)] + ([f"bugcheck {', '.join(codes)}"] if codes else []))
        return Summary(
            "no-go",
            f"NO-GO: the candidate fails {len(candidate)} of {total} cells",
            "; ".join([detail, *notes]),
        )
    if not total:
        return Summary("incomplete", "INCOMPLETE: no cell has run", "no verdict yet")
    if unknown:
        return Summary(
            "incomplete",
            f"INCOMPLETE: no failure caused by the candidate in {len(cells) - unknown} of "
            f"{total} cells",
            "; ".join(notes),
        )
    return Summary(
        "go",
        f"GO: no failure caused by the candidate in {total} cells",
        "; ".join(notes) or "every cell passed",
    )


# -- evidence -----------------------------------------------------------------------------------


def _inside(run_dir: Path, relative: str) -> Path | None:
    """The artifact's path if it lies inside the run folder, else None (never follow ../..).

    A path no file can have (a NUL in it, a name too long) is None too, not an error.
    """
    if not relative or Path(relative).is_absolute():
        return None
    try:
        root = run_dir.resolve()
        path = (root / relative).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
    except (OSError, ValueError):
        return None


def _serial(path: Path | None) -> list[tuple[str, bool]] | None:
    if path is None:
        return None
    try:
        lines = serial_tail(path)
    except OSError:
        return None  # unreadable: the page says there is no serial log, the link stays
    return [(line, bool(_HOT_LINE.search(line))) for line in lines]


def serial_tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a serial log, stripped of terminal escapes."""
    with path.open("rb") as log:
        size = log.seek(0, 2)
        log.seek(max(0, size - _SERIAL_TAIL_BYTES))
        data = log.read()
    out = printable(data.decode("utf-8", errors="replace")).split("\n")
    while out and not out[-1].strip():
        out.pop()
    return out[-lines:]


def _event_row(event: Event) -> _EventRow:
    level = (
        "bad"
        if event.kind in _BAD_KINDS or "bugcheck_code" in event.data
        else "warn"
        if event.kind in _WARN_KINDS
        else "good"
        if event.kind in _GOOD_KINDS
        else ""
    )
    bugcheck = bugcheck_of(event)
    # Once decoded, the bugcheck keys and the raw QMP payload would only repeat it.
    hidden = {*Bugcheck.EVENT_KEYS, "payload", "arg1", "arg2", "arg3", "arg4", "arg5"}
    shown = (
        event.data.items()
        if bugcheck is None
        else [(k, v) for k, v in event.data.items() if k not in hidden]
    )
    extra = " ".join(f"{k}={v}" for k, v in shown)
    if bugcheck is not None:
        params = f" ({', '.join(bugcheck.params)})" if bugcheck.params else ""
        extra = f"{bugcheck.code} {bugcheck.name}{params} {extra}"
    detail = f"{event.detail} {extra}".strip()
    return _EventRow(f"{event.t:.3f}", event.source, event.kind, detail, level)


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


def _commands(run_dir: Path, cell: CellResult) -> list[_Command]:
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
            href = "../" + quote(kept) if _inside(run_dir, kept) else None
            cut = excerpt != text or "bytes cut]" in text
            outputs.append(_Output(name, Markup.escape(printable(excerpt)), lines, cut, href))
        out.append(_Command(record, outputs))
    return out


def _timeline(events: Sequence[Event]) -> list[_EventRow | None]:
    """The rows of the event timeline; None stands for the rows left out of a huge one."""
    if len(events) <= EVENT_ROWS:
        return [_event_row(e) for e in events]
    half = EVENT_ROWS // 2
    return [
        *(_event_row(e) for e in events[:half]),
        None,
        *(_event_row(e) for e in events[-half:]),
    ]


def _evidence(run_dir: Path, cell: CellResult) -> dict[str, object]:
    serial = _inside(run_dir, cell.artifacts.get("serial_log", ""))
    shot = _inside(run_dir, cell.artifacts.get("screenshot", ""))
    artifacts = [
        (name, "../" + quote(rel) if _inside(run_dir, rel) else None, rel)
        for name, rel in sorted(cell.artifacts.items())
    ]
    events = [e for e in cell.events if e.kind != "tick"]
    return {
        "events": _timeline(events),
        "events_total": len(events),
        "commands": _commands(run_dir, cell),
        "serial": _serial(serial),
        "serial_name": cell.artifacts.get("serial_log", ""),
        "screenshot": "../" + quote(cell.artifacts["screenshot"]) if shot else None,
        "artifacts": artifacts,
        "checks": _check_rows(cell.checks),
    }


# -- the index ------------------------------------------------------------------------------------


def _grids(
    cells: Sequence[CellResult], slugs: dict[int, str], planned: Sequence[PlannedCell]
) -> list[_Grid]:
    grids: dict[str, _Grid] = {}
    seen: set[tuple[str, str]] = set()

    def grid(matrix: str) -> _Grid:
        return grids.setdefault(matrix, _Grid(matrix, [], []))

    def place(g: _Grid, build: str, hardware: str, chip: _Chip) -> None:
        if build not in g.builds:
            g.builds.append(build)
        if hardware not in g.hardware:
            g.hardware.append(hardware)
        g.chips.setdefault((build, hardware), []).append(chip)

    for cell in cells:
        seen.add((cell.matrix, cell.id))
        reason = f" — {cell.reason}" if cell.reason else ""
        chip = _Chip(
            label=_products(cell.products),
            verdict=cell.verdict.value,
            tag=TAGS[cell.verdict.value],
            href=f"cells/{slugs[id(cell)]}.html",
            title=f"{cell.id}: {cell.verdict.value}{reason}",
            code=cell.bugcheck.code if cell.bugcheck else "",
        )
        place(grid(cell.matrix), cell.build, cell.hardware, chip)
    for plan in planned:
        if (plan.matrix, plan.id) in seen:
            continue
        chip = _Chip(_products(plan.products), "not_run", TAGS["not_run"], None, plan.id, "")
        place(grid(plan.matrix), plan.build, plan.hardware, chip)
    for g in grids.values():
        if not planned:  # no matrix order to keep: completion order means nothing, sort
            g.builds.sort(key=_natural)
            g.hardware.sort(key=_natural)
        for chips in g.chips.values():
            chips.sort(key=lambda c: (c.label != "none", _natural(c.label)))
    return list(grids.values())


def _common(cells: Sequence[CellResult]) -> str:
    """What every cell of a group shares: the likely trigger, in the lab's words."""
    if len(cells) < 2:
        return ""  # one cell shares everything with itself: the example link says it all
    parts = []
    shared = set(cells[0].products).intersection(*(c.products for c in cells[1:]))
    if shared:
        parts.append("every cell has " + " + ".join(sorted(shared)))
    for axis in ("build", "hardware"):
        values = {getattr(c, axis) for c in cells}
        if len(values) == 1:
            parts.append(f"only {axis} {values.pop()}")
    return "; ".join(parts)


def _signatures(failing: Sequence[CellResult], slugs: dict[int, str]) -> list[_Signature]:
    groups: dict[tuple[Verdict, str, str], list[CellResult]] = {}
    for cell in failing:
        code = cell.bugcheck.code if cell.bugcheck else ""
        who = cell.attribution.value if cell.attribution else ""
        groups.setdefault((cell.verdict, code, who), []).append(cell)
    out = [
        _Signature(
            verdict=verdict.value,
            bugcheck=code,
            bugcheck_name=cells[0].bugcheck.name if cells[0].bugcheck else "",
            attribution=who,
            cells=len(cells),
            common=_common(cells),
            example=cells[0].id,
            example_href=f"cells/{slugs[id(cells[0])]}.html",
        )
        for (verdict, code, who), cells in groups.items()
    ]
    return sorted(out, key=lambda s: (Verdict(s.verdict).severity, -s.cells, s.bugcheck))


def _shown(value: object) -> object:
    """Every ``{{ value }}`` of a page: text without control characters (guest text carries
    terminal escapes), bounded. Escaping follows, by autoescape."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return printable(cap_text(value, VALUE_LIMIT))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every template: reasons and serial output are hostile text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_shown,
    )
    env.globals["tags"] = TAGS
    return env


def render_html(
    run_dir: Path,
    run: RunInfo,
    cells: Sequence[CellResult],
    *,
    planned: Iterable[PlannedCell] = (),
) -> Path:
    """Write index.html and one evidence page per cell into ``run_dir``; the index's path.

    ``planned`` lists the matrix's cells so the ones without a result show as not run.
    """
    planned = list(planned)
    qualify = len({c.matrix for c in cells} | {p.matrix for p in planned}) > 1
    slugs: dict[int, str] = {}
    used: set[str] = set()
    for cell in cells:
        slug = base = cell_slug(cell, qualify=qualify)
        n = 1
        # Ids differing only in unsafe characters, or in case (a case-blind file system).
        while slug.lower() in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug.lower())
        slugs[id(cell)] = slug
    env = _environment()
    page = env.get_template("cell.html.j2")
    for cell in cells:
        html = page.render(
            run=run, cell=cell, tag=TAGS[cell.verdict.value], **_evidence(run_dir, cell)
        )
        write_text_atomic(run_dir / "cells" / f"{slugs[id(cell)]}.html", html, durable=False)

    ran = {(c.matrix, c.id) for c in cells}
    not_run = sum(1 for p in planned if (p.matrix, p.id) not in ran)
    counts = Counter(c.verdict.value for c in cells)
    failing = sorted(
        (c for c in cells if c.verdict.is_failure),
        key=lambda c: (c.verdict.severity, _natural(c.id)),
    )
    # A naive and an aware time cannot be subtracted: both are shown, the duration is not.
    comparable = run.finished is not None and (run.finished.utcoffset() is None) == (
        run.started.utcoffset() is None
    )
    duration = (
        _duration((run.finished - run.started).total_seconds())
        if run.finished is not None and comparable
        else ""
    )
    html = env.get_template("index.html.j2").render(
        run=run,
        started=_when(run.started),
        finished=_when(run.finished),
        duration=duration,
        summary=summarize(cells, not_run),
        counts=[(v.value, counts.get(v.value, 0)) for v in Verdict] + [("not_run", not_run)],
        total=len(cells) + not_run,
        grids=_grids(cells, slugs, planned),
        failing=[(c, slugs[id(c)]) for c in failing],
        signatures=_signatures(failing, slugs),
        multi_matrix=qualify,
        cell_seconds=_duration(sum(c.seconds for c in cells)),
    )
    return write_text_atomic(run_dir / INDEX_FILE, html, durable=False)


def render_report(run_dir: Path, *, planned: Iterable[PlannedCell] = ()) -> Path:
    """Re-render index.html, the evidence pages and junit.xml from ``run_dir``/results.json.

    What ``compatlab report RUN_DIR`` does; the index's path.
    """
    results = load_results(run_dir)
    write_junit(run_dir, results.run, results.cells)
    return render_html(run_dir, results.run, results.cells, planned=planned)
