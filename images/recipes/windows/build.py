#!/usr/bin/env python3
"""Build a Windows golden image compatlab can drive: the answer-file ISO, and the build VM.

Run it with the project's virtualenv (it imports compatlab)::

    .venv/bin/python images/recipes/windows/build.py media  images/win11-24h2.yaml \\
        --windows-iso ISO --virtio-win VIRTIO_ISO_OR_FOLDER --out DIR [--for packer]
    .venv/bin/python images/recipes/windows/build.py run    images/win11-24h2.yaml \\
        --windows-iso ISO --virtio-win VIRTIO --accel auto

``media`` renders ``autounattend.xml`` (the admin password from the image's credentials
reference), stages the setup folder (answer file, the virtio-win drivers for this Windows in
``$WinPEDriver$`` and ``compatlab\\drivers``, the QEMU guest agent MSI, ``setup.ps1`` and its
``setup.json``) and packs it into an ISO 9660 + Joliet image in Python
(:func:`compatlab.guest.media.build_iso`). ``run`` does that, then installs Windows in a
libvirt VM, waits for it to shut itself down, reads setup.ps1's checks from the serial log and
moves the disk to where the catalog entry says (``disk:``). The README walks through it.

Everything that holds the password (the staged folder, the ISO) lives in a 0700 folder and is
deleted after ``run`` (``--keep-media`` keeps it). Nothing here prints the password.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import jinja2

from compatlab.catalog import ExitCodes, GoldenImage, parse_image
from compatlab.errors import CompatlabError, GuestError
from compatlab.guest.media import build_iso
from compatlab.guest.windows_install import (
    REBOOT_CODES,
    RETRY_1618,
    RETRY_CODES,
    install_command,
)
from compatlab.guest.winrm import resolve_password

HERE = Path(__file__).resolve().parent
MEDIA_LABEL = "COMPATLAB_SETUP"
SETUP_DIR = "C:\\compatlab\\setup"

# -- what each catalog image is built from ---------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Per-image defaults. ``virtio`` is the OS folder on the virtio-win ISO (then fallbacks);
    ``edition`` the index in the ISO's ``sources\\install.wim`` (check with wiminfo)."""

    virtio: tuple[str, ...]
    edition: int
    server: bool = False
    memory_mib: int = 4096
    disk_gib: int = 64


RECIPES: dict[str, Recipe] = {
    # Windows 10/11 Enterprise evaluation ISOs carry one image: Enterprise Evaluation.
    "win10-22h2": Recipe(virtio=("w10",), edition=1),
    "win11-23h2": Recipe(virtio=("w11", "w10"), edition=1),
    "win11-24h2": Recipe(virtio=("w11", "w10"), edition=1),
    # Server evaluation ISOs: 1 Standard (Core), 2 Standard (Desktop Experience),
    # 3 Datacenter (Core), 4 Datacenter (Desktop Experience). Desktop Experience: the fleet's.
    "server2022": Recipe(virtio=("2k22", "2k19"), edition=2, server=True),
    "server2025": Recipe(virtio=("2k25", "2k22"), edition=2, server=True),
}
# BIOS variants are the same Windows on an MBR disk.
RECIPES.update({f"{name}-bios": recipe for name, recipe in list(RECIPES.items())})

#: virtio-win drivers staged for every image; the first three also load in Windows Setup
#: ($WinPEDriver$): the disk's, the SCSI controller's, the NIC's.
DRIVERS = ("viostor", "vioscsi", "NetKVM", "vioserial", "pvpanic", "Balloon")
WINPE_DRIVERS = ("viostor", "vioscsi", "NetKVM")
AGENT_MSI = "guest-agent/qemu-ga-x86_64.msi"
#: Storage drivers made boot-start, so one image boots on every disk bus a profile names.
BOOT_START = ("storahci", "stornvme", "viostor")
#: pnputil's 259 (no device matched): a driver staged for devices cells may have (a NIC) is fine.
DRIVER_EXIT_CODES = ExitCodes(success=(0, 259), reboot=REBOOT_CODES)

_CRASH = "HKLM\\SYSTEM\\CurrentControlSet\\Control\\CrashControl"
_SERVICES = "HKLM\\SYSTEM\\CurrentControlSet\\Services"


@dataclass(frozen=True)
class Command:
    description: str
    path: str


