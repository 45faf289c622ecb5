"""vmdkflow: a gzip-compressed streamOptimized VMDK converted as it inflates.

The rule under test: importing `disk.vmdk.gz` gives exactly what importing
`disk.vmdk` gives (the same disk bytes, or the same one-line error), for
images made by qemu-img and by vmdkstream and for damaged and hostile ones,
and the one pass is taken only when it can vouch for the result: the
stream is inflated once, nothing but metadata is stored, and every image
the pass cannot vouch for is read the ordinary way.
"""

import errno
import gzip
import os
import random
import struct

import pytest
from test_vmdkread import (SECTOR, by_qemu, by_vmdkstream, digest, layout, make_raw,
                           mixed_raw, patch, qemu_raw, text)

from members import opened_member
from ganeti_ovf.disks import convert, gzipstream, vmdkflow, vmdkread
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import COMPRESSION_GZIP, COMPRESSION_NONE

KIB = 1 << 10
MIB = 1 << 20


def gzipped(path) -> str:
    with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb", 1) as dst:
        dst.write(src.read())
    return str(path) + ".gz"


def vmdk_capacity(path) -> int:
    with open(path, "rb") as handle:
        return struct.unpack_from("<Q", handle.read(24), 12)[0] * SECTOR


class Spy:
    """What an import did: inflations, one-pass verdicts, ordinary readings,
    and the most the staging file allocated."""

    def __init__(self, monkeypatch) -> None:
        self.gunzips = 0
        self.vouched = 0
        self.refused = []  # by verify()
        self.stopped = []  # while the stream went through
        self.ordinary = 0
        self.staged = 0
        spy = self
        gunzip, verify = gzipstream.gunzip, vmdkflow.Flow.verify
        convert_whole = vmdkread.convert_stream_optimized

        def counted_gunzip(*args, **kwargs):
            spy.gunzips += 1
            return gunzip(*args, **kwargs)

        def judged_verify(flow, *args):
            try:
                verify(flow, *args)
            except vmdkflow.FlowRefused as err:
                spy.refused.append(str(err))
                raise
            spy.vouched += 1

        def counted_convert(*args, **kwargs):
            spy.ordinary += 1
            return convert_whole(*args, **kwargs)

        class Measured(convert._SparseWriter):
            def finish(self):
                spy.staged = max(spy.staged, self.allocated)
                super().finish()

        def stopping(method):
            def wrapped(flow, *args):
                try:
                    return method(flow, *args)
                except vmdkflow.FlowRefused as err:
                    spy.stopped.append(str(err))
                    raise
            return wrapped

        monkeypatch.setattr(gzipstream, "gunzip", counted_gunzip)
        monkeypatch.setattr(vmdkflow.Flow, "write", stopping(vmdkflow.Flow.write))
        monkeypatch.setattr(vmdkflow.Flow, "finish", stopping(vmdkflow.Flow.finish))
        monkeypatch.setattr(vmdkflow.Flow, "verify", judged_verify)
        monkeypatch.setattr(vmdkread, "convert_stream_optimized", counted_convert)
        monkeypatch.setattr(convert, "_SparseWriter", Measured)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def import_gz(image, dest, capacity=None, **options):
    """Import `image`.gz, its member named like the plain image."""
    path = gzipped(image)
    member = opened_member(os.path.basename(str(image)), path, 0, os.path.getsize(path))
    return convert.import_disk([member], COMPRESSION_GZIP,
                               capacity or vmdk_capacity(image), str(dest),
                               os.path.dirname(str(dest)), **options)


def import_plain(image, dest, capacity=None):
    member = opened_member(os.path.basename(str(image)), str(image), 0,
                           os.path.getsize(image))
    return convert.import_disk([member], COMPRESSION_NONE,
                               capacity or vmdk_capacity(image), str(dest),
                               os.path.dirname(str(dest)))


def outcome(do, dest):
    """('disk', sha256) or ('error', message); no output left after an error."""
    try:
        done = do(dest)
    except DiskError as err:
        assert not os.path.exists(dest)
        return "error", str(err)
    return "disk", digest(done.path), done.size, done.format


# --- the one pass ----------------------------------------------------------

