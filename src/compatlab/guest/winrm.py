"""The WinRM channel: WS-Management over HTTP(S) into a Windows guest, through pywinrm.

``winrm.Protocol`` is used directly (not ``winrm.Session``) so that every call has a deadline:
one Protocol per call, its HTTP read timeout derived from the time left, and the WS-Man
``OperationTimeout`` of each Receive long-poll cut to the time left. A command that outlives its
timeout gets WS-Man's ``terminate`` signal, which ends the process on the guest.

The password (:func:`~compatlab.guest.winrm_edges.resolve_password`) and what pywinrm's and
requests' exceptions mean (:func:`~compatlab.guest.winrm_edges.map_winrm_error`) are in
``guest/winrm_edges.py``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Final, Literal, TypeVar

import requests
from winrm.exceptions import (
    AuthenticationError,
    WinRMOperationTimeoutError,
)
from winrm.protocol import Protocol

from compatlab.catalog import Credentials
from compatlab.errors import GuestError, GuestTimeout, GuestUnreachable
from compatlab.guest.channel import (
    OUTPUT_LIMIT,
    CommandResult,
    clean_clixml,
    encode_powershell,
    poll_until_ready,
)
from compatlab.guest.winrm_edges import map_winrm_error, resolve_password
from compatlab.text import OutputBuffer

__all__ = ["WinRMChannel", "WinRMTransport"]

log = logging.getLogger(__name__)

_CHANNEL: Final = "winrm"
WinRMTransport = Literal["ntlm", "kerberos", "credssp", "basic", "plaintext", "ssl"]
_T = TypeVar("_T")

# Raw bytes per stdin line when uploading: 48 KiB -> 64 KiB of base64, which pywinrm encodes
# once more into the Send envelope (~87 KiB), inside WinRM's default 150 KiB MaxEnvelopeSize.
_UPLOAD_LINE: Final = 48 * 1024
# UTF-8 console output: codepage 437 (pywinrm's default) would mangle anything not ASCII.
_UTF8_CODEPAGE: Final = 65001

# PowerShell reading base64 lines from stdin (pipeline input), writing them to the file and
# answering with the size and SHA-256 of what it wrote, so the upload is checked end to end.
_UPLOAD_SCRIPT: Final = """\
begin {
    $ErrorActionPreference = 'Stop'
    $file = [IO.File]::Create('%(path)s')
    $sha = [Security.Cryptography.SHA256]::Create()
    $size = 0
}
process {
    $bytes = [Convert]::FromBase64String($_)
    [void]$sha.TransformBlock($bytes, 0, $bytes.Length, $bytes, 0)
    $file.Write($bytes, 0, $bytes.Length)
    $size += $bytes.Length
}
end {
    [void]$sha.TransformFinalBlock((New-Object byte[] 0), 0, 0)
    $file.Close()
    '{0} {1}' -f $size, [BitConverter]::ToString($sha.Hash).Replace('-', '').ToLowerInvariant()
}
"""
_DOWNLOAD_SCRIPT: Final = """\
$ErrorActionPreference = 'Stop'
[Convert]::ToBase64String([IO.File]::ReadAllBytes('%(path)s'))
"""


class WinRMChannel:
    """A :class:`~compatlab.guest.channel.Channel` over WinRM to ``host:port``.

    ``transport`` is pywinrm's authentication (``ntlm`` by default; ``basic`` only over https or
    a loopback test double). ``server_cert_validation`` and ``ca_trust_path`` apply to https.
    ``domain`` is the libvirt domain's name, for error messages. ``shutdown_timeout`` bounds how
    long :meth:`reboot` / :meth:`shutdown` wait for WinRM to stop answering. ``output_limit``
    bounds the bytes of each output stream of :meth:`run` kept in memory as they arrive.
    """

    name: Final = _CHANNEL

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        *,
        transport: WinRMTransport = "ntlm",
        scheme: Literal["http", "https"] = "http",
        server_cert_validation: Literal["validate", "ignore"] = "validate",
        ca_trust_path: str | None = None,
        domain: str | None = None,
        operation_timeout: int = 20,
        shutdown_timeout: float = 120.0,
        output_limit: int = OUTPUT_LIMIT,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        self.domain = domain
        self.username = credentials.username
        self._password = resolve_password(credentials, domain=domain)
        netloc = f"[{host}]" if ":" in host else host
        self.endpoint = f"{scheme}://{netloc}:{port}/wsman"
        self.transport: WinRMTransport = transport
        self.server_cert_validation: Literal["validate", "ignore"] = server_cert_validation
        self.ca_trust_path = ca_trust_path
        self.operation_timeout = max(1, operation_timeout)
        self.shutdown_timeout = shutdown_timeout
        self.output_limit = output_limit

    def __repr__(self) -> str:
        # No password here, ever: reprs end up in logs and tracebacks.
        return (
            f"WinRMChannel({self.endpoint!r}, user={self.username!r}, transport={self.transport!r})"
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _error(self, cls: type[GuestError], message: str) -> GuestError:
        return cls(f"{message} [{self.endpoint}]", channel=_CHANNEL, domain=self.domain)

    def _call(self, doing: str, action: Callable[[], _T]) -> _T:
        """Run one pywinrm call, mapping its exceptions."""
        try:
            return action()
        except Exception as exc:
            mapped = map_winrm_error(exc, doing=doing, endpoint=self.endpoint, domain=self.domain)
            if mapped is None:
                raise
            raise mapped from exc

    def _protocol(self, timeout: float) -> Protocol:
        """A fresh Protocol whose timeouts fit a call of ``timeout`` seconds."""
        # pywinrm wants whole seconds and read_timeout > operation_timeout.
        operation = max(1, min(self.operation_timeout, math.ceil(timeout)))
        read = operation + max(1, min(5, operation // 2))
        return self._call(
            "connect",
            lambda: Protocol(
                self.endpoint,
                transport=self.transport,
                username=self.username,
                password=self._password,
                server_cert_validation=self.server_cert_validation,
                # None: no CA bundle from the environment (pywinrm warns when it reads one).
                ca_trust_path=self.ca_trust_path,  # type: ignore[arg-type]
                read_timeout_sec=read,
                operation_timeout_sec=operation,
                # No proxy: lab guests are reached directly, never through an HTTP proxy.
                proxy=None,
            ),
        )

    def _execute(
        self,
        executable: str,
        arguments: list[str],
        *,
        timeout: float,
        stdin: Iterator[bytes] | None = None,
        limit: int | None = None,
    ) -> tuple[OutputBuffer, OutputBuffer, int, float]:
        """One command in a fresh shell: (stdout, stderr, exit code, seconds).

        ``limit`` bounds the bytes kept of each stream (None: all, for a file's content).
        """
        start = time.monotonic()
        deadline = start + timeout
        protocol = self._protocol(timeout)

        def step(doing: str, action: Callable[[], _T]) -> _T:
            if time.monotonic() >= deadline:
                raise self._error(GuestTimeout, f"{doing}: no time left of {timeout:g} s")
            return self._call(doing, action)

        shell_id = command_id = None
        try:
            shell_id = step(
                "open shell", lambda: protocol.open_shell(codepage=_UTF8_CODEPAGE, noprofile=True)
            )
            command_id = step(
                "start command",
                lambda: protocol.run_command(
                    shell_id, executable, arguments, console_mode_stdin=stdin is None
                ),
            )
            if stdin is not None:
                self._send(protocol, shell_id, command_id, stdin, step)
            out, err = OutputBuffer(limit), OutputBuffer(limit)
            code = self._receive(protocol, shell_id, command_id, deadline, timeout, out, err)
        except GuestError as exc:
            # Over a broken wire, clean-up requests would only wait out their own timeouts.
            if not isinstance(exc.__cause__, requests.exceptions.RequestException):
                self._clean_up(protocol, shell_id, command_id)
            raise
        else:
            self._clean_up(protocol, shell_id, command_id)
        finally:
            protocol.transport.close_session()
        return out, err, code, time.monotonic() - start

    def _send(
        self,
        protocol: Protocol,
        shell_id: str,
        command_id: str,
        stdin: Iterator[bytes],
        step: Callable[[str, Callable[[], None]], None],
    ) -> None:
        # One line per Send; the last one closes stdin, which ends PowerShell's pipeline.
        chunk = next(stdin, b"")
        while True:
            following = next(stdin, None)
            send = functools.partial(
                protocol.send_command_input, shell_id, command_id, chunk, end=following is None
            )
            step("send input", send)
            if following is None:
                return
            chunk = following

    def _receive(
        self,
        protocol: Protocol,
        shell_id: str,
        command_id: str,
        deadline: float,
        timeout: float,
        out: OutputBuffer,
        err: OutputBuffer,
    ) -> int:
        """Collect the command's output into ``out`` and ``err``; its exit code."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(
                    GuestTimeout,
                    f"command did not finish within {timeout:g} s; sent WS-Man terminate",
                )
            # Long-poll no longer than the time left (the attribute feeds each request's header).
            protocol.operation_timeout_sec = max(1, min(self.operation_timeout, math.ceil(left)))
            try:
                stdout, stderr, code, done = protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue  # no output within the long-poll: the normal case for a slow command
            except Exception as exc:
                mapped = map_winrm_error(
                    exc, doing="receive output", endpoint=self.endpoint, domain=self.domain
                )
                if mapped is None:
                    raise
                raise mapped from exc
            out.append(stdout)
            err.append(stderr)
            if done:
                return int(code)

    def _clean_up(self, protocol: Protocol, shell_id: str | None, command_id: str | None) -> None:
        """Signal terminate (ends the process if our timeout left it running), delete the shell.

        Windows keeps a shell until its idle timeout otherwise, and caps shells per user.
        """
        if shell_id is None:
            return
        if command_id is not None:
            self._quietly("signal", lambda: protocol.cleanup_command(shell_id, command_id))
        self._quietly("close shell", lambda: protocol.close_shell(shell_id, False))

    def _quietly(self, doing: str, action: Callable[[], object]) -> None:
        """Clean-up that must not hide the outcome: log and carry on."""
        try:
            action()
        except Exception as exc:  # any failure here is the server's, and the result stands
            log.debug("%s: %s failed: %s", self.endpoint, doing, exc)

    # -- Channel ------------------------------------------------------------------------------

    def ping(self, timeout: float) -> bool:
        """Run ``hostname``: True when WinRM can log on and start a process.

        A WS-Man Identify would be one request instead of five, but it only proves the listener
        is up; a boot counts as complete when commands can run. Credentials rejected and TLS
        failures raise: waiting does not cure them. Anything else is "not up yet".
        """
        try:
            self._execute("hostname", [], timeout=timeout, limit=self.output_limit)
        except GuestError as exc:
            permanent = (AuthenticationError, requests.exceptions.SSLError)
            if isinstance(exc.__cause__, permanent):
                raise
            log.debug("%s: not answering yet: %s", self.endpoint, exc)
            return False
        return True

    def wait_ready(self, timeout: float, *, poll: float = 0.5) -> float:
        """Ping until WinRM runs a command; see :meth:`Channel.wait_ready`."""
        return poll_until_ready(self.ping, timeout, poll=poll, channel=_CHANNEL, domain=self.domain)

    def run(self, command: str, *, timeout: float, shell: str | None = None) -> CommandResult:
        """Run ``command`` with cmd.exe (default) or PowerShell (``shell='powershell'``)."""
        arguments: list[str]
        if shell in (None, "cmd"):
            executable, arguments = command, []
        elif shell == "powershell":
            executable, arguments = _powershell(command)
        else:
            raise ValueError(f"shell over WinRM must be 'cmd' or 'powershell', not {shell!r}")
        out, err, code, seconds = self._execute(
            executable, arguments, timeout=timeout, limit=self.output_limit
        )
        stderr = err.text()
        if shell == "powershell":
            stderr = clean_clixml(stderr)
        return CommandResult(exit_code=code, stdout=out.text(), stderr=stderr, seconds=seconds)

    def write_file(self, path: str, data: bytes, *, timeout: float = 300.0) -> None:
        """Stream ``data`` as base64 lines on a PowerShell's stdin; check size and SHA-256."""
        script = _UPLOAD_SCRIPT % {"path": _ps_quote(path)}
        executable, arguments = _powershell(script)
        lines = (
            base64.b64encode(data[i : i + _UPLOAD_LINE]) + b"\r\n"
            for i in range(0, max(len(data), 1), _UPLOAD_LINE)
        )
        out, err, code, _ = self._execute(
            executable, arguments, timeout=timeout, stdin=lines, limit=self.output_limit
        )
        if code != 0:
            reason = clean_clixml(err.text()).strip()
            raise self._error(GuestError, f"writing {path} failed (exit {code}): {reason}")
        expected = f"{len(data)} {hashlib.sha256(data).hexdigest()}"
        answer = out.text().strip()
        if answer != expected:
            raise self._error(
                GuestError, f"writing {path}: the guest wrote {answer!r}, expected {expected!r}"
            )

    def read_file(self, path: str, *, timeout: float = 300.0) -> bytes:
        """Read the file as base64 from a PowerShell's stdout."""
        executable, arguments = _powershell(_DOWNLOAD_SCRIPT % {"path": _ps_quote(path)})
        # The file's content is the answer: all of stdout is kept (stderr is only the reason).
        out, err, code, _ = self._execute(executable, arguments, timeout=timeout)
        if code != 0:
            reason = clean_clixml(err.text()).strip()
            raise self._error(GuestError, f"reading {path} failed (exit {code}): {reason}")
        try:
            return base64.b64decode(b"".join(out.data().split()), validate=True)
        except ValueError as exc:
            raise self._error(GuestError, f"reading {path}: the answer is not base64") from exc

    def reboot(self) -> None:
        """``shutdown /r /t 0``, then wait until WinRM stops answering."""
        self._shutdown("/r")

    def shutdown(self) -> None:
        """``shutdown /s /t 0``, then wait until WinRM stops answering."""
        self._shutdown("/s")

    def _shutdown(self, flag: Literal["/r", "/s"]) -> None:
        try:
            out, err, code, _ = self._execute(
                f"shutdown {flag} /t 0", [], timeout=30, limit=self.output_limit
            )
        except (GuestUnreachable, GuestTimeout) as exc:
            # The connection dropping under the command is the shutdown working.
            log.debug("%s: went away during shutdown %s: %s", self.endpoint, flag, exc)
            return
        if code != 0:
            text = (err.text() or out.text()).strip()
            raise self._error(GuestError, f"shutdown {flag} /t 0 failed (exit {code}): {text}")
        # Windows keeps answering for a while after the command returned.
        deadline = time.monotonic() + self.shutdown_timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not self.ping(min(left, 10.0)):
                    return
            except GuestError:
                return  # even "credentials rejected" here means logon is being torn down
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
        raise self._error(
            GuestTimeout,
            f"shutdown {flag} /t 0 ran, but WinRM still answered after {self.shutdown_timeout:g} s",
        )


def _powershell(script: str) -> tuple[str, list[str]]:
    return (
        "powershell.exe",
        ["-NoProfile", "-NonInteractive", "-EncodedCommand", encode_powershell(script)],
    )


def _ps_quote(text: str) -> str:
    """``text`` for a single-quoted PowerShell string."""
    return text.replace("'", "''")
