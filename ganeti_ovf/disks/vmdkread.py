"""Read a streamOptimized VMDK into a sparse raw file, fast and in bounded memory.

This module owns the reading side of the streamOptimized layout (the writing
side, with the layout drawn out, is vmdkstream.py).  References: VMware
"Virtual Disk Format 5.0" ("Stream-Optimized Compressed Sparse Extents") and
QEMU's block/vmdk.c for what QEMU accepts.  Writers differ in where the real
header lives:

  VMware, VirtualBox, vmdkstream   header gdOffset = GD_AT_END; the header
                                   copy with the real gdOffset is the footer:
                                   footer marker, footer, end-of-stream marker
                                   in the file's last 3 sectors (as QEMU
                                   reads it)
  qemu-img 7.x                     gdOffset in the header at sector 0, every
                                   grain table preallocated, no footer

qemu-img convert walks every grain of the virtual disk (16M grains for
1 TiB); here only the grain directory and the grain tables are read, in
large batched preads, all-zero tables are skipped with one comparison, and
only stored grains are read and inflated, on a thread pool (zlib releases the
GIL).  Writes are positional, so order does not matter; all-zero grains and
4 KiB zero runs inside a grain are left as holes.  Memory is bounded by the
batches in flight.  Everything read lies inside the member's byte range (the
member may sit inside an OVA tar); any inconsistency raises DiskError and
removes the output.
"""

import collections
import concurrent.futures
import os
import sys
import threading
import zlib
from array import array
from typing import Callable, Deque, Iterator, List, Optional, Tuple, Union

# The format's layout is declared once, in the writer.
from ganeti_ovf.disks.vmdkstream import (COMPRESS_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS,
                                   GD_AT_END, GRAIN_MARKER, HEADER, MAGIC,
                                   MARKER_EOS, MARKER_FOOTER, META_MARKER, SECTOR)
from ganeti_ovf.disks import deflate
from ganeti_ovf.disks.formats import open_image
from ganeti_ovf.disks.target import create_sparse, pwrite_all
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

FLAG_ZERO_GRAIN = 1 << 2  # a grain table entry of 1 means "reads as zeros"
GTE_ZEROED = 1
MAX_GTES_PER_GT = 512  # QEMU refuses bigger grain tables
# QEMU accepts grains up to 1 GiB; every writer uses 64 KiB.  A grain is held
# inflated in memory (plus twice its size compressed) per task in flight, so
# the bound keeps memory small.
MAX_GRAIN_BYTES = 16 * 1024 ** 2


PAGE = 4096  # zero runs of this size inside a grain become holes
META_READ = 256 * 1024  # grain directory and grain tables are read this much at once
BATCH_BYTES = 1024 ** 2  # compressed bytes read per task
MAX_THREADS = 8

Progress = Callable[[float], None]
Zero = Callable[[int, int], None]  # zero(offset, length) on the output
Buffer = Union[bytes, bytearray, memoryview]
_Grain = Tuple[int, int]  # (file sector of the marker, grain index)