@pytest.mark.parametrize("writer", [by_qemu, by_vmdkstream])
def test_one_pass_gives_the_source_bytes(tmp_path, spy, writer):
    raw = mixed_raw(tmp_path / "src.raw")
    image = writer(raw, tmp_path / "disk.vmdk")
    seen = []
    os.makedirs(tmp_path / "out")
    done = import_gz(image, tmp_path / "out" / "disk0.raw", progress=seen.append)
    assert (spy.gunzips, spy.vouched, spy.ordinary, spy.refused) == (1, 1, 0, [])
    assert (done.format, done.virtual_size, done.size) == ("vmdk", os.path.getsize(raw),
                                                           os.path.getsize(raw))
    assert done.details["createType"] == "streamOptimized"
    assert digest(done.path) == digest(qemu_raw(image, tmp_path / "q.raw")) == digest(raw)
    assert os.stat(done.path).st_mode & 0o777 == 0o600
    assert os.stat(done.path).st_blocks * 512 < 3 * MIB  # zeros stay holes
    # Only metadata was stored: the 5 MiB image's grains went to the disk.
    assert 0 < spy.staged <= 640 * KIB
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert os.listdir(tmp_path / "out") == ["disk0.raw"]  # the staging file is gone


def test_disk_extended_to_the_declared_capacity(tmp_path, spy):
    raw = make_raw(tmp_path / "src.raw", 3 * MIB, [(MIB, random.Random(2).randbytes(MIB))])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    done = import_gz(image, tmp_path / "out.raw", capacity=5 * MIB)
    assert spy.vouched == 1 and done.size == os.path.getsize(done.path) == 5 * MIB
    os.truncate(raw, 5 * MIB)
    assert digest(done.path) == digest(raw)


def test_progress_follows_the_grains(tmp_path, spy):
    # One stored grain, the sixth of 16: 6/16 of the disk is behind it.
    raw = make_raw(tmp_path / "src.raw", MIB, [(5 * 64 * KIB, b"data")])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    seen = []
    import_gz(image, tmp_path / "out.raw", progress=seen.append)
    assert spy.vouched == 1 and seen == [37.5, 100.0]


def test_other_images_are_inflated_once_and_stored_whole(tmp_path, spy):
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, random.Random(3).randbytes(MIB))])
    qcow2 = tmp_path / "disk.qcow2"
    os.system("qemu-img convert -f raw -O qcow2 %s %s" % (raw, qcow2))
    path = gzipped(qcow2)
    member = opened_member("disk.qcow2", path, 0, os.path.getsize(path))
    seen = []
    done = convert.import_disk([member], COMPRESSION_GZIP, 2 * MIB, str(tmp_path / "o.raw"),
                               str(tmp_path), seen.append)
    assert (spy.gunzips, spy.vouched, spy.refused, done.format) == (1, 0, [], "qcow2")
    assert seen.count(100.0) == 1  # qemu-img's end; the pass says nothing
    assert digest(done.path) == digest(raw)


def test_a_disk_too_large_for_the_table_is_stored_whole(tmp_path, spy, monkeypatch):
    monkeypatch.setattr(vmdkflow, "MAX_GRAINS", 16)
    raw = make_raw(tmp_path / "src.raw", 2 * MIB,  # 32 grains
                   [(0, random.Random(4).randbytes(2 * MIB))])
    image = by_qemu(raw, tmp_path / "disk.vmdk")
    done = import_gz(image, tmp_path / "out.raw")
    assert (spy.gunzips, spy.vouched, spy.ordinary) == (1, 0, 1)
    assert spy.staged >= 2 * MIB  # the whole image, as before
    assert digest(done.path) == digest(raw)


def test_capacity_refused_before_the_disk_is_made(tmp_path, spy):
    raw = make_raw(tmp_path / "src.raw", 4 * MIB, [(0, b"data")])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    with pytest.raises(DiskError) as plain:
        import_plain(image, tmp_path / "plain.raw", capacity=2 * MIB)
    with pytest.raises(DiskError) as flowed:
        import_gz(image, tmp_path / "out.raw", capacity=2 * MIB)
    assert str(flowed.value) == str(plain.value) == (
        "disk.vmdk: virtual size 4194304 bytes is larger than the declared capacity"
        " of 2097152 bytes (ovf:capacity)")
    assert spy.gunzips == 1 and not os.path.exists(tmp_path / "out.raw")


