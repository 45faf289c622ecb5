"""A streamOptimized VMDK converted while it is inflated: one pass, no copy.

This module owns converting a streamOptimized VMDK that arrives as a stream
(out of gunzip) without first storing it whole.  Storing it whole costs
writing and reading back as many bytes as the image has (make bench,
import-folder-gzip: 1.5 GB of a 1.6 GB gzip); here only its metadata is
stored.

The stream is parsed in file order (layout: vmdkstream.py): everything before
the header's overHead, every metadata record (grain table, grain directory,
footer), the end-of-stream marker and all after it, and the stream's last
TAIL bytes are written to a "skeleton" file at their own offsets; every
other grain record (marker and deflated data) is a hole there, and its grain
is inflated and written into the raw disk at the LBA its marker names, on a
thread pool.

That is how a stream is *meant* to be read, but QEMU and vmdkread.py read
the image through its grain directory, and a hostile image can make the two
readings differ (a grain no table points at, two markers for one LBA, a
table pointing inside another grain's data).  So nothing is taken on the
markers' word: after the stream, the skeleton is read as vmdkread reads an
image, and every grain the tables point at must be one this pass wrote,
from a marker at exactly that sector, and every grain written must be
pointed at.  Each grain index is written at most once, so the two sets are
equal, and the disk holds what vmdkread would have written.  The reads of
that check must not meet a hole (the metadata must be real bytes, not
zeros standing in for grain data).  Format inspection and qemu-img info then
read the skeleton: the header and the descriptor (checked to lie before the
first hole; grain records start HEAD bytes in or later) and the last bytes.

When any of this does not hold (FlowRefused), or the disk is too large for
the table of what was written (MAX_GRAINS), the caller reads the image the
ordinary way (store it whole, then vmdkread.py), which also gives the exact
error when the image is bad: a pass here never decides that an image is bad,
only that it cannot vouch for it.  The one exception is the size: the
header's capacity is held to the declared capacity before a byte is
written, as the ordinary way holds qemu-img's figure to it.
"""

import bisect
import collections
import concurrent.futures
import sys
from array import array
from typing import Callable, Deque, List, Optional, Protocol, Tuple

from ganeti_ovf.disks import vmdkread
from ganeti_ovf.disks.vmdkstream import (COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS,
                                         GRAIN_MARKER, HEADER, MAGIC, MARKER_EOS,
                                         META_MARKER, SECTOR)
from ganeti_ovf.disks.formats import VMDK_MAX_DESCRIPTOR_SECTORS
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

# Grain records start at least this far in: the header, the descriptor and
# what format inspection reads near the start (an ISO signature at 32 KiB)
# must be real bytes in the skeleton.  VMware, VirtualBox and vmdkstream
# start grains at 64 KiB, qemu-img at 64 or 576 KiB.
HEAD = 128 * SECTOR  # 64 KiB
# The stream's last bytes are real in the skeleton, grains or not: what is
# read at the end of an image (a footer, 1536 bytes; a VHD footer when
# formats are told apart).  qemu-img ends small images with a grain.
TAIL = 64 * 1024
# The table of written grains takes 4 bytes per grain of the disk: 8 MiB for
# 128 GiB in 64 KiB grains.  Larger disks are stored whole first.
MAX_GRAINS = 1 << 21
BATCH_BYTES = 1024 ** 2  # deflated bytes per pool task
# Every writer uses 64 KiB grains; a record is at most twice a grain, so
# the batches in flight stay a few MiB.  Larger grains are read whole.
MAX_GRAIN = 64 * 1024
MAX_SECTOR = 0xFFFFFFFF  # grain table entries are 32-bit sector numbers

Progress = Callable[[float], None]
Output = Callable[[int], Tuple[int, str]]  # virtual size -> (fd, name)


class FlowRefused(Exception):
    """The stream cannot be converted in one pass here; read it whole."""


class SkeletonWriter(Protocol):
    """Where the skeleton goes, in order: data, or a run of bytes left out."""

    def write(self, data: vmdkread.Buffer) -> None: ...

    def skip(self, count: int) -> None: ...


