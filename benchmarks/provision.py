"""Provisioning overhead per cell: copy-on-write overlay + define + start, vs a full image copy.

For each golden image size (1 and 8 GiB by default; sparse qcow2 images with a fraction of their
size written as real data), a cell is provisioned the way the lab does it -- qcow2 overlay
(``CellStorage.create_overlay``), domain XML (``render_domain_xml``), ``defineXML``,
``create`` -- and timed up to the moment QEMU runs the guest (the guest's boot is not included).
For comparison the golden image is copied whole, with ``qemu-img convert`` and with ``cp``.
The claim under test: the overlay path is O(1) in the image size, a full copy O(size).

Run as root on a hypervisor host (needs qemu:///system and qemu-img)::

    .venv/bin/python benchmarks/provision.py [--sizes 1,8] [--repeat 5]

Writes ``benchmarks/results/provision.json``. Figures, not assertions: nothing here fails on a
slow run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from compatlab.catalog import GoldenImage, HardwareProfile, Watchdog
from compatlab.lab.domain import DomainSpec, domain_name, render_domain_xml, validate_domain_xml
from compatlab.lab.owner import CellMetadata, Controller
from compatlab.lab.storage import CellStorage

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "configs" / "templates"
RESULTS = ROOT / "benchmarks" / "results" / "provision.json"
TARGET_SECONDS = 0.5
GIB = 1024**3
MIB = 1024**2

PROFILES = {
    "bios": HardwareProfile(
        name="bench-bios",
        vcpus=1,
        memory_mib=256,
        firmware="bios",
        secure_boot=False,
        tpm=False,
        disk_bus="virtio",
        machine="q35",
        source=Path("benchmarks/provision.py"),
        watchdog=Watchdog(),
    ),
    "uefi-sb-tpm": HardwareProfile(
        name="bench-uefi-sb-tpm",
        vcpus=2,
        memory_mib=512,
        firmware="uefi",
        secure_boot=True,
        tpm=True,
        disk_bus="sata",
        machine="q35",
        source=Path("benchmarks/provision.py"),
        watchdog=Watchdog(),
    ),
}


def run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@contextmanager
def timed(into: dict[str, float], stage: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    into[stage] = time.perf_counter() - began


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "runs": [round(v, 4) for v in values],
    }


def make_golden(folder: Path, size_gib: int, fill: float) -> tuple[Path, int]:
    """A sparse qcow2 image of ``size_gib`` with ``fill`` of it written (non-zero pattern)."""
    path = folder / f"golden-{size_gib}g.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_gib}G")
    data = int(size_gib * GIB * fill) // MIB * MIB
    chunk = 256 * MIB
    for offset in range(0, data, chunk):
        length = min(chunk, data - offset)
        # Spread over the disk, as an installed OS is; a pattern, so nothing is zero-detected.
        where = offset * int(1 / fill) if fill < 1 else offset
        run("qemu-io", "-c", f"write -P 0x5a {where} {length}", str(path))
    return path, data


@dataclass
class Lab:
    conn: Any
    root: Path

    def provision(self, golden: GoldenImage, hardware: HardwareProfile) -> dict[str, float]:
        """One cell: overlay, XML, define, start; then tear it down. Seconds per stage."""
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        cell = f"{golden.name}/{hardware.name}/none"
        stages: dict[str, float] = {}
        storage = CellStorage(run_id, cell, root=self.root, host="localhost")
        dom: Any = None
        try:
            with timed(stages, "overlay"):
                storage.create_overlay(golden.disk)
            with timed(stages, "render"):
                spec = DomainSpec(
                    name=domain_name(run_id, cell),
                    uuid=uuid.uuid4(),
                    accel="qemu",
                    image=golden,
                    hardware=hardware,
                    overlay=storage.overlay,
                    serial_log=storage.serial_log,
                    nvram=storage.nvram if hardware.firmware == "uefi" else None,
                    metadata=CellMetadata(run=run_id, cell=cell, controller=Controller.current()),
                )
                xml = render_domain_xml(spec, TEMPLATES)
            with timed(stages, "define"):
                dom = self.conn.defineXML(xml)
            with timed(stages, "start"):
                dom.create()
            # Not part of the overhead: the lab need not re-validate what CI validated.
            with timed(stages, "validate (optional)"):
                validate_domain_xml(xml)
        finally:
            with timed(stages, "teardown"):
                if dom is not None:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(
                        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_TPM
                    )
                storage.remove()
        stages["before start"] = sum(stages[s] for s in ("overlay", "render", "define"))
        stages["overhead"] = stages["before start"] + stages["start"]
        return stages


def full_copies(golden: Path, folder: Path) -> dict[str, float]:
    copies: dict[str, float] = {}
    target = folder / "copy.qcow2"
    commands: dict[str, Callable[[], object]] = {
        "qemu-img convert": lambda: run(
            "qemu-img", "convert", "-O", "qcow2", str(golden), str(target)
        ),
        "cp --sparse=always": lambda: run("cp", "--sparse=always", str(golden), str(target)),
    }
    for name, command in commands.items():
        with timed(copies, name):
            command()
            os.sync()  # the copy is on disk, as the overlay's metadata is
        target.unlink()
    return copies


def versions(conn: Any) -> dict[str, str]:
    def dotted(number: int) -> str:
        return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"

    return {
        "libvirt": dotted(conn.getLibVersion()),
        "qemu": dotted(conn.getVersion()),
        "qemu-img": run("qemu-img", "--version").splitlines()[0],
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1,8", help="golden image sizes in GiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fill", type=float, default=0.125, help="fraction written as data")
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(args.uri)
    # /var/tmp: QEMU (libvirt-qemu) must reach the files; one filesystem for golden and cells.
    work = Path(tempfile.mkdtemp(prefix="compatlab-bench-", dir="/var/tmp"))
    work.chmod(0o755)
    lab = Lab(conn=conn, root=work / "lab")
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    try:
        for size in sizes:
            print(f"-- {size} GiB golden image", file=sys.stderr)
            disk, data = make_golden(work, size, args.fill)
            golden = GoldenImage(
                name=f"bench-{size}g",
                os_family="linux",
                build="bench",
                display_name="",
                disk=disk,
                firmware=frozenset({"bios", "uefi"}),
                channel="agent",
                source=Path("benchmarks/provision.py"),
            )
            entry: dict[str, Any] = {
                "size_gib": size,
                "data_mib": data // MIB,
                "file_mib": round(disk.stat().st_size / MIB, 1),
                "overlay": {},
            }
            for label, hardware in PROFILES.items():
                lab.provision(golden, hardware)  # warm-up: swtpm_setup, firmware lookup, cache
                runs = [lab.provision(golden, hardware) for _ in range(args.repeat)]
                entry["overlay"][label] = {
                    stage: summary([r[stage] for r in runs]) for stage in runs[0]
                }
                overhead = entry["overlay"][label]["overhead"]["median"]
                print(f"   overlay+define+start {label}: {overhead:.3f} s", file=sys.stderr)
            copies = [full_copies(disk, work) for _ in range(args.repeat)]
            entry["full_copy"] = {name: summary([c[name] for c in copies]) for name in copies[0]}
            for name, figures in entry["full_copy"].items():
                print(f"   full copy ({name}): {figures['median']:.3f} s", file=sys.stderr)
            # The like-for-like comparison: how the cell's disk is made (define and start cost
            # the same either way).
            entry["disk_stage_median"] = {
                "overlay": entry["overlay"]["bios"]["overlay"]["median"],
                **{name: figures["median"] for name, figures in entry["full_copy"].items()},
            }
            results.append(entry)
            disk.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        conn.close()

    worst = max(
        figures["overhead"]["median"] for entry in results for figures in entry["overlay"].values()
    )
    report = {
        "benchmark": "provision",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "what": "seconds per cell from nothing to a running QEMU (guest boot excluded): "
        "overlay (qemu-img info + create), render, defineXML, create ('overhead'; 'before "
        "start' without create); vs copying the golden image whole. Medians of --repeat runs "
        "after one warm-up; the golden image is in the page cache (best case for the copies). "
        "'start' is libvirt + QEMU process start-up, plus swtpm_setup manufacturing a fresh "
        "TPM state for TPM profiles; it varies with the host's load (loadavg below).",
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "accel": "qemu (TCG)",
            **versions_of(args.uri),
        },
        "repeat": args.repeat,
        "fill": args.fill,
        "target": {
            "overhead_seconds": TARGET_SECONDS,
            "worst_median_overhead": worst,
            "met": worst < TARGET_SECONDS,
        },
        "sizes": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def versions_of(uri: str) -> dict[str, str]:
    conn = libvirt.open(uri)
    try:
        return versions(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
