"""Write a raw disk image as a streamOptimized VMDK, fast and in bounded memory.

This module owns the streamOptimized layout (the VMDK variant VMware requires
inside OVF/OVA packages).  References: VMware "Virtual Disk Format 5.0",
sections "Hosted Sparse Extent Header" and "Stream-Optimized Compressed
Sparse Extents"; QEMU's block/vmdk.c for what QEMU accepts.  The stream is
written strictly in order, so it can go straight into an OVA tar member:

  sector 0        SparseExtentHeader, gdOffset = GD_AT_END
  sector 1        embedded descriptor (DESC_MIN_SECTORS or more, NUL padded)
  ...             zero padding up to overHead (a grain boundary, as VMware)
  per grain       marker {lba u64, size u32} + zlib stream, padded to 512
  per 512 grains  GT marker {4, 0, type 1} + the grain table (4 sectors)
  at the end      GD marker {n, 0, type 2} + grain directory,
                  footer marker {1, 0, type 3} + header copy with gdOffset,
                  end-of-stream marker {0, 0, type 0}

Readers that honour GD_AT_END (QEMU, VMware) find the footer 1536 bytes
before the end of the file.  All-zero grains are not stored (GT entry 0) and a
grain table with no stored grain is not written (GD entry 0); holes in the
source are skipped with SEEK_DATA/SEEK_HOLE without being read.

Grains are independent zlib streams, so batches of grains are read and
compressed on a thread pool (see deflate.py) while the calling thread writes
finished batches in order.  A worker reads a batch into its own input
buffer and deflates each grain straight into the batch's output buffer,
behind its marker: one read, one write and no copy per grain, few Python
steps between the foreign calls (which run without the GIL).  Both kinds of
buffer are reused, as fresh megabytes cost page faults.  Memory is bounded
by the batches in flight plus one pending grain table and the grain
directory (4 bytes per 32 MiB of disk).
"""

import collections
import concurrent.futures
import os
import struct
import sys
import threading
import zlib
from array import array
from typing import BinaryIO, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from ganeti_ovf.disks import deflate, sparse
from ganeti_ovf.errors import DiskError, OptionError

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KiB grains, as VMware and QEMU write them
GRAIN = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512
GT_BYTES = GTES_PER_GT * 4
GT_SECTORS = GT_BYTES // SECTOR
DESC_MIN_SECTORS = 20  # VMware reserves 10 KiB for an embedded descriptor

MAGIC = b"KDMV"
VERSION = 3  # what VMware writes for streamOptimized
FLAG_NL_DETECT = 1 << 0
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1
GD_AT_END = 0xFFFFFFFFFFFFFFFF

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

MAX_OFFSET_SECTOR = 0xFFFFFFFF  # GT and GD entries are 32-bit sector numbers

# SparseExtentHeader after the magic: version, flags, capacity, grainSize,
# descriptorOffset, descriptorSize, numGTEsPerGT, rgdOffset, gdOffset,
# overHead, uncleanShutdown, the four line-detection characters,
# compressAlgorithm; 433 bytes of zero padding follow.
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
GRAIN_MARKER = struct.Struct("<QI")  # lba, compressed size; data follows
META_MARKER = struct.Struct("<QII")  # numSectors, size 0, type; padded

# 1 MiB of input per task: few enough tasks that the Python around each
# (a future, a read, a write) stays small; small enough to bound memory.
BATCH_GRAINS = 16
# Each thread costs a compressor and a malloc arena; 8 threads already go
# faster than disks write (~250 MB/s each) and keep the peak RSS near 35 MiB.
MAX_THREADS = 8

# ddb.adapterType values the VMDK specification lists, with the heads of
# the geometry VMware reports for them (IDE uses the ATA 16-head geometry).
ADAPTER_HEADS = {"ide": 16, "buslogic": 255, "lsilogic": 255,
                 "legacyESX": 255}
GEOMETRY_SECTORS = 63
IDE_MAX_CYLINDERS = 16383

ZERO_GRAIN = bytes(GRAIN)
ZERO_SECTOR = bytes(SECTOR)

Progress = Callable[[int, int], None]
Batch = Tuple[int, bytearray, int, List[Tuple[int, int]]]  # first, out, used, grains


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _header(capacity_sectors: int, desc_sectors: int, overhead: int,
            gd_offset: int) -> bytes:
    packed = HEADER.pack(
        MAGIC, VERSION, FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity_sectors, GRAIN_SECTORS, 1, desc_sectors, GTES_PER_GT,
        0, gd_offset, overhead, 0, b"\n \r\n", COMPRESS_DEFLATE)
    return packed.ljust(SECTOR, b"\0")