def specialize_commands() -> list[Command]:
    """The specialize pass, as SYSTEM, in order. Each ``Path`` must stay within 259 characters."""
    letters = " ".join("DEFGHIJKLMNOPQRSTUVWXYZ")
    copy = (
        f"cmd.exe /c for %d in ({letters}) do @if exist %d:\\compatlab\\setup.ps1 "
        f"xcopy /e /i /y /q %d:\\compatlab {SETUP_DIR}"
    )
    commands = [
        Command("Copy the compatlab setup folder from the setup medium", copy),
        Command("Logs folder", "cmd.exe /c mkdir C:\\compatlab\\logs"),
        # Small memory dumps (3), restart after a bugcheck (AutoReboot 1): a crashed cell
        # comes back and boots again, which is how the lab sees a boot loop.
        Command(
            "Crash dumps: small memory dump",
            f'reg.exe add "{_CRASH}" /v CrashDumpEnabled /t REG_DWORD /d 3 /f',
        ),
        Command(
            "Crash dumps: restart after a bugcheck",
            f'reg.exe add "{_CRASH}" /v AutoReboot /t REG_DWORD /d 1 /f',
        ),
        Command(
            "Crash dumps: minidump folder",
            f'reg.exe add "{_CRASH}" /v MinidumpDir /t REG_EXPAND_SZ '
            '/d "%SystemRoot%\\Minidump" /f',
        ),
        Command(
            "Crash screen: show the bugcheck parameters (for the lab's screenshot)",
            f'reg.exe add "{_CRASH}" /v DisplayParameters /t REG_DWORD /d 1 /f',
        ),
        # No Automatic Repair, no recovery environment after failed boots: a driver that
        # crashes every boot keeps crashing, visibly, instead of landing in WinRE (a "hang").
        Command(
            "Boot failures: never stop at the recovery menu",
            "bcdedit.exe /set {default} bootstatuspolicy ignoreallfailures",
        ),
        Command(
            "Boot failures: no automatic recovery",
            "bcdedit.exe /set {default} recoveryenabled No",
        ),
    ]
    for service in BOOT_START:
        commands.append(
            Command(
                f"Boot-start storage driver {service} (the image boots on any disk bus)",
                f'reg.exe add "{_SERVICES}\\{service}" /v Start /t REG_DWORD /d 0 /f',
            )
        )
        commands.append(
            Command(
                f"No StartOverride for {service}",
                f'cmd.exe /c reg.exe delete "{_SERVICES}\\{service}\\StartOverride" /f 2>nul'
                " & exit /b 0",
            )
        )
    commands += [
        # Windows 11 24H2 encrypts C: by itself on capable machines; a fresh TPM per cell
        # would then stop every cell at the BitLocker recovery screen.
        Command(
            "No automatic device encryption",
            'reg.exe add "HKLM\\SYSTEM\\CurrentControlSet\\Control\\BitLocker" '
            "/v PreventDeviceEncryption /t REG_DWORD /d 1 /f",
        ),
        Command("No hibernation, no fast startup", "powercfg.exe /hibernate off"),
        Command("No sleep on AC power", "powercfg.exe /change standby-timeout-ac 0"),
        Command(
            "No automatic Windows Update: a cell must not change under the test",
            'reg.exe add "HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU" '
            "/v NoAutoUpdate /t REG_DWORD /d 1 /f",
        ),
        Command(
            "No shutdown reason prompt after a crash (Server)",
            'reg.exe add "HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows NT\\Reliability" '
            "/v ShutdownReasonOn /t REG_DWORD /d 0 /f",
        ),
    ]
    return commands


def first_logon_command() -> str:
    """The one first-logon command: setup.ps1, through compatlab's own ps1 line builder."""
    return install_command(f"{SETUP_DIR}\\setup.ps1", kind="ps1").command


# -- the password ------------------------------------------------------------------------------


class BuildError(CompatlabError):
    """The build cannot go on; the message says why (never with the password)."""


