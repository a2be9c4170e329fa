"""The WinRS stand-in (the tiny-linux WinRM variant's responder), run on this host.

``images/recipes/tiny-linux/winrs/compatlab_winrs.py`` is a STAND-IN for Windows's WinRM
service: it answers pywinrm's subset of WS-Management + Windows Remote Shell and runs the
commands with ``/bin/sh``. Here it runs as a subprocess on 127.0.0.1 (``python -I -S``: the
standard library only, as in the guest) and is driven by compatlab's :class:`WinRMChannel` and by
plain pywinrm, over HTTP Basic and over NTLM with message encryption (pywinrm's default). Its
envelopes are checked against the Windows responses recorded by pywinrm's tests
(``tests/support/wsman/``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import ModuleType

import pytest
import requests
import xmltodict  # type: ignore[import-untyped]
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WSManFaultError
from winrm.protocol import Protocol

from compatlab.catalog import Credentials, parse_image
from compatlab.errors import GuestError, GuestTimeout
from compatlab.guest.winrm import WinRMChannel
from tests.support.wsman_server import ENVELOPES

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "images/recipes/tiny-linux/winrs/compatlab_winrs.py"
USER = "compatlab"
SECRET = "standin-Pa55-w0rd"
PASSWORD_ENV = "COMPATLAB_TEST_WINRS_PASSWORD"
SHELL_NOT_FOUND = 2150858843


def load_standin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compatlab_winrs", STANDIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


standin = load_standin()


@dataclass
class Responder:
    proc: subprocess.Popen[str]
    port: int
    log: Path
    workdir: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/wsman"

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def responder(folder: Path, *extra: str) -> Iterator[Responder]:
    """The stand-in on 127.0.0.1:<a free port>, as the guest's service runs it (bar the port)."""
    folder.mkdir(parents=True, exist_ok=True)
    account = folder / "account"
    account.write_text(f"username={USER}\npassword={SECRET}\n", encoding="utf-8")
    account.chmod(0o600)
    log = folder / "standin.log"
    workdir = folder / "work"
    workdir.mkdir(exist_ok=True)
    with log.open("w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-I", "-S", str(STANDIN), "--listen", "127.0.0.1:0"),
                *("--account", str(account), "--shell", "/bin/sh", "--workdir", str(workdir)),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # written once the socket listens
        match = re.search(r"compatlab-winrs-standin .* listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"the stand-in did not start: {line!r}; {log.read_text()}"
        yield Responder(proc, int(match.group(1)), log, workdir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        finally:
            proc.stdout.close()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Responder]:
    with responder(tmp_path_factory.mktemp("winrs")) as running:
        yield running
    # The password never reaches the stand-in's log.
    assert SECRET not in running.log_text()


@pytest.fixture(params=["basic", "ntlm"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def channel(server: Responder, transport: str, monkeypatch: pytest.MonkeyPatch) -> WinRMChannel:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    return make_channel(server, transport=transport)


def make_channel(server: Responder, **options: object) -> WinRMChannel:
    return WinRMChannel(
        "127.0.0.1",
        server.port,
        Credentials(username=USER, password_env=PASSWORD_ENV),
        domain="tinylinux-a-winrm-cell",
        **options,  # type: ignore[arg-type]
    )


@contextmanager
def protocol(
    server: Responder, transport: str = "basic", password: str = SECRET, operation: int = 5
) -> Iterator[Protocol]:
    """Plain pywinrm, as its own users drive it."""
    p = Protocol(
        server.endpoint,
        transport=transport,  # type: ignore[arg-type]
        username=USER,
        password=password,
        ca_trust_path=None,  # type: ignore[arg-type]
        proxy=None,
        operation_timeout_sec=operation,
        read_timeout_sec=operation + 5,
    )
    try:
        yield p
    finally:
        p.transport.close_session()


def gone(pid: int, within: float = 5.0) -> bool:
    """True once process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def read_pid(path: Path, within: float = 5.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


# -- commands through compatlab's channel -----------------------------------------------------


def test_run_returns_stdout_stderr_exit_code(channel: WinRMChannel) -> None:
    result = channel.run("echo hello; echo oops >&2; exit 3", timeout=20)

    assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\n", "oops\n")


def test_the_command_runs_with_sh_in_the_workdir_as_this_user(
    server: Responder, channel: WinRMChannel
) -> None:
    result = channel.run("pwd; id -u; hostname", timeout=20)

    pwd, uid, hostname = result.stdout.splitlines()
    assert Path(pwd) == server.workdir
    assert int(uid) == os.getuid()
    assert hostname == os.uname().nodename
    assert channel.ping(10)


def test_an_unknown_command_is_shs_127(channel: WinRMChannel) -> None:
    result = channel.run("frobnicate /all", timeout=20)

    assert result.exit_code == 127
    assert "frobnicate: not found" in result.stderr


def test_utf8_output_passes_through(channel: WinRMChannel) -> None:
    result = channel.run("printf 'Gr\\303\\274\\303\\237e\\n'", timeout=20)

    assert result.stdout == "Grüße\n"


def test_powershell_script_runs_with_sh_when_sh_can_parse_it(channel: WinRMChannel) -> None:
    result = channel.run("echo from-ps; exit 4", timeout=20, shell="powershell")

    assert (result.exit_code, result.stdout) == (4, "from-ps\n")


def test_real_powershell_is_refused_with_a_clear_reason(channel: WinRMChannel) -> None:
    result = channel.run("[IO.File]::ReadAllBytes('C:\\x') | Out-Null", timeout=20,
                         shell="powershell")  # fmt: skip

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("compatlab-winrs-standin: there is no PowerShell in this guest")
    assert "cannot parse this one" in result.stderr


def test_powershell_that_sh_can_parse_runs_and_its_failure_says_why(
    channel: WinRMChannel,
) -> None:
    result = channel.run("Get-Service | Where-Object { $_.Status -eq 'Running' }", timeout=20,
                         shell="powershell")  # fmt: skip

    assert result.exit_code == 127
    assert "Get-Service: not found" in result.stderr  # sh's words, then the stand-in's
    assert result.stderr.endswith(
        "\ncompatlab-winrs-standin: this PowerShell script ran with /bin/sh: there is no "
        "PowerShell in this guest\n"
    )


def test_write_file_needs_powershell_and_says_so(channel: WinRMChannel) -> None:
    with pytest.raises(GuestError, match="there is no PowerShell in this guest"):
        channel.write_file("/tmp/never-written", b"data", timeout=20)


def test_large_output_arrives_whole_over_several_receives(
    server: Responder, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    # NTLM seals every byte with RC4 in pure Python on both ends: a smaller size keeps it fast.
    size = 4 * 1024 * 1024 if transport == "basic" else 1024 * 1024
    command = f"head -c {size} /dev/urandom > big.bin; sha256sum big.bin; cat big.bin"
    with protocol(server, transport) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, command)
        chunks: list[bytes] = []
        while True:
            out, _, code, done = p.get_command_output_raw(shell_id, command_id)
            chunks.append(out)
            if done:
                break
        p.cleanup_command(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    first, _, data = b"".join(chunks).partition(b"\n")
    assert code == 0
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == first.split()[0].decode()
    assert len(chunks) > size // (150 * 1024)  # bounded by MaxEnvelopeSize, as on Windows


def test_concurrent_commands_in_concurrent_shells(
    server: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    results: dict[int, str] = {}

    def one(n: int) -> None:
        channel = make_channel(server, transport="ntlm" if n % 2 else "basic")
        results[n] = channel.run(f"sleep 1; echo {n}", timeout=30).stdout

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == {n: f"{n}\n" for n in range(8)}
    assert time.monotonic() - start < 6  # side by side, not one after another (8 s)


# -- long poll, timeouts, signals -------------------------------------------------------------


def test_receive_long_polls_until_output_then_reports_running(server: Responder) -> None:
    with protocol(server, operation=1) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "echo first; sleep 1.6; echo second; exit 7")
        out, _, _, done = p.get_command_output_raw(shell_id, command_id)
        assert (out, done) == (b"first\n", False)  # CommandState Running
        start = time.monotonic()
        with pytest.raises(WinRMOperationTimeoutError):
            p.get_command_output_raw(shell_id, command_id)  # nothing new within PT1S
        waited = time.monotonic() - start
        out, _, code, done = p.get_command_output_raw(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    assert 0.9 <= waited < 1.5  # held for OperationTimeout, not longer
    assert (out, code, done) == (b"second\n", 7, True)


def test_the_long_poll_is_capped(tmp_path: Path) -> None:
    with (
        responder(tmp_path, "--max-operation-timeout", "1") as server,
        protocol(server, operation=30) as p,
    ):
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "sleep 5")
        start = time.monotonic()
        with pytest.raises(WinRMOperationTimeoutError):
            p.get_command_output_raw(shell_id, command_id)
        assert time.monotonic() - start < 2
        p.close_shell(shell_id, close_session=False)


def test_a_command_over_the_channels_timeout_is_killed(
    server: Responder, channel: WinRMChannel
) -> None:
    pidfile = server.workdir / f"timeout-{channel.transport}.pid"
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="sent WS-Man terminate"):
        channel.run(f"echo $$ > {pidfile}; exec sleep 60", timeout=1)

    assert time.monotonic() - start < 4
    assert gone(read_pid(pidfile)), "Signal terminate did not end the process"


def test_signal_terminate_kills_the_process_group_and_forgets_the_command(
    server: Responder,
) -> None:
    pidfile = server.workdir / "terminate.pid"
    with protocol(server) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, f"sleep 60 & echo $! > {pidfile}; wait")
        child = read_pid(pidfile)
        p.cleanup_command(shell_id, command_id)  # Signal .../signal/terminate
        assert gone(child), "the background child outlived terminate"
        with pytest.raises(WSManFaultError, match="no command with CommandId"):
            p.get_command_output_raw(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)


def test_delete_kills_what_runs_in_the_shell_and_forgets_it(server: Responder) -> None:
    pidfile = server.workdir / "delete.pid"
    with protocol(server) as p:
        shell_id = p.open_shell()
        p.run_command(shell_id, f"echo $$ > {pidfile}; exec sleep 60")
        pid = read_pid(pidfile)
        p.close_shell(shell_id, close_session=False)
        assert gone(pid), "the command outlived its shell"
        with pytest.raises(WSManFaultError) as caught:
            p.run_command(shell_id, "echo too late")
    assert caught.value.wsman_fault_code == SHELL_NOT_FOUND
    assert "the shell was not found on the server" in caught.value.reason


def test_ctrl_c_interrupts(server: Responder) -> None:
    with protocol(server) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "trap 'echo interrupted; exit 130' INT; "
                                   "while :; do sleep 0.05; done")  # fmt: skip
        time.sleep(0.3)
        p.send_message(signal_message(p, shell_id, command_id, "ctrl_c"))
        out, _, code = p.get_command_output(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    assert (out, code) == (b"interrupted\n", 130)


def test_a_process_group_is_signalled_only_while_its_id_cannot_be_anyone_elses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's group id is its first process's pid, free for the next new process once
    that one is reaped: ``killpg`` after that could hit a stranger's group. So the stand-in
    leaves the ended process a zombie -- its pid taken -- until the command is forgotten
    (Signal terminate, Delete), signals the group then (stragglers of the command too), reaps
    it, and never signals that id again."""
    pidfile = tmp_path / "straggler.pid"
    command = standin.Command("c1", "exit 3")
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}; exit 3"
    command.start(standin.Plan(["/bin/sh", "-c", script]), str(tmp_path), dict(os.environ))
    proc = command.proc
    assert proc is not None and proc.stdin and proc.stdout and proc.stderr
    straggler = read_pid(pidfile)
    try:
        with command.cond:
            assert command.cond.wait_for(lambda: command.exit_code == 3, timeout=5)
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        assert stat.rpartition(")")[2].split()[0] == "Z", "ended, but its pid must stay taken"

        command.kill(standin.signal.SIGKILL)  # what Signal terminate and Delete send
        assert gone(straggler), "the command's own straggler outlived terminate"
        assert proc.returncode == 3  # reaped: the pid is free now
        sent: list[tuple[int, int]] = []
        monkeypatch.setattr(standin.os, "killpg", lambda pgid, sig: sent.append((pgid, sig)))
        command.kill(standin.signal.SIGKILL)
        command.kill(standin.signal.SIGINT)
        assert sent == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(straggler, signal.SIGKILL)
        if proc.returncode is None:
            proc.wait()
        with command.cond:
            command.cond.wait_for(lambda: command.open_pipes == 0, timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def signal_message(p: Protocol, shell_id: str, command_id: str, code: str) -> str:
    req = {
        "env:Envelope": p.build_wsman_header(
            resource_uri=standin.CMD_RESOURCE_URI,
            action=standin.SHELL_URI + "/Signal",
            shell_id=shell_id,
        )
    }
    node = req["env:Envelope"].setdefault("env:Body", {}).setdefault("rsp:Signal", {})
    node["@CommandId"] = command_id
    node["rsp:Code"] = f"{standin.SHELL_URI}/signal/{code}"
    return str(xmltodict.unparse(req))


def test_an_idle_shell_is_deleted_after_its_idle_timeout(server: Responder) -> None:
    with protocol(server) as p:
        idle = p.open_shell(idle_timeout="PT1S")
        time.sleep(1.3)
        other = p.open_shell()  # creating a shell reaps idle ones
        with pytest.raises(WSManFaultError) as caught:
            p.run_command(idle, "true")
        p.close_shell(other, close_session=False)
    assert caught.value.wsman_fault_code == SHELL_NOT_FOUND


def test_shells_per_user_are_capped(tmp_path: Path) -> None:
    with responder(tmp_path, "--max-shells", "2") as server, protocol(server) as p:
        shells = [p.open_shell(), p.open_shell()]
        with pytest.raises(WSManFaultError) as caught:
            p.open_shell()
        for shell_id in shells:
            p.close_shell(shell_id, close_session=False)
        p.close_shell(p.open_shell(), close_session=False)  # room again
    assert caught.value.wsman_fault_code == standin.ERROR_WSMAN_QUOTA_MAX_SHELLS


# -- stdin ------------------------------------------------------------------------------------


def test_send_feeds_stdin_and_end_closes_it(server: Responder, transport: str) -> None:
    data = os.urandom(300 * 1024)
    with protocol(server, transport) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "sha256sum; echo bye", console_mode_stdin=False)
        lines = [data[i : i + 48 * 1024] for i in range(0, len(data), 48 * 1024)]
        for n, chunk in enumerate(lines):
            p.send_command_input(shell_id, command_id, chunk, end=n == len(lines) - 1)
        out, _, code = p.get_command_output(shell_id, command_id)
        p.cleanup_command(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    assert code == 0
    assert out.decode().split()[0] == hashlib.sha256(data).hexdigest()


def test_a_bare_cmd_reads_its_commands_from_stdin(server: Responder) -> None:
    # What pywinrm's own tests do with cmd.exe; here the shell is sh.
    with protocol(server) as p:
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "cmd")
        p.send_command_input(shell_id, command_id, b'echo "hello world"\nexit 5\n')
        out, _, code = p.get_command_output(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    assert (out, code) == (b"hello world\n", 5)


def test_cmd_slash_c_runs_the_rest_with_sh(channel: WinRMChannel) -> None:
    result = channel.run("cmd.exe /c echo via cmd", timeout=20)

    assert (result.exit_code, result.stdout) == (0, "via cmd\n")


# -- authentication and HTTP ------------------------------------------------------------------


def test_a_wrong_password_is_401_and_a_guest_error(
    server: Responder, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-" + SECRET)
    channel = make_channel(server, transport=transport)

    with pytest.raises(GuestError, match="credentials rejected") as caught:
        channel.run("hostname", timeout=10)
    assert type(caught.value) is GuestError
    assert SECRET not in str(caught.value)
    with pytest.raises(InvalidCredentialsError), protocol(server, transport, "nope") as p:
        p.open_shell()
    word = {"basic": "Basic", "ntlm": "NTLM"}[transport]
    assert f"{word} logon refused for user 'compatlab'" in server.log_text()


def test_http_answers_name_the_stand_in(server: Responder) -> None:
    anonymous = requests.post(server.endpoint, data=b"<x/>", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["Server"].startswith("compatlab-winrs-standin/")
    assert anonymous.headers["WWW-Authenticate"] == 'Negotiate, Basic realm="WSMAN"'
    assert requests.get(server.endpoint, timeout=5).status_code == 405
    assert requests.post(server.endpoint.replace("/wsman", "/x"), timeout=5).status_code == 404
    wrong_user = requests.post(server.endpoint, data=b"", auth=("root", SECRET), timeout=5)
    assert wrong_user.status_code == 401


def test_basic_only_offers_no_negotiate(tmp_path: Path) -> None:
    with responder(tmp_path, "--auth", "basic") as server:
        answer = requests.post(server.endpoint, data=b"<x/>", timeout=5)
        with pytest.raises(InvalidCredentialsError), protocol(server, "ntlm") as p:
            p.open_shell()
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="WSMAN"'


def test_an_unsupported_action_is_a_wsman_fault(server: Responder) -> None:
    with protocol(server) as p:
        header = p.build_wsman_header(
            action="http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate",
            resource_uri=standin.CMD_RESOURCE_URI,
        )
        req = {"env:Envelope": {**header, "env:Body": {}}}
        with pytest.raises(WSManFaultError) as caught:
            p.send_message(xmltodict.unparse(req))
    assert caught.value.wsman_fault_code == standin.ERROR_WSMAN_ACTION_NOT_SUPPORTED
    assert "compatlab-winrs-standin does not support" in caught.value.reason


# -- envelopes: those Windows sent, as pywinrm recorded them ----------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "create_response",
        "command_response",
        "send_response",
        "receive_response",
        "signal_response",
        "delete_response",
    ],
)
def test_templates_are_the_recorded_windows_envelopes(name: str) -> None:
    recorded = (ENVELOPES / f"{name}.xml").read_text(encoding="utf-8")
    assert standin.TEMPLATES[name].template == recorded


@pytest.mark.parametrize(
    ("recording", "values"),
    [
        (
            "fault_sender.xml",
            {
                "code": "s:Sender",
                "subcode": "w:SchemaValidationError",
                "lang": "",
                "reason": "Reason text.",
                "wsman_code": "2150858817",
                "machine": "SERVER2008.domain.local",
                "message": "Detail message.",
            },
        ),
        (
            "fault_operation_timeout.xml",
            {
                "code": "s:Receiver",
                "subcode": "w:TimedOut",
                "lang": "en-US",
                "reason": standin.TIMEOUT_TEXT,
                "wsman_code": "2150858793",
                "machine": "server2022.domain.test",
                "message": standin.TIMEOUT_TEXT,
            },
        ),
    ],
)
def test_the_fault_template_gives_the_recorded_faults_back(
    recording: str, values: dict[str, str]
) -> None:
    filled = standin.TEMPLATES["fault"].safe_substitute(values)
    assert filled == (ENVELOPES / recording).read_text(encoding="utf-8")


def record_responses(p: Protocol) -> list[bytes]:
    """Every response body pywinrm reads from now on (decrypted), faults included."""
    responses: list[bytes] = []
    original = p.transport._get_message_response_text

    def recording(response: requests.Response) -> bytes:
        text: bytes = original(response)
        responses.append(text)
        return text

    p.transport._get_message_response_text = recording  # type: ignore[method-assign]
    return responses


def shape(document: bytes | str) -> list[tuple[str, tuple[str, ...], str]]:
    """Element tags in order, their attribute names, and the text of the fixed elements."""
    fixed = {"Action", "To", "ResourceURI", "Value"}
    return [
        (
            node.tag,
            tuple(sorted(node.attrib)),
            (node.text or "").strip() if node.tag.rsplit("}", 1)[-1] in fixed else "",
        )
        for node in ET.fromstring(document).iter()
    ]


def recorded_shape(name: str, **values: str) -> list[tuple[str, tuple[str, ...], str]]:
    text = (ENVELOPES / name).read_text(encoding="utf-8")
    return shape(Template(text).safe_substitute({"streams": "", "command_state": "", **values}))


def windows_receive(streams: str, state: str) -> str:
    """pywinrm's recorded Windows ReceiveResponse with these streams and CommandState."""
    recorded = (ENVELOPES / "receive_response.xml").read_text(encoding="utf-8")
    return Template(recorded).substitute(
        message_id="X", relates_to="Y", streams=streams, command_state=state
    )


def test_live_envelopes_have_the_recorded_windows_shapes(server: Responder, transport: str) -> None:
    with protocol(server, transport, operation=1) as p:
        responses = record_responses(p)
        shell_id = p.open_shell()
        command_id = p.run_command(shell_id, "cat; echo out; echo err >&2; sleep 1.5; exit 2")
        p.send_command_input(shell_id, command_id, b"in\n", end=True)
        with pytest.raises(WinRMOperationTimeoutError):
            p.get_command_output_raw(shell_id, command_id)  # the output went with the first
            p.get_command_output_raw(shell_id, command_id)
        out, err, code = p.get_command_output(shell_id, command_id)
        p.cleanup_command(shell_id, command_id)
        p.close_shell(shell_id, close_session=False)
    create, command, send, *receives, signal_, delete = responses
    assert shape(create) == recorded_shape("create_response.xml")
    assert shape(command) == recorded_shape("command_response.xml")
    assert shape(send) == recorded_shape("send_response.xml")
    assert shape(signal_) == recorded_shape("signal_response.xml")
    assert shape(delete) == recorded_shape("delete_response.xml")
    timeout = next(r for r in receives if b"Fault" in r)
    assert shape(timeout) == recorded_shape("fault_operation_timeout.xml")
    # Receive answers against the recorded Windows form, streams and state included.
    assert shape(receives[0]) == shape(windows_receive(
        '<rsp:Stream Name="stdout" CommandId="C">aW4Kb3V0Cg==</rsp:Stream>\n'
        '<rsp:Stream Name="stderr" CommandId="C">ZXJyCg==</rsp:Stream>',
        f'<rsp:CommandState CommandId="C" State="{standin.SHELL_URI}/CommandState/Running"/>',
    ))  # fmt: skip
    assert shape(receives[-1]) == shape(windows_receive(
        '<rsp:Stream Name="stdout" CommandId="C" End="true"/>\n'
        '<rsp:Stream Name="stderr" CommandId="C" End="true"/>',
        f'<rsp:CommandState CommandId="C" State="{standin.SHELL_URI}/CommandState/Done">'
        "<rsp:ExitCode>2</rsp:ExitCode></rsp:CommandState>",
    ))  # fmt: skip
    assert (out, err, code) == (b"", b"", 2)  # all output came with the first answer
    assert ET.fromstring(create).find(".//{*}Address") is not None


# -- the guest's pieces -----------------------------------------------------------------------


def test_nt_hash_cli_and_md4() -> None:
    answer = subprocess.run(
        [sys.executable, "-I", "-S", str(STANDIN), "--nt-hash"],
        input="Password\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.strip() == "a4f49c406510bdcab6824ee7c30fd852"  # MS-NLMP 4.2.4.1.1
    assert standin.md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"  # RFC 1320 A.5
    assert standin.md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    digits = b"1234567890" * 8
    assert standin.md4(digits).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"


def test_an_account_file_with_an_nt_hash(tmp_path: Path) -> None:
    path = tmp_path / "account"
    path.write_text(f"# written by build.sh\nusername=Compatlab\nnt_hash={'00' * 16}\n")
    account = standin.Account.load(str(path))

    assert account.user_matches("compatlab") and account.user_matches(".\\COMPATLAB")
    assert not account.check_password("compatlab", "anything")


def test_command_lines_are_planned_as_documented() -> None:
    plan = standin.plan_command
    encoded = base64.b64encode("echo hi".encode("utf-16-le")).decode()
    assert plan("hostname", "/bin/sh").argv == ["/bin/sh", "-c", "hostname"]
    assert plan("cmd /c echo x", "/bin/sh").argv == ["/bin/sh", "-c", "echo x"]
    assert plan("cmd", "/bin/sh").argv == ["/bin/sh"]
    ps = f"powershell.exe -NoProfile -NonInteractive -EncodedCommand {encoded}"
    assert plan(ps, "/bin/sh").argv == ["/bin/sh", "-c", "echo hi"]
    assert plan(f"powershell -ExecutionPolicy Bypass -enc {encoded}", "/bin/sh").argv == [
        "/bin/sh", "-c", "echo hi"]  # fmt: skip
    assert plan("powershell -Command echo  spaced", "/bin/sh").argv == [
        "/bin/sh", "-c", "echo  spaced"]  # fmt: skip
    for refused in ("powershell -File x.ps1", "powershell", "powershell -Command -"):
        assert plan(refused, "/bin/sh").argv is None


# -- the image variant and its catalog entry ---------------------------------------------------

RECIPE = ROOT / "images/recipes/tiny-linux"


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r'([A-Z_]+)=(?:"(.*)"|(\S*))', line.strip())
        if match:
            values[match.group(1)] = (
                match.group(2) if match.group(2) is not None else match.group(3)
            )
    return values


def test_the_winrm_variant_is_tinylinux_a_plus_the_stand_in() -> None:
    a = env_file(RECIPE / "variants/tinylinux-a.env")
    winrm = env_file(RECIPE / "variants/tinylinux-a-winrm.env")
    for key in ("BUILD", "CMDLINE_EXTRA", "SYSCTL"):
        assert winrm[key] == a[key]
    assert winrm["WINRS"] == "1"
    assert "virtio_net" in winrm["MODULES_EXTRA"].split()
    assert "WINRS" not in a and "MODULES_EXTRA" not in a


def test_the_catalog_entry_points_at_the_build_and_holds_no_password() -> None:
    path = ROOT / "images/tinylinux-a-winrm.yaml"
    image = parse_image(path)
    variant = env_file(RECIPE / "variants/tinylinux-a-winrm.env")
    built = Path("/var/lib/compatlab/images/tinylinux-a-winrm")

    assert image.channel == "winrm" and image.variant == "tinylinux-a-winrm"
    assert image.credentials is not None and image.credentials.password_env is None
    assert image.credentials.username == variant["WINRS_USER"]
    assert image.credentials.password_file == built / "winrm-password"
    assert (image.disk, image.kernel, image.initrd) == (
        built / "disk.qcow2", built / "vmlinuz", built / "initrd.img"
    )  # fmt: skip
    assert image.cmdline == (
        "console=tty0 console=ttyS0,115200 root=LABEL=compatlab-root rootfstype=ext4 "
        f"{variant['CMDLINE_EXTRA']} compatlab.variant=tinylinux-a-winrm"
    )
    assert not re.search(r"^\s*password\s*:", path.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_guest_service_runs_the_stand_in_on_5985_with_the_built_account() -> None:
    service = (RECIPE / "winrs/rootfs/etc/compatlab/services.d/winrs").read_text()
    build = (RECIPE / "build.sh").read_text()

    assert (
        "exec /usr/bin/python3 -I -S -B /usr/sbin/compatlab-winrs --listen 0.0.0.0:5985" in service
    )
    assert "--account /etc/compatlab/winrs.account" in service
    assert '> "$ROOT/etc/compatlab/winrs.account"' in build
    assert "stand-in" in service.lower()


@pytest.mark.parametrize(
    ("arguments", "mode"),
    [
        ("/r /t 0", "reboot"),  # what compatlab's WinRM channel sends
        ("/s /t 0", "poweroff"),
        ("-r +0", "reboot"),  # what qemu-ga sends
        ("-h -P +0", "poweroff"),
        ("-h -H +0", "halt"),
    ],
)
def test_the_guests_shutdown_understands_windows_switches(
    tmp_path: Path, arguments: str, mode: str
) -> None:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("reboot", "poweroff", "halt"):
        (stubs / name).write_text(f"#!/bin/sh\necho {name}\n")
        (stubs / name).chmod(0o755)
    console = tmp_path / "console"
    script = (RECIPE / "rootfs/sbin/shutdown").read_text().replace("/dev/console", str(console))
    (tmp_path / "shutdown").write_text(script)

    done = subprocess.run(
        ["/bin/sh", str(tmp_path / "shutdown"), *arguments.split()],
        env={"PATH": f"{stubs}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"{mode}\n"
    assert console.read_text() == f"compatlab-guest: shutdown requested ({mode})\n"


# -- HTTPS, as Windows's listener on 5986 ------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, as the Windows recipe makes one."""
    cert, key = folder / "winrm-https.pem", folder / "winrm-https.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=compatlab-test", "-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("transport", ["ntlm", "basic"])
def test_winrm_over_https_checks_the_guests_certificate(
    tmp_path: Path, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a cell whose image names ``winrm_certificate`` does: HTTPS to the forwarded port,
    the server's certificate validated against that PEM. The server is the stand-in with TLS
    (Python's ssl), not Windows; the client side is pywinrm's, as for a Windows guest."""
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    cert, key = _self_signed(tmp_path)
    with responder(tmp_path / "tls", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        trusting = make_channel(
            server, transport=transport, scheme="https", ca_trust_path=str(cert)
        )
        result = trusting.run("echo over-tls", timeout=30)
        assert (result.exit_code, result.stdout) == (0, "over-tls\n")
        (tmp_path / "other").mkdir()
        other_cert, _ = _self_signed(tmp_path / "other")  # same names, another key
        doubting = make_channel(
            server, transport=transport, scheme="https", ca_trust_path=str(other_cert)
        )
        with pytest.raises(GuestError, match=r"(?i)certificate"):
            doubting.run("echo never", timeout=10)
        assert "never" not in server.log_text()
