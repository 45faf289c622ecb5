"""One-shot deflate with ISA-L's igzip (Debian package libisal2), by ctypes.

This module owns the binary interface to libisal.so.2: the one structure the
compressor needs (struct isal_zstream) and the two calls that use it
(isal_deflate_stateless_init, isal_deflate_stateless).  deflate.py builds its
"isal" backend on it; nothing else should call it.

ABI, from igzip_lib.h of ISA-L 2.30 (Debian 12's libisal-dev, read when this
was written; the header is not a dependency).  On x86-64 the public fields
come first, at these offsets, then the private struct isal_zstate:

    0 next_in (uint8_t *)      8 avail_in (u32)     12 total_in (u32)
   16 next_out (uint8_t *)    24 avail_out (u32)    28 total_out (u32)
   32 hufftables (pointer)    40 level (u32)        44 level_buf_size (u32)
   48 level_buf (uint8_t *)   56 end_of_stream (u16) 58 flush (u16)
   60 gzip_flag (u16)         62 hist_bits (u16)    64 internal_state

sizeof(struct isal_zstream) is 82384 there; STREAM_BYTES leaves room for a
larger private state in later versions (the public fields have not moved
since 2.25).  The ctypes structure below declares the public fields and
pads the private state to STREAM_BYTES, so the library writes only into
memory we own.  Only 64-bit little-endian Linux is declared (the library
is built for x86-64 and arm64 in Debian); elsewhere the backend reports
itself absent and deflate.py falls back.

Constants from the same header: gzip_flag IGZIP_DEFLATE 0 (raw deflate),
IGZIP_ZLIB 3 (RFC 1950 header and Adler-32 trailer; present since ISA-L
2.25); compression levels 0..3, where levels 1..3 need a level_buf of
ISAL_DEF_LVLn_DEFAULT bytes (for 1: 4 KiB + 2 x 8 KiB hash + 4 x 64 KiB
tokens = 282624).  isal_deflate_stateless returns COMP_OK 0, or
STATELESS_OVERFLOW -1 when the output does not fit (its worst case is the
input plus stored-block headers: OUT_SLACK covers it).  ISA-L's level 0 is
a fast Huffman-only-ish compressor, not stored blocks: deflate.py makes
stored blocks itself.

The library is stateless per call: a Stream (its structure, level buffer
and output buffer) belongs to one thread; ctypes releases the GIL around
the call, which is what lets a thread pool use every core.
"""

import ctypes
import mmap
import struct
import sys
from typing import Optional, Tuple, Union

Buffer = Union[bytes, bytearray, memoryview]

SONAME = "libisal.so.2"

IGZIP_DEFLATE = 0
IGZIP_ZLIB = 3
FRAMING = {"deflate": IGZIP_DEFLATE, "zlib": IGZIP_ZLIB}
COMP_OK = 0
STATELESS_OVERFLOW = -1
NO_FLUSH = 0

MIN_LEVEL = 0
MAX_LEVEL = 3
_K = 1024
# ISAL_DEF_LVLn_DEFAULT = ISAL_DEF_LVLn_REQ + 4 bytes x 64 K tokens, with
# LVL1_REQ 4 K + 2 x 8 K, LVL2_REQ 4 K + 2 x 32 K, LVL3_REQ 4 K + 16 K + 2 x 32 K.
LEVEL_BUF = {0: 0, 1: 282624, 2: 331776, 3: 348160}

HEADER_SIZE = 82384  # sizeof(struct isal_zstream) in ISA-L 2.30, x86-64
STREAM_BYTES = 128 * _K  # what we allocate: the header's size and room to grow
PUBLIC_BYTES = 64  # offsetof(struct isal_zstream, internal_state)
# A stored block costs 5 bytes per 65535 of input, the framing 18 at most.
OUT_SLACK = 1024


