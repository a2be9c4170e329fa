"""Loopback ports for forwarded guest services: leased without races, freed when the holder dies."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from compatlab.errors import StorageError
from compatlab.lab.ports import lease_port, tidy_leases

PORTS = range(47900, 47910)


def _lease_and_hold(root: str) -> int:
    lease = lease_port(Path(root), "worker", ports=PORTS)
    # Hold it until the pool shuts down: the other workers must not get it meanwhile.
    _HELD.append(lease)
    return lease.port


_HELD: list[object] = []


def test_concurrent_processes_never_share_a_port(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        ports = list(pool.map(_lease_and_hold, [str(tmp_path)] * 4))
    assert len(set(ports)) == 4


def test_one_process_gets_distinct_ports_until_the_range_is_used_up(tmp_path: Path) -> None:
    leases = [lease_port(tmp_path, "t", ports=range(47910, 47913)) for _ in range(3)]
    assert sorted(lease.port for lease in leases) == [47910, 47911, 47912]
    with pytest.raises(StorageError, match="no free port in 47910-47912"):
        lease_port(tmp_path, "t", ports=range(47910, 47913))
    next(lease for lease in leases if lease.port == 47911).release()
    assert lease_port(tmp_path, "t", ports=range(47910, 47913)).port == 47911


def test_a_port_something_else_listens_on_is_passed_over(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 47920))
        busy.listen()
        lease = lease_port(tmp_path, "t", ports=range(47920, 47922))
        assert lease.port == 47921


def test_a_killed_holder_gives_its_port_back_and_gc_tidies_the_file(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from compatlab.lab.ports import lease_port
        lease = lease_port(Path({str(tmp_path)!r}), "doomed", ports=range(47930, 47931))
        print(lease.port, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "47930"
    with pytest.raises(StorageError):
        lease_port(tmp_path, "t", ports=range(47930, 47931))
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert tidy_leases(tmp_path) == 1
    assert lease_port(tmp_path, "t", ports=range(47930, 47931)).port == 47930
