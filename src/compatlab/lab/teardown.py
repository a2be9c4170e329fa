"""Taking a domain away: power it off, then undefine it with everything libvirt keeps for it.

Shared by :class:`~compatlab.lab.machine.Machine` (a cell's VM at its end) and the reaper
(what dead runs left behind). Gone, or already off, is never an error here.
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from compatlab.errors import HypervisorError

__all__ = ["UNDEFINE_FLAGS", "destroy_domain", "undefine_domain"]

log = logging.getLogger("compatlab.lab")

# All exist in libvirt 9.0 (TPM since 8.9). Some drivers (test:///) reject some of them.
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_TPM
)
_UNDEFINE_FALLBACK = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


def destroy_domain(dom: Any, *, host: str, name: str) -> bool:
    """Power a domain off if it is on; True when it was. Gone or already off is not an error."""
    for attempt in range(3):
        try:
            code, _reason = dom.state()
            if code == libvirt.VIR_DOMAIN_SHUTOFF:
                return False
            dom.destroy()
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                return False
            # libvirt's advice when QEMU does not die at once ("Device or resource busy"): retry.
            if attempt == 2:
                raise HypervisorError(
                    f"destroying the domain: {exc.get_error_message()}", host=host, domain=name
                ) from exc
    return False


def undefine_domain(dom: Any, *, host: str, name: str) -> None:
    """Undefine with NVRAM, TPM state, managed save, snapshot and checkpoint metadata.

    Falls back to fewer flags where a driver refuses some (test:/// does); gone is not an error.
    """
    for flags in (UNDEFINE_FLAGS, _UNDEFINE_FALLBACK, 0):
        try:
            dom.undefineFlags(flags)
            return
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                return
            if code in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT) and flags:
                log.debug("undefine flags %#x refused for %s: %s", flags, name, exc)
                continue
            raise HypervisorError(
                f"undefining the domain: {exc.get_error_message()}", host=host, domain=name
            ) from exc
