"""Cells that start from a cached pre-candidate layer (issue 12), through the real runner on
libvirt's test driver with scripted guests (tests/support/fakeguest.py).

What must hold: a layer is built once per configuration by a VM of its own and later cells skip
the first boot, the products' installs and the baseline reboot; a configuration that fails while
its layer is built gets the verdict a cell without the cache gets, and nothing is published; a
candidate's failure from a cached start reads as from a fresh one; a cache that cannot be used
is never the cell's failure.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from compatlab.cache import LayerStore
from compatlab.lab.connection import Hypervisor
from compatlab.matrix import Cell
from compatlab.model import CellResult
from compatlab.signoff.decide import boot_ratio, judge
from compatlab.signoff.policy import Place, Requirement, Ring
from tests.unit.test_run_cell import (  # noqa: F401  (hv: a fixture)
    EXIT_1,
    INSTALL,
    PRODUCT,
    Guests,
    boots,
    hv,
    run,
)
from tests.unit.test_run_cell import cell as plain_cell


def cell(tmp_path: Path, products: str = "[[]]", extra: str = "") -> Cell:
    """A cell whose golden image is a file (the layer's key is made of its digest)."""
    made = plain_cell(tmp_path, products, extra)
    golden = tmp_path / "golden.qcow2"
    golden.write_bytes(b"QFI\xfb a stand-in golden image")
    return dataclasses.replace(made, image=dataclasses.replace(made.image, disk=golden))


def outcome(result: CellResult) -> tuple[str, str | None, str | None, list[str]]:
    """What a cached start must not change: verdict, attribution, bugcheck, the reruns'."""
    code = result.bugcheck.code if result.bugcheck is not None else None
    reruns = [r["verdict"] for r in result.reruns]
    attribution = result.attribution.value if result.attribution is not None else None
    return result.verdict.value, attribution, code, reruns


def both(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
    scripts: list[dict[str, Any]],
    products: str = "[[av]]",
) -> tuple[CellResult, CellResult, Guests, LayerStore]:
    """The same cell without the cache and from a cold cache (its builder scripted like the
    fresh VM's provision, products and baseline boot)."""
    # Copies: a guest takes its boots off its script's list as it boots.
    fresh_guests = Guests(*copy.deepcopy(scripts))
    fresh = run(hv, tmp_path / "fresh", cell(tmp_path / "fresh", products), fresh_guests)
    store = LayerStore(tmp_path / "cache-root")
    guests = Guests(*copy.deepcopy(scripts))
    cached = run(hv, tmp_path / "cached", cell(tmp_path / "cached", products), guests, layers=store)
    return fresh, cached, guests, store


def test_a_layer_is_built_once_and_later_cells_skip_products_and_the_baseline_reboot(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = LayerStore(tmp_path / "cache-root")
    the_cell = cell(tmp_path, "[[av, edr]]")
    first_guests, later_guests = Guests(), Guests()
    first = run(hv, tmp_path / "one", the_cell, first_guests, layers=store)
    later = run(hv, tmp_path / "two", the_cell, later_guests, layers=store, run_id="unit-run-2")
    assert outcome(first) == outcome(later) == ("pass", None, None, [])
    builder, cell_vm = first_guests.made
    assert sum(PRODUCT in c for c in builder.ran) == 2  # both products, in the builder
    assert "<shutdown>" in builder.ran  # captured after a clean power-off
    assert not any(PRODUCT in c for c in cell_vm.ran)
    # The later cell found the layer: one VM, no product install, no builder.
    (only,) = later_guests.made
    assert not any(PRODUCT in c for c in only.ran)
    assert [e.manifest.label for e in store.entries()] == ["lin/bios-1cpu/av+edr"]
    # Its first boot is its baseline boot: the boots are first, the candidate's two, rollback.
    assert len(later.boots) == len(first.boots) == 4
    for result in (first, later):
        baseline = next(p for p in result.phases if p["phase"] == "baseline")
        assert baseline["outcome"] == "pass"
    notes = [e.detail for e in later.events if e.kind == "cached_layer"]
    assert any(n.startswith("from cached layer ") for n in notes), notes
    assert first.attempts == later.attempts == 1  # a builder is part of its attempt


def test_the_first_boot_from_a_layer_is_the_cells_baseline_boot(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The sign-off's boot-time check and the report's guest cost compare the candidate's boots
    with the boot of phase "baseline". From a layer that boot is the VM's first: recorded as
    the provision's, every passing cell of a cached run was "not tested" for boot time, and
    make demo's sign-off closed every ring."""
    store = LayerStore(tmp_path / "cache-root")
    result = run(hv, tmp_path / "one", cell(tmp_path, "[[av]]"), Guests(), layers=store)
    assert result.verdict.value == "pass", result.reason
    assert [b.phase for b in result.boots] == ["baseline", "boots", "boots", "rollback"]
    assert boot_ratio(result) is not None
    here = Place(tmp_path / "rollout.yaml", 1, 1)
    broad = Ring(
        name="broad",
        description="",
        require=Requirement(cells=None, fleet_share=None, place=here),
        block=frozenset(),
        boot_regression=1000.0,
        repeats=1,
        place=here,
    )
    assert judge(result, broad).status == "pass", judge(result, broad).why


def test_a_candidate_crash_from_a_cached_start_reads_as_from_a_fresh_one(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    # The July 2024 shape: the installer's call crashes the kernel, then every boot does.
    crashing = {"commands": {INSTALL: "crash"}, "boots": boots("ok", "ok", "crash", "crash")}
    fresh = run(hv, tmp_path / "fresh", cell(tmp_path / "fresh"), Guests(crashing, {}))
    store = LayerStore(tmp_path / "cache-root")
    # From a cache: the builder boots twice ("ok", "ok"); the cell's VM boots once from the
    # layer, then its installer crashes the guest and every boot after.
    cached = run(
        hv,
        tmp_path / "cached",
        cell(tmp_path / "cached"),
        Guests({}, {"commands": {INSTALL: "crash"}, "boots": boots("ok", "crash", "crash")}, {}),
        layers=store,
    )
    assert outcome(cached) == outcome(fresh) == ("boot_loop", "candidate", "panic", ["pass"])
    assert cached.attempts == fresh.attempts == 1  # never retried


def test_a_product_that_fails_to_install_while_the_layer_is_built_is_the_configurations(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    failing = {"commands": {PRODUCT: EXIT_1}}
    fresh, cached, guests, store = both(hv, tmp_path, [failing])
    assert outcome(cached) == outcome(fresh)
    assert fresh.attribution.value == "baseline", fresh.reason
    assert len(guests.made) == 1  # the builder; no VM with the candidate
    assert store.entries() == []  # nothing published


def test_a_crash_at_the_builders_baseline_boot_is_the_configurations_and_publishes_nothing(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    crashing = {"boots": boots("ok", "crash", "crash", "crash", "crash")}
    fresh, cached, _, store = both(hv, tmp_path, [crashing])
    assert outcome(cached) == outcome(fresh)
    assert (fresh.verdict.value, fresh.attribution.value) == ("boot_loop", "baseline")
    assert store.entries() == []
    assert not list((tmp_path / "cache-root" / "cache" / ".tmp").iterdir())


def test_a_cache_that_cannot_be_written_starts_the_cell_fresh_never_failing_it(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "cache-root"
    (root / "cache").mkdir(parents=True)
    (root / "cache" / ".locks").write_text("a file where the lock folder goes\n")
    guests = Guests()
    result = run(hv, tmp_path, cell(tmp_path, "[[av]]"), guests, layers=LayerStore(root))
    assert outcome(result) == ("pass", None, None, [])
    assert len(guests.made) == 1 and any(PRODUCT in c for c in guests.made[0].ran)
    assert "starting fresh" in caplog.text


def test_a_damaged_layer_is_built_again_with_a_message(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = LayerStore(tmp_path / "cache-root")
    the_cell = cell(tmp_path)
    run(hv, tmp_path / "one", the_cell, Guests(), layers=store)
    (entry,) = store.entries()
    os.truncate(entry.folder / "layer.qcow2", 2)  # a disk cut short
    guests = Guests()
    again = run(hv, tmp_path / "two", the_cell, guests, layers=store, run_id="unit-run-2")
    assert outcome(again) == ("pass", None, None, [])
    assert len(guests.made) == 2  # a builder again, then the cell
    assert "building it again" in caplog.text


def test_a_matrix_may_turn_the_cache_off(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = LayerStore(tmp_path / "cache-root")
    the_cell = cell(tmp_path, extra="include: [{scenario: {cache: false}}]\n")
    assert the_cell.scenario.cache is False
    guests = Guests()
    run(hv, tmp_path, the_cell, guests, layers=store)
    assert len(guests.made) == 1 and store.entries() == []


# -- the lab's setting ----------------------------------------------------------------------------


def test_the_lab_keeps_a_bounded_cache_unless_told_not_to(tmp_path: Path) -> None:
    from compatlab.run import load_lab_settings

    lab = tmp_path / "lab.yaml"
    lab.write_text(f"storage: {tmp_path}\ncache: {{size: 20G}}\n")
    store = load_lab_settings(lab).layer_store()
    assert store is not None and store.max_bytes == 20 << 30
    assert store.root == tmp_path / "cache"
    lab.write_text(f"storage: {tmp_path}\n")
    default = load_lab_settings(lab).layer_store()
    assert default is not None and default.max_bytes is not None and default.max_bytes > 0
    assert default.memory  # memory layers where a cell allows them, unless told not to
    lab.write_text(f"storage: {tmp_path}\ncache: {{memory: false}}\n")
    no_memory = load_lab_settings(lab).layer_store()
    assert no_memory is not None and not no_memory.memory and no_memory.max_bytes
    lab.write_text("cache: false\n")
    assert load_lab_settings(lab).layer_store() is None


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("cache: {size: lots}\n", r"lab\.yaml:1:.*'lots' is not a size"),
        ("cache: off\n", r"lab\.yaml:1:.*must be true or false"),
        ("cache: {bound: 2G}\n", r"lab\.yaml:1:.*unknown key 'bound' in cache"),
        ("cache:\n  size: 2G\n  memory: no\n", r"lab\.yaml:3:.*must be true or false"),
    ],
)
def test_a_bad_cache_setting_names_its_line(tmp_path: Path, text: str, said: str) -> None:
    from compatlab.errors import MatrixError
    from compatlab.run import load_lab_settings

    lab = tmp_path / "lab.yaml"
    lab.write_text(text)
    with pytest.raises(MatrixError, match=said):
        load_lab_settings(lab)


def test_a_missing_golden_image_is_the_labs_failure_said_as_without_the_cache(
    hv: Hypervisor,  # noqa: F811
    tmp_path: Path,
) -> None:
    # Found by reading tests/lab/test_plugin_lab.py: the key's digest looked at the disk before
    # the storage did, and said "cannot read disk ..." instead of what a user is told elsewhere.
    made = plain_cell(tmp_path)
    missing = tmp_path / "gone.qcow2"
    the_cell = dataclasses.replace(made, image=dataclasses.replace(made.image, disk=missing))
    store = LayerStore(tmp_path / "cache-root")
    result = run(hv, tmp_path, the_cell, Guests(), layers=store, attempts=2)
    assert result.verdict.value == "infra_error" and result.attempts == 2
    assert f"golden image {missing} does not exist" in result.reason
