"""Windows payloads: the install and uninstall lines of every kind, their quoting, the exit-code
table and the retry policy for 1618; Driver Verifier's commands.

Checked for shape only: no Windows runs these here. Where quoting matters, the lines are also
split the way Windows programs split their command line (the MSVCRT rules), so a path with
spaces is shown to arrive as one argument.
"""

from __future__ import annotations

import base64
import re

import pytest

from compatlab.guest.quoting import UnsafeValue
from compatlab.guest.verifier import (
    QUERY_SETTINGS_COMMAND,
    RESET_COMMAND,
    UnsafeDriverName,
    driver_names,
    enable_command,
    missing_drivers,
    query_settings_command,
    reset_command,
)
from compatlab.guest.windows_install import (
    CMD_LINE_MAX,
    RETRY_1618,
    SETUPAPI_LOG,
    RetryPolicy,
    UnsafePath,
    classify,
    cmd_quote,
    describe,
    driver_uninstall,
    install_command,
    kb_number,
    kind_of,
    published_names,
    uninstall_command,
)
from compatlab.installs import WINDOWS_EXIT_CODES, ExitCodes

SPACED = "D:\\Acme Sensor 7.12\\sensor setup.msi"


def split_windows(line: str) -> list[str]:
    """Split like CommandLineToArgvW for what this module emits (quotes, no escaped quotes)."""
    args: list[str] = []
    current: list[str] = []
    quoted = started = False
    i = 0
    while i < len(line):
        char = line[i]
        if char == "\\":
            run = len(line[i:]) - len(line[i:].lstrip("\\"))
            if i + run < len(line) and line[i + run] == '"':
                current.append("\\" * (run // 2))
                i += run
                started = True
                continue
            current.append("\\" * run)
            i += run
            started = True
            continue
        if char == '"':
            quoted = not quoted
            started = True
        elif char == " " and not quoted:
            if started:
                args.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
        i += 1
    if started:
        args.append("".join(current))
    return args


def after_mkdir(line: str) -> str:
    """The installer part of a line that first creates its log folder."""
    prefix, sep, rest = line.partition(" 2>nul & ")
    assert sep and prefix.startswith("mkdir "), line
    return rest


# -- msi -------------------------------------------------------------------------------------


def test_msi_install_line() -> None:
    result = install_command("D:\\sensor.msi")
    assert result.kind == "msi" and result.action == "install"
    assert result.command == (
        'mkdir "C:\\compatlab\\logs" 2>nul & msiexec.exe /i "D:\\sensor.msi" /qn /norestart '
        '/l*v "C:\\compatlab\\logs\\sensor-install.log"'
    )
    assert result.log == "C:\\compatlab\\logs\\sensor-install.log"


def test_msi_path_with_spaces_is_one_argument() -> None:
    result = install_command(SPACED, log="C:\\lab logs\\sensor.log")
    args = split_windows(after_mkdir(result.command))
    assert args == [
        "msiexec.exe",
        "/i",
        SPACED,
        "/qn",
        "/norestart",
        "/l*v",
        "C:\\lab logs\\sensor.log",
    ]
    assert result.command.startswith('mkdir "C:\\lab logs" 2>nul & ')
    assert result.log == "C:\\lab logs\\sensor.log"


def test_msi_properties_are_quoted_and_names_checked() -> None:
    result = install_command("D:\\sensor.msi", properties={"CID": "abc def", "MODE": ""})
    assert result.command.endswith(' CID="abc def" MODE=""')
    with pytest.raises(UnsafePath, match="upper case"):
        install_command("D:\\sensor.msi", properties={"cid": "x"})
    with pytest.raises(UnsafePath):
        install_command("D:\\sensor.msi", properties={"CID": "100%"})


def test_msi_uninstall_by_path_and_by_product_code() -> None:
    by_path = uninstall_command(SPACED)
    assert split_windows(after_mkdir(by_path.command))[:3] == ["msiexec.exe", "/x", SPACED]
    assert by_path.log == "C:\\compatlab\\logs\\sensor_setup-uninstall.log"
    code = "{0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0}"
    by_code = uninstall_command(product_code=code)
    assert after_mkdir(by_code.command).startswith(f"msiexec.exe /x {code} /qn /norestart /l*v ")
    with pytest.raises(UnsafePath, match="GUID"):
        uninstall_command(product_code="{not-a-guid} & shutdown /s")


# -- msu -------------------------------------------------------------------------------------


def test_msu_install_and_uninstall() -> None:
    path = "D:\\updates\\windows11.0-kb5034441-x64.msu"
    install = install_command(path)
    assert after_mkdir(install.command) == (
        f'wusa.exe "{path}" /quiet /norestart '
        '/log:"C:\\compatlab\\logs\\windows11.0-kb5034441-x64-install.evtx"'
    )
    assert install.log is not None and install.log.endswith(".evtx")
    uninstall = uninstall_command(path)
    assert after_mkdir(uninstall.command) == (
        "wusa.exe /uninstall /kb:5034441 /quiet /norestart "
        '/log:"C:\\compatlab\\logs\\KB5034441-uninstall.evtx"'
    )
    assert after_mkdir(uninstall_command(kb="KB5031455").command).startswith(
        "wusa.exe /uninstall /kb:5031455 "
    )


def test_msu_with_spaces_in_the_path() -> None:
    path = "D:\\Cumulative Update (June)\\windows10.0-kb5039211-x64.msu"
    args = split_windows(after_mkdir(install_command(path).command))
    assert args[:2] == ["wusa.exe", path]


def test_kb_number_from_file_names() -> None:
    assert kb_number("D:\\windows10.0-KB5039211-x64_abc.msu") == "5039211"
    assert kb_number("kb890830.msu") == "890830"
    with pytest.raises(UnsafePath, match="KB number"):
        kb_number("D:\\update.msu")
    with pytest.raises(UnsafePath, match="6 to 8 digits"):
        uninstall_command(kb="12; shutdown")


# -- drivers ---------------------------------------------------------------------------------


def test_driver_install_line_and_log() -> None:
    result = install_command("D:\\Acme Driver\\sensor.inf")
    assert result.kind == "driver"
    assert result.command == 'pnputil.exe /add-driver "D:\\Acme Driver\\sensor.inf" /install'
    assert result.log == SETUPAPI_LOG


def test_driver_install_with_wildcard_and_subdirs() -> None:
    result = install_command("D:\\drivers\\*.inf", subdirs=True)
    assert result.command == 'pnputil.exe /add-driver "D:\\drivers\\*.inf" /subdirs /install'
    with pytest.raises(UnsafePath, match="wildcard"):
        install_command("D:\\drivers\\sensor.msi\\*.x", kind="msi")
    with pytest.raises(UnsafePath, match="file name"):
        install_command("D:\\dri*\\sensor.inf")


def test_driver_uninstall_by_published_name() -> None:
    result = uninstall_command(inf_name="OEM12.inf")
    assert result.command == "pnputil.exe /delete-driver oem12.inf /uninstall"
    assert driver_uninstall("oem3.inf", force=True).command.endswith(" /uninstall /force")


def test_driver_uninstall_by_original_name_finds_the_published_name() -> None:
    result = uninstall_command("D:\\Acme Driver\\sensor.inf")
    assert result.script is not None
    prefix = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
    assert result.command.startswith(prefix)
    decoded = base64.b64decode(result.command.removeprefix(prefix)).decode("utf-16-le")
    assert decoded == result.script
    assert "$name = 'sensor.inf'" in decoded
    assert "Get-WindowsDriver -Online" in decoded
    assert "OriginalFileName" in decoded
    assert "pnputil.exe /delete-driver $package.Driver /uninstall" in decoded
    assert "exit 2" in decoded  # no such package: a failure, not a silent success
    # cmd.exe sees nothing it could read: base64 only.
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", result.command.removeprefix(prefix))


@pytest.mark.parametrize("name", ["..\\sensor.inf", "sen'sor.inf", "sensor.sys", "a;b.inf"])
def test_driver_uninstall_refuses_names_that_are_not_plain_inf_names(name: str) -> None:
    with pytest.raises(UnsafePath):
        driver_uninstall(name)


def test_published_names_from_pnputil_output() -> None:
    output = (
        "Microsoft PnP Utility\r\n\r\nAdding driver package:  sensor.inf\r\n"
        "Driver package added successfully.\r\nPublished Name:         oem12.inf\r\n"
        "Adding driver package:  filter.inf\r\nPublished Name: OEM13.INF\r\n"
        "Published Name:         oem12.inf\r\n"
    )
    assert published_names(output) == ("oem12.inf", "oem13.inf")
    assert published_names("Nom publié : oem12.inf") == ()


# -- exe, ps1 --------------------------------------------------------------------------------


def test_exe_with_silent_arguments() -> None:
    result = install_command(
        "D:\\Acme Setup\\setup.exe",
        args=["/S", "/v/qn", "INSTALLDIR=C:\\Acme", "/LOG=C:\\lab logs\\acme.log"],
        log="C:\\lab logs\\acme.log",
    )
    assert result.command == (
        '"D:\\Acme Setup\\setup.exe" /S /v/qn INSTALLDIR=C:\\Acme "/LOG=C:\\lab logs\\acme.log"'
    )
    assert split_windows(result.command) == [
        "D:\\Acme Setup\\setup.exe",
        "/S",
        "/v/qn",
        "INSTALLDIR=C:\\Acme",
        "/LOG=C:\\lab logs\\acme.log",
    ]
    assert result.log == "C:\\lab logs\\acme.log"
    assert install_command("D:\\setup.exe").log is None


def test_exe_uninstaller() -> None:
    result = uninstall_command("C:\\Program Files\\Acme\\uninstall.exe", args=["/S"])
    assert result.command == '"C:\\Program Files\\Acme\\uninstall.exe" /S'


def test_ps1_line() -> None:
    result = install_command("D:\\Acme Scripts\\install.ps1", args=["-Mode", "Silent Install"])
    assert result.command == (
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
        '-File "D:\\Acme Scripts\\install.ps1" -Mode "Silent Install"'
    )
    assert split_windows(result.command)[6:] == [
        "D:\\Acme Scripts\\install.ps1",
        "-Mode",
        "Silent Install",
    ]


@pytest.mark.parametrize("argument", ['/D="x"', "100%", "a!b", "x\ny"])
def test_arguments_cmd_would_read_are_refused(argument: str) -> None:
    with pytest.raises(UnsafePath):
        install_command("D:\\setup.exe", args=[argument])


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["msi", "msu", "driver", "exe", "ps1"])
@pytest.mark.parametrize(
    "bad",
    [
        'D:\\say "hi".X',
        "D:\\100%PATH%.X",
        "D:\\wow!.X",
        "D:\\line\nbreak.X",
        "D:\\tab\there.X",
        "D:\\pipe|d.X",
        "D:\\a<b.X",
    ],
)
def test_paths_cmd_cannot_carry_are_refused_for_every_kind(kind: str, bad: str) -> None:
    extension = {"msi": "msi", "msu": "msu", "driver": "inf", "exe": "exe", "ps1": "ps1"}[kind]
    path = bad.replace(".X", f".{extension}")
    with pytest.raises(UnsafePath) as caught:
        install_command(path)
    assert isinstance(caught.value, UnsafeValue)  # the quoting module's error family
    assert repr(path) in str(caught.value)  # the message names the offending path


@pytest.mark.parametrize("path", ["sensor.msi", "payload\\sensor.msi", "/mnt/sensor.msi", ""])
def test_relative_or_posix_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePath):
        install_command(path, kind="msi")


