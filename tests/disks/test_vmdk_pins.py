"""Pins of vmdkread.py's and vmdkstream.py's rules that a mutation run found
untested: the header bounds the reader accepts (from both sides), a grain
directory deferred to a footer that is missing or empty, the end-of-stream
marker, compressed sizes, grains past the capacity, a file shrinking while
read, holes left in the output, progress reports, the write-every-byte mode
(zero() covers exactly the grains without data); the writer's markers,
geometry, progress, trailing holes in the source and data across grain table
boundaries.
"""

import os
import random
import struct
import subprocess

import pytest
from test_vmdkread import by_vmdkstream, make_raw, read_to_raw, whole

from members import opened_member
from ganeti_ovf.disks import vmdkread, vmdkstream
from ganeti_ovf.errors import DiskError

KIB = 1 << 10
MIB = 1 << 20
SECTOR = 512
GT_SPAN = vmdkstream.GTES_PER_GT * vmdkstream.GRAIN  # 32 MiB of guest per table
FLAGS = vmdkstream.FLAG_COMPRESSED | vmdkstream.FLAG_MARKERS


def digest_of(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def same_as_source(source, image, tmp_path) -> None:
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert digest_of(out) == digest_of(source)


# ------------------------------------------------------------------ reader: header bounds


def geometry(size: int = MIB, **fields) -> vmdkread.Geometry:
    """The reader's view of a header: a valid one, with `fields` changed."""
    values = dict(magic=vmdkstream.MAGIC, version=3, flags=FLAGS, capacity=2048,
                  grain=128, desc_offset=1, desc_size=20, gtes=512, rgd=0, gd=1,
                  overhead=128, unclean=0, newlines=b"\n \r\n",
                  compression=vmdkstream.COMPRESS_DEFLATE)
    values.update(fields)
    return vmdkread.Geometry("d.vmdk", tuple(values.values()), size)


@pytest.mark.parametrize("fields", [
    {"version": 1}, {"version": 3}, {"grain": 1}, {"grain": 32768}, {"gtes": 1},
    {"gtes": 512}, {"capacity": 1}, {"gd": vmdkstream.GD_AT_END},
])
def test_header_bounds_accepted(fields):
    geo = geometry(**fields)
    assert geo.grain == geo.grain_sectors * SECTOR


@pytest.mark.parametrize("fields, message", [
    ({"version": 0}, "unsupported VMDK version 0"),
    ({"version": 4}, "unsupported VMDK version 4"),
    ({"grain": 0}, "grain size 0 sectors is not a power of two up to 32768"),
    ({"grain": 65536}, "grain size 65536 sectors is not a power of two"),
    ({"grain": 96}, "grain size 96 sectors is not a power of two"),
    ({"gtes": 0}, "numGTEsPerGT 0 is not 1..512"),
    ({"gtes": 513}, "numGTEsPerGT 513 is not 1..512"),
    ({"capacity": 0}, "VMDK capacity is zero"),
    ({"gd": 0}, "grain directory (1 entries at sector 0) lies outside the file"),
    ({"gd": 2048}, "grain directory (1 entries at sector 2048) lies outside the file"),
    ({"flags": vmdkstream.FLAG_COMPRESSED}, "not a streamOptimized VMDK"),
    ({"flags": vmdkstream.FLAG_MARKERS}, "not a streamOptimized VMDK"),
    ({"compression": 0}, "not a streamOptimized VMDK"),
])
def test_header_bounds_refused(fields, message):
    with pytest.raises(DiskError) as info:
        geometry(**fields)
    assert str(info.value).startswith("d.vmdk: ") and message in str(info.value)


def test_grain_directory_may_end_at_the_end_of_the_file():
    # One entry of 4 bytes at sector 3: the file's last 4 bytes.
    assert geometry(size=3 * SECTOR + 4, gd=3).gd_offset == 3 * SECTOR
    with pytest.raises(DiskError, match="lies outside the file"):
        geometry(size=3 * SECTOR + 3, gd=3)


def test_limits_are_the_documented_ones():
    assert vmdkread.MAX_GRAIN_BYTES == 16 * MIB and vmdkread.MAX_GTES_PER_GT == 512


# ------------------------------------------------------------------ reader: footers


@pytest.fixture
def streamed(tmp_path):
    rng = random.Random(3)
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, rng.randbytes(300 * KIB))])
    return raw, by_vmdkstream(raw, tmp_path / "disk.vmdk")


