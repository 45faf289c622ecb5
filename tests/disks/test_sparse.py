"""Tests for ganeti_ovf.disks.sparse: a raw disk copied by its data, holes
and zero blocks handed on as skips, every byte accounted for."""

import os

import pytest

from ganeti_ovf.disks import sparse
from ganeti_ovf.errors import DiskError

MIB = 1 << 20


class Recorder:
    """A hole-aware writer that rebuilds the stream and counts its parts."""

    def __init__(self):
        self.data = bytearray()
        self.written = 0
        self.skipped = 0

    def write(self, data):
        self.data += data
        self.written += len(data)
        return len(data)

    def skip(self, count):
        self.data += bytes(count)
        self.skipped += count


def test_holes_and_zero_blocks_are_skipped(tmp_path):
    path = str(tmp_path / "disk.raw")
    with open(path, "wb") as out:
        out.truncate(20 * MIB + 100)
        out.write(os.urandom(MIB + 10))
        out.seek(5 * MIB)
        out.write(bytes(2 * MIB))  # allocated zeros
        out.seek(20 * MIB)
        out.write(b"tail")
    recorder = Recorder()
    assert sparse.copy(path, recorder) == os.path.getsize(path)
    with open(path, "rb") as handle:
        assert bytes(recorder.data) == handle.read()
    # the data blocks (2 MiB: 1 MiB + 10 bytes, rounded to blocks) and the
    # tail block are read; the rest is skipped without reading
    assert recorder.written <= 2 * MIB + 100
    assert recorder.skipped >= 18 * MIB


def test_length_beyond_the_source_is_a_hole(tmp_path):
    path = str(tmp_path / "disk.raw")
    with open(path, "wb") as out:
        out.write(b"x" * 1000)
    recorder = Recorder()
    sparse.copy(path, recorder, 3 * MIB)
    assert bytes(recorder.data) == b"x" * 1000 + bytes(3 * MIB - 1000)


def test_not_a_file_refused(tmp_path):
    with pytest.raises(DiskError, match="source is a directory: refused, only a regular file"):
        sparse.copy(str(tmp_path), Recorder())
    with pytest.raises(DiskError, match="cannot open"):
        sparse.copy(str(tmp_path / "missing"), Recorder())
