"""The report at scale and under attack, rendered from recorded runs (issue 11's rendering tests).

- 5,000 cells, each a copy of a recorded cell (``tests/support/recorded``) under its own id:
  every cell has its chip in the grid linking to its own evidence page, every failing cell its
  row, and the counts add up. Structure only -- timings are ``benchmarks/render.py``'s.
- A cell whose serial log, product name, reason, event, command and outputs and artifact path
  hold ``<script>``, quotes, event-handler attributes and ``javascript:`` URLs: the pages hold
  no script but the index's own, no handler attribute and no ``javascript:`` link, and every
  payload is there as text. (The browser test checks that nothing runs.)

The pages are read with :class:`html.parser.HTMLParser`, as a browser tokenizes them: a payload
that escaped its text node would show up as a tag or an attribute here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from compatlab.errors import InputError
from compatlab.model import CellResult, Verdict
from compatlab.report import INDEX_FILE, load_results, render_html, write_results
from tests.support.recorded_runs import HOSTILE_MARKS, hostile_cell, recorded_run, scaled

SCALE = 5000
URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "xlink:href", "data"})


@dataclass
class Page:
    """What a browser's tokenizer makes of a page: its tags, their attributes, its text."""

    raw: str
    tags: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    script_bodies: list[str] = field(default_factory=list)

    def elements(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and (cls is None or cls in attrs.get("class", "").split())
        ]

    def all_text(self) -> str:
        return "".join(self.text)


class _Reader(HTMLParser):
    def __init__(self, raw: str) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page(raw)
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.page.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        (self.page.script_bodies if self._in_script else self.page.text).append(data)


def read_page(path: Path) -> Page:
    raw = path.read_text(encoding="utf-8")
    reader = _Reader(raw)
    reader.feed(raw)
    reader.close()
    return reader.page


def _rendered(run_dir: Path, cells: list[CellResult]) -> Page:
    run, _ = recorded_run(run_dir)
    write_results(run_dir, run, cells)
    index = render_html(run_dir, run, cells, history=run_dir / "history.sqlite")
    assert index == run_dir / INDEX_FILE
    return read_page(index)


# -- 5,000 cells ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CellResult], Page]:
    run_dir = tmp_path_factory.mktemp("scale")
    _, recorded = recorded_run(run_dir)
    cells = scaled(recorded, SCALE)
    return run_dir, cells, _rendered(run_dir, cells)


def test_every_cell_has_one_chip_linking_to_its_own_page(
    big: tuple[Path, list[CellResult], Page],
) -> None:
    run_dir, cells, index = big
    chips = index.elements("a", "chip")
    assert len(chips) == SCALE
    assert {c["data-cell"] for c in chips} == {c.id for c in cells}
    hrefs = [c["href"] for c in chips]
    assert len(set(hrefs)) == SCALE, "two cells share an evidence page"
    assert all(re.fullmatch(r"cells/[A-Za-z0-9._-]+\.html", h) for h in hrefs)
    pages = {p.name for p in (run_dir / "cells").glob("*.html")}
    assert {h.removeprefix("cells/") for h in hrefs} == pages


