"""Guest text, bounded: what a crashing or hostile guest prints never grows without limit and
never reaches a terminal or a page with its control sequences.

Guest text is the serial console, panic lines, command output, installer output. It flows into
memory (the runner), into results.json, into HTML pages and onto the pytest terminal. Pure
helpers, no I/O:

- :func:`cap_text` / :func:`cap_bytes` keep the head and the tail of a long text around a
  :func:`cut_mark` (``[… N bytes cut]``): the tail is where an installer says why it failed,
  the head is what it was doing;
- :class:`OutputBuffer` collects a stream in chunks with the same rule, holding at most its
  limit in memory whatever arrives;
- :func:`printable` removes terminal escape sequences (CSI, OSC, charset switches) and C0/C1
  control characters, keeping newlines and tabs; :func:`one_line` also folds a text into one
  line of bounded length, for titles (a panic line) and terminal report lines.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "OutputBuffer",
    "cap_bytes",
    "cap_text",
    "cut_mark",
    "join_cut",
    "one_line",
    "printable",
]

# ESC [ ... final (CSI: colours, cursor moves); ESC ] ... BEL or ESC \ (OSC: window titles,
# hyperlinks); DCS/SOS/PM/APC strings up to ST; any other two- or three-byte escape (charsets,
# cursor save); the 8-bit CSI (U+009B) too. An escape cut off at the end of the text goes whole;
# a string (OSC, DCS, ...) never ended goes to the end of its line, not of the log: a guest that
# opens one must not blank the lines after it (a terminal would; the report must not).
_ESCAPES: Final = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*(?:[@-~]|$)"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c|$)?"
    r"|(?:\x1b[PX^_]|[\x90\x98\x9e\x9f])[^\x1b\x9c\n]*(?:\x1b\\|\x9c|$)?"
    r"|\x1b[ -/]*[0-~]?"
)
# What every escape above starts with: a text without one has no escape to strip.
_INTRODUCERS: Final = ("\x1b", "\x9b", "\x9d", "\x90", "\x98", "\x9e", "\x9f")
# C0 but tab and newline, DEL, C1; the bidi overrides that make a terminal line read otherwise
# than it is ("Trojan source"); lone surrogates (JSON can carry them; no stream can print them).
# A lone CR would rewrite the line on a terminal.
_CONTROLS: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_MARK: Final = re.compile(r"\n?\[… (\d{1,20}) bytes cut\]\n?")
_SPACES: Final = re.compile(r"\s+")


def cut_mark(cut: int) -> str:
    """The mark left where ``cut`` bytes of a text were dropped: ``[… 1048576 bytes cut]``."""
    return f"[… {cut} bytes cut]"


def _marked(head: str, cut: int, tail: str) -> str:
    return f"{head}\n{cut_mark(cut)}\n{tail}"


def join_cut(head: bytes, cut: int, tail: bytes) -> str:
    """The text of ``head`` and ``tail``, with a :func:`cut_mark` between them when ``cut``
    bytes that stood there were dropped (for a caller that read only the two ends)."""
    if not cut:
        return (head + tail).decode("utf-8", errors="replace")
    return _marked(
        head.decode("utf-8", errors="replace"), cut, tail.decode("utf-8", errors="replace")
    )


def _bytes_in(text: str) -> int:
    """UTF-8 bytes ``text`` stood for, counting what earlier marks in it already said was cut."""
    earlier = 0
    for match in _MARK.finditer(text):
        earlier += int(match.group(1)) - len(match.group(0).encode())
    return len(text.encode("utf-8", errors="replace")) + earlier


def cap_text(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters; else its head and tail (``limit``
    characters in all, about half each) around a :func:`cut_mark` counting the UTF-8 bytes
    left out.

    A mark inside the part that goes is counted in, so a text capped twice still says how much
    of the original is missing. ``limit`` below 2 keeps nothing but the mark.
    """
    if len(text) <= limit:
        return text
    head_end = _outside_marks(text, max(limit, 0) // 2, before=True)
    tail_start = _outside_marks(
        text, len(text) - (max(limit, 0) - max(limit, 0) // 2), before=False
    )
    if tail_start < head_end:  # an earlier mark straddles the middle: keep it whole
        return text
    cut = _bytes_in(text[head_end:tail_start])
    return _marked(text[:head_end], cut, text[tail_start:])


def _outside_marks(text: str, at: int, *, before: bool) -> int:
    """``at``, moved off any earlier cut mark it falls inside (to its start or its end)."""
    window = 40  # longer than any mark
    for match in _MARK.finditer(text, max(at - window, 0), at + window):
        if match.start() < at < match.end():
            return match.start() if before else match.end()
    return at


def cap_bytes(data: bytes, limit: int) -> str:
    """``data`` decoded as UTF-8 (bad bytes replaced), at most ``limit`` bytes of it kept: the
    head and the tail around a :func:`cut_mark` when it is longer."""
    if len(data) <= limit:
        return data.decode("utf-8", errors="replace")
    head = max(limit, 0) // 2
    tail = max(limit, 0) - head
    return _marked(
        data[:head].decode("utf-8", errors="replace"),
        len(data) - head - tail,
        data[len(data) - tail :].decode("utf-8", errors="replace") if tail else "",
    )


class OutputBuffer:
    """A stream of bytes, collected in chunks, holding at most ``limit`` of them.

    The first half of the limit is kept as the head, the last bytes seen as the tail; what
    falls between is only counted. ``limit=None`` keeps everything (a file being read, where
    every byte matters and the caller bounded the size). :meth:`text` decodes it, with the
    :func:`cut_mark` where bytes were dropped.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0  # bytes seen
        self._head = bytearray()
        self._tail = bytearray()

    def append(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.limit is None:
            self._head += chunk
            return
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        keep = self.limit - self.limit // 2
        if len(chunk) >= keep:
            self._tail[:] = chunk[len(chunk) - keep :] if keep else b""
        else:
            self._tail += chunk
            del self._tail[: max(len(self._tail) - keep, 0)]

    @property
    def cut(self) -> int:
        """Bytes seen and not kept."""
        return self.total - len(self._head) - len(self._tail)

    def __len__(self) -> int:
        """Bytes held."""
        return len(self._head) + len(self._tail)

    def data(self) -> bytes:
        """The bytes held (head and tail joined, without a mark)."""
        return bytes(self._head + self._tail)

    def text(self) -> str:
        """The stream as text: UTF-8 with bad bytes replaced, marked where bytes were cut."""
        if not self.cut:
            return self.data().decode("utf-8", errors="replace")
        return _marked(
            self._head.decode("utf-8", errors="replace"),
            self.cut,
            self._tail.decode("utf-8", errors="replace"),
        )


def printable(text: str) -> str:
    """``text`` without terminal escape sequences and control characters; ``\\n`` and ``\\t``
    stay, and a CR-LF becomes a LF."""
    text = text.replace("\r\n", "\n")
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text  # most guest text: nothing to strip, found out in C (the regexes cost 100x)
    if any(c in text for c in _INTRODUCERS):
        text = _ESCAPES.sub("", text)
    return _CONTROLS.sub("", text)


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters (``…`` where cut):
    for titles (a panic line, a bugcheck name) and lines on the terminal."""
    # Bound the work first: the escapes cut away are at most what is being dropped anyway.
    line = _SPACES.sub(" ", printable(text[: limit * 4 + 64])).strip()
    if len(line) > limit or len(text) > limit * 4 + 64:
        return line[: max(limit - 1, 0)].rstrip() + "…"
    return line
