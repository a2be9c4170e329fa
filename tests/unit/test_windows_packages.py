"""Windows payloads declared by kind, WinRM transports and Driver Verifier settings, as loaded.

A product or candidate may write ``install: {kind: msi, file: sensor.msi}`` instead of a command
line: the lab builds the lines with ``compatlab.guest.windows_install``. What is checked here is
the loader -- what loads, what the lines are, and that every bad combination is an input error
at the file and line of the value -- and the installer-log answer the runner parses. No Windows
runs any of it here.
"""

from __future__ import annotations

import base64
import codecs
from pathlib import Path

import pytest

from compatlab.catalog import GoldenImage, parse_image, parse_product
from compatlab.errors import CatalogError, InputError, MatrixError
from compatlab.guest.installer_log import LogAnswerError, parse_answer, read_script
from compatlab.guest.windows_install import (
    driver_uninstall,
    install_command,
    uninstall_command,
)
from compatlab.installs import (
    WINDOWS_EXIT_CODES,
    Commands,
    ExitCodes,
    WindowsPackage,
    installer_line,
)
from compatlab.matrix import load_matrix
from tests.support.catalogs import make_project, write

# -- products -----------------------------------------------------------------------------------


def product(tmp_path: Path, windows: str, *, linux: str = "") -> Path:
    """A product file whose windows section is ``windows`` (YAML lines under ``windows:``)."""
    text = "name: edr\nvendor: Example\nwindows:\n  payload: /var/lib/compatlab/payloads/edr\n"
    text += "".join(f"  {line}\n" for line in windows.strip("\n").splitlines())
    if linux:
        text += "linux:\n  payload: p\n" + "".join(f"  {line}\n" for line in linux.splitlines())
    path = tmp_path / "edr.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def windows_commands(tmp_path: Path, windows: str) -> Commands:
    payload = parse_product(product(tmp_path, windows)).payload_for("windows")
    assert payload is not None
    return payload.commands


def lines(commands: Commands, path: str = "D:\\") -> tuple[object, object]:
    return installer_line(commands, "install", path), installer_line(commands, "uninstall", path)


def test_an_msi_package_gets_msiexec_lines_with_a_log_and_windows_exit_codes(
    tmp_path: Path,
) -> None:
    commands = windows_commands(tmp_path, "install: {kind: msi, file: agent.msi}")
    assert commands.install is None and commands.uninstall is None
    assert commands.package == WindowsPackage("msi", "agent.msi")
    assert commands.exit_codes == WINDOWS_EXIT_CODES  # 3010 and 1641: done, restart to come
    install, uninstall = lines(commands)
    assert install == install_command("D:\\agent.msi")
    assert uninstall == uninstall_command("D:\\agent.msi")
    assert getattr(install, "log", None) == "C:\\compatlab\\logs\\agent-install.log"


def test_the_lines_use_the_images_payload_path(tmp_path: Path) -> None:
    commands = windows_commands(tmp_path, "install: {kind: msi, file: 'sub dir/agent.msi'}")
    install, _ = lines(commands, "E:\\media\\")
    assert install == install_command("E:\\media\\sub dir\\agent.msi")


def test_msi_properties_and_product_code(tmp_path: Path) -> None:
    guid = "{12345678-1234-1234-1234-123456789ABC}"
    commands = windows_commands(
        tmp_path,
        f"install: {{kind: msi, file: agent.msi, properties: {{SITE: lab-1}}, "
        f"product_code: '{guid}'}}\nexit_codes: {{success: [0], reboot: [3010]}}",
    )
    install, uninstall = lines(commands)
    assert install == install_command("D:\\agent.msi", properties={"SITE": "lab-1"})
    assert uninstall == uninstall_command(product_code=guid)
    assert commands.exit_codes == ExitCodes(success=(0,), reboot=(3010,))  # declared wins


def test_an_msu_package_takes_its_kb_from_the_file_name_or_from_kb(tmp_path: Path) -> None:
    named = windows_commands(tmp_path, "install: {kind: msu, file: windows11.0-kb5034441-x64.msu}")
    install, uninstall = lines(named)
    assert install == install_command("D:\\windows11.0-kb5034441-x64.msu")
    assert uninstall == uninstall_command(kind="msu", kb="5034441")
    given = windows_commands(tmp_path, "install: {kind: msu, file: update.msu, kb: KB5034441}")
    assert given.package is not None and given.package.kb == "5034441"
    assert lines(given)[1] == uninstall_command(kind="msu", kb="5034441")


