"""``--matrix-repeat N`` (issue 11.3): a cell run N times is reported as its worst run, with
every run kept, and each run's evidence in a folder of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from compatlab.capacity import Capacity
from compatlab.engine import DaskEngine
from compatlab.lab.connection import Hypervisor
from compatlab.model import Bugcheck, CellResult, Verdict
from compatlab.repeats import combine, evidence_prefix
from tests.support.fakeguest import scripted_lab
from tests.unit.test_engine import cells, hv  # noqa: F401  (hv: a fixture)
from tests.unit.test_run_cell import INSTALL, Guests

pytest_plugins = ["pytester"]


def _result(verdict: Verdict, seconds: float = 10.0, signature: str = "") -> CellResult:
    bugcheck = Bugcheck("panic", "Kernel panic", signature=signature) if signature else None
    return CellResult(
        id="lin/bios-1cpu/none",
        build="lin",
        hardware="bios-1cpu",
        products=(),
        verdict=verdict,
        bugcheck=bugcheck,
        reason=verdict.value,
        seconds=seconds,
    )


def test_one_failure_in_n_is_the_cells_verdict_never_a_pass() -> None:
    crash = _result(Verdict.CRASH, signature="BUG: kernel NULL pointer dereference in f [m]")
    results = [_result(Verdict.PASS), crash, _result(Verdict.PASS)]
    combined = combine(results)
    assert combined.verdict is Verdict.CRASH
    assert combined.reason == "crash (failed 1 of 3 runs)"
    assert [r.verdict for r in combined.repeats] == [Verdict.PASS, Verdict.CRASH, Verdict.PASS]
    assert combined.repeats[1].signature == "BUG: kernel NULL pointer dereference in f [m]"
    assert combined.seconds == 30.0
    assert combined.as_json()["repeats"][1]["verdict"] == "crash"


def test_the_worst_run_wins_by_the_severity_table_and_one_run_is_itself() -> None:
    combined = combine([_result(Verdict.HANG), _result(Verdict.BOOT_LOOP), _result(Verdict.PASS)])
    assert combined.verdict is Verdict.BOOT_LOOP
    single = _result(Verdict.PASS)
    assert combine([single]) is single and not single.repeats
    assert combine([_result(Verdict.PASS)] * 3).reason == "pass"
    with pytest.raises(ValueError):
        combine([])


def test_each_repeat_keeps_its_evidence_apart() -> None:
    assert evidence_prefix("m-lin-bios-1cpu-none-1a2b", 1) == "m-lin-bios-1cpu-none-1a2b"
    assert evidence_prefix("m-lin-bios-1cpu-none-1a2b", 3) == "m-lin-bios-1cpu-none-1a2b.repeat-3"


def test_a_cell_that_crashes_in_one_of_three_runs_on_the_engine(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    guests = Guests({}, {"commands": {INSTALL: "crash"}}, {})
    lab = scripted_lab(hv, tmp_path, guests, run_id="repeat-test")
    engine = DaskEngine(
        run_id="repeat-test",
        report_dir=tmp_path / "report",
        scheduler=None,
        capacity=Capacity(vcpus=1, memory_mib=64 * 1024),  # one at a time: the scripts' order
        attempts=2,
        lab=lambda: lab,
        stop=lab.stop,
    )
    engine.start()
    cell = cells(tmp_path)[0]
    try:
        handles = [engine.submit(cell, repeat=n) for n in (1, 2, 3)]
        runs = [h.wait() for h in handles]
    finally:
        engine.close()
    combined = combine(runs)  # (the engine may start the three in any order)
    assert sorted(r.verdict.value for r in runs) == ["crash", "pass", "pass"]
    assert combined.verdict is Verdict.CRASH and len(combined.repeats) == 3
    folders = {Path(path).parts[1] for r in runs for path in r.artifacts.values()}
    assert len(folders) == 3, folders  # three runs, three evidence folders
    for run in runs:
        assert all((tmp_path / "report" / p).exists() for p in run.artifacts.values())


def test_a_repeat_count_out_of_range_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--matrix-repeat", "0", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--matrix-repeat must be between 1 and 100, not 0*"])
