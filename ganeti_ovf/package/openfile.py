"""A file opened once: how every stage reaches the bytes it was given.

The threat model lets whoever owns a package (or the directory of an export)
swap, link or rewrite its files while we read them.  So a path is looked at
exactly once: it is opened with O_NOFOLLOW (a symlink is refused, never
followed) and O_NONBLOCK (a FIFO cannot hang the open), checked with fstat
to be a regular file, and from then on only the descriptor is used.  Our own
readers pread() it; programs such as qemu-img inherit it and name it
/proc/self/fd/N, which leads to that very inode whatever happens to the path.

What a descriptor cannot stop is the owner rewriting the file in place.  The
identity taken at open (device, inode, size, mtime, ctime) is compared again
after the work is done (check_unchanged): if anything moved, nothing read
from the file is used.  Import and export share this module; each passes the
error class its stage raises.
"""

import contextlib
import errno
import os
import stat
from typing import NamedTuple, Optional, Tuple, Type

from ganeti_ovf.errors import OvfError, PackageError

# O_NONBLOCK: opening a FIFO must not hang us; cleared once fstat says "regular".
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
RULE = "only a regular file is read (a symlink, FIFO, socket or device is refused)"
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"))


class Identity(NamedTuple):
    """What fstat says about a file that must not change while we use it."""

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
        return tuple(name for name in self._fields
                     if (ctime_counts or name != "ctime_ns")
                     and getattr(self, name) != getattr(other, name))


class OpenedFile:
    """An open regular file: `fd` for every read, `path` for messages only;
    `what` says what it is ("disk dump", "file") in messages."""

    def __init__(self, fd: int, path: str, what: str = "file",
                 error: Type[OvfError] = PackageError) -> None:
        """Take ownership of `fd`; `error` (closing it) unless it is a
        regular file."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise error("%s: %s is %s: refused, %s"
                            % (path, what, _kind(info.st_mode), RULE))
            os.set_blocking(fd, True)  # O_NONBLOCK was for the open only
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.path, self.what, self.error = fd, path, what, error
        self.info = info
        self.identity = Identity.of(info)

    @classmethod
    def open(cls, name: str, path: str, what: str = "file", dir_fd: Optional[int] = None,
             follow: bool = False, error: Type[OvfError] = PackageError) -> "OpenedFile":
        """Open `name` (relative to `dir_fd` if given; `path` names it in
        messages) once.

        `follow` is for a path the operator typed (it may be a symlink he
        made); files we are given are never followed.  Raises OSError for a
        failed open (ELOOP for a symlink), `error` for a non-regular file.
        """
        flags = OPEN_FLAGS & ~os.O_NOFOLLOW if follow else OPEN_FLAGS
        return cls(os.open(name, flags, dir_fd=dir_fd), path, what, error)

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def proc_path(self) -> str:
        """The name of this very file for this process, and for a child that
        inherits the descriptor at the same number (pass_fds)."""
        return "/proc/self/fd/%d" % self.fd

    def check_unchanged(self) -> None:
        """`error` naming the file if it changed since it was opened.

        ctime cannot be set by a file's owner, so it catches a rewrite whose
        mtime was put back; it is not compared for a file only root can
        write (root-owned, no group or other write bit): removing another
        link to it changes its ctime too, as Ganeti does when it replaces an
        export whose hard-linked snapshot the export hook still reads.
        """
        try:
            now = os.fstat(self.fd)
        except OSError as err:
            raise self.error("%s: cannot check %s: %s"
                             % (self.path, self.what, err.strerror)) from None
        root_only = self.info.st_uid == 0 and not self.info.st_mode & 0o022
        moved = self.identity.moved(Identity.of(now), ctime_counts=not root_only)
        if moved:
            raise self.error("%s: %s changed while it was read (%s moved); nothing read "
                             "from it is used" % (self.path, self.what, ", ".join(moved)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OpenedFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_regular(path: str, what: str, dir_fd: Optional[int] = None,
                 error: Type[OvfError] = PackageError) -> OpenedFile:
    """Open `path` (its last component relative to `dir_fd`, if given) once,
    every failure an `error` that names the file and the rule."""
    name = path if dir_fd is None else os.path.basename(path)
    try:
        return OpenedFile.open(name, path, what, dir_fd=dir_fd, error=error)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise error("%s: %s is a symbolic link: refused, %s" % (path, what, RULE)) \
                from None
        raise error("%s: cannot open %s: %s" % (path, what, err.strerror)) from None


def open_directory(path: str, error: Type[OvfError] = PackageError) -> int:
    """A descriptor of the directory `path`, so that the files opened from it
    come from one directory even if `path` is renamed or replaced meanwhile."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise error("%s: cannot open directory: %s" % (path, err.strerror)) from None


def free_space(directory: str, error: Type[OvfError]) -> int:
    """Bytes an unprivileged user may still write in `directory`'s filesystem
    (the root reserve is left alone): what a file we write there may take.
    `error` (the caller's stage's class) when it cannot be told."""
    try:
        stats = os.statvfs(directory)
    except OSError as err:
        raise error("%s: cannot tell its free space: %s"
                    % (directory, err.strerror)) from None
    return stats.f_bavail * stats.f_frsize


def opened(source: "OpenedFile | str", what: str,
           error: Type[OvfError]) -> "contextlib.AbstractContextManager[OpenedFile]":
    """`source` as an open regular file: an OpenedFile is used as it is (and
    left open), a path is opened once for the duration."""
    if isinstance(source, OpenedFile):
        return contextlib.nullcontext(source)
    return open_regular(source, what, error=error)


def _kind(mode: int) -> str:
    return next((text for test, text in _KINDS if test(mode)), "not a plain file")
