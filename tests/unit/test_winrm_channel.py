"""The WinRM channel against a WS-Man test double that replays recorded Windows envelopes.

The double (``tests/support/wsman_server.py``) is a real HTTP server on 127.0.0.1: the real
pywinrm and requests run, so authentication, SOAP parsing, timeouts and connection failures take
their real paths. Command results are programmed per test; no Windows is involved.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import winrm.exceptions

from compatlab.catalog import Credentials
from compatlab.errors import GuestError, GuestTimeout, GuestUnreachable
from compatlab.guest.channel import Channel, clean_clixml, open_channel
from compatlab.guest.winrm import WinRMChannel
from compatlab.guest.winrm_edges import map_winrm_error
from tests.support.wsman_server import ENVELOPES, ReceivedCommand, RecordedWSManServer, Reply

PASSWORD_ENV = "COMPATLAB_TEST_WINRM_PASSWORD"
SECRET = "vagrant-s3cret"


@pytest.fixture
def server() -> Iterator[RecordedWSManServer]:
    with RecordedWSManServer(username="vagrant", password=SECRET) as double:
        yield double
    assert double.errors == [], "the test double itself failed"


@pytest.fixture
def channel(server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch) -> WinRMChannel:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    return make_channel(server)


def make_channel(server: RecordedWSManServer, **options: object) -> WinRMChannel:
    credentials = Credentials(username="vagrant", password_env=PASSWORD_ENV)
    return WinRMChannel(
        server.host,
        server.port,
        credentials,
        transport="basic",  # plain HTTP Basic: only because the double is on loopback
        domain="win11-cell",
        **options,  # type: ignore[arg-type]
    )


# -- commands ---------------------------------------------------------------------------------


def test_run_returns_stdout_stderr_exit_code(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.reply(
        "echo hello & echo err 1>&2 & exit /b 3",
        Reply(stdout="hello\r\n", stderr="err \r\n", exit_code=3),
    )

    result = channel.run("echo hello & echo err 1>&2 & exit /b 3", timeout=10)

    assert (result.exit_code, result.stdout, result.stderr) == (3, "hello\r\n", "err \r\n")
    assert not result.succeeded
    assert result.seconds > 0
    # A shell per command, its command terminated and the shell deleted afterwards.
    assert server.actions == ["Create", "Command", "Receive", "Signal", "Delete"]


def test_an_unknown_command_fails_like_cmd_exe(channel: WinRMChannel) -> None:
    result = channel.run("frobnicate /all", timeout=10)

    assert result.exit_code == 1
    assert "'frobnicate' is not recognized" in result.stderr


def test_powershell_goes_base64_utf16_encoded(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    script = "Write-Output 'Grüße'; exit 5"
    server.reply(script, Reply(stdout="Grüße\r\n", exit_code=5))

    result = channel.run(script, timeout=10, shell="powershell")

    assert (result.exit_code, result.stdout) == (5, "Grüße\r\n")
    sent = server.commands[-1]
    assert sent.command == "powershell.exe"
    assert sent.arguments.startswith("-NoProfile -NonInteractive -EncodedCommand ")
    encoded = sent.arguments.split()[-1]
    assert base64.b64decode(encoded).decode("utf-16-le") == script


def test_powershell_error_records_are_turned_into_text(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    # The CLIXML stderr PowerShell really sent for Write-Error "Error" (recorded by pywinrm).
    recorded = (ENVELOPES / "powershell_error_stderr.b64").read_text().split()
    clixml = b"".join(base64.b64decode(line) for line in recorded)
    server.reply('Write-Error "Error"', Reply(stderr=clixml, exit_code=1))

    result = channel.run('Write-Error "Error"', timeout=10, shell="powershell")

    assert result.exit_code == 1
    assert result.stderr.startswith('Write-Error "Error" : Error\n')
    assert (
        "FullyQualifiedErrorId : Microsoft.PowerShell.Commands.WriteErrorExceptio" in result.stderr
    )
    assert "CLIXML" not in result.stderr


def test_clean_clixml_leaves_plain_text_alone() -> None:
    assert clean_clixml("Access is denied.\r\n") == "Access is denied.\r\n"


def test_large_output_arrives_over_several_receives(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    big = "x" * 200_000 + "\r\n"
    server.reply("type big.log", Reply(stdout=big))

    result = channel.run("type big.log", timeout=10)

    assert result.stdout == big
    assert server.actions.count("Receive") >= 4  # 64 KiB per ReceiveResponse


def test_a_slow_command_is_waited_for_across_operation_timeouts(
    server: RecordedWSManServer, server_channel_short_polls: WinRMChannel
) -> None:
    server.reply("ping -n 3 127.0.0.1", Reply(stdout="done\r\n", seconds=1.3))

    result = server_channel_short_polls.run("ping -n 3 127.0.0.1", timeout=10)

    assert result.stdout == "done\r\n"
    # Windows answers a Receive with nothing to say with the TimedOut fault; pywinrm raises
    # WinRMOperationTimeoutError and the channel asks again.
    assert server.actions.count("Receive") >= 2


@pytest.fixture
def server_channel_short_polls(
    server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch
) -> WinRMChannel:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    return make_channel(server, operation_timeout=1)


def test_a_command_over_its_timeout_is_terminated(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.reply("setup.exe /quiet", Reply(seconds=60))

    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="did not finish within 1 s") as caught:
        channel.run("setup.exe /quiet", timeout=1)

    assert time.monotonic() - start < 3
    assert caught.value.channel == "winrm"
    assert caught.value.domain == "win11-cell"
    assert server.commands[-1].signals == ["terminate"]
    assert server.actions[-1] == "Delete"


# -- files ------------------------------------------------------------------------------------


class FakeWindowsFiles:
    """Stands in for the two PowerShell scripts behind write_file / read_file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.corrupt = False

    def __call__(self, received: ReceivedCommand) -> Reply | None:
        script = received.script or ""
        path_match = re.search(r"(Create|ReadAllBytes)\('((?:[^']|'')*)'\)", script)
        if path_match is None:
            return None
        path = path_match.group(2).replace("''", "'")
        if "TransformBlock" in script:  # the upload script: base64 lines on stdin
            data = b"".join(base64.b64decode(line) for line in received.stdin.split())
            self.files[path] = data
            digest = hashlib.sha256(data + (b"!" if self.corrupt else b"")).hexdigest()
            return Reply(stdout=f"{len(data)} {digest}\r\n")
        if "ReadAllBytes" in script:
            if path not in self.files:
                recorded = (ENVELOPES / "powershell_error_stderr.b64").read_text().split()
                clixml = b"".join(base64.b64decode(line) for line in recorded)
                return Reply(stderr=clixml, exit_code=1)
            return Reply(stdout=base64.b64encode(self.files[path]) + b"\r\n")
        return None


