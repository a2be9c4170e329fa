"""A run's report: ``results.json`` (the contract), ``junit.xml`` and the HTML pages.

Everything lands in one run folder, ``reports/<run-id>/``::

    results.json      schema 1, rewritten atomically after every cell  (results.py)
    junit.xml         one testcase per cell, for CI                      (junit.py)
    index.html        header, go/no-go line, builds x hardware grid     (html.py)
    cells/<slug>.html one evidence page per cell

``render_report(run_dir)`` re-renders the last two from the first: what ``compatlab report`` does.
"""

from compatlab.report.html import (
    INDEX_FILE,
    PlannedCell,
    Summary,
    cell_slug,
    render_html,
    render_report,
    serial_tail,
    summarize,
)
from compatlab.report.junit import JUNIT_FILE, junit_xml, write_junit
from compatlab.report.results import (
    RESULTS_FILE,
    SCHEMA,
    Results,
    ResultsWriter,
    RunInfo,
    cell_from_json,
    load_results,
    results_document,
    write_results,
    write_text_atomic,
)

__all__ = [
    "INDEX_FILE",
    "JUNIT_FILE",
    "RESULTS_FILE",
    "SCHEMA",
    "PlannedCell",
    "Results",
    "ResultsWriter",
    "RunInfo",
    "Summary",
    "cell_from_json",
    "cell_slug",
    "junit_xml",
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
