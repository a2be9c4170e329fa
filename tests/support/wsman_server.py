"""A WS-Management endpoint on 127.0.0.1 that replays RECORDED Windows envelopes.

TEST DOUBLE, NOT A WINDOWS MACHINE. Nothing here runs a command: each command's stdout, stderr
and exit code are what the test programmed (:meth:`RecordedWSManServer.reply`,
:meth:`RecordedWSManServer.handle`). What *is* real is the wire: a real HTTP server (http.server in
a thread) that the real pywinrm + requests code talks to, answering with the response envelopes
Windows' WinRM service sent to pywinrm, recorded in ``tests/support/wsman/`` (see its README for
where each one comes from). So the channel's HTTP, SOAP, authentication, timeout and error paths
run as they would against Windows; Windows' behaviour is only as good as the recordings.

Authentication is HTTP Basic (pywinrm ``transport='basic'``), acceptable only because the double
listens on loopback. Failures can be programmed per WS-Man action: 401, a recorded SOAP fault
(HTTP 500), 503, a stalled answer, a connection reset, and the whole endpoint going down and
coming back (a reboot).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import re
import socket
import struct
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Literal

__all__ = ["Failure", "ReceivedCommand", "RecordedWSManServer", "Reply"]

ENVELOPES = Path(__file__).parent / "wsman"
_NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
# Windows splits large output over several ReceiveResponses; so does the double.
_RECEIVE_CHUNK = 64 * 1024

FailureKind = Literal["unauthorized", "fault", "unavailable", "stall", "reset"]


@dataclass(frozen=True)
class Reply:
    """What a programmed command "prints" and "returns"; ``seconds`` is how long it "runs"."""

    stdout: bytes | str = b""
    stderr: bytes | str = b""
    exit_code: int = 0
    seconds: float = 0.0
    # After the command is done, the endpoint goes down this many seconds later (a reboot).
    then_down: float | None = None


@dataclass
class ReceivedCommand:
    """A command as the double received it."""

    command: str
    arguments: str
    stdin: bytearray = field(default_factory=bytearray)
    signals: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        """The command line: ``Command`` and ``Arguments`` as cmd.exe would see them."""
        return f"{self.command} {self.arguments}".strip()

    @property
    def script(self) -> str | None:
        """The PowerShell script behind ``-EncodedCommand``, decoded; None for other commands."""
        match = re.search(r"-EncodedCommand\s+(\S+)", self.arguments, re.IGNORECASE)
        if not match:
            return None
        return base64.b64decode(match.group(1)).decode("utf-16-le")


@dataclass
class Failure:
    """A failure injected into the next ``times`` requests of one WS-Man action (or any)."""

    kind: FailureKind
    action: str | None = None
    times: int = 1
    seconds: float = 0.0


@dataclass
class _Running:
    received: ReceivedCommand
    started: float
    reply: Reply | None = None
    sent: int = 0  # bytes of stdout already delivered


Handler = Callable[[ReceivedCommand], Reply | None]


def _load(name: str) -> Template:
    return Template((ENVELOPES / name).read_text(encoding="utf-8"))


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    double: RecordedWSManServer

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timeout test) breaks the pipe: expected, not a double's bug.
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError | OSError):
            self.double.errors.append(repr(error))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as WinRM does
    server: _HTTPServer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows the test's own output."""

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this, delayed ACKs add 40 ms to each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._connections.add(self.connection)

    def finish(self) -> None:
        self.server.double._connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        double = self.server.double
        try:
            status, headers, payload = double._respond(self.headers.get("Authorization"), body)
        except _Reset:
            # RST instead of FIN: what a guest that vanished mid-request looks like.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        except Exception as exc:  # a bug in the double: make the test fail loudly
            double.errors.append(repr(exc))
            status, headers, payload = 500, {}, b""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Reset(Exception):
    """Raised inside the double to drop the connection without an answer."""


