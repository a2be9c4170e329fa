"""Crash evidence from inside a Windows guest: the script, its parser, the findings.

No Windows runs here. The channel is the real WinRM channel talking to the WS-Man test double
(``tests/support/wsman_server.py``, loopback, replaying recorded envelopes); what the "guest"
prints is programmed from ``tests/support/windows/``: HAND-WRITTEN in the documented format of
Windows PowerShell 5.1's output, NOT captured from a Windows machine (see its README).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from compatlab.catalog import Credentials
from compatlab.checks.windows import (
    CMD_LINE_BUDGET,
    EVENT_IDS,
    EVIDENCE_SCRIPT,
    WindowsEvidence,
    bugcheck,
    crash_evidence,
    evidence_script,
    findings,
    parse_evidence,
)
from compatlab.checks.windows_events import bucket_module
from compatlab.errors import GuestError
from compatlab.guest.winrm import WinRMChannel
from compatlab.model import Bugcheck
from tests.support.wsman_server import ReceivedCommand, RecordedWSManServer, Reply

OUTPUTS = Path(__file__).parents[1] / "support" / "windows"
PASSWORD_ENV = "COMPATLAB_TEST_WINRM_PASSWORD"
SECRET = "vagrant-s3cret"
SINCE = datetime(2025, 11, 23, 9, 10, 2, 517031, tzinfo=UTC)

PAGE_FAULT = Bugcheck(
    code="0x50",
    name="PAGE_FAULT_IN_NONPAGED_AREA",
    params=("0xffffd20012345678", "0x2", "0xfffff80511223344", "0x2"),
)


def output(name: str) -> str:
    """A hand-written stdout of the evidence script (CRLF-terminated, as powershell.exe)."""
    return (OUTPUTS / name).read_bytes().decode("ascii")


def evidence(name: str) -> WindowsEvidence:
    return parse_evidence(output(name))


def document(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(output(name))
    return loaded


# -- through the channel ------------------------------------------------------------------------


class EvidenceGuest:
    """Answers the evidence script with a programmed stdout; records the scripts it got."""

    def __init__(self) -> None:
        self.reply = Reply(stdout=output("clean_boot.json"))
        self.scripts: list[str] = []

    def __call__(self, received: ReceivedCommand) -> Reply | None:
        script = received.script
        if script is None or "Get-WinEvent" not in script:
            return None
        self.scripts.append(script)
        return self.reply


@pytest.fixture
def server() -> Iterator[RecordedWSManServer]:
    with RecordedWSManServer(username="vagrant", password=SECRET) as double:
        yield double
    assert double.errors == [], "the test double itself failed"


@pytest.fixture
def guest(server: RecordedWSManServer) -> EvidenceGuest:
    answering = EvidenceGuest()
    server.handle(answering)
    return answering


@pytest.fixture
def channel(server: RecordedWSManServer, monkeypatch: pytest.MonkeyPatch) -> WinRMChannel:
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    credentials = Credentials(username="vagrant", password_env=PASSWORD_ENV)
    return WinRMChannel(
        server.host, server.port, credentials, transport="basic", domain="win11-cell"
    )


def test_the_script_goes_to_powershell_once(
    server: RecordedWSManServer, guest: EvidenceGuest, channel: WinRMChannel
) -> None:
    crash_evidence(channel, since=SINCE, timeout=10, domain="win11-cell")

    assert len(server.commands) == 1  # one round trip for everything
    sent = server.commands[0]
    assert sent.command == "powershell.exe"
    assert sent.arguments.startswith("-NoProfile -NonInteractive -EncodedCommand ")
    script = sent.script
    assert script == evidence_script(SINCE)
    assert script is not None
    assert "$sinceText = '2025-11-23T09:10:02.5170310Z'" in script
    assert "Id = 41, 6008, 1001, 7000, 7026" in script
    assert "-ErrorAction SilentlyContinue" in script  # "No events were found" is no failure
    assert "ConvertTo-Json -InputObject $evidence -Depth 4 -Compress" in script
    assert "Get-CimInstance -ClassName Win32_OperatingSystem" in script
    assert "Minidump" in script
    # cmd.exe, through which WinRM starts it, cuts command lines at 8191 characters.
    assert len(sent.line) <= CMD_LINE_BUDGET
    assert not [line for line in script.splitlines() if line.startswith("#")]


def test_the_readable_script_keeps_its_comments() -> None:
    assert "# compatlab crash evidence" in EVIDENCE_SCRIPT
    assert "\n# -- the System log, and WER's reports" in EVIDENCE_SCRIPT


def test_the_script_also_reads_wer_reports_from_the_application_log() -> None:
    script = evidence_script(SINCE)
    assert "LogName = 'Application'; ProviderName = 'Windows Error Reporting'; Id = 1001" in script
    assert '$problems.Add("$($filter.LogName) log: $err")' in script  # each log's own failure


def test_a_bugcheck_comes_back_through_the_channel(
    guest: EvidenceGuest, channel: WinRMChannel
) -> None:
    guest.reply = Reply(stdout=output("bugcheck_0x50.json"))

    found = crash_evidence(channel, since=SINCE, timeout=10)

    assert bugcheck(found) == PAGE_FAULT
    assert found.last_boot == datetime(2025, 11, 23, 9, 13, 31, 500000, tzinfo=UTC)
    assert [e.id for e in found.events] == [41, 6008, 1001]  # oldest first


def test_a_failing_script_is_a_guest_error_with_its_reason(
    guest: EvidenceGuest, channel: WinRMChannel
) -> None:
    guest.reply = Reply(stderr="Get-WinEvent : The RPC server is unavailable\r\n", exit_code=1)

    with pytest.raises(GuestError, match=r"failed \(exit 1\): Get-WinEvent : The RPC") as caught:
        crash_evidence(channel, since=None, timeout=10, domain="win11-cell")

    assert caught.value.channel == "winrm"
    assert caught.value.domain == "win11-cell"


def test_output_that_is_not_the_document_is_a_guest_error(
    guest: EvidenceGuest, channel: WinRMChannel
) -> None:
    guest.reply = Reply(stdout="WARNING: something printed to the host\r\n")

    with pytest.raises(GuestError, match="printed no evidence document") as caught:
        crash_evidence(channel, since=None, timeout=10, domain="win11-cell")

    assert caught.value.channel == "winrm"
    assert "WARNING: something" in str(caught.value)


# -- the script's parameters --------------------------------------------------------------------


def test_since_is_sent_in_utc_to_the_tick() -> None:
    local = datetime(2025, 11, 23, 10, 10, 2, 517031, tzinfo=timezone(timedelta(hours=1)))

    assert "$sinceText = '2025-11-23T09:10:02.5170310Z'" in evidence_script(local)
    assert "$sinceText = ''" in evidence_script(None)


def test_a_naive_since_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evidence_script(datetime(2025, 11, 23, 9, 10))


def test_the_script_asks_for_every_event_id_it_interprets() -> None:
    assert set(EVENT_IDS) == {41, 6008, 1001, 7000, 7026}


# -- parsing: what each kind of evidence means -------------------------------------------------


def test_no_events_no_findings() -> None:
    found = evidence("clean_boot.json")

    assert found.events == () and found.dumps == () and found.problems == ()
    assert findings(found) == []
    assert bugcheck(found) is None
    assert found.now == datetime(2025, 11, 23, 9, 10, 2, 517031, tzinfo=UTC)


def test_kernel_power_41_with_bugcheck_code_80_is_0x50_with_four_parameters() -> None:
    found = evidence("bugcheck_0x50.json")

    (power,) = [e for e in found.events if e.id == 41]
    assert power.data["BugcheckCode"] == "80"  # decimal, as Windows writes it
    assert power.bugcheck == PAGE_FAULT
    assert power.source == "Kernel-Power"
    assert (
        "Kernel-Power 41 at 2025-11-23 09:13:36Z: bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA"
        in findings(found)
    )


def test_wer_1001_is_parsed_from_its_fields() -> None:
    (wer,) = [e for e in evidence("bugcheck_0x50.json").events if e.id == 1001]

    assert wer.bugcheck == PAGE_FAULT
    assert wer.message.startswith("The computer has rebooted from a bugcheck.")


def test_wer_1001_is_parsed_from_its_message_when_the_fields_are_missing() -> None:
    raw = document("bugcheck_0x50.json")
    raw["Events"] = [e for e in raw["Events"] if e["Id"] == 1001]
    raw["Events"][0]["Data"] = {}

    found = parse_evidence(json.dumps(raw))

    assert bugcheck(found) == PAGE_FAULT
    assert findings(found)[0] == (
        "WER 1001 at 2025-11-23 09:14:02Z: bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA "
        "(0xffffd20012345678, 0x2, 0xfffff80511223344, 0x2)"
    )


def test_a_bugcheck_is_found_in_either_event_alone() -> None:
    raw = document("bugcheck_0x50.json")
    only_41 = dict(raw, Events=[e for e in raw["Events"] if e["Id"] == 41])
    only_1001 = dict(raw, Events=[e for e in raw["Events"] if e["Id"] == 1001])

    assert bugcheck(parse_evidence(json.dumps(only_41))) == PAGE_FAULT
    assert bugcheck(parse_evidence(json.dumps(only_1001))) == PAGE_FAULT


def test_every_sign_of_the_crash_is_a_finding() -> None:
    assert findings(evidence("bugcheck_0x50.json")) == [
        "Kernel-Power 41 at 2025-11-23 09:13:36Z: bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA",
        # The U+200E marks of the date are gone.
        "EventLog 6008 at 2025-11-23 09:13:44Z: "
        "The previous system shutdown at 9:12:55 AM on 11/23/2025 was unexpected.",
        "WER 1001 at 2025-11-23 09:14:02Z: bugcheck 0x50 PAGE_FAULT_IN_NONPAGED_AREA "
        "(0xffffd20012345678, 0x2, 0xfffff80511223344, 0x2)",
        "memory dump MEMORY.DMP (1.2 GiB) written 2025-11-23 09:13:57Z",
        "minidump 112325-7031-01.dmp (256 KiB) written 2025-11-23 09:13:58Z",
    ]


def test_kernel_power_41_with_code_0_is_an_unexpected_reboot_without_a_bugcheck() -> None:
    found = evidence("power_loss.json")

    assert bugcheck(found) is None
    assert findings(found) == [
        "Kernel-Power 41 at 2025-11-23 09:13:36Z: "
        "unexpected reboot without a bugcheck (power loss, reset or hang)",
        "EventLog 6008 at 2025-11-23 09:13:44Z: "
        "The previous system shutdown at 9:12:55 AM on 11/23/2025 was unexpected.",
    ]


def test_7000_and_7026_name_the_service_and_the_drivers() -> None:
    found = evidence("service_failures.json")

    drivers, service = found.events
    assert (drivers.id, drivers.services) == (7026, ("acmeflt", "dam"))
    assert (service.id, service.services) == (7000, ("Acme Sensor",))
    assert service.detail == "The system cannot find the file specified."
    assert findings(found) == [
        "boot-start driver acmeflt did not load (7026)",
        "boot-start driver dam did not load (7026)",
        "service Acme Sensor failed to start (7000): The system cannot find the file specified.",
    ]
    assert bugcheck(found) is None


def test_service_names_come_from_the_message_when_the_fields_are_missing() -> None:
    raw = document("service_failures.json")
    for event in raw["Events"]:
        event["Data"] = {}

    found = parse_evidence(json.dumps(raw))

    assert [e.services for e in found.events] == [("acmeflt", "dam"), ("Acme Sensor",)]


def test_what_the_baseline_already_had_is_not_a_finding() -> None:
    baseline = evidence("baseline.json")
    after = evidence("service_failures.json")

    # The image's history: dam at every boot, a hard power-off while it was built.
    assert "boot-start driver dam did not load (7026)" in findings(baseline)
    assert findings(after, baseline=baseline) == [
        "boot-start driver acmeflt did not load (7026)",
        "service Acme Sensor failed to start (7000): The system cannot find the file specified.",
    ]
    assert findings(evidence("bugcheck_0x50.json"), baseline=baseline) == findings(
        evidence("bugcheck_0x50.json")
    )


def test_the_same_id_from_another_provider_is_no_evidence() -> None:
    raw = document("power_loss.json")
    for event in raw["Events"]:
        event["Provider"] = "Acme-Telemetry"

    assert findings(parse_evidence(json.dumps(raw))) == []


def test_a_source_that_could_not_be_read_is_reported_not_hidden() -> None:
    found = evidence("unreadable_minidumps.json")

    # 5.1 escaped the apostrophes as \u0027.
    assert found.problems == (
        r"C:\Windows\Minidump\*.dmp: Access to the path 'C:\Windows\Minidump' is denied.",
    )
    assert findings(found) == []


# -- parsing: PowerShell 5.1's quirks and malformed output ------------------------------------


def test_a_list_of_one_printed_as_an_object_is_accepted() -> None:
    raw = document("power_loss.json")
    raw["Events"] = raw["Events"][1]  # what ConvertTo-Json makes of a piped list of one

    found = parse_evidence(json.dumps(raw))

    assert [e.id for e in found.events] == [41]


def test_legacy_json_dates_are_accepted() -> None:
    raw = document("clean_boot.json")
    raw["LastBootUpTime"] = "/Date(1763888921500)/"  # json.loads has undone the \/ escapes

    found = parse_evidence(json.dumps(raw))

    assert found.last_boot == datetime(2025, 11, 23, 9, 8, 41, 500000, tzinfo=UTC)


def test_a_byte_order_mark_and_blank_lines_are_ignored() -> None:
    assert parse_evidence("\ufeff\r\n" + output("clean_boot.json")).events == ()


def _with(name: str, **changes: object) -> str:
    raw = document(name)
    raw.update(changes)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Expecting value"),
        ("Get-WinEvent : Access is denied.", "Expecting value"),
        ('{"Now": "2025-11-23T09:10:02Z"', "Expecting"),
        ("[]", "the document is not an object but list"),
        ('"ok"', "the document is not an object but str"),
        ('{"Now": null, "Events": [], "Dumps": []}', "no 'Problems' in the document"),
        (_with("clean_boot.json", Events="none"), "Events is not a list but str"),
        (_with("clean_boot.json", Events=[{"Id": "41"}]), r"Events\[0\]\.Id is not a number"),
        (_with("clean_boot.json", Events=[42]), r"Events\[0\] is not an object but int"),
        (_with("clean_boot.json", Now="yesterday"), "Now is not a time: 'yesterday'"),
        (
            _with("clean_boot.json", Dumps=[{"Path": "C:\\x.dmp", "Size": -1, "Time": ""}]),
            r"Dumps\[0\]\.Size is not a size",
        ),
        (
            _with(
                "power_loss.json",
                Events=[{"Id": 41, "Provider": "x", "Time": None, "Message": "", "Data": {}}],
            ),
            r"Events\[0\]\.Time is not text: None",
        ),
        (_with("clean_boot.json", Problems=[1]), r"Problems\[\] is not text: 1"),
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "a list",
        "a string",
        "missing key",
        "events not a list",
        "id as text",
        "event not an object",
        "bad date",
        "negative size",
        "no time",
        "problem not text",
    ],
)
def test_malformed_output_is_a_guest_error(text: str, reason: str) -> None:
    with pytest.raises(GuestError, match=reason) as caught:
        parse_evidence(text, channel="agent", domain="win11-cell")

    assert caught.value.channel == "agent"
    assert caught.value.domain == "win11-cell"
    assert "printed no evidence document" in str(caught.value)


# -- the faulting module: a WER BlueScreen report's fault bucket ---------------------------------


def test_a_blue_screen_report_names_the_faulting_module_in_the_title() -> None:
    # HAND-WRITTEN (tests/support/windows/README.md): the 0x50 of bugcheck_0x50.json, and the
    # Application log's WER 1001 of its BlueScreen report, bucket AV_R_INVALID_acmesensor!...
    found = evidence("bugcheck_0x50_reported.json")
    stop = bugcheck(found)
    assert stop == PAGE_FAULT  # the 41's code and parameters, oldest first
    assert stop is not None
    assert stop.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50) in acmesensor"
    assert (
        "WER report 1001 at 2025-11-23 09:15:21Z: BlueScreen 0x50 PAGE_FAULT_IN_NONPAGED_AREA "
        "in acmesensor" in findings(found)
    )


def test_the_report_is_read_from_its_message_when_its_fields_are_missing() -> None:
    raw = document("bugcheck_0x50_reported.json")
    (report,) = [e for e in raw["Events"] if e["Provider"] == "Windows Error Reporting"]
    report["Data"] = {}
    raw["Events"] = [report]

    stop = bugcheck(parse_evidence(json.dumps(raw)))

    assert stop == PAGE_FAULT
    assert stop is not None and stop.signature.endswith(" in acmesensor")


def test_a_report_of_an_application_crash_is_no_crash_evidence() -> None:
    raw = document("bugcheck_0x50_reported.json")
    (report,) = [e for e in raw["Events"] if e["Provider"] == "Windows Error Reporting"]
    report["Data"]["3"] = "APPCRASH"
    report["Message"] = report["Message"].replace("BlueScreen", "APPCRASH")

    found = parse_evidence(json.dumps(raw))

    assert not [line for line in findings(found) if line.startswith("WER report")]
    stop = bugcheck(found)
    assert stop is not None and stop.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50)"


def test_a_bucket_that_names_no_module_leaves_the_title_without_one() -> None:
    raw = document("bugcheck_0x50_reported.json")
    (report,) = [e for e in raw["Events"] if e["Provider"] == "Windows Error Reporting"]
    report["Data"]["1"] = "1750609839416380412"  # not analysed: a bucket number

    stop = bugcheck(parse_evidence(json.dumps(raw)))

    assert stop is not None and stop.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50)"


def test_a_module_of_another_stop_code_is_not_borrowed() -> None:
    raw = document("bugcheck_0x50_reported.json")
    (report,) = [e for e in raw["Events"] if e["Provider"] == "Windows Error Reporting"]
    report["Data"]["6"] = "d1"  # the report is of another crash: DRIVER_IRQL_NOT_LESS_OR_EQUAL

    stop = bugcheck(parse_evidence(json.dumps(raw)))

    assert stop is not None and stop.signature == "PAGE_FAULT_IN_NONPAGED_AREA (0x50)"


@pytest.mark.parametrize(
    ("bucket", "module"),
    [
        ("AV_R_INVALID_csagent!unknown_function", "csagent"),
        ("0x50_csagent!unknown_function", "csagent"),
        ("X64_0x1000007e_c0000005_Acme.Sensor!AcmeApplyChannel", "acme.sensor"),
        ("AV_nt!MiDeleteVirtualAddresses", "nt"),
        ("0x9F_3_POWER_DOWN_iaStorA_IMAGE_iaStorA.sys", "iastora.sys"),
        ("1750609839416380412", None),  # a bucket number: nothing analysed
        ("", None),
        ("ZEROED_STACK_0x7E", None),  # a class of failure, not a place
        ("0x50_0x1!func", None),
    ],
)
def test_fault_buckets_name_their_module(bucket: str, module: str | None) -> None:
    assert bucket_module(bucket) == module
