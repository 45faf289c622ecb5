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
                           mixed_raw, patch, qemu_raw)

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
        self.refused = []
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

        monkeypatch.setattr(gzipstream, "gunzip", counted_gunzip)
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


def test_other_images_are_inflated_once_and_stored_whole(tmp_path, spy):
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, random.Random(3).randbytes(MIB))])
    qcow2 = tmp_path / "disk.qcow2"
    os.system("qemu-img convert -f raw -O qcow2 %s %s" % (raw, qcow2))
    path = gzipped(qcow2)
    member = opened_member("disk.qcow2", path, 0, os.path.getsize(path))
    done = convert.import_disk([member], COMPRESSION_GZIP, 2 * MIB, str(tmp_path / "o.raw"),
                               str(tmp_path))
    assert (spy.gunzips, spy.vouched, spy.refused, done.format) == (1, 0, [], "qcow2")
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
    assert spy.refused == ["VMDK grain tables: 2048 bytes at %d meet a grain record" % grain]
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
