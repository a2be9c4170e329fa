"""The plugin end to end in a real pytest session (pytester): collection, -k, usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.catalogs import make_project, matrix, write

pytest_plugins = ["pytester"]

AXES = """
axes:
  build: [lin-a, lin-b]
  hardware: [bios-1cpu, uefi-2cpu]
  products: [[], [av], [av, edr]]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> Path:
    root = make_project(pytester.path)
    matrix(root, AXES, name="demo.yaml")
    matrix(root, AXES.replace("lin-a, lin-b", "lin-a"), name="small.yaml")
    return root


def test_collects_one_item_per_cell_with_contracted_ids(
    pytester: pytest.Pytester, project: Path
) -> None:
    result = pytester.runpytest("--matrix", "matrix/demo.yaml", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "matrix/demo.yaml::lin-a/bios-1cpu/none",
            "matrix/demo.yaml::lin-a/bios-1cpu/av",
            "matrix/demo.yaml::lin-a/bios-1cpu/av+edr",
            "matrix/demo.yaml::lin-b/uefi-2cpu/av+edr",
            "12 tests collected*",
        ]
    )
    assert result.ret == 0


def test_k_selects_by_axis_value(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest(
        "--matrix", "matrix/demo.yaml", "--collect-only", "-q", "-k", "uefi-2cpu and edr"
    )
    result.stdout.fnmatch_lines(
        [
            "matrix/demo.yaml::lin-a/uefi-2cpu/av+edr",
            "matrix/demo.yaml::lin-b/uefi-2cpu/av+edr",
            "2/12 tests collected (10 deselected)*",
        ]
    )


def test_several_matrix_files(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest(
        "--matrix", "matrix/demo.yaml", "--matrix", "matrix/small.yaml", "--collect-only", "-q"
    )
    result.stdout.fnmatch_lines(["matrix/small.yaml::lin-a/uefi-2cpu/av+edr", "18 tests*"])


def test_matrix_run_does_not_collect_testpaths(pytester: pytest.Pytester, project: Path) -> None:
    pytester.makepyfile(test_other="def test_x(): pass")
    result = pytester.runpytest("--matrix", "matrix/small.yaml", "--collect-only", "-q")
    result.stdout.no_fnmatch_line("*test_other*")
    with_path = pytester.runpytest(
        "--matrix", "matrix/small.yaml", "test_other.py", "--collect-only", "-q"
    )
    with_path.stdout.fnmatch_lines(["test_other.py::test_x", "7 tests collected*"])


def test_bad_matrix_is_a_usage_error_with_position(
    pytester: pytest.Pytester, project: Path
) -> None:
    matrix(project, AXES.replace("uefi-2cpu]", "uefi-2cpux]"), name="bad.yaml")
    result = pytester.runpytest("--matrix", "matrix/bad.yaml", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: *matrix/bad.yaml:11:25: unknown hardware profile 'uefi-2cpux'"
            " (did you mean 'uefi-2cpu'?)"
        ]
    )


def test_missing_matrix_file_is_a_usage_error(pytester: pytest.Pytester, project: Path) -> None:
    result = pytester.runpytest("--matrix", "matrix/nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: matrix/nope.yaml: file not found"])


def test_a_matrix_file_that_is_a_symlink_loop_is_a_usage_error(
    pytester: pytest.Pytester, project: Path
) -> None:
    """Issue 8: the plugin resolved the path before loading, outside the error handling, and a
    symlink loop ended in INTERNALERROR (exit 3)."""
    loop = project / "matrix" / "loop.yaml"
    loop.symlink_to(loop)
    result = pytester.runpytest("--matrix", "matrix/loop.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *loop.yaml*symlink loop*"])


