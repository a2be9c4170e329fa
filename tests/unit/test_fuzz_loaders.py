"""Fuzz the loaders: mutated valid matrices, catalogs, lab settings and results files (issue 8).

The rule under test: whatever a user's file holds, loading it ends in a value or in an
:class:`~compatlab.errors.InputError` (pytest exit 4 with ``file:line: message``) -- never
another exception, never a hang. Seeds are valid files (the ``make_project`` catalog and matrices
in its style); hypothesis mutates them structurally (keys deleted, duplicated, renamed,
retyped, moved, nested deep, values swapped for hostile ones: control characters, huge and
non-finite numbers, special paths) and as text (random bytes, YAML syntax the library chokes
on: list keys, tags, anchors, directives, deep brackets).

Budget: a fixed number of examples per fuzzer (``EXAMPLES``), each bounded in time by a
``SIGALRM`` (a hang fails the example instead of stopping the suite), about 20 s in all.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from compatlab.catalog import parse_hardware, parse_image, parse_product
from compatlab.errors import InputError
from compatlab.matrix import CatalogCache, Matrix, load_matrix
from compatlab.report import load_results
from compatlab.run import load_lab_settings
from tests.support.catalogs import make_project

T = TypeVar("T")
EXAMPLES = {"matrix": 150, "matrix_text": 150, "catalog": 120, "results": 80, "lab": 40}
SECONDS_PER_EXAMPLE = 20  # a hang; a slow example fails on the deadline first
FUZZ = settings(
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail, rather than hang, if the body runs longer than ``seconds`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    # pytest-timeout's own alarm for the whole test, if set: put back what is left of it.
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    began = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - began), 0.001))


def only_input_errors(load: Callable[[], T]) -> T | None:
    """``load()`` may succeed or raise InputError; anything else fails the example."""
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            return load()
        except InputError:
            return None


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def usable(matrix: Matrix | None) -> None:
    """What loaded is what a run can use: bounded, finite, printable, one cell per id."""
    if matrix is None:
        return
    ids = [cell.id for cell in matrix.cells]
    assert len(ids) == len(set(ids)), "duplicate cell ids"
    names = [matrix.candidate.name, matrix.candidate.version]
    for cell in matrix.cells:
        s, hw = cell.scenario, cell.hardware
        assert 1 <= s.boots <= 100 and 1 <= s.boot_loop <= 100 and 1 <= s.reruns <= 10, s
        assert 0 < s.boot_timeout <= 86_400 and 0 < s.bake <= 86_400, s
        assert s.boot_regression is None or 1 <= s.boot_regression <= 100, s
        assert 1 <= hw.vcpus <= 256 and 64 <= hw.memory_mib <= 4 * 1024 * 1024, hw
        names += [cell.image.name, hw.name, *cell.product_names]
        texts = [
            str(cell.image.disk),
            cell.image.cmdline or "",
            cell.image.conventions.payload_path,
        ]
        assert not any(CONTROL.search(t) for t in texts), texts
    assert all(len(n) <= 64 and not CONTROL.search(n) for n in names), names


# -- seeds ------------------------------------------------------------------------------------

CANDIDATE = {
    "name": "sensor",
    "version": "1.2.3",
    "payload": "../payloads/candidate",
    "install": {"linux": "sh {payload}/install.sh", "windows": "install.cmd"},
    "uninstall": {"linux": "sh {payload}/uninstall.sh", "windows": "uninstall.cmd"},
    "exit_codes": {"success": [0], "reboot": [3010]},
    "reboots": 1,
}
MATRIX_SEEDS: list[dict[str, Any]] = [
    {
        "candidate": CANDIDATE,
        "axes": {
            "build": ["lin-a", "lin-b"],
            "hardware": ["bios-1cpu", "uefi-2cpu"],
            "products": [[], ["av"], ["av", "edr"]],
        },
        "exclude": [{"build": "lin-a", "products": ["edr", "av"]}],
        "include": [
            {"build": "lin-b", "hardware": "uefi-2cpu", "scenario": {"boots": 7}},
            {"build": "lin-a", "hardware": "bios-1cpu", "products": ["dlp"]},
        ],
        "constraints": [{"if": {"build": "lin-b"}, "then_not": {"products": ["dlp"]}}],
        "scenario": {"boots": 2, "boot_timeout": 90, "bake": 5, "baseline": "on_failure"},
    },
    {
        "candidate": CANDIDATE,
        "axes": {
            "build": ["lin-a", "lin-b"],
            "hardware": ["bios-1cpu", "uefi-2cpu"],
            "products": {"av": ["av", "none"], "edr": ["edr", "dlp", "none"]},
        },
        "strategy": {
            "kind": "pairwise",
            "strength": 2,
            "seed": 3,
            "must_include": [{"build": "lin-a", "products": {"av": "av"}}],
            "previous": "prev.json",
        },
        "scenario": {"reruns": 2, "boot_loop": 3, "rollback": False, "boot_regression": 1.5},
    },
    {
        "candidate": CANDIDATE,
        "catalog": {"images": "../images", "hardware": "../configs/hardware"},
        "axes": {"build": ["win11", "lin-a"], "hardware": ["uefi-2cpu"], "products": [[]]},
        "strategy": {"kind": "full"},
    },
]
PREVIOUS = {
    "cells": [
        {"build": "lin-a", "hardware": "bios-1cpu", "products": ["av"]},
        {"build": "lin-b", "hardware": "uefi-2cpu", "products": []},
    ]
}
IMAGE = {
    "name": "lin-a",
    "os_family": "linux",
    "build": "1.0",
    "disk": "/nonexistent/lin-a.qcow2",
    "firmware": ["bios", "uefi"],
    "channel": "agent",
    "kernel": "vmlinuz",
    "cmdline": "console=ttyS0 quiet",
    "boot_complete": "^ready$",
    "guest": {
        "payload_path": "/run/payload",
        "mount_payload": "mount -L {label} {path}",
        "unmount_payload": "umount {path}",
        "service_check": "systemctl is-active {service}",
    },
    "credentials": {"username": "lab", "password_env": "LAB_PASSWORD"},
}
HARDWARE = {
    "name": "bios-1cpu",
    "vcpus": 1,
    "memory": "256MiB",
    "firmware": "bios",
    "secure_boot": False,
    "tpm": False,
    "disk_bus": "virtio",
    "machine": "q35",
    "watchdog": {"model": "i6300esb", "action": "reset"},
}
PRODUCT = {
    "name": "av",
    "vendor": "Test",
    "linux": {
        "payload": "../../payloads/av",
        "install": "sh {payload}/i.sh",
        "uninstall": "sh {payload}/u.sh",
        "exit_codes": {"success": [0], "reboot": [3010]},
        "health": {"services": ["acme-av"], "command": "true"},
    },
}
LAB = {"hosts": [{"uri": "qemu:///system", "name": "local"}], "storage": "/tmp/x", "attempts": 2}
RESULTS = {
    "schema": 1,
    "run": {
        "id": "r1",
        "matrix": ["matrix/m.yaml"],
        "candidate": {"name": "sensor", "version": "1"},
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T01:00:00+00:00",
        "hosts": ["qemu:///system"],
    },
    "cells": [
        {
            "id": "lin-a/bios-1cpu/av",
            "build": "lin-a",
            "hardware": "bios-1cpu",
            "products": ["av"],
            "verdict": "crash",
            "attribution": "candidate",
            "bugcheck": {"code": "0x50", "name": "PAGE_FAULT", "params": ["0x1"]},
            "boots": [{"n": 1, "outcome": "crash", "seconds": 7.4}],
            "events": [{"t": 1.0, "source": "libvirt", "kind": "crashed", "detail": "x"}],
            "artifacts": {"serial_log": "cells/x/serial.log"},
            "seconds": 48.2,
            "commands": [{"phase": "install", "command": "i", "exit_code": 0, "seconds": 1}],
        }
    ],
}

# -- hostile values ---------------------------------------------------------------------------

SPECIAL_PATHS = [
    "/dev/zero",
    "/dev/null",
    "/dev/stdin",
    "/proc/self/status",
    "/",
    "..",
    "/etc/hostname",
    "loop",
    "loop/below",
    "fifo",
    "fifo.yaml",
]
NAMES = ["lin-a", "lin-b", "win11", "bios-1cpu", "uefi-2cpu", "av", "edr", "dlp", "winav", "none"]
KEYS = [
    "candidate", "axes", "build", "hardware", "products", "exclude", "include", "constraints",
    "strategy", "scenario", "catalog", "kind", "strength", "seed", "must_include", "previous",
    "if", "then", "then_not", "boots", "boot_timeout", "bake", "reruns", "boot_loop",
    "name", "version", "payload", "install", "uninstall", "exit_codes", "reboots", "linux",
    "windows", "images", "cells", "success", "reboot", "guest", "mount_payload", "service_check",
]  # fmt: skip
TEXTS = [
    "",
    "x" * 300,
    "\x1b[2J",
    "a\x00b",
    "a\nb",
    "\u0085",
    "\ud800",
    "\ufffe",
    "{nope}",
    "{service.__class__}",
    "{payload}",
    "{",
    "}",
    "pairwise",
    "full",
    "uefi",
    "bios",
    "agent",
    "winrm",
    "windows",
    "512MiB",
    "99999999999999GiB",
    "9" * 60,
    "nan",
    "1e999",
    "2001-02-30",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2, 3, 257, 10**38, -(10**38), 2**64, 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 0.0, -0.0]),
    st.sampled_from(NAMES + TEXTS + SPECIAL_PATHS),
    st.text(max_size=12),
    st.text(alphabet=st.characters(max_codepoint=0xA0), max_size=6),
)


def deep(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"a": leaf}
    return leaf


# The hostile picks get branches of their own: one_of chooses a branch evenly, so they are not
# drowned among random integers and text.
values = st.one_of(
    st.sampled_from(SPECIAL_PATHS),
    st.sampled_from(TEXTS),
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3),
    st.lists(st.lists(st.sampled_from(NAMES), max_size=3), max_size=3),
    st.builds(deep, st.integers(1, 70), scalars),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.sampled_from(TEXTS))
OPS = ["delete", "retype", "rename", "insert", "duplicate", "move", "nest", "path", "number"]
NUMBERS = [0, -1, 10**38, 2**64, math.nan, math.inf, -math.inf, 1e300, 0.0001, 257, 5000]
mutations = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 10**6), values, keys), min_size=1, max_size=4
)


def positions(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in ``tree``, depth first."""
    out: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        children = list(node.items()) if isinstance(node, dict) else enumerate(node)
        for key, child in children:
            out.append((node, key))
            if isinstance(child, dict | list):
                stack.append(child)
    return out