def test_each_evidence_page_is_its_cells(big: tuple[Path, list[CellResult], Page]) -> None:
    run_dir, cells, index = big
    chips = {c["data-cell"]: c for c in index.elements("a", "chip")}
    # A copy of every recorded cell (the first ten), and 25 more across the grid.
    for cell in [*cells[:10], *cells[:: SCALE // 25]]:
        chip = chips[cell.id]
        page = read_page(run_dir / chip["href"])
        assert chip["data-v"] == cell.verdict.value
        assert cell.id in page.all_text()
        badge = page.elements("span", "badge")[0]
        assert f"v-{cell.verdict.value}" in badge["class"]
        assert page.elements("a")[0]["href"] == "../index.html"
        assert not page.elements("script"), "an evidence page runs no script"


def test_counts_add_up(big: tuple[Path, list[CellResult], Page]) -> None:
    _, cells, index = big
    expected = Counter(c.verdict.value for c in cells)
    counts = dict(
        re.findall(
            r'title="([a-z_]+)">\s*<span class="swatch[^"]*"></span><span class="n">(\d+)<',
            index.raw,
        )
    )
    assert {v.value for v in Verdict} | {"not_run"} == set(counts)
    assert {v: int(n) for v, n in counts.items() if int(n)} == dict(expected)
    assert f"{SCALE} cells" in index.all_text()
    failing = [c for c in cells if c.verdict.is_failure]
    assert failing and len(failing) < SCALE
    rows = [r for name, r in index.tags if name == "tr" and "data-cell" in r]
    # The failing table, and "since the last run" (empty: the first run of this matrix).
    assert Counter(r["data-cell"] for r in rows) == Counter(c.id for c in failing)
    assert f"Failing cells ({len(failing)})" in index.all_text()
    links = {a["href"] for a in index.elements("a") if a.get("href", "").startswith("cells/")}
    chips = {a["href"] for a in index.elements("a", "chip")}
    assert links == chips, "a failing row links to a page no chip links to"


def test_filters_offer_the_values_present(big: tuple[Path, list[CellResult], Page]) -> None:
    _, cells, index = big
    raw = index.raw
    for name, values in (
        ("build", {c.build for c in cells}),
        ("hardware", {c.hardware for c in cells}),
        ("product", {p for c in cells for p in c.products}),
    ):
        select = re.search(rf'<select name="{name}">(.*?)</select>', raw, re.DOTALL)
        assert select is not None, name
        offered = re.findall(r"<option>([^<]*)</option>", select.group(1))
        assert set(offered) == values, name
    assert len({c.build for c in cells}) == 50 and len({c.hardware for c in cells}) == 20
    verdicts = re.search(r'<select name="verdict">(.*?)</select>', raw, re.DOTALL)
    assert verdicts is not None
    choices = set(re.findall(r'<option value="([a-z_]+)">', verdicts.group(1)))
    assert choices == {c.verdict.value for c in cells} | {"failing"}


# -- a hostile cell -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CellResult, Page, Page]:
    run_dir = tmp_path_factory.mktemp("hostile")
    _, recorded = recorded_run(run_dir)
    cell = hostile_cell(run_dir)
    index = _rendered(run_dir, [*recorded, cell])
    chip = next(a for a in index.elements("a", "chip") if a["data-cell"] == cell.id)
    return run_dir, cell, index, read_page(run_dir / chip["href"])


def _no_active_content(page: Page, scripts: int) -> None:
    assert len(page.elements("script")) == scripts
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), f"<{tag} {name}=...>: an event handler"
            if name in URL_ATTRIBUTES:
                scheme = re.sub(r"[\s\x00-\x1f]", "", value).lower()
                assert not scheme.startswith(("javascript:", "data:text", "vbscript:")), value
    assert not any(a.get("src") == "x" for _, a in page.tags), "the payload's <img> is a tag"


def test_the_index_runs_only_its_own_script(hostile: tuple[Path, CellResult, Page, Page]) -> None:
    _, cell, index, _ = hostile
    _no_active_content(index, scripts=1)
    assert not any("__pwned" in body for body in index.script_bodies)
    text = index.all_text()
    assert cell.id in text  # the product name, with its <script>, as text
    assert cell.reason in text


def test_the_evidence_page_shows_every_payload_as_text(
    hostile: tuple[Path, CellResult, Page, Page],
) -> None:
    run_dir, cell, _, page = hostile
    _no_active_content(page, scripts=0)
    text = page.all_text()
    serial = (run_dir / cell.artifacts["serial_log"]).read_text().replace("\r\n", "\n")
    for line in serial.splitlines():
        assert line in text, line
    command = cell.commands[0]
    for shown in (cell.id, cell.reason, command.command, command.stdout, command.stderr,
                  cell.events[1].detail, cell.artifacts["javascript"]):  # fmt: skip
        assert shown.strip() in text, shown
    assert cell.bugcheck is not None and cell.bugcheck.name in text
    # Every payload's mark is in the page as text, none in a script.
    marks = set(re.findall(r"window\.__pwned='(\w+)'", text))
    assert marks == set(HOSTILE_MARKS)


def test_a_javascript_artifact_is_not_a_link(hostile: tuple[Path, CellResult, Page, Page]) -> None:
    _, _, _, page = hostile
    hrefs = [a.get("href", "") for a in page.elements("a")]
    assert not any("pwned" in h for h in hrefs)
    assert any(h.endswith("serial.log") for h in hrefs), "the real serial log is linked"


# -- reading a big results.json -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("t", True, "events[1].t: expected a number, got bool"),
        ("t", "12.0", "events[1].t: expected a number, got str"),
        ("detail", None, "events[1].detail: expected a string, got NoneType"),
        ("data", {"reason": 3}, "events[1].data.reason: expected a string"),
        ("data", None, "events[1].data: expected an object, got NoneType"),
    ],
)
def test_events_read_fast_are_still_checked(
    tmp_path: Path, key: str, value: object, complaint: str
) -> None:
    """Events are read by a fast path (half a million in a 10,000-cell run); one that breaks
    the contract still fails naming its JSON path."""
    run, recorded = recorded_run(tmp_path)
    write_results(tmp_path, run, recorded)
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["cells"][2]["events"][1][key] = value
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=re.escape(f"cells[2].{complaint}")):
        load_results(tmp_path)
    doc["cells"][2]["events"][1] = ["t", 1.0]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=re.escape("cells[2].events[1]: expected an object")):
        load_results(tmp_path)
