"""One-shot zlib (RFC 1950) compression of small buffers, as fast as we can.

This module owns the choice of compressor backend for the VMDK writer: the
libdeflate shared library (Debian package libdeflate0) through ctypes when it
is installed, Python's zlib otherwise.  Both produce zlib streams that any
inflate accepts; their bytes differ, so output is deterministic per backend.

A Compressor is not thread-safe (libdeflate's compressor holds state); make
one per thread.  Both backends release the GIL while compressing (ctypes
drops it around foreign calls, CPython's zlib around deflate()), which is
what lets a thread pool use every core.
"""

import ctypes
import ctypes.util
import zlib
from typing import Iterator, Callable, Optional, Union

from ganeti_ovf.errors import OptionError

Buffer = Union[bytes, bytearray, memoryview]

MIN_LEVEL = 0
MAX_LEVEL = 9  # zlib's range; libdeflate accepts it too (it goes to 12)

_LIBDEFLATE_NAMES = ("libdeflate.so.0", "libdeflate.so")


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
            lib.libdeflate_alloc_compressor.restype = ctypes.c_void_p
            lib.libdeflate_alloc_compressor.argtypes = [ctypes.c_int]
            lib.libdeflate_free_compressor.restype = None
            lib.libdeflate_free_compressor.argtypes = [ctypes.c_void_p]
            lib.libdeflate_zlib_compress.restype = ctypes.c_size_t
            lib.libdeflate_zlib_compress.argtypes = [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                ctypes.c_void_p, ctypes.c_size_t]
            lib.libdeflate_zlib_compress_bound.restype = ctypes.c_size_t
            lib.libdeflate_zlib_compress_bound.argtypes = [
                ctypes.c_void_p, ctypes.c_size_t]
        except AttributeError:  # too old a library: fall back to zlib
            continue
        return lib
    return None


_LIBDEFLATE = _load_libdeflate()


class ZlibCompressor:
    """Python's zlib: always available, about half libdeflate's speed."""

    name = "zlib"

    def __init__(self, level: int) -> None:
        self._level = level

    def compress(self, data: Buffer) -> bytes:
        return zlib.compress(data, self._level)


class LibdeflateCompressor:
    """libdeflate's zlib compressor with a reusable output buffer."""

    name = "libdeflate"

    def __init__(self, level: int) -> None:
        if _LIBDEFLATE is None:
            raise OptionError("libdeflate is not installed (package libdeflate0)")
        self._lib = _LIBDEFLATE
        self._handle = self._lib.libdeflate_alloc_compressor(level)
        if not self._handle:
            raise OptionError(f"libdeflate refused compression level {level}")
        self._out = ctypes.create_string_buffer(0)

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.libdeflate_free_compressor(handle)
            self._handle = None

    def compress(self, data: Buffer) -> bytes:
        size = len(data)
        bound = self._lib.libdeflate_zlib_compress_bound(self._handle, size)
        if len(self._out) < bound:
            self._out = ctypes.create_string_buffer(bound)
        if isinstance(data, bytes):
            source: object = data  # ctypes passes a bytes object's buffer
        else:
            # Writable buffers (bytearray and views of it) map without a copy.
            source = (ctypes.c_char * size).from_buffer(data)
        written = self._lib.libdeflate_zlib_compress(
            self._handle, source, size, self._out, bound)
        if not written:  # cannot happen with a bound-sized buffer
            raise OptionError("libdeflate: output larger than its own bound")
        return ctypes.string_at(self._out, written)


Compressor = Union[ZlibCompressor, LibdeflateCompressor]


def check_level(level: int) -> None:
    """Refuse a compression level outside 0..9 with an OptionError."""
    if isinstance(level, bool) or not isinstance(level, int) \
            or not MIN_LEVEL <= level <= MAX_LEVEL:
        raise OptionError(f"compression level: {level!r} is not an integer"
                          f" from {MIN_LEVEL} to {MAX_LEVEL}")


def best_backend() -> str:
    """Name of the fastest backend installed: 'libdeflate' or 'zlib'."""
    return "libdeflate" if _LIBDEFLATE is not None else "zlib"


def compressor_factory(level: int,
                       backend: Optional[str] = None) -> Callable[[], Compressor]:
    """Return a function making one compressor (call it once per thread).

    backend is 'libdeflate', 'zlib' or None for the best installed one.
    """
    check_level(level)
    backend = backend or best_backend()
    if backend == "libdeflate":
        if _LIBDEFLATE is None:
            raise OptionError("compressor backend: libdeflate is not installed"
                              " (package libdeflate0)")
        return lambda: LibdeflateCompressor(level)
    if backend == "zlib":
        return lambda: ZlibCompressor(level)
    raise OptionError(f"compressor backend: unknown backend {backend!r}")
