"""Tests for ganeti_ovf.vmdkread: streamOptimized VMDK to sparse raw.

Images are built here by qemu-img (gdOffset in the header, no footer) and by
vmdkstream (gdOffset in the footer) from sparse raw files with random, zero
and text data; every output is compared by sha256 with qemu-img's own
conversion of the same image (or, for the 1 TiB disk, windows of it with the
source).  Damaged images must raise DiskError and leave no output.
"""

import hashlib
import os
import random
import struct
import subprocess
import tarfile
import zlib
from array import array

import pytest
from conftest import CORPUS
from test_convert import content_digest  # hole-aware: the 8 GiB corpus disk

from members import opened_member
from ganeti_ovf.disks import convert, qemu, vmdkread, vmdkstream
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import COMPRESSION_NONE, Member

KIB = 1 << 10
MIB = 1 << 20
TIB = 1 << 40
SECTOR = 512


def qemu_img(*args: str) -> None:
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def digest(path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            sha.update(block)
    return sha.hexdigest()


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 8))) for _ in range(300)]
    return " ".join(rng.choices(words, k=size // 3)).encode()[:size].ljust(size, b".")


def make_raw(path, size: int, pieces) -> str:
    with open(path, "wb") as out:
        out.truncate(size)
        for offset, data in pieces:
            out.seek(offset)
            out.write(data)
    return str(path)


def mixed_raw(path) -> str:
    """5 MiB + 7 sectors: random, text, zeros, a lone byte, a partial last grain."""
    rng = random.Random(7)
    size = 5 * MIB + 7 * SECTOR
    return make_raw(path, size, [
        (0, rng.randbytes(100 * KIB + 3)),
        (300 * KIB, text(700 * KIB, 1)),
        (2 * MIB + 12345, b"x"),
        (3 * MIB, bytes(256 * KIB)),  # written zeros
        (4 * MIB + 4 * KIB, rng.randbytes(5 * KIB)),
        (size - 3000, text(3000, 2)),
    ])


def by_qemu(raw: str, image) -> str:
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
             raw, str(image))
    return str(image)


def by_vmdkstream(raw: str, image) -> str:
    with open(image, "wb") as out:
        vmdkstream.write_stream_optimized(raw, out, threads=2)
    return str(image)


def whole(path) -> Member:
    return opened_member(os.path.basename(str(path)), path=str(path), offset=0,
                  size=os.path.getsize(path))


def capacity(path) -> int:
    with open(path, "rb") as handle:
        return struct.unpack_from("<Q", handle.read(24), 12)[0] * SECTOR


def read_to_raw(member: Member, dest) -> str:
    with open(member.path, "rb") as handle:
        handle.seek(member.offset)
        size = struct.unpack_from("<Q", handle.read(24), 12)[0] * SECTOR
    vmdkread.convert_stream_optimized(member, str(dest), size)
    return str(dest)


def qemu_raw(image, dest) -> str:
    qemu_img("convert", "-f", "vmdk", "-O", "raw", str(image), str(dest))
    return str(dest)


@pytest.mark.parametrize("writer", [by_qemu, by_vmdkstream])
def test_mixed_content_matches_qemu(tmp_path, writer):
    raw = mixed_raw(tmp_path / "src.raw")
    image = writer(raw, tmp_path / "disk.vmdk")
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert os.path.getsize(out) == os.path.getsize(raw)
    assert digest(out) == digest(qemu_raw(image, tmp_path / "q.raw")) == digest(raw)
    # The written zeros and the holes stay holes.
    assert os.stat(out).st_blocks * 512 < 3 * MIB


def test_one_thread_and_many(tmp_path):
    raw = mixed_raw(tmp_path / "src.raw")
    image = by_qemu(raw, tmp_path / "disk.vmdk")
    for threads in (1, 8):
        dest = tmp_path / ("out%d" % threads)
        vmdkread.convert_stream_optimized(whole(image), str(dest), capacity(image),
                                          threads=threads)
        assert digest(dest) == digest(raw)


@pytest.mark.parametrize("writer", [by_qemu, by_vmdkstream])
def test_one_tib_with_little_data(tmp_path, writer):
    rng = random.Random(3)
    pieces = [(1000 * MIB + 123 * SECTOR, rng.randbytes(4 * MIB)),
              (TIB - 2 * MIB, text(2 * MIB, 5))]
    raw = make_raw(tmp_path / "src.raw", TIB, pieces)
    image = writer(raw, tmp_path / "disk.vmdk")
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert os.path.getsize(out) == TIB
    assert os.stat(out).st_blocks * 512 < 8 * MIB
    with open(out, "rb") as got, open(raw, "rb") as want:
        for offset, data in pieces:
            start = offset - offset % MIB - MIB
            for pos in range(start, min(start + len(data) + 3 * MIB, TIB), MIB):
                got.seek(pos)
                want.seek(pos)
                assert got.read(MIB) == want.read(MIB), pos


@pytest.mark.parametrize("name", ["cot/ubuntu.2.0-disk1.vmdk", "cot/input.vmdk",
                                  "cot/blank.vmdk"])
def test_corpus(tmp_path, name):
    image = os.path.join(CORPUS, name)
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert os.path.getsize(out) == capacity(image)
    assert os.stat(out).st_blocks == 0
    assert content_digest(out) == content_digest(qemu_raw(image, tmp_path / "q.raw"))


def test_member_inside_a_tar(tmp_path):
    raw = mixed_raw(tmp_path / "src.raw")
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    ova = tmp_path / "x.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(str(tmp_path / "src.raw"), "before.raw")
        tar.add(str(image), "disk.vmdk")
        tar.add(str(tmp_path / "src.raw"), "after.raw")
    with tarfile.open(ova) as tar:
        info = tar.getmember("disk.vmdk")
    member = opened_member("disk.vmdk", str(ova), info.offset_data, info.size)
    assert digest(read_to_raw(member, tmp_path / "out.raw")) == digest(raw)


def test_import_disk_uses_the_reader(tmp_path, monkeypatch):
    raw = mixed_raw(tmp_path / "src.raw")
    image = by_qemu(raw, tmp_path / "disk.vmdk")

    def refuse(*args, **kwargs):
        raise AssertionError("qemu-img convert must not run for streamOptimized")

    monkeypatch.setattr(qemu, "convert_to_raw", refuse)
    seen = []
    done = convert.import_disk([whole(image)], COMPRESSION_NONE, 8 * MIB,
                             str(tmp_path / "out.raw"), str(tmp_path), seen.append)
    assert (done.format, done.size, done.virtual_size) == ("vmdk", 8 * MIB,
                                                           os.path.getsize(raw))
    os.truncate(raw, 8 * MIB)
    assert digest(done.path) == digest(raw)
    assert seen and seen[-1] == 100.0


# --- hostile images ---------------------------------------------------------

def layout(path):
    """(gd offset, first grain table offset, first grain's marker offset)."""
    with open(path, "rb") as handle:
        data = handle.read()
    gd = struct.unpack_from("<Q", data, 56)[0]
    if gd == vmdkread.GD_AT_END:
        gd = struct.unpack_from("<Q", data, len(data) - 1024 + 56)[0]
    gt = array("I", data[gd * SECTOR:gd * SECTOR + 4])[0] * SECTOR
    grain = array("I", data[gt:gt + 4])[0] * SECTOR
    return gd * SECTOR, gt, grain


def patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.fixture(params=[by_qemu, by_vmdkstream])
def image(request, tmp_path):
    rng = random.Random(11)
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, rng.randbytes(MIB))])
    return request.param(raw, tmp_path / "disk.vmdk")


