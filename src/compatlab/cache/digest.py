"""Digests for the cache key, without hashing a multi-GiB golden image on every run.

SHA-256 runs at about 400-520 MiB/s on the 2-core lab machine (measured: 523 MiB/s in memory,
391 MiB/s from a page-cached file), so a 20 GiB Windows image costs 40-50 s per run, and more
from a cold disk -- against a 0.5 s budget for a cache hit. A file's digest is therefore kept in
a small sidecar file, ``<cache>/.digests/<sha256 of the real path>.json``, with the file's
``(path, size, mtime_ns, ctime_ns, inode, device)`` when it was hashed; it is reused while all
of them are unchanged and recomputed when any changed. ``ctime`` is in it because ``touch -d``
or ``cp -p`` can put an old mtime back on new bytes, while the kernel sets ctime on every
write and nobody can set it back. The sidecar lives under the cache (the golden images' folder
may be read-only) and is written atomically; a sidecar that cannot be read is recomputed.

Product payload folders are hashed with :func:`compatlab.report.provenance.payload_sha256`,
the checksum the report already prints, uncached: payloads are small next to images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from compatlab.cache.key import KeyInputs, ProductInput, hardware_fields
from compatlab.catalog import GoldenImage, HardwareProfile, Product
from compatlab.errors import ImageError
from compatlab.report.provenance import file_sha256, payload_sha256

__all__ = ["file_digest", "image_digests", "key_inputs", "product_inputs"]

log = logging.getLogger("compatlab.cache")


def _stamp(path: Path) -> dict[str, int | str]:
    st = path.stat()
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def file_digest(path: Path, sidecars: Path) -> str:
    """SHA-256 of ``path``, from its sidecar under ``sidecars`` while the file is unchanged.

    Raises OSError when the file cannot be read.
    """
    real = path.resolve()
    sidecar = sidecars / f"{hashlib.sha256(os.fsencode(real)).hexdigest()[:32]}.json"
    stamp = _stamp(real)
    try:
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        if isinstance(saved, dict) and saved.get("stamp") == stamp:
            digest = saved.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
    except (OSError, ValueError):
        pass  # no sidecar yet, or a damaged one: hash again
    digest = file_sha256(real)
    if _stamp(real) != stamp:
        # Written while we read: the digest is of no one version; do not remember it.
        return digest
    try:
        sidecars.mkdir(parents=True, exist_ok=True)
        temporary = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(json.dumps({"stamp": stamp, "sha256": digest}), encoding="utf-8")
        os.replace(temporary, sidecar)
    except OSError as exc:
        log.warning("compatlab: cannot remember the digest of %s in %s: %s", real, sidecars, exc)
    return digest


def image_digests(image: GoldenImage, sidecars: Path) -> dict[str, str]:
    """The golden image's part of the key: digests of its disk, kernel, initrd and UEFI
    variable template (those it has), and its kernel command line. Raises ImageError."""
    out: dict[str, str] = {}
    files = {
        "disk": image.disk,
        "kernel": image.kernel,
        "initrd": image.initrd,
        "uefi_vars": image.uefi_vars,
    }
    for name, path in files.items():
        if path is None:
            continue
        try:
            out[name] = file_digest(path, sidecars)
        except OSError as exc:
            raise ImageError(f"cannot read {name} {path} of image {image.name}: {exc}") from exc
    if image.cmdline is not None:
        out["cmdline"] = image.cmdline
    return out


def product_inputs(products: Iterable[Product], image: GoldenImage) -> tuple[ProductInput, ...]:
    """Each product's payload digest and install command for ``image``'s OS, in the order
    given (the install order). Raises OSError when a payload cannot be read."""
    out = []
    for product in products:
        payload = product.payload_for(image.os_family)
        if payload is None:
            out.append(ProductInput(product.name, "", ""))
            continue
        commands = payload.commands
        install = commands.install if commands.install is not None else repr(commands.package)
        out.append(ProductInput(product.name, payload_sha256(payload.folder), install))
    return tuple(out)


def key_inputs(
    image: GoldenImage, hardware: HardwareProfile, products: Iterable[Product], sidecars: Path
) -> KeyInputs:
    """Everything a cell's layer key is made of. Raises ImageError / OSError."""
    return KeyInputs(
        image=image_digests(image, sidecars),
        hardware=hardware_fields(hardware),
        products=product_inputs(products, image),
    )