class RecordedWSManServer:
    """The double. Use as a context manager; ``endpoint`` is what pywinrm connects to."""

    def __init__(self, *, username: str = "vagrant", password: str = "vagrant") -> None:
        self.username = username
        self.password = password
        self.host = "127.0.0.1"
        self.port = 0
        self.commands: list[ReceivedCommand] = []
        self.actions: list[str] = []
        self.errors: list[str] = []
        self._replies: dict[str, Reply] = {"hostname": Reply(stdout=b"WIN-COMPATLAB\r\n")}
        self._handlers: list[Handler] = []
        self._failures: list[Failure] = []
        self._shells: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._templates = {
            name: _load(f"{name}.xml")
            for name in (
                "create_response",
                "command_response",
                "send_response",
                "receive_response",
                "signal_response",
                "delete_response",
                "fault_operation_timeout",
                "fault_sender",
            )
        }

    # -- life ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/wsman"

    @property
    def up(self) -> bool:
        return self._httpd is not None

    def start(self) -> RecordedWSManServer:
        """Listen (on a free port the first time, on the same port after :meth:`go_down`)."""
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.double = self
        self.port = httpd.server_address[1]
        self._stopping.clear()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def go_down(self) -> None:
        """Stop answering at once, as a guest that went into reboot: refused, resets."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._httpd = self._thread = None
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)
        thread.join()

    def come_up(self) -> None:
        """Answer again on the same port: the guest finished booting."""
        self.start()

    def __enter__(self) -> RecordedWSManServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.go_down()

    # -- programming --------------------------------------------------------------------------

    def reply(self, match: str, reply: Reply) -> None:
        """Answer the command whose command line (or decoded PowerShell script) is ``match``."""
        self._replies[match] = reply

    def handle(self, handler: Handler) -> None:
        """Ask ``handler`` about commands no :meth:`reply` matches (None: not mine)."""
        self._handlers.append(handler)

    def fail(
        self, kind: FailureKind, *, action: str | None = None, times: int = 1, seconds: float = 0
    ) -> None:
        """Make the next ``times`` requests of ``action`` (e.g. ``"Receive"``; None: any) fail.

        ``unauthorized``: 401; ``fault``: HTTP 500 with a recorded SOAP fault; ``unavailable``:
        503; ``stall``: answer only after ``seconds``; ``reset``: drop the connection.
        """
        self._failures.append(Failure(kind, action, times, seconds))

    # -- the protocol -------------------------------------------------------------------------

    def _respond(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        root = ET.fromstring(body)
        header = root.find("s:Header", _NS)
        assert header is not None, "not a SOAP envelope"
        action = (header.findtext("a:Action", "", _NS)).rsplit("/", 1)[-1]
        message_id = header.findtext("a:MessageID", "", _NS)
        with self._lock:
            self.actions.append(action)
            failure = self._take_failure(action)
        if failure is not None:
            answer = self._fail(failure, message_id)
            if answer is not None:
                return answer
        if not self._authorized(authorization):
            return 401, {"WWW-Authenticate": 'Basic realm="WSMAN"'}, b""
        values = {
            "message_id": str(uuid.uuid4()).upper(),
            "relates_to": message_id,
            "endpoint": self.endpoint,
        }
        selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", _NS)
        shell_id = selector.text if selector is not None and selector.text else ""
        body_node = root.find("s:Body", _NS)
        assert body_node is not None
        if action == "Create":
            shell_id = str(uuid.uuid4()).upper()
            self._shells.add(shell_id)
            return self._ok("create_response", values, shell_id=shell_id)
        if shell_id not in self._shells:
            return self._soap(500, "fault_sender", values)
        if action == "Command":
            command = body_node.findtext("rsp:CommandLine/rsp:Command", "", _NS)
            arguments = body_node.findtext("rsp:CommandLine/rsp:Arguments", "", _NS)
            received = ReceivedCommand(command, arguments)
            command_id = str(uuid.uuid4()).upper()
            with self._lock:
                self.commands.append(received)
                self._running[command_id] = _Running(received, time.monotonic())
            return self._ok("command_response", values, command_id=command_id)
        if action == "Send":
            stream = body_node.find("rsp:Send/rsp:Stream", _NS)
            assert stream is not None
            running = self._running[stream.get("CommandId", "")]
            running.received.stdin += base64.b64decode(stream.text or "")
            return self._ok("send_response", values)
        if action == "Receive":
            desired = body_node.find("rsp:Receive/rsp:DesiredStream", _NS)
            assert desired is not None
            command_id = desired.get("CommandId", "")
            timeout = _seconds(header.findtext("w:OperationTimeout", "PT20S", _NS))
            return self._receive(self._running[command_id], command_id, timeout, values)
        if action == "Signal":
            signal = body_node.find("rsp:Signal", _NS)
            assert signal is not None
            running = self._running[signal.get("CommandId", "")]
            running.received.signals.append(signal.findtext("rsp:Code", "", _NS).rsplit("/", 1)[-1])
            return self._ok("signal_response", values)
        if action == "Delete":
            self._shells.discard(shell_id)
            return self._ok("delete_response", values)
        return self._soap(500, "fault_sender", values)

    def _receive(
        self, running: _Running, command_id: str, timeout: float, values: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        if running.reply is None:
            running.reply = self._lookup(running.received)
        reply = running.reply
        left = running.started + reply.seconds - time.monotonic()
        # Windows holds a Receive for OperationTimeout, then answers with this fault.
        if left > 0 and (self._stopping.wait(min(left, timeout)) or left > timeout):
            return self._soap(500, "fault_operation_timeout", values)
        stdout = _bytes(reply.stdout)
        chunk = stdout[running.sent : running.sent + _RECEIVE_CHUNK]
        running.sent += len(chunk)
        streams = []
        if chunk:
            streams.append(_stream("stdout", command_id, chunk))
        done = running.sent >= len(stdout)
        if done:
            if reply.stderr:
                streams.append(_stream("stderr", command_id, _bytes(reply.stderr)))
            streams += [_stream("stdout", command_id, None), _stream("stderr", command_id, None)]
            state = (
                f'<rsp:CommandState CommandId="{command_id}" State="{_SHELL}/CommandState/Done">\n'
                f"        <rsp:ExitCode>{reply.exit_code}</rsp:ExitCode>\n"
                "    </rsp:CommandState>"
            )
            if reply.then_down is not None:
                timer = threading.Timer(reply.then_down, self.go_down)
                timer.daemon = True
                timer.start()
        else:
            running_state = f"{_SHELL}/CommandState/Running"
            state = f'<rsp:CommandState CommandId="{command_id}" State="{running_state}"/>'
        return self._ok("receive_response", values, streams="\n".join(streams), command_state=state)

    def _lookup(self, received: ReceivedCommand) -> Reply:
        script = received.script
        for key in (script, received.line) if script is not None else (received.line,):
            if key in self._replies:
                return self._replies[key]
        for handler in self._handlers:
            found = handler(received)
            if found is not None:
                return found
        # What cmd.exe says about a command it does not know.
        name = received.command.split()[0] if received.command else ""
        return Reply(
            stderr=f"'{name}' is not recognized as an internal or external command,\r\n"
            "operable program or batch file.\r\n",
            exit_code=1,
        )

    def _authorized(self, authorization: str | None) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return authorization == f"Basic {expected}"

    def _take_failure(self, action: str) -> Failure | None:
        for failure in self._failures:
            if failure.action in (None, action):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _fail(self, failure: Failure, message_id: str) -> tuple[int, dict[str, str], bytes] | None:
        values = {"message_id": str(uuid.uuid4()).upper(), "relates_to": message_id}
        if failure.kind == "unauthorized":
            return 401, {"WWW-Authenticate": 'Basic realm="WSMAN"'}, b""
        if failure.kind == "fault":
            return self._soap(500, "fault_sender", values)
        if failure.kind == "unavailable":
            return 503, {"Content-Type": "text/html"}, b""
        if failure.kind == "reset":
            raise _Reset
        self._stopping.wait(failure.seconds)  # stall, then answer normally
        return None

    def _ok(
        self, name: str, values: dict[str, str], **more: str
    ) -> tuple[int, dict[str, str], bytes]:
        return self._soap(200, name, values, **more)

    def _soap(
        self, status: int, name: str, values: dict[str, str], **more: str
    ) -> tuple[int, dict[str, str], bytes]:
        text = self._templates[name].substitute({**values, **more})
        return status, {"Content-Type": "application/soap+xml;charset=UTF-8"}, text.encode()


def _stream(name: str, command_id: str, data: bytes | None) -> str:
    if data is None:
        return f'        <rsp:Stream Name="{name}" CommandId="{command_id}" End="true"/>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'        <rsp:Stream Name="{name}" CommandId="{command_id}">{encoded}</rsp:Stream>'


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def _seconds(duration: str) -> float:
    """An ``xs:duration`` like ``PT20S`` or ``PT1.5S`` in seconds."""
    match = re.fullmatch(r"PT([0-9.]+)S", duration.strip())
    return float(match.group(1)) if match else 20.0
