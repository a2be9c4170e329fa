"""The lab code against libvirt's own in-process ``test:///default`` driver: real libvirt API,
real event loop, no QEMU. ``test:///default`` is one shared state per process, so every domain
here has a unique name and is removed by the test that made it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from compatlab.errors import HypervisorError, StorageError
from compatlab.lab.connection import Hypervisor, ReconnectPolicy, ensure_event_loop
from compatlab.lab.events import DomainWatch, _lifecycle_words, flatten_guest_panicked
from compatlab.lab.machine import DomainState, Machine, ppm_to_png
from compatlab.lab.owner import (
    NS_URI,
    CellMetadata,
    Controller,
    parse_cell_metadata,
    process_start_time,
    read_cell_metadata,
    read_run_owner,
    render_cell_metadata,
    run_folder,
    write_run_owner,
)
from compatlab.lab.reaper import gc, reap

URI = "test:///default"


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with Hypervisor(URI) as hypervisor:
        yield hypervisor


def unique(prefix: str = "compatlab-unit") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def domain_xml(name: str, meta: CellMetadata | None = None) -> str:
    metadata = f"<metadata>{render_cell_metadata(meta)}</metadata>" if meta else ""
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        f"<os><type>hvm</type></os>{metadata}</domain>"
    )


def dead_controller() -> Controller:
    """A controller that really existed on this host and is now gone (not a made-up pid)."""
    proc = subprocess.Popen(["sleep", "60"])
    start = process_start_time(proc.pid)
    assert start is not None
    proc.kill()
    proc.wait()
    return Controller(socket.gethostname(), proc.pid, start)


def defined_names(hv: Hypervisor) -> set[str]:
    return {d.name() for d in hv.domains()}


# -- connection ---------------------------------------------------------------------------------


def test_event_loop_runs_in_one_daemon_thread() -> None:
    ensure_event_loop()
    ensure_event_loop()
    loops = [t for t in threading.enumerate() if t.name == "compatlab-libvirt-events"]
    assert len(loops) == 1
    assert loops[0].daemon


def test_unreachable_hypervisor_gives_up_bounded_with_the_host() -> None:
    policy = ReconnectPolicy(attempts=3, max_seconds=5, first_wait=0.01, max_wait=0.02)
    hv = Hypervisor("qemu+unix:///system?socket=/nonexistent/compatlab.sock", reconnect=policy)
    started = time.monotonic()
    with pytest.raises(HypervisorError) as info:
        hv.open()
    assert time.monotonic() - started < 5
    assert info.value.host == socket.gethostname()
    assert "after 3 attempts" in str(info.value)
    assert isinstance(info.value.__cause__, libvirt.libvirtError)


def test_remote_uri_names_the_remote_host() -> None:
    hv = Hypervisor("qemu+ssh://lab-host-07.example/system")
    assert hv.host == "lab-host-07.example"
    assert not hv.is_local


def test_connection_dropped_underneath_is_reopened_and_events_resubscribed(
    hv: Hypervisor,
) -> None:
    hub = hv.events
    name = unique()
    watch = hub.watch(name)
    hv.connection.close()  # as if libvirtd had gone away under us
    conn = hv.connection  # reopens
    assert conn.isAlive()
    assert hv.reconnects == 1
    assert watch.wait({"connection_restored"}, timeout=2) is not None
    with Machine(hv, domain_xml(name)) as machine:
        machine.start()
        assert machine.wait({"started"}, timeout=5) is not None


def test_machine_follows_its_domain_to_the_new_connection(hv: Hypervisor) -> None:
    keeper = libvirt.open(URI)  # keeps test:///default's state while hv reconnects
    try:
        with Machine(hv, domain_xml(unique())) as machine:
            machine.start()
            hv.connection.close()
            assert machine.state().state == "running"  # a lookup on the new connection
            assert machine.domain.connect() is hv.connection
            assert hv.reconnects == 1
    finally:
        keeper.close()


def test_accelerator_probe_is_cached_and_never_kvm_without_vmx_svm(hv: Hypervisor) -> None:
    first = hv.accelerator()
    assert hv.accelerator() is first
    # The test driver's host CPU has no vmx/svm feature; neither has this machine's CPU.
    assert first.domain_type == "qemu"
    assert "vmx/svm" in first.reason


# -- events -------------------------------------------------------------------------------------


def test_lifecycle_events_arrive_in_order_with_words(hv: Hypervisor) -> None:
    name = unique()
    with Machine(hv, domain_xml(name)) as machine:
        machine.start()
        machine.suspend()
        machine.resume()
        machine.destroy()
        seen = []
        while (event := machine.wait(timeout=2)) is not None and event.kind != "stopped":
            seen.append((event.kind, event.detail))
        assert event is not None and event.detail == "destroyed"
    assert seen == [
        ("defined", "added"),
        ("started", "booted"),
        ("suspended", "paused"),
        ("resumed", "unpaused"),
    ]
    assert {e.source for e in machine.watch.timeline} == {"libvirt"}


def test_wait_wakes_on_the_event_not_at_a_poll(hv: Hypervisor) -> None:
    name = unique()
    with Machine(hv, domain_xml(name)) as machine:
        machine.start()
        assert machine.wait({"started"}, timeout=2) is not None
        timer = threading.Timer(0.3, machine.suspend)
        timer.start()
        event = machine.wait({"suspended"}, timeout=5)
        received = time.monotonic()
        timer.join()
        assert event is not None
        assert received - machine.watch.arrival(event) < 0.05


def test_wait_times_out_with_none() -> None:
    watch = DomainWatch("nothing-happens")
    started = time.monotonic()
    assert watch.wait({"crashed"}, timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 1.0


def test_wait_skips_other_kinds_but_the_timeline_keeps_them() -> None:
    watch = DomainWatch("x")
    watch.record("libvirt", "reboot")
    watch.record("libvirt", "crashed", "panicked")
    event = watch.wait({"crashed"}, timeout=0)
    assert event is not None and event.t >= 0 and event.detail == "panicked"
    assert watch.count("reboot") == 1
    assert watch.drain() == []


def test_events_from_many_producers_stay_in_the_order_they_were_stamped() -> None:
    """The runner, the probe and libvirt's thread record side by side: the timeline and the
    queue both keep stamp order (on the old code each producer stamped before taking the lock,
    so a later stamp could be appended first)."""
    watch = DomainWatch("x")

    def produce(name: str) -> None:
        for n in range(2000):
            watch.record(name, "tick", str(n))

    threads = [threading.Thread(target=produce, args=(f"p{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stamps = [e.t for e in watch.timeline.snapshot()]
    assert len(stamps) == 8000
    assert stamps == sorted(stamps)
    assert [e.t for e in watch.drain()] == stamps


def test_callbacks_never_raise(hv: Hypervisor) -> None:
    class Broken:
        def name(self) -> str:
            raise RuntimeError("a domain object that fails")

    hub = hv.events
    hub.watch("anything")
    # These are the functions libvirt calls on its thread; a raise there would be lost.
    hub._on_lifecycle(None, Broken(), 8, 0, None)
    hub._on_reboot(None, Broken(), None)
    hub._on_watchdog(None, Broken(), 2, None)
    hub._on_qmp(None, Broken(), "GUEST_PANICKED", 0, 0, "{not json", None)


def test_lifecycle_words() -> None:
    assert _lifecycle_words(8, 0) == ("crashed", "panicked")
    assert _lifecycle_words(8, 1) == ("crashed", "crashloaded")
    assert _lifecycle_words(5, 2) == ("stopped", "crashed")
    assert _lifecycle_words(99, 3) == ("lifecycle-99", "3")


def test_guest_panicked_payload_is_flattened_and_garbage_survives() -> None:
    # Shape per QEMU's QAPI GuestPanicInformationHyperV; values of a 0x50 bugcheck.
    data = flatten_guest_panicked(
        '{"action": "pause", "info": {"type": "hyper-v", "arg1": 80, "arg2": 18446735277616529408,'
        ' "arg3": 0, "arg4": 18446735277652295648, "arg5": 2}}'
    )
    assert data["action"] == "pause" and data["type"] == "hyper-v"
    assert data["arg1"] == "0x50" and data["arg2"] == "0xfffff80000000000"
    assert flatten_guest_panicked("{not json") == {"payload": "{not json"}


# -- machine ------------------------------------------------------------------------------------


def test_machine_exit_undefines_and_removes_the_storage_folder(
    hv: Hypervisor, tmp_path: Path
) -> None:
    name = unique()
    folder = tmp_path / "cell"
    (folder / "nested").mkdir(parents=True)
    (folder / "nested" / "overlay.qcow2").write_bytes(b"x")
    with Machine(hv, domain_xml(name), folder) as machine:
        machine.start()
        assert name in defined_names(hv)
        assert machine.state() == DomainState("running", "booted", 1, 1)
    assert name not in defined_names(hv)
    assert not folder.exists()


@pytest.mark.parametrize("interrupt", [RuntimeError, KeyboardInterrupt])
def test_machine_cleans_up_on_exception_and_ctrl_c(
    hv: Hypervisor, tmp_path: Path, interrupt: type[BaseException]
) -> None:
    name = unique()
    folder = tmp_path / "cell"
    folder.mkdir()
    with pytest.raises(interrupt), Machine(hv, domain_xml(name), folder) as machine:
        machine.start()
        raise interrupt()
    assert name not in defined_names(hv)
    assert not folder.exists()


def test_machine_refuses_to_overwrite_an_existing_domain(hv: Hypervisor, tmp_path: Path) -> None:
    name = unique()
    other = hv.connection.defineXML(domain_xml(name))
    try:
        folder = tmp_path / "cell"
        folder.mkdir()
        with (
            pytest.raises(HypervisorError, match="already exists"),
            Machine(hv, domain_xml(name), folder),
        ):
            pass
        assert name in defined_names(hv)  # the other domain is untouched
        assert not folder.exists()  # our own folder is not left behind
    finally:
        other.undefine()


def test_screenshot_is_png(hv: Hypervisor, tmp_path: Path) -> None:
    with Machine(hv, domain_xml(unique())) as machine:
        machine.start()
        shot = machine.screenshot(tmp_path / "screen.png")
    assert shot.source_mime == "image/png" and shot.mime == "image/png"
    assert shot.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.width > 0 and shot.height > 0


def test_ppm_is_converted_to_png() -> None:
    import zlib

    ppm = b"P6\n# a comment\n2 2\n255\n" + bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
    png = ppm_to_png(ppm)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    idat_at = png.index(b"IDAT")
    length = int.from_bytes(png[idat_at - 4 : idat_at], "big")
    raw = zlib.decompress(png[idat_at + 4 : idat_at + 4 + length])
    assert raw == b"\x00" + ppm[-12:-6] + b"\x00" + ppm[-6:]
    with pytest.raises(ValueError):
        ppm_to_png(b"P3\n1 1\n255\n0 0 0")


# -- reaper -------------------------------------------------------------------------------------


def test_metadata_round_trips_through_libvirt(hv: Hypervisor) -> None:
    meta = CellMetadata("run-1", "demo/bios-1cpu/acme-av+other-edr", Controller("h", 42, 7))
    dom = hv.connection.defineXML(domain_xml(unique(), meta))
    try:
        assert read_cell_metadata(dom) == meta
    finally:
        dom.undefine()
    assert read_cell_metadata(hv.connection.lookupByName("test")) is None
    with pytest.raises(HypervisorError, match="gone"):
        read_cell_metadata(dom)  # undefined above: a vanished domain is an error, not "foreign"


def test_metadata_parser_takes_unprefixed_children_and_rejects_junk() -> None:
    assert parse_cell_metadata(
        '<cell><run>r</run><cell>c</cell><controller host="h" pid="1" start="2"/></cell>'
    ) == CellMetadata("r", "c", Controller("h", 1, 2))
    assert parse_cell_metadata('<cell><run>r</run><controller host="h" pid="x"/></cell>') is None
    assert parse_cell_metadata("<cell>") is None


def test_process_start_time_matches_proc_and_spots_zombies() -> None:
    me = process_start_time(os.getpid())
    assert me is not None and Controller.current().start == me
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while process_start_time(zombie.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not waited for: a zombie, which counts as gone
    assert process_start_time(zombie.pid) is None
    zombie.wait()


def test_reaper_rules(hv: Hypervisor, tmp_path: Path) -> None:
    here = socket.gethostname()
    dead = dead_controller()
    alive = Controller.current()
    cases = {
        "dead": (CellMetadata("run-dead", "c1", dead), True),
        "reused": (CellMetadata("run-reused", "c2", Controller(here, alive.pid, 1)), True),
        "alive": (CellMetadata("run-alive", "c3", alive), False),
        "elsewhere": (CellMetadata("run-else", "c4", Controller("elsewhere", dead.pid, 1)), False),
    }
    names = {key: unique() for key in cases}
    foreign = unique("labdev-foreign")
    for key, (meta, _) in cases.items():
        hv.connection.defineXML(domain_xml(names[key], meta))
    running = hv.connection.lookupByName(names["dead"])
    running.create()
    hv.connection.defineXML(domain_xml(foreign))
    malformed = unique()
    half = f'<compatlab:cell xmlns:compatlab="{NS_URI}"><compatlab:run>r</compatlab:run>'
    hv.connection.defineXML(
        domain_xml(malformed).replace("</os>", f"</os><metadata>{half}</compatlab:cell></metadata>")
    )
    # Folders: the dead run's (owner.json dead), the live run's, one with no owner.json.
    write_run_owner(run_folder(tmp_path, "run-dead"), dead)
    write_run_owner(run_folder(tmp_path, "run-alive"), alive)
    write_run_owner(run_folder(tmp_path, "run-other-dead"), dead)
    (run_folder(tmp_path, "run-unowned") / "cell").mkdir(parents=True)
    (run_folder(tmp_path, "run-reused") / "cell").mkdir(parents=True)
    try:
        report = reap(hv, tmp_path)
    finally:
        for name in [*names.values(), foreign, malformed]:
            if (dom := hv.lookup(name)) is not None:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
    removed = {d.name: d for d in report.removed_domains}
    kept = {d.name: d.reason for d in report.kept_domains}
    for key, (_, orphaned) in cases.items():
        assert (names[key] in removed) is orphaned, key
        assert (names[key] in kept) is not orphaned, key
    assert removed[names["dead"]].was_running
    assert "is gone" in removed[names["dead"]].reason
    assert "reused" in removed[names["reused"]].reason
    assert "alive" in kept[names["alive"]]
    assert "another host" in kept[names["elsewhere"]]
    assert kept[foreign] == "no compatlab metadata"
    assert kept[malformed] == "compatlab metadata does not parse"  # not sure: hands off
    assert kept["test"] == "no compatlab metadata"  # the driver's own domain
    cells = tmp_path / "cells"
    assert sorted(p.name for p in report.removed_folders) == [
        "run-dead",
        "run-other-dead",
        "run-reused",  # no owner.json, but its domain proved the run dead
    ]
    assert sorted(p.name for p in cells.iterdir()) == ["run-alive", "run-unowned"]
    assert report.errors == []
    json.dumps(report.as_json())


def test_owner_file_round_trip_and_run_ids(tmp_path: Path) -> None:
    me = Controller.current()
    folder = run_folder(tmp_path, "20250611-0212-7f3a")
    written = write_run_owner(folder)
    assert json.loads(written.read_text()) == me.as_json()
    assert read_run_owner(folder) == me
    assert read_run_owner(tmp_path) is None
    for bad in ("../etc", "", ".hidden", "a/b"):
        with pytest.raises(StorageError):
            run_folder(tmp_path, bad)


def test_gc_opens_and_closes_its_own_connection(tmp_path: Path) -> None:
    report = gc(URI, storage_root=tmp_path)
    assert report.removed_domains == [] and report.errors == []
    assert "removed 0 domain(s)" in report.summary()