def test_a_disk_that_cannot_be_sized_is_one_clean_error(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, b"data")])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    real = os.ftruncate

    def too_large(fd, length):
        if length == 2 * MIB:  # the disk, not the staging file
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        return real(fd, length)

    monkeypatch.setattr(os, "ftruncate", too_large)
    dest = tmp_path / "out.raw"
    with pytest.raises(DiskError) as err:
        import_gz(image, dest)
    assert str(err.value) == "%s: cannot size to 2097152 bytes: File too large" % dest
    assert not dest.exists()


# --- what the pass cannot vouch for is read the ordinary way ------------------

@pytest.fixture(params=[by_qemu, by_vmdkstream], ids=["qemu-img", "vmdkstream"])
def image(request, tmp_path):
    rng = random.Random(11)
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, rng.randbytes(MIB))])
    return request.param(raw, tmp_path / "disk.vmdk")


def same_as_plain(image, tmp_path):
    """The gzip import's outcome, asserted equal to the plain import's."""
    flowed = outcome(lambda dest: import_gz(image, dest), str(tmp_path / "out.raw"))
    plain = outcome(lambda dest: import_plain(image, dest), str(tmp_path / "plain.raw"))
    assert flowed == plain
    return flowed


def test_a_grain_no_table_points_at_is_not_imported(image, tmp_path, spy):
    # The first grain's table entry cleared: QEMU reads zeros there, so the
    # grain the stream still carries must not reach the disk.
    _, gt, _ = layout(image)
    patch(image, gt, bytes(4))
    result = same_as_plain(image, tmp_path)
    assert result[0] == "disk" and result[1] == digest(qemu_raw(image, tmp_path / "q.raw"))
    assert len(spy.refused) == 1 and "grains written" in spy.refused[0]
    assert spy.gunzips == 2 and spy.ordinary == 2  # the fallback, the plain import


