"""Building the golden images that come with a recipe, and the demo payloads.

A golden image whose catalog entry names a ``recipe`` is built by
``images/recipes/<recipe>/build.sh OUTDIR VARIANT`` into the folder of its ``disk``. The recipe
caches by its own manifest (inputs' checksums), so calling this when nothing changed is cheap.
Payload folders that need building (a kernel module, say) are built by ``payloads/build.sh``.

A recipe without ``build.sh`` needs something nobody downloads for you (the Windows recipe needs
a Windows ISO and the virtio-win ISO): it is run by hand, as its README says. ``build_all``
reports such images as skipped, pointing at that README, and goes on: ``make test`` on a fresh
machine must not stop on an image it was never meant to build.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compatlab.catalog import GoldenImage, parse_image
from compatlab.errors import ImageError

__all__ = ["BuildStep", "build_all", "buildable_images"]


@dataclass(frozen=True)
class BuildStep:
    """One thing built (or found up to date), and how long it took."""

    what: str
    seconds: float
    output: str
    skipped: bool = False


def _recipe_images(project: Path) -> list[GoldenImage]:
    images = [parse_image(path) for path in sorted((project / "images").glob("*.yaml"))]
    return [image for image in images if image.recipe]


def _recipe(project: Path, image: GoldenImage) -> Path:
    return project / "images" / "recipes" / str(image.recipe)


def buildable_images(project: Path) -> list[GoldenImage]:
    """The catalog's images whose recipe builds unattended here (it has a ``build.sh``)."""
    return [
        image
        for image in _recipe_images(project)
        if (_recipe(project, image) / "build.sh").is_file()
    ]


def _run(command: list[str], what: str, cwd: Path) -> BuildStep:
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ImageError(f"cannot run {command[0]} to build {what}: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ImageError(f"building {what} failed (exit {done.returncode}):\n{tail}")
    return BuildStep(what, time.monotonic() - started, done.stdout.strip())


def build_all(
    project: Path, *, report: Callable[[BuildStep], None] = lambda step: None
) -> list[BuildStep]:
    """Build every recipe image and the demo payloads; each step reported as it ends."""
    steps = []
    for image in _recipe_images(project):
        recipe = _recipe(project, image)
        if not recipe.is_dir():
            raise ImageError(f"image {image.name}: recipe {recipe} does not exist")
        script = recipe / "build.sh"
        if script.is_file():
            step = _run(
                ["bash", str(script), str(image.disk.parent), str(image.variant or image.name)],
                f"image {image.name}",
                project,
            )
        else:
            readme = (recipe / "README.md").relative_to(project)
            step = BuildStep(
                f"image {image.name}",
                0.0,
                f"not built here: its recipe needs installation media; see {readme}",
                skipped=True,
            )
        report(step)
        steps.append(step)
    payloads = project / "payloads" / "build.sh"
    if payloads.is_file():
        step = _run(["bash", str(payloads)], "demo payloads", project)
        report(step)
        steps.append(step)
    return steps
