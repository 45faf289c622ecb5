"""Writing an OVA in one pass: a tar whose members are written in place.

The OVF specification wants the descriptor first, then the manifest and the
certificate, then the files in References order; but the descriptor holds
the files' sizes, known only once they are written.  So the writer reserves
room for the leading members (their greatest possible size, computed by the
caller), streams the disk files after them, patches each member's header
once its size is known (the OVA is a regular file), and fills the reserved
members last.  Nothing is staged twice.

Headers are POSIX ustar.  A member of 8 GiB or more cannot state its size in
ustar's 11 octal digits; there, and only there, the size field takes GNU's
base-256 form, which GNU tar, bsdtar and Python's tarfile read.
"""

import ctypes
import hashlib
import os
import time
from typing import BinaryIO, Optional

from ganeti_ovf.errors import PublishError

BLOCK = 512
_OCTAL_SIZE_LIMIT = 8 ** 11  # 8 GiB: the most ustar's size field can state
_ZEROS = bytes(1024 * 1024)  # hashed in place of a skipped hole

# Every WRITEBACK_STEP bytes a member asks the kernel to start writing what
# it holds of the file (sync_file_range, SYNC_FILE_RANGE_WRITE: no waiting),
# so the disk works while we compress and the fsync at the end waits for
# the last step, not for the whole output (0.6 s of 1.5 GB, measured); and
# drops from the page cache what the step before wrote, on disk by then
# (POSIX_FADV_DONTNEED skips pages not yet clean).  Output is written once
# and not read back: kept cached, gigabytes of it push out other files and
# make every new page cost a reclaim (measured on a full page cache: the
# writes of a 1.5 GB OVA took 1.7-2.3 s of system time, 0.4-0.5 s with
# the drop).
WRITEBACK_STEP = 64 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _load_sync_file_range():
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the fsync does it all
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()


def start_writeback(fd: int, drop_to: int = 0) -> None:
    """Start writing the file's dirty pages to disk, without waiting, and
    drop its clean pages before offset drop_to from the page cache.  Only
    hints: failures are left to the fsync that follows."""
    if drop_to > 0:
        try:
            os.posix_fadvise(fd, 0, drop_to, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # 0, 0: all of it


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def _size_field(size: int) -> bytes:
    if size < _OCTAL_SIZE_LIMIT:
        return _octal(size, 12)
    # GNU base-256: the first byte's high bit set, big-endian binary after it.
    return bytes([0x80]) + size.to_bytes(11, "big")


def ustar_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header block for a regular file `name` of `size` bytes."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise PublishError("%s: member names are limited to 100 bytes" % name)
    header = bytearray(BLOCK)
    header[0:len(encoded)] = encoded
    header[100:108] = _octal(0o644, 8)
    header[108:116] = _octal(0, 8)
    header[116:124] = _octal(0, 8)
    header[124:136] = _size_field(size)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[265:269] = b"root"
    header[297:301] = b"root"
    checksum = sum(header)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


def padding(size: int) -> int:
    return -size % BLOCK


class MemberWriter:
    """A file-like object writing one member's data, hashing it as it goes.

    skip(count) stands for `count` zero bytes: hashed, but left as a hole in
    the file (the handle seeks past them), so a sparse disk stays sparse in a
    folder and inside an OVA alike.  finish() gives a file that ends in a
    hole its length.
    """

    def __init__(self, handle: BinaryIO, algorithm: Optional[str]) -> None:
        self._handle = handle
        self._hasher = hashlib.new(algorithm) if algorithm else None
        self.size = 0
        self._hole_at_end = False
        self._writeback_at = WRITEBACK_STEP
        self._written_to = 0  # file offset reached at the last step

    def write(self, data) -> int:
        written = self._handle.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.size += len(data)
        self._hole_at_end = False
        if self.size >= self._writeback_at:
            self._writeback_at = self.size + WRITEBACK_STEP
            self._step()
        return written

    def _step(self) -> None:
        try:
            fd, position = self._handle.fileno(), self._handle.tell()
        except (AttributeError, OSError, ValueError):  # not a file: no cache
            return
        start_writeback(fd, self._written_to)
        self._written_to = position

    def skip(self, count: int) -> None:
        if count <= 0:
            return
        if self._hasher is not None:
            zeros = memoryview(_ZEROS)
            for done in range(0, count, len(_ZEROS)):
                self._hasher.update(zeros[:min(len(_ZEROS), count - done)])
        self._handle.seek(count, os.SEEK_CUR)
        self.size += count
        self._hole_at_end = True

    def finish(self) -> None:
        if self._hole_at_end:
            self._handle.truncate()  # at the current position: the hole's end
            self._hole_at_end = False

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> Optional[str]:
        return self._hasher.hexdigest() if self._hasher else None


class OvaWriter:
    """Writes an OVA file member by member (see the module docstring)."""

    def __init__(self, path: str, reserved: list, digest: Optional[str] = "sha256",
                 mtime: Optional[int] = None) -> None:
        """`reserved` lists (name, size) of the leading members, whose data
        is given later with fill() and must then be exactly that size."""
        self.path = path
        self.digest = digest
        self.mtime = int(time.time()) if mtime is None else mtime
        self.digests: dict = {}
        self.sizes: dict = {}
        self._reserved = {}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._handle = os.fdopen(fd, "wb", buffering=1024 * 1024)
        offset = 0
        for name, size in reserved:
            self._reserved[name] = (offset, size)
            offset += BLOCK + size + padding(size)
        self._handle.seek(offset)

    def add(self, name: str, writer_function) -> int:
        """Stream a member: writer_function(file_like) writes its data."""
        header_offset = self._handle.tell()
        self._handle.write(b"\0" * BLOCK)  # patched once the size is known
        member = MemberWriter(self._handle, self.digest)
        writer_function(member)
        self._handle.write(b"\0" * padding(member.size))
        end = self._handle.tell()
        self._handle.seek(header_offset)
        self._handle.write(ustar_header(name, member.size, self.mtime))
        self._handle.seek(end)
        self.sizes[name] = member.size
        if member.hexdigest():
            self.digests[name] = member.hexdigest()
        return member.size

    def reserved_size(self, name: str) -> int:
        return self._reserved[name][1]

    def fill(self, name: str, data: bytes) -> None:
        """Write a reserved member's data (exactly its reserved size)."""
        offset, size = self._reserved.pop(name)
        if len(data) != size:
            raise PublishError("%s: %d bytes do not fill the %d reserved"
                               % (name, len(data), size))
        end = self._handle.tell()
        self._handle.seek(offset)
        self._handle.write(ustar_header(name, size, self.mtime))
        self._handle.write(data)
        self._handle.write(b"\0" * padding(size))
        self._handle.seek(end)

    def close(self) -> None:
        """Finish the archive: two zero blocks; everything reserved is filled."""
        if self._reserved:
            raise PublishError("%s: reserved members never written: %s"
                               % (self.path, ", ".join(self._reserved)))
        self._handle.write(b"\0" * (2 * BLOCK))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
