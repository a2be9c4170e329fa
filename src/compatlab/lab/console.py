"""A guest's consoles, as evidence: the serial console kept in the cell's serial log, and the
screen as a PNG.

The serial console. The domain's serial port is a FIFO pair (``<serial type='pipe'>``, see
``configs/templates/domain.xml.j2``): QEMU writes the guest's output to ``<base>.out`` and reads
its input from ``<base>.in``; a :class:`SerialConsole` thread of the runner reads ``<base>.out``
and appends what comes to ``<base>.log`` -- the cell's ``serial.log``, which
:class:`~compatlab.lab.serial.SerialWatch` tails and ``CellEvidence`` reads and keeps.

Why not ``<serial type='file'>``: libvirt 9.0, with its default ``stdio_handler = "logd"``, opens
a file chardev through virtlogd (``qemuProcessPrepareHostBackendChardevFileHelper`` in
``src/qemu/qemu_process.c``) and hands QEMU a pipe to it. Measured on the lab's private
virtlogd: it holds ``serial.log`` open (mode 0600), rotates it at 2 MiB (``serial.log.0``..
``.2``, older deleted), and when it dies the running guest's console is gone. Only ``file``
chardevs (and any chardev with a ``<log file=...>``) go through virtlogd; ``pipe``, ``pty`` and
``unix`` do not. Why not those two: a listening ``unix`` socket is bound by libvirt at the path
given, and ``sun_path`` holds 107 bytes -- the reliability runs' cell folders make it 134; a
``pty`` is read through ``virDomainOpenConsole``, a stream of the libvirtd connection (gone with
a libvirtd restart), and QEMU 7.2's pty backend discards what the guest writes while nobody holds
the pty open (``char_pty_chr_write``; QEMU 8.2 changed that). A FIFO has no path limit, and QEMU
holds it by itself, with or without libvirtd and virtlogd.

No byte is lost, none is waited for. The console is opened (FIFOs made, read end open) before
the domain starts; QEMU opens both FIFOs read-write, so what the guest writes before the thread
first reads waits in the pipe's buffer, and a full pipe holds the guest's UART back (QEMU retries
a byte when the pipe has room again) instead of dropping it -- what virtlogd's pipe did too. The
runner's end is read-write as well, so a QEMU restart (a power cycle) is no end of file: the next
QEMU writes into the same pipe. The thread must therefore read for as long as QEMU runs:
:meth:`SerialConsole.close` comes after the domain is destroyed (``Machine.close``), and it never
stops reading because the log cannot be written (it says so on the timeline and discards).

Disk is bounded: the log keeps its first :data:`HEAD_BYTES` and its newest :data:`TAIL_BYTES`.
Bytes in between are dropped from the storage file by punching a hole in it (the file's size,
and so every offset SerialWatch and ``bugcheck()`` use, stays that of the whole console), and
:func:`keep_serial_log` copies head, a marker line saying what was dropped, and tail into the
report. A panic is the newest output, so it is always kept. Memory is one read of
:data:`_READ_CHUNK` bytes.

The console is local: the FIFOs are made on this host, in the cell folder. A remote hypervisor
gets no console (QEMU there would not find the FIFOs and fail to start).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import select
import stat
import struct
import threading
import time
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import libvirt

from compatlab.errors import StorageError
from compatlab.lab.events import DomainWatch

__all__ = [
    "HEAD_BYTES",
    "TAIL_BYTES",
    "Screenshot",
    "SerialConsole",
    "console_pipe",
    "grab_screen",
    "keep_serial_log",
    "png_size",
    "ppm_to_png",
    "save_screen",
]

log = logging.getLogger("compatlab.lab")

MiB = 1024 * 1024
HEAD_BYTES = 64 * MiB  # the first bytes of the console, always kept: the first boots
TAIL_BYTES = 192 * MiB  # the newest bytes, always kept: the last boots and the crash
_PUNCH_STEP = 8 * MiB  # drop the middle in steps at least this big (one syscall each)
_BLOCK = 4096  # holes are punched in whole blocks
_READ_CHUNK = 64 * 1024  # one read of the FIFO: its whole buffer
_COPY_CHUNK = MiB
_POLL = 0.1  # seconds between two looks at the stop flag while the guest is silent
_GATHER = 0.02  # seconds to let a trickle of output gather before the next read
_RETRY = 1.0  # seconds between two tries to write a log that failed
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def console_pipe(xml: str | ET.Element) -> Path | None:
    """The base path of the domain's FIFO serial console (``<serial type='pipe'>``), if any."""
    root = ET.fromstring(xml) if isinstance(xml, str) else xml
    source = root.find("devices/serial[@type='pipe']/source")
    path = source.get("path") if source is not None else None
    return Path(path) if path else None