def test_a_table_among_the_grains_is_not_trusted(image, tmp_path, spy):
    # The directory sends the first table into the first grain's record:
    # the skeleton holds zeros there, the file holds grain data.
    gd, _, grain = layout(image)
    patch(image, gd, struct.pack("<I", grain // SECTOR))
    same_as_plain(image, tmp_path)
    assert spy.refused == ["VMDK grain table 0: 2048 bytes at %d meet a grain record" % grain]
    assert spy.vouched == 0 and spy.gunzips == 2


DAMAGE = {
    "truncated": lambda path: os.truncate(path, os.path.getsize(path) - 3 * SECTOR),
    "truncated_in_the_grains": lambda path: os.truncate(path, layout(path)[2] + 8 * KIB),
    "table_entry_past_the_end": lambda path: patch(
        path, layout(path)[1] + 4, struct.pack("<I", os.path.getsize(path) // SECTOR + 10)),
    "directory_entry_past_the_end": lambda path: patch(
        path, layout(path)[0], struct.pack("<I", os.path.getsize(path) // SECTOR)),
    "two_markers_for_one_lba": lambda path: patch(path, layout(path)[2],
                                                  struct.pack("<Q", 128 * 5)),
    "bad_deflate_data": lambda path: patch(path, layout(path)[2] + 12, b"\xff" * 64),
    "compressed_size_too_big": lambda path: patch(path, layout(path)[2] + 8,
                                                  struct.pack("<I", 200 * KIB)),
    "misaligned_lba": lambda path: patch(path, layout(path)[2], struct.pack("<Q", 3)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_images_get_the_ordinary_error(image, tmp_path, spy, damage):
    DAMAGE[damage](image)
    result = same_as_plain(image, tmp_path)
    assert result[0] == "error" and "\n" not in result[1]
    assert spy.vouched == 0


# Damage the pass sees in the stream: it stops there, before buffering a
# record it could not hold (a deflated size is a 32-bit field).
STOPPED = {
    "compressed_size_too_big": "grain at sector %d: 204800 deflated bytes",
    "misaligned_lba": "grain marker at sector %d names LBA 3",
    "two_markers_for_one_lba": "two grain markers name LBA 640",
}


def test_tables_that_cannot_be_read_refuse_with_their_reason(image, tmp_path, spy):
    DAMAGE["directory_entry_past_the_end"](image)
    same_as_plain(image, tmp_path)
    assert len(spy.refused) == 1 and "points past the end of the file" in spy.refused[0]


def test_a_header_vmdkread_refuses_is_stored_whole(image, tmp_path, spy):
    patch(image, 20, struct.pack("<Q", 3))  # grainSize: not a power of two
    result = same_as_plain(image, tmp_path)
    assert result[0] == "error" and "grain" in result[1]
    assert (spy.gunzips, spy.stopped, spy.refused) == (1, [], [])


@pytest.mark.parametrize("damage", sorted(STOPPED))
def test_the_pass_stops_at_the_first_sign(image, tmp_path, spy, damage):
    grain = layout(image)[2] // SECTOR
    DAMAGE[damage](image)
    same_as_plain(image, tmp_path)
    reason = STOPPED[damage] % grain if "%d" in STOPPED[damage] else STOPPED[damage]
    assert spy.stopped == [reason] and spy.refused == []


def test_a_descriptor_among_the_grains_is_not_trusted(image, tmp_path, spy):
    # The header sends the descriptor into the first grain's record.
    grain = layout(image)[2]
    patch(image, 28, struct.pack("<QQ", grain // SECTOR, 1))
    same_as_plain(image, tmp_path)
    assert spy.refused == ["VMDK descriptor: 512 bytes at %d meet a grain record" % grain]


def test_grains_before_the_head_are_stored_whole(tmp_path, spy):
    # overHead 127 sectors: grains could hide what inspection reads near the
    # start; the image is inflated once and read the ordinary way.
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, random.Random(5).randbytes(MIB))])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    patch(image, 64, struct.pack("<Q", 127))  # overHead
    result = same_as_plain(image, tmp_path)
    assert result[0] == "disk" and result[1] == digest(raw)
    assert (spy.gunzips, spy.vouched, spy.stopped, spy.refused) == (1, 0, [], [])


def test_bytes_after_the_end_of_stream_are_not_grains(tmp_path, spy):
    # qemu-img's layout (no footer): after an end-of-stream marker, a copy
    # of the first grain record; QEMU reads neither.
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, random.Random(6).randbytes(MIB))])
    image = by_qemu(raw, tmp_path / "disk.vmdk")
    grain = layout(image)[2]
    with open(image, "rb") as handle:
        handle.seek(grain)
        record = handle.read(SECTOR * 200)
    with open(image, "ab") as handle:
        handle.write(bytes(SECTOR) + record)  # the marker {0, 0, type 0}
    result = same_as_plain(image, tmp_path)
    assert result[0] == "disk" and result[1] == digest(raw)
    assert (spy.gunzips, spy.vouched, spy.stopped) == (1, 1, [])


def test_grain_tables_between_grains(tmp_path, spy):
    # vmdkstream writes a table after every 512 grains: 40 MiB of data has
    # grains after tables, and the tables in between are metadata.
    raw = make_raw(tmp_path / "src.raw", 48 * MIB,
                   [(offset, text(64 * KIB, offset)) for offset in range(0, 40 * MIB, 64 * KIB)])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    seen = []
    done = import_gz(image, tmp_path / "out.raw", progress=seen.append)
    assert (spy.gunzips, spy.vouched, spy.stopped, spy.refused) == (1, 1, [], [])
    assert digest(done.path) == digest(raw)
    # In steps of a percent at least, not once per grain (640 of them).
    assert seen[-1] == 100.0 and len(seen) <= 101
    assert all(later - earlier >= 1 for earlier, later in zip(seen, seen[1:], strict=False))


def test_tables_close_together_with_grains_between(tmp_path, spy):
    # Tables 32 MiB of disk apart are read in one run that spans the grain
    # records between them: only the tables themselves must be real bytes.
    raw = make_raw(tmp_path / "src.raw", 256 * MIB,
                   [(0, b"a" * 400), (32 * MIB, b"b" * 400),
                    (128 * MIB, random.Random(8).randbytes(MIB))])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    done = import_gz(image, tmp_path / "out.raw")
    assert (spy.gunzips, spy.vouched, spy.stopped, spy.refused) == (1, 1, [], [])
    assert digest(done.path) == digest(raw)


def test_grains_larger_than_64k_are_stored_whole(image, tmp_path, spy):
    # Records up to twice a grain are held in memory: only 64 KiB grains
    # (every writer's) flow.
    patch(image, 20, struct.pack("<Q", 256))  # grainSize 128 KiB
    same_as_plain(image, tmp_path)
    assert (spy.gunzips, spy.vouched, spy.stopped, spy.refused) == (1, 0, [], [])


def test_holes_are_exactly_the_grain_records(tmp_path):
    """The skeleton leaves out the grain records, byte for byte: what a
    metadata read may not meet."""
    raw = make_raw(tmp_path / "src.raw", 48 * MIB,
                   [(offset, text(64 * KIB, offset)) for offset in range(0, 40 * MIB, 64 * KIB)])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    with open(image, "rb") as handle:
        data = handle.read()
    expected, position = [], struct.unpack_from("<Q", data, 64)[0] * SECTOR  # overHead
    while position < len(data) - 3 * SECTOR:
        lba, size = struct.unpack_from("<QI", data, position)
        length = -(-(12 + size) // SECTOR) * SECTOR if size else \
            SECTOR + struct.unpack_from("<Q", data, position)[0] * SECTOR
        # A grain record is a hole unless it ends among the last TAIL bytes.
        if size and position + length <= len(data) - vmdkflow.TAIL:
            if expected and expected[-1][1] == position:
                expected[-1][1] = position + length
            else:
                expected.append([position, position + length])
        position += length

    class Skeleton:
        size = 0

        def write(self, piece):
            self.size += len(piece)

        def skip(self, count):
            self.size += count

    out = tmp_path / "out.raw"
    skeleton = Skeleton()
    flow = vmdkflow.Flow("disk.vmdk", skeleton, lambda size: (
        os.open(str(out), os.O_WRONLY | os.O_CREAT, 0o600), str(out)))
    for start in range(0, 4096, 7):  # a header arriving in small pieces
        flow.write(data[start:min(start + 7, 4096)])
    for start in range(4096, len(data), 100000):  # pieces cutting records anywhere
        flow.write(data[start:start + 100000])
    flow.finish()
    assert [list(pair) for pair in zip(flow.hole_starts, flow.hole_ends, strict=True)] \
        == expected
    assert skeleton.size == len(data) and flow.grains_written == 640


def test_random_damage_never_makes_the_two_readings_differ(tmp_path, monkeypatch):
    # Seeded byte changes in the metadata and grain markers of both layouts.
    rng = random.Random(20261207)
    for round_ in range(24):
        work = tmp_path / str(round_)
        work.mkdir()
        raw = make_raw(work / "src.raw", 2 * MIB,
                       [(rng.randrange(2 * MIB - 64 * KIB), rng.randbytes(64 * KIB))
                        for _ in range(4)])
        writer = (by_qemu, by_vmdkstream)[round_ % 2]
        image = writer(raw, work / "disk.vmdk")
        gd, gt, grain = layout(image)
        spots = [gd, gd + 4, gt, gt + 4, gt + 8, grain, grain + 8,
                 os.path.getsize(image) - 3 * SECTOR]
        for _ in range(rng.randint(1, 3)):
            spot = rng.choice(spots) + rng.randrange(4)
            patch(image, spot, bytes([rng.randrange(256)]))
        same_as_plain(image, work)


def test_real_bytes_check_meets_only_overlaps(tmp_path):
    path = make_raw(tmp_path / "f", 8 * KIB, [])
    member = opened_member("f", path, 0, 8 * KIB)
    src = vmdkflow._RealBytes(member.fd, member, [1024, 4096], [2048, 6144])
    for offset, length in ((0, 1024), (2048, 2048), (6144, 2048)):
        src.check(offset, length, "table")  # touching a hole is not meeting it
    for offset, length in ((1023, 2), (2047, 1), (0, 8192), (5000, 1)):
        with pytest.raises(vmdkflow.FlowRefused, match="table: .* meet a grain record"):
            src.check(offset, length, "table")
