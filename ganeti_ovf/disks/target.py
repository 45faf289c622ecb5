"""An existing disk to write into: an instance's file or block device.

Owns opening the target (a regular file or a block device; never created,
truncated or replaced here), its size, whether it is known to read as
zeros, and zeroing a range efficiently: BLKZEROOUT on a block device (the
kernel offloads it or writes zero pages itself), a punched hole in a file
(plain zeros where the file system cannot punch).  Whether a new disk reads
as zeros is the caller's knowledge of how it was made; a regular file is
trusted to only while it has no block allocated.  New disks are made by
create_sparse.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct

from ganeti_ovf.errors import DiskError

BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range (512-byte aligned)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
ZERO_CHUNK = 1024 ** 3  # bytes per zeroing call: a kill is honoured between them
_WRITE_BLOCK = 1024 ** 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def create_sparse(path: str, size: int) -> int:
    """Create `path` as a new file (mode 0600, never an existing one) of
    `size` bytes, all a hole; return its descriptor (the caller's to
    close).  DiskError, leaving nothing behind, on failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise DiskError("%s: cannot create: %s" % (path, err.strerror)) from None
    try:
        os.ftruncate(fd, size)
    except OSError as err:
        os.close(fd)
        os.unlink(path)
        raise DiskError("%s: cannot size to %d bytes: %s"
                        % (path, size, err.strerror)) from None
    return fd


def pwrite_all(fd: int, data, offset: int, name: str) -> None:
    """Write all of `data` at `offset` (pwrite may write less); DiskError
    naming `name` on failure."""
    view = memoryview(data)
    while view:
        try:
            count = os.pwrite(fd, view, offset)
        except OSError as err:
            raise DiskError("%s: cannot write: %s" % (name, err.strerror)) from None
        view, offset = view[count:], offset + count


class Target:
    """An open disk; `known_zero` says unwritten ranges already read as zeros."""

    def __init__(self, path: str, known_zero: bool) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            raise DiskError("%s: cannot open the instance disk: %s"
                            % (path, err.strerror)) from None
        try:
            info = os.fstat(self.fd)
            self.block_device = stat.S_ISBLK(info.st_mode)
            if self.block_device:
                raw = fcntl.ioctl(self.fd, BLKGETSIZE64, bytes(8))
                self.size = struct.unpack("Q", raw)[0]
            elif stat.S_ISREG(info.st_mode):
                self.size = info.st_size
                # Only a file with nothing allocated is sure to read as zeros.
                known_zero = known_zero and info.st_blocks == 0
            else:
                raise DiskError("%s: the instance disk is neither a file nor a block"
                                " device" % path)
        except BaseException:
            os.close(self.fd)
            raise
        self.known_zero = known_zero

    def zero(self, offset: int, length: int) -> None:
        """Make `length` bytes at `offset` read as zeros."""
        end = offset + length
        while offset < end:
            count = min(ZERO_CHUNK, end - offset)
            if self.block_device:
                try:
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, count))
                except OSError as err:
                    raise DiskError("%s: cannot zero %d bytes at %d: %s"
                                    % (self.path, count, offset, err.strerror)) from None
            elif _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                 offset, count) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise DiskError("%s: cannot zero %d bytes at %d: %s"
                                    % (self.path, count, offset, os.strerror(code)))
                self._write_zeros(offset, count)
            offset += count

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = bytes(min(_WRITE_BLOCK, length))
        end = offset + length
        while offset < end:
            self.write(memoryview(zeros)[:min(len(zeros), end - offset)], offset)
            offset += min(len(zeros), end - offset)

    def write(self, data, offset: int) -> None:
        pwrite_all(self.fd, data, offset, self.path)

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as err:
            raise DiskError("%s: cannot flush: %s" % (self.path, err.strerror)) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
