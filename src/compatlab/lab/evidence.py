"""A cell's evidence: the serial log, console screenshots, the crash code -- and keeping them.

Everything here is best effort on purpose: failing to take a screenshot must never hide a
verdict. What the report shows is copied out of the cell's storage folder (which is removed
with the VM) into the run's report folder before the VM goes.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from compatlab.bugcheck import find_hyperv_panic, parse_linux_panic
from compatlab.catalog import OsFamily
from compatlab.errors import CompatlabError
from compatlab.lab.machine import Machine
from compatlab.lab.storage import CellStorage
from compatlab.model import Bugcheck

__all__ = ["CellEvidence"]


class CellEvidence:
    """The evidence of one VM of a cell; ``folder`` is where it is kept, under ``report_dir``."""

    def __init__(
        self, storage: CellStorage, machine: Machine, folder: Path, report_dir: Path
    ) -> None:
        self.storage = storage
        self.machine = machine
        self.folder = folder
        self.report_dir = report_dir

    def serial_size(self) -> int:
        """Where the serial log ends now: the next boot's output starts here."""
        try:
            return self.storage.serial_log.stat().st_size
        except OSError:
            return 0

    def serial_text(self, offset: int = 0) -> str:
        try:
            with self.storage.serial_log.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def bugcheck(self, os_family: OsFamily, serial_offset: int) -> Bugcheck | None:
        """The crash code of the crash just seen: Windows from the domain log's Hyper-V crash
        line, Linux from the panic in this boot's serial output."""
        if os_family == "windows":
            return find_hyperv_panic(self.machine.domain_log())
        return parse_linux_panic(self.serial_text(serial_offset))

    def screenshot(self, name: str) -> None:
        with contextlib.suppress(CompatlabError):
            self.machine.screenshot(self.storage.screenshot(name))

    def keep(self) -> dict[str, str]:
        """Copy the serial log and screenshots into the report; their paths, for artifacts."""
        self.folder.mkdir(parents=True, exist_ok=True)
        relative = self.folder.relative_to(self.report_dir).as_posix()
        artifacts: dict[str, str] = {}
        if self.storage.serial_log.exists():
            shutil.copyfile(self.storage.serial_log, self.folder / "serial.log")
            artifacts["serial_log"] = f"{relative}/serial.log"
        shots = sorted(self.storage.screenshots.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for shot in shots:
            shutil.copyfile(shot, self.folder / shot.name)
        if shots:
            # The last one is the state the cell ended in (the crash or the hang screen).
            artifacts["screenshot"] = f"{relative}/{shots[-1].name}"
        return artifacts