def test_footer_missing_while_the_header_defers_to_it(streamed, tmp_path):
    _, image = streamed
    size = os.path.getsize(image)
    with open(image, "r+b") as handle:
        handle.seek(size - SECTOR)
        handle.write(b"\xff" * SECTOR)  # no end-of-stream marker: no footer
    with pytest.raises(DiskError) as info:
        read_to_raw(whole(image), tmp_path / "out.raw")
    assert str(info.value) == ("disk.vmdk: VMDK grain directory is at the end but the file"
                               " has no footer (truncated?)")


@pytest.mark.parametrize("field, value", [(0, 1), (8, 1), (12, vmdkstream.MARKER_GT)])
def test_end_of_stream_marker_must_be_all_zero(streamed, tmp_path, field, value):
    # The last sector is the end-of-stream marker {0, 0, type 0}: any one
    # field otherwise (sectors, size, type) and the file has no footer.
    _, image = streamed
    with open(image, "r+b") as handle:
        handle.seek(os.path.getsize(image) - SECTOR + field)
        handle.write(struct.pack("<I", value))
    with pytest.raises(DiskError, match="no footer"):
        read_to_raw(whole(image), tmp_path / "out.raw")


def test_footer_without_a_grain_directory(streamed, tmp_path):
    _, image = streamed
    size = os.path.getsize(image)
    with open(image, "r+b") as handle:
        handle.seek(size - 2 * SECTOR + 56)  # the footer header's gdOffset
        handle.write(struct.pack("<Q", vmdkstream.GD_AT_END))
    with pytest.raises(DiskError) as info:
        read_to_raw(whole(image), tmp_path / "out.raw")
    assert str(info.value) == "disk.vmdk: VMDK footer has no grain directory offset"


def first_grain_marker(image) -> int:
    with open(image, "rb") as handle:
        header = vmdkstream.HEADER.unpack(handle.read(vmdkstream.HEADER.size))
    return header[10] * SECTOR  # overHead: the first grain follows the metadata


@pytest.mark.parametrize("size, message", [
    (0, r"has compressed size 0 \(1\.\.131060 allowed\)"),
    (2 * 65536 - 12 + 1, r"has compressed size 131061 \(1\.\.131060 allowed\)"),
    (1, "deflate data is truncated|bad deflate data"),  # passes the size rule
    (2 * 65536 - 12, None),  # the bound: bytes after the stream are not read
])
def test_compressed_size_bounds(streamed, tmp_path, size, message):
    raw, image = streamed
    with open(image, "r+b") as handle:
        handle.seek(first_grain_marker(image) + 8)
        handle.write(struct.pack("<I", size))
    if message is None:
        same_as_source(raw, image, tmp_path)
        return
    with pytest.raises(DiskError, match=message):
        read_to_raw(whole(image), tmp_path / "out.raw")


def set_flags(image, flags: int) -> None:
    """OR `flags` into the header and the footer copy."""
    size = os.path.getsize(image)
    for offset in (0, size - 2 * SECTOR):
        with open(image, "r+b") as handle:
            handle.seek(offset + 8)
            current = struct.unpack("<I", handle.read(4))[0]
            handle.seek(offset + 8)
            handle.write(struct.pack("<I", current | flags))


