"""The seam between the lab and a running guest: one ``Channel`` protocol, one module per transport.

A channel is how compatlab talks to the inside of a guest once it runs: to see that a boot has
completed (``ping`` / ``wait_ready``), to install products and the candidate (``run``,
``write_file``), to collect evidence (``read_file``) and to ask for a clean reboot. Two
implementations exist, chosen by the golden image's ``channel``:

- ``agent`` (:class:`compatlab.guest.agent.AgentChannel`): the QEMU guest agent, through libvirt;
  needs no network in the guest. Linux and Windows guests.
- ``winrm`` (:class:`compatlab.guest.winrm.WinRMChannel`): WS-Management over HTTP(S), through
  pywinrm. Windows guests.

Implementations are imported lazily by :func:`open_channel`, so a Linux-only lab never imports
pywinrm (and a WinRM-only controller never needs libvirt-python for the channel).

Every failure is a :class:`~compatlab.errors.GuestError` (or its ``GuestTimeout`` and
``GuestUnreachable``); a command that runs and fails is *not* an error, it is a
:class:`CommandResult` with a non-zero ``exit_code``.

Both channels start PowerShell the same way, so its two helpers live here:
:func:`encode_powershell` and :func:`clean_clixml`.

A command's output is the guest's to make long: each stream is capped at
:data:`OUTPUT_LIMIT` bytes in memory (its head and its tail around a ``[… N bytes cut]`` mark,
:mod:`compatlab.text`), however much the command printed.
"""

from __future__ import annotations

import base64
import importlib
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from compatlab.errors import GuestTimeout

__all__ = [
    "CHANNELS",
    "OUTPUT_LIMIT",
    "Channel",
    "CommandResult",
    "clean_clixml",
    "encode_powershell",
    "open_channel",
    "poll_until_ready",
]


# Bytes of one output stream of one command kept in memory (head + tail); the report embeds
# less still and keeps the rest as a file.
OUTPUT_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What a command run in the guest left behind.

    ``exit_code`` is the process's exit status; a process killed by signal N (Linux) is reported
    as ``128 + N``, as a shell would. ``stdout`` and ``stderr`` are decoded as UTF-8, with
    undecodable bytes replaced, and hold at most the channel's output limit of bytes
    (:data:`OUTPUT_LIMIT` by default): beyond it, the head and the tail around a
    ``[… N bytes cut]`` mark. For PowerShell, ``stderr`` is the text of its error records, not
    their CLIXML. ``seconds`` is wall time on the controller, round trips included.
    """

    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0


@runtime_checkable
class Channel(Protocol):
    """A way into a running guest. See the module docstring for the error contract."""

    @property
    def name(self) -> str:
        """The channel kind: ``'agent'`` or ``'winrm'``; used in errors and reports."""
        ...

    def ping(self, timeout: float) -> bool:
        """True if the guest answers now. "Not up yet" is ``False``, never an exception.

        Raises :class:`~compatlab.errors.GuestError` only for failures that waiting will not
        cure (a misconfigured channel, rejected credentials).
        """
        ...

    def wait_ready(self, timeout: float, *, poll: float = 0.5) -> float:
        """Wait until the guest answers; return the seconds it took.

        Raises :class:`~compatlab.errors.GuestTimeout` if it did not answer within ``timeout``.
        """
        ...

    def run(self, command: str, *, timeout: float, shell: str | None = None) -> CommandResult:
        """Run ``command`` through the guest's shell and wait for it to finish.

        ``shell`` picks the interpreter: ``None`` is the guest's default (``/bin/sh -c`` on
        Linux, ``cmd.exe /c`` on Windows); ``'powershell'`` on Windows; on Linux, the path of
        another POSIX shell. Raises :class:`~compatlab.errors.GuestTimeout` if the command did
        not finish within ``timeout`` seconds.
        """
        ...

    def write_file(self, path: str, data: bytes) -> None:
        """Create or replace the guest file ``path`` with ``data``."""
        ...

    def read_file(self, path: str) -> bytes:
        """Return the whole content of the guest file ``path``."""
        ...

    def reboot(self) -> None:
        """Ask the guest OS for a clean reboot; return once the guest has gone away.

        Returning only after the channel went down means a following :meth:`wait_ready`
        measures the *next* boot, not the tail of this one.
        """
        ...

    def shutdown(self) -> None:
        """Ask the guest OS to power off; return once the guest has gone away."""
        ...


# Like pytest-testinfra's BACKENDS: kind -> "module:Class", imported only when asked for.
CHANNELS: Mapping[str, str] = {
    "agent": "compatlab.guest.agent:AgentChannel",
    "winrm": "compatlab.guest.winrm:WinRMChannel",
}


def open_channel(kind: str, /, *args: Any, **options: Any) -> Channel:
    """Build the channel of ``kind`` (a key of :data:`CHANNELS`) with its own arguments.

    ``open_channel("agent", domain, os_family="windows")`` or
    ``open_channel("winrm", host, port, credentials, transport="ntlm")``; the arguments are
    those of the implementation's constructor.
    """
    try:
        target = CHANNELS[kind]
    except KeyError:
        known = ", ".join(sorted(CHANNELS))
        raise ValueError(f"unknown guest channel {kind!r} (known: {known})") from None
    module_name, _, class_name = target.partition(":")
    factory: Callable[..., Channel] = getattr(importlib.import_module(module_name), class_name)
    return factory(*args, **options)


def poll_until_ready(
    ping: Callable[[float], bool],
    timeout: float,
    *,
    poll: float,
    channel: str,
    domain: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """The shared body of ``wait_ready``: ping until it answers or ``timeout`` runs out.

    Each ping gets at most the time left, so the whole wait overshoots ``timeout`` by no more
    than one ping's own rounding. Returns the seconds from the call until the answer.
    """
    start = clock()
    deadline = start + timeout
    attempts = 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            break
        attempts += 1
        if ping(remaining):
            return clock() - start
        remaining = deadline - clock()
        if remaining <= 0:
            break
        sleep(min(poll, remaining))
    raise GuestTimeout(
        f"guest did not answer within {timeout:g} s ({attempts} attempts)",
        channel=channel,
        domain=domain,
    )


def encode_powershell(script: str) -> str:
    """``script`` as ``powershell.exe -EncodedCommand`` wants it: base64 of its UTF-16LE bytes.

    Encoded, a script needs no quoting at all on its way through cmd.exe, WinRS or qemu-ga.
    """
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def clean_clixml(stderr: str) -> str:
    """The error text in PowerShell's CLIXML stderr (``#< CLIXML`` + ``<Objs>``); else as is.

    PowerShell started with ``-EncodedCommand`` and redirected output serialises its error
    stream; only the ``S="Error"`` strings are for people. Progress records are dropped.
    """
    if not stderr.lstrip().startswith("#< CLIXML"):
        return stderr
    parts: list[str] = []
    for document in stderr.split("#< CLIXML")[1:]:
        try:
            root = ET.fromstring(document.strip())
        except ET.ParseError:
            return stderr
        parts.extend(
            node.text or ""
            for node in root.iter("{http://schemas.microsoft.com/powershell/2004/04}S")
            if node.get("S") == "Error"
        )
    # CLIXML escapes control characters as _xHHHH_ (e.g. _x000D__x000A_ for CRLF).
    text = re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), "".join(parts))
    return text.replace("\r\n", "\n")
