"""gzip files of packages: deflated on every core, inflated by the fastest tool.

Writing (GzipWriter): the stream is cut into MEMBER-byte pieces, each deflated
as its own gzip member (RFC 1952 section 2.2: members concatenate) on a thread
pool with the compressors of deflate.py, and written in order.  `gzip -d`,
Python's gzip, pigz, igzip and zcat read such a file as one stream.  A piece of
zeros (a hole the caller skipped, or zeros it wrote) becomes a member made
once, so holes cost neither reading nor deflating; a piece that does not
compress is stored (deflate.py).  Memory: at most 2 pieces in flight per thread.

Reading (gunzip) takes the fastest way the stream and the machine allow
(PERF-FACTS.md: igzip 1.4 GB/s, libdeflate 0.96, pigz 0.42, zlib 0.34):
  - members written here (their "Go" extra field gives each one's size) are
    found without inflating and inflated in parallel, whole, by libdeflate
    (zlib without it), each checked against its CRC and size;
  - any other stream goes through igzip
    (Debian package isal), else pigz, as a filter (qemu.run_filter: no
    shell, limits, bounded messages), and the output's CRC and size must
    match the stream's last trailer; when they do not (several members, or
    data after the stream) Python's zlib checks the stream strictly, as it
    inflates it when neither tool is installed.  A tool is used even for a
    stream that barely compresses (gzip of a streamOptimized VMDK): on a
    quiet machine it runs beside our writes on the other core (make bench,
    import-folder-gzip: 0.42x the bare tools through igzip, 0.52x in zlib).
With `padding`, zero bytes after the stream are accepted, as gzip -d accepts
them (a tape-padded archive; a gzip-compressed OVA is read so); anything
else after them is still refused.
The stored bytes are read once here; the importer's digest runs beside.
Output goes to the caller's write() in pieces of at most 1 MiB, so a bomb
meets the caller's size limit before it meets memory.
"""

import collections
import concurrent.futures
import os
import stat
import threading
import zlib
from typing import BinaryIO, Callable, Deque, Iterator, List, Optional, Sequence, Tuple, Union

from ganeti_ovf.disks import deflate, qemu
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

MEMBER = 512 * 1024  # input bytes per gzip member
MAX_THREADS = 8  # as vmdkstream: beyond this the disk writes are the limit
# The default level, chosen by measurement (deflate.py's docstring): level 1
# (ISA-L) deflates text to 7 % more than gzip -6 at seven times its speed;
# with libdeflate only, to 1 % less at three times.
DEFAULT_LEVEL = 1

_ZERO_MEMBER = bytes(MEMBER)


class GzipWriter:
    """A multi-member gzip stream of what is written (and skipped) into `out`.

    write(data) and skip(count) (count zero bytes) in any sizes, then
    finish(); abort() drops work not yet done.  `out` receives whole members
    in order through out.write().  Not thread-safe.
    """

    def __init__(self, out: BinaryIO, level: int = DEFAULT_LEVEL, threads: int = 0,
                 backend: Optional[str] = None) -> None:
        self._out = out
        self._make = deflate.compressor_factory(level, backend)
        self._local = threading.local()
        self._threads = min(threads or os.cpu_count() or 1, MAX_THREADS)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._threads, thread_name_prefix="gzip-deflate")
        self._pending: Deque[Union[bytes, "concurrent.futures.Future[bytes]"]] = \
            collections.deque()
        self._buffer = bytearray()
        self._zero_member = self._make().gzip(_ZERO_MEMBER)
        self.size = 0  # bytes taken in
        self.written = 0  # bytes given to `out`
        self.members = 0

    def _compressor(self) -> deflate.Compressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = self._make()
        return compressor

    def _deflate(self, piece: bytes) -> bytes:
        if piece == _ZERO_MEMBER:
            return self._zero_member
        return self._compressor().gzip(piece)

    def _queue(self, item: Union[bytes, "concurrent.futures.Future[bytes]"]) -> None:
        self._pending.append(item)
        self.members += 1
        while len(self._pending) > 2 * self._threads:
            self._take_one()

    def _take_one(self) -> None:
        item = self._pending.popleft()
        data = item if isinstance(item, bytes) else item.result()
        self._out.write(data)
        self.written += len(data)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        count = view.nbytes
        self.size += count
        if self._buffer:
            room = MEMBER - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == MEMBER:
                self._queue(self._pool.submit(self._deflate, bytes(self._buffer)))
                self._buffer = bytearray()
        while len(view) >= MEMBER:
            # A copy: the caller may reuse its buffer once write() returns.
            self._queue(self._pool.submit(self._deflate, bytes(view[:MEMBER])))
            view = view[MEMBER:]
        if view:
            self._buffer += view
        return count

    def skip(self, count: int) -> None:
        """`count` zero bytes; whole members of them cost nothing."""
        if self._buffer:
            fill = min(count, MEMBER - len(self._buffer))
            self.write(bytes(fill))
            count -= fill
        self.size += count - count % MEMBER
        for _ in range(count // MEMBER):
            self._queue(self._zero_member)
        if count % MEMBER:
            self.write(bytes(count % MEMBER))

    def tell(self) -> int:
        return self.size

    def finish(self) -> None:
        """Deflate the rest and write every member; the pool is shut down."""
        try:
            if self._buffer or not self.members:
                # An empty input is still one (empty) member: a valid gzip file.
                self._queue(self._pool.submit(self._deflate, bytes(self._buffer)))
                self._buffer = bytearray()
            while self._pending:
                self._take_one()
        finally:
            self.abort()

    def abort(self) -> None:
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)