def test_special_characters_cmd_reads_literally_inside_quotes_are_kept() -> None:
    path = "D:\\R&D (x64) ^ [v1]\\sensor.msi"
    args = split_windows(after_mkdir(install_command(path).command))
    assert args[2] == path


def test_unc_paths_and_trailing_backslashes() -> None:
    assert cmd_quote("\\\\lab\\payloads\\sensor.msi") == '"\\\\lab\\payloads\\sensor.msi"'
    assert cmd_quote("C:\\Program Files\\") == '"C:\\Program Files\\\\"'
    assert split_windows(cmd_quote("C:\\Program Files\\")) == ["C:\\Program Files\\"]


def test_unknown_extension_and_misused_options() -> None:
    with pytest.raises(UnsafePath, match="payload kind"):
        kind_of("D:\\sensor.zip")
    assert kind_of("D:\\SENSOR.MSI") == "msi"
    with pytest.raises(ValueError, match="args"):
        install_command("D:\\sensor.msi", args=["/S"])
    with pytest.raises(ValueError, match="properties"):
        install_command("D:\\setup.exe", properties={"A": "b"})
    with pytest.raises(ValueError, match="nothing to uninstall"):
        uninstall_command()


def test_lines_longer_than_cmd_allows_are_refused() -> None:
    long_dir = "D:\\" + "\\".join(["x" * 200] * 45)
    with pytest.raises(UnsafePath, match=str(CMD_LINE_MAX)):
        install_command(long_dir + "\\sensor.msi")


