"""The QEMU guest agent channel: commands, files and reboots through libvirt, no guest network.

Everything goes through ``libvirt_qemu.qemuAgentCommand`` (qemu-ga's JSON protocol passed
through libvirt), so the channel works on any domain with an ``org.qemu.guest_agent.0``
virtio-serial port, Linux or Windows, local or remote hypervisor.

What qemu-ga (7.2, the Debian 12 package) offers and what it does not, measured here:

- ``guest-exec`` with ``capture-output`` returns a pid; ``guest-exec-status`` returns
  ``exited``, ``exitcode`` (or ``signal``) and base64 ``out-data`` / ``err-data`` once the process
  has exited. There is **no** ``guest-exec-kill`` (absent from ``guest-info``): on a timeout this
  channel kills the process itself with a second ``guest-exec`` (``kill -KILL`` on the pid and
  its direct children on Linux, ``taskkill /F /T`` on Windows), best effort.
- ``guest-shutdown`` never replies: the agent is killed by the shutdown it started. libvirt
  reports that as "Guest agent disappeared while executing command" or "End of file from agent
  socket"; both are the expected outcome and count as success.
- After a timed-out command libvirt re-synchronises with ``guest-sync`` (its own 5 s timeout)
  before the next command, so a ping right after a hung agent can take ~5 s whatever timeout it
  was given.

libvirt errors are mapped here (:func:`map_libvirt_error`): the agent not connected, not
answering, or the domain not running -> :class:`GuestUnreachable`; a libvirt-side timeout ->
:class:`GuestTimeout`; anything else (e.g. the guest refused a command) -> :class:`GuestError`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final, Literal

import libvirt
import libvirt_qemu

from compatlab.errors import GuestError, GuestTimeout, GuestUnreachable
from compatlab.guest.channel import (
    OUTPUT_LIMIT,
    CommandResult,
    clean_clixml,
    encode_powershell,
    poll_until_ready,
)
from compatlab.text import cap_bytes, join_cut

__all__ = ["AgentChannel", "map_libvirt_error"]

log = logging.getLogger(__name__)

_CHANNEL: Final = "agent"
# Bytes per guest-file-read / guest-file-write call. Measured here: 128 KiB works, 192 KiB and
# more (~256 KiB of base64 JSON) make qemu-ga 7.2 stop answering, and 4 MiB exceeds libvirt's
# RPC string limit; bigger chunks were not faster. 64 KiB keeps a wide margin.
_FILE_CHUNK: Final = 64 * 1024
# First and last pause between guest-exec-status polls: quick commands answer in ~30 ms, long
# ones should not be polled 100 times a second.
_POLL_FIRST: Final = 0.01
_POLL_MAX: Final = 0.25

_UNREACHABLE_CODES: Final = frozenset(
    {
        # Agent not connected (guest booting, qemu-ga not started), or not answering in time.
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        # guest-sync got a stale answer (deprecated by libvirt, still mapped).
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        # "domain is not running".
        libvirt.VIR_ERR_OPERATION_INVALID,
        # The (transient) domain is gone.
        libvirt.VIR_ERR_NO_DOMAIN,
    }
)
_TIMEOUT_CODES: Final = frozenset(
    code
    for code in (
        # e.g. "cannot acquire state change lock (held by agent=...)": another agent job.
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        # libvirt after 9.0 gives agent command timeouts their own code; older ones say 86.
        getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", None),
    )
    if code is not None
)
# How a shutdown that worked looks: the agent went away while libvirt awaited the reply.
_DISCONNECTED_MESSAGES: Final = (
    "Guest agent disappeared while executing command",
    "End of file from agent socket",
)
_NOT_CONNECTED_MESSAGE: Final = "QEMU guest agent is not connected"
# qemu-ga keeps at most 16 MB of a command's output (GUEST_EXEC_MAX_OUTPUT) and says so.
AGENT_CUT: Final = "[… the guest agent cut the rest]"

OsFamily = Literal["linux", "windows"]


def map_libvirt_error(
    exc: libvirt.libvirtError, *, doing: str, domain: str | None = None
) -> GuestError:
    """Translate a libvirt error raised by an agent call into the compatlab error tree.

    ``doing`` names the operation for the message (e.g. ``"guest-exec"``). The caller raises the
    result ``from exc`` so the libvirt error stays attached.
    """
    code = exc.get_error_code()
    detail = exc.get_error_message() or str(exc)
    message = f"{doing}: {detail} (libvirt error {code})"
    if code in _TIMEOUT_CODES:
        return GuestTimeout(message, channel=_CHANNEL, domain=domain)
    if code in _UNREACHABLE_CODES:
        return GuestUnreachable(message, channel=_CHANNEL, domain=domain)
    return GuestError(message, channel=_CHANNEL, domain=domain)


def _is_expected_disconnect(exc: libvirt.libvirtError) -> bool:
    """True when a guest-shutdown call failed the way a successful shutdown does."""
    message = exc.get_error_message() or ""
    if any(text in message for text in _DISCONNECTED_MESSAGES):
        return True
    # The domain stopped (or, transient, vanished) before libvirt saw the agent's EOF.
    return exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)


class AgentChannel:
    """A :class:`~compatlab.guest.channel.Channel` over the QEMU guest agent of ``domain``.

    ``os_family`` picks the default shell (``/bin/sh -c`` or ``cmd.exe /c``) and how a timed-out
    process is killed. ``call_timeout`` bounds each single agent call (libvirt takes whole
    seconds); ``shutdown_timeout`` bounds how long :meth:`reboot` / :meth:`shutdown` wait for
    the guest to go away. ``output_limit`` bounds the bytes of each output stream kept.
    """

    name: Final = _CHANNEL

    def __init__(
        self,
        domain: libvirt.virDomain,
        *,
        os_family: OsFamily,
        call_timeout: float = 10.0,
        shutdown_timeout: float = 60.0,
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        if os_family not in ("linux", "windows"):
            raise ValueError(f"os_family must be 'linux' or 'windows', not {os_family!r}")
        self._domain = domain
        self._domain_name: str = domain.name()
        self.os_family: OsFamily = os_family
        self.call_timeout = call_timeout
        self.shutdown_timeout = shutdown_timeout
        self.output_limit = output_limit

    def __repr__(self) -> str:
        return f"AgentChannel({self._domain_name!r}, os_family={self.os_family!r})"

    # -- the agent protocol -------------------------------------------------------------------

    def _raw(self, command: str, arguments: Mapping[str, Any] | None, timeout: float) -> Any:
        """One agent command; returns its ``return`` member. libvirt errors pass through."""
        message: dict[str, Any] = {"execute": command}
        if arguments is not None:
            message["arguments"] = dict(arguments)
        # libvirt wants whole seconds; 0 would mean "don't wait for the reply".
        seconds = max(1, math.ceil(timeout))
        reply = libvirt_qemu.qemuAgentCommand(self._domain, json.dumps(message), seconds, 0)
        return json.loads(reply).get("return")

    def _call(
        self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float
    ) -> Any:
        """One agent command, with libvirt errors mapped."""
        try:
            return self._raw(command, arguments, timeout)
        except libvirt.libvirtError as exc:
            raise map_libvirt_error(exc, doing=command, domain=self._domain_name) from exc

    def _error(self, message: str) -> GuestError:
        return GuestError(message, channel=_CHANNEL, domain=self._domain_name)

    def set_time(self) -> float:
        """Set the guest's clock to the host's now (``guest-set-time``); returns by how many
        seconds the guest was ahead (negative: behind) just before. For a guest restored from
        a saved memory state, whose clock comes back where it was saved."""
        guest = self._call("guest-get-time", timeout=self.call_timeout)
        host = time.time_ns()
        self._call("guest-set-time", {"time": time.time_ns()}, timeout=self.call_timeout)
        return (int(guest) - host) / 1e9

    # -- Channel ------------------------------------------------------------------------------

    def ping(self, timeout: float) -> bool:
        """``guest-ping``: False while the agent is not connected, not answering or not running."""
        try:
            self._call("guest-ping", timeout=timeout)
        except (GuestUnreachable, GuestTimeout):
            return False
        return True

    def wait_ready(self, timeout: float, *, poll: float = 0.5) -> float:
        """Ping until the agent answers; see :meth:`Channel.wait_ready`."""
        return poll_until_ready(
            lambda left: self.ping(min(left, self.call_timeout)),
            timeout,
            poll=poll,
            channel=_CHANNEL,
            domain=self._domain_name,
        )

    def _argv(self, command: str, shell: str | None) -> tuple[str, list[str]]:
        if self.os_family == "linux":
            # Any POSIX shell takes -c; the default is the one every image has.
            return (shell or "/bin/sh", ["-c", command])
        if shell in (None, "cmd"):
            return ("cmd.exe", ["/c", command])
        if shell == "powershell":
            encoded = encode_powershell(command)
            return ("powershell.exe", ["-NoProfile", "-NonInteractive", "-EncodedCommand", encoded])
        raise ValueError(f"shell on a Windows guest must be 'cmd' or 'powershell', not {shell!r}")

    def run(self, command: str, *, timeout: float, shell: str | None = None) -> CommandResult:
        """``guest-exec`` + ``guest-exec-status`` polling; see :meth:`Channel.run`.

        On timeout the process is killed (best effort, qemu-ga has no kill command) and
        :class:`GuestTimeout` says whether the kill was sent.
        """
        path, args = self._argv(command, shell)
        start = time.monotonic()
        deadline = start + timeout
        started = self._call(
            "guest-exec",
            {"path": path, "arg": args, "capture-output": True},
            timeout=min(self.call_timeout, max(timeout, 1.0)),
        )
        pid = int(started["pid"])
        pause = _POLL_FIRST
        while True:
            left = deadline - time.monotonic()
            status = self._call(
                "guest-exec-status", {"pid": pid}, timeout=min(self.call_timeout, max(left, 1.0))
            )
            if status.get("exited"):
                result = self._result(status, time.monotonic() - start)
                if shell == "powershell":
                    result = replace(result, stderr=clean_clixml(result.stderr))
                return result
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)
        killed = self._kill(pid)
        what = "killed" if killed else "could not be killed and is left running"
        raise GuestTimeout(
            f"command did not finish within {timeout:g} s; guest pid {pid} {what}: {command!r}",
            channel=_CHANNEL,
            domain=self._domain_name,
        )

    def _result(self, status: Mapping[str, Any], seconds: float) -> CommandResult:
        if "exitcode" in status:
            exit_code = int(status["exitcode"])
        else:
            # Killed by a signal: report it the way a shell does.
            exit_code = 128 + int(status.get("signal", 0))
        streams: list[str] = []
        for stream in ("out", "err"):
            text = _decode(status.get(f"{stream}-data"), self.output_limit)
            if status.get(f"{stream}-truncated"):
                log.warning("%s: qemu-ga truncated the command's std%s", self._domain_name, stream)
                text += ("" if text.endswith("\n") or not text else "\n") + AGENT_CUT + "\n"
            streams.append(text)
        return CommandResult(
            exit_code=exit_code, stdout=streams[0], stderr=streams[1], seconds=seconds
        )

    def _kill(self, pid: int) -> bool:
        """Kill a timed-out guest process, since qemu-ga 7.2 has no guest-exec-kill."""
        if self.os_family == "linux":
            # The pid is often `sh -c`: take its direct children too, or they outlive it.
            script = f"kill -KILL {pid} $(cat /proc/{pid}/task/*/children 2>/dev/null)"
            path, args = "/bin/sh", ["-c", script]
        else:
            path, args = "taskkill.exe", ["/F", "/T", "/PID", str(pid)]
        try:
            self._call("guest-exec", {"path": path, "arg": args}, timeout=self.call_timeout)
        except GuestError as exc:
            log.warning("%s: could not kill guest pid %d: %s", self._domain_name, pid, exc)
            return False
        return True

    def write_file(self, path: str, data: bytes) -> None:
        """``guest-file-open`` (``wb``) + ``guest-file-write`` in 64 KiB chunks."""
        handle = self._call(
            "guest-file-open", {"path": path, "mode": "wb"}, timeout=self.call_timeout
        )
        try:
            for offset in range(0, len(data), _FILE_CHUNK):
                chunk = data[offset : offset + _FILE_CHUNK]
                written = self._call(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(chunk).decode("ascii")},
                    timeout=self.call_timeout,
                )
                if int(written["count"]) != len(chunk):
                    # qemu-ga writes with one fwrite(); a short count is a full disk or the like.
                    raise self._error(
                        f"short write to {path}: {written['count']} of {len(chunk)} bytes"
                    )
        finally:
            self._close(handle, path)

    def read_file(self, path: str) -> bytes:
        """``guest-file-open`` (``rb``) + ``guest-file-read`` in 64 KiB chunks until EOF."""
        handle = self._call(
            "guest-file-open", {"path": path, "mode": "rb"}, timeout=self.call_timeout
        )
        parts: list[bytes] = []
        try:
            while True:
                chunk = self._call(
                    "guest-file-read",
                    {"handle": handle, "count": _FILE_CHUNK},
                    timeout=self.call_timeout,
                )
                parts.append(base64.b64decode(chunk.get("buf-b64", "")))
                if chunk.get("eof") or not int(chunk.get("count", 0)):
                    break
        finally:
            self._close(handle, path)
        return b"".join(parts)

    def _close(self, handle: int, path: str) -> None:
        # qemu-ga keeps a handle until closed; a failed close must not hide the real error.
        try:
            self._call("guest-file-close", {"handle": handle}, timeout=self.call_timeout)
        except GuestError as exc:
            log.warning(
                "%s: could not close %s (handle %d): %s", self._domain_name, path, handle, exc
            )

    def reboot(self) -> None:
        """``guest-shutdown`` mode ``reboot``; returns once the agent has gone away."""
        self._shutdown("reboot")

    def shutdown(self) -> None:
        """``guest-shutdown`` mode ``powerdown``; returns once the agent has gone away."""
        self._shutdown("powerdown")

    def _shutdown(self, mode: Literal["reboot", "powerdown"]) -> None:
        try:
            active = self._domain.isActive()
        except libvirt.libvirtError as exc:
            raise map_libvirt_error(exc, doing="guest-shutdown", domain=self._domain_name) from exc
        if not active:
            # Checked first: afterwards "domain is not running" means the shutdown worked.
            raise GuestUnreachable(
                f"guest-shutdown ({mode}): domain is not running",
                channel=_CHANNEL,
                domain=self._domain_name,
            )
        start = time.monotonic()
        try:
            self._raw("guest-shutdown", {"mode": mode}, self.shutdown_timeout)
        except libvirt.libvirtError as exc:
            if _is_expected_disconnect(exc):
                log.debug("%s: agent went away after guest-shutdown (%s)", self._domain_name, mode)
                return
            message = exc.get_error_message() or ""
            unresponsive = exc.get_error_code() == libvirt.VIR_ERR_AGENT_UNRESPONSIVE
            if unresponsive and _NOT_CONNECTED_MESSAGE not in message:
                # The request went out but the agent neither answered nor went away in time.
                raise GuestTimeout(
                    f"guest-shutdown ({mode}) sent, but the agent was still there after "
                    f"{self.shutdown_timeout:g} s: {message}",
                    channel=_CHANNEL,
                    domain=self._domain_name,
                ) from exc
            raise map_libvirt_error(
                exc, doing=f"guest-shutdown ({mode})", domain=self._domain_name
            ) from exc
        # Some agents answer before they go down: wait for it to stop answering.
        left = self.shutdown_timeout - (time.monotonic() - start)
        while left > 0:
            if not self.ping(min(left, self.call_timeout)):
                return
            time.sleep(min(0.5, max(left, 0)))
            left = self.shutdown_timeout - (time.monotonic() - start)
        raise GuestTimeout(
            f"guest-shutdown ({mode}) answered, but the agent was still there after "
            f"{self.shutdown_timeout:g} s",
            channel=_CHANNEL,
            domain=self._domain_name,
        )


def _decode(data: object, limit: int) -> str:
    """qemu-ga's base64 output as text, at most ``limit`` bytes of it: only the two ends of a
    long answer are decoded (up to 16 MB of output arrive as one base64 string)."""
    if not data:
        return ""
    text = str(data)
    size = len(text) // 4 * 3 - text[-2:].count("=")
    if len(text) % 4 or size <= limit:  # short, or not in 4-character groups: decode it all
        return cap_bytes(base64.b64decode(text), limit)
    head_bytes = limit // 2
    tail_bytes = limit - head_bytes
    head = base64.b64decode(text[: -(-head_bytes // 3) * 4])[:head_bytes]
    tail_start = len(text) - -(-(tail_bytes + 2) // 3) * 4
    tail = base64.b64decode(text[tail_start:])
    tail = tail[len(tail) - tail_bytes :] if tail_bytes else b""
    return join_cut(head, size - len(head) - len(tail), tail)
