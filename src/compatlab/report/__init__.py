"""A run's report: ``results.json`` (the contract), ``junit.xml``, the HTML pages and the history.

Everything lands in one run folder, ``reports/<run-id>/``, and the history beside the folders::

    results.json      schema 1, rewritten atomically after every cell  (results.py, reader.py)
    junit.xml         one testcase per cell, for CI                      (junit.py)
    index.html        header, changes, filters, grid, crash groups       (html.py, index.py)
    cells/<slug>.html one evidence page per cell                         (evidence.py, charts.py)
    ../history.sqlite every run's verdicts and crash signatures          (history.py, changes.py)

``render_report(run_dir)`` re-renders the pages from results.json and records the run in the
history: what ``compatlab report`` does.
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
