"""Report inputs from recorded runs (``tests/support/recorded/``), at any scale.

:func:`recorded_run` copies the recorded runs' artifacts into a run folder and returns their
ten cells; :func:`scaled` repeats those cells over a builds x hardware x products grid of any
size, each copy its own cell id (and so its own evidence page) but the recorded events, boots,
commands, serial logs and screenshots. :func:`hostile_cell` is a cell whose guest text, names
and paths try to run script in the report. Used by the report's scale and hostile tests, the
browser test and ``benchmarks/render.py``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from compatlab.model import Attribution, Boot, Bugcheck, CellResult, CommandRecord, Event, Verdict
from compatlab.report import RunInfo, load_results

__all__ = ["HOSTILE_MARKS", "RECORDED", "hostile_cell", "recorded_run", "scaled"]

RECORDED = Path(__file__).parent / "recorded"
BUILDS = 50
HARDWARE = 20


def recorded_run(run_dir: Path) -> tuple[RunInfo, list[CellResult]]:
    """The recorded runs as one: the first run's header, every run's cells (in folder order),
    their artifacts copied under ``run_dir``/cells (the recorded paths, which do not collide)."""
    run: RunInfo | None = None
    cells: list[CellResult] = []
    for folder in sorted(p for p in RECORDED.iterdir() if p.is_dir()):
        results = load_results(folder)
        run = run or results.run
        cells += results.cells
        shutil.copytree(folder / "cells", run_dir / "cells", dirs_exist_ok=True)
    assert run is not None, f"no recorded runs in {RECORDED}"
    return run, cells


def scaled(
    cells: list[CellResult],
    n: int,
    *,
    matrix: str = "matrix/scale.yaml",
    failing_every: int = 0,
) -> list[CellResult]:
    """``n`` cells cycling through ``cells``: build ``b00``..``b49`` x hardware ``h00``..``h19``,
    then one more product set per 1,000 cells, so ids are unique and the grid stays 50 x 20.

    ``failing_every=N`` makes every Nth cell a copy of a failing cell and the others copies of
    passing ones (the recorded runs alone fail 7 cells in 10; a nightly run far fewer).
    """
    passing = [c for c in cells if not c.verdict.is_failure]
    failing = [c for c in cells if c.verdict.is_failure]
    out = []
    for i in range(n):
        if failing_every and passing and failing:
            pool = failing if i % failing_every == 0 else passing
            template = (
                pool[i // failing_every % len(pool)] if pool is failing else pool[i % len(pool)]
            )
        else:
            template = cells[i % len(cells)]
        build, hardware, block = f"b{i % BUILDS:02d}", f"h{i // BUILDS % HARDWARE:02d}", i // 1000
        products = ("recorded", f"set{block}") if block else ("recorded",)
        out.append(
            replace(
                template,
                id=f"{build}/{hardware}/{'+'.join(products)}",
                build=build,
                hardware=hardware,
                products=products,
                matrix=matrix,
            )
        )
    return out


# What each hostile payload would set if it ran: a page where one of these is defined ran it.
HOSTILE_MARKS = (
    "product", "reason", "serial", "stdout", "stderr", "command", "event", "img", "artifact",
)  # fmt: skip


def _run_js(mark: str) -> str:
    return f"window.__pwned='{mark}'"


def hostile_cell(run_dir: Path) -> CellResult:
    """A crashed cell whose product name, reason, bugcheck, event, serial log, command and
    outputs, and artifact paths hold ``<script>``, quotes, event-handler attributes and
    ``javascript:`` URLs; its serial log is written under ``run_dir``."""
    serial = "cells/hostile/serial.log"
    (run_dir / serial).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / serial).write_text(
        "boot: <script>" + _run_js("serial") + "</script>\r\n"
        'login: "quoted" \'single\' <a href="javascript:' + _run_js("serial") + '">link</a>\r\n'
        '<img src=x onerror="' + _run_js("img") + '">\r\n'
        "Kernel panic - not syncing: <script>" + _run_js("serial") + "</script>\r\n",
        encoding="utf-8",
    )
    product = '"><script>' + _run_js("product") + "</script>"
    return CellResult(
        id=f"hostile/bios-1cpu/{product}",
        build="hostile",
        hardware="bios-1cpu",
        products=(product,),
        verdict=Verdict.CRASH,
        attribution=Attribution.CANDIDATE,
        bugcheck=Bugcheck("panic", "Kernel panic - <script>" + _run_js("reason") + "</script>"),
        boots=[Boot(1, "completed", 20.0, "baseline"), Boot(2, "crash", 7.5, "boots")],
        events=[
            Event(0.5, "scenario", "phase", "boots"),
            Event(9.0, "serial", "bugcheck", "<script>" + _run_js("event") + "</script>"),
        ],
        artifacts={
            "serial_log": serial,
            "javascript": "javascript:" + _run_js("artifact"),
        },
        seconds=30.0,
        reason='crash: "<script>' + _run_js("reason") + '</script>" javascript:alert(1)',
        commands=[
            CommandRecord(
                phase="install",
                command='setup.sh --url="javascript:' + _run_js("command") + "\" '<b>'",
                exit_code=1,
                stdout="<script>" + _run_js("stdout") + "</script>\n",
                stderr='\'"><img src=x onerror="' + _run_js("stderr") + '">\n',
                seconds=2.0,
                meaning="failure",
            )
        ],
        matrix="matrix/hostile.yaml",
    )