def test_a_driver_package_is_its_inf(tmp_path: Path) -> None:
    commands = windows_commands(tmp_path, "install: {kind: driver, file: drivers/sensor.inf}")
    install, uninstall = lines(commands)
    assert install == install_command("D:\\drivers\\sensor.inf")
    assert getattr(install, "command", "") == (
        'pnputil.exe /add-driver "D:\\drivers\\sensor.inf" /install'
    )
    assert uninstall == driver_uninstall("sensor.inf")


def test_exe_and_ps1_packages_take_arguments_and_a_written_uninstall(tmp_path: Path) -> None:
    commands = windows_commands(
        tmp_path,
        "install: {kind: exe, file: setup.exe, args: [/S, '/v/qn'], log: 'C:\\logs\\setup.log'}\n"
        "uninstall: '\"C:\\Program Files\\Edr\\uninst.exe\" /S'",
    )
    install, uninstall = lines(commands)
    assert install == install_command(
        "D:\\setup.exe", args=["/S", "/v/qn"], log="C:\\logs\\setup.log"
    )
    assert uninstall == '"C:\\Program Files\\Edr\\uninst.exe" /S'  # as written
    ps1 = windows_commands(
        tmp_path, "install: {kind: ps1, file: install.ps1, args: [-Quiet]}\nuninstall: u.cmd"
    )
    assert lines(ps1)[0] == install_command("D:\\install.ps1", args=["-Quiet"])


def test_a_written_uninstall_next_to_a_package_is_used_as_written(tmp_path: Path) -> None:
    commands = windows_commands(
        tmp_path, "install: {kind: msi, file: agent.msi}\nuninstall: 'msiexec /x {payload}x.msi'"
    )
    assert lines(commands)[1] == "msiexec /x D:\\x.msi"


def test_hand_written_commands_still_work(tmp_path: Path) -> None:
    commands = windows_commands(
        tmp_path, "install: 'msiexec /i \"{payload}\\a.msi\" /qn'\nuninstall: u.cmd"
    )
    assert commands.package is None and commands.exit_codes == ExitCodes()
    assert lines(commands) == ('msiexec /i "D:\\\\a.msi" /qn', "u.cmd")


BAD_PACKAGES = [
    # (the windows section, the line of the value to blame (1 = "install:"), words in the error)
    ("install: {kind: zip, file: a.zip}", 1, "package kind must be one of"),
    ("install: {kind: msi}", 1, "missing the required key 'file'"),
    ("install: {kind: msi, file: a.msi, args: [/x]}", 1, "'args' does not apply to an msi"),
    ("install:\n  kind: msi\n  file: a.msi\n  kb: '5034441'", 4, "'kb' does not apply"),
    ("install:\n  kind: driver\n  file: a.inf\n  args: [x]", 4, "does not apply to a driver"),
    ("install:\n  kind: exe\n  file: a.exe\n  product_code: x", 4, "does not apply"),
    ("install:\n  kind: msi\n  file: setup.exe", 3, "not for an msi package"),
    ("install:\n  kind: driver\n  file: sensor.sys", 3, "extension is not one of"),
    ("install:\n  kind: exe\n  file: a.msi", 3, "not for an exe package"),
    ("install:\n  kind: msi\n  file: 'C:\\a.msi'", 3, "not a path inside the payload"),
    ("install:\n  kind: msi\n  file: /a.msi", 3, "not a path inside the payload"),
    ("install:\n  kind: msi\n  file: ../a.msi", 3, "'..' part"),
    ("install:\n  kind: msi\n  file: 'a%b.msi'", 3, "cmd.exe reads even inside quotes"),
    ("install:\n  kind: msu\n  file: update.msu", 3, "no KB number"),
    ("install:\n  kind: msu\n  file: u.msu\n  kb: '12'", 4, "is not 6 to 8 digits"),
    ("install:\n  kind: msi\n  file: a.msi\n  product_code: nope", 4, "is not a {GUID}"),
    ("install:\n  kind: msi\n  file: a.msi\n  properties: {site: x}", 4, "public properties"),
    ("install:\n  kind: msi\n  file: a.msi\n  properties: {SITE: '50%'}", 4, "MSI property"),
    ("install:\n  kind: exe\n  file: a.exe\n  args: [/S, '%TEMP%']\nuninstall: u", 4, "argument"),
    ("install:\n  kind: exe\n  file: a.exe\n  log: relative.log\nuninstall: u", 4, "absolute"),
    ("install: {kind: exe, file: a.exe}", 1, "an exe package has no standard uninstall"),
    ("install: {kind: ps1, file: a.ps1}", 1, "a ps1 package has no standard uninstall"),
    ("install: {kind: msi, file: a.msi}\nuninstall: {kind: msi, file: a.msi}", 2, "command line"),
    (
        "install:\n  kind: exe\n  file: a.exe\n  args: [" + ", ".join(["/a"] * 65) + "]",
        4,
        "more than 64",
    ),
]


