"""An installer's log read out of a Windows guest, bounded: the evidence of an install.

:attr:`~compatlab.guest.windows_install.InstallerCommand.log` names the file an installer
writes: msiexec's ``/l*v`` log, wusa's ``/log:`` (an event log file, ``.evtx``), SetupAPI's
device log for pnputil. After each run of an installer the runner asks the guest for it with
:func:`read_script` -- a PowerShell run over the channel, so a channel needs nothing but ``run``
-- and keeps what :func:`parse_answer` makes of the answer.

Bounded at both ends: however big the file (SetupAPI's log holds every device installed since
Windows was), the guest sends at most :data:`LOG_LIMIT` bytes of it: the head (what the
installer was asked to do) and the tail (why it failed), read from an open file without loading
the rest, and the runner keeps the text around a ``[… N bytes cut]`` mark
(:func:`compatlab.text.cap_text`). An ``.evtx`` is binary: the guest turns its events into text
lines first (``Get-WinEvent -Path``), and that text is bounded the same way.

Text is decoded by its byte-order mark (UTF-16 little or big endian, UTF-8), else as UTF-8 with
undecodable bytes replaced; the tail of a UTF-16 file is read from an even offset.

A log that is not there is an answer, not an error (:attr:`InstallerLog.missing`): an installer
that failed before it opened its log writes none, and reading the log never decides a verdict.

The script has not run on Windows here; the answer's format and its decoding are tested.
"""

from __future__ import annotations

import base64
import binascii
import codecs
from dataclasses import dataclass
from typing import Final

from compatlab.text import cap_text, cut_mark

__all__ = ["LOG_LIMIT", "InstallerLog", "LogAnswerError", "parse_answer", "read_script"]

#: Bytes of one log the guest sends (head and tail). Base64 makes it 4/3 bigger on stdout,
#: well inside a channel's 1 MiB output limit.
LOG_LIMIT: Final = 512 * 1024
_MISSING: Final = "compatlab-log: missing"
_SIZE: Final = "compatlab-log: size "

# Share ReadWrite|Delete: SetupAPI keeps its log open, and a log may still be written to.
_SCRIPT: Final = """\
$ErrorActionPreference = 'Stop'
$path = '%(path)s'
$limit = %(limit)d
if (-not [IO.File]::Exists($path)) { '%(missing)s'; exit 0 }
if ($path.EndsWith('.evtx', [StringComparison]::OrdinalIgnoreCase)) {
    $lines = @(Get-WinEvent -Path $path -Oldest -ErrorAction SilentlyContinue | ForEach-Object {
        '{0:o} {1} {2} {3}' -f $_.TimeCreated, $_.Id, $_.LevelDisplayName, $_.Message })
    $data = [Text.Encoding]::UTF8.GetBytes(($lines -join "`r`n"))
    $stream = New-Object IO.MemoryStream(,$data)
} else {
    $stream = [IO.File]::Open($path, 'Open', 'Read', 'ReadWrite, Delete')
}
try {
    $size = $stream.Length
    $headSize = [Math]::Min($size, [long]($limit / 2))
    $head = New-Object byte[] $headSize
    [void]$stream.Read($head, 0, $headSize)
    $tail = New-Object byte[] 0
    if ($size -gt $limit) {
        $start = $size - ($limit - $headSize)
        if ($start %% 2) { $start += 1 }
        $tail = New-Object byte[] ($size - $start)
        [void]$stream.Seek($start, 'Begin')
        [void]$stream.Read($tail, 0, $tail.Length)
    } elseif ($size -gt $headSize) {
        $tail = New-Object byte[] ($size - $headSize)
        [void]$stream.Read($tail, 0, $tail.Length)
    }
} finally { $stream.Close() }
'%(size)s' + $size
[Convert]::ToBase64String($head)
[Convert]::ToBase64String($tail)
"""


class LogAnswerError(ValueError):
    """The guest's answer is not what :func:`read_script` prints."""


@dataclass(frozen=True)
class InstallerLog:
    """What was read of one installer log: its text (head and tail around a cut mark when the
    file was bigger than the limit), the file's size and the bytes left out (``cut``) between
    head and tail; ``missing`` when there was no file."""

    text: str
    size: int
    cut: int = 0
    missing: bool = False


def read_script(path: str, *, limit: int = LOG_LIMIT) -> str:
    """The PowerShell that prints ``path``'s head and tail (at most ``limit`` bytes) for
    :func:`parse_answer`. Run it with ``channel.run(script, shell="powershell")``; the path is
    in a single-quoted string, so nothing in it is expanded."""
    if limit < 2:
        raise ValueError("a log limit must be at least 2 bytes")
    if any(ord(c) < 0x20 for c in path):
        raise ValueError(f"log path {path!r} holds a control character")
    return _SCRIPT % {
        "path": path.replace("'", "''"),
        "limit": limit,
        "missing": _MISSING,
        "size": _SIZE,
    }


def parse_answer(stdout: str, *, limit: int = LOG_LIMIT) -> InstallerLog:
    """The log in the answer of :func:`read_script`; :class:`LogAnswerError` if it is not one."""
    lines = [line.strip() for line in stdout.strip().splitlines()]
    if lines == [_MISSING]:
        return InstallerLog("", 0, missing=True)
    # Empty base64 (an empty head or tail) prints an empty line, which strip() may take.
    if not 1 <= len(lines) <= 3 or not lines[0].startswith(_SIZE):
        raise LogAnswerError(f"not an installer log answer: {_first(stdout)!r}")
    lines += [""] * (3 - len(lines))
    try:
        size = int(lines[0].removeprefix(_SIZE))
        head = base64.b64decode(lines[1], validate=True)
        tail = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise LogAnswerError(f"not an installer log answer: {exc}") from exc
    if size < 0 or len(head) + len(tail) > min(size, limit):
        raise LogAnswerError(f"the answer holds more than the file's {size} bytes")
    cut = size - len(head) - len(tail)
    text = _decode(head, tail, cut=cut)
    # Room for the cut mark: the guest already kept no more than ``limit`` bytes.
    return InstallerLog(cap_text(text, limit + len(cut_mark(size)) + 2), size, cut)


def _decode(head: bytes, tail: bytes, *, cut: int) -> str:
    encoding, skip = "utf-8", 0
    for bom, name in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            encoding, skip = name, len(bom)
            break
    first = head[skip:].decode(encoding, errors="replace")
    last = tail.decode(encoding, errors="replace")
    if not cut:
        return first + last
    return f"{first}\n{cut_mark(cut)}\n{last}"


def _first(text: str) -> str:
    return text.strip().splitlines()[0][:80] if text.strip() else ""
