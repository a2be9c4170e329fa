"""The live display's text and how it is drawn on pytest's terminal, in place.

Two pieces, both used by :class:`compatlab.progress.Progress` from pytest's main thread only:

* :func:`compose` -- what the display says: a header (``3 running, 9 done, 12 queued``) and one
  line per running cell with its phase and elapsed time. rich lays it out: columns measured in
  terminal cells (a product name in CJK or with emoji does not shift the columns), long ids
  and phases cut with an ellipsis, styles only when pytest itself writes colour. Phase text is
  made printable first and handed to rich as :class:`rich.text.Text`, never as markup: a
  product called ``[bold]`` is shown as it is spelt.
* :class:`TerminalBlock` -- where it goes: on the lines *below* pytest's current line, which
  is left exactly as it was. Erasing moves the cursor back to the column pytest left it at,
  so pytest's next ``.``/``F`` or ``PASSED`` lands where it would have without the display.

Why not ``rich.live.Live``: measured in a pseudo-terminal, a transient ``Live`` on pytest's
terminal file starts at the cursor and erases whole lines, so it wipes pytest's half-written
progress line (``test_x.py ...F.`` came out as ``.``); it also hides the cursor, refreshes from
a thread of its own and redirects ``sys.stdout`` unless each is turned off. What it adds over
this module is the cursor arithmetic, which is the part that must fit pytest's line.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compatlab.text import one_line

__all__ = ["Running", "Snapshot", "TerminalBlock", "compose", "elapsed", "frame_codes"]

# Longest id or phase kept before rich cuts it to the terminal's width.
_TEXT_LIMIT = 300
# ANSI control sequences (ECMA-48), the ones every terminal emulator in use understands.
_ERASE_LINE = "\x1b[2K"
_UP = "\x1b[1A"
_INDENT = "  "  # a running cell's line, under the header
_GAP = 2  # cells between columns


@dataclass(frozen=True)
class Running:
    """A cell running now: its id, its phase, and when it started (on the display's clock)."""

    cell: str
    phase: str
    since: float


@dataclass(frozen=True)
class Snapshot:
    """What the display shows at one moment: running cells (oldest first) and the counts."""

    running: tuple[Running, ...]
    done: int
    queued: int
    now: float


def elapsed(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h04m``: the width grows slowly, so the column stays put."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def compose(snapshot: Snapshot, *, width: int, height: int, color: bool) -> list[str]:
    """The display's lines, none wider than ``width`` cells and at most ``height`` of them.

    With more running cells than fit, the oldest are shown and a last line counts the others.
    ``color``: SGR styles in the lines (pytest's own choice: ``--color``, ``NO_COLOR``...).
    """
    from rich.console import Console
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    running = snapshot.running
    header = f"{len(running)} running, {snapshot.done} done, {snapshot.queued} queued"
    if not running and not snapshot.done and not snapshot.queued:
        return []
    room = max(height - 1, 0)  # lines under the header
    shown = running if len(running) <= room else running[: max(room - 1, 0)]
    rows = [
        (
            Text(one_line(cell.cell, _TEXT_LIMIT)),
            Text(one_line(cell.phase, _TEXT_LIMIT), style="cyan"),
            Text(elapsed(snapshot.now - cell.since), style="dim"),
        )
        for cell in shown
    ]
    widths = _widths(rows, width - len(_INDENT))
    table = Table.grid(padding=(0, _GAP), pad_edge=False)
    if widths is None:
        rows = []  # too narrow for a cell's line: the header alone
    else:
        table.add_column(width=widths[0], no_wrap=True, overflow="ellipsis")
        table.add_column(width=widths[1], no_wrap=True, overflow="ellipsis")
        table.add_column(width=widths[2], no_wrap=True, justify="right")
    for row in rows:
        table.add_row(*row)
    console = Console(
        file=io.StringIO(),
        width=max(width, 1),
        height=max(height, 1),
        color_system="standard" if color else None,
        force_terminal=True,
        force_interactive=False,
        legacy_windows=False,
        emoji=False,
        highlight=False,
        markup=False,
    )
    console.print(Text(header, style="bold"), overflow="ellipsis", no_wrap=True)
    if rows:
        console.print(Padding(table, (0, 0, 0, len(_INDENT)), expand=False))
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    if len(shown) < len(running) and room:
        more = f"… and {len(running) - len(shown)} more running"
        lines.append(_INDENT + one_line(more, max(width - len(_INDENT), 1)))
    return lines[: max(height, 0)]


def _widths(rows: Sequence[tuple[Any, Any, Any]], room: int) -> tuple[int, int, int] | None:
    """The columns' widths in terminal cells: the elapsed time whole, the id and the phase as
    they are where they fit, else cut -- the id to no less than half of what is left.
    None: not even a cell of each fits."""
    from rich.cells import cell_len

    if not rows:
        return (0, 0, 0)
    ids, phases, times = (max(cell_len(row[i].plain) for row in rows) for i in range(3))
    left = room - times - 2 * _GAP
    if left < 2:
        return None
    if ids + phases <= left:
        return (ids, phases, times)
    id_width = min(ids, max(left // 2, left - phases))
    return (id_width, max(left - id_width, 1), times) if left - id_width >= 1 else None


def frame_codes(lines: Sequence[str], *, shown: int, column: int) -> str:
    """What to write to replace the ``shown`` display lines (the cursor at the end of the last
    one) by ``lines``; with no lines, back to ``column`` of pytest's line above them.

    Only relative moves: the screen may have scrolled while the display was drawn (it is drawn
    at the bottom of the terminal), so a saved absolute position would be the wrong row.
    """
    out = []
    if shown:
        out.append("\r" + _ERASE_LINE + (_UP + _ERASE_LINE) * (shown - 1) + _UP)
        if not lines:
            out.append(f"\x1b[{column + 1}G")
    out.extend("\r\n" + line for line in lines)
    return "".join(out)


class TerminalBlock:
    """A block of lines under pytest's current line on its terminal writer.

    pytest captures fd 1 while an item runs; every write here steps around its capture
    manager (as pytest's live logging does), and only then can it ask whether the file is a
    terminal, or how big the terminal is. pytest's writer is not told about these writes
    (they go to its file): its idea of the current line stays true once the block is erased.
    """

    def __init__(self, tw: Any, capture: Any) -> None:
        self.tw = tw
        self.capture = capture
        self.shown = 0
        self.column = 0

    def uncaptured(self) -> contextlib.AbstractContextManager[None]:
        if self.capture is None:
            return contextlib.nullcontext()
        manager: contextlib.AbstractContextManager[None] = (
            self.capture.global_and_fixture_disabled()
        )
        return manager

    def isatty(self) -> bool:
        stream = getattr(self.tw, "_file", None)
        return bool(stream is not None and stream.isatty())

    def size(self) -> tuple[int, int]:
        """The terminal's columns (pytest's measure) and rows."""
        return int(self.tw.fullwidth), shutil.get_terminal_size().lines

    @property
    def color(self) -> bool:
        return bool(self.tw.hasmarkup)

    def draw(self, lines: Sequence[str]) -> None:
        """Show ``lines`` in place of what is shown (nothing drawn on a wrapped line's end)."""
        if not self.shown:
            width, _ = self.size()
            current = int(self.tw.width_of_current_line)
            if current and current % width == 0:
                return  # the cursor waits to wrap: no column to come back to
            self.column = current % width
        self._write(frame_codes(lines, shown=self.shown, column=self.column))
        self.shown = len(lines)

    def erase(self) -> None:
        if self.shown:
            self._write(frame_codes([], shown=self.shown, column=self.column))
            self.shown = 0

    def _write(self, text: str) -> None:
        if not text:
            return
        stream = self.tw._file
        stream.write(text)
        stream.flush()
