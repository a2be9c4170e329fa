"""Matrix-expansion benchmark: array sizes and generation time.

Run as ``.venv/bin/python benchmarks/expand.py [--skip-covertable]``.  Writes
``benchmarks/results/expand.json`` and prints a short table.

The pairwise part compares compatlab.matrix.pairwise.covering_array with allpairspy and
covertable on classic models plus two constrained ones.  Every array is checked for
coverage here, because a smaller array that misses tuples is not a better array:
allpairspy's n=3 output and its constrained output miss tuples, so the JSON reports the
missing count and, for those, the size once the gaps are filled (its rows passed to our
generator as ``must_include``).  Times are wall-clock medians of 3 runs plus process CPU
time, since the machine may be shared with VMs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations, product
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from compatlab.matrix.pairwise import covering_array  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "expand.json"

Allowed = Callable[[Mapping[int, int]], bool]
Rule = tuple[tuple[int, int], tuple[int, int]]  # ((axis, value), (axis, value)) never together


def rules_allowed(rules: Sequence[Rule]) -> Allowed:
    """PICT-style ``IF [a] = x THEN [b] <> y`` rules as a predicate on partial rows."""

    def allowed(partial: Mapping[int, int]) -> bool:
        return not any(partial.get(a) == x and partial.get(b) == y for (a, x), (b, y) in rules)

    return allowed


# A compatlab-like VM model: os, arch, firmware, tpm, disk bus, memory, vcpus, channel.
VM_SIZES = [6, 2, 3, 3, 4, 4, 3, 2]
OS, ARCH, FW, TPM, DISK, MEM = range(6)
WIN10, WIN11, WS2019, WS2022, UBUNTU, RHEL = range(6)
BIOS, UEFI, UEFI_SB = range(3)
VM_RULES: list[Rule] = [
    ((OS, WIN11), (FW, BIOS)),  # IF [os] = "win11" THEN [firmware] <> "bios"
    ((OS, WIN11), (TPM, 0)),  # ... THEN [tpm] NOT IN {"none", "1.2"}
    ((OS, WIN11), (TPM, 1)),
    ((OS, WIN11), (MEM, 0)),  # ... THEN [memory] <> 2 GB
    ((ARCH, 1), (FW, BIOS)),  # IF [arch] = "arm64" THEN [firmware] <> "bios"
    ((ARCH, 1), (OS, WIN10)),  # ... THEN [os] NOT IN {"win10", "ws2019"}
    ((ARCH, 1), (OS, WS2019)),
    ((FW, BIOS), (DISK, 3)),  # IF [firmware] = "bios" THEN [disk] <> "nvme"
    ((OS, UBUNTU), (DISK, 0)),  # IF [os] IN {"ubuntu", "rhel"} THEN [disk] <> "ide"
    ((OS, RHEL), (DISK, 0)),
    ((DISK, 0), (FW, UEFI)),  # IF [disk] = "ide" THEN [firmware] = "bios"
    ((DISK, 0), (FW, UEFI_SB)),  # -> (arm64, ide), (win11, ide) implicitly impossible
    ((TPM, 1), (FW, UEFI_SB)),  # IF [tpm] = "1.2" THEN [firmware] <> "uefi-sb"
]


def model(
    name: str,
    sizes: list[int],
    strength: int = 2,
    rules: list[Rule] | None = None,
    best_known: int | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "sizes": sizes,
        "strength": strength,
        "rules": rules,
        "best_known": best_known,
    }


MODELS = [
    model("3^4", [3] * 4, best_known=9),
    model("2^10", [2] * 10, best_known=6),
    model("3^13", [3] * 13, best_known=15),
    model("5^4 6 7 8", [5, 5, 5, 5, 6, 7, 8], best_known=56),
    model("4^15 3^17 2^29", [4] * 15 + [3] * 17 + [2] * 29, best_known=30),
    model("3^4, a0=0 excludes a1=1", [3] * 4, rules=[((0, 0), (1, 1))], best_known=10),
    model("VM model, 13 PICT-style rules", VM_SIZES, rules=VM_RULES),
    model("3^4 (t=3)", [3] * 4, strength=3, best_known=27),
    model("2^10 (t=3)", [2] * 10, strength=3, best_known=12),
    model("3^6 (t=3)", [3] * 6, strength=3, best_known=33),
]
LARGEST = "4^15 3^17 2^29"


def missing(
    rows: Sequence[Sequence[int]], sizes: Sequence[int], t: int, allowed: Allowed | None
) -> int:
    """Required t-tuples the rows leave uncovered (required = in some valid full row)."""
    seen = {
        (axes, tuple(r[a] for a in axes))
        for r in rows
        for axes in combinations(range(len(sizes)), t)
    }
    if allowed is None:
        return sum(
            (axes, values) not in seen
            for axes in combinations(range(len(sizes)), t)
            for values in product(*(range(sizes[a]) for a in axes))
        )
    valid = [r for r in product(*(range(s) for s in sizes)) if allowed(dict(enumerate(r)))]
    required = {
        (axes, tuple(r[a] for a in axes))
        for r in valid
        for axes in combinations(range(len(sizes)), t)
    }
    return len(required - seen)


def invalid(rows: Sequence[Sequence[int]], allowed: Allowed | None) -> int:
    return sum(allowed is not None and not allowed(dict(enumerate(r))) for r in rows)


def run_allpairspy(sizes: list[int], t: int, allowed: Allowed | None) -> list[list[int]]:
    from allpairspy import AllPairs

    # allpairspy's filter_func sees a prefix of the row as a list of values.
    flt = (lambda row: allowed(dict(enumerate(row)))) if allowed else (lambda row: True)
    return [list(r) for r in AllPairs([list(range(s)) for s in sizes], filter_func=flt, n=t)]


def run_covertable(sizes: list[int], t: int, rules: list[Rule] | None) -> list[list[int]]:
    import covertable

    constraints = [
        {
            "operator": "fn",
            "requires": [a, b],
            "evaluate": lambda row, a=a, x=x, b=b, y=y: not (row[a] == x and row[b] == y),
        }
        for (a, x), (b, y) in rules or []
    ]
    factors = [list(range(s)) for s in sizes]
    return [list(r) for r in covertable.make(factors, strength=t, constraints=constraints or None)]


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_pairwise(with_covertable: bool = True) -> dict[str, Any]:
    results = []
    for m in MODELS:
        sizes, t = m["sizes"], m["strength"]
        allowed = rules_allowed(m["rules"]) if m["rules"] else None
        runs = [timed(covering_array, sizes, t, allowed=allowed) for _ in range(3)]
        ours = runs[0][0]
        assert all(r[0] == ours for r in runs), "non-deterministic output"
        ap, ap_wall, _ = timed(run_allpairspy, sizes, t, allowed)
        ap_missing = missing(ap, sizes, t, allowed)
        entry: dict[str, Any] = {
            "name": m["name"],
            "sizes": sizes,
            "strength": t,
            "constraints": [list(map(list, r)) for r in m["rules"]] if m["rules"] else None,
            "best_known": m["best_known"],
            "ours_rows": len(ours),
            "ours_missing": missing(ours, sizes, t, allowed),
            "ours_invalid_rows": invalid(ours, allowed),
            "ours_seconds": round(statistics.median(r[1] for r in runs), 4),
            "ours_cpu_seconds": round(statistics.median(r[2] for r in runs), 4),
            "allpairspy_rows": len(ap),
            "allpairspy_missing": ap_missing,
            "allpairspy_invalid_rows": invalid(ap, allowed),
            "allpairspy_seconds": round(ap_wall, 4),
            "ratio": round(len(ours) / len(ap), 4),
        }
        if ap_missing:  # size allpairspy would need to actually cover everything
            filled = covering_array(sizes, t, allowed=allowed, must_include=ap)
            entry["allpairspy_filled_rows"] = len(filled)
            entry["ratio_vs_filled"] = round(len(ours) / len(filled), 4)
        if with_covertable:
            ct, ct_wall, _ = timed(run_covertable, sizes, t, m["rules"])
            entry["covertable_rows"] = len(ct)
            entry["covertable_missing"] = missing(ct, sizes, t, allowed)
            entry["covertable_invalid_rows"] = invalid(ct, allowed)
            entry["covertable_seconds"] = round(ct_wall, 4)
        results.append(entry)
        print(f"  measured {m['name']}", file=sys.stderr, flush=True)

    pairwise = [e for e in results if e["strength"] == 2]
    largest = next(e for e in results if e["name"] == LARGEST)
    fair = [e.get("ratio_vs_filled", e["ratio"]) for e in pairwise]
    plain = [e["ratio"] for e in pairwise if not e["constraints"]]
    summary: dict[str, Any] = {
        "mean_ratio": round(statistics.mean(e["ratio"] for e in pairwise), 4),
        "max_ratio": max(e["ratio"] for e in pairwise),
        "mean_ratio_unconstrained": round(statistics.mean(plain), 4),
        "mean_ratio_vs_valid_allpairspy": round(statistics.mean(fair), 4),
        "max_ratio_vs_valid_allpairspy": max(fair),
        "ratio_models": "strength-2 models (allpairspy's n=3 arrays are incomplete)",
        "largest_model": LARGEST,
        "largest_model_seconds": largest["ours_seconds"],
        "largest_model_cpu_seconds": largest["ours_cpu_seconds"],
        "all_ours_complete_and_valid": all(
            e["ours_missing"] == 0 and e["ours_invalid_rows"] == 0 for e in results
        ),
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "nproc": len(os.sched_getaffinity(0)),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    if with_covertable:
        vs_ct = [e["ours_rows"] / e["covertable_rows"] for e in results]
        summary["mean_ratio_vs_covertable"] = round(statistics.mean(vs_ct), 4)
        summary["max_ratio_vs_covertable"] = round(max(vs_ct), 4)
    return {"models": results, "summary": summary}


def _write_big_matrix(root: Path, builds: int, hardware: int, products: int, sets: int) -> Path:
    """A project with builds x hardware x product-set axes, all names in a real catalog."""
    for sub in ("images", "configs/hardware", "configs/products", "payloads/c", "matrix"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(builds):
        (root / f"images/b{i}.yaml").write_text(
            f"name: b{i}\nos_family: linux\nbuild: '{i}'\ndisk: /nonexistent/{i}.qcow2\n"
            "firmware: [bios, uefi]\nchannel: agent\n"
        )
    for i in range(hardware):
        (root / f"configs/hardware/h{i}.yaml").write_text(
            f"name: h{i}\nvcpus: 2\nmemory: 1GiB\nfirmware: {'uefi' if i % 2 else 'bios'}\n"
        )
    names = [f"p{i}" for i in range(products)]
    for name in names:
        (root / f"configs/products/{name}.yaml").write_text(
            f"name: {name}\nvendor: v\nlinux: {{payload: /x, install: i, uninstall: u}}\n"
        )
    all_sets = [()] + [c for k in (1, 2, 3) for c in combinations(names, k)]
    product_axis = ", ".join("[" + ", ".join(s) + "]" for s in all_sets[:sets])
    path = root / "matrix/big.yaml"
    path.write_text(
        "candidate: {name: c, version: '1', payload: ../payloads/c, install: {linux: i},"
        " uninstall: {linux: u}}\n"
        f"axes:\n  build: [{', '.join(f'b{i}' for i in range(builds))}]\n"
        f"  hardware: [{', '.join(f'h{i}' for i in range(hardware))}]\n"
        f"  products: [{product_axis}]\n"
    )
    return path


def bench_full_expansion() -> dict[str, Any]:
    """Seconds to load, validate and expand a 100,000-cell full matrix (20 x 50 x 100).

    Reported twice: end to end (reading 82 catalog YAML files included) and with the catalog
    already loaded (the expansion itself, as the plugin sees it for a second matrix file).
    """
    import tempfile

    from compatlab.matrix import CatalogCache, load_matrix

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _write_big_matrix(root, builds=20, hardware=50, products=12, sets=100)
        cold: list[float] = []
        warm: list[float] = []
        cells = 0
        for _ in range(3):
            cache: CatalogCache = {}
            start = time.perf_counter()
            cells = len(load_matrix(path, catalog_root=root, catalogs=cache).cells)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_matrix(path, catalog_root=root, catalogs=cache)
            warm.append(time.perf_counter() - start)
    return {
        "cells": cells,
        "axes": {"build": 20, "hardware": 50, "products": 100},
        "seconds_end_to_end_median": round(statistics.median(cold), 3),
        "seconds_catalog_cached_median": round(statistics.median(warm), 3),
        "runs": 3,
        "target_seconds": 1.0,
        "load_average": os.getloadavg()[0],
    }


def print_table(pairwise: dict[str, Any]) -> None:
    head = (
        f"{'model':31} {'t':>1} {'ours':>5} {'allpairs':>9} {'ratio':>6} {'covertab':>9} {'sec':>6}"
    )
    print(head)
    print("-" * len(head))
    for e in pairwise["models"]:
        ap = f"{e['allpairspy_rows']}{'*' if e['allpairspy_missing'] else ''}"
        ct = "-" if "covertable_rows" not in e else str(e["covertable_rows"])
        print(
            f"{e['name']:31} {e['strength']:>1} {e['ours_rows']:>5} {ap:>9} "
            f"{e['ratio']:>6.3f} {ct:>9} {e['ours_seconds']:>6.2f}"
        )
    s = pairwise["summary"]
    print("* = incomplete array (misses required tuples; see allpairspy_missing)")
    print(
        f"t=2 mean ratio {s['mean_ratio']:.3f} (max {s['max_ratio']:.3f}); vs gap-filled "
        f"allpairspy {s['mean_ratio_vs_valid_allpairspy']:.3f} "
        f"(max {s['max_ratio_vs_valid_allpairspy']:.3f}); largest model "
        f"{s['largest_model_seconds']:.2f} s wall, {s['largest_model_cpu_seconds']:.2f} s CPU; "
        f"python {s['machine']['python']}, nproc {s['machine']['nproc']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-covertable", action="store_true", help="covertable is slow")
    args = parser.parse_args()
    data = {
        "pairwise": bench_pairwise(with_covertable=not args.skip_covertable),
        "full_expansion": bench_full_expansion(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(RESULTS)  # never leave a half-written file behind
    print_table(data["pairwise"])
    full = data["full_expansion"]
    print(
        f"full expansion: {full['cells']} cells in {full['seconds_end_to_end_median']} s end to "
        f"end, {full['seconds_catalog_cached_median']} s with the catalog loaded"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
