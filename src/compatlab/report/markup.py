"""What every page of the report shares: the Jinja2 environment (autoescape on, every value
cleaned and bounded by :func:`shown`), the Content-Security-Policy, and the index's one script.

Cell ids, reasons, serial output and installer output are all guest- or user-controlled text.
Every ``{{ value }}`` of a template goes through :func:`shown` (no terminal escapes or control
characters, at most :data:`VALUE_LIMIT` characters) and then autoescape; markup written in
Python (:mod:`.svg`, :mod:`.tables`) goes through :func:`text`, which does both. The policy
allows no script but the index's own, by its hash, so a value that got past the escaping still
could not run.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from compatlab.report.cost import cost_table
from compatlab.report.evidence import GUEST_LINE, marked
from compatlab.report.index import TAGS
from compatlab.report.svg import boots_svg, strip_svg, trend_svg
from compatlab.text import cap_text, printable

__all__ = ["NO_SCRIPT", "VALUE_LIMIT", "environment", "policy", "script", "shown", "text"]

TEMPLATES = Path(__file__).parent / "templates"
VALUE_LIMIT = 16 * 1024  # characters of any other value shown on a page
_POLICY = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "script-src {script}; base-uri 'none'; form-action 'none'"
)


def policy(source: str) -> str:
    """The Content-Security-Policy of a page whose only script source is ``source``."""
    return _POLICY.format(script=source)


NO_SCRIPT = policy("'none'")  # an evidence page's


def shown(value: object) -> object:
    """Every ``{{ value }}`` of a page: text without control characters (guest text carries
    terminal escapes), bounded. Escaping follows, by autoescape."""
    # Most values are plain str: one check, not two.
    if value.__class__ is not str and (isinstance(value, Markup) or not isinstance(value, str)):
        return value
    if len(value) <= VALUE_LIMIT and value.isprintable():
        return value  # most values: nothing to cut or clean (isprintable: no control at all)
    return printable(cap_text(value, VALUE_LIMIT))


def text(value: str) -> str:
    """``value`` as :func:`shown` and autoescape put it on a page, for markup written in Python
    (escaped: a :class:`~markupsafe.Markup`, which is a ``str``)."""
    if len(value) <= VALUE_LIMIT and value.isprintable():
        return escape(value)  # most values: one check, one escape (40,000 of them an index)
    return escape(printable(cap_text(value, VALUE_LIMIT)))


@cache
def script() -> tuple[Markup, str]:
    """The index's script, and its CSP source: the only script a page may run."""
    source = (TEMPLATES / "filters.js").read_text(encoding="utf-8")
    if "</" in source:
        raise AssertionError("filters.js must not hold '</': it is inlined in a <script>")
    digest = base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")
    return Markup(source), f"'sha256-{digest}'"


def environment() -> Environment:
    """A Jinja2 environment for the report's templates (one per render: templates compile once
    in it)."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template: reasons and serial output are hostile text
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=shown,
    )
    env.globals["tags"] = TAGS
    env.filters["guest"] = lambda value, limit=GUEST_LINE: marked(str(value), limit)
    env.filters["percent_share"] = lambda share: f"{share * 100:.1f}%"
    env.filters["strip_svg"] = strip_svg
    env.filters["boots_svg"] = boots_svg
    env.filters["trend_svg"] = trend_svg
    env.filters["cost_table"] = cost_table
    return env