def grain_table_offset(image) -> int:
    with open(image, "rb") as handle:
        data = handle.read()
    gd = struct.unpack_from("<Q", data, len(data) - 2 * SECTOR + 56)[0]
    return struct.unpack_from("<I", data, gd * SECTOR)[0] * SECTOR


@pytest.mark.parametrize("zero_flag", [True, False])
def test_zero_grain_entries_need_the_header_flag(streamed, tmp_path, zero_flag):
    # Grain 20 holds no data; its table entry becomes 1, which means "reads
    # as zeros" only when the header says so (flag bit 2).
    raw, image = streamed
    with open(image, "r+b") as handle:
        handle.seek(grain_table_offset(image) + 20 * 4)
        handle.write(struct.pack("<I", 1))
    if zero_flag:
        set_flags(image, 1 << 2)
        same_as_source(raw, image, tmp_path)
    else:
        with pytest.raises(DiskError, match="marker at sector 1 says LBA"):
            read_to_raw(whole(image), tmp_path / "out.raw")


# ------------------------------------------------------------------ reader: output


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def test_zero_pages_inside_grains_become_holes(tmp_path):
    # 4 KiB of data at the start of each of 32 grains, zeros after it.
    pieces = [(grain * 64 * KIB, b"\x5a" * 4 * KIB) for grain in range(32)]
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, pieces)
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert digest_of(out) == digest_of(raw)
    assert allocated(out) <= 32 * 8 * KIB  # data pages only (with fs rounding)


def test_progress_reported_per_grain_table(tmp_path):
    assert progress_of(tmp_path, 10) == [10.0 * (index + 1) for index in range(10)] + [100.0]


# ------------------------------------------------------------------ writer


def markers(image):
    """(sector, kind, numSectors or lba) of every marker, walking the stream."""
    with open(image, "rb") as handle:
        data = handle.read()
    header = vmdkstream.HEADER.unpack_from(data)
    sector, found = header[10], []
    while sector * SECTOR < len(data):
        value, size, kind = struct.unpack_from("<QII", data, sector * SECTOR)
        if size:  # a grain: lba, compressed size, data
            found.append((sector, "grain", value))
            sector += -(-(12 + size) // SECTOR)
        else:
            found.append((sector, kind, value))
            sector += 1 + (value if kind != 3 else 1) if kind else 1
    return found


def test_writer_markers(tmp_path):
    rng = random.Random(9)
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, rng.randbytes(200 * KIB))])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    kinds = [(kind, value) for _, kind, value in markers(image) if kind != "grain"]
    # One grain table (4 sectors), the directory (1 sector), footer, end.
    assert kinds == [(vmdkstream.MARKER_GT, 4), (vmdkstream.MARKER_GD, 1),
                     (vmdkstream.MARKER_FOOTER, 1), (vmdkstream.MARKER_EOS, 0)]
    assert (vmdkstream.MARKER_EOS, vmdkstream.MARKER_GT, vmdkstream.MARKER_GD,
            vmdkstream.MARKER_FOOTER) == (0, 1, 2, 3)


@pytest.mark.parametrize("adapter, heads, cylinders", [
    ("ide", 16, 16383), ("buslogic", 255, 1044), ("lsilogic", 255, 1044),
    ("legacyESX", 255, 1044),
])
def test_writer_geometry(tmp_path, adapter, heads, cylinders):
    source = tmp_path / "src.raw"
    with open(source, "wb") as handle:
        handle.truncate(8 * 1024 ** 3)  # 8 GiB: past IDE's cylinder cap
    image = tmp_path / "disk.vmdk"
    with open(image, "wb") as out:
        vmdkstream.write_stream_optimized(str(source), out, adapter_type=adapter)
    with open(image, "rb") as handle:
        text = handle.read(64 * KIB).decode("ascii", "replace")
    assert 'ddb.geometry.heads = "%d"' % heads in text
    assert 'ddb.geometry.cylinders = "%d"' % cylinders in text
    assert 'ddb.geometry.sectors = "63"' in text


