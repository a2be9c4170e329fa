"""One cell to exactly one result: attempts, reruns without the candidate, the verdict.

* An attempt is one VM running the runbook. The lab failing (a :class:`LabError` or
  :class:`GuestError` that no failure of the guest explains) is retried on a fresh VM, up to
  ``attempts``; after that the cell is ``infra_error``. An attempt in which the guest failed is
  never retried: a crash is a result, whatever the lab did afterwards.
* A cell that failed with the candidate is run again without it (``baseline: on_failure``, up to
  ``scenario.reruns`` times, stopping at the first rerun that fails as badly); each rerun's
  whole run feeds the attribution (``verdict.decide``), and the result keeps every rerun.
* Whatever escapes -- an unexpected exception in the runner, a cleanup that fails -- the cell
  still gets one result: ``infra_error`` with the exception's text, and what was seen.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.errors import GuestError, LabError, StorageError
from compatlab.lab.storage import cell_slug
from compatlab.model import Attribution, CellResult, Phase, Verdict
from compatlab.scenario import layers
from compatlab.scenario.context import LabContext
from compatlab.scenario.runbook import build_book, run_book
from compatlab.scenario.session import GuestRestarted, Session, VMRecord, describe
from compatlab.verdict import Decision, Observations, RunObservations, decide

if TYPE_CHECKING:
    from compatlab.cache import Layer
    from compatlab.matrix import Cell

__all__ = ["infra_error_result", "run_cell"]

log = logging.getLogger("compatlab.scenario")


class _LabFailed(Exception):
    """The lab failed and no failure of the guest was seen: the attempt may be made again."""

    def __init__(self, reason: str, record: VMRecord) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


def run_cell(cell: Cell, lab: LabContext) -> CellResult:
    """Run one cell to a verdict. Never raises for the lab failing: that is ``infra_error``."""
    started = time.monotonic()
    # The matrix is part of the folder: two matrices of one run may hold the same cell id.
    evidence = lab.report_dir / "cells" / cell_slug(f"{Path(cell.matrix).stem}/{cell.id}")
    records: list[VMRecord] = []
    try:
        return _run(cell, lab, evidence, records, started)
    except Exception as exc:
        log.exception("compatlab: %s: the runner failed", cell.id)
        result = infra_error_result(
            cell,
            f"the runner failed: {describe(exc)}",
            seconds=time.monotonic() - started,
            attempts=_attempts(records),
        )
        _attach(result, records)
        return result


def _run(
    cell: Cell, lab: LabContext, evidence: Path, records: list[VMRecord], started: float
) -> CellResult:
    record: VMRecord | None = None
    reason = ""
    for attempt in range(1, lab.attempts + 1):
        label = f"attempt-{attempt}"
        try:
            record = _vm(cell, lab, evidence / label, label, True, records)
            break
        except _LabFailed as failed:
            reason = failed.reason
            if lab.stop.is_set():
                break  # the run is stopping: no fresh VM
            if attempt < lab.attempts:
                lab.progress(cell.id, f"lab failed ({reason}); trying again on a fresh VM")
                time.sleep(lab.retry_wait)
    attempts = _attempts(records)
    if record is None:
        result = infra_error_result(
            cell, reason, seconds=time.monotonic() - started, attempts=attempts
        )
        _attach(result, records)
        return result

    run = record.observations()
    reruns: list[RunObservations | str] = []
    rerun_records: list[VMRecord | str] = []
    first = decide(run)
    for n in range(1, _reruns_wanted(cell, first) + 1):
        if lab.stop.is_set():
            break
        lab.progress(cell.id, f"baseline rerun {n} without the candidate")
        try:
            again = _vm(cell, lab, evidence / f"rerun-{n}", f"rerun-{n}", False, records)
            reruns.append(again.observations())
            rerun_records.append(again)
        except _LabFailed as failed:
            reruns.append(failed.reason)
            rerun_records.append(failed.reason)
        decision = decide(run, reruns=reruns)
        if decision.attribution is Attribution.BASELINE:
            break
    decision = decide(run, reruns=reruns)
    return _result(cell, record, decision, records, rerun_records, started, attempts)


def _attempts(records: list[VMRecord]) -> int:
    """Attempts made with the candidate (a layer's builder is part of its attempt)."""
    return len({r.part_of or r.label for r in records if r.with_candidate})


def _reruns_wanted(cell: Cell, first: Decision) -> int:
    """How many reruns without the candidate this first decision asks for."""
    wanted = cell.scenario.baseline
    if wanted == "never":
        return 0
    if wanted == "always":
        return cell.scenario.reruns
    # on_failure: a failure with the candidate that a rerun could tell apart.
    needs = first.attribution is Attribution.UNCONFIRMED
    return cell.scenario.reruns if needs else 0


def _vm(
    cell: Cell,
    lab: LabContext,
    evidence: Path,
    label: str,
    with_candidate: bool,
    records: list[VMRecord],
) -> VMRecord:
    """One VM of the cell through the runbook -- from the cell's cached layer where the lab
    keeps one (built first by a VM of its own when missing) -- its record added to ``records``
    from the start.

    Raises :class:`_LabFailed` when only the lab failed. Once the guest has failed, nothing that
    goes wrong later (the lab, or a bug of the runner's) takes that failure away: it is noted on
    the phase it happened in. A configuration that fails while its layer is built gives that
    builder's record: what a VM without the cache would have seen.
    """
    if not layers.wanted(cell, lab):
        return _session(cell, lab, evidence, label, with_candidate, records)
    assert lab.layers is not None
    try:
        key, inputs = layers.key_for(cell, lab)
    except LabError as exc:
        record = VMRecord(label, with_candidate)  # an attempt, though no VM was made
        records.append(record)
        raise _LabFailed(describe(exc), record) from exc

    def build(folder: Path) -> float:
        lab.progress(cell.id, f"building cached layer {key}")
        builder = evidence.with_name(f"{evidence.name}-layer")
        record = _session(
            cell,
            lab,
            builder,
            f"{label}-layer",
            with_candidate,
            records,
            build_into=folder,
            memory=bool(inputs.memory),  # the key says what the layer holds
        )
        seconds = record.layer_seconds
        if seconds is None:
            raise _ConfigurationFailed(record)
        return seconds

    try:
        with lab.layers.use(key, inputs, build, label=_layer_label(cell)) as layer:
            if layer.rebuilt_because:
                lab.progress(cell.id, f"cached layer rebuilt: it {layer.rebuilt_because}")
            return _session(cell, lab, evidence, label, with_candidate, records, start=layer)
    except _ConfigurationFailed as failed:
        return failed.record
    except StorageError as exc:
        # The cache's own folder (a lock, a manifest) failed: never the cell's failure.
        log.warning("compatlab: %s: the layer cache failed (%s); starting fresh", cell.id, exc)
        lab.progress(cell.id, f"the layer cache failed ({exc}); starting fresh")
        return _session(cell, lab, evidence, label, with_candidate, records)


def _layer_label(cell: Cell) -> str:
    """For people reading ``compatlab cache list``: the configuration, without the candidate."""
    products = "+".join(cell.product_names) or "none"
    return f"{cell.image.name}/{cell.hardware.name}/{products}"


class _ConfigurationFailed(Exception):
    """The guest failed before the candidate while building its layer: nothing is published."""

    def __init__(self, record: VMRecord) -> None:
        super().__init__(record.label)
        self.record = record


def _session(
    cell: Cell,
    lab: LabContext,
    evidence: Path,
    label: str,
    with_candidate: bool,
    records: list[VMRecord],
    *,
    start: Layer | None = None,
    build_into: Path | None = None,
    memory: bool = False,
) -> VMRecord:
    """One watched VM: the cell's runbook, or with ``build_into`` its layer's builder."""
    builds_for = label.removesuffix("-layer") if build_into is not None else None
    vm = Session(
        cell,
        lab,
        evidence,
        label=label,
        with_candidate=with_candidate,
        start=start,
        builds_for=builds_for,
    )
    records.append(vm.record)
    try:
        with vm:
            try:
                if build_into is None:
                    run_book(vm)
                else:
                    vm.record.layer_seconds = build_book(vm, build_into, memory=memory)
            except Exception as exc:
                if not vm.record.phases or not vm.guest_failed():
                    raise
                vm.current.add(infra_error=describe(exc))
    except (LabError, GuestError, GuestRestarted) as exc:
        raise _LabFailed(describe(exc), vm.record) from exc
    return vm.record


def _result(
    cell: Cell,
    record: VMRecord,
    decision: Decision,
    records: list[VMRecord],
    reruns: list[VMRecord | str],
    started: float,
    attempts: int,
) -> CellResult:
    result = CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=decision.verdict,
        attribution=decision.attribution,
        bugcheck=decision.bugcheck,
        boots=list(record.boots),
        reason=decision.reason,
        commands=list(record.commands),
        checks=list(record.checks),
        seconds=time.monotonic() - started,
        matrix=str(cell.matrix),
        attempts=attempts,
        phases=record.phases_json(),
        fleet_share=cell.fleet_share,
    )
    _attach(result, records, deciding=record)
    for n, rerun in enumerate(reruns, start=1):
        if isinstance(rerun, str):
            result.reruns.append({"n": n, "verdict": Verdict.INFRA_ERROR.value, "reason": rerun})
            continue
        one = decide(RunObservations(dict(rerun.observed), with_candidate=False))
        result.reruns.append(
            {
                "n": n,
                "verdict": one.verdict.value,
                "reason": one.reason,
                "phases": rerun.phases_json(),
            }
        )
    return result


