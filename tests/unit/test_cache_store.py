"""The layer store on disk: atomic publish, one build per key across processes and threads,
damaged layers rebuilt with a message, LRU eviction that never touches a layer in use.

Layers here are real qcow2 files made by ``qemu-img create`` (empty: no VM is booted), with a
UEFI variable file and a TPM state folder of made-up bytes beside them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from compatlab.cache import KeyInputs, LayerStore, ProductInput, cache_key
from compatlab.cache.store import LAYER_DISK, MANIFEST, MEMORY_STATE, TPM_STATE, UEFI_VARS
from compatlab.errors import StorageError

INPUTS = KeyInputs(
    image={"disk": "d" * 64},
    hardware={"vcpus": 1, "firmware": "uefi", "tpm": True},
    products=(ProductInput("acme-av", "a" * 64, "install"),),
)
KEY = cache_key(INPUTS)
OTHER_KEYS = [cache_key(KeyInputs({"disk": str(n)}, {}, ())) for n in range(3)]

REPO = Path(__file__).resolve().parents[2]


def write_layer(folder: Path, *, padding: int = 0, memory: bool = False) -> None:
    """What a layer build leaves: the disk, UEFI variables and TPM state (and with ``memory``
    a file that starts as a libvirt save image does)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(folder / LAYER_DISK), "16M"], check=True
    )
    (folder / UEFI_VARS).write_bytes(b"\x01" * (128 * 1024 + padding))
    (folder / TPM_STATE).mkdir()
    (folder / TPM_STATE / "tpm2-00.permall").write_bytes(b"\x02" * 4096)
    if memory:
        (folder / MEMORY_STATE).write_bytes(b"LibvirtQemudSave" + b"\x03" * 4096)


class Builder:
    """Counts its builds; returns a baseline boot time."""

    def __init__(self, seconds: float = 12.5, padding: int = 0, memory: bool = False) -> None:
        self.calls = 0
        self.seconds = seconds
        self.padding = padding
        self.memory = memory

    def __call__(self, folder: Path) -> float:
        self.calls += 1
        write_layer(folder, padding=self.padding, memory=self.memory)
        return self.seconds


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self) -> None:
        self.now += timedelta(minutes=1)


def test_a_built_layer_is_published_with_its_manifest_and_then_found(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    build = Builder(seconds=12.5)
    with store.use(KEY, INPUTS, build, label="lin/uefi/acme-av") as layer:
        assert layer.built and layer.rebuilt_because is None
        assert layer.folder == tmp_path / "cache" / KEY
        assert layer.disk.read_bytes()[:4] == b"QFI\xfb"
        assert layer.uefi_vars == layer.folder / UEFI_VARS
        assert layer.tpm_state == layer.folder / TPM_STATE
    manifest = json.loads((tmp_path / "cache" / KEY / MANIFEST).read_text())
    assert manifest["key"] == KEY and manifest["inputs"] == INPUTS.to_json()
    assert manifest["baseline_boot_seconds"] == 12.5
    assert manifest["files"][f"{TPM_STATE}/tpm2-00.permall"] == 4096
    assert manifest["label"] == "lin/uefi/acme-av"
    with store.use(KEY, INPUTS, build) as again:
        assert not again.built and again.manifest.baseline_boot_seconds == 12.5
    assert build.calls == 1
    assert not list((tmp_path / "cache" / ".tmp").iterdir())


def test_a_failed_build_publishes_nothing_and_leaves_nothing(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)

    def broken(folder: Path) -> float:
        write_layer(folder)
        raise RuntimeError("the baseline boot hung")

    with pytest.raises(RuntimeError, match="hung"), store.use(KEY, INPUTS, broken):
        pass
    assert not (tmp_path / "cache" / KEY).exists()
    assert not list((tmp_path / "cache" / ".tmp").iterdir())
    with store.use(KEY, INPUTS, Builder()) as layer:
        assert layer.built


def test_a_build_that_leaves_no_disk_is_a_storage_error(tmp_path: Path) -> None:
    with (
        pytest.raises(StorageError, match=LAYER_DISK),
        LayerStore(tmp_path).use(KEY, INPUTS, lambda folder: 1.0),
    ):
        pass
    assert not (tmp_path / "cache" / KEY).exists()


def test_a_key_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="not a cache key"),
        LayerStore(tmp_path).use("../../etc", INPUTS, Builder()),
    ):
        pass


# -- atomic publish, one build per key ------------------------------------------------------------

