"""A run's storage folder from its first moment to its last: ``owner.json`` on a full disk, the
run that could not write it, and the reaper's rule for a folder that has none (issue 8).

Without ``owner.json`` no reaper can tell whose a folder is: a run that cannot write it must not
leave its folder behind, and a folder that has none anyway (a runner killed between creating
it and writing the file, or a release before this fix) must not be kept for ever. The disk is
made full by a ``Path.write_text`` that creates its file and is then refused, as a full tmpfs
does (the reliability test ``storage-full-at-start`` does it on a real one).
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compatlab.errors import StorageError
from compatlab.lab.connection import Hypervisor
from compatlab.lab.owner import (
    CellMetadata,
    Controller,
    render_cell_metadata,
    run_folder,
    write_run_owner,
)
from compatlab.lab.reaper import ABANDONED_AFTER, reap
from compatlab.run import LabRun, LabSettings

URI = "test:///default"
ROOT = Path(__file__).resolve().parents[2]
OLD = ABANDONED_AFTER + 60  # seconds: older than the reaper's grace


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with Hypervisor(URI) as hypervisor:
        yield hypervisor


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``Path.write_text`` creates its file, then the disk refuses the first block."""

    def full(self: Path, *args: object, **kwargs: object) -> int:
        with self.open("w"):
            pass
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# -- the run's own end -------------------------------------------------------------------------


def test_owner_json_on_a_full_disk_leaves_no_temporary_file(
    tmp_path: Path, disk_full: None
) -> None:
    folder = run_folder(tmp_path, "20260101T000000-abcd.main")
    with pytest.raises(StorageError, match="No space left"):
        write_run_owner(folder)
    assert tree(folder) == []


def test_a_run_that_cannot_write_its_owner_file_removes_its_folder(
    tmp_path: Path, disk_full: None
) -> None:
    storage = tmp_path / "storage"
    run = LabRun(
        run_id="20260101T000000-abcd",
        worker="main",
        report_dir=tmp_path / "report",
        template_dir=ROOT / "configs" / "templates",
        settings=LabSettings(uri=URI, storage_root=storage, attempts=1),
    )
    for _ in range(2):  # each cell tries again, and fails the same way
        with pytest.raises(StorageError, match="No space left"):
            run.lab()
        assert tree(storage / "cells") == []
    run.close()
    assert tree(storage / "cells") == []


def test_a_run_removes_its_folder_at_the_end(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    run = LabRun(
        run_id="20260101T000000-abcd",
        worker="main",
        report_dir=tmp_path / "report",
        template_dir=ROOT / "configs" / "templates",
        settings=LabSettings(uri=URI, storage_root=storage, attempts=1),
    )
    run.lab()
    assert tree(storage / "cells") == [
        "20260101T000000-abcd.main",
        "20260101T000000-abcd.main/owner.json",
    ]
    run.close()
    assert tree(storage / "cells") == []


# -- the reaper's end: a folder without owner.json ----------------------------------------------


def unowned(root: Path, name: str, *files: str) -> Path:
    folder = run_folder(root, name)
    folder.mkdir(parents=True)
    for file in files:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_bytes(b"")
    return folder


def test_an_old_folder_without_owner_json_and_nothing_in_use_is_abandoned(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """What a run killed between creating its folder and writing owner.json leaves, or a run
    before this fix whose owner.json the disk refused."""
    left = unowned(tmp_path, "20260101T000000-dead.main", ".owner.json.4242.tmp")
    (left.parent / "20260101T000000-gone.main").mkdir()
    report = reap(hv, tmp_path, now=time.time() + OLD)
    assert sorted(p.name for p in report.removed_folders) == [
        "20260101T000000-dead.main",
        "20260101T000000-gone.main",
    ]
    assert tree(tmp_path / "cells") == []
    assert report.errors == []


def test_a_young_folder_without_owner_json_is_kept(hv: Hypervisor, tmp_path: Path) -> None:
    """A live run creates its folder a moment before it writes owner.json into it."""
    unowned(tmp_path, "20260101T000000-young.main")
    report = reap(hv, tmp_path, now=time.time() + ABANDONED_AFTER - 60)
    assert report.removed_folders == []
    [kept] = report.kept_folders
    assert "no owner.json" in kept.reason and "changed" in kept.reason


def test_a_folder_without_owner_json_is_kept_while_something_in_it_changes(
    hv: Hypervisor, tmp_path: Path
) -> None:
    folder = unowned(tmp_path, "20260101T000000-busy.main", "cell/overlay.qcow2")
    past = time.time() - OLD
    for path in (folder, folder / "cell"):
        os.utime(path, (past, past))
    report = reap(hv, tmp_path, now=time.time() + 1)
    assert report.removed_folders == []
    assert tree(folder) == ["cell", "cell/overlay.qcow2"]


def test_a_folder_without_owner_json_that_a_domain_uses_is_kept(
    hv: Hypervisor, tmp_path: Path
) -> None:
    """However old: a domain -- compatlab's or not -- names a file in it."""
    folder = unowned(tmp_path, "20260101T000000-used.main", "cell/overlay.qcow2")
    claimed = unowned(tmp_path, "20260101T000000-claimed.main")
    name, other = f"labdev-{uuid.uuid4().hex[:8]}", f"compatlab-unit-{uuid.uuid4().hex[:8]}"
    hv.connection.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{folder / 'cell' / 'overlay.qcow2'}'/><target dev='vda'/></disk>"
        "</devices></domain>"
    )
    meta = CellMetadata(claimed.name, "c", Controller.current())
    hv.connection.defineXML(
        f"<domain type='test'><name>{other}</name><memory unit='MiB'>64</memory>"
        f"<os><type>hvm</type></os><metadata>{render_cell_metadata(meta)}</metadata></domain>"
    )
    try:
        report = reap(hv, tmp_path, now=time.time() + OLD)
    finally:
        for dom_name in (name, other):
            if (dom := hv.lookup(dom_name)) is not None:
                dom.undefine()
    assert report.removed_folders == []
    reasons = {f.path.name: f.reason for f in report.kept_folders}
    assert "a domain uses a file in it" in reasons[folder.name]
    assert reasons[claimed.name] == "a kept domain belongs to this run"


def test_a_folder_with_an_unreadable_owner_json_is_kept(hv: Hypervisor, tmp_path: Path) -> None:
    """owner.json is written whole or not at all (a rename): one that does not parse is not
    compatlab's doing, and whose the folder is stays unknown."""
    unowned(tmp_path, "20260101T000000-odd.main", "owner.json")
    report = reap(hv, tmp_path, now=time.time() + OLD)
    assert report.removed_folders == []
    assert [f.reason for f in report.kept_folders] == ["owner.json does not parse"]
