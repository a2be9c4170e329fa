"""The golden image's ``boot_complete`` pattern: checked when the catalog loads, and the one the
demo images ship matches the line their boot script really prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compatlab.catalog import parse_image
from compatlab.errors import CatalogError
from tests.support.catalogs import write

ROOT = Path(__file__).resolve().parents[2]
RC_BOOT = ROOT / "images/recipes/tiny-linux/rootfs/etc/compatlab/rc.boot"

IMAGE = """
name: lin
os_family: linux
build: "1.0"
disk: /nonexistent/lin.qcow2
firmware: [bios]
channel: agent
"""


def image(tmp_path: Path, extra: str) -> Path:
    return write(tmp_path / "images" / "lin.yaml", IMAGE + extra)


def test_absent_or_null_is_none(tmp_path: Path) -> None:
    assert parse_image(image(tmp_path, "")).boot_complete is None
    assert parse_image(image(tmp_path, "boot_complete: null\n")).boot_complete is None


def test_pattern_is_compiled_at_load(tmp_path: Path) -> None:
    found = parse_image(image(tmp_path, "boot_complete: '^login: \\w+ ready$'\n")).boot_complete
    assert isinstance(found, re.Pattern)
    assert found.search("login: console ready")
    assert not found.search("  login: console ready")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'^boot (complete'", "missing ), unterminated subpattern at position 6"),
        ("'[z-a]'", "not a valid regular expression: bad character range"),
        ("''", "must be a non-empty string"),
        ("'.*'", "matches an empty line"),
        ("'^(ready)?$'", "matches an empty line"),
        (f"'{'a' * 501}'", "501 characters long"),
        ('"one\\ntwo"', "holds a line break"),
        ("[services started]", "must be a non-empty string, not a list"),
    ],
)
def test_bad_pattern_names_file_and_line(tmp_path: Path, value: str, message: str) -> None:
    path = image(tmp_path, f"# a comment\nboot_complete: {value}\n")
    with pytest.raises(CatalogError, match=re.escape(message)) as info:
        parse_image(path)
    assert info.value.file == path
    assert info.value.line == 8
    assert str(info.value).startswith(f"{path}:8:")


def test_longest_allowed_pattern_loads(tmp_path: Path) -> None:
    pattern = parse_image(image(tmp_path, f"boot_complete: '{'a' * 500}'\n")).boot_complete
    assert pattern is not None and len(pattern.pattern) == 500


@pytest.mark.parametrize("name", ["tinylinux-a", "tinylinux-b"])
def test_demo_images_mark_the_line_rc_boot_prints_before_the_agent(name: str) -> None:
    pattern = parse_image(ROOT / "images" / f"{name}.yaml").boot_complete
    assert pattern is not None
    script = RC_BOOT.read_text(encoding="utf-8")
    # The marker must come before the agent is started: a dead agent must not hide it.
    assert script.index('say "services started"') < script.index("qemu-ga -d")
    assert pattern.search("compatlab-guest: services started")
    for other in (
        "compatlab-guest: boot 1 started",
        "compatlab-guest: agent started",
        "compatlab-guest: boot 1 complete",
        "[    8.1] compatlab-guest: services started",  # an echo inside a kernel line
    ):
        assert not pattern.search(other)


@pytest.mark.parametrize("name", ["win10-22h2", "win11-23h2", "win11-24h2", "server2022"])
def test_windows_images_have_no_marker_by_default(name: str) -> None:
    path = ROOT / "images" / f"{name}.yaml"
    assert parse_image(path).boot_complete is None
    assert "# boot_complete: " in path.read_text(encoding="utf-8")