@pytest.mark.parametrize(("windows", "line", "words"), BAD_PACKAGES)
def test_bad_packages_are_load_errors_at_the_value(
    tmp_path: Path, windows: str, line: int, words: str
) -> None:
    path = product(tmp_path, windows)
    with pytest.raises(CatalogError) as info:
        parse_product(path)
    assert words in info.value.message, info.value
    assert (info.value.file, info.value.line) == (path, 4 + line), info.value


def test_a_package_on_linux_is_a_load_error(tmp_path: Path) -> None:
    path = product(tmp_path, "install: i.cmd\nuninstall: u.cmd", linux="install: {kind: msi}")
    with pytest.raises(CatalogError, match="is for Windows payloads, not linux") as info:
        parse_product(path)
    assert info.value.line == 9


def test_a_very_long_line_is_refused_as_a_whole(tmp_path: Path) -> None:
    args = ", ".join(f"/ARG{i}={'x' * 200}" for i in range(40))
    path = product(tmp_path, f"install: {{kind: exe, file: a.exe, args: [{args}]}}\nuninstall: u")
    with pytest.raises(CatalogError, match=r"more than cmd\.exe's 8191") as info:
        parse_product(path)
    assert info.value.line == 5


def test_commands_refuse_a_missing_line_they_cannot_build() -> None:
    with pytest.raises(ValueError, match="needs an uninstall line"):
        Commands(None, None, package=WindowsPackage("exe", "a.exe"))
    with pytest.raises(ValueError, match="need install and uninstall"):
        Commands("i", None)


# -- the candidate ------------------------------------------------------------------------------


def candidate_matrix(root: Path, install: str, uninstall: str, builds: str) -> Path:
    return write(
        root / "matrix" / "m.yaml",
        f"""
        candidate:
          name: sensor
          version: "1.0"
          payload: ../payloads/candidate
          install: {install}
          {uninstall}
        axes: {{build: [{builds}], hardware: [uefi-2cpu], products: [[]]}}
        """,
    )