def refused(image, dest, match: str) -> None:
    with pytest.raises(DiskError, match=match) as err:
        vmdkread.convert_stream_optimized(whole(image), str(dest), 2 * MIB)
    assert "disk.vmdk" in str(err.value) and "\n" not in str(err.value)
    assert not os.path.exists(dest)


def test_truncated(image, tmp_path):
    os.truncate(image, os.path.getsize(image) - 3 * SECTOR)
    refused(image, tmp_path / "out", "outside the file|no footer|past the end|ends inside")


def test_truncated_in_the_grains(image, tmp_path):
    # vmdkstream: the footer goes; qemu-img: the grain data is cut.
    _, _, grain = layout(image)
    os.truncate(image, grain + 8 * KIB)
    refused(image, tmp_path / "out", "outside the file|no footer|past the end|ends inside")


def test_table_entry_past_the_end(image, tmp_path):
    _, gt, _ = layout(image)
    patch(image, gt + 4, struct.pack("<I", os.path.getsize(image) // SECTOR + 10))
    refused(image, tmp_path / "out", "points past the end")


def test_directory_entry_past_the_end(image, tmp_path):
    gd, _, _ = layout(image)
    patch(image, gd, struct.pack("<I", os.path.getsize(image) // SECTOR))
    refused(image, tmp_path / "out", "points past the end")


def test_marker_lba_mismatch(image, tmp_path):
    _, _, grain = layout(image)
    patch(image, grain, struct.pack("<Q", 128 * 5))
    refused(image, tmp_path / "out", "says LBA 640")


def test_bad_deflate_data(image, tmp_path):
    _, _, grain = layout(image)
    patch(image, grain + 12, b"\xff" * 64)
    refused(image, tmp_path / "out", "bad deflate data")


def test_compressed_size_too_big(image, tmp_path):
    _, _, grain = layout(image)
    patch(image, grain + 8, struct.pack("<I", 200 * KIB))
    refused(image, tmp_path / "out", "compressed size")


@pytest.mark.parametrize("length", [64 * KIB + 1, 64 * KIB - SECTOR])
def test_grain_of_the_wrong_size(image, tmp_path, length):
    _, _, grain = layout(image)
    data = zlib.compress(b"a" * length)
    patch(image, grain + 8, struct.pack("<I", len(data)) + data)
    refused(image, tmp_path / "out", "beyond the grain size|inflates to")


def test_truncated_deflate_stream(image, tmp_path):
    _, _, grain = layout(image)
    data = zlib.compress(random.Random(1).randbytes(64 * KIB))[:1000]
    patch(image, grain + 8, struct.pack("<I", len(data)) + data)
    refused(image, tmp_path / "out", "truncated")


def test_not_stream_optimized(tmp_path):
    raw = mixed_raw(tmp_path / "src.raw")
    sparse = tmp_path / "disk.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse",
             raw, str(sparse))
    with pytest.raises(DiskError, match="not a streamOptimized"):
        read_to_raw(whole(sparse), tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def test_bad_magic_and_wrong_size(image, tmp_path):
    with pytest.raises(DiskError, match="differs from the virtual size"):
        vmdkread.convert_stream_optimized(whole(image), str(tmp_path / "o"), MIB)
    patch(image, 0, b"XXXX")
    refused(image, tmp_path / "out", "bad VMDK magic")


def test_footer_capacity_mismatch(tmp_path):
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, b"data")])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    patch(image, os.path.getsize(image) - 1024 + 12, struct.pack("<Q", 8192))
    refused(image, tmp_path / "out", "footer")


def test_existing_dest_is_kept(image, tmp_path):
    dest = tmp_path / "out"
    dest.write_bytes(b"mine")
    with pytest.raises(DiskError, match="cannot create"):
        vmdkread.convert_stream_optimized(whole(image), str(dest), 2 * MIB)
    assert dest.read_bytes() == b"mine"
