"""compatlab's pytest hooks: options, collection of matrix cells, and hand-off to the run.

Hooks only. Loading and validating matrices happens once in ``pytest_configure`` so that a bad
matrix stops the session with a usage error (exit code 4) before anything is collected or
started; each cell then becomes one :class:`CellItem` named
``<matrix-file>::<build>/<hardware>/<products>``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from compatlab import files
from compatlab.errors import InputError, MatrixError
from compatlab.matrix import CatalogCache, Cell, Matrix, find_project_root, load_matrix
from compatlab.model import CellResult, Verdict
from compatlab.progress import Progress
from compatlab.signals import SigtermInterrupts
from compatlab.text import one_line

__all__ = ["CellFailed", "CellItem", "MatrixFile"]

_MATRICES = pytest.StashKey[dict[Path, Matrix]]()
_SESSION = pytest.StashKey["_Session"]()
_SIGTERM = pytest.StashKey[SigtermInterrupts]()
_RESULT_PROPERTY = "compatlab_cell"
# Characters of a cell's failure line on the terminal: the reason quotes guest text (a panic
# line), which is made one printable line first -- no escape sequence of a guest's reaches it.
_SUMMARY_LENGTH = 2000


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
        "--matrix-scheduler",
        metavar="ADDR",
        default=None,
        help="run the cells on a lab's Dask scheduler (tcp://HOST:PORT), whose workers are "
        "`compatlab worker`s (default: scheduler: in configs/lab.yaml, else an engine embedded "
        "in this process, running cells side by side up to the host's capacity)",
    )
    group.addoption(
        "--matrix-repeat",
        metavar="N",
        type=int,
        default=1,
        help="run each cell N times; a cell's verdict is the worst of its runs, and the report "
        "gives its failure ratio with a 95%% interval (default 1)",
    )
    group.addoption(
        "--matrix-cache",
        choices=("on", "off"),
        default="on",
        help="on: cells start from this host's cached pre-candidate layers, built once per "
        "configuration (the matrix's scenario: {cache: false} still opts out); off: every "
        "cell provisions, installs its products and boots its baseline itself (default on)",
    )
    group.addoption(
        "--matrix-resume",
        action="store_true",
        default=False,
        help="skip cells already finished in the run folder given by --matrix-report",
    )


def _without_cache(matrix: Matrix) -> Matrix:
    """``--matrix-cache off``: every cell of ``matrix`` starts from its golden image."""
    from dataclasses import replace

    cells = tuple(
        replace(cell, scenario=replace(cell.scenario, cache=False)) for cell in matrix.cells
    )
    return replace(matrix, cells=cells)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "matrix: a check that runs inside every cell of a --matrix run, after the scenario's "
        "boots; it takes the fixtures guest and cell, and its failure makes the cell "
        "check_failed",
    )
    from compatlab.repeats import MAX_REPEAT

    repeat = config.getoption("matrix_repeat")
    if not 1 <= repeat <= MAX_REPEAT:
        raise pytest.UsageError(f"--matrix-repeat must be between 1 and {MAX_REPEAT}, not {repeat}")
    paths = [Path(p) for p in config.getoption("matrix")]
    if not paths:
        return
    catalogs: CatalogCache = {}
    matrices: dict[Path, Matrix] = {}
    for path in paths:
        try:
            resolved = files.resolve(path, MatrixError)
            if resolved in matrices:
                continue
            matrices[resolved] = load_matrix(
                path, catalog_root=find_project_root(path.parent), catalogs=catalogs
            )
            if config.getoption("matrix_cache") == "off":
                matrices[resolved] = _without_cache(matrices[resolved])
        except InputError as exc:
            raise pytest.UsageError(str(exc)) from exc
    config.stash[_MATRICES] = matrices
    config.stash[_SESSION] = _Session(config, matrices)
    # SIGTERM (a CI job cancelled, `timeout`, `systemctl stop`) stops the run as Ctrl-C does:
    # the cell in progress is torn down and the report keeps what finished.
    sigterm = SigtermInterrupts()
    if sigterm.install():
        config.stash[_SIGTERM] = sigterm
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config.stash[_SESSION]), "compatlab-xdist")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(
            _ControllerHooks(config.stash[_SESSION]), "compatlab-controller"
        )
    # With no test paths on the command line, a matrix run collects only its cells, not the
    # configured testpaths; with paths, the cells come in addition (e.g. custom checks).
    matrix_args = [str(p) for p in matrices]
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args = [*config.args, *(a for a in matrix_args if a not in config.args)]
    else:
        config.args = matrix_args


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Before pytest renders an interrupt: drop what it cannot render (signals.renderable)."""
    from compatlab.signals import renderable

    renderable(excinfo)