def _attach(result: CellResult, records: list[VMRecord], deciding: VMRecord | None = None) -> None:
    """Events and evidence of every VM of the cell; the deciding VM's are the plain ones."""
    deciding = deciding or next((r for r in reversed(records) if r.with_candidate), None)
    for record in records:
        if record is deciding:
            result.events.extend(record.events)
            result.artifacts.update(record.artifacts)
        else:
            result.events.extend(
                replace(e, source=f"{record.label}/{e.source}") for e in record.events
            )
            result.artifacts.update({f"{record.label}/{k}": v for k, v in record.artifacts.items()})
    if deciding is not None and result.verdict is Verdict.INFRA_ERROR:
        result.commands = result.commands or list(deciding.commands)
        result.checks = result.checks or list(deciding.checks)
        result.boots = result.boots or list(deciding.boots)
        result.phases = result.phases or deciding.phases_json()


def infra_error_result(
    cell: Cell, reason: str, *, seconds: float = 0.0, attempts: int = 0
) -> CellResult:
    """The result of a cell the lab could not run: ``infra_error``, attributed to ``infra``."""
    decision = decide(RunObservations({Phase.PROVISION: Observations(infra_error=reason)}))
    return CellResult(
        id=cell.id,
        build=cell.build,
        hardware=cell.hardware.name,
        products=cell.product_names,
        verdict=decision.verdict,
        attribution=decision.attribution,
        reason=decision.reason,
        seconds=seconds,
        matrix=str(cell.matrix),
        attempts=attempts,
        fleet_share=cell.fleet_share,
    )
