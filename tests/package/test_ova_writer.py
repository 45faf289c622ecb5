"""The one-pass OVA writer: reserved leading members, patched headers."""

import hashlib
import tarfile

import pytest

from ganeti_ovf.errors import PublishError
from ganeti_ovf.package import ova_writer
from ganeti_ovf.package.ova_writer import OvaWriter, ustar_header


def test_members_in_order_with_digests(tmp_path):
    path = str(tmp_path / "x.ova")
    writer = OvaWriter(path, [("x.ovf", 100), ("x.mf", 10)], digest="sha256", mtime=0)
    writer.add("x-disk0.vmdk", lambda out: [out.write(b"a" * 1000), out.write(b"b" * 7)])
    writer.add("empty", lambda out: None)
    writer.fill("x.ovf", b"<E/>" + b"\n" * 96)
    writer.fill("x.mf", b"0123456789")
    writer.close()
    with tarfile.open(path) as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == ["x.ovf", "x.mf", "x-disk0.vmdk", "empty"]
        assert all(m.isreg() for m in members)
        assert archive.extractfile("x-disk0.vmdk").read() == b"a" * 1000 + b"b" * 7
        assert archive.extractfile("x.mf").read() == b"0123456789"
        assert members[0].offset == 0
    assert writer.digests["x-disk0.vmdk"] == hashlib.sha256(b"a" * 1000 + b"b" * 7).hexdigest()


def test_writeback_starts_every_step_and_changes_nothing(tmp_path, monkeypatch):
    started = []

    def start(fd, drop_to=0):
        started.append(drop_to)
        real_start(fd, drop_to)  # the real calls, on the real file

    real_start = ova_writer.start_writeback
    monkeypatch.setattr(ova_writer, "WRITEBACK_STEP", 4096)
    monkeypatch.setattr(ova_writer, "start_writeback", start)
    data = bytes(range(256)) * 100  # 25600 bytes, written 1000 at a time
    path = str(tmp_path / "w.ova")
    writer = OvaWriter(path, [], digest="sha256", mtime=0)
    writer.add("disk", lambda out: [out.write(data[i:i + 1000])
                                    for i in range(0, len(data), 1000)])
    writer.close()
    # At 5000, 10000 ... 25000 bytes (a step apart), each dropping what the
    # step before had written (the member's data starts after its header).
    assert started == [0] + [512 + n for n in (5000, 10000, 15000, 20000)]
    with tarfile.open(path) as archive:
        assert archive.extractfile("disk").read() == data
    assert writer.digests["disk"] == hashlib.sha256(data).hexdigest()


def test_reserved_size_must_match(tmp_path):
    writer = OvaWriter(str(tmp_path / "y.ova"), [("y.ovf", 10)])
    with pytest.raises(PublishError, match="reserved"):
        writer.fill("y.ovf", b"short")
    writer.abort()


def test_unfilled_reservation_refused(tmp_path):
    writer = OvaWriter(str(tmp_path / "z.ova"), [("z.ovf", 10)])
    with pytest.raises(PublishError, match="never written"):
        writer.close()
    writer.abort()


def test_large_size_uses_base256():
    header = ustar_header("big", 9 * 2**30, 0)
    assert header[124] == 0x80
    info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
    assert info.size == 9 * 2**30
    small = tarfile.TarInfo.frombuf(ustar_header("s", 12345, 0), "utf-8", "strict")
    assert small.size == 12345 and small.name == "s"


def test_long_name_refused():
    with pytest.raises(PublishError, match="100 bytes"):
        ustar_header("n" * 101, 1, 0)
