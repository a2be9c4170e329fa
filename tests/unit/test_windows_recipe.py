"""images/recipes/windows: the answer file, the setup medium, the build VM, the catalog entries.

No Windows runs here. What is checked: the rendered autounattend.xml is well-formed XML in the
unattend namespace and carries what a compatlab image needs; the repository holds no password
and a render puts the one it is given only where Windows reads it; the setup medium is built
from a virtio-win ISO (a stand-in made here with the same layout) into an ISO whose Joliet names
Windows reads; the build VM's domain XML passes libvirt's schema; the Windows catalog entries
and matrix/nightly.yaml load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import markupsafe
import pycdlib
import pytest

from compatlab.catalog import parse_image
from compatlab.guest.media import build_iso
from compatlab.guest.windows_install import RETRY_1618, install_command
from compatlab.lab.domain import validate_domain_xml
from compatlab.matrix.load import load_matrix

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "images" / "recipes" / "windows"
U = "{urn:schemas-microsoft-com:unattend}"
WCM = "{http://schemas.microsoft.com/WMIConfig/2002/State}"
PASSWORD = "Sekr3t<&>\"'-Pw"  # every character XML must escape, and quotes
WINDOWS_IMAGES = [
    "win10-22h2",
    "win10-22h2-bios",
    "win11-23h2",
    "win11-24h2",
    "server2022",
    "server2022-bios",
    "server2025",
]


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compatlab_windows_build", RECIPE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()


def image(name: str = "win11-24h2") -> Any:
    return parse_image(ROOT / "images" / f"{name}.yaml")


def render(name: str = "win11-24h2", **overrides: Any) -> str:
    recipe = build.RECIPES[name]
    values: dict[str, Any] = {
        "firmware": "bios" if name.endswith("-bios") else "uefi",
        "edition": recipe.edition,
        "server": recipe.server,
    }
    values.update(overrides)
    return str(build.render_answer_file(image(name), PASSWORD, **values))


def settings(root: ET.Element, name: str) -> ET.Element:
    found = root.find(f"{U}settings[@pass='{name}']")
    assert found is not None, f"no {name} pass"
    return found


def component(root: ET.Element, pass_name: str, name: str) -> ET.Element:
    found = settings(root, pass_name).find(f"{U}component[@name='{name}']")
    assert found is not None, f"no {name} in {pass_name}"
    return found


def specialize_paths(root: ET.Element) -> list[str]:
    deployment = component(root, "specialize", "Microsoft-Windows-Deployment")
    return [p.text or "" for p in deployment.iter(f"{U}Path")]


# -- the answer file -----------------------------------------------------------------------


@pytest.mark.parametrize("name", WINDOWS_IMAGES)
def test_answer_file_is_well_formed_unattend_xml(name: str) -> None:
    root = ET.fromstring(render(name))
    assert root.tag == f"{U}unattend"
    assert [s.get("pass") for s in root.findall(f"{U}settings")] == [
        "windowsPE",
        "specialize",
        "oobeSystem",
    ]
    for element in root.iter(f"{U}component"):
        assert element.get("processorArchitecture") == "amd64"
        assert element.get("publicKeyToken") == "31bf3856ad364e35"
        assert element.get("language") == "neutral"
        assert element.get("versionScope") == "nonSxS"
        assert element.get("name", "").startswith("Microsoft-Windows-")
    # List items carry wcm:action="add", in the WMIConfig namespace.
    for tag in ("Disk", "CreatePartition", "LocalAccount", "SynchronousCommand"):
        for item in root.iter(f"{U}{tag}"):
            assert item.get(f"{WCM}action") == "add", tag


def test_the_template_holds_no_password() -> None:
    text = (RECIPE / "autounattend.xml.j2").read_text(encoding="utf-8")
    values = re.findall(r"<Password>\s*<Value>(.*?)</Value>", text, re.S)
    assert values == ["{{ admin_password }}", "{{ admin_password }}"]
    assert "AdministratorPassword" not in text
    # Nothing else in the recipe that looks like a credential either.
    for path in RECIPE.rglob("*"):
        if path.is_file() and path.suffix in {".j2", ".ps1", ".hcl", ".py", ".md"}:
            body = path.read_text(encoding="utf-8")
            assert not re.search(r"<Value>(?!\{\{)[^<]+</Value>", body), path
            assert not re.search(r'\bwinrm_password\s*=\s*"', body), path


def test_a_render_puts_the_password_only_where_windows_reads_it() -> None:
    text = render()
    root = ET.fromstring(text)
    holders = [
        element
        for element in root.iter()
        if PASSWORD in (element.text or "") or any(PASSWORD in v for v in element.attrib.values())
    ]
    paths = []
    shell = component(root, "oobeSystem", "Microsoft-Windows-Shell-Setup")
    account = shell.find(f"{U}UserAccounts/{U}LocalAccounts/{U}LocalAccount/{U}Password/{U}Value")
    autologon = shell.find(f"{U}AutoLogon/{U}Password/{U}Value")
    paths = [account, autologon]
    assert holders == paths
    assert all(element is not None and element.text == PASSWORD for element in paths)
    # Escaped in the text: it cannot break out of its element.
    assert text.count("Sekr3t&lt;&amp;&gt;") == 2
    assert PASSWORD not in text
    plain = shell.findall(f".//{U}PlainText")
    assert [p.text for p in plain] == ["true", "true"]


def test_local_admin_and_one_autologon() -> None:
    shell = component(ET.fromstring(render()), "oobeSystem", "Microsoft-Windows-Shell-Setup")
    account = shell.find(f"{U}UserAccounts/{U}LocalAccounts/{U}LocalAccount")
    assert account is not None
    assert account.findtext(f"{U}Name") == "compatlab"  # the catalog's credentials.username
    assert account.findtext(f"{U}Group") == "Administrators"
    assert shell.findtext(f"{U}AutoLogon/{U}LogonCount") == "1"
    assert shell.findtext(f"{U}AutoLogon/{U}Username") == "compatlab"
    assert shell.findtext(f"{U}OOBE/{U}HideOnlineAccountScreens") == "true"


def test_crash_dumps_and_a_visible_boot_loop() -> None:
    paths = specialize_paths(ET.fromstring(render()))
    joined = "\n".join(paths)
    crash = r"HKLM\SYSTEM\CurrentControlSet\Control\CrashControl"
    assert f'reg.exe add "{crash}" /v CrashDumpEnabled /t REG_DWORD /d 3 /f' in paths
    assert f'reg.exe add "{crash}" /v AutoReboot /t REG_DWORD /d 1 /f' in paths
    assert re.search(r"/v MinidumpDir /t REG_EXPAND_SZ /d \"%SystemRoot%\\Minidump\"", joined)
    assert "bcdedit.exe /set {default} bootstatuspolicy ignoreallfailures" in paths
    assert "bcdedit.exe /set {default} recoveryenabled No" in paths
    assert "PreventDeviceEncryption /t REG_DWORD /d 1" in joined
    for service in ("storahci", "stornvme", "viostor"):
        assert f'Services\\{service}" /v Start /t REG_DWORD /d 0 /f' in joined
    # The first command brings the setup folder from whichever drive the medium got.
    assert paths[0].startswith("cmd.exe /c for %d in (D E F") and "setup.ps1" in paths[0]


def test_unattend_length_limits() -> None:
    root = ET.fromstring(render("server2025"))
    assert all(len(path) <= 259 for path in specialize_paths(root))  # RunSynchronousCommand/Path
    commands = [c.text or "" for c in root.iter(f"{U}CommandLine")]
    assert commands and all(len(c) <= 1024 for c in commands)  # FirstLogonCommands CommandLine
    name = component(root, "specialize", "Microsoft-Windows-Shell-Setup").findtext(
        f"{U}ComputerName"
    )
    assert name == "CL-SERVER2025" and len(name) <= 15


def test_one_first_logon_command_runs_setup_ps1() -> None:
    root = ET.fromstring(render())
    commands = [c.text for c in root.iter(f"{U}CommandLine")]
    expected = install_command("C:\\compatlab\\setup\\setup.ps1", kind="ps1").command
    assert commands == [expected]
    assert expected == (
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
        '-File "C:\\compatlab\\setup\\setup.ps1"'
    )


def test_disk_layout_follows_the_firmware() -> None:
    uefi = ET.fromstring(render("win11-24h2"))
    types = [t.text for t in uefi.iter(f"{U}Type")]
    assert types == ["EFI", "MSR", "Primary"]
    assert uefi.findtext(f".//{U}InstallTo/{U}PartitionID") == "3"
    bios = ET.fromstring(render("win10-22h2-bios"))
    assert [t.text for t in bios.iter(f"{U}Type")] == ["Primary", "Primary"]
    assert bios.findtext(f".//{U}ModifyPartition/{U}Active") == "true"
    assert bios.findtext(f".//{U}InstallTo/{U}PartitionID") == "2"


def test_edition_product_key_and_server_components() -> None:
    server = ET.fromstring(
        render("server2022", edition=4, product_key="ABCDE-12345-FGHIJ-67890-KLMNO")
    )
    assert server.findtext(f".//{U}MetaData/{U}Key") == "/IMAGE/INDEX"
    assert server.findtext(f".//{U}MetaData/{U}Value") == "4"
    assert server.findtext(f".//{U}ProductKey/{U}Key") == "ABCDE-12345-FGHIJ-67890-KLMNO"
    component(server, "specialize", "Microsoft-Windows-ServerManager-SvrMgrNc")
    client = ET.fromstring(render("win11-23h2"))
    assert client.find(f".//{U}ProductKey") is None
    assert client.find(f".//{U}component[@name='Microsoft-Windows-ServerManager-SvrMgrNc']") is None
    with pytest.raises(build.BuildError, match="product key"):
        render("server2022", product_key="not a key")


# -- the setup medium ------------------------------------------------------------------------


def fake_virtio(folder: Path, *, os_dirs: tuple[str, ...] = ("w10", "w11", "2k22", "2k25")) -> Path:
    """A virtio-win ISO's layout: <driver>/<os>/amd64/<files>, guest-agent/*.msi."""
    infs = {"viostor": "viostor", "vioscsi": "vioscsi", "NetKVM": "netkvm",
            "vioserial": "vioser", "pvpanic": "pvpanic", "Balloon": "balloon"}  # fmt: skip
    for driver, inf in infs.items():
        for os_dir in os_dirs:
            if driver == "pvpanic" and os_dir == "w11":
                continue  # exercise the fallback to w10
            base = folder / driver / os_dir / "amd64"
            base.mkdir(parents=True)
            (base / f"{inf}.inf").write_text(f"; {driver} {os_dir}\n")
            (base / f"{inf}.sys").write_bytes(b"MZ" + driver.encode())
            (base / f"{inf}.cat").write_bytes(b"cat")
            (base / f"{inf}.pdb").write_bytes(b"x" * 1000)  # debug symbols stay behind
    (folder / "guest-agent").mkdir()
    (folder / "guest-agent" / "qemu-ga-x86_64.msi").write_bytes(b"\xd0\xcf\x11\xe0msi")
    (folder / "virtio-win_license.txt").write_text("license\n")
    return folder


