"""Building the golden images that come with a recipe, and the demo payloads.

A golden image whose catalog entry names a ``recipe`` is built by
``images/recipes/<recipe>/build.sh OUTDIR VARIANT`` into the folder of its ``disk``. The recipe
caches by its own manifest (inputs' checksums), so calling this when nothing changed is cheap.
Payload folders that need building (a kernel module, say) are built by ``payloads/build.sh``.
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


def buildable_images(project: Path) -> list[GoldenImage]:
    """The catalog's images that have a recipe, in name order."""
    images = [parse_image(path) for path in sorted((project / "images").glob("*.yaml"))]
    return [image for image in images if image.recipe]


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
    for image in buildable_images(project):
        recipe = project / "images" / "recipes" / str(image.recipe) / "build.sh"
        if not recipe.is_file():
            raise ImageError(f"image {image.name}: recipe {recipe} does not exist")
        step = _run(
            ["bash", str(recipe), str(image.disk.parent), str(image.variant or image.name)],
            f"image {image.name}",
            project,
        )
        report(step)
        steps.append(step)
    payloads = project / "payloads" / "build.sh"
    if payloads.is_file():
        step = _run(["bash", str(payloads)], "demo payloads", project)
        report(step)
        steps.append(step)
    return steps
