"""What this lab can run: hardware profiles its libvirt and QEMU cannot render, and WinRM
transports it cannot use.

Pure (no libvirt, no files, no network): the catalog and the matrix loader ask these at load, so
what cannot run is a usage error naming the file, before anything is created -- never a failure
of a running cell. Measured on this lab: libvirt 9.0, QEMU 7.2, pywinrm 0.5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from compatlab.errors import CatalogError

if TYPE_CHECKING:
    from compatlab.catalog import GoldenImage, HardwareProfile

__all__ = [
    "WINRM_TRANSPORTS",
    "WINRM_TRANSPORTS_REFUSED",
    "ProfileNotSupported",
    "check_supported",
]

#: The WinRM transports (pywinrm's ``transport``) a cell's channel can use here. ``ntlm`` is
#: what Windows takes over HTTP by default (with message encryption); ``basic`` only where the
#: guest takes Basic over HTTP (the demo's WinRS stand-in: Windows refuses unencrypted Basic).
WINRM_TRANSPORTS: Final = ("ntlm", "basic")
#: The transports pywinrm knows that cannot work here: name -> (why, what to do instead).
WINRM_TRANSPORTS_REFUSED: Final[dict[str, tuple[str, str]]] = {
    "ssl": (
        "is Basic authentication over HTTPS, which Windows's WinRM service refuses by default",
        "use ntlm; for HTTPS, name the guest's certificate in winrm_certificate "
        "(images/recipes/windows/README.md)",
    ),
    "credssp": (
        "needs the requests-credssp package, which is not installed with compatlab",
        "use ntlm",
    ),
    "kerberos": (
        "needs pykerberos and a domain controller (a KDC); lab guests are local accounts on a "
        "forwarded port, in no domain",
        "use ntlm",
    ),
}


class ProfileNotSupported(CatalogError):
    """A hardware profile (with this image) cannot run on this lab's libvirt / QEMU.

    An input error, found before anything is created: the profile file is what must change.
    """


def check_supported(image: GoldenImage, hardware: HardwareProfile) -> None:
    """Refuse, with a clear reason, a profile this lab's libvirt 9.0 / QEMU 7.2 cannot run.

    - the image does not boot with the profile's firmware;
    - Secure Boot on the ``pc`` machine: every Secure Boot OVMF build needs SMM, which the
      firmware descriptors only offer on q35 (libvirt: "Unable to find any firmware to
      satisfy 'efi'");
    - the ``itco`` watchdog: libvirt 9.0 does not know the model.

    NVMe is supported (see the domain template): libvirt 9.0 has no NVMe disk bus, so the disk's
    front end is overridden to QEMU's ``nvme`` device.

    Pure (no libvirt, no files): the matrix loader runs it once per (image, hardware) pair of
    the expanded matrix, so a profile that cannot run is a usage error before anything starts;
    :func:`compatlab.lab.domain.render_domain_xml` runs it again for every domain it renders.
    """
    if hardware.firmware not in image.firmware:
        raise ProfileNotSupported(
            f"image '{image.name}' boots with {'/'.join(sorted(image.firmware))}, "
            f"hardware profile '{hardware.name}' has {hardware.firmware}",
            file=hardware.source,
            hint="pair this image with a profile of a firmware it supports",
        )
    if hardware.secure_boot and hardware.machine != "q35":
        raise ProfileNotSupported(
            f"hardware profile '{hardware.name}': Secure Boot needs machine q35, "
            f"not {hardware.machine}",
            file=hardware.source,
            hint="the Secure Boot OVMF descriptors (they need SMM) list pc-q35-* machines only",
        )
    if hardware.watchdog is not None and hardware.watchdog.model == "itco":
        raise ProfileNotSupported(
            f"hardware profile '{hardware.name}': libvirt 9.0 does not know watchdog model 'itco'",
            file=hardware.source,
            hint="use i6300esb (or ib700) on this lab",
        )