# -- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, "success"),
        (3010, "reboot"),
        (1641, "reboot"),
        (1618, "retry"),
        (1603, "failure"),
        (1, "failure"),
        (259, "failure"),
        (-1, "failure"),
        (0x80240017, "failure"),
        (-2145124329, "failure"),  # the same HRESULT as a signed 32-bit number
        (2359302, "failure"),  # wusa: already installed -- the candidate did not apply
    ],
)
def test_exit_code_table(code: int, outcome: str) -> None:
    assert classify(code) == outcome


def test_declared_codes_win_and_1618_stays_retry() -> None:
    declared = ExitCodes(success=(0, 259), reboot=(3010,))
    assert classify(259, declared) == "success"
    assert classify(1641, declared) == "failure"  # not declared: the product said so
    assert classify(1618, declared) == "retry"
    assert classify(1618, ExitCodes(success=(0, 1618))) == "success"
    assert ExitCodes(success=(0,), reboot=(3010, 1641)) == WINDOWS_EXIT_CODES


def test_describe_names_the_common_codes() -> None:
    assert describe(1603).startswith("1603 ERROR_INSTALL_FAILURE")
    assert describe(1618).startswith("1618 ERROR_INSTALL_ALREADY_RUNNING")
    assert describe(-2145124329).startswith("0x80240017 WU_E_NOT_APPLICABLE")
    assert describe(12345) == "12345"