@pytest.fixture
def virtio_iso(tmp_path: Path) -> Path:
    return build_iso(
        fake_virtio(tmp_path / "virtio"), tmp_path / "virtio-win.iso", label="VIRTIO_0_1_262"
    )


def stage(tmp_path: Path, virtio: Path, name: str = "win11-24h2", **kw: Any) -> Any:
    recipe = build.RECIPES[name]
    return build.stage(
        image(name),
        PASSWORD,
        virtio,
        tmp_path / "work",
        firmware="uefi",
        recipe=recipe,
        **kw,
    )


def test_staged_medium_from_the_virtio_win_iso(tmp_path: Path, virtio_iso: Path) -> None:
    staged = stage(tmp_path, virtio_iso)
    folder: Path = staged.folder
    assert staged.virtio_version == "VIRTIO_0_1_262"
    assert staged.drivers["viostor"] == "w11" and staged.drivers["pvpanic"] == "w10"
    assert staged.notes == ["pvpanic: no w11 build, used w10"]
    assert (folder / "autounattend.xml").is_file()
    for driver in ("viostor", "vioscsi", "NetKVM"):
        assert sorted(p.name for p in (folder / "$WinPEDriver$" / driver).iterdir())
    assert not (folder / "$WinPEDriver$" / "pvpanic").exists()
    drivers = folder / "compatlab" / "drivers"
    assert sorted(p.name for p in (drivers / "pvpanic").iterdir()) == [
        "pvpanic.cat",
        "pvpanic.inf",
        "pvpanic.sys",
    ]
    assert not list(folder.rglob("*.pdb"))
    assert (folder / "compatlab" / "qemu-ga-x86_64.msi").read_bytes().startswith(b"\xd0\xcf")
    assert (folder / "compatlab" / "setup.ps1").read_bytes() == (
        RECIPE / "media" / "setup.ps1"
    ).read_bytes()
    assert os.stat(tmp_path / "work").st_mode & 0o777 == 0o700
    assert sorted(staged.infs) == sorted(
        ["viostor.inf", "vioscsi.inf", "netkvm.inf", "vioser.inf", "pvpanic.inf", "balloon.inf"]
    )