def test_writer_source_ending_in_a_hole(tmp_path):
    raw = make_raw(tmp_path / "src.raw", 4 * MIB, [(0, b"\x33" * 70 * KIB)])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    same_as_source(raw, image, tmp_path)


def test_writer_data_across_a_grain_table_boundary(tmp_path):
    # Grains 500 to 530 hold data: batches must not mix two grain tables.
    rng = random.Random(4)
    start = 500 * vmdkstream.GRAIN
    raw = make_raw(tmp_path / "src.raw", 2 * GT_SPAN,
                   [(start, rng.randbytes(30 * vmdkstream.GRAIN))])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "vmdk", raw, image],
                   check=True)
    same_as_source(raw, image, tmp_path)


def test_grain_data_never_read_past_the_member(streamed, tmp_path):
    # The member is followed by other bytes of the same file (as in an OVA):
    # a grain whose size reaches past the member's end is refused, however
    # the bytes after it look.
    raw, image = streamed
    size = os.path.getsize(image)
    last = max(sector for sector, kind, _ in markers(image) if kind == "grain")
    reach = size - (last * SECTOR + 12) + 100
    assert reach < 2 * 65536 - 12
    with open(image, "r+b") as handle:
        handle.seek(last * SECTOR + 8)
        handle.write(struct.pack("<I", reach))
        handle.seek(0, os.SEEK_END)
        handle.write(bytes(4096))
    member = opened_member("disk.vmdk", str(image), 0, size)
    with pytest.raises(DiskError, match=r"VMDK grain data \(%d bytes at %d\) lies outside"
                                        r" the file" % (reach, last * SECTOR + 12)):
        vmdkread.convert_stream_optimized(member, str(tmp_path / "out.raw"), 2 * MIB)


def test_grain_directory_read_in_pieces(tmp_path):
    # Over 2 TiB the directory (one entry per 32 MiB) takes more than one
    # read: data past the first piece must still be found where it is.
    size = 3 * (1 << 40)
    where = 5 * (1 << 39) + 12345  # 2.5 TiB
    data = random.Random(8).randbytes(100 * KIB)
    raw = make_raw(tmp_path / "src.raw", size, [(where, data)])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    out = read_to_raw(whole(image), tmp_path / "out.raw")
    assert os.path.getsize(out) == size
    with open(out, "rb") as handle:
        handle.seek(where - KIB)
        assert handle.read(len(data) + 2 * KIB) == bytes(KIB) + data + bytes(KIB)
    assert allocated(out) < 1 * MIB


def test_grain_tables_read_in_bounded_pieces(tmp_path, monkeypatch):
    # Tables far apart in the file are read separately: no metadata read is
    # larger than META_READ, whatever the image's layout.
    rng = random.Random(6)
    pieces = [(index * GT_SPAN, rng.randbytes(MIB)) for index in range(3)]
    raw = make_raw(tmp_path / "src.raw", 3 * GT_SPAN, pieces)
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    reads = []
    original = vmdkread.Source.read

    def recording(self, offset, length, what):
        reads.append((what, length))
        return original(self, offset, length, what)

    monkeypatch.setattr(vmdkread.Source, "read", recording)
    same_as_source(raw, image, tmp_path)
    tables = [length for what, length in reads if what == "VMDK grain tables"]
    assert len(tables) == 3 and max(tables) <= 256 * KIB == vmdkread.META_READ


@pytest.mark.parametrize("source, extent", [("disk0.raw", "disk0.raw.vmdk"),
                                            ("disk0.vmdk", "disk0.vmdk")])
def test_writer_default_extent_name(tmp_path, source, extent):
    raw = make_raw(tmp_path / source, MIB, [(0, b"\x01" * KIB)])
    image = by_vmdkstream(raw, tmp_path / "out.vmdk")
    with open(image, "rb") as handle:
        assert b'RW 2048 SPARSE "%s"\n' % extent.encode() in handle.read(64 * KIB)