def test_retry_policy_for_1618() -> None:
    waits = [RETRY_1618.wait_before(n) for n in range(1, RETRY_1618.attempts + 2)]
    assert waits[0] == 0.0
    assert waits[-1] is None  # past the last attempt: give up, the code is a failure
    numbers = [w for w in waits[1:-1] if w is not None]
    assert len(numbers) == RETRY_1618.attempts - 1
    assert numbers == sorted(numbers) and numbers[0] > 0  # backing off
    assert sum(numbers) <= 900  # within a boot timeout of the nightly matrix
    with pytest.raises(ValueError):
        RetryPolicy(attempts=3, waits=(1.0,))


# -- Driver Verifier -------------------------------------------------------------------------


def test_verifier_commands() -> None:
    assert enable_command(["sensor.sys"]) == "verifier.exe /standard /driver sensor.sys"
    assert (
        enable_command(["sensor.sys", "Other_Filter-2.SYS", "SENSOR.sys"])
        == "verifier.exe /standard /driver sensor.sys Other_Filter-2.SYS"
    )
    assert query_settings_command() == QUERY_SETTINGS_COMMAND == "verifier.exe /querysettings"
    assert reset_command() == RESET_COMMAND == "verifier.exe /reset"


@pytest.mark.parametrize(
    "name",
    [
        "C:\\Windows\\System32\\drivers\\sensor.sys",
        "drivers/sensor.sys",
        "sens*.sys",
        "sensor",
        "sensor.dll",
        "my sensor.sys",
        "sensor.sys & shutdown /r",
        "%x%.sys",
        ".sys",
        "-flag.sys",
        "x" * 61 + ".sys",
    ],
)
def test_verifier_refuses_names_that_are_not_plain_sys_names(name: str) -> None:
    with pytest.raises(UnsafeDriverName):
        enable_command([name])


def test_verifier_needs_a_list_of_at_least_one() -> None:
    with pytest.raises(UnsafeDriverName, match="at least one"):
        enable_command([])
    with pytest.raises(TypeError):
        driver_names("sensor.sys")


def test_missing_drivers_reads_querysettings_output() -> None:
    output = (
        "Special pool: Enabled\r\nForce IRQL checking: Enabled\r\n\r\n"
        "Verified drivers:\r\n\r\nmysensor.sys\r\nOTHER.SYS\r\n"
    )
    assert missing_drivers(output, ["other.sys"]) == ()
    assert missing_drivers(output, ["sensor.sys", "other.sys"]) == ("sensor.sys",)
    assert missing_drivers("No drivers are verified.", ["sensor.sys"]) == ("sensor.sys",)
