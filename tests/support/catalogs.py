"""Small catalogs written to a temporary folder, for matrix tests."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def make_project(
    root: Path,
    *,
    builds: Iterable[str] = ("lin-a", "lin-b"),
    windows_builds: Iterable[str] = ("win11",),
    hardware: Iterable[str] = ("bios-1cpu", "uefi-2cpu"),
    products: Iterable[str] = ("av", "edr", "dlp"),
    windows_only_products: Iterable[str] = ("winav",),
) -> Path:
    """A project folder with images/, configs/hardware, configs/products and a payload."""
    for name in builds:
        write(
            root / "images" / f"{name}.yaml",
            f"""
            name: {name}
            os_family: linux
            build: "1.0"
            disk: /nonexistent/{name}.qcow2
            firmware: [bios, uefi]
            channel: agent
        """,
        )
    for name in windows_builds:
        write(
            root / "images" / f"{name}.yaml",
            f"""
            name: {name}
            os_family: windows
            build: "26100"
            disk: /nonexistent/{name}.qcow2
            firmware: [uefi]
            channel: winrm
            credentials: {{username: lab, password_env: LAB_PASSWORD}}
        """,
        )
    for name in hardware:
        firmware = "uefi" if name.startswith("uefi") else "bios"
        write(
            root / "configs" / "hardware" / f"{name}.yaml",
            f"""
            name: {name}
            vcpus: 1
            memory: 256MiB
            firmware: {firmware}
        """,
        )
    for name in products:
        write(
            root / "configs" / "products" / f"{name}.yaml",
            f"""
            name: {name}
            vendor: Test
            linux: {{payload: ../../payloads/{name}, install: "sh {{payload}}/i.sh",
                     uninstall: "sh {{payload}}/u.sh"}}
            windows: {{payload: ../../payloads/{name}, install: "i.cmd", uninstall: "u.cmd"}}
        """,
        )
    for name in windows_only_products:
        write(
            root / "configs" / "products" / f"{name}.yaml",
            f"""
            name: {name}
            vendor: Test
            windows: {{payload: ../../payloads/{name}, install: "i.cmd", uninstall: "u.cmd"}}
        """,
        )
    (root / "payloads" / "candidate").mkdir(parents=True, exist_ok=True)
    (root / "matrix").mkdir(exist_ok=True)
    return root


CANDIDATE = """
candidate:
  name: sensor
  version: "1.2.3"
  payload: ../payloads/candidate
  install: {linux: "sh {payload}/install.sh", windows: "install.cmd"}
  uninstall: {linux: "sh {payload}/uninstall.sh", windows: "uninstall.cmd"}
  exit_codes: {success: [0], reboot: [3010]}
"""


def matrix(root: Path, body: str, name: str = "m.yaml") -> Path:
    """A matrix file with the standard candidate and the given body (axes etc.)."""
    return write(root / "matrix" / name, CANDIDATE + textwrap.dedent(body))


def stand_in_project(root: Path, scenario: str, stand_ins: str, capacity: str) -> Path:
    """A project whose four cells (lin-a, lin-b x none, av on bios-1cpu) run on libvirt's
    ``test:///default`` driver with the scripted guests of ``stand_ins`` (a plugin module,
    loaded with ``-p stand_ins``), under ``lab.yaml`` with ``capacity`` (YAML)."""
    root = make_project(root, hardware=("bios-1cpu",))
    for name in ("av", "candidate"):
        write(root / "payloads" / name / "install.sh", "exit 0\n")
        write(root / "payloads" / name / "i.sh", "exit 0\n")
    matrix(root, "axes: {build: [lin-a, lin-b], hardware: [bios-1cpu], products: [[], [av]]}\n")
    (root / "matrix" / "m.yaml").write_text((root / "matrix" / "m.yaml").read_text() + scenario)
    write(
        root / "lab.yaml",
        f"hosts: [{{uri: 'test:///default'}}]\nstorage: {root / 'storage'}\nattempts: 1\n"
        f"capacity: {capacity}\n",
    )
    write(root / "stand_ins.py", stand_ins)
    return root
