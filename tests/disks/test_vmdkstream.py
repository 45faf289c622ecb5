"""Tests for ganeti_ovf.vmdkstream (and the deflate backends it uses).

Sources are sparse raw files built here with random, zero and text-like
data at known offsets; every output is checked by qemu-img (check, info,
compare, and a convert back to raw compared by sha256).
"""

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import zlib

import pytest
from conftest import ROOT

from ganeti_ovf.disks import deflate, vmdkstream
from ganeti_ovf.errors import DiskError, OptionError

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
GRAIN = vmdkstream.GRAIN


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 8)))
             for _ in range(500)]
    return " ".join(rng.choices(words, k=size // 3)).encode()[:size].ljust(size, b".")


def make_raw(path: str, size: int, pieces) -> str:
    """A sparse raw file of size bytes with (offset, bytes) pieces."""
    with open(path, "wb") as out:
        out.truncate(size)
        for offset, data in pieces:
            out.seek(offset)
            out.write(data)
    return path


def sha256_file(path: str, start: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def qemu_img(*args: str) -> str:
    result = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def write(source: str, target: str, **kwargs) -> int:
    with open(target, "wb") as out:
        return vmdkstream.write_stream_optimized(source, out, **kwargs)


def check_vmdk(source: str, vmdk: str, capacity: int, tmp_path) -> None:
    """qemu-img accepts vmdk and reads back exactly the source."""
    qemu_img("check", "-f", "vmdk", vmdk)
    info = json.loads(qemu_img("info", "-f", "vmdk", "--output=json", vmdk))
    assert info["virtual-size"] == capacity
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    qemu_img("compare", "-f", "raw", "-F", "vmdk", source, vmdk)
    back = str(tmp_path / "back.raw")
    qemu_img("convert", "-f", "vmdk", "-O", "raw", vmdk, back)
    padded = str(tmp_path / "padded.raw")
    with open(source, "rb") as src, open(padded, "wb") as dst:
        dst.write(src.read())
        dst.truncate(capacity)
    assert sha256_file(back) == sha256_file(padded)


MIXED_1M = [(0, random.Random(1).randbytes(128 * KIB)),
            (256 * KIB, bytes(64 * KIB)),  # allocated zeros: not stored
            (512 * KIB, text(200 * KIB, 2))]


@pytest.fixture
def tiny(tmp_path) -> str:
    return make_raw(str(tmp_path / "tiny.raw"), MIB, MIXED_1M)


@pytest.mark.parametrize("backend", ["isal", "libdeflate", "zlib"])
def test_tiny_image_reads_back(tiny, tmp_path, backend):
    vmdk = str(tmp_path / "tiny.vmdk")
    written = write(tiny, vmdk, backend=backend)
    assert written == os.path.getsize(vmdk)
    assert written % 512 == 0
    check_vmdk(tiny, vmdk, MIB, tmp_path)


def test_size_not_multiple_of_grain(tmp_path):
    size = 10 * MIB + 512
    source = make_raw(str(tmp_path / "odd.raw"), size, [
        (3 * MIB + 100, random.Random(3).randbytes(300 * KIB)),
        (size - 700, b"end of disk" * 60)])  # data in the last, partial grain
    vmdk = str(tmp_path / "odd.vmdk")
    write(source, vmdk, threads=2)
    check_vmdk(source, vmdk, size, tmp_path)


def test_short_last_batch_reads_no_stale_bytes(tmp_path):
    # One thread reuses one input buffer: random bytes fill it for the first
    # batch; the file then ends 1000 bytes into the next one, whose rest
    # must read as zeros, not as what the buffer held before.
    size = MIB + 1000
    source = make_raw(str(tmp_path / "short.raw"), size, [
        (0, random.Random(4).randbytes(MIB)), (MIB, text(1000, 5))])
    vmdk = str(tmp_path / "short.vmdk")
    write(source, vmdk, threads=1, capacity=MIB + GRAIN)
    check_vmdk(source, vmdk, MIB + GRAIN, tmp_path)


def test_size_not_multiple_of_sector_is_rounded_up(tmp_path):
    source = make_raw(str(tmp_path / "ragged.raw"), 5 * MIB + 3,
                      [(5 * MIB - 10, b"x" * 13)])
    vmdk = str(tmp_path / "ragged.vmdk")
    write(source, vmdk)
    info = json.loads(qemu_img("info", "-f", "vmdk", "--output=json", vmdk))
    assert info["virtual-size"] == 5 * MIB + 512
    qemu_img("compare", "-f", "raw", "-F", "vmdk", source, vmdk)


def hundred_mib(tmp_path) -> str:
    rng = random.Random(4)
    pieces = []
    for index in range(10):  # 1.5 MiB of data every 10 MiB, not aligned
        base = index * 10 * MIB + index * 4096
        pieces.append((base, rng.randbytes(MIB)))
        pieces.append((base + MIB, text(MIB // 2, index)))
    pieces.append((60 * MIB, bytes(2 * MIB)))  # an allocated zero region
    return make_raw(str(tmp_path / "big.raw"), 100 * MIB, pieces)


class SequentialSink:
    """A write-only stream that refuses seeks and hashes what it gets."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.count += len(data)
        return self._handle.write(data)

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, *args):
        raise AssertionError("the writer must not seek")


def test_into_file_at_offset(tmp_path):
    source = hundred_mib(tmp_path)
    target = str(tmp_path / "member.bin")
    prefix = b"tar header and other members " * 400 + b"!"  # odd length
    with open(target, "wb") as handle:
        handle.write(prefix)
        sink = SequentialSink(handle)
        written = vmdkstream.write_stream_optimized(source, sink, threads=2)
        handle.write(b"trailing member")
    assert sink.count == written
    assert os.path.getsize(target) == len(prefix) + written + 15
    with open(target, "rb") as handle:
        assert handle.read(len(prefix)) == prefix
        assert hashlib.sha256(handle.read(written)).hexdigest() \
            == sink.digest.hexdigest()
    qemu_img("check", "--image-opts",
             f"driver=vmdk,file.driver=raw,file.offset={len(prefix)},"
             f"file.size={written},file.file.filename={target}")
    qemu_img("compare", "--image-opts", f"driver=raw,file.filename={source}",
             f"driver=vmdk,file.driver=raw,file.offset={len(prefix)},"
             f"file.size={written},file.file.filename={target}")


def test_hundred_mib_with_holes(tmp_path):
    source = hundred_mib(tmp_path)
    vmdk = str(tmp_path / "big.vmdk")
    calls = []
    write(source, vmdk, progress=lambda done, total: calls.append((done, total)))
    check_vmdk(source, vmdk, 100 * MIB, tmp_path)
    assert calls[-1] == (100 * MIB, 100 * MIB)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


@pytest.mark.parametrize("backend", ["libdeflate", "zlib"])
def test_output_is_deterministic_across_thread_counts(tmp_path, backend):
    # ISA-L is left out: its stateless deflate may pick other (equally
    # valid) matches from one run to the next, so only its guest data is
    # the same (test_every_backend_reads_back checks that).
    source = hundred_mib(tmp_path)
    digests = set()
    for threads in (1, 2, 3):
        vmdk = str(tmp_path / f"t{threads}.vmdk")
        write(source, vmdk, threads=threads, name="disk0.vmdk", backend=backend)
        digests.add(sha256_file(vmdk))
    assert len(digests) == 1


def read_layout(path: str):
    """Header, descriptor text, footer header and end marker of a VMDK."""
    with open(path, "rb") as handle:
        head = handle.read(512)
        header = vmdkstream.HEADER.unpack_from(head)
        handle.seek(header[5] * 512)
        descriptor = handle.read(header[6] * 512).rstrip(b"\0").decode()
        handle.seek(-1536, os.SEEK_END)
        tail = handle.read(1536)
    return header, descriptor, tail


def test_layout_matches_the_specification(tiny, tmp_path):
    vmdk = str(tmp_path / "tiny.vmdk")
    write(tiny, vmdk, adapter_type="ide", hw_version=7, name="web-disk0.vmdk")
    header, descriptor, tail = read_layout(vmdk)
    (magic, version, flags, capacity, grain, desc_offset, _, gtes, rgd, gd,
     overhead, unclean, newlines, algorithm) = header
    assert (magic, version, flags) == (b"KDMV", 3, 0x30001)
    assert (capacity, grain, desc_offset, gtes) == (2048, 128, 1, 512)
    assert (rgd, gd, overhead % 128, unclean) == (0, 2 ** 64 - 1, 0, 0)
    assert (newlines, algorithm) == (b"\n \r\n", 1)
    assert 'createType="streamOptimized"' in descriptor
    assert 'RW 2048 SPARSE "web-disk0.vmdk"' in descriptor
    assert 'ddb.adapterType = "ide"' in descriptor
    assert 'ddb.virtualHWVersion = "7"' in descriptor
    assert 'ddb.geometry.heads = "16"' in descriptor
    assert "parentCID=ffffffff" in descriptor
    assert struct.unpack_from("<QII", tail) == (1, 0, 3)  # footer marker
    footer = vmdkstream.HEADER.unpack_from(tail, 512)
    assert footer[:9] == header[:9] and footer[10:] == header[10:]
    assert 0 < footer[9] < os.path.getsize(vmdk) // 512  # the real gdOffset
    assert tail[1024:] == bytes(512)  # end-of-stream marker
    # The first stored grain: marker at overHead, a zlib stream of 64 KiB.
    with open(vmdk, "rb") as handle:
        handle.seek(overhead * 512)
        lba, size = struct.unpack("<QI", handle.read(12))
        assert lba == 0
        assert zlib.decompress(handle.read(size)) == MIXED_1M[0][1][:GRAIN]


def test_terabyte_sparse_source(tmp_path):
    rng = random.Random(5)
    middle = 500 * GIB + 12345
    source = make_raw(str(tmp_path / "huge.raw"), 1 << 40, [
        (0, rng.randbytes(512 * KIB)),
        (middle, text(256 * KIB, 6)),
        ((1 << 40) - 256 * KIB, rng.randbytes(256 * KIB))])
    vmdk = str(tmp_path / "huge.vmdk")
    written = write(source, vmdk)
    assert written < 2 * MIB  # header, 1 MiB of grains, 3 GTs, a 128 KiB GD
    qemu_img("check", "-f", "vmdk", vmdk)
    info = json.loads(qemu_img("info", "-f", "vmdk", "--output=json", vmdk))
    assert info["virtual-size"] == 1 << 40
    # A whole-disk `qemu-img compare` walks 16M grains (tens of seconds), so:
    # qemu's map shows only the data grains stored, and windows around them
    # read back identical.
    stored = [(extent["start"], extent["length"]) for extent in json.loads(
        qemu_img("map", "-f", "vmdk", "--output=json", vmdk)) if extent["data"]]
    first_middle = middle // GRAIN * GRAIN
    end_middle = -(-(middle + 256 * KIB) // GRAIN) * GRAIN
    assert stored == [(0, 512 * KIB),
                      (first_middle, end_middle - first_middle),
                      ((1 << 40) - 256 * KIB, 256 * KIB)]
    for offset in (0, first_middle - MIB, (1 << 40) - 2 * MIB):
        window = f"offset={offset},size={2 * MIB}"
        qemu_img("compare", "--image-opts",
                 f"driver=raw,{window},file.filename={source}",
                 f"driver=raw,{window},file.driver=vmdk,file.file.filename={vmdk}")


def test_capacity_beyond_source_reads_zero(tiny, tmp_path):
    vmdk = str(tmp_path / "grown.vmdk")
    write(tiny, vmdk, capacity=40 * MIB)
    check_vmdk(tiny, vmdk, 40 * MIB, tmp_path)


def test_all_zero_source(tmp_path):
    source = make_raw(str(tmp_path / "zero.raw"), 3 * MIB, [(MIB, bytes(MIB))])
    vmdk = str(tmp_path / "zero.vmdk")
    write(source, vmdk)
    check_vmdk(source, vmdk, 3 * MIB, tmp_path)


def test_peak_memory_is_bounded(tmp_path):
    source = make_raw(str(tmp_path / "rand.raw"), 96 * MIB,
                      [(0, random.Random(7).randbytes(96 * MIB))])
    program = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from ganeti_ovf.disks import vmdkstream\n"
        "with open('/dev/null', 'wb') as out:\n"
        "    vmdkstream.write_stream_optimized(sys.argv[2], out, threads=64)\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")
    root = ROOT
    result = subprocess.run([sys.executable, "-c", program, root, source],
                            capture_output=True, text=True, check=True)
    peak_kib = int(result.stdout.split()[1])
    assert peak_kib < 64 * KIB, result.stdout


@pytest.mark.parametrize("kwargs, error", [
    ({"level": 10}, OptionError),
    ({"level": "1"}, OptionError),
    ({"threads": -1}, OptionError),
    ({"adapter_type": "virtio"}, OptionError),
    ({"hw_version": 0}, OptionError),
    ({"name": 'a"b.vmdk'}, OptionError),
    ({"backend": "lzma"}, OptionError),
    ({"capacity": 1000}, DiskError),
    ({"capacity": 512 * KIB}, DiskError),  # smaller than the 1 MiB source
])
def test_bad_options_are_refused(tiny, tmp_path, kwargs, error):
    with pytest.raises(error):
        write(tiny, str(tmp_path / "x.vmdk"), **kwargs)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(DiskError, match="cannot open"):
        write(str(tmp_path / "missing.raw"), str(tmp_path / "x.vmdk"))
    with pytest.raises(DiskError, match="is a directory: refused, only a regular file"):
        write(str(tmp_path), str(tmp_path / "x.vmdk"))
    empty = make_raw(str(tmp_path / "empty.raw"), 0, [])
    with pytest.raises(DiskError, match="capacity"):
        write(empty, str(tmp_path / "x.vmdk"))


def test_write_failure_is_a_disk_error(tiny):
    class Full:
        name = "full.ova"

        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(DiskError, match="full.ova.*No space left"):
        vmdkstream.write_stream_optimized(tiny, Full())


def test_deflate_backends_produce_zlib_streams():
    data = text(GRAIN, 8)
    for backend in ("isal", "libdeflate", "zlib"):
        for level in (1, 6):
            compressor = deflate.compressor_factory(level, backend)()
            for buffer in (data, bytearray(data), memoryview(bytearray(data))):
                assert zlib.decompress(compressor.compress(buffer)) == data
    assert deflate.best_backend() == "isal"  # libisal2 is installed


def test_incompressible_grains_are_stored_and_still_valid(tmp_path):
    """Random grains go out as deflate stored blocks (no CPU spent on them);
    text grains are still compressed; qemu-img reads both back exactly."""
    rng = random.Random(15)
    source = make_raw(str(tmp_path / "mixed.raw"), 4 * MIB,
                      [(0, rng.randbytes(MIB)), (2 * MIB, text(MIB, 15))])
    vmdk = str(tmp_path / "mixed.vmdk")
    write(source, vmdk)
    check_vmdk(source, vmdk, 4 * MIB, tmp_path)
    with open(vmdk, "rb") as handle:
        stream = handle.read()
    stored = compressed = 0
    position = 128 * 512  # overHead: the first grain marker
    while True:
        lba, size = struct.unpack_from("<QI", stream, position)
        if size == 0:
            break
        data = stream[position + 12:position + 12 + size]
        assert zlib.decompress(data) == open(source, "rb").read()[lba * 512:lba * 512 + GRAIN]
        # BTYPE (bits 1-2 of the first deflate byte after the 2-byte zlib
        # header): 00 stored, 01/10 compressed.
        if (data[2] >> 1) & 3 == 0:
            stored += 1
        else:
            compressed += 1
        position += -(-(12 + size) // 512) * 512
    assert stored == MIB // GRAIN and compressed == MIB // GRAIN


@pytest.mark.parametrize("backend", ["isal", "libdeflate", "zlib"])
def test_deflate_stores_what_does_not_compress(backend):
    compressor = deflate.compressor_factory(1, backend)()
    noise = random.Random(3).randbytes(GRAIN)
    prose = text(GRAIN, 3)
    for data in (noise, prose, bytes(GRAIN)):
        for framing in (compressor.compress, compressor.gzip):
            out = framing(data)
            wbits = zlib.MAX_WBITS if framing == compressor.compress else 31
            assert zlib.decompress(out, wbits) == data
    assert compressor.stored == 2  # the noise, once per framing
    assert len(compressor.compress(prose)) < GRAIN // 2
