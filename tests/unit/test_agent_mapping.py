"""The agent channel's boundary: every libvirt error it can meet becomes a GuestError.

Two sources of real ``libvirtError``s, no mocks of libvirt:

- libvirt's own ``test:///default`` driver, which has no guest agent: every agent call on it
  fails for real (``VIR_ERR_NO_SUPPORT``), through the real binding;
- errors recorded on this lab's hosts (libvirt 9.0, QEMU 7.2, qemu-ga 7.2), rebuilt as real
  ``libvirtError`` objects carrying the code and message libvirt gave. Two that could not be
  provoked here (a stale guest-sync, a held job lock) use the code and text of libvirt's source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import libvirt
import pytest

from compatlab.errors import GuestError, GuestTimeout, GuestUnreachable
from compatlab.guest.agent import AgentChannel, _is_expected_disconnect, map_libvirt_error
from compatlab.guest.channel import CHANNELS, Channel, open_channel


@pytest.fixture
def test_domain() -> Iterator[libvirt.virDomain]:
    """The running domain ``test`` of libvirt's built-in test driver."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    try:
        yield conn.lookupByName("test")
    finally:
        conn.close()
        libvirt.registerErrorHandler(None, None)


def recorded(code: int, message: str) -> libvirt.libvirtError:
    """A real libvirtError carrying what libvirt reported (the binding fills ``err`` itself)."""
    exc = libvirt.libvirtError(message)
    # The layout of virGetLastError(): code, domain, message, level, str1..str3, int1, int2.
    exc.err = (
        code,
        libvirt.VIR_FROM_QEMU,
        message,
        libvirt.VIR_ERR_ERROR,
        message,
        None,
        None,
        -1,
        -1,
    )
    return exc


# (code, message as libvirt said it, the error class it must become). Seen on this host unless
# marked "libvirt source".
RECORDED = [
    pytest.param(
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        "Guest agent is not responding: QEMU guest agent is not connected",
        GuestUnreachable,
        id="agent-not-connected",
    ),
    pytest.param(
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        "Guest agent is not responding: Guest agent not available for now",
        GuestUnreachable,
        id="agent-not-answering",
    ),
    pytest.param(
        libvirt.VIR_ERR_AGENT_UNSYNCED,
        "guest agent replied with wrong id to guest-sync command",  # libvirt source
        GuestUnreachable,
        id="agent-unsynced",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_INVALID,
        "Requested operation is not valid: domain is not running",
        GuestUnreachable,
        id="domain-not-running",
    ),
    pytest.param(
        libvirt.VIR_ERR_NO_DOMAIN,
        "Domain not found: no domain with matching uuid 'd49eea29-e1c7-42b9-94d0-883edeb738b0'",
        GuestUnreachable,
        id="domain-gone",
    ),
    pytest.param(
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        "Timed out during operation: cannot acquire state change lock "
        "(held by agent=remoteDispatchDomainQemuAgentCommand)",  # libvirt source
        GuestTimeout,
        id="agent-job-lock-timeout",
    ),
    pytest.param(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "internal error: unable to execute QEMU agent command 'guest-exec': Guest agent command "
        "failed, error was 'Failed to execute child process \u201c/nonexistent\u201d (No such file "
        "or directory)'",
        GuestError,
        id="guest-refused-command",
    ),
    pytest.param(
        libvirt.VIR_ERR_INTERNAL_ERROR,
        "internal error: unable to execute QEMU agent command 'guest-file-open': failed to open "
        "file '/nonexistent/x' (mode: 'r'): No such file or directory",
        GuestError,
        id="guest-file-missing",
    ),
    pytest.param(
        libvirt.VIR_ERR_NO_SUPPORT,
        "this function is not supported by the connection driver: virDomainQemuAgentCommand",
        GuestError,
        id="driver-without-agent",
    ),
]