def pytest_unconfigure(config: pytest.Config) -> None:
    sigterm = config.stash.get(_SIGTERM, None)
    if sigterm is not None:
        sigterm.restore()


@pytest.fixture
def guest() -> Any:
    """The channel into the cell's running guest (``run``, ``read_file``, ``write_file``).

    Only a matrix check (a test marked ``@pytest.mark.matrix``) gets a guest, inside each cell
    of a ``--matrix`` run; anywhere else the test is skipped.
    """
    pytest.skip("a matrix check: it runs inside every cell of a --matrix run")


@pytest.fixture
def cell() -> Any:
    """The :class:`~compatlab.matrix.Cell` a matrix check runs in."""
    pytest.skip("a matrix check: it runs inside every cell of a --matrix run")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Take the matrix checks out of the normal run: each cell runs them after its boots."""
    session = config.stash.get(_SESSION, None)
    if session is None:
        return
    checks = [i for i in items if isinstance(i, pytest.Function) and i.get_closest_marker("matrix")]
    if checks:
        session.checks = [MatrixCheck.from_item(i) for i in checks]
        items[:] = [i for i in items if i not in checks]
        # Counted as deselected: they do not run as items of their own.
        config.hook.pytest_deselected(items=checks)


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash.get(_SESSION, None)
    if state is None:
        return
    state.cells = [
        item.cell
        for item in session.items
        if isinstance(item, CellItem)
        and (str(item.cell.matrix), item.cell.id) not in state.finished_before
    ]


class MatrixCheck:
    """A user's check function, called in a cell with ``guest`` and ``cell``."""

    def __init__(self, name: str, function: Any, wants: tuple[str, ...]) -> None:
        self.name = name
        self.function = function
        self.wants = wants

    @classmethod
    def from_item(cls, item: pytest.Function) -> MatrixCheck:
        unknown = [a for a in item.fixturenames if a not in ("guest", "cell")]
        if unknown:
            raise pytest.UsageError(
                f"{item.nodeid}: a matrix check takes only the fixtures guest and cell, "
                f"not {', '.join(unknown)}"
            )
        return cls(item.nodeid, item.obj, tuple(item.fixturenames))

    def __call__(self, channel: Any, cell: Cell) -> Any:
        from compatlab.scenario import CheckOutcome

        given = {"guest": channel, "cell": cell}
        try:
            self.function(**{name: given[name] for name in self.wants})
        except AssertionError as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "assertion failed"
            return CheckOutcome(self.name, False, detail)
        except Exception as exc:  # a check's own bug fails the check, not the run
            return CheckOutcome(self.name, False, f"{type(exc).__name__}: {exc}")
        return CheckOutcome(self.name, True)


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
        session = self.config.stash[_SESSION]
        done = session.finished_before.get((str(self.cell.matrix), self.cell.id))
        if done is not None:
            pytest.skip(f"finished in the resumed run: {done}")
        queue = session.queue()
        # Every selected cell goes to the engine at the first item; this one waits for its own.
        # An xdist worker collects every item but runs only those xdist hands it, one at a
        # time: it submits its own item's cell, or every cell would run once per worker.
        cells = [self.cell] if session.in_xdist_worker else list(session.cells)
        queue.submit(cells)
        progress = session.lab_run().progress
        progress.plan(len(session.cells))
        # Between the wait's polls: a SIGTERM whose exception was lost is raised (signals.py).
        sigterm = self.config.stash.get(_SIGTERM, None)
        tick = progress.render if sigterm is None else sigterm.checking(progress.render)
        try:
            result = queue.wait(self.cell, tick=tick)
        except KeyboardInterrupt:
            if sigterm is not None:
                sigterm.reached()
            raise
        finally:
            progress.finished(self.cell.id)
            progress.clear()
        self.user_properties.append((_RESULT_PROPERTY, json.dumps(result.as_json())))
        if result.verdict is not Verdict.PASS:
            raise CellFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CellFailed):
            return excinfo.value.summary()
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"cell {self.cell.id}"