# A builder in another process: waits for `go`, counts its build in `counter`, writes half of a
# layer, says `started`, then (unless told to finish) sleeps until it is killed.
_PROCESS = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from compatlab.cache import KeyInputs, LayerStore
    from compatlab.cache.store import LAYER_DISK
    root, key, inputs, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    inputs = KeyInputs.from_json(__import__("json").loads(inputs))
    while not (root / "go").exists():
        time.sleep(0.01)

    def build(folder):
        with open(root / "counter", "a") as counter:
            counter.write(f"{os.getpid()}\\n")
        import subprocess
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / LAYER_DISK), "16M"],
                       check=True)
        (folder / "VARS.fd").write_bytes(b"half")
        (root / "started").touch()
        if mode == "hang":
            time.sleep(3600)
        time.sleep(0.5)  # long enough for the others to be waiting on the lock
        return 9.0

    with LayerStore(root).use(key, inputs, build) as layer:
        print("built" if layer.built else "found")
    """
)


def _spawn(root: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _PROCESS, str(root), KEY, json.dumps(INPUTS.to_json()), mode],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_reader_during_a_build_sees_no_layer_and_a_killed_build_leaves_none(
    tmp_path: Path,
) -> None:
    builder = _spawn(tmp_path, "hang")
    try:
        (tmp_path / "go").touch()
        _wait_for(tmp_path / "started")
        store = LayerStore(tmp_path)
        assert not (tmp_path / "cache" / KEY).exists()
        assert store.entries() == []
        [building] = (tmp_path / "cache" / ".tmp").iterdir()  # the half-written layer is here
        assert (building / LAYER_DISK).exists()
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.communicate()
    assert LayerStore(tmp_path).entries() == []
    with LayerStore(tmp_path).use(KEY, INPUTS, Builder()) as layer:
        assert layer.built and layer.rebuilt_because is None
    assert not list((tmp_path / "cache" / ".tmp").iterdir())  # the killed build's folder is gone


def test_two_processes_asking_for_one_key_build_it_once(tmp_path: Path) -> None:
    processes = [_spawn(tmp_path, "finish") for _ in range(3)]
    (tmp_path / "go").touch()
    outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0]
    assert len((tmp_path / "counter").read_text().splitlines()) == 1
    assert sorted(outputs) == ["built", "found", "found"]


def test_two_threads_asking_for_one_key_build_it_once(tmp_path: Path) -> None:
    build = Builder()

    def slow(folder: Path) -> float:
        time.sleep(0.3)  # long enough for the other threads to be waiting on the lock
        return build(folder)

    seen: list[bool] = []

    def worker() -> None:
        with LayerStore(tmp_path).use(KEY, INPUTS, slow) as layer:
            seen.append(layer.built)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert build.calls == 1
    assert sorted(seen) == [False, False, True]


# -- damaged layers -------------------------------------------------------------------------------


def _no_manifest(folder: Path) -> None:
    (folder / MANIFEST).unlink()


def _garbled_manifest(folder: Path) -> None:
    (folder / MANIFEST).write_text('{"schema": 1, "key": ')


def _truncated_disk(folder: Path) -> None:
    with (folder / LAYER_DISK).open("r+b") as handle:
        handle.truncate(100)


def _no_disk(folder: Path) -> None:
    (folder / LAYER_DISK).unlink()


def _not_qcow2(folder: Path) -> None:
    with (folder / LAYER_DISK).open("r+b") as handle:
        handle.write(b"\0\0\0\0")


def _no_tpm_state(folder: Path) -> None:
    (folder / TPM_STATE / "tpm2-00.permall").unlink()


def _memory_not_a_save_image(folder: Path) -> None:
    with (folder / MEMORY_STATE).open("r+b") as handle:
        handle.write(b"\0" * 16)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_manifest, "has no manifest.json"),
        (_garbled_manifest, "unreadable manifest.json"),
        (_truncated_disk, "layer.qcow2 of 100 bytes"),
        (_no_disk, "missing layer.qcow2"),
        (_not_qcow2, "not qcow2"),
        (_no_tpm_state, "missing tpm/tpm2-00.permall"),
        (_memory_not_a_save_image, "memory.save that is not a libvirt save image"),
    ],
)
def test_a_damaged_layer_is_rebuilt_with_a_message(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
    message: str,
) -> None:
    store = LayerStore(tmp_path)
    build = Builder(memory=True)
    with store.use(KEY, INPUTS, build) as layer:
        assert layer.memory == layer.folder / MEMORY_STATE
    damage(tmp_path / "cache" / KEY)
    [entry] = store.entries()
    assert entry.manifest is None and entry.problem is not None and message in entry.problem
    with (
        caplog.at_level(logging.WARNING, logger="compatlab.cache"),
        store.use(KEY, INPUTS, build) as layer,
    ):
        assert layer.built and layer.rebuilt_because is not None
        assert message in layer.rebuilt_because
    assert build.calls == 2
    assert f"cached layer {KEY} " in caplog.text and "building it again" in caplog.text
    assert message in caplog.text
    [entry] = store.entries()
    assert entry.manifest is not None


def test_a_layer_a_cell_could_not_restore_is_built_again_by_the_next_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LayerStore(tmp_path)
    build = Builder(memory=True)
    with store.use(KEY, INPUTS, build):
        # Marked while in use (under the shared lock): the files stay for whoever holds it.
        with caplog.at_level(logging.WARNING, logger="compatlab.cache"):
            store.condemn(KEY, "libvirt could not restore memory.save: bad stream")
        assert (tmp_path / "cache" / KEY / MEMORY_STATE).is_file()
    assert "marked damaged: libvirt could not restore" in caplog.text
    with store.use(KEY, INPUTS, build) as layer:
        assert layer.built
        assert layer.rebuilt_because == (
            "was marked damaged: libvirt could not restore memory.save: bad stream"
        )
    with store.use(KEY, INPUTS, build) as layer:  # the new layer carries no mark
        assert not layer.built
    assert build.calls == 2


def test_a_layer_without_memory_state_is_booted(tmp_path: Path) -> None:
    with LayerStore(tmp_path).use(KEY, INPUTS, Builder()) as layer:
        assert layer.memory is None


def test_a_missing_cache_folder_is_built_without_complaint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), LayerStore(tmp_path).use(KEY, INPUTS, Builder()):
        pass
    assert caplog.text == ""


# -- pruning --------------------------------------------------------------------------------------


def _fill(store: LayerStore, clock: Clock, keys: list[str]) -> None:
    for key in keys:
        clock.advance()
        with store.use(key, KeyInputs({"disk": key}, {}, ()), Builder()):
            pass


def test_prune_to_a_size_evicts_the_least_recently_used(tmp_path: Path) -> None:
    clock = Clock()
    store = LayerStore(tmp_path, now=clock)
    a, b, c = OTHER_KEYS
    _fill(store, clock, [a, b, c])
    clock.advance()
    with store.use(a, KeyInputs({"disk": a}, {}, ()), Builder()) as layer:  # a used again
        assert not layer.built
    assert [entry.key for entry in store.entries()] == [b, c, a]
    total = sum(entry.bytes for entry in store.entries())
    report = store.prune(max_bytes=total - 1)
    assert [entry.key for entry in report.removed] == [b]
    assert {entry.key for entry in store.entries()} == {a, c}
    assert report.remaining_bytes == sum(entry.bytes for entry in store.entries()) <= total - 1
    assert not (tmp_path / "cache" / b).exists()


def test_prune_never_evicts_a_layer_in_use(tmp_path: Path) -> None:
    clock = Clock()
    store = LayerStore(tmp_path, now=clock)
    a, b, _ = OTHER_KEYS
    _fill(store, clock, [a, b])
    with store.use(a, KeyInputs({"disk": a}, {}, ()), Builder()):  # a is the most recent...
        clock.advance()
        with store.use(b, KeyInputs({"disk": b}, {}, ()), Builder()):  # ...then b; both in use
            [in_use_a, in_use_b] = store.entries()
            assert in_use_a.in_use and in_use_b.in_use
            report = store.prune(max_bytes=0)
            assert report.removed == [] and [e.key for e in report.in_use] == [a, b]
            report = store.prune(everything=True)
            assert report.removed == [] and len(report.in_use) == 2
        report = store.prune(everything=True)
        assert [e.key for e in report.removed] == [b] and [e.key for e in report.in_use] == [a]
        assert (tmp_path / "cache" / a / LAYER_DISK).exists()
    assert [e.key for e in store.prune(everything=True).removed] == [a]
    assert store.entries() == []


def test_a_size_bound_evicts_after_each_build_but_never_the_new_layer(tmp_path: Path) -> None:
    clock = Clock()
    store = LayerStore(tmp_path, now=clock, max_bytes=1)
    a, b, _ = OTHER_KEYS
    _fill(store, clock, [a])
    with store.use(b, KeyInputs({"disk": b}, {}, ()), Builder()) as layer:
        assert layer.built and layer.disk.exists()
        assert [entry.key for entry in store.entries()] == [b]


def test_prune_removes_damaged_layers_and_killed_builds_leftovers(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    a, b, _ = OTHER_KEYS
    _fill(store, Clock(), [a, b])
    _no_manifest(tmp_path / "cache" / a)
    leftover = tmp_path / "cache" / ".tmp" / f"{b}.x1y2"
    leftover.mkdir()
    report = store.prune()
    assert [entry.key for entry in report.removed] == [a]
    assert not leftover.exists()
    assert [entry.key for entry in store.entries()] == [b]