def test_setup_json_carries_compatlab_s_own_install_lines(tmp_path: Path, virtio_iso: Path) -> None:
    staged = stage(tmp_path, virtio_iso)
    config = json.loads((staged.folder / "compatlab" / "setup.json").read_text())
    by_name = {d["name"]: d for d in config["drivers"]}
    assert list(by_name) == ["viostor", "vioscsi", "NetKVM", "vioserial", "pvpanic", "Balloon"]
    assert by_name["pvpanic"]["command"] == (
        'pnputil.exe /add-driver "C:\\compatlab\\setup\\drivers\\pvpanic\\*.inf" /subdirs /install'
    )
    assert by_name["pvpanic"]["success"] == [0, 259] and by_name["pvpanic"]["reboot"] == [
        3010,
        1641,
    ]
    agent = config["agent"]
    assert (
        'msiexec.exe /i "C:\\compatlab\\setup\\qemu-ga-x86_64.msi" /qn /norestart'
        in agent["command"]
    )
    assert agent["log"] == "C:\\compatlab\\logs\\qemu-ga-install.log"
    assert config["retry"] == {
        "codes": [1618],
        "attempts": RETRY_1618.attempts,
        "waits": list(RETRY_1618.waits),
    }
    assert config["shutdown"] is True and config["winrm"] == {"keep_http": False}
    assert config["boot_start"] == ["storahci", "stornvme", "viostor"]
    assert PASSWORD not in json.dumps(config)


