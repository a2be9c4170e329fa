"""The simulated lab's yardsticks (benchmarks/sim_lab.py): the makespan's lower bound, the
reference pull scheduler, and the checks run on the recorded spans. Pure, milliseconds; the
benchmark itself is run by hand, never here."""

from __future__ import annotations

import random

import pytest
from benchmarks.sim_lab import (
    PROFILES,
    Span,
    lower_bound,
    make_cells,
    make_hosts,
    misplaced,
    overcommits,
    pull_schedule,
)

from compatlab.capacity import QEMU_OVERHEAD_MIB, Capacity, Needs

SMALL = Needs(1, 1024)
BIG = Needs(2, 1024)
TPM = Needs(1, 1024, frozenset({"tpm"}))


def test_the_bound_is_the_scarcest_resource_or_label_or_longest_cell() -> None:
    hosts = [Capacity(4, 8192), Capacity(2, 8192, frozenset({"tpm"}))]
    # 6 vCPUs in all: 12 vCPU-seconds of plain cells alone would be 2 s.
    assert lower_bound([(SMALL, 1.0)] * 12, hosts)["bound"] == pytest.approx(2.0)
    # One 10 s cell: nothing beats it, however wide the lab.
    assert lower_bound([(SMALL, 10.0), (SMALL, 1.0)], hosts)["binding"] == "longest_cell"
    # tpm cells only fit the 2-vCPU host: 4 x 3 s on 2 vCPUs is 6 s, though 6 vCPUs exist.
    bound = lower_bound([(TPM, 3.0)] * 4, hosts)
    assert bound["binding"] == "label tpm vcpus"
    assert bound["bound"] == pytest.approx(6.0)


def test_a_label_no_host_offers_makes_the_bound_infinite() -> None:
    assert lower_bound([(TPM, 1.0)], [Capacity(4, 8192)])["bound"] == float("inf")


def test_pull_schedule_packs_a_lab_exactly_when_it_can() -> None:
    # Four 1-vCPU cells of 10 s on one 2-vCPU host: two waves, 20 s, the bound.
    assert pull_schedule([(SMALL, 10.0)] * 4, [Capacity(2, 8192)]) == pytest.approx(20.0)
    # Memory, not vCPUs, limits this host to one cell at a time.
    assert pull_schedule([(SMALL, 10.0)] * 3, [Capacity(8, 1500)]) == pytest.approx(30.0)


def test_pull_schedule_backfills_past_a_cell_that_does_not_fit_yet() -> None:
    # 2-vCPU host: a 1-vCPU 10 s cell runs, the 2-vCPU cell must wait; the next small cell
    # fills the free vCPU meanwhile instead of waiting behind it.
    work = [(SMALL, 10.0), (BIG, 10.0), (SMALL, 10.0)]
    assert pull_schedule(work, [Capacity(2, 8192)]) == pytest.approx(20.0)


def test_pull_schedule_never_beats_the_bound_and_refuses_a_cell_that_fits_nowhere() -> None:
    rng = random.Random(3)
    for _ in range(30):
        hosts = [
            Capacity(rng.choice((2, 4, 8)), rng.choice((4096, 8192)), frozenset({"tpm"}))
            for _ in range(rng.randint(1, 4))
        ]
        work = [(rng.choice((SMALL, BIG, TPM)), rng.uniform(1, 20)) for _ in range(40)]
        assert pull_schedule(work, hosts) >= lower_bound(work, hosts)["bound"] - 1e-9
    with pytest.raises(ValueError, match="fit no host"):
        pull_schedule([(TPM, 1.0)], [Capacity(4, 8192)])


def span(worker: str, needs: Needs, start: float, stop: float) -> Span:
    return Span(0, worker, needs, start, stop, start, stop)


def test_overcommit_is_seen_and_back_to_back_cells_are_not_one() -> None:
    hosts = {"a": Capacity(2, 4096)}
    back_to_back = [span("a", BIG, 0, 10), span("a", BIG, 10, 20)]
    assert overcommits(back_to_back, hosts)["overcommitted_starts"] == 0
    assert overcommits(back_to_back, hosts)["peak_vcpu_share"] == 1.0
    overlapping = [span("a", BIG, 0, 10), span("a", SMALL, 9, 12)]
    assert overcommits(overlapping, hosts)["overcommitted_starts"] == 1
    too_much_memory = [span("a", Needs(1, 3000), 0, 10), span("a", Needs(1, 3000), 5, 6)]
    assert overcommits(too_much_memory, hosts)["overcommitted_starts"] == 1


def test_a_cell_on_a_host_without_its_label_is_counted() -> None:
    hosts = {"plain": Capacity(4, 8192), "tpm": Capacity(4, 8192, frozenset({"tpm"}))}
    assert misplaced([span("tpm", TPM, 0, 1), span("plain", SMALL, 0, 1)], hosts) == 0
    assert misplaced([span("plain", TPM, 0, 1)], hosts) == 1


def test_the_simulated_matrix_asks_what_its_profiles_need() -> None:
    durations = [89.0, 252.0]
    cells = make_cells(random.Random(1), 400, durations)
    assert len({c.cell.id for c in cells}) == 400
    profiles = {p.name: p for p in PROFILES}
    for sim in cells:
        profile = profiles[sim.cell.hardware.name]
        assert sim.needs.vcpus == profile.vcpus
        assert sim.needs.memory_mib == profile.memory_gib * 1024 + QEMU_OVERHEAD_MIB
        assert ("tpm" in sim.needs.labels) == profile.tpm
        assert ("kvm" in sim.needs.labels) == profile.kvm
        assert sim.seconds in durations
    assert {c.cell.hardware.name for c in cells} == set(profiles)


def test_every_profile_fits_some_simulated_host() -> None:
    hosts = [h.capacity for h in make_hosts(random.Random(10), 50)]
    for sim in make_cells(random.Random(2), 200, [100.0]):
        assert any(h.why_not(sim.needs) is None for h in hosts), sim.needs