@pytest.mark.parametrize("sectors, overhead", [(127, 128), (128, 256)])
def test_writer_overhead_covers_a_long_descriptor(tmp_path, sectors, overhead):
    # Header + descriptor take 1 + `sectors`; the grains start at the next
    # grain boundary (128 sectors).
    base = len(vmdkstream._descriptor("", 2048, "lsilogic", 4))
    name = "n" * (sectors * SECTOR - base - 10) + ".vmdk"
    assert len(vmdkstream._descriptor(name, 2048, "lsilogic", 4)) == sectors * SECTOR - 5
    raw = make_raw(tmp_path / "src.raw", MIB, [(0, b"\x01" * KIB)])
    image = tmp_path / "disk.vmdk"
    with open(image, "wb") as out:
        vmdkstream.write_stream_optimized(raw, out, name=name)
    header = vmdkstream.HEADER.unpack(digest_of(image)[:vmdkstream.HEADER.size])
    assert (header[6], header[10]) == (sectors, overhead)  # descriptorSize, overHead
    assert markers(image)[0] == (overhead, "grain", 0)
    same_as_source(raw, image, tmp_path)


def progress_of(tmp_path, tables: int) -> list:
    pieces = [(index * GT_SPAN, b"\x01" * 4 * KIB) for index in range(tables)]
    raw = make_raw(tmp_path / "src.raw", tables * GT_SPAN, pieces)
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    seen = []
    vmdkread.convert_stream_optimized(whole(image), str(tmp_path / "out.raw"),
                                      tables * GT_SPAN, progress=seen.append)
    return seen


def test_progress_reported_once_per_percent(tmp_path):
    assert progress_of(tmp_path, 100) == [float(n) for n in range(1, 101)] + [100.0]


def test_progress_never_more_often_than_each_percent(tmp_path):
    seen = progress_of(tmp_path, 150)
    steps = [later - earlier for earlier, later in zip(seen[:-2], seen[1:-1], strict=True)]
    assert len(seen) < 150 and min(steps) >= 1 and seen[-1] == 100.0


def test_writer_default_deflate_level_is_one(tmp_path):
    rng = random.Random(2)
    raw = make_raw(tmp_path / "src.raw", MIB, [(0, rng.randbytes(64 * KIB) * 4)])
    outputs = []
    for name, kwargs in (("default", {}), ("one", {"level": 1})):
        with open(tmp_path / name, "wb") as out:
            vmdkstream.write_stream_optimized(raw, out, name="d.vmdk", backend="zlib",
                                              **kwargs)
        outputs.append(digest_of(tmp_path / name))
    assert outputs[0] == outputs[1]


# ------------------------------------------------------------------ reader: every byte written


GRAIN = vmdkstream.GRAIN


