"""One cell's virtual machine: define, start, power-cycle, look at it, and leave nothing behind.

A :class:`Machine` is made from a rendered domain XML string (``lab/domain.py`` renders it) and
the cell's storage folder (``lab/storage.py`` fills it). It is a context manager: on exit --
normal, exception or Ctrl-C -- it destroys and undefines the domain (removing NVRAM, TPM state,
managed save, snapshot and checkpoint metadata) and deletes the storage folder. What a SIGKILL
leaves behind is the reaper's job (``lab/reaper.py``).

Measured here (libvirt 9.0, QEMU 7.2, TCG), which is why :meth:`Machine.power_cycle` is
destroy + create: after a panic with ``on_crash=preserve`` the domain is CRASHED/PANICKED with
paused vCPUs; ``virDomainReset`` from that state returns success and emits REBOOT but leaves the
domain paused (state PAUSED/CRASHED) -- the guest does not run again until it is also resumed,
and reset + resume emits two REBOOT events for one restart, which would count as two resets in
a boot-loop detector. destroy + create is a cold boot of a fresh QEMU process with exactly one
``stopped``/``destroyed`` and one ``started``/``booted`` event. It costs more: destroying a
crashed TCG guest took 1.4-2.1 s and creating it 0.7-1.1 s here (2.8 s in the lab test), against
35 ms for reset + resume; a clean event count is worth it.

Screenshots: QEMU 7.2 under libvirt 9.0 answers ``virDomainScreenshot`` with ``image/png``;
older QEMUs answer PPM, which is converted to PNG (``lab/console.py``) so the report can show it.

The serial console: a domain whose XML has a ``<serial type='pipe'>`` (the template's) gets a
:class:`~compatlab.lab.console.SerialConsole`, opened before the domain first starts -- so the
guest's first byte is kept -- and closed after the domain is destroyed, by :meth:`Machine.close`:
its thread never outlives the Machine.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import libvirt

from compatlab.errors import HypervisorError, LabError, SaveImageError, StorageError
from compatlab.lab.connection import Hypervisor, libvirt_errors
from compatlab.lab.console import (
    Screenshot,
    SerialConsole,
    console_pipe,
    grab_screen,
    ppm_to_png,
    save_screen,
)
from compatlab.lab.events import DomainWatch
from compatlab.lab.saveimage import read_header, restore_definition
from compatlab.lab.states import DomainState
from compatlab.lab.teardown import UNDEFINE_FLAGS, destroy_domain, undefine_domain
from compatlab.model import Event
from compatlab.signals import stop_signals_deferred

__all__ = [
    "CDROM_BUS",
    "CDROM_TARGET",
    "QEMU_LOG_DIR",
    "UNDEFINE_FLAGS",
    "DomainState",
    "Machine",
    "Screenshot",
    "destroy_domain",
    "ppm_to_png",
    "undefine_domain",
]

log = logging.getLogger("compatlab.lab")

# The domain XML declares one empty SATA cdrom with this target; media are swapped into it.
CDROM_TARGET = "sdz"
CDROM_BUS = "sata"
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")


class Machine:
    """One cell's domain on one hypervisor. Use as ``with Machine(hv, xml, folder) as m:``.

    ``storage_dir`` is the cell's folder (overlay, NVRAM, ISOs, serial console); it is deleted
    on exit. ``epoch`` is the cell's t=0 on the ``time.monotonic()`` clock (default: now).
    """

    def __init__(
        self,
        hypervisor: Hypervisor,
        xml: str,
        storage_dir: Path | None = None,
        *,
        epoch: float | None = None,
        log_dir: Path = QEMU_LOG_DIR,
    ) -> None:
        self.hypervisor = hypervisor
        self.xml = xml
        self.storage_dir = storage_dir
        self.name = _domain_name(xml, hypervisor.host)
        self.log_path = log_dir / f"{self.name}.log"
        self.watch: DomainWatch = hypervisor.events.watch(self.name, epoch=epoch)
        pipe = console_pipe(xml)
        #: The serial console's reader; None without a FIFO console, or on a remote hypervisor.
        self.console = (
            SerialConsole(pipe, self.watch) if pipe is not None and hypervisor.is_local else None
        )
        self._dom: Any = None
        self._dom_generation = 0  # hypervisor.reconnects when _dom was looked up
        self._log_offset: int | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Machine({self.name!r} on {self.hypervisor.uri})"

    # context manager ------------------------------------------------------------------------

    def __enter__(self) -> Machine:
        try:
            self.define()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    # lifecycle ------------------------------------------------------------------------------

    @property
    def domain(self) -> Any:
        """The ``virDomain`` (escape hatch for calls this class does not wrap).

        A handle belongs to one connection: after a reconnect (libvirtd restarted) it is looked
        up again, by UUID, on the new connection.
        """
        if self._dom is None:
            raise HypervisorError("domain is not defined", host=self.host, domain=self.name)
        with self._call("finding the domain again after a reconnect"):
            conn = self.hypervisor.connection
            if self._dom_generation != self.hypervisor.reconnects:
                self._dom = conn.lookupByUUIDString(self._dom.UUIDString())
                self._dom_generation = self.hypervisor.reconnects
        return self._dom

    @property
    def host(self) -> str:
        return self.hypervisor.host

    def define(self) -> None:
        """Define the domain; refuses to overwrite an existing domain of the same name."""
        if self._dom is not None:
            return
        if self.hypervisor.lookup(self.name) is not None:
            raise HypervisorError(
                "a domain of this name already exists (left over? run `compatlab gc`)",
                host=self.host,
                domain=self.name,
            )
        with self._call("defining the domain"):
            self._dom = self.hypervisor.connection.defineXML(self.xml)
        self._dom_generation = self.hypervisor.reconnects

    def start(self) -> None:
        """Define if needed, then boot."""
        self.define()
        if self._log_offset is None:
            self._log_offset = self._log_size()
        self._create("starting the domain")

    def save(self, path: Path) -> None:
        """Save the running guest's memory to ``path`` (``virDomainSave``): the domain stops,
        its disk flushed, and the file restores it where it was. For a cached layer's builder."""
        with self._call("saving the domain's memory state"):
            self.domain.save(str(path))

    def restore_xml(self, image: Path) -> str:
        """The definition to restore the save image ``image`` with: the saved virtual hardware
        with this domain's identity, files and metadata (:func:`~compatlab.lab.saveimage.
        restore_definition`). Defines the domain first. Raises HypervisorError, or
        SaveImageError when the image or its definition cannot be used."""
        self.define()
        with self._call("reading the domain's definition"):
            mine = self.domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        try:
            return restore_definition(read_header(image).xml, mine)
        except SaveImageError as exc:
            raise SaveImageError(exc.message, host=self.host, domain=self.name) from exc

    def restore(self, image: Path, xml: str) -> None:
        """Start the domain from the save image ``image`` instead of booting it, with ``xml``
        (:meth:`restore_xml`). ``image`` must carry this domain's name and UUID
        (:func:`~compatlab.lab.saveimage.renamed_copy`); libvirt checks ``xml`` is the saved
        virtual hardware. Raises HypervisorError: libvirt refused or failed the restore."""
        if self._log_offset is None:
            self._log_offset = self._log_size()
        if self.console is not None:
            self.console.open()
        with self._call(f"restoring the domain from {image.name}"):
            self.hypervisor.connection.restoreFlags(
                str(image), xml, libvirt.VIR_DOMAIN_SAVE_RUNNING
            )

    def power_cycle(self) -> None:
        """Cold restart: destroy (if running, crashed or paused) and create again.

        Works from the CRASHED/paused state ``on_crash=preserve`` leaves (see module docstring
        for why this is not ``virDomainReset``).
        """
        self.destroy()
        self._create("starting the domain again")

    def reset(self) -> None:
        """Hard reset, like the reset button. Does not restart a crashed (paused) guest."""
        with self._call("resetting the domain"):
            self.domain.reset(0)

    def restart_after_crash(self) -> None:
        """Warm-restart a guest that ``on_crash=preserve`` left crashed (paused).

        What a bugchecked machine does by itself: reset, then run. reset() alone leaves the
        crashed guest paused, so resume() follows (measured: 35 ms, against 2 s for a destroy
        and create). libvirt reports the one restart as two REBOOT events; the boot watcher
        counts them once. Falls back to a cold power cycle where the warm one fails.
        """
        try:
            self.reset()
            if self.state().state in ("paused", "crashed"):
                self.resume()
        except HypervisorError:
            self.power_cycle()

    def reboot(self) -> None:
        """Ask the guest to reboot (ACPI or agent; the guest must cooperate)."""
        with self._call("rebooting the domain"):
            self.domain.reboot(0)

    def shutdown(self) -> None:
        """Ask the guest to power off (the guest must cooperate)."""
        with self._call("shutting the domain down"):
            self.domain.shutdown()

    def destroy(self) -> None:
        """Pull the plug. Nothing to do when it is already off."""
        if not self.state().is_active:
            return
        with self._call("destroying the domain"):
            try:
                self.domain.destroy()
            except libvirt.libvirtError as exc:
                # It stopped by itself between state() and destroy(): that is what we wanted.
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

    def suspend(self) -> None:
        """Pause the vCPUs."""
        with self._call("suspending the domain"):
            self.domain.suspend()

    def resume(self) -> None:
        """Resume paused vCPUs."""
        with self._call("resuming the domain"):
            self.domain.resume()

    def state(self) -> DomainState:
        """The domain's state and reason, e.g. ``crashed/panicked``."""
        with self._call("reading the domain state"):
            code, reason = self.domain.state()
        return DomainState.from_libvirt(int(code), int(reason))

    def wait(
        self, kinds: Collection[str] | None = None, timeout: float | None = None
    ) -> Event | None:
        """Shorthand for :meth:`DomainWatch.wait` on this domain's events."""
        return self.watch.wait(kinds, timeout)

    # evidence -------------------------------------------------------------------------------

    def screenshot(self, path: Path) -> Screenshot:
        """Write the console to ``path`` as PNG (PPM from older QEMUs is converted)."""
        with self._call("taking a screenshot"):
            data, mime = grab_screen(self.hypervisor.connection, self.domain)
        try:
            return save_screen(data, mime, path)
        except OSError as exc:
            raise StorageError(
                f"writing screenshot {path}: {exc}", host=self.host, domain=self.name
            ) from exc

    def insert_cdrom(self, iso: Path) -> None:
        """Put ``iso`` into the domain's empty cdrom drive (target ``sdz``), live and in config."""
        self._change_media(iso)

    def eject_cdrom(self) -> None:
        """Empty the cdrom drive, live and in config."""
        self._change_media(None)

    def cdrom_source(self) -> Path | None:
        """What the cdrom drive holds now, per the live XML."""
        with self._call("reading the domain XML"):
            desc = ET.fromstring(self.domain.XMLDesc(0))
        disk = _cdrom_element(desc)
        source = disk.find("source") if disk is not None else None
        file = source.get("file") if source is not None else None
        return Path(file) if file else None

    def domain_log(self) -> list[str]:
        """Lines libvirt appended to ``/var/log/libvirt/qemu/<name>.log`` since the first start.

        Only for a local hypervisor: on a remote host the log is on that host.
        """
        if not self.hypervisor.is_local:
            raise HypervisorError(
                "the domain log is on the remote host", host=self.host, domain=self.name
            )
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset or 0)
                data = handle.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HypervisorError(
                f"reading {self.log_path}: {exc}", host=self.host, domain=self.name
            ) from exc
        return data.decode("utf-8", errors="replace").splitlines()

    # cleanup --------------------------------------------------------------------------------

    def close(self, *, raise_errors: bool = True) -> None:
        """Destroy, undefine (NVRAM, TPM, snapshots...), stop watching, delete the storage folder.

        Every step is tried even when an earlier one fails; Ctrl-C during cleanup is held back
        until cleanup is done. Failures are raised together as one LabError when
        ``raise_errors`` (not while another exception is already on its way).
        """
        if self._closed:
            return
        self._closed = True
        failures: list[LabError] = []
        with stop_signals_deferred():
            if self._dom is not None:
                try:
                    dom = self.domain
                except LabError:
                    dom = self._dom  # cannot reconnect: the steps below fail and say so
                for step in (destroy_domain, undefine_domain):
                    try:
                        step(dom, host=self.host, name=self.name)
                    except LabError as exc:
                        failures.append(exc)
                self._dom = None
            if self.console is not None:
                self.console.close()  # QEMU is gone: what it wrote last is in the log now
            if self.hypervisor.is_open:
                self.hypervisor.events.unwatch(self.name)
            if self.storage_dir is not None:
                try:
                    _remove_tree(self.storage_dir)
                except OSError as exc:
                    failures.append(
                        StorageError(
                            f"removing {self.storage_dir}: {exc}", host=self.host, domain=self.name
                        )
                    )
        for failure in failures:
            log.error("cleaning up %s: %s", self.name, failure)
        if failures and raise_errors:
            first = failures[0]
            raise type(first)(
                "; ".join(f.message for f in failures), host=self.host, domain=self.name
            ) from first

    # internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            with libvirt_errors(what, host=self.host, domain=self.name):
                yield
        except HypervisorError as exc:
            if exc.domain is not None:
                raise
            # The connection failed under us (reconnect gave up): say which domain was at stake.
            raise HypervisorError(
                f"{what}: {exc.message}", host=exc.host or self.host, domain=self.name
            ) from (exc.__cause__ or exc)

    def _create(self, what: str) -> None:
        # The console reads before QEMU writes: the guest's first byte is kept.
        if self.console is not None:
            self.console.open()
        with self._call(what):
            self.domain.create()

    def _change_media(self, iso: Path | None) -> None:
        # Start from the drive's own <disk> element: libvirt refuses an update whose address
        # differs, and from the name 'sdz' alone it would derive another one than the template's.
        active = self.state().is_active
        with self._call("reading the domain XML"):
            desc = ET.fromstring(
                self.domain.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
        disk = _cdrom_element(desc)
        if disk is None:
            raise HypervisorError(
                f"the domain has no cdrom drive with target '{CDROM_TARGET}'",
                host=self.host,
                domain=self.name,
            )
        for child in list(disk):
            if child.tag in ("source", "backingStore", "alias"):
                disk.remove(child)
        if iso is not None:
            disk.insert(0, ET.Element("source", file=str(iso)))
        disk.set("type", "file")
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        # Live *and* config, so the media survives a power cycle (destroy + create).
        if active:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        with self._call("ejecting the cdrom" if iso is None else f"inserting {iso.name}"):
            self.domain.updateDeviceFlags(ET.tostring(disk, encoding="unicode"), flags)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size if self.hypervisor.is_local else 0
        except OSError:
            return 0


def _cdrom_element(desc: ET.Element) -> ET.Element | None:
    for disk in desc.iterfind("devices/disk[@device='cdrom']"):
        target = disk.find("target")
        if target is not None and target.get("dev") == CDROM_TARGET:
            return disk
    return None


def _domain_name(xml: str, host: str) -> str:
    try:
        name = ET.fromstring(xml).findtext("name")
    except ET.ParseError as exc:
        raise HypervisorError(f"domain XML does not parse: {exc}", host=host) from exc
    if not name:
        raise HypervisorError("domain XML has no <name>", host=host)
    return name.strip()


def _remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
