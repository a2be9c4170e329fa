"""compatlab's pytest hooks: options, collection of matrix cells, and hand-off to the run.

Hooks only. Loading and validating matrices happens once in ``pytest_configure`` so that a bad
matrix stops the session with a usage error (exit code 4) before anything is collected or
started; each cell then becomes one :class:`CellItem` named
``<matrix-file>::<build>/<hardware>/<products>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.errors import InputError
from compatlab.matrix import CatalogCache, Cell, Matrix, find_project_root, load_matrix

__all__ = ["CellItem", "MatrixFile"]

_MATRICES = pytest.StashKey[dict[Path, Matrix]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compatlab", "compatibility lab")
    group.addoption(
        "--matrix",
        action="append",
        default=[],
        metavar="PATH",
        help="collect the cells of a matrix file (repeatable)",
    )
    group.addoption(
        "--matrix-report",
        metavar="DIR",
        default=None,
        help="where the run's report goes (default reports/<run-id>/)",
    )
    group.addoption(
        "--matrix-hosts",
        metavar="PATH",
        default=None,
        help="lab hosts file (default configs/lab.yaml, else the local hypervisor)",
    )
    group.addoption(
        "--matrix-resume",
        action="store_true",
        default=False,
        help="skip cells already finished in the run folder given by --matrix-report",
    )


def pytest_configure(config: pytest.Config) -> None:
    paths = [Path(p) for p in config.getoption("matrix")]
    if not paths:
        return
    catalogs: CatalogCache = {}
    matrices: dict[Path, Matrix] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in matrices:
            continue
        try:
            matrices[resolved] = load_matrix(
                path, catalog_root=find_project_root(path.parent), catalogs=catalogs
            )
        except InputError as exc:
            raise pytest.UsageError(str(exc)) from exc
    config.stash[_MATRICES] = matrices
    # With no test paths on the command line, a matrix run collects only its cells, not the
    # configured testpaths; with paths, the cells come in addition (e.g. custom checks).
    matrix_args = [str(p) for p in matrices]
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args = [*config.args, *(a for a in matrix_args if a not in config.args)]
    else:
        config.args = matrix_args


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> MatrixFile | None:
    matrices = parent.config.stash.get(_MATRICES, {})
    matrix = matrices.get(file_path.resolve())
    if matrix is None:
        return None
    return MatrixFile.from_parent(parent, path=file_path, matrix=matrix)


class MatrixFile(pytest.File):
    """A matrix YAML file: collects one item per cell, in expansion order."""

    def __init__(self, *, matrix: Matrix, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.matrix = matrix

    def collect(self) -> Iterator[CellItem]:
        for cell in self.matrix.cells:
            yield CellItem.from_parent(self, name=cell.id, cell=cell)


class CellItem(pytest.Item):
    """One matrix cell: one VM, one verdict."""

    def __init__(self, *, cell: Cell, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.cell = cell
        # So that ``-k`` selects by an exact axis value as well as by substring of the id.
        self.extra_keyword_matches.update(
            {cell.build, cell.hardware.name, *cell.product_names, cell.os_family}
        )

    def runtest(self) -> None:
        pytest.skip("the lab is not wired into the run yet: cells are collected, not run")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"cell {self.cell.id}"