@pytest.fixture
def files(server: RecordedWSManServer) -> FakeWindowsFiles:
    fake = FakeWindowsFiles()
    server.handle(fake)
    return fake


def test_a_file_round_trip(
    server: RecordedWSManServer, channel: WinRMChannel, files: FakeWindowsFiles
) -> None:
    payload = bytes(range(256)) * 600  # 150 KiB: several stdin lines, several Sends
    path = r"C:\Users\vagrant\AppData\Local\Temp\it's.bin"

    channel.write_file(path, payload)

    assert files.files[path] == payload
    assert server.actions.count("Send") == 4  # 48 KiB per line
    assert channel.read_file(path) == payload


def test_an_empty_file_round_trip(channel: WinRMChannel, files: FakeWindowsFiles) -> None:
    channel.write_file(r"C:\empty.txt", b"")

    assert files.files[r"C:\empty.txt"] == b""
    assert channel.read_file(r"C:\empty.txt") == b""


def test_a_write_the_guest_did_not_confirm_is_an_error(
    channel: WinRMChannel, files: FakeWindowsFiles
) -> None:
    files.corrupt = True

    with pytest.raises(GuestError, match="expected"):
        channel.write_file(r"C:\x.bin", b"payload")


def test_reading_a_missing_file_is_an_error_with_powershells_words(
    channel: WinRMChannel, files: FakeWindowsFiles
) -> None:
    with pytest.raises(GuestError, match=r"reading C:\\nope.txt failed \(exit 1\): Write-Error"):
        channel.read_file(r"C:\nope.txt")