def writer_factory(level: int, backend: Optional[str] = None
                   ) -> Callable[[BinaryIO], GzipWriter]:
    """A function wrapping an output in a GzipWriter; the level is checked now."""
    deflate.check_level(level)
    return lambda out: GzipWriter(out, level, backend=backend)


# ------------------------------------------------------------ reading

# Filters in order of preference: (name, program, arguments).  Tests point
# a path at a missing file to see the next one (or zlib) take over.
TOOLS: List[Tuple[str, str, List[str]]] = [
    ("igzip", "/usr/bin/igzip", ["-d", "-c"]),
    ("pigz", "/usr/bin/pigz", ["-d", "-c"]),
]
READ_BLOCK = 1024 ** 2
# zlib's own reads: with input and output blocks both of 1 MiB, glibc's
# malloc maps and unmaps each one (its dynamic mmap threshold): 1.3 s of
# system time per 1.5 GB; smaller reads keep them on the heap.
ZLIB_READ = 256 * 1024
GZIP_MAGIC = b"\x1f\x8b"
_WBITS = 16 + zlib.MAX_WBITS
_HEADER = deflate.GZIP_HEADER
_TRAILER = deflate.GZIP_TRAILER
_MAX_MEMBER_OUT = 8 * MEMBER  # a "Go" member claiming more is not ours
_MASK = 0xFFFFFFFF

Write = Callable[[bytes], None]


class _Stored:
    """The stored bytes of one file: its members (chunks) end to end, from
    byte `start` on."""

    def __init__(self, members: Sequence[Member], start: int = 0) -> None:
        self.members = list(members)
        self.start = start
        self.size = sum(member.size for member in self.members) - start

    def tail(self, offset: int) -> "_Stored":
        return _Stored(self.members, self.start + offset)

    def _ranges(self, offset: int, count: int) -> Iterator[Tuple[Member, int, int]]:
        """(member, position in its file, length) covering [offset, +count)."""
        offset += self.start
        for member in self.members:
            if count <= 0:
                return
            if offset < member.size:
                length = min(count, member.size - offset)
                yield member, member.offset + offset, length
                count -= length
                offset = 0
            else:
                offset -= member.size

    def pread(self, offset: int, count: int) -> bytes:
        return b"".join(self.blocks(offset, count))

    def blocks(self, offset: int = 0, count: Optional[int] = None,
               size: int = READ_BLOCK) -> Iterator[bytes]:
        if count is None:
            count = self.size - offset
        for member, position, length in self._ranges(offset, count):
            yield from read_range(member, position, length, size)


def read_range(member: Member, position: int, length: int,
               size: int = READ_BLOCK) -> Iterator[bytes]:
    """Bytes [position, +length) of `member`'s file, in blocks of `size` (a
    file that ends early is a DiskError)."""
    end = position + length
    while position < end:
        try:
            block = os.pread(member.fd, min(size, end - position), position)
        except OSError as err:
            raise DiskError("%s: cannot read %s: %s"
                            % (member.name, member.path, err.strerror)) from None
        if not block:
            raise DiskError("%s: file %s ends %d bytes early"
                            % (member.name, member.path, end - position))
        position += len(block)
        yield block


