"""Raw disks read by their data: holes found, never read, handed on as holes.

This module owns walking a raw source by its allocated ranges (SEEK_DATA and
SEEK_HOLE) and copying it into a hole-aware writer: a writer with `write(data)`
and `skip(count)`, where skip stands for `count` zero bytes that the writer may
leave unallocated (a sparse file, an OVA member), fold into one precomputed
gzip member, or hash without storing.  Blocks of data that are all zeros are
skipped too, so an export allocates what the guest wrote, not the disk size.
"""

import errno
import os
from typing import ContextManager, Iterator, Protocol, Tuple, Union

from ganeti_ovf.package import openfile
from ganeti_ovf.package.openfile import OpenedFile
from ganeti_ovf.errors import DiskError

BLOCK = 1024 * 1024  # read unit; aligned, so a zero block is a whole hole
ZERO_BLOCK = bytes(BLOCK)
Source = Union[str, OpenedFile]


class HoleWriter(Protocol):
    """What copy() writes into."""

    def write(self, data: bytes) -> int: ...

    def skip(self, count: int) -> None: ...


def data_runs(fd: int, size: int, path: str) -> Iterator[Tuple[int, int]]:
    """Yield [start, end) byte ranges of the source that may hold data."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as err:
            if err.errno == errno.ENXIO:  # nothing but a hole after pos
                return
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, size  # no hole detection here: read everything
                return
            raise DiskError(f"{path}: cannot map holes: {err.strerror}")
        if start >= size:
            return
        end = min(end, size)
        yield start, end
        pos = end


def opened(source: Source, label: str = "source") -> ContextManager[OpenedFile]:
    """`source` as an open regular file: an OpenedFile is used as it is (and
    left open), a path is opened once for the duration (package/openfile.py)."""
    return openfile.opened(source, label, DiskError)


def copy(source: Source, out: HoleWriter, length: int = -1) -> int:
    """Copy the raw file `source` (an OpenedFile, read through its descriptor,
    or a path) into `out`, holes and zero blocks as skips.

    `length` (default: the source size) may exceed the source: the rest is
    a hole.  Returns the bytes covered (`length`).  A source that shrinks
    while read is a DiskError; one that grows is read to `length` only.
    """
    with opened(source) as raw:
        fd, size, path = raw.fd, raw.size, raw.path
        if length < 0:
            length = size
        size = min(size, length)
        position = 0
        for start, end in data_runs(fd, size, path):
            # Align reads to BLOCK so a zero block stays a whole skip.
            start -= start % BLOCK
            if start > position:
                out.skip(start - position)
                position = start
            while position < end:
                count = min(BLOCK - position % BLOCK, size - position)
                try:
                    block = os.pread(fd, count, position)
                except OSError as err:
                    raise DiskError(f"{path}: cannot read at offset {position}:"
                                    f" {err.strerror}")
                if len(block) != count:
                    raise DiskError(f"{path}: shrank while read (offset {position})")
                if block == (ZERO_BLOCK if count == BLOCK else bytes(count)):
                    out.skip(count)
                else:
                    out.write(block)
                position += count
        if length > position:
            out.skip(length - position)
        return length