def _marker(num_sectors: int, marker_type: int) -> bytes:
    return META_MARKER.pack(num_sectors, 0, marker_type).ljust(SECTOR, b"\0")


def _descriptor(name: str, capacity_sectors: int, adapter_type: str,
                hw_version: int) -> bytes:
    heads = ADAPTER_HEADS[adapter_type]
    cylinders = capacity_sectors // (heads * GEOMETRY_SECTORS)
    if adapter_type == "ide":
        cylinders = min(cylinders, IDE_MAX_CYLINDERS)
    # CID identifies the content; QEMU picks it at random, we derive it so
    # the same input always gives the same bytes.  ffffffff means "none".
    cid = zlib.crc32(f"{name}:{capacity_sectors}".encode()) or 1
    if cid == 0xFFFFFFFF:
        cid = 0xFFFFFFFE
    text = (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity_sectors} SPARSE "{name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.virtualHWVersion = "{hw_version}"\n'
        f'ddb.geometry.cylinders = "{max(cylinders, 1)}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{GEOMETRY_SECTORS}"\n'
        f'ddb.adapterType = "{adapter_type}"\n'
    )
    return text.encode("ascii")


def _default_name(source_path: str) -> str:
    base = os.path.basename(source_path.rstrip("/")) or "disk"
    base = "".join(c if c.isascii() and c.isprintable() and c != '"' else "_"
                   for c in base)
    return base if base.endswith(".vmdk") else base + ".vmdk"


