"""The disks stage end to end: materialise, inspect, check, convert, extend."""

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import zlib

import pytest
from conftest import CORPUS

from members import opened_member
from ganeti_ovf.package.reader import read_member
from ganeti_ovf.disks import convert
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import COMPRESSION_GZIP, COMPRESSION_NONE, Member

MIB = 1024 ** 2
GIB = 1024 ** 3


def qemu_img(*args: str) -> None:
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def content_digest(path) -> str:
    """sha256 of the file's content, reading only its data extents.

    Holes read as zeros, so the digest depends on content alone; skipping
    holes keeps the 8 GiB corpus disk fast.
    """
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    digest.update(b"%d:" % size)
    fd = os.open(path, os.O_RDONLY)
    try:
        position = next_block = 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            # Aligned blocks, each once even when two extents share one.
            for offset in range(max(start - start % MIB, next_block), end, MIB):
                next_block = offset + MIB
                block = os.pread(fd, MIB, offset)
                if block.count(0) != len(block):
                    digest.update(b"%d:" % offset + block)
            position = end
    finally:
        os.close(fd)
    return digest.hexdigest()


def plain_raw(tmp_path, image, fmt, name="plain.raw") -> str:
    out = tmp_path / name
    qemu_img("convert", "-f", fmt, "-O", "raw", str(image), str(out))
    return str(out)


def whole(path) -> Member:
    return opened_member(os.path.basename(str(path)), str(path), 0, os.path.getsize(path))


def patterned_raw(path, size=8 * MIB) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in (0, MIB + 512, 5 * MIB, size - 4096):
            handle.seek(offset)
            handle.write(os.urandom(4096))


def in_tar(tmp_path, *files) -> list:
    """Members for `files` stored in one tar after an odd-sized first member."""
    (tmp_path / "lead").write_bytes(b"y" * 777)
    tar = tmp_path / "pkg.ova"
    with tarfile.open(tar, "w") as archive:
        archive.add(tmp_path / "lead", "lead")
        for index, path in enumerate(files):
            archive.add(path, "f%d" % index)
    with tarfile.open(tar) as archive:
        return [opened_member("f%d" % index, str(tar), info.offset_data, info.size)
                for index, info in enumerate(archive.getmembers()[1:])]


@pytest.fixture(name="staging")
def fixture_staging(tmp_path):
    path = tmp_path / "staging"
    path.mkdir()
    return path


# --- materialise -----------------------------------------------------------
def test_gzip_streams_into_a_private_file(tmp_path, staging):
    data = os.urandom(3 * MIB) + bytes(4 * MIB) + b"end"
    (tmp_path / "d.gz").write_bytes(gzip.compress(data))
    member = convert.materialize([whole(tmp_path / "d.gz")], COMPRESSION_GZIP, str(staging),
                               limit=len(data))
    assert (member.offset, member.size) == (0, len(data))
    # Private: on the staging file system, mode 0600, and reachable by no name.
    info = os.fstat(member.fd)
    assert info.st_dev == os.stat(str(staging)).st_dev and info.st_nlink == 0
    assert info.st_mode & 0o777 == 0o600 and os.listdir(str(staging)) == []
    assert hashlib.sha256(read_member(member)).digest() == hashlib.sha256(data).digest()
    assert info.st_blocks * 512 < 5 * MIB  # the zero MiBs are holes


def test_gzip_chunked_and_multi_member(tmp_path, staging):
    data = os.urandom(MIB)
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    parts = [packed[:1], packed[1:5000], packed[5000:]]
    for index, part in enumerate(parts):
        (tmp_path / ("c%d" % index)).write_bytes(part)
    members = in_tar(tmp_path, *(tmp_path / ("c%d" % i) for i in range(3)))
    member = convert.materialize(members, COMPRESSION_GZIP, str(staging), limit=MIB)
    assert read_member(member) == data


def test_chunks_joined_in_order(tmp_path, staging):
    chunks = [os.urandom(1000), os.urandom(MIB + 3), os.urandom(10)]
    for index, chunk in enumerate(chunks):
        (tmp_path / ("c%d" % index)).write_bytes(chunk)
    members = in_tar(tmp_path, *(tmp_path / ("c%d" % i) for i in range(3)))
    member = convert.materialize(members, COMPRESSION_NONE, str(staging), limit=2 * MIB)
    assert read_member(member) == b"".join(chunks)


@pytest.mark.parametrize("payload, limit, message", [
    (gzip.compress(bytes(64 * MIB)), 16 * MIB, "expands beyond the limit of 16777216 bytes"),
    (gzip.compress(os.urandom(100000))[:-20], MIB, "truncated"),
    (gzip.compress(b"x" * 1000) + b"garbage", MIB, "trailing data"),
    (gzip.compress(b"x" * 1000) + b"\0", MIB, "trailing data"),
    (b"\x1f\x8b\x08\0" + os.urandom(100), MIB, "corrupt gzip data"),
    (b"", MIB, "empty gzip"),
])
def test_gzip_refusals_leave_nothing(tmp_path, staging, payload, limit, message):
    (tmp_path / "d.gz").write_bytes(payload)
    with pytest.raises(DiskError, match=message):
        convert.materialize([whole(tmp_path / "d.gz")], COMPRESSION_GZIP, str(staging), limit)
    assert os.listdir(staging) == []


