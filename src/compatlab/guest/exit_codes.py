"""What a Windows installer's exit code means, and how long to wait when Windows is busy.

Exit codes (Windows Installer's, shared by wusa and pnputil): 0 success; 3010
``ERROR_SUCCESS_REBOOT_REQUIRED`` and 1641 ``ERROR_SUCCESS_REBOOT_INITIATED`` mean success with
a restart to come; 1618 ``ERROR_INSTALL_ALREADY_RUNNING`` means another installation holds the
Windows Installer mutex (often Windows itself, just after a boot): run the same line again after
the waits of :data:`RETRY_1618`. Anything else is a failure; :func:`describe` names the common
ones for the report.

Pure; not run against a real Windows here: the codes are Microsoft's documented ones (Windows
Installer's error codes, wusa's WU_* HRESULTs, pnputil's return values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    # Only a type here: compatlab.installs builds its lines with the guest modules.
    from compatlab.installs import ExitCodes

__all__ = [
    "REBOOT_CODES",
    "RETRY_1618",
    "RETRY_CODES",
    "SUCCESS_CODES",
    "Outcome",
    "RetryPolicy",
    "classify",
    "describe",
]

Outcome = Literal["success", "reboot", "retry", "failure"]

SUCCESS_CODES: Final = (0,)
REBOOT_CODES: Final = (3010, 1641)
RETRY_CODES: Final = (1618,)


@dataclass(frozen=True)
class RetryPolicy:
    """Run again after ``waits[n]`` seconds, at most ``attempts`` runs in all."""

    attempts: int
    waits: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.attempts < 1 or len(self.waits) != self.attempts - 1:
            raise ValueError("a retry policy needs attempts >= 1 and attempts - 1 waits")

    def wait_before(self, attempt: int) -> float | None:
        """Seconds to wait before run number ``attempt`` (1-based); None: give up."""
        if attempt <= 1:
            return 0.0
        if attempt > self.attempts:
            return None
        return self.waits[attempt - 2]


#: 1618: another installation is running. Six runs over about 7.5 minutes -- longer than
#: Windows's own post-boot servicing usually holds the installer, shorter than a boot timeout.
RETRY_1618: Final = RetryPolicy(attempts=6, waits=(15.0, 30.0, 60.0, 120.0, 240.0))


# -- exit codes ------------------------------------------------------------------------------


def _unsigned(code: int) -> int:
    """Exit codes as Windows reports them: HRESULTs (wusa) may arrive negative."""
    return code & 0xFFFFFFFF


def classify(code: int, declared: ExitCodes | None = None) -> Outcome:
    """What an installer's exit code means: ``success``, ``reboot``, ``retry`` or ``failure``.

    ``declared`` is what the product or candidate declared (the catalog's ``exit_codes``);
    its success and reboot codes win. Without it, :data:`SUCCESS_CODES` and
    :data:`REBOOT_CODES` apply (``compatlab.installs.WINDOWS_EXIT_CODES``). 1618 is ``retry``
    unless declared otherwise; the runner retries by :data:`RETRY_1618` and calls a 1618 that
    outlasts it a failure.
    """
    for value in {code, _unsigned(code)}:
        if declared is not None:
            meaning = declared.meaning(value)
            if meaning != "failure":
                return meaning
        elif value in SUCCESS_CODES:
            return "success"
        elif value in REBOOT_CODES:
            return "reboot"
    if _unsigned(code) in RETRY_CODES:
        return "retry"
    return "failure"


_NAMES: Final[Mapping[int, str]] = {
    0: "ERROR_SUCCESS",
    259: "ERROR_NO_MORE_ITEMS (pnputil: no device matched the driver, or a better one is "
    "installed)",
    1602: "ERROR_INSTALL_USEREXIT (the installation was cancelled)",
    1603: "ERROR_INSTALL_FAILURE (a fatal error during installation; see the log)",
    1605: "ERROR_UNKNOWN_PRODUCT (not installed)",
    1618: "ERROR_INSTALL_ALREADY_RUNNING (another installation is in progress)",
    1619: "ERROR_INSTALL_PACKAGE_OPEN_FAILED (the package could not be opened)",
    1620: "ERROR_INSTALL_PACKAGE_INVALID (the package is not a valid Windows Installer package)",
    1622: "ERROR_INSTALL_LOG_FAILURE (the log file could not be opened)",
    1625: "ERROR_INSTALL_PACKAGE_REJECTED (forbidden by system policy)",
    1633: "ERROR_INSTALL_PLATFORM_UNSUPPORTED (not for this processor type)",
    1638: "ERROR_PRODUCT_VERSION (another version of this product is already installed)",
    1641: "ERROR_SUCCESS_REBOOT_INITIATED (success; the installer started a restart)",
    3010: "ERROR_SUCCESS_REBOOT_REQUIRED (success; a restart completes it)",
    0x00240006: "WU_S_ALREADY_INSTALLED (wusa: the update is already installed)",
    0x80240017: "WU_E_NOT_APPLICABLE (wusa: the update does not apply to this system)",
}


def describe(code: int) -> str:
    """``code`` as people read it: ``1603 ERROR_INSTALL_FAILURE (...)``; hex for HRESULTs."""
    value = _unsigned(code)
    shown = f"0x{value:08X}" if value > 0xFFFF else str(value)
    name = _NAMES.get(value)
    return f"{shown} {name}" if name else shown