def test_a_profile_this_lab_cannot_run_is_a_usage_error_before_anything_starts(
    pytester: pytest.Pytester, project: Path
) -> None:
    # The catalog accepts Secure Boot on the pc machine; libvirt 9.0 cannot run it
    # (compatlab.catalog.check_supported). The matrix load refuses it, before any cell runs.
    write(
        project / "configs" / "hardware" / "sb-on-pc.yaml",
        "name: sb-on-pc\nvcpus: 1\nmemory: 256MiB\nfirmware: uefi\nsecure_boot: true\n"
        "machine: pc\n",
    )
    matrix(project, AXES.replace("uefi-2cpu]", "uefi-2cpu, sb-on-pc]"), name="sb.yaml")
    (project / "lab.yaml").write_text(
        "hosts: [{uri: 'test:///default'}]\nstorage: out/storage\nattempts: 1\n"
    )
    result = pytester.runpytest(
        "--matrix", "matrix/sb.yaml", "--matrix-hosts", "lab.yaml", "--matrix-report", "out"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: *matrix/sb.yaml:11:36: cell lin-a/sb-on-pc/none cannot run on this lab: "
            "hardware profile 'sb-on-pc': Secure Boot needs machine q35, not pc*"
        ]
    )
    result.stdout.no_fnmatch_line("*collected*")
    assert not (project / "out").exists()  # no report, no storage: nothing started


def test_cells_do_not_pretend_to_pass(pytester: pytest.Pytester, project: Path) -> None:
    # libvirt's own test driver: the real API, no daemon. The golden images do not exist, so
    # every cell is a lab failure -- reported as such, never as a pass or as the update's fault.
    (project / "lab.yaml").write_text(
        "hosts: [{uri: 'test:///default'}]\nstorage: out/storage\nattempts: 1\n"
    )
    # In a process of its own, as a run is: the cells run on the Dask engine embedded in the
    # runner, whose threads and modules must not outlive the run inside this test process.
    result = pytester.runpytest_subprocess(
        "--matrix",
        "matrix/small.yaml",
        "--matrix-hosts",
        "lab.yaml",
        "--matrix-report",
        "out",
        "-q",
    )
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(["*INFRA_ERROR [[]infra[]]: *golden image*does not exist*"])


CHECKS = """
import pytest

@pytest.mark.matrix
def test_service_runs(guest, cell):
    assert guest.run("true", timeout=5).exit_code == 0

def test_ordinary():
    pass
"""


def test_matrix_checks_leave_the_normal_run(pytester: pytest.Pytester, project: Path) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest(
        "--matrix", "matrix/small.yaml", "test_checks.py", "--collect-only", "-q"
    )
    result.stdout.fnmatch_lines(
        ["test_checks.py::test_ordinary", "7/8 tests collected (1 deselected)*"]
    )
    result.stdout.no_fnmatch_line("*test_service_runs*")


def test_matrix_check_without_a_matrix_run_is_skipped(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest("test_checks.py", "-q", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*runs inside every cell of a --matrix run*"])


def test_matrix_check_with_other_fixtures_is_a_usage_error(
    pytester: pytest.Pytester, project: Path
) -> None:
    pytester.makepyfile(
        test_checks="""
        import pytest

        @pytest.mark.matrix
        def test_needs_tmp(guest, tmp_path):
            pass
        """
    )
    result = pytester.runpytest("--matrix", "matrix/small.yaml", "test_checks.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*takes only the fixtures guest and cell, not tmp_path*"])


def test_matrix_check_outcomes() -> None:
    from compatlab.plugin import MatrixCheck

    def passes(guest: object, cell: object) -> None:
        assert guest == "channel" and cell == "the cell"

    def fails(guest: object) -> None:
        assert guest == "other", "the sensor service is not running"

    def broken(cell: object) -> None:
        raise KeyError("oops")

    assert MatrixCheck("p", passes, ("guest", "cell"))("channel", "the cell").passed  # type: ignore[arg-type]
    failed = MatrixCheck("f", fails, ("guest",))("channel", "the cell")  # type: ignore[arg-type]
    assert not failed.passed and failed.detail.startswith("the sensor service is not running")
    crashed = MatrixCheck("b", broken, ("cell",))("channel", "the cell")  # type: ignore[arg-type]
    assert not crashed.passed and crashed.detail == "KeyError: 'oops'"