def test_setup_ps1_sets_up_winrm_https_agent_pvpanic_and_checks_them() -> None:
    script = (RECIPE / "media" / "setup.ps1").read_text(encoding="utf-8")
    for needle in (
        "New-Item -Path WSMan:\\localhost\\Listener -Transport HTTPS",
        "New-SelfSignedCertificate",
        "IPAddress=127.0.0.1",
        "Import-PfxCertificate",
        "-LocalPort 5986",
        "AllowUnencrypted -Value $false",
        "LocalAccountTokenFilterPolicy",
        "QEMU-GA",
        "ACPI\\QEMU0001",  # the pvpanic device
        "CrashDumpEnabled -eq 3",
        "AutoReboot -eq 1",
        "bootstatuspolicy\\s+IgnoreAllFailures",
        "recoveryenabled\\s+No",
        "HKLM:\\SYSTEM\\MountedDevices",
        "DefaultPassword",
        "Panther\\unattend.xml",
        "BEGIN CERTIFICATE",
    ):
        assert needle in script, needle
    # It prints no password: only the PFX's, read from a file, ever touches one.
    assert "password" not in " ".join(re.findall(r"Say [^\n]*", script)).lower()


def test_setup_iso_holds_joliet_names_and_the_password_only_in_the_answer_file(
    tmp_path: Path, virtio_iso: Path
) -> None:
    staged = stage(tmp_path, virtio_iso)
    iso_path = build_iso(staged.folder, tmp_path / "setup.iso", label=build.MEDIA_LABEL)
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        names = {
            f"{root.rstrip('/')}/{name}"
            for root, _dirs, files in iso.walk(joliet_path="/")
            for name in files
        }
        assert "/autounattend.xml" in names
        assert "/$WinPEDriver$/viostor/viostor.inf" in names
        assert "/compatlab/setup.ps1" in names  # the marker the specialize pass looks for
        escaped = str(markupsafe.escape(PASSWORD))
        for name in sorted(names):
            data = bytearray()
            with iso.open_file_from_iso(joliet_path=name) as handle:
                data += handle.read()
            holds = PASSWORD.encode() in data or escaped.encode() in data
            assert holds == (name == "/autounattend.xml"), name
    finally:
        iso.close()


