"""One-shot deflate of small buffers (zlib or gzip framing), as fast as we can.

This module owns the choice of compressor backend for the VMDK writer and the
gzip writer: ISA-L's igzip (Debian package libisal2, through isal.py), the
libdeflate shared library (libdeflate0) through ctypes, and Python's zlib,
whichever are installed.  All produce streams that any inflate accepts;
their bytes differ.  libdeflate and zlib are deterministic per level; ISA-L's
stateless deflate may choose other, equally valid, matches from run to run.

Levels are zlib's 0..9 (`--compress-level`; the VMDK writer uses 1).  The
backend follows the level (best_backend), by this measurement: 64 KiB grains
of the bench's text (32 MiB), one thread, MB/s of input per second of that
thread's CPU time (so a busy machine does not skew it), medians of 3, on the
2-core machine of PERF-FACTS.md; output / input:

    ISA-L level 1       0.490  398 MB/s    libdeflate level 1  0.456  158 MB/s
    ISA-L level 2       0.462  338 MB/s    libdeflate level 2  0.433  123 MB/s
    ISA-L level 3       0.459  300 MB/s    libdeflate level 6  0.432  101 MB/s
    zlib level 1        0.488   86 MB/s    libdeflate level 9  0.432   78 MB/s
    zlib level 6        0.459   53 MB/s

so levels 1 and 2 go to ISA-L (2.5 times libdeflate's speed, 5-6 times
zlib's; 7 % and 1 % more output than zlib -6) and 3..9 to libdeflate at the
same level (6 % less than zlib -6 at 1.5-2.3 times its speed).  Either stands
in for the other when it is not installed (ISA-L then maps levels 3..9 to
its level 3, ISAL_LEVEL), and zlib for both; naming a backend
(compressor_factory) overrides the choice.  Random grains are stored
(below) at 1.6-2.4 GB/s with ISA-L or libdeflate, 0.6 GB/s with zlib.

It also owns the shortcut for data that does not compress (random bytes,
already compressed files): deflating it costs as much CPU as text for
nothing, so a compressor first deflates two small samples and, when neither
shrinks below STORE_ABOVE, emits deflate's stored blocks (level 0: a copy,
plus the checksum).  Stored blocks are plain deflate: every inflater reads
them.

A Compressor is not thread-safe (ISA-L's and libdeflate's compressors hold
state); make one per thread.  All backends release the GIL while
compressing (ctypes drops it around foreign calls, CPython's zlib around
deflate()), which is what lets a thread pool use every core.
"""

import ctypes
import ctypes.util
import struct
import threading
import zlib
from typing import Callable, Iterator, Optional, Tuple, Union

from ganeti_ovf.disks import isal
from ganeti_ovf.errors import OptionError

Buffer = Union[bytes, bytearray, memoryview]

MIN_LEVEL = 0
MAX_LEVEL = 9  # zlib's range; libdeflate accepts it too (it goes to 12)

# Our level -> ISA-L's (0..3; 0 is ours: stored blocks, never ISA-L's 0).
ISAL_LEVEL = {level: min(level, isal.MAX_LEVEL) for level in range(1, MAX_LEVEL + 1)}
# The levels the default backend choice gives ISA-L (module docstring).
ISAL_DEFAULT_LEVELS = (1, 2)

# Samples: two of SAMPLE bytes (the start and the middle of a buffer).  Text
# samples deflate to about 0.6, random ones to 1.002; STORE_ABOVE sits
# between, so a grain that deflates only a little is stored (a few % bigger)
# rather than spending a full compression on it.
SAMPLE = 2048
STORE_ABOVE = 0.9
_SAMPLE_LEVEL = 1

