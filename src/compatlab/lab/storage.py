"""One cell's files on the hypervisor host: its overlay disk, firmware state, logs and media.

Layout, under a lab root (``/var/lib/compatlab`` unless told otherwise)::

    <root>/cells/<run-id>/<cell-slug>/
        overlay.qcow2       copy-on-write overlay on the golden image; the only disk written
        VARS.fd             UEFI variables (created by libvirt at first start, UEFI only)
        serial.log          the guest's serial console
        screenshots/        console screenshots
        payloads/           payload ISOs attached to the CD-ROM drive

The golden image is never written: the overlay is created by ``qemu-img create -b`` (which opens
its backing file read-only) and the domain XML pins the golden image read-only with
``relabel='no'``. QEMU runs as the hypervisor's qemu user (``libvirt-qemu`` on Debian) with
libvirt's dynamic ownership, which chowns the overlay, NVRAM and ISOs at start but not the
golden image: that must be world-readable on a world-traversable path, which
:meth:`CellStorage.create_overlay` checks before anything is created.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from compatlab.errors import ImageError, StorageError

__all__ = ["DEFAULT_ROOT", "CellStorage", "cell_slug"]

DEFAULT_ROOT = Path("/var/lib/compatlab")

# Folders must be traversable by the qemu user, which opens the files inside by path. Listing
# them is harmless, and lets a developer look without sudo.
_FOLDER_MODE = 0o755
_NOT_SLUG = re.compile(r"[^a-z0-9._-]+")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_QEMU_IMG_TIMEOUT = 120


def cell_slug(cell_id: str) -> str:
    """A folder name for ``cell_id``: readable, filesystem-safe, distinct per cell id.

    Cell ids hold ``/`` and ``+``; folding them into ``-`` could make two ids meet, so a short
    hash of the id is appended.
    """
    readable = _NOT_SLUG.sub("-", cell_id.lower()).strip("-.")[:60].rstrip("-.") or "cell"
    return f"{readable}-{hashlib.sha256(cell_id.encode()).hexdigest()[:8]}"


class CellStorage:
    """The folder of one cell of one run, and the files in it.

    Paths are known at construction; nothing is created until :meth:`create` or
    :meth:`create_overlay`. ``host`` names the hypervisor host in errors.
    """

    def __init__(
        self,
        run_id: str,
        cell_id: str,
        *,
        root: Path = DEFAULT_ROOT,
        host: str | None = None,
        qemu_img: str = "qemu-img",
    ) -> None:
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r} is not a safe folder name")
        self.run_id = run_id
        self.cell_id = cell_id
        self.root = Path(root)
        self.host = host or socket.gethostname()
        self.qemu_img = qemu_img
        self.folder = self.root / "cells" / run_id / cell_slug(cell_id)

    def __repr__(self) -> str:
        return f"CellStorage({self.folder})"

    # -- paths -----------------------------------------------------------------------------------

    @property
    def overlay(self) -> Path:
        """The cell's disk: a qcow2 overlay whose backing file is the golden image."""
        return self.folder / "overlay.qcow2"

    @property
    def nvram(self) -> Path:
        """UEFI variable store. libvirt creates it from the firmware's template at first start."""
        return self.folder / "VARS.fd"

    @property
    def serial_log(self) -> Path:
        return self.folder / "serial.log"

    @property
    def screenshots(self) -> Path:
        return self.folder / "screenshots"

    @property
    def payloads(self) -> Path:
        return self.folder / "payloads"

    def screenshot(self, name: str) -> Path:
        """Where the screenshot ``name`` (e.g. ``boot-3``) goes, as PNG."""
        return self.screenshots / f"{_file_name(name)}.png"

    def payload_iso(self, name: str) -> Path:
        """Where the payload ISO ``name`` (e.g. ``candidate``) goes."""
        return self.payloads / f"{_file_name(name)}.iso"

    # -- life cycle ------------------------------------------------------------------------------

    def create(self) -> None:
        """Create the cell's folders (idempotent), traversable by the qemu user."""
        for folder in (
            self.root / "cells",
            self.root / "cells" / self.run_id,
            self.folder,
            self.screenshots,
            self.payloads,
        ):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Set explicitly: mkdir's mode is cut by the umask.
                os.chmod(folder, _FOLDER_MODE)
            except OSError as exc:
                raise self._storage_error(f"cannot create cell folder {folder}", exc) from exc

    def create_overlay(self, golden: Path, *, layer: Path | None = None) -> Path:
        """Create the overlay on ``golden`` (a standalone qcow2 image) and return its path.

        ``layer``: a cached pre-candidate layer (a qcow2 image whose backing file is ``golden``)
        to put the overlay on instead; the domain XML spells out the chain overlay -> layer ->
        golden image.

        O(1) in the image size: only qcow2 metadata is written. Raises :class:`ImageError` when
        the golden image is missing, not a standalone qcow2 image, or not readable by the qemu
        user; :class:`StorageError` when the overlay cannot be made (disk full, qemu-img failed)
        or the layer is not on the golden image.
        """
        golden = Path(golden)
        self._check_golden(golden)
        if layer is not None:
            self._check_layer(Path(layer), golden)
        self.create()
        if self.overlay.exists():
            raise StorageError(
                f"overlay {self.overlay} exists already (a previous attempt was not removed)",
                host=self.host,
            )
        try:
            self._qemu_img(
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str((layer or golden).resolve()),
                str(self.overlay),
            )
        except StorageError:
            # A half-written overlay (disk full) would block the retry.
            self.overlay.unlink(missing_ok=True)
            raise
        return self.overlay

    def remove(self) -> None:
        """Delete the cell's folder and everything in it; then the run folder, once empty.

        The domain must be gone first (undefined with its NVRAM and TPM state).
        """
        try:
            shutil.rmtree(self.folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._storage_error(f"cannot remove cell folder {self.folder}", exc) from exc
        # Fails while other cells of the run are still there, as it should.
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()

    # -- helpers ---------------------------------------------------------------------------------

    def _check_golden(self, golden: Path) -> None:
        if not golden.is_file():
            raise ImageError(f"golden image {golden} does not exist", host=self.host)
        unreadable = _not_world_readable(golden.resolve())
        if unreadable is not None:
            raise ImageError(
                f"golden image {golden} is not readable by the hypervisor's qemu user: "
                f"{unreadable} (the domain pins it with relabel='no'; chmod o+r / o+x)",
                host=self.host,
            )
        # -U (force share): golden images are open read-only in running cells.
        info = self._qemu_img("info", "-U", "--output=json", str(golden), error=ImageError)
        try:
            details = json.loads(info)
        except ValueError as exc:
            raise ImageError(f"qemu-img info {golden}: unreadable answer", host=self.host) from exc
        if details.get("format") != "qcow2":
            raise ImageError(
                f"golden image {golden} is {details.get('format')}, not qcow2", host=self.host
            )
        if details.get("backing-filename"):
            # The domain XML ends the chain at the golden image; a golden overlay would not boot.
            raise ImageError(
                f"golden image {golden} has a backing file "
                f"({details['backing-filename']}); golden images must be standalone",
                host=self.host,
            )

    def _check_layer(self, layer: Path, golden: Path) -> None:
        info = self._qemu_img("info", "-U", "--output=json", str(layer))
        try:
            details = json.loads(info)
        except ValueError as exc:
            raise StorageError(f"qemu-img info {layer}: unreadable answer", host=self.host) from exc
        backing = details.get("full-backing-filename") or details.get("backing-filename")
        if details.get("format") != "qcow2" or not backing:
            raise StorageError(f"cached layer {layer} is not a qcow2 overlay", host=self.host)
        if Path(backing).resolve() != golden.resolve():
            raise StorageError(
                f"cached layer {layer} is on {backing}, not on the golden image {golden}",
                host=self.host,
            )

    def _qemu_img(self, *args: str, error: type[StorageError | ImageError] = StorageError) -> str:
        command = [self.qemu_img, *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=_QEMU_IMG_TIMEOUT,
                check=False,
            )
        except FileNotFoundError as exc:
            raise StorageError(f"{self.qemu_img} is not installed", host=self.host) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StorageError(f"qemu-img {args[0]} failed: {exc}", host=self.host) from exc
        if done.returncode != 0:
            message = done.stderr.strip() or f"exit status {done.returncode}"
            if "No space left" in message:
                message = f"disk full: {message}"
            raise error(f"qemu-img {args[0]} failed: {message}", host=self.host)
        return done.stdout

    def _storage_error(self, message: str, exc: OSError) -> StorageError:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        return StorageError(f"{message}: {reason}", host=self.host)


def _file_name(name: str) -> str:
    if not _FILE_NAME.match(name):
        raise ValueError(f"{name!r} is not a safe file name")
    return name


def _not_world_readable(path: Path) -> str | None:
    """Why "others" (the qemu user) cannot open ``path``, or None when they can."""
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return f"{path} lacks o+r"
        for folder in path.parents:
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                return f"folder {folder} lacks o+x"
    except OSError as exc:
        return f"{exc.filename}: {exc.strerror}"
    return None