def password_for(image: GoldenImage) -> str:
    """The admin password from the image's credentials reference, checked."""
    credentials = image.credentials
    if credentials is None:
        raise BuildError(f"image {image.name} has no credentials: a Windows image needs them")
    if credentials.password_file is not None:
        try:
            mode = credentials.password_file.stat().st_mode
        except OSError as exc:
            raise BuildError(f"cannot read {credentials.password_file}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BuildError(
                f"{credentials.password_file} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
    try:
        password = resolve_password(credentials)
    except GuestError as exc:  # its message names the variable or file, never a value
        raise BuildError(str(exc)) from exc
    check_password(password, credentials.username)
    return password


def check_password(password: str, username: str) -> None:
    """Refuse what Windows's default password policy would (Server enforces complexity): fewer
    than 8 characters, fewer than 3 of upper, lower, digit and other, the user name in it."""
    if re.search(r"[\x00-\x1f\x7f]", password):
        raise BuildError("the admin password holds a control character")
    if len(password) < 8 or len(password) > 127:
        raise BuildError("the admin password must be 8 to 127 characters long")
    classes = [
        any(c.isupper() for c in password),
        any(c.islower() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(classes) < 3:
        raise BuildError(
            "the admin password needs three of: upper case, lower case, digits, other characters"
        )
    if len(username) > 2 and username.lower() in password.lower():
        raise BuildError("the admin password must not contain the user name")


# -- the virtio-win ISO --------------------------------------------------------------------------


class Source:
    """The virtio-win ISO (read with pycdlib) or a folder holding its contents."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._iso: Any = None
        self._key = ""
        self._kind = "dir" if path.is_dir() else "iso"
        self.files: dict[str, str] = {}  # lower-case path -> real path in the source
        if self._kind == "dir":
            for root, _dirs, names in os.walk(path):
                for name in names:
                    real = Path(root, name).relative_to(path).as_posix()
                    self.files[real.lower()] = real
            self.version = path.name
        else:
            import pycdlib

            self._iso = pycdlib.PyCdlib()
            self._iso.open(str(path))
            try:
                # Joliet keeps the names' case (the ISO 9660 names are upper-cased 8.3-ish).
                if self._iso.has_joliet():
                    self._key = "joliet_path"
                elif self._iso.has_rock_ridge():
                    self._key = "rr_path"
                else:
                    raise BuildError(f"{path}: an ISO without Joliet or Rock Ridge names")
                for root, _dirs, names in self._iso.walk(**{self._key: "/"}):
                    for name in names:
                        real = str(PurePosixPath(root, name)).lstrip("/")
                        self.files[real.lower()] = real
                volume = self._iso.pvd.volume_identifier
                self.version = volume.decode("ascii", "replace").strip()
            except BaseException:
                self._iso.close()
                raise

    def close(self) -> None:
        if self._iso is not None:
            self._iso.close()

    def folder(self, *parts: str) -> list[str]:
        prefix = "/".join(parts).lower() + "/"
        return sorted(real for low, real in self.files.items() if low.startswith(prefix))

    def copy(self, real: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._kind == "dir":
            shutil.copyfile(self.path / real, target)
        else:
            with target.open("wb") as out:
                self._iso.get_file_from_iso_fp(out, **{self._key: "/" + real})


# -- staging the setup medium --------------------------------------------------------------------


@dataclass
class Staged:
    folder: Path
    drivers: dict[str, str] = field(default_factory=dict)  # driver -> OS folder used
    infs: list[str] = field(default_factory=list)
    virtio_version: str = ""
    notes: list[str] = field(default_factory=list)


def template_environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def computer_name(image: str) -> str:
    """At most 15 characters of A-Z, 0-9 and '-', not all digits: a NetBIOS name."""
    name = "CL-" + re.sub(r"[^A-Z0-9-]+", "-", image.upper())
    return name[:15].rstrip("-")


def render_answer_file(
    image: GoldenImage,
    password: str,
    *,
    firmware: Literal["uefi", "bios"],
    edition: int,
    server: bool,
    product_key: str = "",
    locale: str = "en-US",
    timezone: str = "UTC",
) -> str:
    """``autounattend.xml`` for ``image``, with ``password`` where the admin's belongs."""
    if product_key and not re.fullmatch(r"[A-Z0-9]{5}(-[A-Z0-9]{5}){4}", product_key):
        raise BuildError("a product key is five groups of five letters or digits")
    credentials = image.credentials
    if credentials is None:
        raise BuildError(f"image {image.name} has no credentials")
    return (
        template_environment()
        .get_template("autounattend.xml.j2")
        .render(
            image=image.name,
            display_name=image.display_name or image.name,
            firmware=firmware,
            server=server,
            edition_index=edition,
            product_key=product_key,
            locale=locale,
            timezone=timezone,
            computer_name=computer_name(image.name),
            admin_username=credentials.username,
            admin_password=password,
            specialize=specialize_commands(),
            first_logon_command=first_logon_command(),
        )
    )


def setup_config(image: GoldenImage, staged: Staged, *, shutdown: bool, keep_http: bool) -> Any:
    """setup.json: what setup.ps1 runs, each line built by compatlab.guest.windows_install."""
    drivers = []
    for name in staged.drivers:
        line = install_command(f"{SETUP_DIR}\\drivers\\{name}\\*.inf", subdirs=True)
        drivers.append(
            {
                "name": name,
                "command": line.command,
                "success": list(DRIVER_EXIT_CODES.success),
                "reboot": list(DRIVER_EXIT_CODES.reboot),
            }
        )
    agent = install_command(
        f"{SETUP_DIR}\\qemu-ga-x86_64.msi", log="C:\\compatlab\\logs\\qemu-ga-install.log"
    )
    return {
        "image": image.name,
        "drivers": drivers,
        "driver_infs": staged.infs,
        "agent": {
            "name": "qemu-ga",
            "command": agent.command,
            "log": agent.log,
            "success": [0],
            "reboot": list(REBOOT_CODES),
        },
        "retry": {
            "codes": list(RETRY_CODES),
            "attempts": RETRY_1618.attempts,
            "waits": list(RETRY_1618.waits),
        },
        "boot_start": list(BOOT_START),
        "winrm": {"keep_http": keep_http},
        "shutdown": shutdown,
    }


def stage(
    image: GoldenImage,
    password: str,
    virtio: Path,
    out: Path,
    *,
    firmware: Literal["uefi", "bios"],
    recipe: Recipe,
    edition: int | None = None,
    product_key: str = "",
    shutdown: bool = True,
    keep_http: bool = False,
    winrm_pfx: Path | None = None,
    pfx_password: str | None = None,
) -> Staged:
    """The setup folder in ``out`` (created 0700): everything the setup ISO carries."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    folder = out / "setup"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    staged = Staged(folder)
    source = Source(virtio)
    try:
        staged.virtio_version = source.version
        for driver in DRIVERS:
            for os_dir in recipe.virtio:
                files = [f for f in source.folder(driver, os_dir, "amd64") if not _is_pdb(f)]
                if files:
                    break
            else:
                tried = ", ".join(f"{driver}/{d}/amd64" for d in recipe.virtio)
                raise BuildError(f"{virtio}: no {tried} (is this the virtio-win ISO?)")
            if os_dir != recipe.virtio[0]:
                staged.notes.append(f"{driver}: no {recipe.virtio[0]} build, used {os_dir}")
            staged.drivers[driver] = os_dir
            for real in files:
                relative = real.split("/", 3)[3]  # below <driver>/<os>/amd64/
                source.copy(real, folder / "compatlab" / "drivers" / driver / relative)
                if driver in WINPE_DRIVERS:
                    source.copy(real, folder / "$WinPEDriver$" / driver / relative)
                if relative.lower().endswith(".inf") and "/" not in relative:
                    staged.infs.append(PurePosixPath(relative).name.lower())
        agent = source.files.get(AGENT_MSI.lower())
        if agent is None:
            raise BuildError(f"{virtio}: no {AGENT_MSI}")
        source.copy(agent, folder / "compatlab" / "qemu-ga-x86_64.msi")
    finally:
        source.close()
    shutil.copyfile(HERE / "media" / "setup.ps1", folder / "compatlab" / "setup.ps1")
    config = setup_config(image, staged, shutdown=shutdown, keep_http=keep_http)
    (folder / "compatlab" / "setup.json").write_text(json.dumps(config, indent=2) + "\n")
    if winrm_pfx is not None:
        if not pfx_password:
            raise BuildError("--winrm-pfx needs the PFX password in COMPATLAB_WINRM_PFX_PASSWORD")
        shutil.copyfile(winrm_pfx, folder / "compatlab" / "winrm.pfx")
        (folder / "compatlab" / "winrm.pfx.password").write_text(pfx_password)
    answer = render_answer_file(
        image,
        password,
        firmware=firmware,
        edition=edition if edition is not None else recipe.edition,
        server=recipe.server,
        product_key=product_key,
    )
    (folder / "autounattend.xml").write_text(answer, encoding="utf-8")
    return staged


def _is_pdb(path: str) -> bool:
    return path.lower().endswith(".pdb")


# -- the build VM ------------------------------------------------------------------------------


def render_build_domain(**values: Any) -> str:
    return template_environment().get_template("build-domain.xml.j2").render(**values)


def read_serial(path: Path) -> list[str]:
    """The ``compatlab-setup:`` lines setup.ps1 wrote to COM1, without the prefix."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [m.group(1).rstrip("\r") for m in re.finditer(r"compatlab-setup: (.*)", text)]


def failed_checks(lines: Sequence[str]) -> list[str]:
    return [line for line in lines if line.startswith("check ") and " FAILED" in line]


def certificate_pem(lines: Sequence[str]) -> str | None:
    try:
        start = lines.index("-----BEGIN CERTIFICATE-----")
        end = lines.index("-----END CERTIFICATE-----", start)
    except ValueError:
        return None
    return "\n".join(lines[start : end + 1]) + "\n"


def _single_firmware(image: GoldenImage, chosen: str | None) -> Literal["uefi", "bios"]:
    if chosen is not None:
        if chosen not in image.firmware:
            raise BuildError(f"image {image.name} lists firmware {sorted(image.firmware)}")
        return "uefi" if chosen == "uefi" else "bios"
    if len(image.firmware) != 1:
        raise BuildError(
            f"image {image.name} lists firmware {sorted(image.firmware)}: a Windows disk boots "
            "with one (GPT for UEFI, MBR for BIOS); list one in the catalog or pass --firmware"
        )
    return "uefi" if "uefi" in image.firmware else "bios"


def press_enter(dom: Any, seconds: float) -> None:
    """Enter every 2 s: a Windows ISO waits for a key ("Press any key to boot from CD")."""
    import libvirt

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, 50, [28], 1, 0)  # KEY_ENTER
        except libvirt.libvirtError:
            return
        time.sleep(2)


def run_build(args: argparse.Namespace, image: GoldenImage, recipe: Recipe) -> int:
    import libvirt

    from compatlab.lab.connection import Hypervisor
    from compatlab.lab.machine import destroy_domain, undefine_domain

    firmware = _single_firmware(image, args.firmware)
    target = image.disk
    work = Path(args.out or target.parent) / f".build-{image.name}"
    password = password_for(image)
    staged = stage(
        image,
        password,
        Path(args.virtio_win),
        work,
        firmware=firmware,
        recipe=recipe,
        edition=args.edition,
        product_key=args.product_key or "",
        shutdown=True,
        keep_http=args.keep_winrm_http,
        winrm_pfx=Path(args.winrm_pfx) if args.winrm_pfx else None,
        pfx_password=os.environ.get("COMPATLAB_WINRM_PFX_PASSWORD"),
    )
    setup_iso = build_iso(staged.folder, work / "setup.iso", label=MEDIA_LABEL)
    os.chmod(setup_iso, 0o600)
    disk = work / "disk.qcow2"
    disk.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), f"{recipe.disk_gib}G"], check=True
    )
    serial = work / "serial.log"
    serial.unlink(missing_ok=True)
    name = f"compatlab-build-{image.name}"
    with Hypervisor(args.connect) as hypervisor:
        accel = args.accel
        if accel == "auto":
            found = hypervisor.accelerator()
            accel = found.domain_type
            print(f"build: accelerator {accel} ({found.reason})")
        xml = render_build_domain(
            name=name,
            accel=accel,
            memory_mib=args.memory or recipe.memory_mib,
            vcpus=args.vcpus,
            firmware=firmware,
            secure_boot=firmware == "uefi",
            tpm=firmware == "uefi",
            nvram=str(work / "VARS.fd"),
            disk=str(disk),
            windows_iso=str(Path(args.windows_iso).resolve()),
            setup_iso=str(setup_iso),
            serial_log=str(serial),
            vnc=args.vnc,
        )
        conn = hypervisor.connection
        dom = conn.defineXML(xml)
        try:
            dom.create()
            print(f"build: {name} started; setup.ps1 reports to {serial}")
            press_enter(dom, args.boot_keys)
            seen = 0
            deadline = time.monotonic() + args.timeout * 3600
            while dom.isActive():
                lines = read_serial(serial)
                for line in lines[seen:]:
                    print(f"  {line}")
                seen = len(lines)
                if time.monotonic() > deadline:
                    raise BuildError(f"no shutdown within {args.timeout} h; see {serial}")
                time.sleep(10)
        except libvirt.libvirtError as exc:
            raise BuildError(f"libvirt: {exc.get_error_message()}") from exc
        finally:
            destroy_domain(dom, host=hypervisor.host, name=name)
            undefine_domain(dom, host=hypervisor.host, name=name)
    lines = read_serial(serial)
    failures = failed_checks(lines)
    done = any(line.startswith("done:") for line in lines)
    if not args.keep_media:
        shutil.rmtree(staged.folder, ignore_errors=True)
        setup_iso.unlink(missing_ok=True)
    if not done or failures:
        why = "; ".join(failures) if failures else "setup.ps1 never finished"
        print(f"build: FAILED: {why}. The disk stays at {disk} for a look.", file=sys.stderr)
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    pem = certificate_pem(lines)
    if pem:
        (target.parent / "winrm-https.pem").write_text(pem)
    manifest = {
        "image": image.name,
        "build": image.build,
        "firmware": firmware,
        "edition_index": args.edition or recipe.edition,
        "windows_iso": str(Path(args.windows_iso).resolve()),
        "virtio_win": staged.virtio_version,
        "virtio_os_folders": staged.drivers,
        "notes": staged.notes,
        "checks": [line for line in lines if line.startswith("check ")],
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (target.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(disk, 0o644)
    os.replace(disk, target)
    print(f"build: {image.name} ready at {target}")
    return 0


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("media", "run"):
        p = sub.add_parser(name)
        p.add_argument("image", help="the catalog entry, e.g. images/win11-24h2.yaml")
        p.add_argument("--virtio-win", required=True, help="virtio-win ISO, or its contents")
        p.add_argument("--edition", type=int, help="index in install.wim (default per image)")
        p.add_argument("--product-key", help="for volume-licence media (eval ISOs need none)")
        p.add_argument("--firmware", choices=("uefi", "bios"))
        p.add_argument("--keep-winrm-http", action="store_true", help="keep the 5985 listener")
        p.add_argument("--winrm-pfx", help="a lab-CA certificate (PFX) instead of self-signed")
        if name == "media":
            p.add_argument("--out", required=True, help="folder for setup/ and setup.iso (0700)")
            p.add_argument("--for", dest="target", choices=("libvirt", "packer"), default="libvirt")
        else:
            p.add_argument("--windows-iso", required=True)
            p.add_argument("--out", help="work folder (default: beside the catalog's disk)")
            p.add_argument("--accel", choices=("auto", "kvm", "qemu"), default="auto")
            p.add_argument("--connect", default="qemu:///system")
            p.add_argument("--memory", type=int, help="MiB (default 4096)")
            p.add_argument("--vcpus", type=int, default=2)
            p.add_argument("--timeout", type=float, default=8.0, help="hours (TCG is slow)")
            p.add_argument("--boot-keys", type=float, default=90.0, help="seconds of Enter")
            p.add_argument("--vnc", action="store_true", help="a VNC display on 127.0.0.1")
            p.add_argument("--keep-media", action="store_true", help="keep setup/ and the ISO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        image = parse_image(Path(args.image).resolve())
        if image.os_family != "windows":
            raise BuildError(f"{args.image} is not a Windows image")
        recipe = RECIPES.get(image.name)
        if recipe is None:
            raise BuildError(f"no recipe for {image.name}; known: {', '.join(sorted(RECIPES))}")
        if args.command == "run":
            return run_build(args, image, recipe)
        firmware = _single_firmware(image, args.firmware)
        out = Path(args.out)
        staged = stage(
            image,
            password_for(image),
            Path(args.virtio_win),
            out,
            firmware=firmware,
            recipe=recipe,
            edition=args.edition,
            product_key=args.product_key or "",
            shutdown=args.target == "libvirt",
            keep_http=args.keep_winrm_http,
            winrm_pfx=Path(args.winrm_pfx) if args.winrm_pfx else None,
            pfx_password=os.environ.get("COMPATLAB_WINRM_PFX_PASSWORD"),
        )
        iso = build_iso(staged.folder, out / "setup.iso", label=MEDIA_LABEL)
        os.chmod(iso, 0o600)
        for note in staged.notes:
            print(f"note: {note}")
        print(f"setup folder: {staged.folder}\nsetup ISO:    {iso}")
        print("both hold the admin password: delete them after the build")
        return 0
    except CompatlabError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
