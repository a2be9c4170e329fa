"""Matrix files: load and validate (errors carry file:line:col), expand into cells."""

from __future__ import annotations

from pathlib import Path

from compatlab.matrix.load import CatalogCache, load_matrix
from compatlab.matrix.model import Candidate, Cell, Matrix, ScenarioSettings, Strategy, cell_id

__all__ = [
    "Candidate",
    "CatalogCache",
    "Cell",
    "Matrix",
    "ScenarioSettings",
    "Strategy",
    "cell_id",
    "find_project_root",
    "load_matrix",
]


def find_project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``images/`` and ``configs/``.

    That is where a matrix without a ``catalog`` key finds its images, hardware and products.
    Falls back to ``start`` itself, where the catalog loader then names the missing folder.
    """
    try:
        start = start.resolve()
    except (RuntimeError, OSError):
        return start  # a symlink loop: the matrix loader names it, with the file
    for folder in (start, *start.parents):
        if (folder / "images").is_dir() and (folder / "configs").is_dir():
            return folder
    return start