class Geometry:
    """The header fields that matter, validated."""

    def __init__(self, name: str, fields: tuple, size: int) -> None:
        (magic, version, flags, capacity, grain_sectors, _, _, gtes, _,
         gd_offset, _, _, _, compression) = fields
        if magic != MAGIC:
            raise DiskError("%s: bad VMDK magic %r" % (name, magic))
        if version not in (1, 2, 3):
            raise DiskError("%s: unsupported VMDK version %d" % (name, version))
        if not (flags & FLAG_COMPRESSED and flags & FLAG_MARKERS) \
                or compression != COMPRESS_DEFLATE:
            raise DiskError("%s: not a streamOptimized VMDK (flags %#x, compression %d):"
                            " need deflate-compressed grains with markers"
                            % (name, flags, compression))
        max_grain_sectors = MAX_GRAIN_BYTES // SECTOR
        if not 0 < grain_sectors <= max_grain_sectors or grain_sectors & (grain_sectors - 1):
            raise DiskError("%s: VMDK grain size %d sectors is not a power of two up to %d"
                            % (name, grain_sectors, max_grain_sectors))
        if not 0 < gtes <= MAX_GTES_PER_GT:
            raise DiskError("%s: VMDK numGTEsPerGT %d is not 1..%d"
                            % (name, gtes, MAX_GTES_PER_GT))
        if capacity <= 0:
            raise DiskError("%s: VMDK capacity is zero" % name)
        self.flags = flags
        self.capacity = capacity * SECTOR
        self.grain_sectors = grain_sectors
        self.grain = grain_sectors * SECTOR
        self.gtes = gtes
        self.grains = -(-capacity // grain_sectors)
        self.num_gts = -(-self.grains // gtes)
        self.gd_offset = gd_offset * SECTOR if gd_offset != GD_AT_END else -1
        self.zero_entries = bool(flags & FLAG_ZERO_GRAIN)
        if self.gd_offset >= 0 and (gd_offset == 0
                                    or self.gd_offset + self.num_gts * 4 > size):
            raise DiskError("%s: VMDK grain directory (%d entries at sector %d) lies"
                            " outside the file" % (name, self.num_gts, gd_offset))

    def stored(self, sector: int) -> bool:
        """Whether a grain table entry names a stored grain (not 0, and not
        1 where the header says 1 means "reads as zeros")."""
        return bool(sector) and not (self.zero_entries and sector == GTE_ZEROED)


def worker_count(threads: int) -> int:
    """Threads for a conversion: `threads`, 0 meaning one per processor,
    at most MAX_THREADS."""
    return min(threads or os.cpu_count() or 1, MAX_THREADS)


class Source:
    """Positional reads inside the member's byte range only."""

    def __init__(self, fd: int, member: Member) -> None:
        self.fd = fd
        self.name = member.name
        self.base = member.offset
        self.size = member.size

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DiskError("%s: %s (%d bytes at %d) lies outside the file"
                            % (self.name, what, length, offset))
        try:
            data = os.pread(self.fd, length, self.base + offset)
        except OSError as err:
            raise DiskError("%s: cannot read %s: %s"
                            % (self.name, what, err.strerror)) from None
        if len(data) != length:
            raise DiskError("%s: file ends inside %s" % (self.name, what))
        return data

    def read_run(self, offset: int, length: int, what: str) -> bytes:
        """read() of a run of several structures, each of which check()
        is then told of (only those count: a subclass may judge them)."""
        return self.read(offset, length, what)

    def check(self, offset: int, length: int, what: str) -> None:
        """A structure of `length` bytes at `offset` that is used."""


def _footer_fields(src: Source) -> Optional[tuple]:
    """The footer header, or None when the file does not end in a footer."""
    if src.size < 4 * SECTOR:
        return None
    tail = src.read(src.size - 3 * SECTOR, 3 * SECTOR, "VMDK footer")
    _, marker_size, marker_type = META_MARKER.unpack_from(tail, 0)
    eos_sectors, eos_size, eos_type = META_MARKER.unpack_from(tail, 2 * SECTOR)
    if marker_size or marker_type != MARKER_FOOTER or tail[SECTOR:SECTOR + 4] != MAGIC:
        return None
    if eos_sectors or eos_size or eos_type != MARKER_EOS:
        return None
    return HEADER.unpack_from(tail, SECTOR)


def read_geometry(src: Source) -> Geometry:
    head = HEADER.unpack(src.read(0, HEADER.size, "VMDK header"))
    header = Geometry(src.name, head, src.size)
    footer = _footer_fields(src)
    if footer is None:
        if header.gd_offset < 0:
            raise DiskError("%s: VMDK grain directory is at the end but the file has no"
                            " footer (truncated?)" % src.name)
        return header
    found = Geometry(src.name, footer, src.size)
    if (found.capacity, found.grain, found.gtes) != \
            (header.capacity, header.grain, header.gtes):
        raise DiskError("%s: VMDK footer (capacity %d, grain %d) does not match the"
                        " header (capacity %d, grain %d)" % (
                            src.name, found.capacity, found.grain,
                            header.capacity, header.grain))
    if found.gd_offset < 0:
        raise DiskError("%s: VMDK footer has no grain directory offset" % src.name)
    # QEMU reads the footer only when the header defers to it; when both
    # give a grain directory, the header's is the one QEMU uses.
    return header if header.gd_offset >= 0 else found


def _words(data: bytes) -> array:
    table = array("I", data)
    if sys.byteorder != "little":
        table.byteswap()
    return table


def grain_tables(src: Source, geo: Geometry) -> Iterator[Tuple[int, array]]:
    """Yield (table index, its entries) for every grain table holding data."""
    gt_bytes = geo.gtes * 4
    zero_gt = bytes(gt_bytes)
    step = META_READ // 4
    for first in range(0, geo.num_gts, step):
        count = min(step, geo.num_gts - first)
        gd = _words(src.read(geo.gd_offset + first * 4, count * 4,
                             "VMDK grain directory"))
        present = sorted((sector, first + i) for i, sector in enumerate(gd) if sector)
        # Tables usually lie one after another: read runs of them at once.
        pos = 0
        while pos < len(present):
            start = present[pos][0] * SECTOR
            end = pos + 1
            while end < len(present) and \
                    present[end][0] * SECTOR - start + gt_bytes <= META_READ:
                end += 1
            run = present[pos:end]
            length = run[-1][0] * SECTOR + gt_bytes - start
            for sector, index in run:
                if sector * SECTOR + gt_bytes > src.size:
                    raise DiskError("%s: VMDK grain directory entry %d points past the"
                                    " end of the file (sector %d)"
                                    % (src.name, index, sector))
                # Each table the directory names is used, an all-zero one
                # too (it says "no grain here").
                src.check(sector * SECTOR, gt_bytes, "VMDK grain table %d" % index)
            block = src.read_run(start, length, "VMDK grain tables")
            if block != bytes(length):
                for sector, index in run:
                    rel = sector * SECTOR - start
                    raw = block[rel:rel + gt_bytes]
                    if raw != zero_gt:
                        yield index, _words(raw)
            pos = end


def _batches(src: Source, geo: Geometry, index: int, table: array) -> List[List[_Grain]]:
    """Group one table's stored grains by file position into read batches."""
    base = index * geo.gtes
    grains: List[_Grain] = []
    for i, sector in enumerate(table):
        if not geo.stored(sector):
            continue
        if base + i >= geo.grains:
            raise DiskError("%s: VMDK grain table %d has a grain past the capacity"
                            " (grain %d of %d)" % (src.name, index, base + i, geo.grains))
        if sector * SECTOR + GRAIN_MARKER.size > src.size:
            raise DiskError("%s: VMDK grain table %d entry %d points past the end of"
                            " the file (sector %d)" % (src.name, index, i, sector))
        grains.append((sector, base + i))
    grains.sort()
    batches: List[List[_Grain]] = []
    for grain in grains:
        if batches and (grain[0] - batches[-1][0][0]) * SECTOR < BATCH_BYTES:
            batches[-1].append(grain)
        else:
            batches.append([grain])
    return batches


class GrainWriter:
    """Inflates grains and writes them into the raw disk `out` (`dest` in
    messages), from any thread.  Owns the checks on what a grain inflates
    to and the zero handling; shared by the reader below and vmdkflow.py.
    `name` names the image in messages."""

    def __init__(self, name: str, geo: Geometry, out: int, dest: str,
                 zero: Optional[Zero] = None) -> None:
        self.name = name
        self.geo = geo
        self.out = out
        self.dest = dest
        self.zero = zero  # None: the output already reads as zeros
        self.zero_grain = bytes(geo.grain)
        self.zero_page = bytes(PAGE)
        # Compressed data may not exceed twice the grain (QEMU's bound).
        self.max_compressed = 2 * geo.grain - GRAIN_MARKER.size
        # One writer at a time: threads writing one file at once spin on its
        # inode lock (perf: a fifth of the CPU in rwsem_spin_on_owner) where
        # they could be inflating.
        self._write_lock = threading.Lock()

    def _inflate_zlib(self, data: Buffer, sector: int) -> bytes:
        """Python's zlib: without libdeflate, and to say what is wrong."""
        name, geo = self.name, self.geo
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(data, geo.grain)
        except zlib.error as err:
            raise DiskError("%s: VMDK grain at sector %d: bad deflate data: %s"
                            % (name, sector, err)) from None
        if inflater.unconsumed_tail:
            raise DiskError("%s: VMDK grain at sector %d inflates beyond the grain size"
                            " of %d" % (name, sector, geo.grain))
        if not inflater.eof:
            raise DiskError("%s: VMDK grain at sector %d: deflate data is truncated"
                            % (name, sector))
        return raw

    def inflate_and_write(self, grain: int, sector: int, data: Buffer) -> None:
        """Grain number `grain`, stored at file sector `sector` as `data`
        (its deflated bytes): inflated, checked and written."""
        name, geo = self.name, self.geo
        position = grain * geo.grain
        raw = deflate.inflate_zlib(data, geo.grain)  # libdeflate: 3x zlib's speed
        if raw is None:
            raw = self._inflate_zlib(data, sector)
        remaining = geo.capacity - position
        # QEMU wants whole grains; a shorter last grain (capacity not a
        # multiple of the grain) is what some writers store: accept both.
        if len(raw) != geo.grain and len(raw) != remaining:
            raise DiskError("%s: VMDK grain at sector %d inflates to %d bytes, not %d"
                            % (name, sector, len(raw), geo.grain))
        limit = min(len(raw), remaining)
        if raw == self.zero_grain:
            if self.zero is not None:
                self.zero(position, limit)
            return
        if self.zero is not None:  # every byte must be written: no holes
            self._write(raw[:limit], position)
        else:
            self._write_data_pages(raw, limit, position)

    def _write_data_pages(self, raw: bytes, limit: int, position: int) -> None:
        """Write raw[:limit] at `position`, leaving its zero pages as holes:
        each run of data pages is written once."""
        page, run = 0, -1
        while page < limit:
            zero = raw[page:page + PAGE] == self.zero_page
            if zero and run >= 0:
                self._write(raw[run:page], position + run)
                run = -1
            elif not zero and run < 0:
                run = page
            page += PAGE
        if run >= 0:
            self._write(raw[run:limit], position + run)

    def _write(self, data: bytes, position: int) -> None:
        with self._write_lock:
            pwrite_all(self.out, data, position, self.dest)


class _Converter(GrainWriter):
    """Reads, inflates and writes batches of grains (runs on pool threads)."""

    def __init__(self, src: Source, geo: Geometry, out: int, dest: str,
                 zero: Optional[Zero] = None) -> None:
        super().__init__(src.name, geo, out, dest, zero)
        self.src = src

    def run(self, batch: List[_Grain]) -> None:
        name = self.src.name
        start = batch[0][0] * SECTOR
        end = min(batch[-1][0] * SECTOR + GRAIN_MARKER.size + self.geo.grain + SECTOR,
                  self.src.size)
        block = self.src.read(start, end - start, "VMDK grains")
        for sector, grain in batch:
            rel = sector * SECTOR - start
            lba, size = GRAIN_MARKER.unpack_from(block, rel)
            if lba != grain * self.geo.grain_sectors:
                raise DiskError("%s: VMDK grain marker at sector %d says LBA %d, its grain"
                                " table entry says %d" % (name, sector, lba,
                                                          grain * self.geo.grain_sectors))
            if not 0 < size <= self.max_compressed:
                raise DiskError("%s: VMDK grain at sector %d has compressed size %d"
                                " (1..%d allowed)" % (name, sector, size,
                                                      self.max_compressed))
            rel += GRAIN_MARKER.size
            if rel + size <= len(block):
                data = memoryview(block)[rel:rel + size]
            else:
                data = memoryview(self.src.read(sector * SECTOR + GRAIN_MARKER.size,
                                                size, "VMDK grain data"))
            self.inflate_and_write(grain, sector, data)


def convert_stream_optimized(member: Member, dest: str, virtual_size: int,
                             threads: int = 0,
                             progress: Optional[Progress] = None) -> None:
    """Write the streamOptimized VMDK `member` to the new sparse raw file `dest`.

    `dest` is created exclusively (mode 0600) and ends `virtual_size` bytes
    long, which must be the VMDK's capacity.  threads 0 means one per
    processor (at most MAX_THREADS).  progress(percent) is called as grain
    tables are done.  Raises DiskError, naming the member, for any
    inconsistency in the image or a read or write failure; no `dest` is left
    behind then.
    """
    out = create_sparse(dest, virtual_size)
    try:
        write_stream_optimized(member, out, dest, virtual_size, threads=threads,
                               progress=progress)
    except BaseException:
        os.close(out)
        os.unlink(dest)
        raise
    os.close(out)


def write_stream_optimized(member: Member, out: int, dest: str, virtual_size: int,
                           zero: Optional[Zero] = None, threads: int = 0,
                           progress: Optional[Progress] = None) -> None:
    """Write the streamOptimized VMDK `member` into the open raw disk `out`
    (named `dest` in messages), at least `virtual_size` bytes long.

    With `zero` None the disk must already read as zeros and only data is
    written; otherwise every byte of the virtual disk is written, the
    ranges without data through zero(offset, length).
    """
    src = Source(open_image(member), member)
    geo = read_geometry(src)
    if geo.capacity != virtual_size:
        raise DiskError("%s: VMDK capacity %d differs from the virtual size %d"
                        % (member.name, geo.capacity, virtual_size))
    _convert(src, geo, _Converter(src, geo, out, dest, zero), threads, progress)


def _zero_grains(geo: Geometry, first: int, end: int, zero: Zero) -> None:
    """Zero grains [first, end): a non-empty run whose first grain is inside
    the disk (the last grain may end past the capacity: cut there)."""
    start = first * geo.grain
    zero(start, min(end * geo.grain, geo.capacity) - start)


def _zero_unstored(geo: Geometry, index: int, table: array, zero: Zero) -> None:
    """Zero the runs of grains table `index` does not store."""
    base = index * geo.gtes
    count = min(geo.gtes, geo.grains - base)
    run = -1
    for i in range(count):
        stored = geo.stored(table[i])
        if not stored and run < 0:
            run = i
        elif stored and run >= 0:
            _zero_grains(geo, base + run, base + i, zero)
            run = -1
    if run >= 0:
        _zero_grains(geo, base + run, base + count, zero)


def _convert(src: Source, geo: Geometry, converter: _Converter, threads: int,
             progress: Optional[Progress]) -> None:
    workers = worker_count(threads)
    in_flight = 2 * workers
    pending: Deque[concurrent.futures.Future] = collections.deque()
    last = 0.0
    zero = converter.zero
    with_data = bytearray(geo.num_gts) if zero is not None else None
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for index, table in grain_tables(src, geo):
                if with_data is not None:
                    with_data[index] = 1
                    _zero_unstored(geo, index, table, zero)
                for batch in _batches(src, geo, index, table):
                    pending.append(pool.submit(converter.run, batch))
                    while len(pending) >= in_flight:
                        pending.popleft().result()
                if progress is not None:
                    done = 100.0 * (index + 1) / geo.num_gts
                    if done >= last + 1:
                        progress(done)
                        last = done
            if with_data is not None:
                _zero_tables_without_data(geo, with_data, zero)
            while pending:
                pending.popleft().result()
        finally:
            for future in pending:  # on error: drop work not yet started
                future.cancel()
    if progress is not None:
        progress(100.0)


def _zero_tables_without_data(geo: Geometry, with_data: bytearray, zero: Zero) -> None:
    """Zero the grains of every table that holds no data, run by run."""
    index = 0
    while index < geo.num_gts:
        if with_data[index]:
            index += 1
            continue
        end = index
        while end < geo.num_gts and not with_data[end]:
            end += 1
        _zero_grains(geo, index * geo.gtes, end * geo.gtes, zero)
        index = end