class CellFailed(Exception):
    """A cell's verdict is not ``pass``. Carries the result so the failure reads as evidence."""

    def __init__(self, result: CellResult) -> None:
        super().__init__(one_line(result.reason, _SUMMARY_LENGTH))
        self.result = result

    def summary(self) -> str:
        """The cell's failure as one printable line, for the terminal."""
        r = self.result
        who = f" [{r.attribution}]" if r.attribution else ""
        bug = f" bugcheck {r.bugcheck.code} {r.bugcheck.name}" if r.bugcheck else ""
        return one_line(f"{r.verdict.value.upper()}{who}{bug}: {r.reason}", _SUMMARY_LENGTH)


class _Session:
    """The plugin's state for one pytest process: the lab run and, in the controller, the report.

    Imports of the lab stay inside, so collecting never loads libvirt code paths it does not
    need, and ``--collect-only`` never connects to a hypervisor.
    """

    def __init__(self, config: pytest.Config, matrices: dict[Path, Matrix]) -> None:
        from compatlab.report import load_results
        from compatlab.run import check_report_dir, load_lab_settings, new_run_id

        self.config = config
        self.matrices = matrices
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.worker = workerinput["workerid"] if workerinput else "main"
        self.in_xdist_worker = workerinput is not None
        report_option = config.getoption("matrix_report")
        resume = bool(config.getoption("matrix_resume"))
        self.resume = resume
        self.repeat = int(config.getoption("matrix_repeat"))
        if resume and not report_option:
            raise pytest.UsageError("--matrix-resume needs --matrix-report DIR (the run to resume)")
        if workerinput and "compatlab_run_id" in workerinput:
            self.run_id = str(workerinput["compatlab_run_id"])
            self.report_dir = Path(workerinput["compatlab_report_dir"])
        else:
            self.run_id = new_run_id()
            self.report_dir = (
                Path(report_option) if report_option else config.rootpath / "reports" / self.run_id
            )
        self.report_dir = self.report_dir.resolve()
        try:
            check_report_dir(self.report_dir)
            hosts = config.getoption("matrix_hosts")
            default_hosts = config.rootpath / "configs" / "lab.yaml"
            self.settings = load_lab_settings(
                Path(hosts) if hosts else (default_hosts if default_hosts.exists() else None)
            )
        except InputError as exc:
            raise pytest.UsageError(str(exc)) from exc
        self.finished_before: dict[tuple[str, str], str] = {}
        if resume and (self.report_dir / "results.json").exists():
            try:
                old = load_results(self.report_dir)
            except InputError as exc:
                raise pytest.UsageError(f"cannot resume: {exc}") from exc
            self.run_id = old.run.id
            # Results.finished() owns the rule (infra_error cells are tried again).
            done = old.finished()
            self.finished_before = {
                (c.matrix, c.id): c.verdict.value for c in old.cells if (c.matrix, c.id) in done
            }
        from compatlab.lab.domain import find_template_dir

        first = next(iter(matrices.values()))
        self.template_dir = find_template_dir(find_project_root(first.path.parent))
        self._run: Any = None
        self._queue: Any = None
        #: The selected cells, in item order (set when collection finishes), minus those a
        #: resumed run finished already.
        self.cells: list[Cell] = []
        self.scheduler = config.getoption("matrix_scheduler") or self.settings.scheduler
        self.sink: Any = None
        self.index: Path | None = None
        self.checks: list[MatrixCheck] = []
        if workerinput is None:
            self._open_sink(resume)

    def _open_sink(self, resume: bool) -> None:
        from compatlab.report import RunInfo
        from compatlab.report.provenance import candidate_sha256, compatlab_version, matrix_sha256
        from compatlab.run import ReportSink

        # Matrices of one run normally test one candidate; where they test several (the fault
        # demos), the report names them all rather than pretend the first was the only one.
        candidates = list(
            dict.fromkeys((m.candidate.name, m.candidate.version) for m in self.matrices.values())
        )
        run = RunInfo(
            id=self.run_id,
            matrix=tuple(str(m.path) for m in self.matrices.values()),
            candidate_name=" + ".join(name for name, _ in candidates),
            candidate_version=" + ".join(version for _, version in candidates),
            started=datetime.now(UTC),
            hosts=(self.settings.uri,),
            # What exactly was tested, for the sign-off: see compatlab.report.provenance.
            candidate_sha256=candidate_sha256(m.candidate.payload for m in self.matrices.values()),
            matrix_sha256=matrix_sha256(m.path for m in self.matrices.values()),
            compatlab_version=compatlab_version(),
        )
        self.sink = ReportSink(self.report_dir, run, self.matrices.values(), resume=resume)

    def lab_run(self) -> Any:
        if self._run is None:
            from compatlab.run import LabRun

            self._run = LabRun(
                run_id=self.run_id,
                worker=self.worker,
                report_dir=self.report_dir,
                template_dir=self.template_dir,
                settings=self.settings,
                progress=Progress.for_config(self.config),
                checks=lambda channel, cell: [check(channel, cell) for check in self.checks],
            )
        return self._run

    def queue(self) -> Any:
        if self._queue is None:
            from compatlab.engine.earlier import earlier_expectations
            from compatlab.engine.queue import CellQueue, default_capacity, xdist_share

            if self.scheduler and self.checks:
                raise pytest.UsageError(
                    "matrix checks (tests marked matrix) run only on the engine embedded in "
                    f"this process, not on the workers of {self.scheduler}"
                )
            self._queue = CellQueue(
                self.lab_run(),
                report_dir=self.report_dir,
                scheduler=self.scheduler,
                capacity=default_capacity(self.settings.capacity, share=xdist_share()),
                repeat=self.repeat,
                # Longest expected first: how long each cell took in the runs beside this one.
                expect=functools.partial(
                    earlier_expectations,
                    runs_dir=self.report_dir.parent,
                    this_run=self.report_dir,
                ),
            )
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            # Cells still running now were cut short (Ctrl-C, SIGTERM, -x): their VMs go.
            self._queue.close(stop=True)
        if self._run is not None:
            self._run.close()


class _XdistHooks:
    """Hooks that exist only with pytest-xdist: hand the run id and report folder to workers."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["compatlab_run_id"] = self.session.run_id
        node.workerinput["compatlab_report_dir"] = str(self.session.report_dir)


class _ControllerHooks:
    """The controller's side (the only process without xdist): the report, as cells finish."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        from compatlab.report import cell_from_json

        for name, value in report.user_properties:
            if name == _RESULT_PROPERTY:
                self.session.sink.add(cell_from_json(json.loads(str(value))))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.session.close()
        # No report for a session that ran no cell (collect-only, a collection error), unless
        # it resumes a run whose report should be brought up to date. A run stopped by Ctrl-C
        # or SIGTERM keeps what finished, and its results.json says it is not complete.
        if self.session.sink.added or self.session.resume:
            complete = exitstatus != pytest.ExitCode.INTERRUPTED
            self.session.index = self.session.sink.finish(complete=complete)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        index = getattr(self.session, "index", None)
        if index is not None:
            terminalreporter.write_sep("-", "compatlab")
            terminalreporter.write_line(f"compatlab: report: {index}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(_SESSION, None)
    if state is not None and state.sink is None:
        state.close()  # an xdist worker: the controller writes the report
