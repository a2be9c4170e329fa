"""A run's report: ``results.json`` (the contract), ``junit.xml``, the HTML pages and the history.

Everything lands in one run folder, ``reports/<run-id>/``, and the history beside the folders::

    results.json      schema 1, rewritten atomically after every cell  (results.py, reader.py)
    junit.xml         one testcase per cell, for CI                      (junit.py)
    index.html        header, changes, filters, grid, crash groups       (html.py, index.py)
    cells/<slug>.html one evidence page per cell, as the cell ends       (live.py, pages.py)
    ../history.sqlite every run's verdicts and crash signatures          (history.py, changes.py)

A run writes each cell's evidence page when the cell is reported (:class:`LiveReport`) and
index.html at its end. ``render_report(run_dir)`` re-renders every page from results.json (the
same pages byte for byte; on several processes if asked) and records the run in the history:
what ``compatlab report`` does.
"""

from compatlab.report.changes import Change, HistoryView
from compatlab.report.document import RESULTS_FILE, SCHEMA, Results, RunInfo, results_document
from compatlab.report.history import HISTORY_FILE, History, default_history
from compatlab.report.html import (
    INDEX_FILE,
    PlannedCell,
    Summary,
    cell_slug,
    load_history,
    render_html,
    render_report,
    serial_tail,
    summarize,
)
from compatlab.report.junit import JUNIT_FILE, junit_xml, write_junit
from compatlab.report.live import LiveReport
from compatlab.report.reader import cell_from_json, load_results
from compatlab.report.results import ResultsWriter, write_results, write_text_atomic
from compatlab.report.stats import BlastRadius, FailureRate, blast_radius, failure_rate

__all__ = [
    "HISTORY_FILE",
    "INDEX_FILE",
    "JUNIT_FILE",
    "RESULTS_FILE",
    "SCHEMA",
    "BlastRadius",
    "Change",
    "FailureRate",
    "History",
    "HistoryView",
    "LiveReport",
    "PlannedCell",
    "Results",
    "ResultsWriter",
    "RunInfo",
    "Summary",
    "blast_radius",
    "cell_from_json",
    "cell_slug",
    "default_history",
    "failure_rate",
    "junit_xml",
    "load_history",
    "load_results",
    "render_html",
    "render_report",
    "results_document",
    "serial_tail",
    "summarize",
    "write_junit",
    "write_results",
    "write_text_atomic",
]
