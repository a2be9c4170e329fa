"""YAML that remembers where every value came from.

Every user-facing file (matrix, image, hardware, product) is read through :func:`load`, which
returns a :class:`Node`: a value plus its file, line and column. Validation code asks a node for
the type it expects (``node.text()``, ``node.mapping(...)``) and gets an :class:`InputError` that
points at the exact place when the value is wrong -- so a typo in a 5,000-cell matrix fails in a
second with ``matrix/nightly.yaml:14:12: unknown hardware 'bios-2cpux' (did you mean
'bios-2cpu'?)``.

ruamel.yaml's round-trip loader is used because it keeps line and column for every mapping key,
mapping value and sequence item (``.lc``), and it reads YAML 1.2, where ``on``/``no`` are strings.

Nothing the YAML library can raise escapes as anything but ``error_type`` with a place: the file
is read through :func:`compatlab.files.read_text` (a regular file, at most 1 MiB), nesting is
capped at :data:`MAX_DEPTH` (deeper was a ``RecursionError``), and what ruamel's constructors
raise on odd scalars and keys (``TypeError`` for a list inside a key, ``ValueError`` for a
5,000-digit integer or 30 February) is mapped to the node it was building.
"""

from __future__ import annotations

import difflib
import math
import re
import string
import warnings
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from compatlab.errors import InputError
from compatlab.files import MAX_YAML_BYTES, read_text

__all__ = ["MAX_DEPTH", "Node", "did_you_mean", "load"]

# Matrix and catalog files nest five or six levels; sixty-four is a mistake or an attack, and
# deeper than a few hundred was a RecursionError inside ruamel's composer.
MAX_DEPTH = 64

# What may never reach domain XML or a command line: C0 and C1 controls, DEL, unpaired
# surrogates (not encodable as UTF-8) and the two non-characters XML 1.0 forbids.
_NOT_TEXT = r"\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff"


@lru_cache(maxsize=8)
def _not_text(allow: str) -> re.Pattern[str]:
    allowed = "".join(f"\\x{ord(c):02x}" for c in allow)
    return re.compile(f"(?![{allowed}])[{_NOT_TEXT}]" if allow else f"[{_NOT_TEXT}]")


