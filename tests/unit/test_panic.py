"""Crash-code parsers on recorded lines, and: every libvirt error leaves the lab as a LabError.

No Windows guest runs here, so the hyper-v fixtures are recorded elsewhere; each says where.
The error-mapping tests use libvirt's in-process ``test:///default`` driver, not mocks.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from compatlab.bugcheck import (
    BUGCHECK_NAMES,
    bugcheck_name,
    find_hyperv_panic,
    parse_guest_panicked,
    parse_hyperv_log_line,
    parse_linux_panic,
)
from compatlab.errors import HypervisorError, LabError
from compatlab.lab.connection import Hypervisor, ReconnectPolicy
from compatlab.lab.machine import Machine
from compatlab.model import Bugcheck

# -- recorded fixtures ----------------------------------------------------------------------------

# RECORDED: a Windows guest's bugcheck as libvirt logged it, quoted in "i386/kvm: Prefill
# default value for MSR 0x3a" on qemu-devel, 2025-06-09 (Virtuozzo, CPU hotplug crash).
RECORDED_HYPERV_LINE = (
    "panic hyper-v: arg1='0x3e', arg2='0x46d359bbdff', arg3='0x56d359bbdff', arg4='0x0', arg5='0x0'"
)

# RECORDED: the line format libvirt's qemuProcessGuestPanic writes to <name>.log (timestamp
# prefix), as captured in KubeVirt's panic-info fixtures; values of a 0x50 stop.
RECORDED_DOMAIN_LOG = """\
2024-09-30 16:30:48.000+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.0
-msg timestamp=on
char device redirected to /dev/pts/3 (label charserial0)
2024-09-30 16:30:49.506+0000: panic hyper-v: arg1='0x50', arg2='0xffffc48a0f7d2000', \
arg3='0x0', arg4='0xfffff8061b2a1234', arg5='0x2'
2024-09-30 16:30:51.100+0000: panic hyper-v: arg1='0xd1', arg2='0x0', arg3='0x2', \
arg4='0x0', arg5='0xfffff8061b2a5678'
"""

# NOT RECORDED (no hyper-v guest here): the QMP GUEST_PANICKED payload in the shape of QEMU's
# QAPI schema (GuestPanicInformationHyperV: arg1..arg5 as uint64), carrying the same 0x50 stop.
QMP_HYPERV_PAYLOAD = (
    '{"action": "pause", "info": {"type": "hyper-v", "arg1": 80, '
    '"arg2": 18446678695977230336, "arg3": 0, "arg4": 18446735303842075188, "arg5": 2}}'
)

# RECORDED on this machine: what QEMU 7.2 sends for a Linux guest's pvpanic (no info).
RECORDED_QMP_LINUX_PAYLOAD = '{"action":"pause"}'

# RECORDED on this machine: Debian 6.1 kernel under QEMU 7.2 (TCG), pvpanic, `echo c >
# /proc/sysrq-trigger`, serial console to a file (excerpt).
RECORDED_SYSRQ_SERIAL = """\
[    1.533660] shpchp 0000:01:00.0: Slot initialization failed
labguest: init up
labguest: panicking
[    3.724089] sysrq: Trigger a crash
[    3.724559] Kernel panic - not syncing: sysrq triggered crash
[    3.724813] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
[    3.726011] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009), BIOS 1.16.2-debian-1.16.2-1
[    3.727804] Call Trace:
[    3.728943]  <TASK>
[    3.729779]  dump_stack_lvl+0x44/0x5c
[    3.730553]  panic+0x118/0x2f4
[    3.731618]  sysrq_handle_crash+0x16/0x20
"""

# RECORDED: an x86 Oops under QEMU (LKML, "locktorture: call percpu_free_rwsem()", 2020-09-17,
# excerpt) followed by the panic_on_oops line as the kernel prints it.
RECORDED_OOPS_SERIAL = """\
[   41.012345] BUG: unable to handle page fault for address: ffffffffc00eb920
[   41.012360] #PF: supervisor read access in kernel mode
[   41.012371] #PF: error_code(0x0000) - not-present page
[   41.012380] PGD 6500a067 P4D 6500a067 PUD 6500c067 PMD 13a36c067 PTE 800000013691c163
[   41.012391] Oops: 0000 [#1] PREEMPT SMP
[   41.012400] CPU: 1 PID: 0 Comm: swapper/1 Not tainted 5.9.0-rc5+ #4
[   41.012410] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)
[   41.012420] RIP: 0010:rcu_cblist_dequeue+0x12/0x30
[   41.013000] ---[ end trace 0000000000000000 ]---
[   41.013100] Kernel panic - not syncing: Fatal exception in interrupt
[   41.013200] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---
"""

# RECORDED: printk with caller ids ("[ T5301]"), powerpc imc_mem_get crash report on LKML.
RECORDED_CALLER_ID_SERIAL = """\
[ 1139.416636][ T5301] ---[ end trace c44d1fb4ace04784 ]---
[ 1139.520686][ T5301]
[ 1140.520820][ T5301] Kernel panic - not syncing: Fatal exception
"""


# -- Windows ---------------------------------------------------------------------------------------


def test_recorded_hyperv_line() -> None:
    assert parse_hyperv_log_line(RECORDED_HYPERV_LINE) == Bugcheck(
        code="0x3E",
        name="MULTIPROCESSOR_CONFIGURATION_NOT_SUPPORTED",
        params=("0x46d359bbdff", "0x56d359bbdff", "0x0", "0x0"),
    )


def test_first_hyperv_panic_in_a_domain_log() -> None:
    found = find_hyperv_panic(RECORDED_DOMAIN_LOG.splitlines())
    assert found == Bugcheck(
        code="0x50",
        name="PAGE_FAULT_IN_NONPAGED_AREA",
        params=("0xffffc48a0f7d2000", "0x0", "0xfffff8061b2a1234", "0x2"),
    )
    assert find_hyperv_panic(["2024-09-30 12:00:00.000+0000: shutting down"]) is None


def test_partial_and_garbled_hyperv_lines() -> None:
    partial = parse_hyperv_log_line("panic hyper-v: arg1='0xd1'")
    assert partial == Bugcheck("0xD1", "DRIVER_IRQL_NOT_LESS_OR_EQUAL", ())
    assert parse_hyperv_log_line("panic hyper-v: arg2='0x1'") is None  # no stop code
    assert parse_hyperv_log_line("panic s390: core='0'") is None
    assert parse_hyperv_log_line("") is None


def test_qmp_hyperv_payload_gives_the_same_bugcheck_as_the_log() -> None:
    from_qmp = parse_guest_panicked(QMP_HYPERV_PAYLOAD)
    assert from_qmp is not None
    assert from_qmp == find_hyperv_panic(RECORDED_DOMAIN_LOG.splitlines())
    decoded = {"action": "pause", "info": {"type": "hyper-v", "arg1": "0x7e"}}
    assert parse_guest_panicked(decoded) == Bugcheck(
        "0x7E", "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED", ()
    )


@pytest.mark.parametrize(
    "payload", [RECORDED_QMP_LINUX_PAYLOAD, "not json", "[]", '{"info": {"type": "s390"}}', ""]
)
def test_qmp_payloads_without_a_code(payload: str) -> None:
    assert parse_guest_panicked(payload) is None


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0x50, "PAGE_FAULT_IN_NONPAGED_AREA"),
        (0x7E, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED"),
        (0xD1, "DRIVER_IRQL_NOT_LESS_OR_EQUAL"),
        (0x3B, "SYSTEM_SERVICE_EXCEPTION"),
        (0x1E, "KMODE_EXCEPTION_NOT_HANDLED"),
        (0x7F, "UNEXPECTED_KERNEL_MODE_TRAP"),
        (0x9F, "DRIVER_POWER_STATE_FAILURE"),
        (0xEF, "CRITICAL_PROCESS_DIED"),
        (0x133, "DPC_WATCHDOG_VIOLATION"),
        (0x139, "KERNEL_SECURITY_CHECK_FAILURE"),
        (0x19, "BAD_POOL_HEADER"),
        (0xC2, "BAD_POOL_CALLER"),
        (0x0A, "IRQL_NOT_LESS_OR_EQUAL"),
        ("0x1000007e", "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"),
        (0x1234, "UNKNOWN_0x1234"),
    ],
)
def test_bugcheck_names(code: int | str, name: str) -> None:
    assert bugcheck_name(code) == name


def test_the_name_table_is_big_enough_and_upper_snake_case() -> None:
    assert len(BUGCHECK_NAMES) >= 24
    assert all(name.isupper() and " " not in name for name in BUGCHECK_NAMES.values())


# -- Linux -----------------------------------------------------------------------------------------


def test_recorded_sysrq_panic() -> None:
    assert parse_linux_panic(RECORDED_SYSRQ_SERIAL) == Bugcheck(
        code="panic", name="Kernel panic - not syncing: sysrq triggered crash", params=()
    )


def test_recorded_oops_then_panic() -> None:
    assert parse_linux_panic(RECORDED_OOPS_SERIAL.splitlines()) == Bugcheck(
        code="panic",
        name="Kernel panic - not syncing: Fatal exception in interrupt",
        params=(
            "BUG: unable to handle page fault for address: ffffffffc00eb920",
            "Oops: 0000 [#1] PREEMPT SMP",
        ),
    )


def test_caller_id_prefix_and_no_panic() -> None:
    found = parse_linux_panic(RECORDED_CALLER_ID_SERIAL)
    assert found is not None and found.name == "Kernel panic - not syncing: Fatal exception"
    assert parse_linux_panic("labguest: init up\n[    3.1] all is well\n") is None


def test_an_earlier_boots_oops_is_not_blamed() -> None:
    log = (
        "[    5.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n"
        "[    0.0] Linux version 6.1.0-56-amd64\n"
        "[    3.7] Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    )
    found = parse_linux_panic(log)
    assert found is not None and found.params == ()


# -- every libvirt error is mapped -----------------------------------------------------------------


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with Hypervisor("test:///default") as hypervisor:
        yield hypervisor


DEAD_POLICY = ReconnectPolicy(attempts=2, max_seconds=2, first_wait=0.01, max_wait=0.01)


def dead_for_good(tmp_path: Path) -> tuple[Hypervisor, Path]:
    """An open Hypervisor on a file-backed test driver, and the file that keeps it alive."""
    node = tmp_path / "node.xml"
    node.write_text("<node><cpu><mhz>1000</mhz></cpu></node>")
    hv = Hypervisor(f"test://{node}", reconnect=DEAD_POLICY)
    hv.open()
    return hv, node


@pytest.fixture
def orphaned_machine(tmp_path: Path) -> Iterator[Machine]:
    """A Machine whose domain was undefined behind its back and whose hypervisor went away for
    good: every libvirt call it makes now fails, in libvirt."""
    hv, node = dead_for_good(tmp_path)
    name = f"compatlab-unit-{uuid.uuid4().hex[:8]}"
    xml = (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    machine = Machine(hv, xml, tmp_path / "cell")
    machine.define()
    hv.connection.lookupByName(name).undefine()
    hv.connection.close()  # the daemon "went away"
    node.unlink()  # ... and does not come back
    yield machine
    machine.close()
    hv.close()


def _save_image(folder: Path) -> Path:
    """A save image as libvirt 9.0 lays one out (header, domain XML, no memory to speak of)."""
    import struct

    body = b"<domain type='test'><name>saved</name><uuid>u</uuid></domain>\0"
    words = [2, len(body) + 64, 1, 0, 0] + [0] * 14
    path = folder / "memory.save"
    path.write_bytes(struct.pack("=16s19I", b"LibvirtQemudSave", *words) + body + b"\0" * 64)
    return path


# Each public Machine method with the arguments to call it with.
MACHINE_CALLS: dict[str, Callable[[Machine, Path], Any]] = {
    "start": lambda m, _: m.start(),
    "save": lambda m, tmp: m.save(tmp / "memory.save"),
    "restore_xml": lambda m, tmp: m.restore_xml(_save_image(tmp)),
    "restore": lambda m, tmp: m.restore(_save_image(tmp), "<domain/>"),
    "power_cycle": lambda m, _: m.power_cycle(),
    "restart_after_crash": lambda m, _: m.restart_after_crash(),
    "reset": lambda m, _: m.reset(),
    "reboot": lambda m, _: m.reboot(),
    "shutdown": lambda m, _: m.shutdown(),
    "destroy": lambda m, _: m.destroy(),
    "suspend": lambda m, _: m.suspend(),
    "resume": lambda m, _: m.resume(),
    "state": lambda m, _: m.state(),
    "screenshot": lambda m, tmp: m.screenshot(tmp / "s.png"),
    "insert_cdrom": lambda m, tmp: m.insert_cdrom(tmp / "payload.iso"),
    "eject_cdrom": lambda m, _: m.eject_cdrom(),
    "cdrom_source": lambda m, _: m.cdrom_source(),
}
# Public methods that make no libvirt call of their own (or only tolerate "gone").
MACHINE_WITHOUT_LIBVIRT_CALLS = {"wait", "domain_log", "close", "define"}


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_every_public_machine_method_is_in_the_mapping_table() -> None:
    assert _public_methods(Machine) == set(MACHINE_CALLS) | MACHINE_WITHOUT_LIBVIRT_CALLS


@pytest.mark.parametrize("method", sorted(MACHINE_CALLS))
def test_machine_maps_libvirt_errors(
    orphaned_machine: Machine, tmp_path: Path, method: str
) -> None:
    with pytest.raises(LabError) as info:
        MACHINE_CALLS[method](orphaned_machine, tmp_path)
    assert isinstance(info.value, HypervisorError)
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    assert info.value.domain == orphaned_machine.name
    assert info.value.host == orphaned_machine.host


def test_define_maps_libvirt_errors(hv: Hypervisor) -> None:
    # Well-formed XML libvirt itself rejects (no <memory>).
    xml = "<domain type='test'><name>compatlab-unit-nomem</name><os><type>hvm</type></os></domain>"
    machine = Machine(hv, xml)
    with pytest.raises(HypervisorError) as info:
        machine.define()
    assert isinstance(info.value.__cause__, libvirt.libvirtError)
    machine.close()


# Each public Hypervisor method with a call; run on a connection that died for good.
HYPERVISOR_CALLS: dict[str, Callable[[Hypervisor], Any]] = {
    "open": lambda h: h.open(),
    "lookup": lambda h: h.lookup("anything"),
    "domains": lambda h: h.domains(),
    "hostname": lambda h: h.hostname(),
    "accelerator": lambda h: h.accelerator(),
}
HYPERVISOR_WITHOUT_LIBVIRT_CALLS = {"close", "add_listener", "remove_listener", "wait_reconnected"}
# Public methods that answer "no" rather than raise (tested below).
HYPERVISOR_ANSWERING = {"alive"}


def test_alive_says_no_for_a_daemon_that_went_away_and_does_not_reconnect(
    tmp_path: Path,
) -> None:
    hv, node = dead_for_good(tmp_path)
    assert hv.alive()
    before = hv.reconnects
    hv.connection.close()  # the daemon "went away"
    assert not hv.alive()
    assert hv.reconnects == before  # asking did not reconnect (a restore's condemn relies on it)
    node.unlink()
    hv.close()


def test_every_public_hypervisor_method_is_in_the_mapping_table() -> None:
    assert (
        _public_methods(Hypervisor)
        == set(HYPERVISOR_CALLS) | HYPERVISOR_WITHOUT_LIBVIRT_CALLS | HYPERVISOR_ANSWERING
    )


@pytest.mark.parametrize("method", sorted(HYPERVISOR_CALLS))
def test_hypervisor_maps_libvirt_errors(tmp_path: Path, method: str) -> None:
    # A test driver backed by a file: once the file is gone, reconnecting fails in libvirt.
    hv, node = dead_for_good(tmp_path)
    hv.connection.close()  # the daemon "went away"
    node.unlink()  # ... and does not come back
    try:
        with pytest.raises(LabError) as info:
            HYPERVISOR_CALLS[method](hv)
        assert isinstance(info.value, HypervisorError)
        assert isinstance(info.value.__cause__, libvirt.libvirtError)
        assert info.value.host == hv.host
    finally:
        hv.close()
