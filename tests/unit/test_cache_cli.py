"""``compatlab cache list`` and ``compatlab cache prune``: what they print and their exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from compatlab.cache import KeyInputs, LayerStore, cache_key
from compatlab.cache.store import LAYER_DISK, MANIFEST, MEMORY_STATE
from compatlab.cli import main

KEYS = [cache_key(KeyInputs({"disk": str(n)}, {}, ())) for n in range(3)]


def _build(folder: Path) -> float:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / LAYER_DISK), "16M"], check=True
    )
    return 7.25


def _fill(root: Path, count: int) -> LayerStore:
    store = LayerStore(root)
    for n, key in enumerate(KEYS[:count]):
        with store.use(key, KeyInputs({"disk": str(n)}, {}, ()), _build, label=f"cell-{n}"):
            pass
    return store


def test_list_of_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "list", "--storage-root", str(tmp_path)]) == 0
    assert f"no cached layers in {tmp_path / 'cache'}" in capsys.readouterr().out


def test_list_shows_each_layer_its_baseline_and_the_damaged_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(tmp_path, 2)
    (tmp_path / "cache" / KEYS[0] / MANIFEST).unlink()
    assert main(["cache", "list", "--storage-root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(KEYS[0]) and "damaged: has no manifest.json" in lines[0]
    assert lines[1].startswith(KEYS[1]) and "disk    baseline 7.2 s" in lines[1]
    assert lines[1].endswith("cell-1")
    assert lines[2].startswith("compatlab cache: 2 layers, ")


def test_list_says_which_layers_a_cell_restores_from_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def memory_build(folder: Path) -> float:
        (folder / MEMORY_STATE).write_bytes(b"LibvirtQemudSave" + b"\0" * 64)
        return _build(folder)

    with LayerStore(tmp_path).use(KEYS[0], KeyInputs({"disk": "0"}, {}, ()), memory_build):
        pass
    assert main(["cache", "list", "--storage-root", str(tmp_path)]) == 0
    assert "  memory  baseline 7.2 s" in capsys.readouterr().out.splitlines()[0]


def test_list_marks_a_layer_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _fill(tmp_path, 1)
    with store.use(KEYS[0], KeyInputs({"disk": "0"}, {}, ()), _build):
        assert main(["cache", "list", "--storage-root", str(tmp_path)]) == 0
    assert "[in use]" in capsys.readouterr().out.splitlines()[0]


def test_prune_all_empties_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(tmp_path, 2)
    assert main(["cache", "prune", "--all", "--storage-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"removed {KEYS[0]}" in out and f"removed {KEYS[1]}" in out
    assert "removed 2 layers" in out and "0 B left" in out
    assert LayerStore(tmp_path).entries() == []


def test_prune_all_that_must_keep_a_layer_in_use_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _fill(tmp_path, 2)
    with store.use(KEYS[1], KeyInputs({"disk": "1"}, {}, ()), _build):
        assert main(["cache", "prune", "--all", "--storage-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"removed {KEYS[0]}" in out and f"kept {KEYS[1]}: in use" in out
    assert [entry.key for entry in store.entries()] == [KEYS[1]]


def test_prune_to_a_max_size_keeps_the_most_recent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _fill(tmp_path, 3)
    newest = store.entries()[-1]
    bound = str(newest.bytes)
    assert main(["cache", "prune", "--max-size", bound, "--storage-root", str(tmp_path)]) == 0
    assert "removed 2 layers" in capsys.readouterr().out
    assert [entry.key for entry in store.entries()] == [newest.key]


def test_prune_without_options_removes_only_damaged_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _fill(tmp_path, 2)
    (tmp_path / "cache" / KEYS[1] / LAYER_DISK).unlink()
    assert main(["cache", "prune", "--storage-root", str(tmp_path)]) == 0
    assert f"removed {KEYS[1]} (is missing layer.qcow2)" in capsys.readouterr().out
    assert [entry.key for entry in store.entries()] == [KEYS[0]]


@pytest.mark.parametrize("size", ["lots", "-5G", "1.5", "5X"])
def test_a_bad_max_size_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "prune", f"--max-size={size}", "--storage-root", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--max-size" in err and ("is not a size" in err or "fraction" in err)