_LIBDEFLATE_NAMES = ("libdeflate.so.0", "libdeflate.so")
# (function, return type, argument types) of what is used, declared once.
_PROTOTYPES = (
    ("libdeflate_alloc_compressor", ctypes.c_void_p, [ctypes.c_int]),
    ("libdeflate_free_compressor", None, [ctypes.c_void_p]),
) + tuple(
    ("libdeflate_%s_compress" % kind, ctypes.c_size_t,
     [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t])
    for kind in ("zlib", "gzip", "deflate")
) + tuple(
    ("libdeflate_%s_compress_bound" % kind, ctypes.c_size_t,
     [ctypes.c_void_p, ctypes.c_size_t])
    for kind in ("zlib", "gzip", "deflate")
) + (
    ("libdeflate_alloc_decompressor", ctypes.c_void_p, []),
    ("libdeflate_free_decompressor", None, [ctypes.c_void_p]),
    ("libdeflate_crc32", ctypes.c_uint32, [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]),
) + tuple(
    ("libdeflate_%s_decompress_ex" % kind, ctypes.c_int,
     [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
      ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)])
    for kind in ("zlib", "gzip")
)
# zlib's window bits for each framing (RFC 1950 zlib, RFC 1952 gzip, raw).
_WBITS = {"zlib": zlib.MAX_WBITS, "gzip": 16 + zlib.MAX_WBITS, "deflate": -zlib.MAX_WBITS}

# A gzip member header (RFC 1952 2.3) with FEXTRA: magic, CM 8, FLG FEXTRA,
# MTIME 0, XFL 0, OS 255 (unknown), XLEN 8, and one subfield "Go" (SI1 SI2,
# LEN 4) holding the whole member's size, as BGZF's "BC" does (but 32-bit:
# members here exceed BGZF's 64 KiB).  Readers skip subfields they do not
# know; ours use it to find members (gzipstream.py).
GZIP_HEADER = struct.Struct("<2sBBIBBH2sHI")
GZIP_HEADER_FIELDS = (b"\x1f\x8b", 8, 4, 0, 0, 255, 8, b"Go", 4)
GZIP_TRAILER = struct.Struct("<II")  # CRC32 and ISIZE of the member's data


def _candidate_names() -> Iterator[str]:
    # The sonames first: find_library forks `ldconfig -p`, only needed when
    # the library is installed under another name.
    yield from _LIBDEFLATE_NAMES
    found = ctypes.util.find_library("deflate")
    if found:
        yield found


def _load_libdeflate() -> Optional[ctypes.CDLL]:
    """Return the libdeflate library with its prototypes declared, or None."""
    for name in _candidate_names():
        try:
            lib = ctypes.CDLL(name)  # CDLL, not PyDLL: calls release the GIL
        except OSError:
            continue
        try:
            for function, restype, argtypes in _PROTOTYPES:
                getattr(lib, function).restype = restype
                getattr(lib, function).argtypes = argtypes
        except AttributeError:  # too old a library: fall back to zlib
            continue
        return lib
    return None


_LIBDEFLATE = _load_libdeflate()


class _Base:
    """What both backends share: framing choice and the stored shortcut."""

    name = ""

    def __init__(self, level: int) -> None:
        self.level = level
        self.stored = 0  # buffers stored (not compressed) so far

    def _deflate(self, framing: str, data: Buffer, level: int) -> bytes:
        raise NotImplementedError

    def incompressible(self, data: Buffer) -> bool:
        """Whether samples of `data` show it would not compress."""
        if len(data) < 4 * SAMPLE:
            return False
        view = memoryview(data)
        middle = len(data) // 2
        for start in (0, middle):
            sample = view[start:start + SAMPLE]
            if len(self._deflate("deflate", sample, _SAMPLE_LEVEL)) < SAMPLE * STORE_ABOVE:
                return False
        return True

    def _deflate_into(self, framing: str, data: Buffer, level: int,
                      dest: bytearray, offset: int) -> int:
        """_deflate into dest[offset:]; backends that can write there
        directly override this copy."""
        out = self._deflate(framing, data, level)
        dest[offset:offset + len(out)] = out
        return len(out)

    def _level_for(self, data: Buffer) -> int:
        level = self.level
        if level and self.incompressible(data):
            level = 0
        if level == 0:
            self.stored += 1
        return level

    def _compress(self, framing: str, data: Buffer) -> bytes:
        return self._deflate(framing, data, self._level_for(data))

    def compress(self, data: Buffer) -> bytes:
        """A zlib stream (RFC 1950) of `data`."""
        return self._compress("zlib", data)

    def compress_into(self, data: Buffer, dest: bytearray, offset: int) -> int:
        """The zlib stream compress() returns, written into `dest` at
        `offset` instead (dest must hold bound(len(data)) bytes from there;
        bytes past the stream's end in that room may be overwritten);
        returns its length.  Spares the VMDK writer a copy per grain."""
        return self._deflate_into("zlib", data, self._level_for(data), dest, offset)

    def gzip(self, data: Buffer) -> bytes:
        """One gzip member (RFC 1952) of `data`: members concatenate.

        The header's extra field records the member's stored size
        (GZIP_EXTRA), so a reader can find every member without inflating.
        """
        body = self._compress("deflate", data)
        size = GZIP_HEADER.size + len(body) + GZIP_TRAILER.size
        return b"".join((GZIP_HEADER.pack(*GZIP_HEADER_FIELDS, size), body,
                         GZIP_TRAILER.pack(crc32(data), len(data) & 0xFFFFFFFF)))