class Flow:
    """A write() sink for a byte stream holding a VMDK image.

    Every byte goes to `skeleton` (SkeletonWriter) unless the stream is a
    streamOptimized VMDK the pass can take: then grain records become holes
    there and their grains go into the disk that `output(virtual_size)`
    creates (and returns as (fd, name)), called once the header is read;
    it raises DiskError to refuse the size.  Call finish() after the
    stream; then `flowing` says whether the disk was written, and verify()
    must vouch for it.  write() raises FlowRefused when the pass cannot go
    on; the disk, if created, is the caller's to remove.
    """

    def __init__(self, name: str, skeleton: SkeletonWriter, output: Output,
                 threads: int = 0, progress: Optional[Progress] = None) -> None:
        self.name = name
        self.skeleton = skeleton
        self.output = output
        self.progress = progress
        self.flowing = False
        self.geo: Optional[vmdkread.Geometry] = None
        self.writer: Optional[vmdkread.GrainWriter] = None
        # [start, end) runs of grain records, left out of the skeleton
        self.hole_starts = array("Q")
        self.hole_ends = array("Q")
        self.sector_of: Optional[array] = None  # grain -> its marker's sector + 1
        self.grains_written = 0
        self.ended = False  # the end-of-stream marker was seen
        # The last TAIL bytes, held back from the skeleton: (data, is a grain).
        self._held: Deque[Tuple[vmdkread.Buffer, bool]] = collections.deque()
        self._held_bytes = 0
        self._emitted = 0  # stream offset the skeleton has reached
        self._buffer = bytearray()
        self._position = 0  # stream offset of _buffer[0]
        self._decided = False
        self._descriptor = (0, 0)  # the header's: offset in bytes, size in sectors
        self._real_until = 0  # bytes before this offset go to the skeleton
        self._batch: List[Tuple[int, int, memoryview]] = []
        self._batch_bytes = 0
        self._threads = vmdkread.worker_count(threads)
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pending: Deque[concurrent.futures.Future] = collections.deque()
        self._reported = 0.0

    # ------------------------------------------------------------- the stream

    def write(self, data: bytes) -> None:
        if self._decided and not self.flowing:
            self.skeleton.write(data)
            return
        self._buffer += data
        if not self._decided:
            if len(self._buffer) < SECTOR:
                return
            self._decide()
            if not self.flowing:
                data = bytes(self._buffer)
                self._buffer.clear()
                self.skeleton.write(data)
                return
        self._parse()

    def _decide(self) -> None:
        """Read the header: flow, or store everything (not an image the
        pass takes: no streamOptimized VMDK, grains too early, disk too big)."""
        self._decided = True
        fields = HEADER.unpack_from(self._buffer, 0)
        magic, flags = fields[0], fields[2]
        overhead, compression = fields[10] * SECTOR, fields[13]
        if magic != MAGIC or not (flags & FLAG_COMPRESSED and flags & FLAG_MARKERS) \
                or compression != COMPRESS_DEFLATE or overhead < HEAD:
            return
        try:
            geo = vmdkread.Geometry(self.name, fields, sys.maxsize)  # size: not yet known
        except DiskError:
            return  # vmdkread says what is wrong, reading it whole
        if geo.grains > MAX_GRAINS or geo.grain > MAX_GRAIN:
            return
        fd, dest = self.output(geo.capacity)
        self.geo = geo
        self._descriptor = (fields[5] * SECTOR, fields[6])  # offset, sectors
        self.writer = vmdkread.GrainWriter(self.name, geo, fd, dest)
        self.sector_of = array("I", [0]) * geo.grains
        self._real_until = overhead
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="vmdk-flow")
        self.flowing = True

    def _parse(self) -> None:
        buffer, at, end = self._buffer, 0, len(self._buffer)
        try:
            while at < end:
                position = self._position + at
                if self.ended or position < self._real_until:
                    count = end - at if self.ended else min(end - at,
                                                            self._real_until - position)
                    self._emit(buffer[at:at + count], False)  # a copy already
                    at += count
                    continue
                if end - at < META_MARKER.size:
                    break
                lba, size = GRAIN_MARKER.unpack_from(buffer, at)
                if size:
                    length = -(-(GRAIN_MARKER.size + size) // SECTOR) * SECTOR
                    if size > self.writer.max_compressed:
                        raise FlowRefused("grain at sector %d: %d deflated bytes"
                                          % (position // SECTOR, size))
                    if end - at < length:
                        break
                    record = buffer[at:at + length]  # a writable copy: libdeflate
                    # reads the grain in it without another (deflate.py)
                    self._grain(lba, position, memoryview(record)[GRAIN_MARKER.size:
                                                                  GRAIN_MARKER.size + size])
                    self._emit(record, True)
                    at += length
                    continue
                sectors, _, kind = META_MARKER.unpack_from(buffer, at)
                if kind == MARKER_EOS and not sectors:
                    self.ended = True
                    continue
                self._real_until = position + SECTOR + sectors * SECTOR
        finally:
            del buffer[:at]
            self._position += at

    def _emit(self, data: vmdkread.Buffer, grain: bool) -> None:
        """Give the skeleton `data`, or a hole for a grain record, once
        it is no longer among the last TAIL bytes."""
        self._held.append((data, grain))
        self._held_bytes += len(data)
        while self._held_bytes - len(self._held[0][0]) >= TAIL:
            data, grain = self._held.popleft()
            self._held_bytes -= len(data)
            self._release(data, grain)

    def _release(self, data: vmdkread.Buffer, grain: bool) -> None:
        position, length = self._emitted, len(data)
        self._emitted += length
        if not grain or position < HEAD:
            self.skeleton.write(data)
            return
        self.skeleton.skip(length)
        if self.hole_ends and self.hole_ends[-1] == position:
            self.hole_ends[-1] = position + length
        else:
            self.hole_starts.append(position)
            self.hole_ends.append(position + length)

    def _grain(self, lba: int, position: int, data: memoryview) -> None:
        geo, sector = self.geo, position // SECTOR
        grain, misaligned = divmod(lba, geo.grain_sectors)
        if misaligned or grain >= geo.grains or sector >= MAX_SECTOR:
            raise FlowRefused("grain marker at sector %d names LBA %d" % (sector, lba))
        if self.sector_of[grain]:
            raise FlowRefused("two grain markers name LBA %d" % lba)
        self.sector_of[grain] = sector + 1
        self.grains_written += 1
        self._batch.append((grain, sector, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._submit()
        if self.progress is not None:
            done = 100.0 * (grain + 1) / geo.grains
            if done >= self._reported + 1:
                self._reported = done
                self.progress(done)

    def _submit(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        self._pending.append(self._pool.submit(self._run, batch))
        while len(self._pending) >= 2 * self._threads:
            self._result(self._pending.popleft())

    def _run(self, batch: List[Tuple[int, int, memoryview]]) -> None:
        for grain, sector, data in batch:
            self.writer.inflate_and_write(grain, sector, data)

    @staticmethod
    def _result(future: concurrent.futures.Future) -> None:
        try:
            future.result()
        except DiskError as err:
            # A grain no table points at may hold anything: only the
            # ordinary reading can tell whether this one matters.
            raise FlowRefused(str(err)) from None

    def finish(self) -> None:
        """After the last write(): the grains written, or FlowRefused."""
        try:
            if self.flowing:
                self._submit()
                while self._pending:
                    self._result(self._pending.popleft())
        finally:
            self.close()
        if self._buffer:  # a stream shorter than a header, or a record cut
            self._emit(bytes(self._buffer), False)  # short (verify judges it)
            self._buffer.clear()
        while self._held:
            self._release(self._held.popleft()[0], False)

    def close(self) -> None:
        """Stop the pool, dropping grains not yet started (after an error)."""
        if self._pool is not None:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None

    # ---------------------------------------------------- vouching for it

    def verify(self, skeleton_fd: int, size: int) -> None:
        """Read the skeleton (`size` bytes at `skeleton_fd`) as vmdkread reads
        an image; FlowRefused unless its grain tables point at exactly the
        grains written."""
        member = Member(name=self.name, path="", offset=0, size=size, fd=skeleton_fd)
        src = _RealBytes(skeleton_fd, member, self.hole_starts, self.hole_ends)
        try:
            geo = vmdkread.read_geometry(src)
            # What format inspection reads of the descriptor (formats.Vmdk);
            # the header is real bytes, the one parsed in _decide.
            offset, sectors = self._descriptor
            if sectors <= VMDK_MAX_DESCRIPTOR_SECTORS:
                src.check(offset, sectors * SECTOR, "VMDK descriptor")
        except DiskError as err:
            raise FlowRefused(str(err)) from None
        if (geo.capacity, geo.grain, geo.gtes) != \
                (self.geo.capacity, self.geo.grain, self.geo.gtes):
            raise FlowRefused("the footer's geometry is not the header's")
        pointed_at = 0
        sector_of = self.sector_of
        try:
            for index, table in vmdkread.grain_tables(src, geo):
                base = index * geo.gtes
                for i, sector in enumerate(table):
                    if not geo.stored(sector):
                        continue
                    grain = base + i
                    if grain >= geo.grains or sector_of[grain] != sector + 1:
                        raise FlowRefused("grain %d is not the one at sector %d"
                                          % (grain, sector))
                    pointed_at += 1
        except DiskError as err:
            raise FlowRefused(str(err)) from None
        if pointed_at != self.grains_written:
            raise FlowRefused("%d grains written, %d pointed at"
                              % (self.grains_written, pointed_at))


class _RealBytes(vmdkread.Source):
    """Reads of the skeleton whose bytes are used must not meet a hole
    (FlowRefused): every read, and each structure of a run read at once
    (grain tables close together, with grain records between them)."""

    def __init__(self, fd: int, member: Member, starts: array, ends: array) -> None:
        super().__init__(fd, member)
        self.starts = starts
        self.ends = ends

    def check(self, offset: int, length: int, what: str) -> None:
        first = bisect.bisect_right(self.ends, offset)  # the first hole ending after it
        if first < len(self.starts) and self.starts[first] < offset + length:
            raise FlowRefused("%s: %d bytes at %d meet a grain record"
                              % (what, length, offset))

    def read(self, offset: int, length: int, what: str) -> bytes:
        self.check(offset, length, what)
        return super().read(offset, length, what)

    def read_run(self, offset: int, length: int, what: str) -> bytes:
        return super().read(offset, length, what)  # its parts are check()ed
