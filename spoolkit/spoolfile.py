"""The spool directory on disk: writing job files the way uWSGI reads them.

The kit writes spool files itself, with uWSGI's own protocol (see
``SpoolDirectory.write``), instead of calling ``uwsgi.spool()``, so that the
file can be written from any process (a web worker, the housekeeping mule),
with the kit's envelope, and with every spooler woken. Spool files are not fsynced: the store row,
committed first with ``synchronous=FULL``, is the durable record, and the
housekeeper writes a lost or torn file again from it. The format is uWSGI's: a 4-byte header
(modifier1 17, little-endian packet size, modifier2 0), the packet of
``uint16 length + bytes`` keys and values, then the body.

Rules that come from how uWSGI treats these files (see
shared/UWSGI-SPOOLER-NOTES.md):

* only the spooler running a job may delete its file, by returning
  ``SPOOL_OK``: uWSGI exits the spooler if that unlink fails;
* the spooler must never open the file it is running (closing any
  descriptor of it drops the spooler's lock), so the kit only ``utime()``\\ s
  and hard-links files by path;
* a file's mtime is its ``at``: uWSGI skips files whose mtime is in the future.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import SpoolWriteError

log = logging.getLogger("spoolkit.spool")

SPOOL_PREFIX = "uwsgi_spoolfile_on_"
QUARANTINE_DIR = "quarantine"
_HEADER = struct.Struct("<BHB")
HEADER_SIZE = _HEADER.size
_LENGTH = struct.Struct("<H")
MODIFIER_SPOOL = 17
MAX_PACKET = 0xFFFF


def pack_vars(entries: Mapping[bytes, bytes]) -> bytes:
    """Encode ``{key: value}`` as a uwsgi packet (each part ``uint16 LE length`` + bytes)."""
    parts = []
    for key, value in entries.items():
        if len(key) > MAX_PACKET or len(value) > MAX_PACKET:
            raise ValueError(f"spool packet field {key[:40]!r} is over {MAX_PACKET} bytes")
        parts += [_LENGTH.pack(len(key)), key, _LENGTH.pack(len(value)), value]
    packet = b"".join(parts)
    if len(packet) > MAX_PACKET:
        raise ValueError(f"spool packet is {len(packet)} bytes, uWSGI allows {MAX_PACKET}")
    return packet


def unpack_vars(packet: bytes) -> dict[bytes, bytes]:
    """Decode a uwsgi packet; ``ValueError`` when it is truncated or malformed."""
    entries: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(packet):
        fields = []
        for _ in range(2):
            if pos + 2 > len(packet):
                raise ValueError("truncated uwsgi packet")
            (size,) = _LENGTH.unpack_from(packet, pos)
            pos += 2
            if pos + size > len(packet):
                raise ValueError("truncated uwsgi packet")
            fields.append(packet[pos : pos + size])
            pos += size
        entries[fields[0]] = fields[1]
    return entries


def encode_file(entries: Mapping[bytes, bytes], body: bytes = b"") -> bytes:
    packet = pack_vars(entries)
    return _HEADER.pack(MODIFIER_SPOOL, len(packet), 0) + packet + body


def decode_file(data: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """``(packet entries, body)`` of a whole spool file, for tools and tests."""
    if len(data) < _HEADER.size:
        raise ValueError("spool file shorter than its header")
    modifier1, size, _ = _HEADER.unpack_from(data)
    if modifier1 != MODIFIER_SPOOL or len(data) < _HEADER.size + size:
        raise ValueError("not a spool file, or shorter than its header says")
    packet = data[_HEADER.size : _HEADER.size + size]
    return unpack_vars(packet), data[_HEADER.size + size :]


OWN_PREFIX = f"{SPOOL_PREFIX}spoolkit_"
#: Less free space than this in the spool's filesystem: no job file can be written.
FULL_BELOW = 64 * 1024


def spool_file_name(job_id: str, now: float | None = None) -> str:
    """A unique name that sorts by creation time and shows the job id to an operator."""
    stamp = int((time.time() if now is None else now) * 1_000_000)
    return f"{OWN_PREFIX}{stamp:017d}_{job_id}"


def is_own_file(relative: str) -> bool:
    """Written by the kit (atomically), as opposed to uwsgi.spool() or anyone else."""
    return os.path.basename(relative).startswith(OWN_PREFIX)


@dataclass
class SpoolDirectory:
    """One uWSGI spooler directory, with its quarantine and priority subdirectories.

    ``wake`` is called after each write; under uWSGI it signals every
    spooler (busy ones too, unlike ``uwsgi.spool()``), so a burst never
    waits a whole ``spooler-frequency`` tick.
    """

    path: str
    wake: Callable[[], None] = field(default=lambda: None)

    def __post_init__(self) -> None:
        # Resolved like uWSGI does (realpath() before it chdir()s in), so the working
        # directory of a spooler names this very path.
        self.path = os.path.realpath(self.path)

    def prepare(self) -> None:
        """Create the directory and its quarantine, private to this user (0700)."""
        for directory in (self.path, self.quarantine_path):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)

    @property
    def quarantine_path(self) -> str:
        return os.path.join(self.path, QUARANTINE_DIR)

    def absolute(self, relative: str) -> str:
        return os.path.join(self.path, relative)

    def relative_of(self, directory: str, name: str) -> str:
        """Path of file ``name`` found in ``directory``, relative to the spool directory.

        uWSGI runs a job with the spool (or priority) directory as working
        directory; if that is not so (``spooler-chdir`` is set), look the file up.
        """
        relative = os.path.relpath(os.path.join(directory, name), self.path)
        if not relative.startswith(".."):
            return relative
        for candidate in [
            name,
            *(os.path.join(d, name) for d in os.listdir(self.path) if d.isdigit()),
        ]:
            if os.path.lexists(self.absolute(candidate)):
                return candidate
        return name

    def relative_name(self, name: str, priority: int | None) -> str:
        return name if priority is None else os.path.join(f"{priority:02d}", name)

    def write(
        self,
        relative: str,
        entries: Mapping[bytes, bytes],
        body: bytes,
        mtime: int,
        *,
        wake: bool = True,
    ) -> None:
        """Create the job file at ``relative`` the way uWSGI's own writer does.

        ``O_EXCL``, then a write lock (fcntl) held while the content and the
        mtime are written: a spooler that opens the file before it is complete
        finds it locked or empty and skips it until its next scan. One
        directory operation per job (a temporary name plus a link would be
        three, and creating entries is what costs most on ext4). An existing
        file is left alone: it is the same job, spooled concurrently. A failed
        write (disk full) removes the file and raises :class:`SpoolWriteError`.
        ``wake=False`` leaves the spoolers asleep (the file is staged, not due).
        """
        target = self.absolute(relative)
        directory = os.path.dirname(target)
        data = encode_file(entries, body)
        try:
            if directory != self.path:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.utime(fd, (mtime, mtime))
            except OSError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                raise
            finally:
                os.close(fd)  # releases the lock
        except OSError as exc:
            raise SpoolWriteError(f"cannot write spool file {relative}: {exc.strerror}") from exc
        if wake:
            self.wake()

    def remove_unclaimed(self, relative: str) -> bool:
        """Remove a staged file no spooler holds; ``False`` if one does (or it is gone).

        A spooler holds a file's lock while it runs it, and uWSGI stops a
        spooler whose final unlink fails, so a held file is left to that
        spooler (which finds no job for it and quarantines it).
        """
        path = self.absolute(relative)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        else:
            os.unlink(path)
            return True
        finally:
            os.close(fd)

    def set_mtime(self, relative: str, mtime: int) -> bool:
        """Move a file's ``at``; ``False`` if the file is gone. Never opens the file."""
        try:
            os.utime(self.absolute(relative), (mtime, mtime))
        except FileNotFoundError:
            return False
        return True

    def quarantine(self, directory: str, name: str) -> str | None:
        """Hard-link a rejected file into the quarantine; ``None`` if that failed.

        The original stays where it is: the spooler returns ``SPOOL_OK`` and
        uWSGI unlinks it, which is the only safe way to remove it.
        """
        os.makedirs(self.quarantine_path, mode=0o700, exist_ok=True)
        target = os.path.join(self.quarantine_path, name)
        try:
            os.link(os.path.join(directory, name), target)
        except FileExistsError:
            return target
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                log.error("cannot quarantine spool file %s: %s", name, exc.strerror)
                return None
            log.error("cannot quarantine spool file %s: quarantine is on another filesystem", name)
            return None
        return target

    def quarantined(self) -> list[tuple[str, float]]:
        """``(name, mtime)`` of every file in the quarantine."""
        found = []
        try:
            with os.scandir(self.quarantine_path) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        found.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        except FileNotFoundError:
            pass
        return found

    def purge_quarantine(self, before: float) -> int:
        """Delete quarantined files last changed before ``before``; how many.

        They hold job arguments, so they are kept no longer than finished jobs.
        """
        purged = 0
        for name, mtime in self.quarantined():
            if mtime < before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.quarantine_path, name))
                    purged += 1
        return purged

    def usable(self) -> str | None:
        """Why jobs cannot be written here (missing, not writable), or ``None``."""
        if not os.path.isdir(self.path):
            return "spool directory missing"
        if not os.access(self.path, os.W_OK | os.X_OK):
            return "spool directory not writable"
        space = os.statvfs(self.path)
        if space.f_bavail * space.f_frsize < FULL_BELOW or space.f_favail == 0:
            return "spool disk full"
        return None

    def names(self) -> set[str]:
        """Relative paths of every job file, read from the directory alone (no stat)."""
        found: set[str] = set()
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(SPOOL_PREFIX):
                found.add(entry.name)
            elif entry.name.isdigit() and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError), os.scandir(entry.path) as inner:
                    found.update(
                        os.path.join(entry.name, sub.name)
                        for sub in inner
                        if sub.name.startswith(SPOOL_PREFIX)
                    )
        return found

    def is_torn(self, relative: str, info: os.stat_result) -> bool:
        """Shorter than uWSGI's 4-byte header, or than the packet its header announces.

        uWSGI mishandles both: it skips the first kind on every scan forever,
        and removes the second kind with a race (core/spooler.c closes the
        file, dropping its lock, before unlinking it; a second spooler can
        unlink it first, and the first then exits). A file still locked by its
        writer (being written right now, maybe by another instance) is not torn.
        Never called in a spooler: closing the file would drop a spooler's lock.
        """
        try:
            with open(self.absolute(relative), "rb") as spool_file:
                header = spool_file.read(HEADER_SIZE)
                if len(header) == HEADER_SIZE:
                    _, packet_size, _ = _HEADER.unpack(header)
                    if info.st_size >= HEADER_SIZE + packet_size:
                        return False
                try:
                    fcntl.lockf(spool_file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    return False  # its writer holds it: complete in a moment
                return True
        except FileNotFoundError:
            return False

    def set_aside_torn(self, relative: str) -> str | None:
        """Move a file shorter than uWSGI's 4-byte header to the quarantine.

        uWSGI skips such a file on every scan and never removes it (it only
        unlinks files whose header it could read), so a job behind it would
        wait forever. The kit's own writes are atomic, so only a crash of the
        machine (or a foreign writer) leaves one; removing it is safe because
        a spooler closes such a file as soon as it has read it.
        """
        path = self.absolute(relative)
        kept = self.quarantine(os.path.dirname(path), os.path.basename(path))
        if kept is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return kept