class ZStream(ctypes.Structure):
    """struct isal_zstream: its public fields, then the private state."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_uint32),
        ("total_in", ctypes.c_uint32),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_uint32),
        ("total_out", ctypes.c_uint32),
        ("hufftables", ctypes.c_void_p),
        ("level", ctypes.c_uint32),
        ("level_buf_size", ctypes.c_uint32),
        ("level_buf", ctypes.c_void_p),
        ("end_of_stream", ctypes.c_uint16),
        ("flush", ctypes.c_uint16),
        ("gzip_flag", ctypes.c_uint16),
        ("hist_bits", ctypes.c_uint16),
        ("internal_state", ctypes.c_uint8 * (STREAM_BYTES - PUBLIC_BYTES)),
    ]


# The offsets the library was written against (see the docstring); checked
# at import so a platform with other padding gets no backend, not a crash.
OFFSETS = {"next_in": 0, "avail_in": 8, "total_in": 12, "next_out": 16,
           "avail_out": 24, "total_out": 28, "hufftables": 32, "level": 40,
           "level_buf_size": 44, "level_buf": 48, "end_of_stream": 56,
           "flush": 58, "gzip_flag": 60, "hist_bits": 62,
           "internal_state": PUBLIC_BYTES}


def layout_matches() -> bool:
    """Whether ZStream has the header's offsets here (64-bit, little-endian)."""
    return (struct.calcsize("P") == 8 and sys.byteorder == "little"
            and all(getattr(ZStream, name).offset == offset
                    for name, offset in OFFSETS.items())
            and ctypes.sizeof(ZStream) >= HEADER_SIZE)


def _load() -> Optional[ctypes.CDLL]:
    if not layout_matches():
        return None
    try:
        lib = ctypes.CDLL(SONAME)  # CDLL, not PyDLL: calls release the GIL
        lib.isal_deflate_stateless_init.restype = None
        lib.isal_deflate_stateless_init.argtypes = [ctypes.POINTER(ZStream)]
        lib.isal_deflate_stateless.restype = ctypes.c_int
        lib.isal_deflate_stateless.argtypes = [ctypes.POINTER(ZStream)]
    except (OSError, AttributeError):  # absent, or too old a library
        return None
    return lib


LIB = _load()


class IsalError(RuntimeError):
    """ISA-L refused a call it should not (a bug here, not bad input)."""


class Stream:
    """One thread's ISA-L compressor: the structure and its buffers.

    They live in anonymous mappings, not on the heap: allocated in a
    thread's malloc arena, these long-lived half-megabytes would sit above
    the short-lived batch buffers and keep the arena from shrinking (about
    5 MiB of resident memory per thread, measured).
    """

    def __init__(self) -> None:
        if LIB is None:
            raise IsalError("ISA-L (libisal.so.2, package libisal2) is not usable")
        self._lib = LIB
        self._memory = mmap.mmap(-1, STREAM_BYTES + max(LEVEL_BUF.values()))
        self._stream = ZStream.from_buffer(self._memory)
        self._pointer = ctypes.pointer(self._stream)
        self._level_buf = ctypes.addressof(self._stream) + STREAM_BYTES
        self._out_map = mmap.mmap(-1, mmap.PAGESIZE)
        self._out = ctypes.addressof(ctypes.c_char.from_buffer(self._out_map))

    def _output(self, size: int) -> Tuple[int, int]:
        """The output buffer's address and length, at least `size` bytes."""
        if len(self._out_map) < size:
            self._out = 0
            self._out_map.close()
            self._out_map = mmap.mmap(-1, size)
            self._out = ctypes.addressof(ctypes.c_char.from_buffer(self._out_map))
        return self._out, len(self._out_map)

    def deflate(self, framing: str, data: Buffer, level: int) -> bytes:
        """`data` deflated at ISA-L `level` (0..3) in `framing` ('zlib' or
        'deflate'), as one final block sequence."""
        size = len(data)
        out, out_size = self._output(size + size // 4096 + OUT_SLACK)
        if isinstance(data, bytes):
            keep: object = data
            source = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        elif isinstance(data, memoryview) and data.readonly:
            keep = bytes(data)  # from_buffer needs a writable buffer
            source = ctypes.cast(ctypes.c_char_p(keep), ctypes.c_void_p).value
        else:
            keep = (ctypes.c_char * size).from_buffer(data)  # no copy
            source = ctypes.addressof(keep)
        stream = self._stream
        self._lib.isal_deflate_stateless_init(self._pointer)
        stream.next_in = source
        stream.avail_in = size
        stream.next_out = out
        stream.avail_out = out_size
        stream.level = level
        if LEVEL_BUF[level]:
            stream.level_buf = self._level_buf
            stream.level_buf_size = LEVEL_BUF[level]
        stream.end_of_stream = 1
        stream.flush = NO_FLUSH
        stream.gzip_flag = FRAMING[framing]
        result = self._lib.isal_deflate_stateless(self._pointer)
        del keep  # the input had to live until the call returned
        if result != COMP_OK or stream.avail_in:
            raise IsalError("isal_deflate_stateless returned %d with %d bytes left"
                            % (result, stream.avail_in))
        return ctypes.string_at(out, stream.total_out)