def test_missing_virtio_folders_are_named(tmp_path: Path) -> None:
    virtio = fake_virtio(tmp_path / "virtio", os_dirs=("w10",))
    with pytest.raises(build.BuildError, match=r"viostor/2k25/amd64, viostor/2k22/amd64"):
        stage(tmp_path, virtio, name="server2025")


# -- the password --------------------------------------------------------------------------


def test_password_from_env_and_from_a_0600_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPATLAB_WINRM_PASSWORD", PASSWORD)
    assert build.password_for(image()) == PASSWORD
    secret = tmp_path / "win.password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    yaml = tmp_path / "img.yaml"
    text = (ROOT / "images" / "win11-24h2.yaml").read_text()
    yaml.write_text(
        text.replace("password_env: COMPATLAB_WINRM_PASSWORD", f"password_file: {secret}")
    )
    assert build.password_for(parse_image(yaml)) == PASSWORD
    secret.chmod(0o644)
    with pytest.raises(build.BuildError, match="chmod 600") as caught:
        build.password_for(parse_image(yaml))
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("weak", ["Short1!", "alllowercase", "NoDigitsOrOther", "xCompatlab-9"])
def test_weak_passwords_are_refused_without_being_shown(weak: str) -> None:
    with pytest.raises(build.BuildError) as caught:
        build.check_password(weak, "compatlab")
    assert weak not in str(caught.value)


def test_missing_password_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPATLAB_WINRM_PASSWORD", raising=False)
    with pytest.raises(build.BuildError, match="COMPATLAB_WINRM_PASSWORD"):
        build.password_for(image())