def bound(size: int) -> int:
    """Room enough for any backend's zlib or raw deflate stream of `size`
    bytes: stored blocks cost 5 bytes per 64 KiB (zlib, ISA-L) or per 5000
    bytes at worst (libdeflate), the framing 6, ISA-L wants 1 KiB spare."""
    return size + size // 1000 + 1024


class ZlibCompressor(_Base):
    """Python's zlib: always available, about half libdeflate's speed."""

    name = "zlib"

    def _deflate(self, framing: str, data: Buffer, level: int) -> bytes:
        if framing == "zlib":
            return zlib.compress(data, level)
        compressor = zlib.compressobj(level, zlib.DEFLATED, _WBITS[framing])
        return compressor.compress(data) + compressor.flush()


class LibdeflateCompressor(_Base):
    """libdeflate's compressors (one per level used) and one output buffer."""

    name = "libdeflate"

    def __init__(self, level: int) -> None:
        super().__init__(level)
        if _LIBDEFLATE is None:
            raise OptionError("libdeflate is not installed (package libdeflate0)")
        self._lib = _LIBDEFLATE
        self._handles: dict = {}
        self._out = ctypes.create_string_buffer(0)
        self._handle(level)  # refuse a bad level now, not at the first buffer
        # Looked up once: a grain costs up to three calls, the Python around
        # each counts (samples are 2 KiB).
        self._compress_fn = {framing: getattr(self._lib, "libdeflate_%s_compress" % framing)
                             for framing in _WBITS}
        self._bounds: dict = {}  # (framing, size, level) -> bound: few sizes

    def _handle(self, level: int) -> int:
        handle = self._handles.get(level)
        if handle is None:
            handle = self._lib.libdeflate_alloc_compressor(level)
            if not handle:
                raise OptionError(f"libdeflate refused compression level {level}")
            self._handles[level] = handle
        return handle

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            self._lib.libdeflate_free_compressor(handle)
        self._handles = {}

    def _deflate(self, framing: str, data: Buffer, level: int) -> bytes:
        bound = self._bound(framing, len(data), level)
        if len(self._out) < bound:
            self._out = ctypes.create_string_buffer(bound)
        return ctypes.string_at(self._out, self._run(framing, data, level, self._out, bound))

    def _deflate_into(self, framing: str, data: Buffer, level: int,
                      dest: bytearray, offset: int) -> int:
        bound = self._bound(framing, len(data), level)
        return self._run(framing, data, level,
                         (ctypes.c_char * bound).from_buffer(dest, offset), bound)

    def _bound(self, framing: str, size: int, level: int) -> int:
        key = (framing, size, level)
        bound = self._bounds.get(key)
        if bound is None:
            bound = getattr(self._lib, "libdeflate_%s_compress_bound" % framing)(
                self._handle(level), size)
            if len(self._bounds) < 64:  # grains and samples; not every tail
                self._bounds[key] = bound
        return bound

    def _run(self, framing: str, data: Buffer, level: int, out: object, bound: int) -> int:
        """Compress into `out` (a ctypes buffer of `bound` bytes); its length."""
        handle = self._handle(level)
        size = len(data)
        if isinstance(data, bytes):
            source: object = data  # ctypes passes a bytes object's buffer
        elif isinstance(data, memoryview) and data.readonly:
            source = bytes(data)  # a view of bytes: from_buffer needs writable
        else:
            # Writable buffers (bytearray and views of it) map without a copy.
            source = (ctypes.c_char * size).from_buffer(data)
        written = self._compress_fn[framing](handle, source, size, out, bound)
        if not written:  # cannot happen with a bound-sized buffer
            raise OptionError("libdeflate: output larger than its own bound")
        return written


