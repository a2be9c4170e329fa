"""Memory state against a cold boot: starting a cell's VM from its cached pre-candidate layer.

Issue 12, item 2. Two ways to reach "the baseline guest is up and its agent answers", measured
side by side, trial by trial alternating, on one demo configuration at a time:

- ``disk`` (what compatlab does now): a fresh overlay on the cached layer, UEFI variables and
  TPM state copied from it, the domain defined and created (a cold boot). Timed from
  ``defineXML`` to the first ``guest-ping`` answered through ``libvirt_qemu.qemuAgentCommand``.
- ``memory``: once per configuration the layer's guest is booted and saved with
  ``virDomainSave`` (``dom.save``); its overlay at that moment becomes a qcow2 layer of its own
  (the saved memory refers to that exact disk), with its UEFI variables and TPM state. Per
  trial: a fresh overlay on that layer, then ``conn.restoreFlags(file, dxml)`` with the XML
  altered for the trial (name, UUID, disk chain, NVRAM, serial FIFOs). Timed from the restore
  call to the first ``guest-ping`` answered.

Why ``virDomainSave``: ``managedSave`` belongs to one persistent domain (one image per domain
name, restored by starting that domain), so two cells of one configuration cannot start from
it; reverting to an external snapshot with memory is refused by libvirt before 9.7. A save
image is a plain file any number of restores can read, each with its own XML.

For the memory variant it also checks what a verdict reads: the guest clock against the host's
(after the restore, after ``guest-set-time`` from the RTC, after ``guest-set-time`` with the
host's time), the agent's first answer, the serial console continuing through a new FIFO pair,
and on TPM profiles the TPM state (PCRs read in the guest before the save and after the
restore; and once, a restore onto a TPM state libvirt manufactures, to see whether the save
image carries the TPM state by itself). It probes which XML changes libvirt 9.0 accepts on
restore (name, UUID), and whether two restores of one image can run at once.

Guests get no NIC. Domains are named ``compatlab-membench-<run>-...``; everything this creates
(domains, their NVRAM and TPM state, files under /var/lib/compatlab/membench/<run>) is removed
in a ``finally``. The cache under /var/lib/compatlab/cache is only read (its files are copied).

Run (root, libvirtd up, the layers built by a demo run)::

    .venv/bin/python benchmarks/memory_state.py [--trials 5] [--profile bios-1cpu ...]

Writes ``benchmarks/results/memory_state.json``. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from compatlab.catalog import GoldenImage, HardwareProfile, parse_hardware, parse_image
from compatlab.lab import saveimage
from compatlab.lab.domain import DomainSpec, render_domain_xml
from compatlab.lab.events import _lifecycle_words
from compatlab.lab.machine import undefine_domain
from compatlab.lab.owner import CellMetadata, Controller

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "memory_state.json"
CACHE = Path("/var/lib/compatlab/cache")
SCRATCH = Path("/var/lib/compatlab/membench")
SWTPM_ROOT = Path("/var/lib/libvirt/swtpm")
PREFIX = "compatlab-membench-"
IMAGE = "tinylinux-a"
PRODUCTS = "acme-av"
URI = "qemu:///system"
AGENT_DEADLINE = 240.0  # seconds a trial may take to reach an answering agent
MARK_TIMEOUT = 20.0
PCRS = tuple(range(8))


# -- small helpers ----------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.stat().st_size
    }


def qemu_img_overlay(backing: Path, overlay: Path) -> None:
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing),
            str(overlay),
        ],
        check=True,
    )


def make_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # the qemu user opens files here by path
    return path


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def error_text(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return f"libvirtError({exc.get_error_code()}): {exc.get_error_message()}"
    return f"{type(exc).__name__}: {exc}"


# -- the serial console: a FIFO pair, read the way lab/console.py does ------------------------


class Fifo:
    """``<base>.in`` / ``<base>.out``, read end opened read-write before QEMU opens them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = bytearray()
        self._stop = threading.Event()
        for suffix in (".in", ".out"):
            os.mkfifo(f"{base}{suffix}", 0o600)
        self._fd = os.open(f"{base}.out", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                self._stop.wait(0.05)
                continue
            except OSError:
                return
            self.data += chunk

    def wait_for(self, needle: bytes, start: int, timeout: float) -> float | None:
        """Seconds until ``needle`` appears after offset ``start``; None if it does not."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if needle in self.data[start:]:
                return time.monotonic() - began
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError):
            os.close(self._fd)


# -- the guest agent -------------------------------------------------------------------------


def agent(dom: Any, command: str, arguments: dict[str, Any] | None = None, timeout: int = 5) -> Any:
    message: dict[str, Any] = {"execute": command}
    if arguments is not None:
        message["arguments"] = arguments
    answer = libvirt_qemu.qemuAgentCommand(dom, json.dumps(message), timeout, 0)
    return json.loads(answer).get("return")


@dataclass
class AgentUp:
    seconds: float  # from t0 to the first answered guest-ping
    tries: int
    answered_ping_seconds: float  # how long the answered ping call itself took
    errors: list[str] = field(default_factory=list)  # distinct errors while waiting


def wait_agent(dom: Any, t0: float, deadline: float = AGENT_DEADLINE) -> AgentUp:
    tries, errors = 0, []
    while time.monotonic() - t0 < deadline:
        tries += 1
        began = time.monotonic()
        try:
            agent(dom, "guest-ping", timeout=2)
        except libvirt.libvirtError as exc:
            text = exc.get_error_message()
            if text not in errors:
                errors.append(text)
            time.sleep(0.1)
            continue
        done = time.monotonic()
        return AgentUp(round(done - t0, 3), tries, round(done - began, 3), errors)
    raise TimeoutError(f"no agent answer in {deadline} s: {errors}")


def guest_exec(dom: Any, script: str, timeout: float = 30.0) -> tuple[int, str]:
    pid = agent(
        dom,
        "guest-exec",
        {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True},
    )["pid"]
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        status = agent(dom, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            return int(status.get("exitcode", -1)), out
        time.sleep(0.05)
    raise TimeoutError(f"guest-exec {script!r} did not finish")


def clock_offset(dom: Any) -> float:
    """Guest wall clock minus the host's, in seconds (host time taken mid-call)."""
    before = time.time_ns()
    guest = int(agent(dom, "guest-get-time"))
    after = time.time_ns()
    return round((guest - (before + after) / 2) / 1e9, 3)


def read_pcrs(dom: Any) -> dict[str, str] | str:
    script = "; ".join(
        f"printf '{n}=%s\\n' $(cat /sys/class/tpm/tpm0/pcr-sha256/{n} 2>&1)" for n in PCRS
    )
    try:
        rc, out = guest_exec(dom, script)
    except (libvirt.libvirtError, TimeoutError) as exc:
        return error_text(exc)
    pcrs = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return pcrs if rc == 0 else f"rc {rc}: {out.strip()}"


def serial_mark(dom: Any, console: Fifo, label: str) -> float | None:
    """Seconds from asking the guest to write a line on ttyS0 to the line in our FIFO reader."""
    needle = f"membench-mark-{label}-{uuid.uuid4().hex[:6]}"
    start = len(console.data)
    began = time.monotonic()
    try:
        guest_exec(dom, f"echo {needle} > /dev/ttyS0")
    except (libvirt.libvirtError, TimeoutError):
        return None
    seen = console.wait_for(needle.encode(), start, MARK_TIMEOUT)
    return None if seen is None else round(time.monotonic() - began, 3)


# -- one configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    profile: str
    image: GoldenImage
    hardware: HardwareProfile
    cache_folder: Path


def find_layer(profile: str) -> Path | None:
    label = f"{IMAGE}/{profile}/{PRODUCTS}"
    for manifest in sorted(CACHE.glob("*/manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("label") == label:
                return manifest.parent
        except (OSError, ValueError):
            continue
    return None


class Bench:
    """Domains, TPM states and folders of one run, all removed by :meth:`cleanup`."""

    def __init__(self, conn: Any, run: str) -> None:
        self.conn = conn
        self.run = run
        self.root = make_folder(SCRATCH / run)
        self.controller = Controller.current()
        self.names: list[str] = []
        self.uuids: list[str] = []
        self.consoles: list[Fifo] = []
        self.counter = 0
        #: Lifecycle events of our domains: name -> ["started/restored", ...], in order.
        self.events: dict[str, list[str]] = {}
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
        )

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name = dom.name()
        if name.startswith(f"{PREFIX}{self.run}-"):
            kind, words = _lifecycle_words(event, detail)
            self.events.setdefault(name, []).append(f"{kind}/{words}")

    def events_of(self, name: str) -> list[str]:
        time.sleep(0.2)  # events arrive on the loop thread
        return list(self.events.get(name, []))

    def new_identity(self, what: str) -> tuple[str, str]:
        self.counter += 1
        name = f"{PREFIX}{self.run}-{what}-{self.counter}"
        ident = str(uuid.uuid4())
        self.names.append(name)
        self.uuids.append(ident)
        return name, ident

    def console(self, folder: Path) -> Fifo:
        fifo = Fifo(folder / "console")
        self.consoles.append(fifo)
        return fifo

    def drop(self, name: str) -> None:
        """Destroy and undefine one of our domains (with NVRAM and TPM state)."""
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isPersistent():
                undefine_domain(dom, host="localhost", name=name)

    def cleanup(self) -> list[str]:
        problems = []
        for name in self.names:
            try:
                self.drop(name)
            except Exception as exc:  # keep cleaning
                problems.append(f"{name}: {error_text(exc)}")
        for fifo in self.consoles:
            fifo.close()
        for ident in self.uuids:
            state = SWTPM_ROOT / ident
            if state.exists():
                shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            SCRATCH.rmdir()  # only when no other run of this benchmark is using it
        return problems


def render(
    bench: Bench,
    config: Config,
    name: str,
    ident: str,
    folder: Path,
    overlay: Path,
    layer: Path,
) -> str:
    spec = DomainSpec(
        name=name,
        uuid=uuid.UUID(ident),
        accel="qemu",
        image=config.image,
        hardware=config.hardware,
        overlay=overlay,
        serial_log=folder / "console.log",
        metadata=CellMetadata(
            run=bench.run, cell=f"membench/{config.profile}", controller=bench.controller
        ),
        nvram=folder / "VARS.fd" if config.hardware.firmware == "uefi" else None,
        layer=layer,
    )
    return render_domain_xml(spec, PROJECT / "configs" / "templates")


@dataclass
class Staged:
    """A VM's files before it starts: overlay, NVRAM, TPM state, console."""

    name: str
    ident: str
    folder: Path
    overlay: Path
    console: Fifo
    prep_seconds: float


def stage(
    bench: Bench,
    config: Config,
    what: str,
    backing: Path,
    vars_fd: Path | None,
    tpm: Path | None,
    *,
    copy_tpm: bool = True,
) -> Staged:
    began = time.monotonic()
    name, ident = bench.new_identity(what)
    folder = make_folder(bench.root / name.removeprefix(PREFIX))
    overlay = folder / "overlay.qcow2"
    qemu_img_overlay(backing, overlay)
    if vars_fd is not None:
        shutil.copyfile(vars_fd, folder / "VARS.fd")
    if tpm is not None and copy_tpm:
        target = SWTPM_ROOT / ident / "tpm2"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tpm, target)
    console = bench.console(folder)
    return Staged(name, ident, folder, overlay, console, round(time.monotonic() - began, 3))


@dataclass
class Prepared:
    """The configuration's layers, copied out of the cache, and its saved memory state."""

    layer: Path
    vars_fd: Path | None
    tpm: Path | None
    mem_disk: Path | None = None
    mem_vars: Path | None = None
    mem_tpm: Path | None = None
    save_file: Path | None = None
    saved_xml: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def copy_layer(bench: Bench, config: Config) -> Prepared:
    folder = make_folder(bench.root / f"layer-{config.profile}")
    disk = folder / "layer.qcow2"
    shutil.copyfile(config.cache_folder / "layer.qcow2", disk)
    os.chmod(disk, 0o644)
    vars_fd = None
    if (config.cache_folder / "VARS.fd").is_file():
        vars_fd = folder / "VARS.fd"
        shutil.copyfile(config.cache_folder / "VARS.fd", vars_fd)
    tpm = None
    if (config.cache_folder / "tpm").is_dir():
        tpm = folder / "tpm"
        shutil.copytree(config.cache_folder / "tpm", tpm)
    return Prepared(disk, vars_fd, tpm)


# -- variant (a): disk --------------------------------------------------------------------------


def trial_disk(bench: Bench, config: Config, prep: Prepared) -> dict[str, Any]:
    vm = stage(bench, config, f"{config.profile[:4]}-disk", prep.layer, prep.vars_fd, prep.tpm)
    xml = render(bench, config, vm.name, vm.ident, vm.folder, vm.overlay, prep.layer)
    load = loadavg()
    t0 = time.monotonic()
    try:
        dom = bench.conn.defineXML(xml)
        dom.create()
        started = time.monotonic() - t0
        up = wait_agent(dom, t0)
        result: dict[str, Any] = {
            "variant": "disk",
            "seconds": up.seconds,
            "create_returned": round(started, 3),
            "agent_tries": up.tries,
            "prep_seconds": vm.prep_seconds,
            "loadavg": load,
            "clock_offset": clock_offset(dom),
            "events": bench.events_of(vm.name),
        }
        return result
    finally:
        bench.drop(vm.name)


# -- variant (b): memory ------------------------------------------------------------------------


def make_memory_state(bench: Bench, config: Config, prep: Prepared) -> None:
    """Boot the layer once, save it; keep its disk, NVRAM and TPM state as the memory layer."""
    vm = stage(bench, config, f"{config.profile[:4]}-base", prep.layer, prep.vars_fd, prep.tpm)
    xml = render(bench, config, vm.name, vm.ident, vm.folder, vm.overlay, prep.layer)
    folder = make_folder(bench.root / f"memory-{config.profile}")
    facts = prep.facts
    t0 = time.monotonic()
    dom = bench.conn.defineXML(xml)
    dom.create()
    up = wait_agent(dom, t0)
    facts["base_boot_to_agent_seconds"] = up.seconds
    # Let the boot's services settle (rc.boot starts the agent before its last steps).
    time.sleep(3)
    facts["before_save"] = {
        "clock_offset": clock_offset(dom),
        "serial_mark_seconds": serial_mark(dom, vm.console, "before-save"),
    }
    if config.hardware.tpm:
        facts["before_save"]["pcrs"] = read_pcrs(dom)
    save_file = folder / "memory.save"
    began = time.monotonic()
    dom.save(str(save_file))
    facts["save_seconds"] = round(time.monotonic() - began, 3)
    facts["save_file_bytes"] = save_file.stat().st_size
    facts["save_file_allocated_bytes"] = save_file.stat().st_blocks * 512
    facts["saved_at"] = time.time()
    # The overlay the memory refers to becomes its own layer: read-only from here on.
    mem_disk = folder / "disk.qcow2"
    os.replace(vm.overlay, mem_disk)
    os.chmod(mem_disk, 0o644)
    facts["memory_disk_layer_bytes"] = mem_disk.stat().st_size
    if config.hardware.firmware == "uefi":
        prep.mem_vars = folder / "VARS.fd"
        shutil.copyfile(vm.folder / "VARS.fd", prep.mem_vars)
    if config.hardware.tpm:
        prep.mem_tpm = folder / "tpm"
        shutil.copytree(SWTPM_ROOT / vm.ident / "tpm2", prep.mem_tpm)
        facts["tpm_state_after_save"] = tree_hashes(prep.mem_tpm)
        facts["tpm_state_in_layer"] = tree_hashes(prep.tpm) if prep.tpm else {}
    prep.mem_disk, prep.save_file = mem_disk, save_file
    prep.saved_xml = bench.conn.saveImageGetXMLDesc(str(save_file), 0)
    bench.drop(vm.name)  # the base domain is gone; its UUID is free again


def restore_xml(
    saved: str, *, name: str, ident: str, vm: Staged, mem_disk: Path, prep: Prepared
) -> str:
    """The save image's XML for one trial: its name, UUID, disk chain, NVRAM and console."""
    root = ET.fromstring(saved)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = ident  # type: ignore[union-attr]
    nvram = root.find("os/nvram")
    if nvram is not None:
        nvram.text = str(vm.folder / "VARS.fd")
    for pipe in root.iterfind("devices/*[@type='pipe']/source"):
        pipe.set("path", str(vm.console.base))
    disk = root.find("devices/disk[@device='disk']")
    assert disk is not None
    for child in list(disk):
        if child.tag in ("source", "backingStore"):
            disk.remove(child)
    source = ET.Element("source", file=str(vm.overlay))
    chain = [mem_disk, prep.layer]
    golden_chain = ET.fromstring(
        "<backingStore type='file'><format type='qcow2'/>"
        "<source file='GOLDEN'><seclabel model='dac' relabel='no'/></source>"
        "<backingStore/></backingStore>"
    )
    golden = saved_golden(saved)
    golden_chain.find("source").set("file", golden)  # type: ignore[union-attr]
    inner = golden_chain
    for layer in reversed(chain):
        outer = ET.Element("backingStore", type="file")
        ET.SubElement(outer, "format", type="qcow2")
        src = ET.SubElement(outer, "source", file=str(layer))
        ET.SubElement(src, "seclabel", model="dac", relabel="no")
        outer.append(inner)
        inner = outer
    driver_index = [child.tag for child in disk].index("driver") + 1
    disk.insert(driver_index, source)
    disk.insert(driver_index + 1, inner)
    return ET.tostring(root, encoding="unicode")


def saved_golden(saved: str) -> str:
    """The deepest file of the saved disk chain: the golden image."""
    disk = ET.fromstring(saved).find("devices/disk[@device='disk']")
    files = [s.get("file", "") for s in disk.iter("source")] if disk is not None else []
    return [f for f in files if f][-1]


def restore(bench: Bench, save_file: Path, dxml: str) -> Any:
    bench.conn.restoreFlags(str(save_file), dxml, libvirt.VIR_DOMAIN_SAVE_RUNNING)


def trial_memory(
    bench: Bench,
    config: Config,
    prep: Prepared,
    *,
    copy_tpm: bool = True,
    checks: bool = True,
) -> dict[str, Any]:
    assert prep.mem_disk is not None and prep.save_file is not None
    vm = stage(
        bench,
        config,
        f"{config.profile[:4]}-mem",
        prep.mem_disk,
        prep.mem_vars,
        prep.mem_tpm,
        copy_tpm=copy_tpm,
    )
    dxml = restore_xml(
        prep.saved_xml, name=vm.name, ident=vm.ident, vm=vm, mem_disk=prep.mem_disk, prep=prep
    )
    copy = vm.folder / "memory.save"
    try:
        copy_seconds = renamed_copy(prep.save_file, copy, vm.name, vm.ident)
    except Exception:
        bench.drop(vm.name)
        raise
    load = loadavg()
    t0 = time.monotonic()
    try:
        restore(bench, copy, dxml)
        restored = time.monotonic() - t0
        dom = bench.conn.lookupByName(vm.name)
        up = wait_agent(dom, t0)
        result: dict[str, Any] = {
            "variant": "memory",
            "seconds": up.seconds,
            "restore_returned": round(restored, 3),
            "agent_tries": up.tries,
            "first_answered_ping_seconds": up.answered_ping_seconds,
            "agent_errors_while_waiting": up.errors,
            "prep_seconds": vm.prep_seconds,
            "renamed_copy_seconds": copy_seconds,
            "loadavg": load,
            "since_save_seconds": round(time.time() - prep.facts["saved_at"], 1),
            "events_to_agent": bench.events_of(vm.name),
        }
        if not checks:
            return result
        result.update(memory_checks(bench, config, dom, vm, prep))
        return result
    finally:
        bench.drop(vm.name)
        copy.unlink(missing_ok=True)


def memory_checks(
    bench: Bench, config: Config, dom: Any, vm: Staged, prep: Prepared
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["clock_offset_after_restore"] = clock_offset(dom)
    time.sleep(2)
    out["clock_offset_2s_later"] = clock_offset(dom)
    try:
        agent(dom, "guest-set-time")  # no time: the guest reads its RTC (hwclock -s)
        out["clock_offset_after_set_time_from_rtc"] = clock_offset(dom)
    except libvirt.libvirtError as exc:
        out["set_time_from_rtc_error"] = error_text(exc)
    try:
        agent(dom, "guest-set-time", {"time": time.time_ns()})
        out["clock_offset_after_set_time_host"] = clock_offset(dom)
    except libvirt.libvirtError as exc:
        out["set_time_host_error"] = error_text(exc)
        out["clock_offset_after_set_time_host_attempt"] = clock_offset(dom)
    rc, uptime = guest_exec(dom, "cut -d' ' -f1 /proc/uptime")
    out["guest_uptime_seconds"] = float(uptime.strip() or 0) if rc == 0 else None
    out["serial_mark_seconds"] = serial_mark(dom, vm.console, "after-restore")
    out["serial_bytes_from_restored_guest"] = len(vm.console.data)
    if config.hardware.tpm:
        pcrs = read_pcrs(dom)
        out["pcrs_equal_before_save"] = pcrs == prep.facts["before_save"].get("pcrs")
        if not out["pcrs_equal_before_save"]:
            out["pcrs"] = pcrs
        state = SWTPM_ROOT / vm.ident / "tpm2"
        out["tpm_state_files"] = tree_hashes(state) if state.is_dir() else "missing"
    began = time.monotonic()
    try:
        # compatlab defines its domains; a restored domain is transient until defined.
        persistent = bench.conn.defineXML(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        out["define_after_restore_seconds"] = round(time.monotonic() - began, 3)
        out["persistent_after_define"] = bool(persistent.isPersistent())
    except libvirt.libvirtError as exc:
        out["define_after_restore_error"] = error_text(exc)
    return out


def power_cycle_after_restore(bench: Bench, config: Config, prep: Prepared) -> dict[str, Any]:
    """Restore, define, then destroy + create (``Machine.power_cycle``, how compatlab restarts
    a guest): does the defined domain boot cold from its overlay, with its NVRAM and TPM?"""
    assert prep.mem_disk is not None and prep.save_file is not None
    vm = stage(
        bench, config, f"{config.profile[:4]}-cycle", prep.mem_disk, prep.mem_vars, prep.mem_tpm
    )
    copy = vm.folder / "memory.save"
    renamed_copy(prep.save_file, copy, vm.name, vm.ident)
    dxml = restore_xml(
        prep.saved_xml, name=vm.name, ident=vm.ident, vm=vm, mem_disk=prep.mem_disk, prep=prep
    )
    out: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        restore(bench, copy, dxml)
        dom = bench.conn.lookupByName(vm.name)
        out["restored_to_agent_seconds"] = wait_agent(dom, t0).seconds
        dom = bench.conn.defineXML(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        dom.destroy()
        mark = len(vm.console.data)
        t0 = time.monotonic()
        dom.create()
        out["cold_boot_to_agent_seconds"] = wait_agent(dom, t0).seconds
        out["events"] = bench.events_of(vm.name)
        out["serial_boot_output_bytes"] = len(vm.console.data) - mark
        out["clock_offset_after_cold_boot"] = clock_offset(dom)
        if config.hardware.tpm:
            pcrs = read_pcrs(dom)
            # Measured boot is deterministic here: a cold boot gives the baseline's PCRs again.
            out["pcrs_equal_to_baseline_boot"] = pcrs == prep.facts["before_save"].get("pcrs")
        return out
    finally:
        bench.drop(vm.name)
        copy.unlink(missing_ok=True)


# -- probes: what may change in the restore XML, and restores at once ----------------------------


def probe(
    bench: Bench, config: Config, prep: Prepared, what: str, edit: Callable[[str], str]
) -> dict[str, Any]:
    """One restore with ``edit`` applied to the trial's XML: accepted, or libvirt's error."""
    assert prep.mem_disk is not None and prep.save_file is not None
    vm = stage(
        bench, config, f"{config.profile[:4]}-probe", prep.mem_disk, prep.mem_vars, prep.mem_tpm
    )
    dxml = restore_xml(
        prep.saved_xml, name=vm.name, ident=vm.ident, vm=vm, mem_disk=prep.mem_disk, prep=prep
    )
    try:
        restore(bench, prep.save_file, edit(dxml))
        return {"probe": what, "accepted": True}
    except libvirt.libvirtError as exc:
        return {"probe": what, "accepted": False, "error": error_text(exc)}
    finally:
        bench.drop(vm.name)


def keep_uuid(saved: str) -> Callable[[str], str]:
    saved_uuid = ET.fromstring(saved).findtext("uuid") or ""

    def edit(dxml: str) -> str:
        root = ET.fromstring(dxml)
        root.find("uuid").text = saved_uuid  # type: ignore[union-attr]
        return ET.tostring(root, encoding="unicode")

    return edit


def renamed_copy(save_file: Path, copy: Path, name: str, ident: str) -> float:
    """Copy the save image to ``copy`` with another domain name and UUID in its header XML
    (:func:`compatlab.lab.saveimage.renamed_copy`, what a cell does since memory layers were
    adopted; libvirt refuses a restore under another name or UUID). The seconds it took."""
    began = time.monotonic()
    saveimage.renamed_copy(save_file, copy, name=name, uuid=ident)
    return round(time.monotonic() - began, 3)


def probes(bench: Bench, config: Config, prep: Prepared) -> list[dict[str, Any]]:
    saved = ET.fromstring(prep.saved_xml)
    saved_name, saved_uuid = saved.findtext("name") or "", saved.findtext("uuid") or ""
    return [
        # The saved domain is undefined by now: its name and UUID are free.
        probe(
            bench,
            config,
            prep,
            "restore XML with a new name, the saved uuid",
            keep_uuid(prep.saved_xml),
        ),
        probe(bench, config, prep, "restore XML with a new name and a new uuid", lambda x: x),
        two_restores(bench, config, prep, (saved_name, saved_uuid)),
        two_restores(bench, config, prep, None),
    ]


def two_restores(
    bench: Bench, config: Config, prep: Prepared, saved: tuple[str, str] | None
) -> dict[str, Any]:
    """Two restores running at once: of the one image under its saved name and UUID
    (``saved``), or of two renamed copies (``saved`` None), each with its own name and UUID."""
    assert prep.mem_disk is not None and prep.save_file is not None
    what = "saved name and uuid" if saved else "renamed copies (header rewritten)"
    result: dict[str, Any] = {"probe": f"two restores at once, {what}"}
    vms = [
        stage(
            bench, config, f"{config.profile[:4]}-two", prep.mem_disk, prep.mem_vars, prep.mem_tpm
        )
        for _ in range(2)
    ]
    names = []
    try:
        for n, vm in enumerate(vms, 1):
            name, ident = saved or (vm.name, vm.ident)
            names.append(name)
            image = prep.save_file
            if saved is None:
                image = vm.folder / "memory.save"
                result[f"copy_{n}_seconds"] = renamed_copy(prep.save_file, image, name, ident)
            dxml = restore_xml(
                prep.saved_xml, name=name, ident=ident, vm=vm, mem_disk=prep.mem_disk, prep=prep
            )
            try:
                t0 = time.monotonic()
                restore(bench, image, dxml)
                up = wait_agent(bench.conn.lookupByName(name), t0)
                result[f"restore_{n}"] = f"accepted, agent after {up.seconds} s"
            except (libvirt.libvirtError, TimeoutError) as exc:
                result[f"restore_{n}"] = error_text(exc)
        result["running_at_once"] = (
            sum(1 for name in set(names) if bench.conn.lookupByName(name).isActive())
            if saved is None
            else None
        )
        result["accepted"] = all(
            str(v).startswith("accepted") for k, v in result.items() if k.startswith("restore_")
        )
        return result
    finally:
        for name in set(names):
            bench.drop(name)
        for vm in vms:
            (vm.folder / "memory.save").unlink(missing_ok=True)


# -- the run -----------------------------------------------------------------------------------


def run_config(bench: Bench, config: Config, trials: int) -> dict[str, Any]:
    out: dict[str, Any] = {"profile": config.profile, "layer": config.cache_folder.name}
    prep = copy_layer(bench, config)
    out["layer_files"] = json.loads((config.cache_folder / "manifest.json").read_text())["files"]
    make_memory_state(bench, config, prep)
    out["memory_state"] = {k: v for k, v in prep.facts.items() if k != "saved_at"}
    out["dxml_probes"] = probes(bench, config, prep)
    samples: list[dict[str, Any]] = []
    for n in range(trials):
        order = (trial_disk, trial_memory) if n % 2 == 0 else (trial_memory, trial_disk)
        for trial in order:
            try:
                sample = trial(bench, config, prep)
            except Exception as exc:
                sample = {"variant": trial.__name__, "error": error_text(exc)}
                traceback.print_exc()
            sample["trial"] = n + 1
            samples.append(sample)
            print(json.dumps(sample), flush=True)
    if config.hardware.tpm:
        # Does the save image bring the TPM state back by itself? Restore onto no state at all:
        # libvirt manufactures a new TPM (swtpm_setup), then QEMU loads the saved state into it.
        try:
            extra = trial_memory(bench, config, prep, copy_tpm=False)
        except Exception as exc:
            extra = {"error": error_text(exc)}
        out["tpm_restore_without_copied_state"] = extra
    try:
        out["power_cycle_after_restore"] = power_cycle_after_restore(bench, config, prep)
    except Exception as exc:
        traceback.print_exc()
        out["power_cycle_after_restore"] = {"error": error_text(exc)}
    out["trials"] = samples
    for variant in ("disk", "memory"):
        ok = [s for s in samples if s.get("variant") == variant and "seconds" in s]
        out[variant] = {
            "to_agent_seconds": stats([s["seconds"] for s in ok]),
            "prep_seconds": stats([s["prep_seconds"] for s in ok]),
            "failed_trials": sum(
                1
                for s in samples
                if s.get("variant") in (variant, f"trial_{variant}") and "error" in s
            ),
        }
    return out


# -- the summary: figures, what the verdict reads, the recommendation ----------------------------


NOT_ESTABLISHED = [
    "end-to-end verdicts: no cell (candidate install, its boots, rollback, checks) was run "
    "from a restored state, so equal verdicts, attributions and crash signatures are not shown",
    "Windows guests: not available here (clock on a localtime RTC, qemu-ga and WinRM after a "
    "restore, BitLocker or other TPM users, event-log timestamps after the clock is set)",
    "an image hours or days old: the clock offset is the image's age (minutes here); a big "
    "forward jump at guest-set-time (certificates, Kerberos, scheduled tasks) was not tried",
    "a save file read cold from disk: every restore here read it from the page cache "
    "(100-130 MB); the first restore after a reboot or eviction will be slower",
    "the disk variant's figures are inflated by the load of other work on this host "
    "(loadavg up to ~21 on 2 cores); the ratio under a quiet host is not measured",
    "the watchdog (i6300esb) and balloon statistics after a restore were not checked",
    "whether rewriting the save image header stays valid in other libvirt versions",
]


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """What the run shows, from its own figures, and whether to keep memory state."""
    per: dict[str, Any] = {}
    differs: list[str] = []
    faster = True
    for config in result["configs"]:
        if "trials" not in config:
            continue
        mem = [t for t in config["trials"] if t.get("variant") == "memory" and "seconds" in t]
        disk = config["disk"]["to_agent_seconds"]
        memory = config["memory"]["to_agent_seconds"]
        with_copy = stats([t["seconds"] + t["renamed_copy_seconds"] for t in mem])
        offsets = [t["clock_offset_after_restore"] for t in mem]
        behind = [t["clock_offset_after_restore"] + t["since_save_seconds"] for t in mem]
        rtc = [t.get("clock_offset_after_set_time_from_rtc") for t in mem]
        host = [t.get("clock_offset_after_set_time_host") for t in mem]
        serial_ok = all(t.get("serial_mark_seconds") is not None for t in mem)
        pcrs = [t.get("pcrs_equal_before_save") for t in mem if "pcrs_equal_before_save" in t]
        entry: dict[str, Any] = {
            "disk_to_agent_median_seconds": disk.get("median"),
            "memory_to_agent_median_seconds": memory.get("median"),
            "memory_with_renamed_copy_median_seconds": with_copy.get("median"),
            "speedup_median": (
                round(disk["median"] / with_copy["median"], 1)
                if disk.get("median") and with_copy.get("median")
                else None
            ),
            "save_seconds": config["memory_state"].get("save_seconds"),
            "save_file_bytes": config["memory_state"].get("save_file_bytes"),
            "guest_clock_offset_after_restore_seconds": offsets,
            "guest_clock_offset_minus_image_age_seconds": [round(b, 1) for b in behind],
            "guest_clock_offset_after_set_time_from_rtc": rtc,
            "guest_clock_offset_after_set_time_with_host_time": host,
            "serial_console_continues": serial_ok,
            "first_ping_after_restore_seconds": [t["first_answered_ping_seconds"] for t in mem],
            "dxml_probes": {p["probe"]: p.get("accepted") for p in config.get("dxml_probes", [])},
        }
        entry["restore_events"] = sorted({e for t in mem for e in t.get("events_to_agent", [])})
        entry["power_cycle_after_restore"] = config.get("power_cycle_after_restore")
        if pcrs:
            entry["tpm_pcrs_equal_to_before_save"] = all(pcrs)
            extra = config.get("tpm_restore_without_copied_state", {})
            entry["tpm_pcrs_come_back_without_copied_state"] = extra.get("pcrs_equal_before_save")
            saved_tpm = config["memory_state"].get("tpm_state_after_save")
            entry["tpm_state_file_after_restore_on_a_new_tpm_equals_saved"] = (
                extra.get("tpm_state_files") == saved_tpm if saved_tpm else None
            )
            if not all(pcrs):
                differs.append(f"{config['profile']}: TPM PCRs differ after the restore")
        per[config["profile"]] = entry
        if not (
            with_copy.get("median") and disk.get("median") and with_copy["median"] < disk["median"]
        ):
            faster = False
        if offsets and max(abs(o) for o in offsets) > 2:
            differs.append(
                f"{config['profile']}: the guest clock comes back where it was saved (up to "
                f"{-min(offsets):.0f} s behind the host here, the image's age; it stays "
                "behind, it does not catch up) until guest-set-time is called"
            )
        if not serial_ok:
            differs.append(f"{config['profile']}: the serial console did not continue")
    differs += [
        "the domain starts with a started/restored lifecycle event, not started/booted, and "
        "the serial console has no boot output: the cell's baseline boot is not seen",
        "the baseline boot is no longer measured beside the candidate's boots in the same run: "
        "the boot-time check's reference would be the builder's, taken under another load",
        "libvirt 9.0 refuses a restore XML whose name or UUID differ from the saved domain's "
        "(its ABI check); two cells of one configuration need a per-cell copy of the image "
        "with its header rewritten, which libvirt does not support",
    ]
    keep = faster and not differs
    return {
        "per_profile": per,
        "faster": faster,
        "differs_from_a_cold_boot": differs,
        "not_established": NOT_ESTABLISHED,
        "keep_memory_state": keep,
        "recommendation": (
            "keep memory state"
            if keep
            else (
                "do not adopt memory state as it is: it is much faster to an answering agent, "
                "but what the verdict reads differs (see differs_from_a_cold_boot). Keep "
                "booting the cached disk. Reconsider only with: guest-set-time from the host "
                "right after every restore, a supported way to give each restore its own "
                "name and UUID (or one cell per configuration per host at a time), the "
                "started/restored event taken as the baseline's start, and a boot-time "
                "reference that does not come from the cell's own baseline boot."
            )
        ),
    }


def _event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument(
        "--profile", action="append", choices=["bios-1cpu", "uefi-sb-tpm-2cpu"], default=None
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    profiles = args.profile or ["bios-1cpu", "uefi-sb-tpm-2cpu"]
    image = parse_image(PROJECT / "images" / f"{IMAGE}.yaml")
    run = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {
        "benchmark": "memory_state",
        "issue": "12, item 2",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": os.uname().nodename,
        "libvirt": libvirt.getVersion(),
        "trials_per_variant": args.trials,
        "loadavg_start": loadavg(),
        "configs": [],
    }
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised anyway
    libvirt.virEventRegisterDefaultImpl()  # lifecycle events need a client event loop
    threading.Thread(target=_event_loop, daemon=True).start()
    conn = libvirt.open(URI)
    bench = Bench(conn, run)
    try:
        for profile in profiles:
            folder = find_layer(profile)
            if folder is None:
                result["configs"].append({"profile": profile, "error": "no cached layer"})
                continue
            hardware = parse_hardware(PROJECT / "configs" / "hardware" / f"{profile}.yaml")
            config = Config(profile, image, hardware, folder)
            try:
                result["configs"].append(run_config(bench, config, args.trials))
            except Exception as exc:
                traceback.print_exc()
                result["configs"].append({"profile": profile, "error": error_text(exc)})
    finally:
        result["cleanup_problems"] = bench.cleanup()
        result["loadavg_end"] = loadavg()
        conn.close()
    result["summary"] = summarize(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
