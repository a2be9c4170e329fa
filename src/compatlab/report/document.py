"""What a results.json holds, as typed objects: the run (:class:`RunInfo`) and its cells.

Schema 1, extended as DESIGN.md allows (keys added, none renamed)::

    {"schema": 1,
     "run": {"id", "matrix": [...], "candidate": {"name", "version", "sha256"},
             "matrix_sha256": {path: hex}, "compatlab_version",
             "started", "finished", "hosts": [...], "complete"},
     "cells": [CellResult.as_json(), ...]}

``candidate.sha256``, ``matrix_sha256`` and ``compatlab_version`` say exactly what was tested
with what, for the sign-off; files written before they existed read back with them empty.
Writing is :mod:`compatlab.report.results`, reading :mod:`compatlab.report.reader`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from compatlab.model import CellResult, Verdict

__all__ = ["RESULTS_FILE", "SCHEMA", "Results", "RunInfo", "results_document"]

SCHEMA = 1
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class RunInfo:
    """The run a report is about: what was tested, where, when."""

    id: str
    matrix: tuple[str, ...]
    candidate_name: str
    candidate_version: str
    started: datetime
    finished: datetime | None = None  # None while the run is still going
    hosts: tuple[str, ...] = ()
    # SHA-256 of the candidate's payload (compatlab.report.provenance); "" when unknown. Runs of
    # several candidates join theirs with " + ", in the order of the names.
    candidate_sha256: str = ""
    # SHA-256 of each matrix file, by the path in ``matrix``.
    matrix_sha256: Mapping[str, str] = field(default_factory=dict)
    compatlab_version: str = ""

    def as_json(self, *, written: datetime | None = None) -> dict[str, object]:
        """The contract's ``run`` object. ``written`` stands in for ``finished`` mid-run."""
        finished = self.finished or written or datetime.now(UTC)
        return {
            "id": self.id,
            "matrix": list(self.matrix),
            "candidate": {
                "name": self.candidate_name,
                "version": self.candidate_version,
                "sha256": self.candidate_sha256 or None,
            },
            "matrix_sha256": dict(self.matrix_sha256),
            "compatlab_version": self.compatlab_version,
            "started": self.started.isoformat(),
            "finished": finished.isoformat(),
            "hosts": list(self.hosts),
            "complete": self.finished is not None,
        }

    @property
    def candidate_key(self) -> tuple[str, str, str]:
        """What makes two runs test the same candidate: name, version and payload checksum."""
        return (self.candidate_name, self.candidate_version, self.candidate_sha256)


@dataclass
class Results:
    """A results.json, read back as typed objects."""

    run: RunInfo
    cells: list[CellResult] = field(default_factory=list)

    def cell(self, matrix: str, cell_id: str) -> CellResult | None:
        for cell in self.cells:
            if (cell.matrix, cell.id) == (matrix, cell_id):
                return cell
        return None

    def finished(self) -> set[tuple[str, str]]:
        """``(matrix, cell id)`` of cells ``--matrix-resume`` may skip.

        An ``infra_error`` cell is not finished: the lab failed, not the update, so a resumed
        run tries it again.
        """
        return {(c.matrix, c.id) for c in self.cells if c.verdict is not Verdict.INFRA_ERROR}


def results_document(
    run: RunInfo, cells: Iterable[CellResult], *, written: datetime | None = None
) -> dict[str, object]:
    """The whole results.json as a JSON-ready dict."""
    return {
        "schema": SCHEMA,
        "run": run.as_json(written=written),
        "cells": [cell.as_json() for cell in cells],
    }