def _go_member(stored: _Stored, offset: int) -> Optional[Tuple[int, int]]:
    """(stored size, data size) of a member written here at `offset`, or None."""
    head = stored.pread(offset, _HEADER.size)
    if len(head) < _HEADER.size:
        return None
    fields = _HEADER.unpack(head)
    if fields[:3] != deflate.GZIP_HEADER_FIELDS[:3] or fields[6:9] != (8, b"Go", 4):
        return None
    size = fields[9]
    if not _HEADER.size + _TRAILER.size <= size <= stored.size - offset:
        return None
    data_size = _TRAILER.unpack(stored.pread(offset + size - _TRAILER.size,
                                             _TRAILER.size))[1]
    return (size, data_size) if data_size <= _MAX_MEMBER_OUT else None


def _inflate_members(stored: _Stored, write: Write, name: str,
                     backend: Optional[str]) -> Optional[int]:
    """Inflate "Go" members in parallel, in order; return the offset where
    they stop (None: at the end of the stream)."""
    local = threading.local()
    threads = min(os.cpu_count() or 1, MAX_THREADS)

    def inflate(offset: int, size: int, data_size: int) -> bytes:
        engine = getattr(local, "engine", None)
        if engine is None:
            engine = local.engine = deflate.inflater(backend)
        try:
            return engine.inflate(stored.pread(offset, size), data_size)
        except deflate.GzipMemberError as err:
            raise DiskError("%s: corrupt gzip data in the member at offset %d: %s"
                            % (name, stored.start + offset, err)) from None

    pending: Deque["concurrent.futures.Future[bytes]"] = collections.deque()
    offset, stop = 0, None
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                               thread_name_prefix="gzip-inflate") as pool:
        try:
            while offset < stored.size:
                found = _go_member(stored, offset)
                if found is None:
                    stop = offset
                    break
                pending.append(pool.submit(inflate, offset, *found))
                offset += found[0]
                while len(pending) > 2 * threads:
                    write(pending.popleft().result())
            while pending:
                write(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()
    return stop


def _inflate_zlib(blocks: Iterator[bytes], write: Write, name: str,
                  padding: bool = False) -> None:
    """Stream-inflate with Python's zlib, strictly: several members one after
    another are one file (as gzip -d reads them); anything else after the
    last member (but zeros, with `padding`: then only zeros), a member cut
    short or an empty file is refused."""
    decomp = zlib.decompressobj(_WBITS)
    pending = b""  # bytes after a finished member, too few to judge yet
    empty, padded = True, False
    try:
        for data in blocks:
            empty = False
            data, pending = pending + data, b""
            while data:
                if decomp.eof:
                    # The member ended: only another member may follow (or,
                    # with padding, zeros up to the end).
                    if padding and not data.strip(b"\0"):
                        padded = True
                        break
                    if padded:
                        raise DiskError("%s: trailing data after the gzip stream" % name)
                    if len(data) < len(GZIP_MAGIC):
                        pending = data
                        break
                    if not data.startswith(GZIP_MAGIC):
                        raise DiskError("%s: trailing data after the gzip stream" % name)
                    decomp = zlib.decompressobj(_WBITS)
                write(decomp.decompress(data, READ_BLOCK))
                data = decomp.unused_data if decomp.eof else decomp.unconsumed_tail
    except zlib.error as err:
        raise DiskError("%s: corrupt gzip data: %s" % (name, err)) from None
    if empty:
        raise DiskError("%s: empty gzip file" % name)
    if pending:
        raise DiskError("%s: trailing data after the gzip stream" % name)
    if not decomp.eof:
        raise DiskError("%s: gzip stream is truncated" % name)


class _Tally:
    """CRC32 and size of what passes (mod 2**32, as a gzip trailer has them)."""

    def __init__(self, write: Optional[Write] = None, limit: Optional[int] = None,
                 name: str = "") -> None:
        self.crc = 0
        self.size = 0
        self._write = write
        self._limit = limit
        self._name = name

    def __call__(self, data: bytes) -> None:
        self.crc = deflate.crc32(data, self.crc)
        self.size += len(data)
        if self._limit is not None and self.size > self._limit:
            # zlib goes on where the tool stopped: never inflate without bound.
            raise DiskError("%s: zlib inflates the gzip stream further than %s"
                            % (self._name, self._limit))
        if self._write is not None:
            self._write(data)

    def matches(self, other: Tuple[int, int]) -> bool:
        return (self.crc, self.size & _MASK) == other


def installed_tool() -> Optional[Tuple[str, str, List[str]]]:
    """The first filter of TOOLS that is installed, or None."""
    for tool in TOOLS:
        if os.access(tool[1], os.X_OK):
            return tool
    return None


def _whole_file(stored: _Stored) -> Optional[int]:
    """A descriptor for the tool to read the file itself (saving two copies
    through this process) when the stream is one whole regular file.

    A new open file description of the package's own open file (through
    /proc): the tool reads it from its own offset, and no path is reopened.
    """
    if len(stored.members) != 1 or stored.start:
        return None
    member = stored.members[0]
    try:
        fd = os.open("/proc/self/fd/%d" % member.fd, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # the generic path says why, if it fails too
    info = os.fstat(fd)
    if member.offset or not stat.S_ISREG(info.st_mode) or info.st_size != member.size:
        os.close(fd)
        return None
    return fd


def _data_end(stored: _Stored) -> int:
    """The offset just past the last non-zero byte (0: all zeros), read
    backwards from the end (a block at first, as padding is short)."""
    end, block = stored.size, _TRAILER.size + 512
    while end > 0:
        start = max(0, end - block)
        data = stored.pread(start, end - start)
        kept = len(data.rstrip(b"\0"))
        if kept:
            return start + kept
        end, block = start, READ_BLOCK
    return 0


def _padded_trailers(stored: _Stored) -> List[Tuple[int, int]]:
    """The trailers the stream may end with when zeros follow it: its last
    non-zero byte is at most the trailer's last (its size may end in zeros)."""
    end = _data_end(stored)
    return [_TRAILER.unpack(stored.pread(stop - _TRAILER.size, _TRAILER.size))
            for stop in range(max(end, _TRAILER.size), min(end + _TRAILER.size, stored.size))]


def _inflate_tool(tool: Tuple[str, str, List[str]], stored: _Stored, write: Write,
                  name: str, padding: bool) -> None:
    label, program, args = tool
    trailer = _TRAILER.unpack(stored.pread(stored.size - _TRAILER.size, _TRAILER.size))
    tally = _Tally(write)
    # Generous: deflate expands at most about 1032:1, output at >= 256 MiB/s.
    seconds = 600 + 4 * (stored.size // (1024 ** 2))
    fd = _whole_file(stored)
    try:
        qemu.run_filter(program, args, stored.blocks() if fd is None else fd, tally, name,
                        seconds)
    except qemu.FilterError:
        # zlib's precise reason (truncated, trailing data...), within the
        # output the tool produced (which write() accepted).
        _inflate_zlib(stored.blocks(size=ZLIB_READ),
                      _Tally(limit=tally.size + READ_BLOCK, name=name), name, padding)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    if tally.matches(trailer) or \
            (padding and any(tally.matches(other) for other in _padded_trailers(stored))):
        return  # one member, ending where the file ends (a file that grew
        # while read inflates to more than its trailer says: caught here),
        # or where the zeros after it start
    # Several members, or data after the stream (which the tools ignore).
    check = _Tally(limit=tally.size, name=name)
    _inflate_zlib(stored.blocks(size=ZLIB_READ), check, name, padding)
    if (check.crc, check.size) != (tally.crc, tally.size):
        raise DiskError("%s: %s and zlib inflate the gzip stream differently" % (name, label))


def gunzip(members: Sequence[Member], write: Write, name: str,
           backend: Optional[str] = None, padding: bool = False) -> str:
    """Inflate the gzip file made of `members` (its chunks) into write().

    Returns how ("libdeflate", "zlib", "igzip", "pigz", or two of them joined
    by "+" when a stream of members written here goes on with another).
    Raises DiskError for a corrupt, truncated or empty stream or data after
    it (zeros are not, with `padding`), and passes on write()'s errors (a
    size limit).
    """
    stored = _Stored(members)
    used: List[str] = []
    if stored.size >= _HEADER.size and _go_member(stored, 0) is not None:
        used.append(deflate.inflater(backend).name)
        stop = _inflate_members(stored, write, name, backend)
        if stop is None or (padding and _data_end(stored) <= stop):
            return used[0]
        stored = stored.tail(stop)  # another stream was appended: go on with it
        if stored.pread(0, len(GZIP_MAGIC)) != GZIP_MAGIC:
            raise DiskError("%s: trailing data after the gzip stream" % name)
    tool = installed_tool()
    if tool is None or stored.size < _HEADER.size:
        _inflate_zlib(stored.blocks(size=ZLIB_READ), write, name, padding)
        used.append("zlib")
    else:
        _inflate_tool(tool, stored, write, name, padding)
        used.append(tool[0])
    return "+".join(used)