class SerialConsole:
    """Reads the guest's serial output from ``<pipe>.out`` and appends it to ``log`` (default
    ``<pipe>.log``), on one daemon thread, from :meth:`open` to :meth:`close`.

    What goes wrong is said on ``watch``'s timeline, once each, as ``source="serial"`` events:
    ``console_lost`` (the log cannot be written, or was removed: output is discarded from then
    on, so the guest never stalls) and ``console_back`` (writing works again; the log has a
    marker line where output was lost). The thread never raises.
    """

    def __init__(
        self,
        pipe: Path,
        watch: DomainWatch,
        *,
        log: Path | None = None,
        head: int = HEAD_BYTES,
        tail: int = TAIL_BYTES,
        punch_step: int = _PUNCH_STEP,
    ) -> None:
        self.pipe = pipe
        self.log = log or _suffixed(pipe, ".log")
        self.watch = watch
        self.head, self.tail, self.punch_step = head, tail, punch_step
        #: Bytes the guest wrote that the log has, and that were discarded.
        self.written = 0
        self.discarded = 0
        self._fifo: int | None = None
        self._log: int | None = None
        self._punched = 0  # the log has a hole up to here (from the head on)
        self._can_punch = True
        self._lost: str | None = None  # why output is being discarded, while it is
        self._lost_at = 0.0
        self._last_error: str | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SerialConsole({str(self.pipe)!r} -> {self.log.name}, {self.written} bytes)"

    @property
    def fifos(self) -> tuple[Path, Path]:
        """``(<pipe>.in, <pipe>.out)``: what QEMU opens."""
        return (_suffixed(self.pipe, ".in"), _suffixed(self.pipe, ".out"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def open(self) -> None:
        """Make the FIFOs, open their read end and the log, start reading. Idempotent; a closed
        console stays closed. Raises :class:`StorageError` when the cell folder refuses."""
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            try:
                for fifo in self.fifos:
                    _make_fifo(fifo)
                # Read-write: never an end of file between two QEMUs, and never blocks to open.
                self._fifo = os.open(self.fifos[1], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                self._log = os.open(
                    self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            except OSError as exc:
                self._close_fds()
                raise StorageError(
                    f"cannot open the serial console {self.pipe}: {exc}", domain=self.watch.name
                ) from exc
            self._thread = threading.Thread(
                target=self._loop, name=f"compatlab-console-{self.watch.name}", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop reading, keep what is still in the pipe, close. Safe to call twice, or before
        :meth:`open`; call it after QEMU is gone, or QEMU's next bytes wait for nobody."""
        self._stopped.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("the serial console of %s did not stop", self.watch.name)
                return  # its descriptors are the thread's still
        with self._lock:
            self._close_fds()

    # the thread: never raises -----------------------------------------------------------------

    def _loop(self) -> None:
        fifo = self._fifo  # open() set it before starting the thread; close() waits for it
        while not self._stopped.is_set():
            try:
                got = self._pump()
                if not got and fifo is not None:
                    select.select([fifo], [], [], _POLL)
                elif got < _READ_CHUNK // 2:
                    # QEMU writes the UART's bytes one write() each: reading each as it comes
                    # costs a wakeup per byte (a quarter of a core at 180 kB/s). Let a few ms
                    # gather (the pipe holds 64 KiB: 0.3 s of a flooding UART under TCG).
                    self._stopped.wait(_GATHER)
                self._last_error = None
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_error:
                    log.exception("reading the serial console of %s failed", self.watch.name)
                    self._last_error = text
                self._stopped.wait(_POLL)
        try:
            for _ in range(64):  # what QEMU wrote before it went (a pipe holds 64 KiB)
                if not self._pump():
                    break
        except Exception:
            log.exception("draining the serial console of %s failed", self.watch.name)

    def _pump(self) -> int:
        """Move one read's worth from the FIFO to the log; how many bytes (0: it was empty)."""
        assert self._fifo is not None
        try:
            data = os.read(self._fifo, _READ_CHUNK)
        except BlockingIOError:
            return 0
        if data:
            self._append(data)
        return len(data)

    def _append(self, data: bytes) -> None:
        if self._lost is not None and time.monotonic() - self._lost_at < _RETRY:
            self.discarded += len(data)
            return
        try:
            if self._lost is not None:
                self._reopen_if_removed()
            fd = self._log
            if fd is None:
                raise FileNotFoundError(errno.ENOENT, "the serial log is not open", str(self.log))
            if self._lost is not None:
                _write_all(fd, _lost_marker(self.discarded, self._lost))
            _write_all(fd, data)
            status = os.fstat(fd)
            if status.st_nlink == 0:
                raise FileNotFoundError(errno.ENOENT, "removed from the cell folder", str(self.log))
        except OSError as exc:
            self.discarded += len(data)
            self._lose(exc)
            return
        self.written += len(data)
        if self._lost is not None:
            self.watch.record(
                "serial",
                "console_back",
                f"the serial log is written again; {self.discarded} bytes of console output "
                "were lost",
                lost=str(self.discarded),
            )
            self._lost = None
        self._bound(status.st_size)

    def _reopen_if_removed(self) -> None:
        if self._log is not None and os.fstat(self._log).st_nlink > 0:
            return
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self._log is not None:
            os.close(self._log)
        self._log, self._punched = fd, 0

    def _lose(self, exc: OSError) -> None:
        why = exc.strerror or str(exc)
        self._lost_at = time.monotonic()
        if self._lost is None:
            self._lost = why
            log.warning("serial console of %s: %s: %s", self.watch.name, self.log, why)
            self.watch.record(
                "serial",
                "console_lost",
                f"the serial console is no longer kept: {self.log.name}: {why}; its output is "
                "discarded (the guest runs on)",
                path=str(self.log),
            )

    def _bound(self, size: int) -> None:
        """Drop the middle of the log (punch a hole) so that it keeps head and tail only."""
        if not self._can_punch or self._log is None:
            return
        start = max(self._punched, -(-self.head // _BLOCK) * _BLOCK)
        end = (size - self.tail) // _BLOCK * _BLOCK
        if end - start < self.punch_step:
            return
        try:
            _punch_hole(self._log, start, end - start)
        except OSError as exc:
            self._can_punch = False
            log.warning(
                "cannot drop the middle of %s (%s): its storage copy is not bounded, the "
                "report's is",
                self.log,
                exc.strerror or exc,
            )
            return
        self._punched = end

    def _close_fds(self) -> None:
        for fd in (self._fifo, self._log):
            if fd is not None:
                os.close(fd)
        self._fifo = self._log = None


def keep_serial_log(
    source: Path, target: Path, *, head: int = HEAD_BYTES, tail: int = TAIL_BYTES
) -> int:
    """Copy the serial log ``source`` to ``target``: whole when it has at most ``head + tail``
    bytes, else its first ``head`` bytes, a marker line that says how many bytes were dropped
    there, and its last ``tail`` bytes. Reads and writes a chunk at a time. Returns the bytes
    written. Raises OSError."""
    with source.open("rb") as src, target.open("wb") as dst:
        size = os.fstat(src.fileno()).st_size
        if size <= head + tail:
            return _copy(src.fileno(), dst, 0, size)
        dropped = size - head - tail
        marker = (
            f"\n[compatlab: {dropped} bytes of console output dropped here (bytes {head} to "
            f"{size - tail} of {size}): the first {head} and the last {tail} are kept]\n"
        ).encode()
        done = _copy(src.fileno(), dst, 0, head)
        dst.write(marker)
        return done + len(marker) + _copy(src.fileno(), dst, size - tail, tail)


def _copy(fd: int, dst: BinaryIO, start: int, length: int) -> int:
    write = dst.write
    done = 0
    while done < length:
        chunk = os.pread(fd, min(_COPY_CHUNK, length - done), start + done)
        if not chunk:
            break
        write(chunk)
        done += len(chunk)
    return done


def _suffixed(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _make_fifo(path: Path) -> None:
    try:
        os.mkfifo(path, 0o600)  # libvirt hands it to the qemu user at start (DAC relabel)
    except FileExistsError:
        if not stat.S_ISFIFO(path.lstat().st_mode):
            raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _lost_marker(count: int, why: str) -> bytes:
    return f"\n[compatlab: {count} bytes of console output lost here: {why}]\n".encode()


@functools.cache
def _fallocate() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "fallocate64", None) or libc.fallocate
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of ``fd`` from ``offset`` (they read as zeros; the size stays)."""
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _fallocate()(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


# -- the screen -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Screenshot:
    """A console picture written to ``path``: always PNG when libvirt gave PNG or PPM."""

    path: Path
    mime: str  # of the file written
    source_mime: str  # what libvirt returned
    width: int
    height: int


def grab_screen(connection: Any, domain: Any) -> tuple[bytes, str]:
    """The screen of ``domain`` as libvirt gives it (``virDomainScreenshot`` over a stream of
    ``connection``): the image and its MIME type. Raises ``libvirt.libvirtError``."""
    chunks: list[bytes] = []

    def sink(_stream: Any, data: bytes, _opaque: object) -> int:
        chunks.append(data)
        return len(data)

    stream = connection.newStream(0)
    try:
        mime = str(domain.screenshot(stream, 0))
        stream.recvAll(sink, None)
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise
    return b"".join(chunks), mime


def save_screen(data: bytes, mime: str, path: Path) -> Screenshot:
    """Write a screen :func:`grab_screen` got to ``path``, as PNG when it is PNG or PPM.
    Raises OSError."""
    out_mime = mime
    if mime in ("image/x-portable-pixmap", "image/x-portable-anymap"):
        data, out_mime = ppm_to_png(data), "image/png"
    width, height = png_size(data) if out_mime == "image/png" else (0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Screenshot(path=path, mime=out_mime, source_mime=mime, width=width, height=height)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def _ppm_tokens(data: bytes, count: int) -> tuple[list[bytes], int]:
    """The first ``count`` header tokens of a PNM file and where the pixels start."""
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < count:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ValueError("truncated PPM header")
        tokens.append(data[start:pos])
    return tokens, pos + 1  # exactly one whitespace byte separates header and pixels


def ppm_to_png(data: bytes) -> bytes:
    """Convert a binary PPM (P6, 8- or 16-bit) to an RGB PNG, with only zlib."""
    tokens, start = _ppm_tokens(data, 4)
    if tokens[0] != b"P6":
        raise ValueError(f"not a binary PPM (magic {tokens[0]!r})")
    width, height, maxval = (int(t) for t in tokens[1:])
    if not (0 < maxval < 65536) or width <= 0 or height <= 0:
        raise ValueError("bad PPM dimensions")
    sample = 1 if maxval < 256 else 2
    stride = width * 3 * sample
    pixels = data[start : start + stride * height]
    if len(pixels) != stride * height:
        raise ValueError("truncated PPM pixels")
    if sample == 2:
        values = struct.unpack(f">{width * 3 * height}H", pixels)
        pixels = bytes(v * 255 // maxval for v in values)
        stride = width * 3
    elif maxval != 255:
        pixels = bytes(v * 255 // maxval for v in pixels)
    raw = b"".join(b"\x00" + pixels[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of a PNG; ``(0, 0)`` for anything else."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return (0, 0)
    width, height = struct.unpack(">II", data[16:24])
    return (int(width), int(height))
