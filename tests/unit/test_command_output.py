"""Command output is capped as it arrives (issue 8): qemu-ga's base64 answer and WinRM's
Receive stream keep at most the channel's output limit, head and tail around a
``[… N bytes cut]`` mark, however much a command prints.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import libvirt
import pytest

from compatlab.catalog import Credentials
from compatlab.guest.agent import AgentChannel
from compatlab.guest.winrm import WinRMChannel
from compatlab.text import cut_mark
from tests.support.wsman_server import RecordedWSManServer, Reply

MiB = 1024 * 1024


@pytest.fixture
def test_domain() -> Iterator[libvirt.virDomain]:
    """The running domain ``test`` of libvirt's built-in test driver (no agent needed here)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    try:
        yield conn.lookupByName("test")
    finally:
        conn.close()
        libvirt.registerErrorHandler(None, None)


def test_agent_output_is_capped_with_a_mark(test_domain: libvirt.virDomain) -> None:
    channel = AgentChannel(test_domain, os_family="linux")
    out = b"installing...\n" + b"." * (20 * MiB) + b"\nerror 1603: rolled back\n"
    status = {
        "exited": True,
        "exitcode": 1,
        "out-data": base64.b64encode(out).decode(),
        "err-data": base64.b64encode(b"short\n").decode(),
    }
    result = channel._result(status, 1.0)
    assert len(result.stdout.encode()) <= MiB + 64
    assert result.stdout.startswith("installing...\n")
    assert result.stdout.endswith("\nerror 1603: rolled back\n")
    assert cut_mark(len(out) - MiB) in result.stdout
    assert result.stderr == "short\n"


def test_agent_output_the_agent_truncated_says_so(test_domain: libvirt.virDomain) -> None:
    channel = AgentChannel(test_domain, os_family="linux", output_limit=100)
    status = {
        "exited": True,
        "exitcode": 0,
        "out-data": base64.b64encode(b"a" * 1000).decode(),
        "out-truncated": True,
    }
    result = channel._result(status, 1.0)
    assert result.stdout.startswith("a" * 50 + "\n" + cut_mark(900))
    assert result.stdout.endswith("[… the guest agent cut the rest]\n")


def test_winrm_output_is_capped_as_it_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPATLAB_TEST_WINRM_PASSWORD", "s3cret")
    big = "first line\r\n" + "x" * 300_000 + "\r\nlast line\r\n"
    with RecordedWSManServer(username="vagrant", password="s3cret") as server:
        server.reply("type setup.log", Reply(stdout=big, stderr="e" * 70_000))
        channel = WinRMChannel(
            server.host,
            server.port,
            Credentials(username="vagrant", password_env="COMPATLAB_TEST_WINRM_PASSWORD"),
            transport="basic",
            output_limit=64 * 1024,
        )
        result = channel.run("type setup.log", timeout=20)
    assert server.errors == []
    assert result.stdout.startswith("first line\r\n")
    assert result.stdout.endswith("\r\nlast line\r\n")
    assert cut_mark(len(big) - 64 * 1024) in result.stdout
    assert len(result.stdout) < 64 * 1024 + 64
    assert result.stderr == "e" * 32768 + "\n" + cut_mark(70_000 - 65536) + "\n" + "e" * 32768