def test_media_command_end_to_end(
    tmp_path: Path,
    virtio_iso: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COMPATLAB_WINRM_PASSWORD", PASSWORD)
    out = tmp_path / "media"
    code = build.main(
        [
            "media",
            str(ROOT / "images" / "server2022-bios.yaml"),
            "--virtio-win",
            str(virtio_iso),
            "--out",
            str(out),
            "--for",
            "packer",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert (out / "setup.iso").stat().st_mode & 0o777 == 0o600
    config = json.loads((out / "setup" / "compatlab" / "setup.json").read_text())
    assert config["shutdown"] is False  # Packer shuts the machine down itself
    assert (
        ET.fromstring((out / "setup" / "autounattend.xml").read_text()).findtext(
            f".//{U}InstallTo/{U}PartitionID"
        )
        == "2"
    )
    assert PASSWORD not in printed.out + printed.err


def test_media_command_refuses_a_disk_with_two_firmwares(
    tmp_path: Path,
    virtio_iso: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COMPATLAB_WINRM_PASSWORD", PASSWORD)
    yaml = tmp_path / "win11-24h2.yaml"
    yaml.write_text(
        (ROOT / "images" / "win11-24h2.yaml").read_text().replace("[uefi]", "[bios, uefi]")
    )
    assert (
        build.main(
            ["media", str(yaml), "--virtio-win", str(virtio_iso), "--out", str(tmp_path / "m")]
        )
        == 2
    )
    assert "boots with one" in capsys.readouterr().err


# -- the build VM --------------------------------------------------------------------------


@pytest.mark.parametrize(("firmware", "accel"), [("uefi", "qemu"), ("bios", "kvm")])
def test_build_domain_passes_libvirt_schema(firmware: str, accel: str) -> None:
    xml = build.render_build_domain(
        name="compatlab-build-win11-24h2",
        accel=accel,
        memory_mib=4096,
        vcpus=2,
        firmware=firmware,
        secure_boot=firmware == "uefi",
        tpm=firmware == "uefi",
        nvram="/var/lib/compatlab/images/x/.build/VARS.fd",
        disk="/var/lib/compatlab/images/x/.build/disk.qcow2",
        windows_iso="/isos/Win 11 24H2 eval.iso",
        setup_iso="/var/lib/compatlab/images/x/.build/setup.iso",
        serial_log="/var/lib/compatlab/images/x/.build/serial.log",
        vnc=firmware == "uefi",
    )
    validate_domain_xml(xml)  # virt-xml-validate, libvirt's own schema
    root = ET.fromstring(xml)
    assert root.find("devices/interface") is None  # no NIC: the build needs no network
    assert root.find("devices/panic").get("model") == "isa"  # type: ignore[union-attr]
    assert (root.find("devices/tpm") is not None) == (firmware == "uefi")
    cdroms = root.findall("devices/disk[@device='cdrom']")
    sources = [c.find("source") for c in cdroms]
    assert [s.get("file") for s in sources if s is not None] == [
        "/isos/Win 11 24H2 eval.iso",
        "/var/lib/compatlab/images/x/.build/setup.iso",
    ]
    assert root.find("devices/disk[@device='disk']/target").get("bus") == "virtio"  # type: ignore[union-attr]
    graphics = root.find("devices/graphics")
    assert graphics is None or graphics.get("listen") == "127.0.0.1"


def test_serial_log_is_read_for_checks_and_the_certificate(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_bytes(
        b"BdsDxe: loading Boot0001\r\ncompatlab-setup: start: image win11-24h2\r\n"
        b"compatlab-setup: check winrm-https-listener ok self-signed certificate AB12\r\n"
        b"compatlab-setup: check guest-agent-service FAILED no QEMU-GA service\r\n"
        b"compatlab-setup: -----BEGIN CERTIFICATE-----\r\ncompatlab-setup: MIIB\r\n"
        b"compatlab-setup: -----END CERTIFICATE-----\r\ncompatlab-setup: done: FAILED x\r\n"
    )
    lines = build.read_serial(serial)
    assert lines[0] == "start: image win11-24h2"
    assert build.failed_checks(lines) == ["check guest-agent-service FAILED no QEMU-GA service"]
    assert build.certificate_pem(lines) == (
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    assert build.read_serial(tmp_path / "absent.log") == []


def test_packer_template_shape() -> None:
    text = (RECIPE / "windows.pkr.hcl").read_text(encoding="utf-8")
    assert 'source "qemu" "windows"' in text
    assert "headless         = true" in text
    assert "accelerator      = var.accelerator" in text
    assert 'cd_files = ["${var.setup_dir}/"]' in text
    assert "hostfwd=tcp:127.0.0.1:" in text  # the WinRM port on loopback only
    assert "winrm_use_ssl  = true" in text
    assert re.search(r'variable "winrm_password" \{[^}]*sensitive\s*=\s*true', text)


# -- the catalog and the nightly matrix ------------------------------------------------------


@pytest.mark.parametrize("name", WINDOWS_IMAGES)
def test_windows_catalog_entries(name: str) -> None:
    path = ROOT / "images" / f"{name}.yaml"
    entry = parse_image(path)
    assert entry.os_family == "windows" and entry.channel == "winrm"
    assert len(entry.firmware) == 1  # one disk boots with one firmware
    assert ("bios" in entry.firmware) == name.endswith("-bios")
    assert entry.credentials is not None and entry.credentials.password_env
    assert entry.recipe == "windows" and entry.variant == name
    assert name in build.RECIPES
    assert entry.boot_complete is None and "# boot_complete: " in path.read_text()


def test_builds_are_the_ones_microsoft_ships() -> None:
    builds = {name: image(name).build for name in WINDOWS_IMAGES}
    assert builds == {
        "win10-22h2": "19045",
        "win10-22h2-bios": "19045",
        "win11-23h2": "22631",
        "win11-24h2": "26100",
        "server2022": "20348",
        "server2022-bios": "20348",
        "server2025": "26100",
    }


def test_nightly_matrix_loads_and_uses_every_windows_build() -> None:
    matrix = load_matrix(ROOT / "matrix" / "nightly.yaml", catalog_root=ROOT)
    builds = {cell.build for cell in matrix.cells}
    assert builds == set(WINDOWS_IMAGES)
    for cell in matrix.cells:
        assert cell.hardware.firmware in cell.image.firmware, cell.id
