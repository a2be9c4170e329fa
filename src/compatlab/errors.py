"""One exception tree for compatlab.

The most important distinction in the lab is *who failed*: the user's input, the lab, or the
update under test. The first two are exceptions, drawn here; the third is never an exception --
a crashed guest is an observation, recorded on a timeline and turned into a verdict.

::

    CompatlabError
     ├── InputError(file, line, column, hint)     bad YAML: nothing may be started
     │    ├── MatrixError                         matrix/*.yaml
     │    ├── CatalogError                        images/, configs/hardware, configs/products
     │    └── PolicyError                         a rollout policy (configs/rollout.yaml)
     ├── LabError(host, domain)                   the lab failed, not the update -> infra_error
     │    ├── HypervisorError                     libvirt unreachable, API call failed
     │    ├── ImageError                          golden image missing or unreadable
     │    └── StorageError                        overlay / ISO / NVRAM creation failed, disk full
     │         └── SaveImageError                 a cached layer's memory state unusable
     └── GuestError(channel)                      a channel into the guest failed
          ├── GuestTimeout                        no answer within the time given
          └── GuestUnreachable                    the channel is not there at all

Outside exceptions (``libvirt.libvirtError``, ``requests``/``winrm`` errors, ``OSError``) are
mapped to these at the module that calls the outside library, with ``raise ... from exc``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CatalogError",
    "CompatlabError",
    "GuestError",
    "GuestTimeout",
    "GuestUnreachable",
    "HypervisorError",
    "ImageError",
    "InputError",
    "LabError",
    "MatrixError",
    "PolicyError",
    "SaveImageError",
    "StorageError",
]


class CompatlabError(Exception):
    """Base of every error compatlab raises on purpose."""


class InputError(CompatlabError):
    """A user's file is wrong. Carries where, so the message can be ``file:line:col: ...``.

    ``line`` and ``column`` are 1-based; 0 means "the file as a whole".
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | str,
        line: int = 0,
        column: int = 0,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = Path(file)
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(str(self))

    @property
    def location(self) -> str:
        if self.line and self.column:
            return f"{self.file}:{self.line}:{self.column}"
        if self.line:
            return f"{self.file}:{self.line}"
        return str(self.file)

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class MatrixError(InputError):
    """A matrix file is malformed or names something that does not exist."""


class CatalogError(InputError):
    """An image, hardware profile or product definition is malformed."""


class PolicyError(InputError):
    """A rollout policy is malformed, or asks for what the run did not record."""


class LabError(CompatlabError):
    """The lab failed. Never the update's fault: the cell is retried, then ``infra_error``."""

    def __init__(self, message: str, *, host: str | None = None, domain: str | None = None):
        self.message = message
        self.host = host
        self.domain = domain
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (
                f"host {self.host}" if self.host else "",
                f"domain {self.domain}" if self.domain else "",
            )
            if part
        )
        return f"{self.message} [{where}]" if where else self.message


class HypervisorError(LabError):
    """libvirt is unreachable, or one of its calls failed."""


class ImageError(LabError):
    """A golden image (disk, kernel, initrd) is missing or unreadable."""


class StorageError(LabError):
    """A cell's overlay disk, payload ISO or firmware state could not be made."""


class SaveImageError(StorageError):
    """A cached layer's saved memory state that cannot be read, renamed or restored as it is:
    the layer is built again (never the cell's failure)."""


class RunStopped(LabError):
    """The run is stopping (Ctrl-C, SIGTERM, ``-x``) while this cell runs on another thread of
    the runner: the cell's VM is torn down and nothing is decided about the candidate."""


class GuestError(CompatlabError):
    """A channel into a running guest failed (not the guest's verdict: that is observed)."""

    def __init__(self, message: str, *, channel: str, domain: str | None = None) -> None:
        self.message = message
        self.channel = channel
        self.domain = domain
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.channel} channel" + (f" to {self.domain}" if self.domain else "")
        return f"{self.message} [{where}]"


class GuestTimeout(GuestError):
    """The guest did not answer within the time given."""


class GuestUnreachable(GuestError):
    """The channel is not there: no agent socket, connection refused, domain not running."""