@pytest.mark.parametrize(("code", "message", "expected"), RECORDED)
def test_recorded_libvirt_errors_map_to_the_guest_error_tree(
    code: int, message: str, expected: type[GuestError]
) -> None:
    exc = recorded(code, message)

    mapped = map_libvirt_error(exc, doing="guest-ping", domain="cell-1")

    assert type(mapped) is expected
    assert mapped.channel == "agent"
    assert mapped.domain == "cell-1"
    assert message in str(mapped)
    assert "guest-ping" in str(mapped)


def test_a_driver_without_an_agent_is_a_guest_error_raised_from_libvirt(
    test_domain: libvirt.virDomain,
) -> None:
    channel = AgentChannel(test_domain, os_family="linux")

    with pytest.raises(GuestError) as caught:
        channel.run("true", timeout=5)

    assert type(caught.value) is GuestError  # not "unreachable": waiting will not help
    assert isinstance(caught.value.__cause__, libvirt.libvirtError)
    assert caught.value.__cause__.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
    assert caught.value.domain == "test"
    assert "guest-exec" in str(caught.value)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda ch: ch.ping(1), id="ping"),
        pytest.param(lambda ch: ch.wait_ready(1, poll=0.1), id="wait_ready"),
        pytest.param(lambda ch: ch.read_file("/etc/hostname"), id="read_file"),
        pytest.param(lambda ch: ch.write_file("/tmp/x", b"x"), id="write_file"),
        pytest.param(lambda ch: ch.reboot(), id="reboot"),
        pytest.param(lambda ch: ch.shutdown(), id="shutdown"),
    ],
)
def test_every_operation_maps_the_driver_error(
    test_domain: libvirt.virDomain, call: Callable[[AgentChannel], object]
) -> None:
    channel = AgentChannel(test_domain, os_family="windows")

    with pytest.raises(GuestError) as caught:
        call(channel)

    assert isinstance(caught.value.__cause__, libvirt.libvirtError)


def test_an_inactive_domain_cannot_be_rebooted(test_domain: libvirt.virDomain) -> None:
    # A domain of our own: test:///default's state is shared by every connection in the process.
    conn = test_domain.connect()
    stopped = conn.defineXML(
        "<domain type='test'><name>chandev-stopped</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    try:
        channel = AgentChannel(stopped, os_family="linux")
        with pytest.raises(GuestUnreachable, match="not running"):
            channel.reboot()
    finally:
        stopped.undefine()


def test_the_registry_builds_the_agent_channel_lazily(test_domain: libvirt.virDomain) -> None:
    channel = open_channel("agent", test_domain, os_family="linux")

    assert isinstance(channel, AgentChannel)
    assert isinstance(channel, Channel)
    assert channel.name == "agent"
    assert set(CHANNELS) == {"agent", "winrm"}
    with pytest.raises(ValueError, match="unknown guest channel 'ssh'"):
        open_channel("ssh")


def test_bad_arguments_are_programming_errors(test_domain: libvirt.virDomain) -> None:
    with pytest.raises(ValueError, match="os_family"):
        AgentChannel(test_domain, os_family="beos")  # type: ignore[arg-type]
    channel = AgentChannel(test_domain, os_family="windows")
    with pytest.raises(ValueError, match="shell on a Windows guest"):
        channel.run("ls", timeout=1, shell="/bin/bash")


@pytest.mark.parametrize(
    ("code", "message", "worked"),
    [
        # qemu-ga never answers guest-shutdown: it dies with the guest. Seen on this host:
        (
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
            "Guest agent is not responding: Guest agent disappeared while executing command",
            True,
        ),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: End of file from agent socket", True),
        # The domain powered off before libvirt saw the agent's end of file.
        (
            libvirt.VIR_ERR_OPERATION_INVALID,
            "Requested operation is not valid: domain is not running",
            True,
        ),
        # The request never reached a guest.
        (
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
            "Guest agent is not responding: QEMU guest agent is not connected",
            False,
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "internal error: unable to execute QEMU agent command 'guest-shutdown': "
            "The command guest-shutdown has been disabled for this instance",
            False,
        ),
    ],
)
def test_which_failed_shutdown_calls_mean_the_shutdown_worked(
    code: int, message: str, worked: bool
) -> None:
    assert _is_expected_disconnect(recorded(code, message)) is worked
