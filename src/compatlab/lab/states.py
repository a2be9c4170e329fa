"""A domain's state in words: ``virDomainGetState``'s numbers as libvirt-domain.h names them.

Pure (no libvirt call): :class:`~compatlab.lab.machine.Machine` asks libvirt and this module
says what the answer means. Moved out of ``lab/machine.py`` to keep that module about the
machine's life.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DomainState"]


def _words(text: str) -> list[str]:
    """Space-separated names, listed in libvirt's numbering (one line beats one per line)."""
    return text.split()


# virDomainState numbers -> (state, reasons by reason number), as in libvirt-domain.h.
_STATES: dict[int, tuple[str, list[str]]] = {
    0: ("nostate", ["unknown"]),
    1: (
        "running",
        _words(
            "unknown booted migrated restored from_snapshot unpaused migration_canceled "
            "save_canceled wakeup crashed postcopy postcopy_failed"
        ),
    ),
    2: ("blocked", ["unknown"]),
    3: (
        "paused",
        _words(
            "unknown user migration save dump ioerror watchdog from_snapshot shutting_down "
            "snapshot crashed starting_up postcopy postcopy_failed api_error"
        ),
    ),
    4: ("shutdown", ["unknown", "user"]),
    5: (
        "shutoff",
        _words("unknown shutdown destroyed crashed migrated saved failed from_snapshot daemon"),
    ),
    6: ("crashed", ["unknown", "panicked"]),
    7: ("pmsuspended", ["unknown"]),
}


@dataclass(frozen=True)
class DomainState:
    """``virDomainGetState`` in words: ``state`` (running, paused, crashed, ...) and ``reason``."""

    state: str
    reason: str
    code: int
    reason_code: int

    @classmethod
    def from_libvirt(cls, code: int, reason_code: int) -> DomainState:
        name, reasons = _STATES.get(code, (f"state-{code}", []))
        reason = reasons[reason_code] if 0 <= reason_code < len(reasons) else "unknown"
        return cls(name, reason, code, reason_code)

    @property
    def is_active(self) -> bool:
        """A QEMU process exists (anything but shut off)."""
        return self.state not in ("shutoff", "nostate")

    @property
    def is_crashed(self) -> bool:
        """Crashed, or paused because of a crash (``on_crash=preserve``)."""
        return self.state == "crashed" or (self.state == "paused" and self.reason == "crashed")