def written_over_old_data(image, raw, tmp_path, stale) -> list:
    """Convert `image` in write-every-byte mode (zero given, as for a disk
    that may hold old data) over an output whose `stale` grains hold 0xff;
    the output must equal `raw`.  Returns how often zero() covered each grain.
    """
    size = os.path.getsize(raw)
    dest = tmp_path / "disk.out"
    with open(dest, "wb") as handle:
        handle.truncate(size)
        for grain in stale:
            handle.seek(grain * GRAIN)
            handle.write(b"\xff" * GRAIN)
    covered = [0] * (-(-size // GRAIN))

    def zero(offset: int, length: int) -> None:
        assert offset % GRAIN == 0 and length > 0
        assert length % GRAIN == 0 or offset + length == size
        for grain in range(offset // GRAIN, -(-(offset + length) // GRAIN)):
            covered[grain] += 1
        os.pwrite(fd, bytes(length), offset)

    fd = os.open(dest, os.O_WRONLY)
    try:
        vmdkread.write_stream_optimized(whole(image), fd, str(dest), size, zero=zero)
    finally:
        os.close(fd)
    assert digest_of(dest) == digest_of(raw)
    return covered


def test_every_byte_written_once_data_or_zeros(tmp_path):
    # Five grain tables, the last partial: data (4 KiB, then zeros) in
    # tables 0 and 2 only, so tables 1, 3 and the last hold no data.
    grains = 4 * vmdkstream.GTES_PER_GT + 3
    with_data = [5, 2 * 512, 2 * 512 + 511]
    pieces = [(grain * GRAIN, b"\x5a" * 4 * KIB) for grain in with_data]
    raw = make_raw(tmp_path / "src.raw", grains * GRAIN, pieces)
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    # Old bytes under the data grains (their zero pages too) and elsewhere.
    covered = written_over_old_data(image, raw, tmp_path, with_data + [6, 700, grains - 1])
    # zero() covers exactly the grains without data, each once: never data.
    assert covered == [0 if grain in with_data else 1 for grain in range(grains)]


def test_table_of_zeroed_grains_is_zeroed(tmp_path):
    # A grain table present in the file whose entries all say "reads as
    # zeros" (1, with the header's zero-grain flag): every grain is zeroed.
    raw = make_raw(tmp_path / "src.raw", 2 * MIB, [(0, b"\x5a" * GRAIN)])
    image = by_vmdkstream(raw, tmp_path / "disk.vmdk")
    with open(image, "r+b") as handle:
        handle.seek(grain_table_offset(image))
        handle.write(struct.pack("<%dI" % vmdkstream.GTES_PER_GT,
                                 *[1] * vmdkstream.GTES_PER_GT))
    set_flags(image, 1 << 2)
    zeros = make_raw(tmp_path / "zeros.raw", 2 * MIB, [])
    covered = written_over_old_data(image, zeros, tmp_path, [0, 31])
    assert covered == [1] * 32


def test_writer_progress_counts_through_each_batch(tmp_path):
    # Data in grain 0 and in the third batch of a four-batch source: after
    # each batch the writer reports the source done through that batch's
    # end, holes skipped included; then all of it.
    batch = vmdkstream.BATCH_GRAINS * GRAIN
    pieces = [(0, b"\x01" * KIB), (2 * batch, b"\x02" * batch)]
    raw = make_raw(tmp_path / "src.raw", 4 * batch, pieces)
    calls = []
    with open(tmp_path / "d.vmdk", "wb") as out:
        vmdkstream.write_stream_optimized(
            raw, out, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(batch, 4 * batch), (3 * batch, 4 * batch), (4 * batch, 4 * batch)]


def test_grain_past_the_capacity_in_the_first_table(streamed, tmp_path):
    # A 2 MiB disk has 32 grains: table 0's entry 40 names no grain of it.
    _, image = streamed
    table = grain_table_offset(image)
    with open(image, "r+b") as handle:
        handle.seek(table)
        first = handle.read(4)
        handle.seek(table + 40 * 4)
        handle.write(first)
    with pytest.raises(DiskError) as info:
        read_to_raw(whole(image), tmp_path / "out.raw")
    assert str(info.value) == ("disk.vmdk: VMDK grain table 0 has a grain past the"
                               " capacity (grain 40 of 32)")


def test_file_shrinking_while_read(tmp_path):
    # A package may change while it is read: bytes missing under the
    # member's range are an error, never short data.
    path = tmp_path / "disk.vmdk"
    path.write_bytes(bytes(4 * SECTOR))
    member = whole(path)
    os.truncate(path, 3 * SECTOR)
    source = vmdkread.Source(member.fd, member)
    assert source.read(2 * SECTOR, SECTOR, "VMDK grains") == bytes(SECTOR)
    with pytest.raises(DiskError) as info:
        source.read(3 * SECTOR, SECTOR, "VMDK grains")
    assert str(info.value) == "disk.vmdk: file ends inside VMDK grains"