# -- readiness, reboot ------------------------------------------------------------------------


def test_ping_and_wait_ready(server: RecordedWSManServer, channel: WinRMChannel) -> None:
    assert channel.ping(5) is True
    assert channel.wait_ready(5) < 5

    server.go_down()

    assert channel.ping(1) is False
    with pytest.raises(GuestTimeout, match="did not answer within 1 s"):
        channel.wait_ready(1, poll=0.2)


def test_ping_treats_503_as_not_up_yet(server: RecordedWSManServer, channel: WinRMChannel) -> None:
    server.fail("unavailable", action="Create")

    assert channel.ping(5) is False
    assert channel.ping(5) is True


def test_reboot_returns_once_the_guest_is_gone_and_wait_ready_sees_it_back(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.reply("shutdown /r /t 0", Reply(then_down=0.2))  # Windows answers, then goes
    boot = threading.Timer(1.0, server.come_up)
    boot.start()
    try:
        channel.reboot()
        assert not server.up
        seconds = channel.wait_ready(10, poll=0.2)
    finally:
        boot.cancel()
        boot.join()
    assert server.up
    assert 0 < seconds < 10
    assert any(c.line == "shutdown /r /t 0" for c in server.commands)


def test_a_connection_dropped_by_the_shutdown_counts_as_success(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.fail("reset", action="Receive")

    channel.shutdown()

    assert server.commands[-1].line == "shutdown /s /t 0"


def test_a_refused_shutdown_is_an_error(server: RecordedWSManServer, channel: WinRMChannel) -> None:
    server.reply(
        "shutdown /r /t 0",
        Reply(stderr="A system shutdown is in progress.(1115)\r\n", exit_code=1115),
    )

    with pytest.raises(GuestError, match=r"exit 1115\): A system shutdown is in progress"):
        channel.reboot()


# -- failures of the wire -----------------------------------------------------------------------


def test_rejected_credentials_are_a_guest_error_without_the_password(
    server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-" + SECRET)
    channel = make_channel(server)

    with pytest.raises(GuestError, match="credentials rejected") as caught:
        channel.run("hostname", timeout=5)

    assert type(caught.value) is GuestError  # neither timeout nor unreachable: waiting won't help
    assert isinstance(caught.value.__cause__, winrm.exceptions.InvalidCredentialsError)
    with pytest.raises(GuestError, match="credentials rejected"):
        channel.ping(5)  # ping raises too: this is no "not up yet"
    for text in (str(caught.value), repr(channel)):
        assert SECRET not in text


def test_a_stalled_answer_is_a_timeout(server: RecordedWSManServer, channel: WinRMChannel) -> None:
    server.fail("stall", action="Receive", seconds=10)

    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="read timed out") as caught:
        channel.run("hostname", timeout=1)

    assert time.monotonic() - start < 5
    assert isinstance(caught.value.__cause__, requests.exceptions.ReadTimeout)


def test_a_server_that_is_down_is_unreachable(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.go_down()

    with pytest.raises(GuestUnreachable, match="no connection") as caught:
        channel.run("hostname", timeout=5)

    assert isinstance(caught.value.__cause__, requests.exceptions.ConnectionError)


def test_a_reset_connection_is_unreachable(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.fail("reset", action="Command")

    with pytest.raises(GuestUnreachable):
        channel.run("hostname", timeout=5)


def test_a_soap_fault_is_a_guest_error_with_its_reason(
    server: RecordedWSManServer, channel: WinRMChannel
) -> None:
    server.fail("fault", action="Create")

    with pytest.raises(GuestError, match=r"WSMan fault 2150858817\): Reason text\.") as caught:
        channel.run("hostname", timeout=5)

    assert type(caught.value) is GuestError
    assert isinstance(caught.value.__cause__, winrm.exceptions.WSManFaultError)


# -- the password at the edge -------------------------------------------------------------------


def test_a_missing_password_variable_is_named(
    server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)

    with pytest.raises(GuestError, match=f"environment variable {PASSWORD_ENV}, which is not set"):
        make_channel(server)

    monkeypatch.setenv(PASSWORD_ENV, "")
    with pytest.raises(GuestError, match="which is empty"):
        make_channel(server)


def test_a_password_file_is_read_and_its_newline_dropped(
    server: RecordedWSManServer, tmp_path: Path
) -> None:
    secret = tmp_path / "win11.password"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    credentials = Credentials(username="vagrant", password_file=secret)

    channel = WinRMChannel(server.host, server.port, credentials, transport="basic")

    assert channel.run("hostname", timeout=5).stdout == "WIN-COMPATLAB\r\n"


def test_a_missing_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.password"
    credentials = Credentials(username="vagrant", password_file=missing)

    with pytest.raises(GuestError, match=f"comes from {re.escape(str(missing))}, which cannot be"):
        WinRMChannel("127.0.0.1", 5985, credentials)

    with pytest.raises(GuestError, match="neither password_env nor password_file"):
        WinRMChannel("127.0.0.1", 5985, Credentials(username="vagrant"))


# -- the boundary -------------------------------------------------------------------------------


def _outside_exceptions() -> list[type[BaseException]]:
    """Every exception class requests and pywinrm define (warnings are not raised: left out)."""
    found: list[type[BaseException]] = []
    for module in (requests.exceptions, winrm.exceptions):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if not issubclass(value, BaseException) or issubclass(value, Warning):
                continue
            if value.__module__.startswith(("requests", "winrm")):
                found.append(value)
    return sorted(set(found), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _instance(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, winrm.exceptions.WSManFaultError):
        return cls(500, "Bad HTTP response", "<xml/>", "Reason text.", wsman_fault_code=2150858817)
    if issubclass(cls, winrm.exceptions.WinRMTransportError):
        return cls("http", 500, "")
    if issubclass(cls, requests.exceptions.JSONDecodeError):
        return cls("Expecting value", "<html>", 0)
    return cls("boom")


@pytest.mark.parametrize("cls", _outside_exceptions(), ids=lambda cls: cls.__qualname__)
def test_every_outside_exception_is_mapped(cls: type[BaseException]) -> None:
    mapped = map_winrm_error(_instance(cls), doing="run", endpoint="http://w:5985/wsman")

    assert isinstance(mapped, GuestError)
    assert mapped.channel == "winrm"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), GuestUnreachable),
        (requests.exceptions.ConnectTimeout("connect"), GuestUnreachable),
        (requests.exceptions.ReadTimeout("read"), GuestTimeout),
        (requests.exceptions.SSLError("certificate verify failed"), GuestError),
        (winrm.exceptions.InvalidCredentialsError("rejected"), GuestError),
        (winrm.exceptions.WinRMOperationTimeoutError(), GuestTimeout),
        (winrm.exceptions.WinRMTransportError("http", 503, ""), GuestUnreachable),
        (winrm.exceptions.WinRMTransportError("http", 500, ""), GuestError),
        (winrm.exceptions.WinRMError("generic"), GuestError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.__name__,
)
def test_outside_exceptions_land_in_the_right_branch(
    exc: BaseException, expected: type[GuestError]
) -> None:
    mapped = map_winrm_error(exc, doing="run", endpoint="http://w:5985/wsman")

    assert type(mapped) is expected


def test_our_own_bugs_are_not_mapped() -> None:
    assert map_winrm_error(KeyError("x"), doing="run", endpoint="e") is None


# -- the seam -----------------------------------------------------------------------------------


def test_the_registry_builds_the_winrm_channel(
    server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    credentials = Credentials(username="vagrant", password_env=PASSWORD_ENV)

    channel = open_channel("winrm", server.host, server.port, credentials, transport="basic")

    assert isinstance(channel, WinRMChannel)
    assert isinstance(channel, Channel)
    assert channel.name == "winrm"
    assert channel.ping(5)


def test_only_cmd_and_powershell_are_shells(channel: WinRMChannel) -> None:
    with pytest.raises(ValueError, match="'cmd' or 'powershell'"):
        channel.run("ls", timeout=1, shell="/bin/sh")