class IsalCompressor(_Base):
    """ISA-L's igzip (isal.py): the fastest deflate here, a little larger.

    Stored blocks and the small samples go to a helper (libdeflate, else
    zlib): ISA-L's level 0 still compresses, and each ISA-L call clears its
    hash tables, which costs more than deflating a 2 KiB sample.
    """

    name = "isal"

    def __init__(self, level: int) -> None:
        super().__init__(level)
        if isal.LIB is None:
            raise OptionError("ISA-L is not installed (package libisal2)")
        self._stream = isal.Stream()
        self._helper: _Base = LibdeflateCompressor(0) if _LIBDEFLATE is not None \
            else ZlibCompressor(0)

    def _deflate(self, framing: str, data: Buffer, level: int) -> bytes:
        if level == 0 or len(data) <= SAMPLE:
            return self._helper._deflate(framing, data, level)
        return self._stream.deflate(framing, data, ISAL_LEVEL[level])

    def _deflate_into(self, framing: str, data: Buffer, level: int,
                      dest: bytearray, offset: int) -> int:
        if level == 0 or len(data) <= SAMPLE:
            return self._helper._deflate_into(framing, data, level, dest, offset)
        room = isal.out_bound(len(data))
        out = (ctypes.c_char * room).from_buffer(dest, offset)  # checks the room
        return self._stream.deflate_to(framing, data, ISAL_LEVEL[level],
                                       ctypes.addressof(out), room)


Compressor = Union[ZlibCompressor, LibdeflateCompressor, IsalCompressor]


class GzipMemberError(ValueError):
    """A gzip member that does not inflate to exactly its trailer's size."""


class ZlibInflater:
    """Inflates whole gzip members with Python's zlib."""

    name = "zlib"

    def inflate(self, member: bytes, size: int) -> bytes:
        """The data of one whole gzip member, which must inflate to `size`
        bytes (its ISIZE), CRC checked, with no byte left over.
        Raises GzipMemberError."""
        inflater = zlib.decompressobj(_WBITS["gzip"])
        try:
            data = inflater.decompress(member, size + 1)
        except zlib.error as err:
            raise GzipMemberError(str(err)) from None
        if not inflater.eof or inflater.unused_data or len(data) != size:
            raise GzipMemberError("member does not inflate to its stated size")
        return data


def crc32(data: Buffer, value: int = 0) -> int:
    """zlib.crc32, by libdeflate when installed (several times faster)."""
    if _LIBDEFLATE is None or not isinstance(data, bytes):
        return zlib.crc32(data, value)
    return _LIBDEFLATE.libdeflate_crc32(value, data, len(data))


