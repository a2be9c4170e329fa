"""The ``compatlab`` command.

One subcommand per function pair: ``_add_<name>(subparsers)`` declares its arguments and sets
``handler``; ``_<name>(args) -> int`` runs it. New subcommands (``images build``, ``report``,
``signoff``, ``gc``) register in :data:`_SUBCOMMANDS`. Heavy imports stay inside handlers so
``compatlab --help`` is instant.

Exit status: 0 done; 1 the lab failed (e.g. rendered XML rejected by libvirt's schema);
2 bad input (usage, matrix, policy, unknown cell). ``signoff``: 0 go, 1 no-go, 2 bad input.
``cache prune``: 1 when layers in use kept it from its goal.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from compatlab.errors import CompatlabError, InputError, LabError

if TYPE_CHECKING:
    from compatlab.catalog import GoldenImage, HardwareProfile
    from compatlab.lab.domain import Accel, CrashPolicy
    from compatlab.lab.owner import Controller

__all__ = ["PREVIEW_RUN_ID", "build_parser", "main", "render_for_cell"]

log = logging.getLogger("compatlab.cli")

#: The run id ``compatlab xml`` renders with unless given one.
PREVIEW_RUN_ID = "preview"

EXIT_OK = 0
EXIT_LAB = 1
EXIT_INPUT = 2


# -- rendering one cell ---------------------------------------------------------------------------


def render_for_cell(
    image: GoldenImage,
    hardware: HardwareProfile,
    cell_id: str,
    *,
    template_dir: Path,
    run_id: str = PREVIEW_RUN_ID,
    storage_root: Path | None = None,
    accel: Accel = "qemu",
    on_crash: CrashPolicy = "preserve",
    controller: Controller | None = None,
) -> str:
    """The domain XML the cell ``cell_id`` of run ``run_id`` gets. Creates nothing.

    Paths are the cell's :class:`~compatlab.lab.storage.CellStorage` paths under
    ``storage_root``; the owner in the metadata is ``controller`` (default: this process).
    Raises :class:`~compatlab.lab.domain.ProfileNotSupported` for profiles this lab cannot run.
    """
    from compatlab.lab.domain import render_cell_domain
    from compatlab.lab.owner import Controller
    from compatlab.lab.storage import DEFAULT_ROOT, CellStorage

    storage = CellStorage(run_id, cell_id, root=storage_root or DEFAULT_ROOT)
    return render_cell_domain(
        image,
        hardware,
        storage,
        template_dir=template_dir,
        accel=accel,
        controller=controller or Controller.current(),
        on_crash=on_crash,
    )


# -- compatlab xml --------------------------------------------------------------------------------


def _add_xml(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "xml",
        help="print the libvirt domain XML a cell would get (starts nothing)",
        description="Print the libvirt domain XML the cell CELL_ID of MATRIX would get, "
        "checked against libvirt's schema. Nothing is created or started.",
    )
    parser.add_argument("matrix", type=Path, metavar="MATRIX", help="matrix file")
    parser.add_argument("cell_id", metavar="CELL_ID", help="cell id, e.g. build/hardware/none")
    parser.add_argument("--run-id", default=PREVIEW_RUN_ID, help="run id for names and paths")
    parser.add_argument(
        "--storage-root", type=Path, default=None, help="lab storage root (/var/lib/compatlab)"
    )
    parser.add_argument(
        "--accel",
        choices=("auto", "kvm", "qemu"),
        default="auto",
        help="domain type; auto asks the hypervisor at --uri, falling back to qemu (TCG)",
    )
    parser.add_argument("--uri", default="qemu:///system", help="hypervisor for --accel auto")
    parser.add_argument(
        "--on-crash", choices=("preserve", "restart", "destroy"), default="preserve"
    )
    parser.add_argument(
        "--templates", type=Path, default=None, help="template folder (<project>/configs/templates)"
    )
    parser.add_argument("--no-validate", action="store_true", help="skip virt-xml-validate")
    parser.set_defaults(handler=_xml)


def _xml(args: argparse.Namespace) -> int:
    from compatlab.lab.domain import find_template_dir, validate_domain_xml
    from compatlab.matrix import find_project_root, load_matrix

    project = find_project_root(args.matrix.parent)
    matrix = load_matrix(args.matrix, catalog_root=project)
    try:
        cell = matrix.cell(args.cell_id)
    except KeyError:
        ids = [c.id for c in matrix.cells]
        close = difflib.get_close_matches(args.cell_id, ids, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        print(f"{args.matrix}: no cell '{args.cell_id}'{hint}", file=sys.stderr)
        return EXIT_INPUT
    xml = render_for_cell(
        cell.image,
        cell.hardware,
        cell.id,
        template_dir=args.templates or find_template_dir(project),
        run_id=args.run_id,
        storage_root=args.storage_root,
        accel=_accel(args.accel, args.uri),
        on_crash=args.on_crash,
    )
    sys.stdout.write(xml)
    if not args.no_validate:
        validate_domain_xml(xml)
    return EXIT_OK


def _accel(choice: str, uri: str) -> Accel:
    if choice == "kvm":
        return "kvm"
    if choice == "qemu":
        return "qemu"
    from compatlab.lab.connection import Hypervisor

    try:
        with Hypervisor(uri, auto_reconnect=False) as hypervisor:
            return hypervisor.accelerator().domain_type
    except LabError as exc:
        log.warning("cannot ask %s which accelerator it has (%s); assuming qemu (TCG)", uri, exc)
        return "qemu"


# -- images build ---------------------------------------------------------------------------------


def _add_images(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("images", help="golden images")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    build = verbs.add_parser(
        "build", help="build the images that have a recipe, and the demo payloads (cached)"
    )
    build.add_argument(
        "--project", type=Path, default=Path.cwd(), help="project folder (default: here)"
    )
    build.set_defaults(handler=_images_build)


def _images_build(args: argparse.Namespace) -> int:
    from compatlab.images import BuildStep, build_all
    from compatlab.matrix import find_project_root

    def report(step: BuildStep) -> None:
        last = step.output.splitlines()[-1] if step.output else "done"
        print(f"compatlab: {step.what}: {last} ({step.seconds:.1f} s)", flush=True)

    build_all(find_project_root(args.project), report=report)
    return EXIT_OK


# -- gc -------------------------------------------------------------------------------------------


def _add_gc(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gc", help="remove the VMs and disks that dead runs left behind (never anything else)"
    )
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    parser.add_argument(
        "--storage-root", type=Path, default=Path("/var/lib/compatlab"), help="cells' folder root"
    )
    parser.add_argument("--quiet", action="store_true", help="say nothing when nothing was left")
    parser.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> int:
    from compatlab.lab.reaper import gc

    report = gc(args.uri, storage_root=args.storage_root)
    if report.removed_anything or not args.quiet:
        print(f"compatlab gc: {report.summary()}")
    return EXIT_LAB if report.errors else EXIT_OK


# -- report ---------------------------------------------------------------------------------------


def _add_report(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="re-render index.html, evidence pages and junit.xml from results.json",
        description="Re-render a run's report from its results.json and record the run in the "
        "history (reports/history.sqlite beside the run folder; once, however often it runs).",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--history", type=Path, help="history file (default: history.sqlite beside RUN_DIR)"
    )
    where.add_argument(
        "--no-history", action="store_true", help="neither record the run nor show changes"
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        metavar="N",
        help="processes that write the evidence pages (default 1; more pay on idle CPUs)",
    )
    parser.set_defaults(handler=_report)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _report(args: argparse.Namespace) -> int:
    from compatlab.report import render_report

    history: Path | bool = False if args.no_history else (args.history or True)
    index = render_report(args.run_dir, history=history, processes=args.jobs)
    print(f"compatlab: report: {index}")
    return EXIT_OK


# -- signoff --------------------------------------------------------------------------------------

EXIT_NO_GO = 1


def _add_signoff(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "signoff",
        help="decide which rollout rings the candidate may enter (exit 0 go, 1 no-go, 2 bad input)",
        description="Apply a rollout policy to RUN_DIR/results.json; write signoff.html and "
        "signoff.json beside the report. Exit 0 when the candidate may enter the target ring "
        "(the policy's target, by default its last ring), 1 when it may not (or the sign-off "
        "could not be written), 2 when the policy or the run folder is wrong.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--policy", type=Path, required=True, help="rollout policy (YAML)")
    parser.add_argument("--ring", default=None, help="judge go / no-go for this ring instead")
    parser.set_defaults(handler=_signoff)


def _signoff(args: argparse.Namespace) -> int:
    from compatlab.signoff import sign_off, summary_lines

    decision, page = sign_off(args.run_dir, args.policy, target=args.ring)
    for line in summary_lines(decision):
        print(f"compatlab signoff: {line}")
    print(f"compatlab signoff: {page}")
    return EXIT_OK if decision.go else EXIT_NO_GO


# -- worker ---------------------------------------------------------------------------------------


def _add_worker(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker", help="run this hypervisor host's cells for a lab's Dask scheduler"
    )
    parser.add_argument("--scheduler", required=True, help="the scheduler, tcp://HOST:PORT")
    parser.add_argument("--vcpus", type=int, help="vCPUs its VMs may use (default: its CPUs)")
    parser.add_argument("--memory", type=int, help="MiB its VMs may use (default: available)")
    parser.add_argument(
        "--storage", type=Path, default=Path("/var/lib/compatlab"), help="cells' folder root"
    )
    parser.add_argument("--labels", default="", help="what the host offers, e.g. kvm,tpm")
    parser.add_argument("--uri", default="qemu:///system", help="the local libvirt URI")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--name", help="the worker's name (default HOSTNAME-PID)")
    parser.add_argument("--attempts", type=int, default=2, help="tries of a cell the lab failed")
    parser.add_argument(
        "--project", type=Path, default=Path.cwd(), help="compatlab checkout (its templates)"
    )
    parser.add_argument(
        "--preload", action="append", default=[], help="a module Dask loads into the worker"
    )
    parser.set_defaults(handler=_worker)


def _worker(args: argparse.Namespace) -> int:
    from compatlab.capacity import Capacity, machine_capacity
    from compatlab.engine.worker import serve

    labels = frozenset(label.strip() for label in args.labels.split(",") if label.strip())
    machine = machine_capacity(labels=labels)
    try:
        capacity = Capacity(
            vcpus=args.vcpus or machine.vcpus,
            memory_mib=args.memory or machine.memory_mib,
            labels=labels,
        )
    except ValueError as exc:
        print(f"compatlab worker: {exc}", file=sys.stderr)
        return EXIT_INPUT
    return serve(
        scheduler=args.scheduler,
        capacity=capacity,
        storage=args.storage.resolve(),
        uri=args.uri,
        project=args.project,
        host=args.host,
        name=args.name,
        preload=args.preload,
        attempts=args.attempts,
    )


# -- cache ----------------------------------------------------------------------------------------


def _max_size(text: str) -> int:
    from compatlab.cache.size import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_cache(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cache", help="cached pre-candidate layers: list, prune (exit 1: layers in use were kept)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="the cached layers, least recently used first")
    prune = verbs.add_parser(
        "prune",
        help="remove damaged layers and leftovers of killed builds; never a layer in use",
        description="Remove damaged layers and what killed builds left; with --all every "
        "layer, with --max-size the least recently used until the rest fit. A layer in use is "
        "never removed: exit 1 when that kept the prune from its goal, 0 otherwise.",
    )
    prune.add_argument("--all", action="store_true", help="empty the cache")
    prune.add_argument(
        "--max-size", type=_max_size, metavar="SIZE", help="bound, e.g. 50G, 512MiB, bytes"
    )
    for verb in (listing, prune):
        verb.add_argument(
            "--storage-root",
            type=Path,
            default=Path("/var/lib/compatlab"),
            help="lab storage root; the cache is its cache/ folder",
        )
    listing.set_defaults(handler=_cache_list)
    prune.set_defaults(handler=_cache_prune)


def _cache_list(args: argparse.Namespace) -> int:
    from compatlab.cache import LayerStore, format_size
    from compatlab.cache.layer import MEMORY_STATE

    store = LayerStore(args.storage_root)
    entries = store.entries()
    if not entries:
        print(f"compatlab cache: no cached layers in {store.root}")
        return EXIT_OK
    for entry in entries:
        use = "  [in use]" if entry.in_use else ""
        if entry.manifest is None:
            state = f"damaged: {entry.problem}"
        else:
            m = entry.manifest
            used = m.last_used.strftime("%Y-%m-%d %H:%M")
            start = "memory" if MEMORY_STATE in m.files else "disk  "  # what a cell starts from
            state = (
                f"{start}  baseline {m.baseline_boot_seconds:.1f} s  last used {used}  {m.label}"
            )
        print(f"{entry.key}  {format_size(entry.bytes):>10}  {state.rstrip()}{use}")
    total = sum(entry.bytes for entry in entries)
    print(f"compatlab cache: {len(entries)} layers, {format_size(total)} in {store.root}")
    return EXIT_OK


def _cache_prune(args: argparse.Namespace) -> int:
    from compatlab.cache import LayerStore, format_size

    store = LayerStore(args.storage_root)
    report = store.prune(max_bytes=args.max_size, everything=args.all)
    for entry in report.removed:
        why = f" ({entry.problem})" if entry.problem else ""
        print(f"compatlab cache: removed {entry.key}{why}")
    for entry in report.in_use:
        print(f"compatlab cache: kept {entry.key}: in use")
    print(
        f"compatlab cache: removed {len(report.removed)} layers "
        f"({format_size(report.freed_bytes)}), {format_size(report.remaining_bytes)} left"
    )
    reached = not report.in_use or (
        not args.all and args.max_size is not None and report.remaining_bytes <= args.max_size
    )
    return EXIT_OK if reached else EXIT_LAB


# -- the command ----------------------------------------------------------------------------------

#: Subcommands, in --help order. Add yours here (images build, report, signoff, gc).
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_images,
    _add_xml,
    _add_report,
    _add_signoff,
    _add_gc,
    _add_worker,
    _add_cache,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``compatlab`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="compatlab",
        description="Compatibility lab for kernel-touching updates.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``compatlab``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="compatlab: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except InputError as exc:
        print(f"compatlab: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except CompatlabError as exc:
        print(f"compatlab {args.command}: {exc}", file=sys.stderr)
        return EXIT_LAB


if __name__ == "__main__":
    sys.exit(main())
