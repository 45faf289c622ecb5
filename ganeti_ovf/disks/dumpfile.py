"""A source disk opened once: the only way the export side reads a dump.

This module owns opening an export's disk dumps (and any other file the
export reads as a disk): once, without following a symbolic link, without
blocking on a FIFO, checked with fstat to be a regular file, and kept open.
Every later stage (the project's VMDK writer, the raw copy, qemu-img through
/proc/self/fd/N) reads that descriptor, never the path again, so a dump
swapped for a link to another file after it was opened is never read.
The file's identity (device, inode, size, mtime, ctime) is recorded at open;
check_unchanged() compares it after the bytes were read and hashed, so a
dump rewritten in place while it was read fails the export.
"""

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Optional, Tuple

from ganeti_ovf.errors import DiskError

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_RULE = "only a regular file is read (a symlink, FIFO, socket or device is refused)"
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"))


@dataclass(frozen=True)
class Identity:
    """What must not move while a file is read."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, info: os.stat_result) -> "Identity":
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                   info.st_ctime_ns)

    def moved(self, other: "Identity", ctime_counts: bool = True) -> Tuple[str, ...]:
        """The names of the fields that differ in `other`."""
        fields = ("device", "inode", "size", "mtime_ns") + (("ctime_ns",) if ctime_counts
                                                            else ())
        return tuple(name for name in fields
                     if getattr(self, name) != getattr(other, name))


class OpenedFile:
    """An open regular file: `fd` for every read, `path` for messages only."""

    def __init__(self, fd: int, path: str, label: str, info: os.stat_result) -> None:
        self.fd, self.path, self.label = fd, path, label
        self.info = info
        self.identity = Identity.of(info)

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def proc_path(self) -> str:
        """A name by which a child that inherits `fd` opens this same file."""
        return "/proc/self/fd/%d" % self.fd

    def check_unchanged(self) -> None:
        """DiskError naming the file if it changed since it was opened.

        ctime cannot be set by a file's owner, so it catches a rewrite whose
        mtime was put back; it is not compared for a file only root can
        write (root-owned, no group or other write bit): removing another
        link to it changes its ctime too, as Ganeti does when it replaces an
        export whose hard-linked snapshot the export hook still reads.
        """
        try:
            now = os.fstat(self.fd)
        except OSError as err:
            raise DiskError("%s: cannot check %s: %s" % (self.path, self.label,
                                                         err.strerror)) from None
        root_only = self.info.st_uid == 0 and not self.info.st_mode & 0o022
        moved = self.identity.moved(Identity.of(now), ctime_counts=not root_only)
        if moved:
            raise DiskError("%s: %s changed while it was read (%s moved); a source"
                            " must stay unchanged until the export is written"
                            % (self.path, self.label, ", ".join(moved)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OpenedFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_regular(path: str, label: str, dir_fd: Optional[int] = None) -> OpenedFile:
    """Open `path` (relative to `dir_fd` if given) once for reading.

    O_NOFOLLOW refuses a symbolic link and O_NONBLOCK keeps a FIFO from
    blocking the open; fstat then refuses anything but a regular file, so a
    FIFO, socket or device is never read.  `label` says what the file is
    (e.g. "disk dump") in messages, which name the file and the rule.
    """
    name = path if dir_fd is None else os.path.basename(path)
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DiskError("%s: %s is a symbolic link: refused, %s"
                            % (path, label, _RULE)) from None
        raise DiskError("%s: cannot open %s: %s" % (path, label, err.strerror)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((text for test, text in _KINDS if test(info.st_mode)), "not a file")
            raise DiskError("%s: %s is %s: refused, %s" % (path, label, kind, _RULE))
        # Reads must block as usual (O_NONBLOCK was only for the open).
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return OpenedFile(fd, path, label, info)
    except BaseException:
        os.close(fd)
        raise


def open_directory(path: str) -> int:
    """A descriptor of the directory `path`, so that the files opened from it
    come from one directory even if `path` is renamed or replaced meanwhile."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise DiskError("%s: cannot open directory: %s" % (path, err.strerror)) from None