class LibdeflateInflater:
    """Inflates whole buffers with libdeflate (about 3x zlib's speed): gzip
    members, and the zlib streams of VMDK grains."""

    name = "libdeflate"

    def __init__(self) -> None:
        self._lib = _LIBDEFLATE
        self._handle = self._lib.libdeflate_alloc_decompressor()
        if not self._handle:
            raise MemoryError("libdeflate_alloc_decompressor")

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.libdeflate_free_decompressor(handle)
            self._handle = None

    def inflate_zlib(self, data: Buffer, size: int) -> Optional[bytes]:
        """The data of the zlib stream at the start of `data` (bytes after it
        are ignored, as zlib's unused_data), at most `size` bytes; None when
        it is corrupt, cut short or longer: let zlib say which."""
        out = ctypes.create_string_buffer(size)
        used_in, used_out = ctypes.c_size_t(), ctypes.c_size_t()
        if isinstance(data, memoryview) and not data.readonly:
            data = (ctypes.c_char * len(data)).from_buffer(data)
        elif not isinstance(data, bytes):
            data = bytes(data)
        result = self._lib.libdeflate_zlib_decompress_ex(
            self._handle, data, len(data), out, size, ctypes.byref(used_in),
            ctypes.byref(used_out))
        if result:
            return None
        return out.raw[:used_out.value] if used_out.value != size else out.raw

    def inflate(self, member: bytes, size: int) -> bytes:
        out = ctypes.create_string_buffer(size)
        used_in, used_out = ctypes.c_size_t(), ctypes.c_size_t()
        result = self._lib.libdeflate_gzip_decompress_ex(
            self._handle, member, len(member), out, size, ctypes.byref(used_in),
            ctypes.byref(used_out))
        if result or used_in.value != len(member) or used_out.value != size:
            raise GzipMemberError("corrupt member (libdeflate result %d)" % result)
        return out.raw


Inflater = Union[ZlibInflater, LibdeflateInflater]


_THREAD = threading.local()


def inflate_zlib(data: Buffer, size: int) -> Optional[bytes]:
    """A whole zlib stream (a VMDK grain) by libdeflate, with this thread's
    decompressor; None without libdeflate or when the data is bad (zlib then
    inflates it and says what is wrong)."""
    if _LIBDEFLATE is None:
        return None
    engine = getattr(_THREAD, "inflater", None)
    if engine is None:
        engine = _THREAD.inflater = LibdeflateInflater()
    return engine.inflate_zlib(data, size)


def inflater(backend: Optional[str] = None) -> Inflater:
    """A member inflater (one per thread): libdeflate if installed (unless
    backend is 'zlib'), or zlib.  ISA-L is used for deflating only."""
    if backend != "zlib" and _LIBDEFLATE is not None:
        return LibdeflateInflater()
    return ZlibInflater()


def check_level(level: int) -> None:
    """Refuse a compression level outside 0..9 with an OptionError."""
    if isinstance(level, bool) or not isinstance(level, int) \
            or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise OptionError(f"compression level: {level!r} is not an integer"
                          f" from {MIN_LEVEL} to {MAX_LEVEL}")


def installed() -> Tuple[str, ...]:
    """The backends usable here, fastest first."""
    return tuple(name for name, usable in (("isal", isal.LIB is not None),
                                           ("libdeflate", _LIBDEFLATE is not None),
                                           ("zlib", True)) if usable)


def best_backend(level: int = 1) -> str:
    """The backend that deflates at `level` by default (module docstring):
    ISA-L first for ISAL_DEFAULT_LEVELS, libdeflate first for the others,
    then the other one, then zlib."""
    order = ("isal", "libdeflate") if level in ISAL_DEFAULT_LEVELS \
        else ("libdeflate", "isal")
    usable = installed()
    return next((name for name in order if name in usable), "zlib")


_MAKERS = {"isal": IsalCompressor, "libdeflate": LibdeflateCompressor,
           "zlib": ZlibCompressor}
_PACKAGES = {"isal": "libisal2", "libdeflate": "libdeflate0"}


def compressor_factory(level: int,
                       backend: Optional[str] = None) -> Callable[[], Compressor]:
    """Return a function making one compressor (call it once per thread).

    backend is 'isal', 'libdeflate', 'zlib' or None for best_backend(level).
    """
    check_level(level)
    backend = backend or best_backend(level)
    maker = _MAKERS.get(backend)
    if maker is None:
        raise OptionError(f"compressor backend: unknown backend {backend!r}")
    if backend not in installed():
        raise OptionError(f"compressor backend: {backend} is not installed"
                          f" (package {_PACKAGES[backend]})")
    return lambda: maker(level)