def test_a_candidate_may_be_a_windows_package_next_to_a_linux_command(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    path = candidate_matrix(
        root,
        '{windows: {kind: msi, file: sensor.msi}, linux: "sh {payload}/i.sh"}',
        'uninstall: {linux: "sh {payload}/u.sh"}',
        "win11, lin-a",
    )
    m = load_matrix(path, catalog_root=root)
    windows = m.candidate.commands["windows"]
    assert windows.package == WindowsPackage("msi", "sensor.msi")
    assert windows.exit_codes == WINDOWS_EXIT_CODES
    assert m.candidate.commands["linux"].install == "sh {payload}/i.sh"
    assert m.candidate.commands["linux"].exit_codes == ExitCodes()


def test_a_candidate_package_needs_no_uninstall_key(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    path = candidate_matrix(root, "{windows: {kind: driver, file: sensor.inf}}", "", "win11")
    assert load_matrix(path, catalog_root=root).candidate.commands["windows"].uninstall is None


def test_a_candidate_command_without_an_uninstall_is_a_load_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    path = candidate_matrix(
        root, '{windows: {kind: msi, file: s.msi}, linux: "sh i.sh"}', "", "win11"
    )
    with pytest.raises(MatrixError, match="candidate uninstall has no linux command") as info:
        load_matrix(path, catalog_root=root)
    assert (info.value.file, info.value.line) == (path, 5)


def test_a_bad_candidate_package_names_the_matrix_line(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    path = candidate_matrix(root, "{windows: {kind: msi, file: s.msi, args: [/q]}}", "", "win11")
    with pytest.raises(MatrixError, match="'args' does not apply to an msi") as info:
        load_matrix(path, catalog_root=root)
    assert (info.value.file, info.value.line) == (path, 5)


# -- winrm_transport ----------------------------------------------------------------------------

WINDOWS_IMAGE = """\
name: win
os_family: windows
build: "26100"
disk: /nonexistent/win.qcow2
firmware: [uefi]
channel: winrm
credentials: {username: lab, password_env: LAB_PASSWORD}
"""


def image(tmp_path: Path, extra: str = "", base: str = WINDOWS_IMAGE) -> GoldenImage:
    path = tmp_path / "win.yaml"
    path.write_text(base + extra, encoding="utf-8")
    return parse_image(path)


def test_winrm_transport_defaults_to_ntlm_and_takes_basic(tmp_path: Path) -> None:
    assert image(tmp_path).winrm_transport == "ntlm"
    assert image(tmp_path, "winrm_transport: ntlm\n").winrm_transport == "ntlm"
    assert image(tmp_path, "winrm_transport: basic\n").winrm_transport == "basic"


@pytest.mark.parametrize(
    ("transport", "why"),
    [
        ("ssl", "HTTPS"),
        ("credssp", "requests-credssp"),
        ("kerberos", "domain controller"),
        ("digest", "must be one of ntlm, basic, ssl, credssp, kerberos"),
        ("[ntlm]", "must be a non-empty string"),
    ],
)
def test_winrm_transports_that_cannot_work_here_are_refused(
    tmp_path: Path, transport: str, why: str
) -> None:
    with pytest.raises(CatalogError, match="winrm_transport") as info:
        image(tmp_path, f"winrm_transport: {transport}\n")
    assert why in str(info.value)
    assert (info.value.file, info.value.line) == (tmp_path / "win.yaml", 8)


def test_winrm_transport_on_an_agent_image_is_refused(tmp_path: Path) -> None:
    agent = WINDOWS_IMAGE.replace("channel: winrm", "channel: agent")
    with pytest.raises(CatalogError, match="for images with channel: winrm") as info:
        image(tmp_path, "winrm_transport: ntlm\n", base=agent)
    assert info.value.line == 8


def test_the_credssp_and_kerberos_refusals_match_the_installed_pywinrm() -> None:
    """The refusals say what is missing; if pywinrm here gains them, the table must change."""
    from winrm import transport

    assert transport.HAVE_NTLM
    assert not transport.HAVE_CREDSSP
    assert not transport.HAVE_KERBEROS


# -- scenario.verifier --------------------------------------------------------------------------


def verifier_matrix(root: Path, body: str) -> Path:
    return write(
        root / "matrix" / "v.yaml",
        """
        candidate:
          name: sensor
          version: "1.0"
          payload: ../payloads/candidate
          install: {windows: {kind: msi, file: sensor.msi}, linux: "sh i.sh"}
          uninstall: {linux: "sh u.sh"}
        """
        + body,
    )


def test_verifier_loads_for_windows_cells(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    body = """
        axes: {build: [win11], hardware: [uefi-2cpu], products: [[]]}
        scenario: {verifier: [sensor.sys, Sensor.sys, helper.sys]}
    """
    cell = load_matrix(verifier_matrix(root, body), catalog_root=root).cells[0]
    assert cell.scenario.verifier == ("sensor.sys", "helper.sys")  # case-insensitive, once


def test_verifier_reaching_a_linux_cell_is_refused_at_its_line(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    body = """
        axes: {build: [win11, lin-a], hardware: [uefi-2cpu], products: [[]]}
        scenario:
          boots: 2
          verifier: [sensor.sys]
    """
    path = verifier_matrix(root, body)
    with pytest.raises(MatrixError, match="image 'lin-a' is linux") as info:
        load_matrix(path, catalog_root=root)
    assert (info.value.file, info.value.line) == (path, 11)
    assert "lin-a/uefi-2cpu/none" in info.value.message


def test_verifier_in_an_include_for_the_windows_build_only(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    body = """
        axes: {build: [win11, lin-a], hardware: [uefi-2cpu], products: [[]]}
        include:
          - {build: win11, scenario: {verifier: [sensor.sys]}}
    """
    cells = load_matrix(verifier_matrix(root, body), catalog_root=root).cells
    assert {c.build: c.scenario.verifier for c in cells} == {
        "win11": ("sensor.sys",),
        "lin-a": (),
    }
    wrong = body.replace("build: win11, scenario", "build: lin-a, scenario")
    path = verifier_matrix(root, wrong)
    with pytest.raises(MatrixError, match="Driver Verifier, a Windows tool") as info:
        load_matrix(path, catalog_root=root)
    assert (info.value.line, info.value.column) == (10, 41)  # the include's verifier


def test_an_include_may_turn_the_verifier_off_for_linux_cells(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    body = """
        axes: {build: [win11, lin-a], hardware: [uefi-2cpu], products: [[]]}
        scenario: {verifier: [sensor.sys]}
        include:
          - {build: lin-a, scenario: {verifier: []}}
    """
    cells = load_matrix(verifier_matrix(root, body), catalog_root=root).cells
    assert [c.scenario.verifier for c in cells] == [("sensor.sys",), ()]


@pytest.mark.parametrize(
    ("names", "words"),
    [
        ("[C:\\drivers\\sensor.sys]", "is a path"),
        ("['*.sys']", "wildcard"),
        ("[sensor.dll]", "not a .sys image name"),
        ("['sen sor.sys']", "only letters, digits"),
        ("sensor.sys", "verifier must be a list"),
        ("[" + ", ".join(f"d{i}.sys" for i in range(33)) + "]", "more than 32"),
    ],
)
def test_bad_driver_names_are_load_errors(tmp_path: Path, names: str, words: str) -> None:
    root = make_project(tmp_path)
    body = f"""
        axes: {{build: [win11], hardware: [uefi-2cpu], products: [[]]}}
        scenario:
          verifier: {names}
    """
    path = verifier_matrix(root, body)
    with pytest.raises(InputError) as info:
        load_matrix(path, catalog_root=root)
    assert words in str(info.value) and info.value.line == 10


# -- the installer log's answer ---------------------------------------------------------------


def answer(size: int, head: bytes, tail: bytes = b"") -> str:
    encode = base64.b64encode
    return f"compatlab-log: size {size}\r\n{encode(head).decode()}\r\n{encode(tail).decode()}\r\n"


def test_a_whole_log_comes_back_as_its_text() -> None:
    log = parse_answer(answer(11, b"MSI (s) ok\n"))
    assert (log.text, log.size, log.cut, log.missing) == ("MSI (s) ok\n", 11, 0, False)
    assert parse_answer(answer(0, b"")).text == ""


def test_a_log_bigger_than_the_limit_keeps_head_and_tail_around_a_mark() -> None:
    head, tail = "Action start".encode("utf-16-le"), "Return value 3.".encode("utf-16-le")
    log = parse_answer(answer(10_000, codecs.BOM_UTF16_LE + head, tail), limit=64)
    assert log.text.startswith("Action start\n[…")
    assert log.text.endswith("\nReturn value 3.")
    assert log.cut == 10_000 - 2 - len(head) - len(tail)
    assert f"{log.cut} bytes cut" in log.text


def test_a_missing_log_is_an_answer_not_an_error() -> None:
    assert parse_answer("compatlab-log: missing\r\n").missing


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "hello",
        "compatlab-log: size x\r\nAA==\r\n",
        "compatlab-log: size 1\r\n!!!\r\n",
        answer(3, b"more than three bytes"),
        answer(10, b"a" * 40, b"b" * 40) + "extra\r\n",
    ],
)
def test_an_answer_that_is_not_a_log_is_refused(stdout: str) -> None:
    with pytest.raises(LogAnswerError):
        parse_answer(stdout, limit=64)


def test_the_read_script_quotes_the_path_for_powershell() -> None:
    script = read_script("C:\\logs\\it's here.log", limit=1024)
    assert "$path = 'C:\\logs\\it''s here.log'" in script
    assert "$limit = 1024" in script and "%" not in script.replace("$start % 2", "")
    with pytest.raises(ValueError, match="control character"):
        read_script("C:\\a\nb.log")


def test_winrm_certificate_means_https_on_5986_checked_against_it(tmp_path: Path) -> None:
    from compatlab.scenario.context import needs_network, winrm_port

    (tmp_path / "winrm-https.pem").write_text("not read at load\n")
    https = image(tmp_path, "winrm_certificate: winrm-https.pem\n")
    assert https.winrm_certificate == tmp_path / "winrm-https.pem"
    assert image(tmp_path).winrm_certificate is None

    class _Cell:
        def __init__(self, image: GoldenImage) -> None:
            self.image = image

    assert winrm_port(_Cell(https)) == 5986  # type: ignore[arg-type]
    assert needs_network(_Cell(https)) == (5986,)  # type: ignore[arg-type]
    assert needs_network(_Cell(image(tmp_path))) == (5985,)  # type: ignore[arg-type]


def test_winrm_certificate_on_an_agent_image_is_refused_naming_the_line(tmp_path: Path) -> None:
    agent = WINDOWS_IMAGE.replace("channel: winrm", "channel: agent")
    with pytest.raises(CatalogError, match=r"win\.yaml:8:.*winrm_certificate is for images"):
        image(tmp_path, "winrm_certificate: c.pem\n", base=agent)
