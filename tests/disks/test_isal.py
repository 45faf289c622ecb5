"""Tests for ganeti_ovf.disks.isal (the ISA-L binding) and the "isal"
backend of deflate.py: the structure layout against the real header, every
output inflated by Python's zlib to exactly its input, and the fallback when
the library is absent.

libisal2 is a runtime dependency and libisal-dev and gcc test dependencies
(Makefile DEB_RUNTIME, DEB_TEST): on this machine nothing here is skipped.
"""

import gzip
import random
import subprocess
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganeti_ovf.disks import deflate, isal
from ganeti_ovf.errors import OptionError

GRAIN = 64 * 1024
WBITS = {"zlib": zlib.MAX_WBITS, "deflate": -zlib.MAX_WBITS}

LAYOUT_PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <isa-l/igzip_lib.h>
#define FIELD(f) printf("%s %zu\n", #f, offsetof(struct isal_zstream, f));
int main(void) {
    FIELD(next_in) FIELD(avail_in) FIELD(total_in) FIELD(next_out)
    FIELD(avail_out) FIELD(total_out) FIELD(hufftables) FIELD(level)
    FIELD(level_buf_size) FIELD(level_buf) FIELD(end_of_stream) FIELD(flush)
    FIELD(gzip_flag) FIELD(hist_bits) FIELD(internal_state)
    printf("sizeof %zu\n", sizeof(struct isal_zstream));
    printf("IGZIP_DEFLATE %d\nIGZIP_ZLIB %d\nCOMP_OK %d\nSTATELESS_OVERFLOW %d\n",
           IGZIP_DEFLATE, IGZIP_ZLIB, COMP_OK, STATELESS_OVERFLOW);
    printf("NO_FLUSH %d\nMAX_LEVEL %d\n", NO_FLUSH, ISAL_DEF_MAX_LEVEL);
    printf("LVL1 %d\nLVL2 %d\nLVL3 %d\n", ISAL_DEF_LVL1_DEFAULT,
           ISAL_DEF_LVL2_DEFAULT, ISAL_DEF_LVL3_DEFAULT);
    return 0;
}
"""


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 8)))
             for _ in range(500)]
    return " ".join(rng.choices(words, k=size // 3)).encode()[:size].ljust(size, b".")


def test_structure_layout_matches_the_header(tmp_path):
    """The offsets, size and constants isal.py declares are the header's."""
    source = tmp_path / "layout.c"
    source.write_text(LAYOUT_PROGRAM)
    program = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(program), str(source)], check=True)
    lines = subprocess.run([str(program)], check=True, capture_output=True,
                           text=True).stdout.split("\n")
    header = {key: int(value) for key, value in (line.split() for line in lines if line)}
    assert {name: header[name] for name in isal.OFFSETS} == isal.OFFSETS
    assert header["sizeof"] == isal.HEADER_SIZE <= isal.STREAM_BYTES
    assert (header["IGZIP_DEFLATE"], header["IGZIP_ZLIB"]) == \
        (isal.FRAMING["deflate"], isal.FRAMING["zlib"])
    assert (header["COMP_OK"], header["STATELESS_OVERFLOW"], header["NO_FLUSH"],
            header["MAX_LEVEL"]) == (isal.COMP_OK, isal.STATELESS_OVERFLOW,
                                     isal.NO_FLUSH, isal.MAX_LEVEL)
    assert [header["LVL%d" % level] for level in (1, 2, 3)] == \
        [isal.LEVEL_BUF[level] for level in (1, 2, 3)]


def test_library_is_usable_here():
    assert isal.layout_matches() and isal.LIB is not None
    assert deflate.installed() == ("isal", "libdeflate", "zlib")


@pytest.mark.parametrize("level", range(isal.MIN_LEVEL, isal.MAX_LEVEL + 1))
@pytest.mark.parametrize("framing", ["zlib", "deflate"])
def test_every_level_and_framing_inflates_to_the_input(level, framing):
    stream = isal.Stream()
    rng = random.Random(level)
    samples = [b"", b"a", bytes(GRAIN), rng.randbytes(GRAIN), text(GRAIN, level),
               rng.randbytes(3 * GRAIN + 17), text(5 * GRAIN + 3, 9)]
    for data in samples:
        for buffer in (data, bytearray(data), memoryview(data),
                       memoryview(bytearray(data))[1:]):
            out = stream.deflate(framing, buffer, level)
            assert zlib.decompress(out, WBITS[framing]) == bytes(buffer)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * GRAIN), st.integers(1, 9))
def test_any_buffer_round_trips_through_the_backend(data, level):
    compressor = deflate.compressor_factory(level, "isal")()
    assert zlib.decompress(compressor.compress(data)) == data
    assert gzip.decompress(compressor.gzip(data)) == data


def test_grains_compress_and_random_ones_are_stored():
    compressor = deflate.compressor_factory(1, "isal")()
    prose, noise = text(GRAIN, 4), random.Random(4).randbytes(GRAIN)
    assert len(compressor.compress(prose)) < GRAIN // 2
    stored = compressor.compress(noise)
    assert (stored[2] >> 1) & 3 == 0  # BTYPE 00 after the zlib header: stored
    assert zlib.decompress(stored) == noise and compressor.stored == 1


def test_default_backend_per_level():
    """ISA-L for levels 1 and 2 (fastest), libdeflate above (smaller)."""
    chosen = [deflate.best_backend(level) for level in range(deflate.MAX_LEVEL + 1)]
    assert chosen == ["libdeflate", "isal", "isal"] + ["libdeflate"] * 7
    assert type(deflate.compressor_factory(1)()).__name__ == "IsalCompressor"


def test_without_isal_the_others_take_over(monkeypatch):
    """libisal2 absent: levels 1-2 fall back to libdeflate, then zlib, and
    asking for ISA-L by name is an OptionError naming the package."""
    monkeypatch.setattr(isal, "LIB", None)
    assert deflate.installed() == ("libdeflate", "zlib")
    assert [deflate.best_backend(level) for level in (1, 2, 6)] == ["libdeflate"] * 3
    with pytest.raises(OptionError, match="isal is not installed.*libisal2"):
        deflate.compressor_factory(1, "isal")
    with pytest.raises(isal.IsalError, match="libisal2"):
        isal.Stream()
    monkeypatch.setattr(deflate, "_LIBDEFLATE", None)
    assert deflate.best_backend(1) == "zlib"
    compressor = deflate.compressor_factory(1)()
    data = text(GRAIN, 5)
    assert compressor.name == "zlib" and zlib.decompress(compressor.compress(data)) == data


def test_without_libdeflate_isal_takes_every_level(monkeypatch):
    monkeypatch.setattr(deflate, "_LIBDEFLATE", None)
    assert [deflate.best_backend(level) for level in range(1, 10)] == ["isal"] * 9
    compressor = deflate.compressor_factory(9)()
    prose, noise = text(GRAIN, 6), random.Random(6).randbytes(GRAIN)
    for data in (prose, noise, b"tiny"):
        assert zlib.decompress(compressor.compress(data)) == data
        assert gzip.decompress(compressor.gzip(data)) == data
    assert compressor.name == "isal" and compressor.stored == 2
