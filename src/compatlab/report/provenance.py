"""What exactly was tested: checksums of the candidate's payload and the matrix files, and the
compatlab version -- the run's record that a sign-off cites.

The checksums are ones a person can recompute without compatlab. A payload that is one file has
its plain SHA-256 (``sha256sum FILE``). A payload folder has the SHA-256 of its manifest, one
``<sha256>  <relative path>`` line per regular file in byte order of the paths -- what this
prints::

    (cd PAYLOAD && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum) \\
        | sha256sum

Symbolic links are not followed (``find -type f`` skips them too). A payload that cannot be
read gives "" and a warning: the run goes on, and the report says the checksum is unknown.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

__all__ = [
    "candidate_sha256",
    "compatlab_version",
    "file_sha256",
    "matrix_sha256",
    "payload_sha256",
]

log = logging.getLogger("compatlab.report")

_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of one file's bytes, as hex. Raises OSError when it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[tuple[bytes, Path]]:
    """Regular files under ``folder`` (no links followed), keyed by their relative path's bytes."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not Path(root, d).is_symlink()]
        for name in names:
            path = Path(root, name)
            if path.is_file() and not path.is_symlink():
                out.append((os.fsencode(path.relative_to(folder).as_posix()), path))
    return sorted(out, key=lambda item: item[0])


def payload_sha256(payload: Path) -> str:
    """The checksum of a payload file or folder (see the module docstring). Raises OSError."""
    if not payload.is_dir():
        return file_sha256(payload)
    manifest = hashlib.sha256()
    for relative, path in _files(payload):
        manifest.update(file_sha256(path).encode() + b"  " + relative + b"\n")
    return manifest.hexdigest()


def candidate_sha256(payloads: Iterable[Path]) -> str:
    """The run's ``candidate.sha256``: each distinct payload's checksum, joined by " + " in the
    order given (the order of the candidates' names); "" when any cannot be read."""
    sums = []
    for payload in dict.fromkeys(payloads):
        try:
            sums.append(payload_sha256(payload))
        except OSError as exc:
            log.warning("compatlab: cannot checksum the payload %s: %s", payload, exc)
            return ""
    return " + ".join(sums)


def matrix_sha256(paths: Iterable[Path]) -> dict[str, str]:
    """``{path as given: sha256}`` of the matrix files; one that cannot be read is left out."""
    out = {}
    for path in paths:
        try:
            out[str(path)] = file_sha256(path)
        except OSError as exc:
            log.warning("compatlab: cannot checksum the matrix %s: %s", path, exc)
    return out


def compatlab_version() -> str:
    """The installed compatlab's version ("" when it is not installed as a package)."""
    try:
        return metadata.version("compatlab")
    except metadata.PackageNotFoundError:
        return ""