def _batches(runs: Iterator[Tuple[int, int]]) -> Iterator[Tuple[int, int]]:
    """Turn byte ranges into (first grain, count) batches of whole grains.

    Batches never straddle a BATCH_GRAINS boundary, so never a grain table
    boundary either: a batch's grains all belong to one grain table.
    """
    def grain_runs() -> Iterator[Tuple[int, int]]:
        pending: Optional[List[int]] = None
        for start, end in runs:
            first, stop = start // GRAIN, _round_up(end, GRAIN) // GRAIN
            if pending is not None and first <= pending[1]:
                pending[1] = max(pending[1], stop)  # touching: merge
                continue
            if pending is not None:
                yield pending[0], pending[1]
            pending = [first, stop]
        if pending is not None:
            yield pending[0], pending[1]

    for first, stop in grain_runs():
        while first < stop:
            end = min(stop, (first // BATCH_GRAINS + 1) * BATCH_GRAINS)
            yield first, end - first
            first = end


class _Writer:
    """The sequential side: output position, pending grain table, GD."""

    def __init__(self, out: BinaryIO, capacity_sectors: int) -> None:
        self._out = out
        self.written = 0
        self._capacity_sectors = capacity_sectors
        self._gt_index = -1
        self._gt = array("I", bytes(GT_BYTES))
        self._gt_used = False
        self._gd: Dict[int, int] = {}  # only grain tables actually written

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                count = self._out.write(view)
            except OSError as err:
                raise DiskError(f"{getattr(self._out, 'name', 'output')}:"
                                f" cannot write the VMDK stream:"
                                f" {err.strerror or err}")
            # Buffered files write everything; a raw file may write less;
            # a hashing wrapper may return None, meaning it took it all.
            if count is None or count >= len(view):
                break
            view = view[count:]
        self.written += len(data)

    def _sector(self) -> int:
        sector = self.written // SECTOR
        if sector > MAX_OFFSET_SECTOR:
            raise DiskError("VMDK stream: output passes 2 TiB, beyond the"
                            " 32-bit sector offsets of grain tables")
        return sector

    def add_batch(self, first: int, blob: memoryview,
                  grains: List[Tuple[int, int]]) -> None:
        gt_index = first // GTES_PER_GT
        if gt_index != self._gt_index:
            self.flush_gt()
            self._gt_index = gt_index
        if grains:
            base = self._sector()
            for grain, rel_sector in grains:
                self._gt[grain % GTES_PER_GT] = base + rel_sector
            self._gt_used = True
            self.write(blob)
            self._sector()  # the last grain must be addressable too

    def flush_gt(self) -> None:
        if not self._gt_used:
            return
        self.write(_marker(GT_SECTORS, MARKER_GT))
        self._gd[self._gt_index] = self._sector()
        gt = self._gt
        if sys.byteorder != "little":
            gt = array("I", gt)
            gt.byteswap()
        self.write(gt.tobytes())
        self._gt = array("I", bytes(GT_BYTES))
        self._gt_used = False

    def finish(self, header_args: Tuple[int, int, int]) -> None:
        """Write the last grain table, the GD, the footer and end marker."""
        self.flush_gt()
        gd_entries = -(-self._capacity_sectors
                       // (GTES_PER_GT * GRAIN_SECTORS))
        gd_sectors = _round_up(gd_entries * 4, SECTOR) // SECTOR
        self.write(_marker(gd_sectors, MARKER_GD))
        gd_offset = self._sector()
        chunk_entries = 65536  # write a huge GD in pieces, not all at once
        tables = sorted(self._gd.items())
        pos = 0
        for start in range(0, gd_entries, chunk_entries):
            chunk = array("I", bytes(4 * min(chunk_entries,
                                             gd_entries - start)))
            while pos < len(tables) and tables[pos][0] < start + len(chunk):
                chunk[tables[pos][0] - start] = tables[pos][1]
                pos += 1
            if sys.byteorder != "little":
                chunk.byteswap()
            self.write(chunk.tobytes())
        self.write(bytes(gd_sectors * SECTOR - gd_entries * 4))
        capacity_sectors, desc_sectors, overhead = header_args
        self.write(_marker(1, MARKER_FOOTER))
        self.write(_header(capacity_sectors, desc_sectors, overhead,
                           gd_offset))
        self.write(ZERO_SECTOR)  # end-of-stream marker: all fields zero


def _read_exact(fd: int, view: memoryview, offset: int, path: str) -> int:
    """Fill view from offset; return the bytes read (fewer at the end)."""
    done = 0
    while done < len(view):
        try:
            count = os.preadv(fd, [view[done:]], offset + done)
        except OSError as err:
            raise DiskError(f"{path}: cannot read at offset {offset + done}:"
                            f" {err.strerror}")
        if count == 0:
            break
        done += count
    return done


def _check_options(threads: int, adapter_type: str, hw_version: int,
                   name: str) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) \
            or threads < 0:
        raise OptionError(f"threads: {threads!r} is not a count (0 = all"
                          " processors)")
    if adapter_type not in ADAPTER_HEADS:
        raise OptionError(f"ddb.adapterType: unknown adapter {adapter_type!r}"
                          f" (one of {', '.join(sorted(ADAPTER_HEADS))})")
    if isinstance(hw_version, bool) or not isinstance(hw_version, int) \
            or hw_version < 1:
        raise OptionError(f"ddb.virtualHWVersion: {hw_version!r} is not a"
                          " positive integer")
    if not name or not all(c.isascii() and c.isprintable() and c != '"'
                           for c in name):
        raise OptionError(f"VMDK extent name {name!r}: need printable ASCII"
                          " without double quotes")


def write_stream_optimized(source: sparse.Source, out: BinaryIO, *,
                           capacity: Optional[int] = None,
                           threads: int = 0,
                           level: int = 1,
                           progress: Optional[Progress] = None,
                           adapter_type: str = "lsilogic",
                           hw_version: int = 4,
                           name: Optional[str] = None,
                           backend: Optional[str] = None) -> int:
    """Write source (a raw image: an OpenedFile, read through its descriptor
    only, or a path, opened once) to out as a streamOptimized VMDK.

    out only receives sequential writes from its current position (it may
    be an OVA tar member being filled) and is never sought or told; wrap it
    to hash the bytes.  capacity (bytes, a multiple of 512) defaults to the
    source size rounded up to a sector; grains past the source end read as
    zero.  threads 0 means one per processor; at most MAX_THREADS are used.
    level is the deflate level (0-9); backend picks 'isal', 'libdeflate'
    or 'zlib' (default: deflate.best_backend(level), ISA-L for level 1).
    name is the extent file name recorded in the descriptor (default: the
    source's base name + .vmdk).
    progress(done, total) is called with virtual bytes covered so far.

    Returns the number of bytes written.  Raises DiskError for an unreadable
    source, a bad capacity or a failed write; OptionError for bad options.
    """
    if name is None:
        name = _default_name(source if isinstance(source, str) else source.path)
    _check_options(threads, adapter_type, hw_version, name)
    make_compressor = deflate.compressor_factory(level, backend)
    threads = min(threads or os.cpu_count() or 1, MAX_THREADS)
    with sparse.opened(source) as raw:
        fd, size, source_path = raw.fd, raw.size, raw.path
        if capacity is None:
            capacity = _round_up(size, SECTOR)
        if isinstance(capacity, bool) or not isinstance(capacity, int) \
                or capacity <= 0 or capacity % SECTOR:
            raise DiskError(f"{source_path}: capacity {capacity!r} is not a"
                            f" positive multiple of {SECTOR} bytes")
        if capacity < size:
            raise DiskError(f"{source_path}: source is {size} bytes, larger"
                            f" than the capacity {capacity}")
        return _stream(fd, source_path, size, out, capacity, threads,
                       make_compressor, progress, adapter_type, hw_version,
                       name)


def _stream(fd: int, path: str, size: int, out: BinaryIO, capacity: int,
            threads: int, make_compressor: Callable[[], deflate.Compressor],
            progress: Optional[Progress], adapter_type: str,
            hw_version: int, name: str) -> int:
    capacity_sectors = capacity // SECTOR
    descriptor = _descriptor(name, capacity_sectors, adapter_type, hw_version)
    desc_sectors = max(DESC_MIN_SECTORS,
                       _round_up(len(descriptor), SECTOR) // SECTOR)
    overhead = _round_up(1 + desc_sectors, GRAIN_SECTORS)
    writer = _Writer(out, capacity_sectors)
    writer.write(_header(capacity_sectors, desc_sectors, overhead, GD_AT_END))
    writer.write(descriptor.ljust(desc_sectors * SECTOR, b"\0"))
    writer.write(bytes((overhead - 1 - desc_sectors) * SECTOR))

    local = threading.local()
    slot = _round_up(GRAIN_MARKER.size + deflate.bound(GRAIN), SECTOR)
    spare: List[bytearray] = []  # output buffers written out, to reuse

    def compress_batch(first: int, count: int) -> Batch:
        """Read grains [first, first+count) and return their stored form."""
        compressor = getattr(local, "compressor", None)
        if compressor is None:
            compressor = local.compressor = make_compressor()
            local.buf = bytearray(BATCH_GRAINS * GRAIN)  # reused: input only
        start = first * GRAIN
        # Batches end at the source's last grain at the latest.
        length = count * GRAIN
        buf = local.buf
        view = memoryview(buf)
        got = _read_exact(fd, view[:length], start, path)
        if got < length:  # past the file's end: zeros, not a stale batch
            view[got:length] = bytes(length - got)
        # One output buffer per batch, the compressor writing straight into
        # it after each marker: no copy per grain, one write per batch.
        # Buffers are reused (spare): a fresh one costs page faults.
        try:
            out = spare.pop()
        except IndexError:
            out = bytearray(slot * BATCH_GRAINS)
        grains: List[Tuple[int, int]] = []
        used = 0
        for index in range(length // GRAIN):
            offset = index * GRAIN
            if buf.startswith(ZERO_GRAIN, offset):  # memcmp, no copy
                continue
            grain = first + index
            stored = compressor.compress_into(view[offset:offset + GRAIN], out,
                                              used + GRAIN_MARKER.size)
            GRAIN_MARKER.pack_into(out, used, grain * GRAIN_SECTORS, stored)
            end = used + GRAIN_MARKER.size + stored
            padded = _round_up(end, SECTOR)
            out[end:padded] = ZERO_SECTOR[:padded - end]  # room may hold junk
            grains.append((grain, used // SECTOR))
            used = padded
        return first, out, used, grains

    total_grains = _round_up(capacity, GRAIN) // GRAIN
    in_flight = 2 * threads  # one batch running and one queued per thread
    pending: Deque["concurrent.futures.Future[Batch]"] = collections.deque()

    def take_one() -> None:
        first, out, used, grains = pending.popleft().result()
        writer.add_batch(first, memoryview(out)[:used], grains)
        spare.append(out)  # list.append and pop are atomic: no lock
        if progress is not None:
            done = min(capacity, (first + BATCH_GRAINS) // BATCH_GRAINS
                       * BATCH_GRAINS * GRAIN)
            progress(done, capacity)

    with concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="vmdk-deflate") as pool:
        try:
            for first, count in _batches(sparse.data_runs(fd, size, path)):
                count = min(count, total_grains - first)
                if count <= 0:
                    break
                pending.append(pool.submit(compress_batch, first, count))
                if len(pending) >= in_flight:
                    take_one()
            while pending:
                take_one()
        finally:
            for future in pending:  # on error: drop work not yet started
                future.cancel()
    writer.finish((capacity_sectors, desc_sectors, overhead))
    if progress is not None:
        progress(capacity, capacity)
    return writer.written
