"""Cached pre-candidate layers on a lab host's disk, shared safely by runs and workers.

Layout, under the lab's storage root (``/var/lib/compatlab`` unless told otherwise)::

    <root>/cache/
        <key>/                  one published layer; never changed after publishing except
            layer.qcow2         its manifest's last-used time
            VARS.fd             UEFI variables (UEFI profiles)
            tpm/                the software TPM's state folder (TPM profiles)
            memory.save         the running baseline guest, saved by libvirt (memory layers)
            DAMAGED             written when a cell could not restore the layer: built again
            manifest.json       key inputs, baseline boot seconds, file sizes, created, last used
        .locks/<key>.lock       one per key, never removed (see below)
        .tmp/<key>.<random>/    a layer being built, or one being removed
        .digests/               golden images' digests (compatlab.cache.digest)

Why it is safe:

- *Publish is atomic.* A layer is built in ``.tmp/`` on the same file system, every file and
  folder is fsynced, and then the folder is renamed to ``<key>/``. A reader sees the whole
  layer or none; a builder killed half-way leaves only ``.tmp/``, which the next builder of
  that key (or ``prune``) removes.
- *One build per key.* ``.locks/<key>.lock`` is ``flock``-ed: shared while a layer is used,
  exclusive while it is built or removed. The second of two runs or workers asking for one key
  waits for the first's build, then finds it built. Lock files are never deleted: deleting one
  while another process opens it would give two processes two different locks.
- *A layer in use is never evicted.* ``prune`` takes the exclusive lock without waiting and
  skips a layer whose lock it cannot get.
- *A damaged layer is absent.* A missing or unreadable manifest, a missing file or one of the
  wrong size, a disk that is not qcow2, a memory state that is not a libvirt save image, or a
  layer a cell marked ``DAMAGED`` (:meth:`LayerStore.condemn`: its restore failed) is logged
  with what is wrong and the layer is built again: a damaged cache is never a verdict on the
  candidate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from compatlab.cache.key import KEY_LENGTH, KeyInputs
from compatlab.cache.layer import (
    DAMAGED,
    LAYER_DISK,
    MANIFEST,
    MEMORY_STATE,
    TPM_STATE,
    UEFI_VARS,
    Entry,
    Layer,
    Manifest,
    PruneReport,
    allocated,
)
from compatlab.errors import StorageError
from compatlab.lab.saveimage import SAVE_MAGIC

__all__ = [
    "LAYER_DISK",
    "MANIFEST",
    "MEMORY_STATE",
    "TPM_STATE",
    "UEFI_VARS",
    "BuildLayer",
    "Entry",
    "Layer",
    "LayerStore",
    "Manifest",
    "PruneReport",
]

log = logging.getLogger("compatlab.cache")

_QCOW2_MAGIC = b"QFI\xfb"
_KEY = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")
_FOLDER_MODE = 0o755  # the qemu user opens the layer by path

#: Writes a layer's files (at least ``layer.qcow2``) into the folder it is given and returns
#: the clean baseline boot's seconds, kept as the reference for boot-time checks.
BuildLayer = Callable[[Path], float]


def _not_a(path: Path, magic: bytes, what: str) -> str | None:
    """What is wrong with a layer file that should start with ``magic``; None when it does."""
    try:
        with path.open("rb") as handle:
            head = handle.read(len(magic))
    except OSError as exc:
        return f"cannot read {path.name} ({exc})"
    return None if head == magic else f"has a {path.name} that is not {what}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lru_order(entry: Entry) -> tuple[bool, datetime, str]:
    """Damaged layers first, then least recently used first."""
    if entry.manifest is None:
        return False, datetime.min.replace(tzinfo=UTC), entry.key
    return True, entry.manifest.last_used, entry.key


def _now() -> datetime:
    return datetime.now(UTC)


class LayerStore:
    """The ``cache/`` folder under a lab storage root.

    ``max_bytes`` bounds the cache: after a build, least recently used layers not in use are
    evicted until it fits. ``memory``: builders may keep the running guest's memory state
    (``compatlab.scenario.layers`` says which cells). ``now`` is the clock for created / last
    used.
    """

    def __init__(
        self,
        storage_root: Path,
        *,
        max_bytes: int | None = None,
        memory: bool = True,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.root = Path(storage_root) / "cache"
        self.max_bytes = max_bytes
        self.memory = memory
        self._now = now

    # -- using a layer ----------------------------------------------------------------------

    @contextlib.contextmanager
    def use(
        self, key: str, inputs: KeyInputs, build: BuildLayer, *, label: str = ""
    ) -> Iterator[Layer]:
        """The layer ``key``, built by ``build`` unless a sound one is published; held with a
        shared lock (so never evicted) until the block ends. ``label`` is kept in the manifest
        for ``cache list``.

        Raises what ``build`` raises (the folder it wrote into is removed), and StorageError
        when the cache folder cannot be written.
        """
        self._check_key(key)
        fd = self._open_lock(key)
        built = False
        because: str | None = None
        try:
            while True:
                fcntl.flock(fd, fcntl.LOCK_SH)
                manifest, problem = self._read(key)
                if manifest is not None:
                    break
                # Converting to exclusive drops the shared lock first, so two waiting readers
                # cannot deadlock; whoever gets it second finds the layer built.
                fcntl.flock(fd, fcntl.LOCK_EX)
                manifest, problem = self._read(key)
                if manifest is None:
                    if problem is not None:
                        log.warning(
                            "compatlab: cached layer %s %s; building it again", key, problem
                        )
                        because = problem
                    self._build(key, inputs, build, label)
                    built = True
                # Back to shared, and read again: a prune may slip in while the lock converts.
            manifest = self._touch(key, manifest)
            if built and self.max_bytes is not None:
                self.prune(max_bytes=self.max_bytes)
            yield Layer(key, self.root / key, manifest, built, because)
        finally:
            os.close(fd)

    def _open_lock(self, key: str) -> int:
        try:
            locks = self.root / ".locks"
            locks.mkdir(parents=True, exist_ok=True)
            return os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot open the cache lock of {key} in {self.root}: {exc}"
            ) from exc

    @staticmethod
    def _check_key(key: str) -> None:
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not a cache key")

    def _read(self, key: str) -> tuple[Manifest | None, str | None]:
        """The layer's manifest if the layer is sound; else None and what is wrong (None when
        there is simply no layer)."""
        folder = self.root / key
        if not folder.is_dir():
            return None, None
        try:
            manifest = Manifest.from_json(
                json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            )
        except FileNotFoundError:
            return None, f"has no {MANIFEST}"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"has an unreadable {MANIFEST} ({exc})"
        if manifest.key != key:
            return None, f"has the manifest of {manifest.key}"
        try:
            damaged = (folder / DAMAGED).read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            damaged = None
        except OSError as exc:
            damaged = f"cannot be read ({exc})"
        if damaged is not None:
            return None, f"was marked damaged: {damaged}"
        if LAYER_DISK not in manifest.files:
            return None, f"lists no {LAYER_DISK}"
        for name, size in manifest.files.items():
            path = folder / name
            try:
                actual = path.stat().st_size
            except OSError:
                return None, f"is missing {name}"
            if actual != size:
                return None, f"has {name} of {actual} bytes, not {size}"
        problem = _not_a(folder / LAYER_DISK, _QCOW2_MAGIC, "qcow2")
        if problem is None and MEMORY_STATE in manifest.files:
            problem = _not_a(folder / MEMORY_STATE, SAVE_MAGIC, "a libvirt save image")
        return (None, problem) if problem is not None else (manifest, None)

    def condemn(self, key: str, why: str) -> None:
        """Mark the published layer ``key`` damaged: the next use builds it again.

        For what only using a layer shows (libvirt could not restore its memory state). Safe
        under the shared lock a user holds: the layer's files stay as they are until the next
        builder, holding the exclusive lock, replaces them. A marker that cannot be written is
        logged; the layer is then tried again, and fails again as a lab failure."""
        self._check_key(key)
        try:
            (self.root / key / DAMAGED).write_text(why + "\n", encoding="utf-8")
        except OSError as exc:
            log.warning("compatlab: cannot mark cached layer %s damaged: %s", key, exc)
            return
        log.warning("compatlab: cached layer %s marked damaged: %s", key, why)

    def _touch(self, key: str, manifest: Manifest) -> Manifest:
        """Record the use for LRU eviction; a manifest that cannot be rewritten only warns."""
        touched = dataclasses.replace(manifest, last_used=self._now())
        try:
            self._write_manifest(self.root / key, touched, fsync=False)
        except OSError as exc:
            log.warning("compatlab: cannot record the use of cached layer %s: %s", key, exc)
        return touched

    @staticmethod
    def _write_manifest(folder: Path, manifest: Manifest, *, fsync: bool) -> None:
        temporary = folder / f".{MANIFEST}.{os.getpid()}.{threading.get_ident()}"
        with temporary.open("w", encoding="utf-8") as handle:
            json.dump(manifest.to_json(), handle, indent=2)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, folder / MANIFEST)

    # -- building ---------------------------------------------------------------------------

    def _build(self, key: str, inputs: KeyInputs, build: BuildLayer, label: str) -> None:
        """Build ``key`` in ``.tmp/`` and publish it by rename. Caller holds the exclusive lock."""
        scratch = self.root / ".tmp"
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            for stale in scratch.glob(f"{key}.*"):  # a killed builder's or remover's leftovers
                shutil.rmtree(stale, ignore_errors=True)
            if (self.root / key).exists():
                self._remove(key)
            work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=scratch))
            work.chmod(_FOLDER_MODE)
        except OSError as exc:
            raise StorageError(f"cannot prepare a cache folder in {self.root}: {exc}") from exc
        try:
            seconds = build(work)
            self._publish(key, inputs, work, seconds, label)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _publish(self, key: str, inputs: KeyInputs, work: Path, seconds: float, label: str) -> None:
        files: dict[str, int] = {}
        folders = [work]
        try:
            for root, dirs, names in os.walk(work):
                folders.extend(Path(root, d) for d in dirs)
                for name in names:
                    path = Path(root, name)
                    files[path.relative_to(work).as_posix()] = path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot read the cached layer {key} just built: {exc}") from exc
        if LAYER_DISK not in files:
            raise StorageError(f"building cached layer {key} left no {LAYER_DISK}")
        try:
            for name in files:
                _fsync_path(work / name)
            now = self._now()
            manifest = Manifest(
                key, inputs.to_json(), float(seconds), files, allocated(work), now, now, label
            )
            self._write_manifest(work, manifest, fsync=True)
            for folder in folders:
                _fsync_path(folder)
            os.rename(work, self.root / key)
            _fsync_path(self.root)
        except OSError as exc:
            raise StorageError(f"cannot publish cached layer {key}: {exc}") from exc
        log.info("compatlab: cached layer %s published (%d bytes)", key, manifest.bytes)

    def _remove(self, key: str) -> None:
        """Take ``<key>/`` out of sight by rename, then delete it. Caller holds the lock."""
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        aside = Path(tempfile.mkdtemp(prefix=f"{key}.removed.", dir=self.root / ".tmp"))
        os.rename(self.root / key, aside / key)
        shutil.rmtree(aside, ignore_errors=True)

    # -- listing and pruning ----------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every ``<key>/`` folder, least recently used first (damaged ones first of all)."""
        if not self.root.is_dir():
            return []
        out = []
        for folder in self.root.iterdir():
            if not _KEY.match(folder.name) or not folder.is_dir():
                continue
            manifest, problem = self._read(folder.name)
            if manifest is None and problem is None:
                continue  # removed while we looked
            out.append(Entry(folder.name, folder, manifest, problem, self._in_use(folder.name)))
        return sorted(out, key=_lru_order)

    def _in_use(self, key: str) -> bool:
        """Whether a run holds ``key``'s lock. Read-only, so ``cache list`` works for anyone
        who can read the cache: a run using a layer always has its lock file."""
        try:
            fd = os.open(self.root / ".locks" / f"{key}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot open the cache lock of {key}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextlib.contextmanager
    def _try_exclusive(self, key: str) -> Iterator[bool]:
        fd = self._open_lock(key)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def prune(self, *, max_bytes: int | None = None, everything: bool = False) -> PruneReport:
        """Remove damaged layers and leftovers of killed builds; with ``everything``, every
        layer; with ``max_bytes``, least recently used layers until the rest fit. Layers in use
        are kept (and listed in the report's ``in_use`` when the prune wanted them)."""
        report = PruneReport()
        scratch = self.root / ".tmp"
        if scratch.is_dir():
            for leftover in scratch.iterdir():
                key = leftover.name.split(".", 1)[0]
                if _KEY.match(key):
                    with self._try_exclusive(key) as got:
                        if got:
                            shutil.rmtree(leftover, ignore_errors=True)
        entries = self.entries()
        total = sum(entry.bytes for entry in entries)
        for entry in entries:
            wanted = (
                everything
                or entry.manifest is None
                or (max_bytes is not None and total > max_bytes)
            )
            if not wanted:
                continue
            with self._try_exclusive(entry.key) as got:
                if not got:
                    report.in_use.append(entry)
                    continue
                if entry.folder.exists():
                    self._remove(entry.key)
                report.removed.append(entry)
                total -= entry.bytes
        report.remaining_bytes = total
        return report
