"""`compatlab images build` builds what this machine can build, and says what it cannot.

CI runs `make test` on a clean clone, and `make images` runs `compatlab images build` first. The
catalog holds Windows images whose recipe needs installation media nobody downloads for you; a
build that stops on them stops the whole suite (it did: CI failed after 34 s on
`recipe .../windows/build.sh does not exist`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compatlab.errors import ImageError
from compatlab.images import BuildStep, build_all, buildable_images

PROJECT = Path(__file__).resolve().parents[2]


def _image(project: Path, name: str, recipe: str, *, os_family: str = "linux") -> None:
    (project / "images").mkdir(exist_ok=True)
    (project / "images" / f"{name}.yaml").write_text(
        f"name: {name}\nos_family: {os_family}\nbuild: '1'\n"
        f"disk: {project}/disks/{name}/disk.qcow2\nfirmware: [bios]\nchannel: agent\n"
        f"recipe: {recipe}\n"
    )


def _project(tmp_path: Path) -> Path:
    (tmp_path / "matrix").mkdir()
    auto = tmp_path / "images" / "recipes" / "auto"
    auto.mkdir(parents=True)
    (auto / "build.sh").write_text(
        'mkdir -p "$1" && echo "built $2" > "$1/disk.qcow2" && echo ok\n'
    )
    media = tmp_path / "images" / "recipes" / "media"
    media.mkdir()
    (media / "README.md").write_text("# needs an ISO\n")
    (media / "build.py").write_text("raise SystemExit('needs --windows-iso')\n")
    _image(tmp_path, "tiny", "auto")
    _image(tmp_path, "win", "media", os_family="windows")
    return tmp_path


def test_the_repositorys_windows_images_are_not_built_unattended() -> None:
    names = {image.name for image in buildable_images(PROJECT)}
    assert "tinylinux-a" in names
    assert not {name for name in names if name.startswith(("win", "server"))}


def test_a_recipe_that_needs_media_is_reported_not_built_and_not_an_error(tmp_path: Path) -> None:
    project = _project(tmp_path)
    seen: list[BuildStep] = []
    steps = build_all(project, report=seen.append)
    assert [step.what for step in steps] == ["image tiny", "image win"]
    built, manual = steps
    assert not built.skipped
    assert (project / "disks" / "tiny" / "disk.qcow2").read_text() == "built tiny\n"
    assert manual.skipped
    assert "images/recipes/media/README.md" in manual.output
    assert not (project / "disks" / "win").exists()
    assert seen == steps


def test_a_recipe_folder_that_does_not_exist_is_still_an_error(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _image(project, "ghost", "nowhere")
    with pytest.raises(ImageError, match=r"ghost.*recipe.*nowhere"):
        build_all(project)
