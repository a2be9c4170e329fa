"""The simulated lab's second yardstick (benchmarks/sim_lab.py): the engine's policy under Dask's
rule for placing a resource-restricted task, with no overhead. Pure, milliseconds."""

from __future__ import annotations

import random

import pytest
from benchmarks.sim_lab import dask_rule_schedule, lower_bound, pull_schedule

from compatlab.capacity import Capacity, Needs

SMALL = Needs(1, 1024)
BIG = Needs(2, 1024)
TPM = Needs(1, 1024, frozenset({"tpm"}))


def test_one_host_runs_its_cells_in_priority_order_and_packs_when_it_can() -> None:
    # Four 1-vCPU cells of 10 s on one 2-vCPU host: two waves, 20 s, the bound.
    work = [(SMALL, 10.0)] * 4
    assert dask_rule_schedule(work, [Capacity(2, 8192)], [None] * 4, window=None) == 20.0
    # The longest expected first: the 30 s cell starts at once, beside the others in turn.
    work = [(SMALL, 10.0), (SMALL, 10.0), (SMALL, 30.0)]
    longest = dask_rule_schedule(work, [Capacity(2, 8192)], [10, 10, 30], window=None)
    in_order = dask_rule_schedule(work, [Capacity(2, 8192)], [None] * 3, window=None)
    assert (longest, in_order) == (30.0, 40.0)


def test_a_queued_cell_that_does_not_fit_blocks_the_ones_behind_it() -> None:
    # 2 vCPUs: a 1-vCPU 10 s cell runs; the 2-vCPU cell (higher priority) waits for the whole
    # host, and the small one behind it waits too -- no backfilling, unlike the pull scheduler.
    work = [(SMALL, 10.0), (BIG, 10.0), (SMALL, 10.0)]
    hosts = [Capacity(2, 8192)]
    assert dask_rule_schedule(work, hosts, [30, 20, 10], window=None) == 30.0
    assert pull_schedule(work, hosts) == 20.0


def test_the_placement_looks_at_tasks_per_thread_not_at_room() -> None:
    # Host 0 has 8 threads but memory for one cell; host 1 has 2 threads and room for two. The
    # third cell goes to host 0 (1 task on 8 threads beats 1 on 2) and waits there for memory
    # while host 1 has room for it.
    hosts = [Capacity(8, 1024), Capacity(2, 8192)]
    work = [(SMALL, 10.0)] * 3
    assert dask_rule_schedule(work, hosts, [None] * 3, window=None) == 20.0
    assert pull_schedule(work, hosts) == 10.0


def test_the_window_bounds_what_is_handed_over_at_once() -> None:
    # One cell fits on each host: a window of half that hands over one cell at a time.
    hosts = [Capacity(8, 1024), Capacity(1, 8192)]
    work = [(SMALL, 10.0)] * 3
    assert dask_rule_schedule(work, hosts, [None] * 3, window=0.5) == 30.0
    assert dask_rule_schedule(work, hosts, [None] * 3, window=None) == 20.0


def test_it_never_beats_the_bound_and_refuses_a_cell_that_fits_nowhere() -> None:
    rng = random.Random(5)
    for _ in range(30):
        hosts = [
            Capacity(rng.choice((2, 4, 8)), rng.choice((4096, 8192)), frozenset({"tpm"}))
            for _ in range(rng.randint(1, 4))
        ]
        work = [(rng.choice((SMALL, BIG, TPM)), rng.uniform(1, 20)) for _ in range(40)]
        expected = [d * rng.uniform(0.8, 1.2) for _, d in work]
        for window in (None, 1.0, 1.25):
            made = dask_rule_schedule(work, hosts, expected, window=window)
            assert made >= lower_bound(work, hosts)["bound"] - 1e-9
    with pytest.raises(ValueError, match="fit no host"):
        dask_rule_schedule([(TPM, 1.0)], [Capacity(4, 8192)], [None], window=None)