def test_identity_over_limit_and_unknown_compression(tmp_path, staging):
    (tmp_path / "d").write_bytes(bytes(2000))
    with pytest.raises(DiskError, match="beyond the limit"):
        convert.materialize([whole(tmp_path / "d")], COMPRESSION_NONE, str(staging), 1000)
    with pytest.raises(DiskError, match="unsupported compression 'bzip2'"):
        convert.materialize([whole(tmp_path / "d")], "bzip2", str(staging), 5000)
    with pytest.raises(DiskError, match="ends 100 bytes early"):
        convert.materialize([opened_member("d", str(tmp_path / "d"), 100, 2000)], COMPRESSION_NONE,
                          str(staging), 5000)
    assert os.listdir(staging) == []


# --- import ----------------------------------------------------------------
@pytest.mark.parametrize("fmt, options", [
    ("raw", ()), ("qcow2", ()), ("qcow2", ("-c",)),
    ("vmdk", ("-o", "subformat=streamOptimized")), ("vmdk", ("-o", "subformat=monolithicSparse")),
    ("vpc", ()), ("vdi", ()),
])
def test_import_from_a_tar_member(tmp_path, staging, fmt, options):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    image = tmp_path / "image"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw), str(image))
    member, = in_tar(tmp_path, image)
    dest = tmp_path / "disk0"
    done = convert.import_disk([member], COMPRESSION_NONE, 8 * MIB, str(dest), str(staging))
    assert done.format == fmt
    assert content_digest(dest) == content_digest(plain_raw(tmp_path, image, fmt))
    assert done.size == os.path.getsize(dest) >= 8 * MIB
    assert os.listdir(staging) == []


def test_import_gzip_chunked_qcow2(tmp_path, staging):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    image = tmp_path / "image.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    packed = gzip.compress(image.read_bytes())
    half = len(packed) // 2
    (tmp_path / "a").write_bytes(packed[:half])
    (tmp_path / "b").write_bytes(packed[half:])
    members = in_tar(tmp_path, tmp_path / "a", tmp_path / "b")
    dest = tmp_path / "disk0"
    done = convert.import_disk(members, COMPRESSION_GZIP, 8 * MIB, str(dest), str(staging))
    assert done.format == "qcow2"
    assert content_digest(dest) == content_digest(raw)
    assert os.listdir(staging) == []


def test_import_extends_to_capacity_and_never_cuts(tmp_path, staging):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    dest = tmp_path / "big"
    done = convert.import_disk([whole(raw)], COMPRESSION_NONE, GIB, str(dest), str(staging))
    assert (done.virtual_size, done.size, os.path.getsize(dest)) == (8 * MIB, GIB, GIB)
    assert os.stat(dest).st_blocks * 512 < 2 * MIB
    # Neither cut nor grown: an image larger than its capacity is refused.
    small = tmp_path / "small"
    with pytest.raises(DiskError, match="virtual size 8388608 bytes is larger than the"
                       " declared capacity of 1048576 bytes"):
        convert.import_disk([whole(raw)], COMPRESSION_NONE, MIB, str(small), str(staging))
    assert not small.exists() and os.listdir(staging) == []


def test_import_empty_image_stays_sparse(tmp_path, staging):
    image = tmp_path / "empty.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1G")
    dest = tmp_path / "disk0"
    convert.import_disk([whole(image)], COMPRESSION_NONE, GIB, str(dest), str(staging))
    assert os.path.getsize(dest) == GIB
    assert os.stat(dest).st_blocks * 512 <= MIB


def test_import_refusal_leaves_nothing(tmp_path, staging):
    qemu_img("create", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M")
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top))
    (tmp_path / "top.gz").write_bytes(gzip.compress(top.read_bytes()))
    dest = tmp_path / "disk0"
    with pytest.raises(DiskError, match="backing file set"):
        convert.import_disk([whole(tmp_path / "top.gz")], COMPRESSION_GZIP, 4 * MIB,
                          str(dest), str(staging))
    assert not dest.exists() and os.listdir(staging) == []


def test_import_gzip_bomb_bounded_by_capacity(tmp_path, staging):
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(bytes(100 * MIB), 1))
    with pytest.raises(DiskError, match="beyond the limit"):
        convert.import_disk([whole(tmp_path / "bomb.gz")], COMPRESSION_GZIP, MIB,
                          str(tmp_path / "disk0"), str(staging))
    assert os.listdir(staging) == []


