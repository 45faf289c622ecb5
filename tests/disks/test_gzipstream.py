"""Tests for ganeti_ovf.disks.gzipstream: gzip written on all cores, read by
the fastest inflater installed.

Every stream written here is read back by gzip -d, pigz -d, igzip -d and
Python's gzip and compared by sha256; qemu-img reads the inflated disk.
Inflation is checked through each path (our members with libdeflate and
zlib, igzip, pigz, zlib alone: the tool table pointed at missing programs)
on our streams and on foreign ones, with the same refusals on each.
"""

import gzip
import hashlib
import os
import random
import subprocess
import threading

import pytest

from inflaters import PATHS, choose_tools
from members import opened_member
from ganeti_ovf.disks import deflate, gzipstream, sparse
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

KIB = 1 << 10
MIB = 1 << 20
MEMBER = gzipstream.MEMBER


def text(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = ["".join(rng.choices("etaoinshrdlu", k=rng.randint(2, 8))) for _ in range(500)]
    return " ".join(rng.choices(words, k=size // 3)).encode()[:size].ljust(size, b".")


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A sparse raw disk: random, text, holes, and an unaligned tail."""
    path = str(tmp_path_factory.mktemp("gz") / "disk.raw")
    rng = random.Random(15)
    with open(path, "wb") as out:
        out.truncate(9 * MIB + 1234)
        out.write(rng.randbytes(MIB + 77))
        out.seek(3 * MIB + 5)
        out.write(text(2 * MIB, 15))
        out.seek(9 * MIB)
        out.write(rng.randbytes(1000))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def write_gzip(source: str, target: str, **kwargs) -> gzipstream.GzipWriter:
    with open(target, "wb") as out:
        writer = gzipstream.GzipWriter(out, **kwargs)
        sparse.copy(source, writer)
        writer.finish()
    return writer


READERS = {
    "gzip": ["gzip", "-dc"],
    "pigz": ["pigz", "-dc"],
    "igzip": ["igzip", "-dc"],
}


@pytest.mark.parametrize("backend", ["isal", "libdeflate", "zlib"])
@pytest.mark.parametrize("level", [0, 1, 2, 6])
def test_every_reader_reads_the_stream(disk, tmp_path, backend, level):
    target = str(tmp_path / "disk.raw.gz")
    writer = write_gzip(disk, target, level=level, backend=backend)
    want = sha256(read(disk))
    assert writer.size == os.path.getsize(disk)
    for name, argv in READERS.items():
        done = subprocess.run(argv + [target], capture_output=True, check=True)
        assert sha256(done.stdout) == want, name
    assert sha256(gzip.decompress(read(target))) == want
    with gzip.open(target) as handle:  # the streaming reader too
        assert sha256(handle.read()) == want
    # qemu-img reads the inflated disk as the source
    inflated = str(tmp_path / "back.raw")
    with open(inflated, "wb") as out:
        subprocess.run(["pigz", "-dc", target], stdout=out, check=True)
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", disk, inflated],
                   check=True)


def test_holes_and_noise_cost_little(disk, tmp_path):
    """Zero members are made once; random data is stored; text shrinks."""
    target = str(tmp_path / "disk.raw.gz")
    writer = write_gzip(disk, target)
    assert writer.members == -(-os.path.getsize(disk) // MEMBER)
    size = os.path.getsize(target)
    # random ~1 MiB stored + 2 MiB text at < 60 % + zero members of ~1 KiB
    assert MIB < size < MIB + int(0.6 * 2 * MIB) + 64 * KIB


def test_empty_input_is_a_valid_gzip_file(tmp_path):
    target = str(tmp_path / "empty.gz")
    with open(target, "wb") as out:
        writer = gzipstream.GzipWriter(out)
        writer.finish()
    assert gzip.decompress(read(target)) == b""
    assert subprocess.run(["gzip", "-t", target]).returncode == 0


def test_bad_level_refused(tmp_path):
    with pytest.raises(Exception, match="compression level"):
        gzipstream.writer_factory(10)


# ---------------------------------------------------------------- reading

def member(path: str, offset: int = 0, size=None) -> Member:
    size = os.path.getsize(path) - offset if size is None else size
    return opened_member(os.path.basename(path), path=path, offset=offset, size=size)


def inflate(members, limit=None, padding=False):
    out = []
    total = [0]

    def write(data):
        total[0] += len(data)
        if limit is not None and total[0] > limit:
            raise DiskError("expands beyond the limit of %d bytes" % limit)
        out.append(bytes(data))
    how = gzipstream.gunzip(members, write, "disk.gz", padding=padding)
    return b"".join(out), how


@pytest.fixture
def tools(monkeypatch):
    """Choose the inflating programs: a list of names among igzip, pigz;
    the others point at a missing path, as on a machine without them."""
    return lambda *names: choose_tools(monkeypatch, *names)


FOREIGN = {
    "gzip": lambda data: subprocess.run(["gzip", "-6", "-n", "-c"], input=data,
                                        capture_output=True, check=True).stdout,
    "pigz": lambda data: subprocess.run(["pigz", "-1", "-n", "-c"], input=data,
                                        capture_output=True, check=True).stdout,
    "python": lambda data: gzip.compress(data, mtime=0),
    "two-members": lambda data: gzip.compress(data[:5000], mtime=0)
    + gzip.compress(data[5000:], mtime=0),
}


@pytest.mark.parametrize("tool", list(PATHS))
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_streams_inflate_on_every_path(tmp_path, tools, tool, kind):
    tools(*PATHS[tool])
    data = read_disk_sample()
    path = str(tmp_path / "f.gz")
    with open(path, "wb") as handle:
        handle.write(FOREIGN[kind](data))
    got, how = inflate([member(path)])
    assert got == data
    assert how == tool


@pytest.mark.parametrize("tool", ["igzip", "pigz"])
def test_a_stream_that_barely_compresses_goes_through_the_tool(tmp_path, tools, tool):
    """gzip of deflated data (a streamOptimized VMDK): the tool still
    inflates it beside our writes, and data after it is still refused."""
    tools(tool)
    data = random.Random(5).randbytes(2 * MIB) + text(200 * KIB, 5)
    path = str(tmp_path / "dense.gz")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(data, mtime=0))
    got, how = inflate([member(path)])
    assert sha256(got) == sha256(data)
    assert how == tool
    with open(path, "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(DiskError, match="trailing data"):
        inflate([member(path)])


def read_disk_sample() -> bytes:
    return random.Random(4).randbytes(300 * KIB) + text(700 * KIB, 4) + bytes(300 * KIB)


@pytest.mark.parametrize("backend", ["libdeflate", "zlib"])
def test_our_members_inflate_in_parallel(disk, tmp_path, tools, backend):
    tools()  # no tool: our members need none
    target = str(tmp_path / "disk.raw.gz")
    write_gzip(disk, target)
    collector = Collector()
    how = gzipstream.gunzip([member(target)], collector, "d", backend)
    assert sha256(collector.data()) == sha256(read(disk))
    assert how == backend


class Collector:
    def __init__(self):
        self.parts = []

    def __call__(self, data):
        self.parts.append(bytes(data))

    def data(self):
        return b"".join(self.parts)


def test_our_stream_in_chunks_and_inside_a_bigger_file(disk, tmp_path, tools):
    """Chunked files and OVA members are byte ranges: read within them."""
    tools("igzip")
    target = str(tmp_path / "disk.raw.gz")
    write_gzip(disk, target)
    stream = read(target)
    ova = str(tmp_path / "pkg.ova")
    with open(ova, "wb") as handle:
        handle.write(b"x" * 1536 + stream + b"y" * 1000)
    cut = len(stream) // 3
    got, _ = inflate([member(ova, 1536, cut), member(ova, 1536 + cut, len(stream) - cut)])
    assert sha256(got) == sha256(read(disk))


@pytest.mark.parametrize("tool", list(PATHS))
def test_ours_followed_by_a_foreign_stream(disk, tmp_path, tools, tool):
    tools(*PATHS[tool])
    target = str(tmp_path / "disk.raw.gz")
    write_gzip(disk, target)
    tail = gzip.compress(b"appended by cat", mtime=0)
    with open(target, "ab") as handle:
        handle.write(tail)
    got, how = inflate([member(target)])
    assert got == read(disk) + b"appended by cat"
    assert how == "libdeflate+" + tool


BAD = {
    "truncated": (lambda good: good[:-20], "truncated"),
    "trailing garbage": (lambda good: good + b"garbage", "trailing data"),
    "trailing zero": (lambda good: good + b"\0", "trailing data"),
    "empty": (lambda good: b"", "empty gzip"),
    "corrupt": (lambda good: good[:100] + bytes(200) + good[300:], "corrupt|invalid|trailing"),
    "bad crc": (lambda good: good[:-8] + b"\0\0\0\0" + good[-4:], "corrupt|incorrect|crc"),
}


@pytest.mark.parametrize("tool", list(PATHS))
@pytest.mark.parametrize("case", list(BAD))
def test_bad_streams_refused_on_every_path(tmp_path, tools, tool, case):
    tools(*PATHS[tool])
    change, message = BAD[case]
    path = str(tmp_path / "bad.gz")
    with open(path, "wb") as handle:
        handle.write(change(gzip.compress(read_disk_sample(), mtime=0)))
    with pytest.raises(DiskError, match="(?i)" + message):
        inflate([member(path)])


# Zero padding after the stream (padding=True, as a gzip OVA is read).  The
# sample's size ends in a zero byte, so its trailer does too: where the
# stream ends is not where the zeros start.
PADDED = {
    "one zero": (lambda good: good + b"\0", None),
    "a tape block": (lambda good: good + bytes(10240), None),
    "more than a read": (lambda good: good + bytes(gzipstream.READ_BLOCK + 3), None),
    "two members": (lambda good: gzip.compress(b"x" * 999, mtime=0) + good + bytes(700),
                    None),
    "zeros then garbage": (lambda good: good + bytes(600) + b"garbage", "trailing data"),
    "zeros then a member": (lambda good: good + bytes(600) + gzip.compress(b"x", mtime=0),
                            "trailing data"),
    "garbage then zeros": (lambda good: good + b"garbage" + bytes(600), "trailing data"),
    "truncated then zeros": (lambda good: good[:-20] + bytes(600), "truncated|corrupt"),
}


@pytest.mark.parametrize("tool", list(PATHS))
@pytest.mark.parametrize("case", list(PADDED))
def test_zero_padding_accepted_when_asked(tmp_path, monkeypatch, tools, tool, case):
    tools(*PATHS[tool])
    change, refusal = PADDED[case]
    if refusal is None and tool != "zlib" and case != "two members":
        # One member: the tool's output matches the trailer before the
        # zeros, and zlib does not inflate the stream a second time.
        monkeypatch.setattr(gzipstream, "_inflate_zlib", no_second_pass)
    data = read_disk_sample()
    assert len(data) % 256 == 0
    path = str(tmp_path / "padded.gz")
    with open(path, "wb") as handle:
        handle.write(change(gzip.compress(data, mtime=0)))
    if refusal is None:
        got, how = inflate([member(path)], padding=True)
        assert sha256(got) == sha256((b"x" * 999 if case == "two members" else b"") + data)
        assert how == tool
    else:
        with pytest.raises(DiskError, match="(?i)" + refusal):
            inflate([member(path)], padding=True)


def no_second_pass(*args, **kwargs):
    raise AssertionError("zlib inflated the stream a second time")


@pytest.mark.parametrize("backend", ["libdeflate", "zlib"])
def test_our_members_then_zero_padding(disk, tmp_path, tools, backend):
    tools("igzip")
    target = str(tmp_path / "disk.raw.gz")
    write_gzip(disk, target)
    with open(target, "ab") as handle:
        handle.write(bytes(10240))
    collector = Collector()
    assert gzipstream.gunzip([member(target)], collector, "d", backend,
                             padding=True) == backend
    assert sha256(collector.data()) == sha256(read(disk))
    with open(target, "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(DiskError, match="trailing data"):
        gzipstream.gunzip([member(target)], Collector(), "d", backend, padding=True)


@pytest.mark.parametrize("case", ["truncated", "trailing garbage", "corrupt"])
def test_bad_streams_of_ours_refused(disk, tmp_path, tools, case):
    tools("igzip")
    target = str(tmp_path / "disk.raw.gz")
    write_gzip(disk, target)
    change, message = BAD[case]
    with open(target, "r+b") as handle:
        good = handle.read()
        handle.seek(0)
        handle.truncate()
        handle.write(change(good))
    with pytest.raises(DiskError, match="(?i)" + message + "|corrupt"):
        inflate([member(target)])


@pytest.mark.parametrize("tool", list(PATHS))
def test_a_bomb_stops_at_the_limit_and_leaves_no_process(tmp_path, tools, tool):
    tools(*PATHS[tool])
    path = str(tmp_path / "bomb.gz")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(bytes(256 * MIB), compresslevel=9, mtime=0))
    def children():
        # The test process may have others (the session's cluster): only
        # those the inflation started count.
        return set(subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                                  text=True).stdout.split())

    before, threads = children(), threading.active_count()
    with pytest.raises(DiskError, match="beyond the limit"):
        inflate([member(path)], limit=8 * MIB)
    assert threading.active_count() == threads
    assert children() - before == set()


def test_deflate_crc32_is_zlibs():
    data = read_disk_sample()
    import zlib
    assert deflate.crc32(data) == zlib.crc32(data)
    assert deflate.crc32(data[1000:], deflate.crc32(data[:1000])) == zlib.crc32(data)