def mutate(seed: Any, ops: list[tuple[str, int, Any, Any]]) -> Any:
    tree = copy.deepcopy(seed)
    for op, pick, value, key in ops:
        places = positions(tree)
        if not places:
            return value
        parent, at = places[pick % len(places)]
        if op == "delete":
            del parent[at]
        elif op == "retype":
            parent[at] = value
        elif op == "rename" and isinstance(parent, dict) and key not in parent:
            items = [(key if k == at else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
        elif op == "insert":
            if isinstance(parent, dict):
                parent[key] = value
            else:
                parent.insert(at, value)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(at, copy.deepcopy(parent[at]))
        elif op == "move":
            source, where = places[(pick // 7) % len(places)]
            parent[at] = copy.deepcopy(source[where])
        elif op == "nest":
            parent[at] = deep(1 + pick % 70, parent[at])
        elif op in ("path", "number"):
            # Aimed retyping: a path becomes a special file, a number a hostile one.
            if op == "path":
                aimed = [p for p in places if isinstance(p[0][p[1]], str) and "/" in p[0][p[1]]]
                pool: list[Any] = SPECIAL_PATHS
            else:
                aimed = [p for p in places if type(p[0][p[1]]) in (int, float)]
                pool = NUMBERS
            if aimed:
                parent, at = aimed[pick % len(aimed)]
                parent[at] = pool[(pick // 11) % len(pool)]
    return tree


def dump(tree: Any) -> bytes:
    out = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    yaml.dump(tree, out)
    # A lone surrogate cannot be UTF-8: written as CESU bytes, it must be refused as such.
    return out.getvalue().encode("utf-8", "surrogatepass")


SNIPPETS = [
    b"? [[a], b]\n: 1\n",
    b"? {a: [1]}\n: 1\n",
    b"[" * 3000,
    b"{a: " * 500,
    b"- " * 200,
    b"&a ",
    b"*a ",
    b"*nowhere ",
    b"<<: *a\n",
    b"!!int ",
    b"!!float ",
    b"!!bool ",
    b"!!omap ",
    b"!!binary ",
    b"!!set ",
    b"!!timestamp ",
    b"!!python/object:os.system ",
    b"!custom ",
    b"%YAML 1.1\n---\n",
    b"%YAML 9.9\n---\n",
    b"%TAG ! tag:x,2000:\n---\n",
    b"---\n",
    b"...\n",
    b"\t",
    b"\x00",
    b"\x1b[2J",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b'"\\e[2J"',
    b'"\\ud800"',
    b"9" * 5000,
    b"0x" + b"f" * 5000,
    b"2001-02-30",
    b".nan",
    b"-.inf",
    b"1e999",
    b"? ",
    b": ",
    b"\n  - ",
    b"#",
    b"'",
    b'"',
    b"|\n",
    b">-\n",
    b"{{",
    b"}}",
    b"\r\n",
    "\u2028".encode(),
]
TEXT_OPS = ["insert", "delete", "duplicate_line", "truncate", "bytes"]
text_mutations = st.lists(
    st.tuples(
        st.sampled_from(TEXT_OPS),
        st.integers(0, 10**6),
        st.one_of(st.sampled_from(SNIPPETS), st.sampled_from(SNIPPETS), st.binary(max_size=8)),
    ),
    min_size=1,
    max_size=4,
)


def mutate_text(data: bytes, ops: list[tuple[str, int, bytes]]) -> bytes:
    for op, pick, chunk in ops:
        at = pick % (len(data) + 1)
        if op in ("insert", "bytes"):
            data = data[:at] + chunk + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + 1 + pick % 40 :]
        elif op == "duplicate_line":
            lines = data.split(b"\n")
            line = pick % len(lines)
            lines.insert(line, lines[line])
            data = b"\n".join(lines)
        elif op == "truncate":
            data = data[:at]
    return data


# -- the project the fuzzers write into --------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("fuzz"))
    (root / "payloads" / "av").mkdir()
    (root / "images" / "vmlinuz").write_text("kernel")
    matrix = root / "matrix"
    (matrix / "prev.json").write_text(json.dumps(PREVIOUS))
    for folder in (matrix, root / "images", root / "configs" / "products"):
        (folder / "loop").symlink_to(folder / "loop")
    os.mkfifo(matrix / "fifo")
    return root


@pytest.fixture(scope="module")
def catalogs() -> CatalogCache:
    return {}


def test_the_seeds_are_valid(project: Path) -> None:
    for i, seed in enumerate(MATRIX_SEEDS):
        path = project / "matrix" / f"seed{i}.yaml"
        path.write_bytes(dump(seed))
        assert load_matrix(path, catalog_root=project).cells
    for name, seed, parse in (
        ("images/lin-a.yaml", IMAGE, parse_image),
        ("configs/hardware/bios-1cpu.yaml", HARDWARE, parse_hardware),
        ("configs/products/av.yaml", PRODUCT, parse_product),
    ):
        path = project / "seeds" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(dump(seed))
        assert parse(path).name == seed["name"]
    path = project / "lab.yaml"
    path.write_bytes(dump(LAB))
    assert load_lab_settings(path).attempts == 2
    path = project / "results.json"
    path.write_text(json.dumps(RESULTS))
    assert load_results(path).cells[0].verdict.value == "crash"


@settings(FUZZ, max_examples=EXAMPLES["matrix"])
@given(seed=st.sampled_from(MATRIX_SEEDS), ops=mutations)
def test_mutated_matrices_load_or_fail_as_input_errors(
    project: Path, catalogs: CatalogCache, seed: dict[str, Any], ops: Any
) -> None:
    path = project / "matrix" / "fuzz.yaml"
    path.write_bytes(dump(mutate(seed, ops)))
    usable(only_input_errors(lambda: load_matrix(path, catalog_root=project, catalogs=catalogs)))


@settings(FUZZ, max_examples=EXAMPLES["matrix_text"])
@given(seed=st.sampled_from(MATRIX_SEEDS), ops=text_mutations)
def test_matrix_text_mutations_load_or_fail_as_input_errors(
    project: Path, catalogs: CatalogCache, seed: dict[str, Any], ops: Any
) -> None:
    path = project / "matrix" / "fuzz-text.yaml"
    path.write_bytes(mutate_text(dump(seed), ops))
    usable(only_input_errors(lambda: load_matrix(path, catalog_root=project, catalogs=catalogs)))


CATALOG_SEEDS = [
    ("images", "lin-a.yaml", IMAGE),
    ("configs/hardware", "bios-1cpu.yaml", HARDWARE),
    ("configs/products", "av.yaml", PRODUCT),
]


@settings(FUZZ, max_examples=EXAMPLES["catalog"])
@given(
    which=st.sampled_from(CATALOG_SEEDS),
    ops=mutations,
    text_ops=st.one_of(st.just([]), text_mutations),
)
def test_mutated_catalog_files_load_or_fail_as_catalog_errors(
    project: Path, which: tuple[str, str, dict[str, Any]], ops: Any, text_ops: Any
) -> None:
    folder, name, seed = which
    path = project / folder / name
    matrix = project / "matrix" / "catalog-fuzz.yaml"
    matrix.write_bytes(dump(MATRIX_SEEDS[0]))
    original = path.read_bytes()
    path.write_bytes(mutate_text(dump(mutate(seed, ops)), text_ops))
    try:
        # No catalog cache: the catalog is read again, with the mutated file in it.
        usable(only_input_errors(lambda: load_matrix(matrix, catalog_root=project)))
    finally:
        path.write_bytes(original)


@settings(FUZZ, max_examples=EXAMPLES["results"])
@given(ops=mutations, text_ops=st.one_of(st.just([]), text_mutations), as_previous=st.booleans())
def test_mutated_results_load_or_fail_as_input_errors(
    project: Path, catalogs: CatalogCache, ops: Any, text_ops: Any, as_previous: bool
) -> None:
    try:
        text = json.dumps(mutate(RESULTS, ops)).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):  # a key JSON cannot hold: the mutation, not the loader
        text = json.dumps(RESULTS).encode()
    data = mutate_text(text, text_ops)
    if as_previous:
        (project / "matrix" / "prev-fuzz.json").write_bytes(data)
        seed = copy.deepcopy(MATRIX_SEEDS[1])
        seed["strategy"]["previous"] = "prev-fuzz.json"
        path = project / "matrix" / "fuzz-previous.yaml"
        path.write_bytes(dump(seed))
        only_input_errors(lambda: load_matrix(path, catalog_root=project, catalogs=catalogs))
    else:
        path = project / "results-fuzz.json"
        path.write_bytes(data)
        only_input_errors(lambda: load_results(path))


@settings(FUZZ, max_examples=EXAMPLES["lab"])
@given(ops=mutations, text_ops=st.one_of(st.just([]), text_mutations))
def test_mutated_lab_settings_load_or_fail_as_input_errors(
    project: Path, ops: Any, text_ops: Any
) -> None:
    path = project / "lab-fuzz.yaml"
    path.write_bytes(mutate_text(dump(mutate(LAB, ops)), text_ops))
    only_input_errors(lambda: load_lab_settings(path))
