"""A file opened once: how every stage reaches the bytes of a package.

The threat model lets whoever owns a package swap, link or rewrite its files
while we read them.  So a path is looked at exactly once: it is opened with
O_NOFOLLOW (a symlink is refused, never followed) and O_NONBLOCK (a FIFO
cannot hang the open), checked with fstat to be a regular file, and from then
on only the descriptor is used.  Our own readers pread() it; programs such as
qemu-img inherit it and name it /proc/self/fd/N, which leads to that very
inode whatever happens to the path afterwards.

What a descriptor cannot stop is the owner rewriting the file in place.  The
identity taken at open (device, inode, size, mtime, ctime) is compared again
after the work is done: if anything moved, the result is not used.
"""

import os
import stat
from typing import NamedTuple, Optional

from ganeti_ovf.errors import PackageError

# O_NONBLOCK: opening a FIFO must not hang us; cleared once fstat says "regular".
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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


class OpenedFile:
    """A regular file held open for the life of the package that opened it."""

    def __init__(self, fd: int, label: str) -> None:
        """Take ownership of `fd`; PackageError (closing it) unless it is a
        regular file."""
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PackageError("%s: not a regular file (%s refused)"
                                   % (label, _kind(info.st_mode)))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.label = label
        self.identity = Identity.of(info)

    @classmethod
    def open(cls, name: str, label: str, dir_fd: Optional[int] = None,
             follow: bool = False) -> "OpenedFile":
        """Open `name` (relative to `dir_fd` if given) once.

        `follow` is for a path the operator typed (it may be a symlink he
        made); a package's own files are never followed.  Raises OSError for
        a failed open (ELOOP for a symlink), PackageError for a non-regular
        file.
        """
        flags = OPEN_FLAGS & ~os.O_NOFOLLOW if follow else OPEN_FLAGS
        return cls(os.open(name, flags, dir_fd=dir_fd), label)

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def proc_path(self) -> str:
        """The name of this very file for this process, and for a child that
        inherits the descriptor at the same number (pass_fds)."""
        return "/proc/self/fd/%d" % self.fd

    def change(self) -> Optional[str]:
        """What moved since the file was opened, or None."""
        try:
            now = Identity.of(os.fstat(self.fd))
        except OSError as err:
            return "cannot fstat: %s" % err.strerror
        moved = ["%s %d -> %d" % (field, before, after) for field, before, after
                 in zip(Identity._fields, self.identity, now, strict=True) if before != after]
        return ", ".join(moved) or None

    def check_unchanged(self) -> None:
        """PackageError if the file was changed in place since it was opened."""
        moved = self.change()
        if moved:
            raise PackageError("%s: the file changed while it was read (%s); nothing read "
                               "from it is used" % (self.label, moved))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a plain file"