# --- the real corpus -------------------------------------------------------
@pytest.mark.parametrize("name, fmt, size", [
    ("cot/ubuntu.2.0-disk1.vmdk", "vmdk", 8 * GIB),
    ("cot/input.vmdk", "vmdk", GIB),
    ("cot/blank.vmdk", "vmdk", 512 * MIB),
    ("ganeti/new_disk.vmdk", "vmdk", 51200),
    ("ganeti/rawdisk.raw", "raw", 5120),
])
def test_import_corpus(tmp_path, staging, name, fmt, size):
    source = os.path.join(CORPUS, name)
    dest = tmp_path / "disk0"
    done = convert.import_disk([whole(source)], COMPRESSION_NONE, None, str(dest),
                               str(staging))
    assert (done.format, done.virtual_size, done.size) == (fmt, size, size)
    assert content_digest(dest) == content_digest(plain_raw(tmp_path, source, fmt))
    assert os.stat(dest).st_blocks * 512 <= max(64 * MIB, size // 8)


def test_import_corpus_gzip_vmdk(tmp_path, staging):
    source = os.path.join(CORPUS, "ganeti/compr_disk.vmdk.gz")
    unpacked = tmp_path / "compr_disk.vmdk"
    unpacked.write_bytes(zlib.decompress(open(source, "rb").read(), 16 + zlib.MAX_WBITS))
    dest = tmp_path / "disk0"
    done = convert.import_disk([whole(source)], COMPRESSION_GZIP, MIB, str(dest), str(staging))
    assert (done.format, done.size) == ("vmdk", MIB)
    expected = shutil.copy(plain_raw(tmp_path, unpacked, "vmdk"), tmp_path / "expected")
    os.truncate(expected, MIB)
    assert content_digest(dest) == content_digest(expected)


# --- blank -----------------------------------------------------------------
def test_create_blank(tmp_path):
    dest = tmp_path / "blank"
    convert.create_blank(str(dest), 10 * GIB)
    stat = os.stat(dest)
    assert (stat.st_size, stat.st_blocks, stat.st_mode & 0o777) == (10 * GIB, 0, 0o600)
    with pytest.raises(DiskError, match="cannot create"):
        convert.create_blank(str(dest), 1)
    with pytest.raises(DiskError, match="negative"):
        convert.create_blank(str(tmp_path / "neg"), -1)


# --- the declared capacity is a contract -------------------------------------
@pytest.mark.parametrize("fmt, options", [
    ("qcow2", ()), ("vmdk", ("-o", "subformat=streamOptimized")), ("vdi", ()), ("raw", ()),
])
@pytest.mark.parametrize("capacity", [4 * MIB, 0])
def test_image_larger_than_capacity_refused(tmp_path, staging, fmt, options, capacity):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    image = tmp_path / "image"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw), str(image))
    dest = tmp_path / "disk0"
    with pytest.raises(DiskError, match=r"^image: virtual size 8388608 bytes is larger than"
                       r" the declared capacity of %d bytes \(ovf:capacity\)$" % capacity):
        convert.import_disk([whole(image)], COMPRESSION_NONE, capacity, str(dest),
                            str(staging))
    assert not dest.exists() and os.listdir(staging) == []
    # Declaring no capacity at all: the image's own size is used.
    done = convert.import_disk([whole(image)], COMPRESSION_NONE, None, str(dest),
                               str(staging))
    assert done.size == 8 * MIB


def test_gzip_expanding_beyond_capacity_refused(tmp_path, staging):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    (tmp_path / "d.gz").write_bytes(gzip.compress(raw.read_bytes(), 1))
    with pytest.raises(DiskError, match="virtual size 8388608 bytes is larger than the"
                       " declared capacity of 4194304 bytes"):
        convert.import_disk([whole(tmp_path / "d.gz")], COMPRESSION_GZIP, 4 * MIB,
                            str(tmp_path / "disk0"), str(staging))
    assert os.listdir(staging) == []


def test_capacity_allowance_forgives_rounding_only():
    assert convert.capacity_allowance(0) == 0
    assert convert.capacity_allowance(0, "vpc") == 0
    assert convert.capacity_allowance(1) == MIB
    assert convert.capacity_allowance(8 * MIB) == 8 * MIB
    assert convert.capacity_allowance(8 * MIB + 1) == 9 * MIB
    # qemu sizes a VHD in whole cylinders of up to 16 x 255 sectors.
    assert convert.capacity_allowance(8 * MIB, "vpc") == 10 * MIB


@pytest.mark.parametrize("fmt, capacity", [
    ("raw", 8 * MIB - 4096),  # declared in a unit that rounds below the image
    ("raw", 7 * MIB + 1),
    ("vpc", 8 * MIB),  # the VHD is 8 MiB + 2 KiB: whole cylinders
])
def test_capacity_rounding_accepted(tmp_path, staging, fmt, capacity):
    raw = tmp_path / "src.raw"
    patterned_raw(raw)
    image = tmp_path / "image"
    qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(image))
    done = convert.import_disk([whole(image)], COMPRESSION_NONE, capacity,
                               str(tmp_path / "disk0"), str(staging))
    assert done.size >= 8 * MIB
    with open(tmp_path / "disk0", "rb") as out, open(raw, "rb") as src:
        assert out.read(8 * MIB) == src.read()
