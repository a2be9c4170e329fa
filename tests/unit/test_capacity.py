"""Capacity: what a cell needs and what a host gives (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compatlab.capacity import (
    HOST_RESERVE_MIB,
    IN_SERVICE,
    QEMU_OVERHEAD_MIB,
    Capacity,
    Needs,
    machine_capacity,
)


def test_a_vm_fits_only_where_every_need_is_met() -> None:
    host = Capacity(vcpus=2, memory_mib=4096, labels=frozenset({"tpm"}))
    assert host.fits(Needs(2, 4096, frozenset({"tpm"})))
    assert not host.fits(Needs(3, 1024))
    assert not host.fits(Needs(1, 4097))
    assert not host.fits(Needs(1, 1024, frozenset({"kvm"})))
    assert host.why_not(Needs(1, 1024)) is None
    said = host.why_not(Needs(4, 8192, frozenset({"kvm", "tpm"})))
    assert said is not None
    assert "4 vCPUs (the host gives 2)" in said
    assert "8192 MiB (the host gives 4096 MiB)" in said
    assert "label(s) kvm (the host has ['tpm'])" in said


def test_resources_name_labels_so_an_engine_can_place_by_them() -> None:
    needs = Needs(2, 512, frozenset({"tpm"}))
    assert needs.resources() == {"vcpus": 2, "memory": 512, "label-tpm": 1, IN_SERVICE: 1}
    host = Capacity(3, 2048, frozenset({"tpm", "kvm"}))
    assert host.resources() == {
        "vcpus": 3,
        "memory": 2048,
        "label-kvm": 3,
        "label-tpm": 3,
        IN_SERVICE: 3,
    }


def test_the_machines_capacity_is_its_cpus_and_available_memory_less_a_reserve(
    tmp_path: Path,
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 24000000 kB\nMemAvailable: 8388608 kB\n")
    host = machine_capacity(meminfo=meminfo, cpus=2)
    assert host == Capacity(2, 8192 - HOST_RESERVE_MIB, frozenset())
    assert QEMU_OVERHEAD_MIB > 0


def test_a_capacity_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Capacity(0, 100)


@pytest.mark.parametrize("swtpm", ["/usr/bin/swtpm", None])
def test_a_capacity_from_the_lab_file_keeps_what_the_machine_can_do(
    monkeypatch: pytest.MonkeyPatch, swtpm: str | None
) -> None:
    """``capacity:`` in configs/lab.yaml sizes the lab; it does not take the machine's swtpm
    away. It used to: with a capacity configured, every TPM cell was infra_error ("needs
    label(s) tpm (the host has none)") on a machine that runs them without one."""
    from compatlab.engine.queue import default_capacity

    monkeypatch.setattr("shutil.which", lambda name: swtpm if name == "swtpm" else None)
    offered = frozenset({"tpm"}) if swtpm else frozenset()
    assert default_capacity(Capacity(2, 800)) == Capacity(2, 800, offered)
    assert default_capacity(Capacity(4, 1600), share=2) == Capacity(2, 800, offered)
    assert default_capacity(None).labels == offered