def _show(value: object) -> str:
    """A number for a message: a 40-digit integer is shown, a longer one summarised."""
    try:
        text = str(value)
    except ValueError:  # an int past Python's digit limit
        return "a number too long to show"
    return text if len(text) <= 40 else f"{text[:12]}... ({len(text)} digits)"


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

    def text(self, what: str = "value", *, allow: str = "", max_length: int | None = None) -> str:
        """A non-empty string with no control characters (but those in ``allow``).

        Every string from a user's file may end up in domain XML, a kernel command line, a guest
        command or a file name, where a control character breaks it; ``allow="\\t\\n"`` is for
        command lines, which may be shell scripts written as a YAML block.
        """
        # Numbers are accepted where a name is expected ("version: 7.11" -> "7.11") because
        # YAML users write build numbers and versions unquoted; booleans are not.
        if isinstance(self.value, str) and self.value != "":
            text = self.value
        elif isinstance(self.value, int | float) and not isinstance(self.value, bool):
            text = str(self.value)
        else:
            raise self.error(f"{what} must be a non-empty string, not {self._kind()}")
        bad = _not_text(allow).search(text)
        if bad is not None:
            raise self.error(
                f"{what} holds control character U+{ord(bad.group()):04X} at position "
                f"{bad.start() + 1}",
                "control characters break domain XML, command lines and file names",
            )
        if max_length is not None and len(text) > max_length:
            raise self.error(
                f"{what} is {len(text)} characters long, more than {max_length}",
                "names become VM names, cell ids and file names",
            )
        return text

    def integer(
        self, what: str = "value", *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise self.error(f"{what} must be a whole number, not {self._kind()}")
        if minimum is not None and self.value < minimum:
            raise self.error(f"{what} must be at least {minimum}, not {_show(self.value)}")
        if maximum is not None and self.value > maximum:
            raise self.error(f"{what} must be at most {maximum}, not {_show(self.value)}")
        return self.value

    def number(
        self,
        what: str = "value",
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite number (``.nan`` and ``.inf`` are YAML numbers, never a usable setting)."""
        if not isinstance(self.value, int | float) or isinstance(self.value, bool):
            raise self.error(f"{what} must be a number, not {self._kind()}")
        try:
            value = float(self.value)
        except OverflowError:  # an int past 1e308
            value = math.copysign(math.inf, self.value)
        if not math.isfinite(value):
            raise self.error(f"{what} must be a finite number, not {_show(self.value)}")
        if positive and value <= 0:
            raise self.error(f"{what} must be greater than 0, not {_show(self.value)}")
        if minimum is not None and value < minimum:
            raise self.error(f"{what} must be at least {minimum:g}, not {_show(self.value)}")
        if maximum is not None and value > maximum:
            raise self.error(f"{what} must be at most {maximum:g}, not {_show(self.value)}")
        return value

    def template(self, what: str, fields: Iterable[str]) -> str:
        """A ``str.format`` template that names only ``fields``, each plainly (``{path}``).

        Checked at load, because at run time an unknown field is a ``KeyError`` in the middle
        of a cell, and ``{service.__class__}`` reaches into the lab's own objects.
        """
        text = self.text(what)
        known = sorted(fields)
        allowed = ", ".join(f"{{{f}}}" for f in known) or "no fields"
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise self.error(
                f"{what} is not a valid template: {exc}", "write a literal brace as {{ or }}"
            ) from exc
        for _literal, field, spec, conversion in parts:
            if field is None:
                continue
            if field in known:
                if conversion is not None:
                    raise self.error(
                        f"{what}: {{{field}!{conversion}}} has a conversion", f"write {{{field}}}"
                    )
                if spec:
                    raise self.error(
                        f"{what}: {{{field}:{spec}}} has a format spec", f"write {{{field}}}"
                    )
                continue
            if "." in field or "[" in field:
                raise self.error(
                    f"{what}: {{{field}}} reaches into a value's attributes or items",
                    f"{what} may use {allowed}, each as it is",
                )
            raise self.error(
                f"{what} names unknown field {{{field}}}",
                did_you_mean(field, known) or f"{what} may use {allowed}",
            )
        return text

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
                raise key_node.error(f"keys of {what} must be strings, not {key_node._kind()}")
            key_node.text(f"a key of {what}")  # no control characters, even in free-form keys
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


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, whose every failure is a ``ConstructorError`` at a node.

    Scalars are built in ``construct_non_recursive_object``; mappings and sequences are filled
    in later by generators it leaves in ``state_generators``: both are guarded.
    """

    def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
        pending = len(self.state_generators)
        try:
            data = super().construct_non_recursive_object(node, tag)
        except YAMLError:
            raise
        except Exception as exc:  # whatever it is, it is this node's fault
            raise _node_error(node, exc) from exc
        if len(self.state_generators) > pending:
            self.state_generators[-1] = _guarded(self.state_generators[-1], node)
        return data


def _guarded(generator: Iterator[Any], node: Any) -> Iterator[Any]:
    try:
        yield from generator
    except YAMLError:
        raise
    except Exception as exc:
        raise _node_error(node, exc) from exc


def _node_error(node: Any, exc: Exception) -> ConstructorError:
    mark = node.start_mark
    if isinstance(exc, TypeError) and isinstance(node, MappingNode):
        # "unhashable type": a key that is a list or mapping holding a list or mapping.
        for key, _value in node.value:
            if not isinstance(key, ScalarNode):
                return ConstructorError(
                    None, None, "a key must be a plain value, not a list or mapping", key.start_mark
                )
    if isinstance(node, ScalarNode) and "digits" in str(exc):
        problem = f"a number of {len(str(node.value))} characters is too long"
    elif isinstance(node, ScalarNode):
        problem = f"cannot read {str(node.value)[:40]!r} as {str(node.tag).split(':')[-1]}: {exc}"
    elif isinstance(node, SequenceNode | MappingNode):
        problem = f"cannot build this {str(node.tag).split(':')[-1]}: {type(exc).__name__} {exc}"
    else:
        problem = f"{type(exc).__name__}: {exc}"
    return ConstructorError(None, None, problem, mark)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.max_depth = MAX_DEPTH
    return yaml


def load(path: Path, error_type: type[InputError]) -> Node:
    """Read one YAML document; every way it can be wrong becomes ``error_type`` at a place."""
    text = read_text(path, limit=MAX_YAML_BYTES, what="YAML file", error_type=error_type)
    try:
        with warnings.catch_warnings():
            # A reused anchor and a YAML 1.1 float without a dot are valid YAML that ruamel
            # warns about; with warnings as errors (the tests) they escaped as the warning.
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            value = _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = exc.problem or exc.context or "invalid YAML"
        if "maximum depth" in problem:
            problem = f"nested more than {MAX_DEPTH} levels deep"
        raise error_type(f"invalid YAML: {problem}", file=path, line=line, column=column) from exc
    except ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        character = exc.character if isinstance(exc.character, int) else 0
        raise error_type(
            f"invalid YAML: character U+{character:04X} is not allowed in a YAML file",
            file=path,
            line=line,
            column=column,
            hint='write it as an escape in a double-quoted string ("\\t"), if it is meant',
        ) from exc
    except YAMLError as exc:
        raise error_type(f"invalid YAML: {exc}", file=path) from exc
    except RecursionError as exc:  # a ruamel without max_depth
        raise error_type(f"invalid YAML: nested too deeply ({exc})", file=path) from exc
    except Exception as exc:  # the library's own bug must not be a traceback
        raise error_type(f"invalid YAML: {type(exc).__name__}: {exc}", file=path) from exc
    return Node(value, path, 1, 1, error_type)
