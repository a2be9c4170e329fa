"""YAML that remembers where every value came from.

Every user-facing file (matrix, image, hardware, product) is read through :func:`load`, which
returns a :class:`Node`: a value plus its file, line and column. Validation code asks a node for
the type it expects (``node.text()``, ``node.mapping(...)``) and gets an :class:`InputError` that
points at the exact place when the value is wrong -- so a typo in a 5,000-cell matrix fails in a
second with ``matrix/nightly.yaml:14:12: unknown hardware 'bios-2cpux' (did you mean
'bios-2cpu'?)``.

ruamel.yaml's round-trip loader is used because it keeps line and column for every mapping key,
mapping value and sequence item (``.lc``), and it reads YAML 1.2, where ``on``/``no`` are strings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from compatlab.errors import InputError

__all__ = ["Node", "did_you_mean", "load"]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest known word, or None if nothing is close."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


class Node:
    """A YAML value and where it stands. Positions are 1-based."""

    __slots__ = ("column", "error_type", "file", "line", "value")

    def __init__(
        self, value: Any, file: Path, line: int, column: int, error_type: type[InputError]
    ) -> None:
        self.value = value
        self.file = file
        self.line = line
        self.column = column
        self.error_type = error_type

    def __repr__(self) -> str:
        return f"Node({self.value!r} at {self.file}:{self.line}:{self.column})"

    # -- errors -------------------------------------------------------------------------------

    def error(self, message: str, hint: str | None = None) -> InputError:
        return self.error_type(
            message, file=self.file, line=self.line, column=self.column, hint=hint
        )

    # -- type checks ----------------------------------------------------------------------------

    def _kind(self) -> str:
        if self.value is None:
            return "nothing"
        if isinstance(self.value, bool):
            return "a boolean"
        if isinstance(self.value, int):
            return "a number"
        if isinstance(self.value, float):
            return "a number"
        if isinstance(self.value, str):
            return "a string"
        if isinstance(self.value, CommentedMap):
            return "a mapping"
        if isinstance(self.value, CommentedSeq):
            return "a list"
        return type(self.value).__name__

    def is_null(self) -> bool:
        return self.value is None

    def is_mapping(self) -> bool:
        return isinstance(self.value, CommentedMap)

    def is_list(self) -> bool:
        return isinstance(self.value, CommentedSeq)

    def text(self, what: str = "value") -> str:
        # Numbers are accepted where a name is expected ("version: 7.11" -> "7.11") because
        # YAML users write build numbers and versions unquoted; booleans are not.
        if isinstance(self.value, str) and self.value != "":
            return self.value
        if isinstance(self.value, int | float) and not isinstance(self.value, bool):
            return str(self.value)
        raise self.error(f"{what} must be a non-empty string, not {self._kind()}")

    def integer(self, what: str = "value", *, minimum: int | None = None) -> int:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise self.error(f"{what} must be a whole number, not {self._kind()}")
        if minimum is not None and self.value < minimum:
            raise self.error(f"{what} must be at least {minimum}, not {self.value}")
        return self.value

    def number(self, what: str = "value", *, minimum: float | None = None) -> float:
        if not isinstance(self.value, int | float) or isinstance(self.value, bool):
            raise self.error(f"{what} must be a number, not {self._kind()}")
        if minimum is not None and self.value < minimum:
            raise self.error(f"{what} must be at least {minimum}, not {self.value}")
        return float(self.value)

    def flag(self, what: str = "value") -> bool:
        if not isinstance(self.value, bool):
            raise self.error(f"{what} must be true or false, not {self._kind()}")
        return self.value

    def choice(self, choices: Iterable[str], what: str = "value") -> str:
        options = list(choices)
        text = self.text(what)
        if text not in options:
            raise self.error(
                f"{what} must be one of {', '.join(options)}, not '{text}'",
                did_you_mean(text, options),
            )
        return text

    def items(self, what: str = "value") -> list[Node]:
        if not isinstance(self.value, CommentedSeq):
            raise self.error(f"{what} must be a list, not {self._kind()}")
        return [self._child_item(i) for i in range(len(self.value))]

    def mapping(
        self,
        what: str = "value",
        *,
        required: Iterable[str] = (),
        optional: Iterable[str] | None = (),
    ) -> dict[str, Node]:
        """The mapping's entries as nodes; unknown and missing keys are errors.

        ``optional=None`` accepts any key (for free-form maps such as per-OS commands).
        """
        if not isinstance(self.value, CommentedMap):
            raise self.error(f"{what} must be a mapping, not {self._kind()}")
        required = list(required)
        known = None if optional is None else set(required) | set(optional)
        entries: dict[str, Node] = {}
        for key in self.value:
            key_node = self._child_key(key)
            if not isinstance(key, str):
                raise key_node.error(f"keys of {what} must be strings, not {key!r}")
            if known is not None and key not in known:
                raise key_node.error(f"unknown key '{key}' in {what}", did_you_mean(key, known))
            entries[key] = self._child_value(key)
        for key in required:
            if key not in entries:
                raise self.error(f"{what} is missing the required key '{key}'")
        return entries

    # -- children -------------------------------------------------------------------------------

    def _child(self, value: Any, pos: tuple[int, int] | None) -> Node:
        line, column = (pos[0] + 1, pos[1] + 1) if pos else (self.line, self.column)
        return Node(value, self.file, line, column, self.error_type)

    def _child_item(self, index: int) -> Node:
        seq: CommentedSeq = self.value
        return self._child(seq[index], _lc(lambda: seq.lc.item(index)))

    def _child_key(self, key: Any) -> Node:
        cmap: CommentedMap = self.value
        return self._child(key, _lc(lambda: cmap.lc.key(key)))

    def _child_value(self, key: Any) -> Node:
        cmap: CommentedMap = self.value
        return self._child(cmap[key], _lc(lambda: cmap.lc.value(key)))

    def walk_items(self) -> Iterator[Node]:
        """Each item of a list node (no type check; for callers that checked already)."""
        yield from (self._child_item(i) for i in range(len(self.value)))


def _lc(get: Any) -> tuple[int, int] | None:
    try:
        pos = get()
    except (KeyError, IndexError, AttributeError, TypeError):
        return None
    if pos is None or pos[0] is None:
        return None
    return (int(pos[0]), int(pos[1]))


def load(path: Path, error_type: type[InputError]) -> Node:
    """Read one YAML document; syntax errors become ``error_type`` with the place."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error_type("file not found", file=path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error_type(f"cannot read file: {exc}", file=path) from exc
    yaml = YAML(typ="rt")
    try:
        value = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        raise error_type(f"invalid YAML: {problem}", file=path, line=line, column=column) from exc
    except YAMLError as exc:
        raise error_type(f"invalid YAML: {exc}", file=path) from exc
    return Node(value, path, 1, 1, error_type)
