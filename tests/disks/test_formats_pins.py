"""Pins of formats.py's rules that a mutation run found untested: every
format refused by name is recognised at its offset, and the numeric bounds of
the header checks hold from both sides (qcow2 cluster size, VMDK grain size,
VHD and VDI sizes, the VHD table size and block bitmap, VDI block counts and
parent UUIDs), and nothing past a member or its VMDK descriptor is read.
Images come from qemu-img (test_formats.py's helpers), patched where a bound
is tested.
"""

import struct
import subprocess

import pytest
from test_formats import create, patch, refused, rewrite_descriptor, whole

from members import opened_member

from ganeti_ovf.disks import formats

MIB = 1024 ** 2


def accepted(path) -> formats.DiskImage:
    return formats.inspect(whole(path))


def judged(path, ok: bool, fmt: str, reason: str) -> None:
    """Accepted as `fmt` when `ok`, else refused naming `reason`."""
    if ok:
        assert accepted(path).format == fmt
    else:
        refused(whole(path), reason)


# ------------------------------------------------------------------ refused by name


# Where each format refused by name is recognised, written out here (not
# read from formats.FORMATS) so that a moved offset or magic is caught.
REFUSED_BY_NAME = {
    "qcow": (0, [b"QFI\xfb\0\0\0\1"]),
    "vmdk3": (0, [b"COWD"]),
    "vhdx": (0, [b"vhdxfile"]),
    "qed": (0, [b"QED\0"]),
    "luks": (0, [b"LUKS\xba\xbe"]),
    "cloop": (0, [b"#!/bin/sh\n#V2.0 Format\n"]),
    "bochs": (0, [b"Bochs Virtual HD Image"]),
    "parallels": (0, [b"WithoutFreeSpace", b"WithouFreSpacExt"]),
    "iso": (0x8001, [b"CD001"]),
    "gzip": (0, [b"\x1f\x8b\x08"]),
    "xz": (0, [b"\xfd7zXZ\0"]),
}


def test_every_format_refused_by_name_is_pinned():
    registered = [fmt.name for fmt in formats.FORMATS if isinstance(fmt, formats._Magic)]
    assert sorted(registered) == sorted(REFUSED_BY_NAME)


@pytest.mark.parametrize("name", sorted(REFUSED_BY_NAME))
def test_every_refused_format_recognised_at_its_offset(tmp_path, name):
    offset, magics = REFUSED_BY_NAME[name]
    for number, magic in enumerate(magics):
        path = tmp_path / ("%s-%d.img" % (name, number))
        path.write_bytes(b"\x01" * offset + magic + b"\x01" * 40000)
        refused(whole(path), "refused %s image: " % name)
        # The same bytes one byte later, or with another first byte, are not it.
        path.write_bytes(b"\x01" * (offset + 1) + magic + b"\x01" * 40000)
        assert accepted(path).format == "raw"
        path.write_bytes(b"\x01" * offset + b"\x02" + magic[1:] + b"\x01" * 40000)
        assert accepted(path).format == "raw"


# ------------------------------------------------------------------ qcow2


@pytest.mark.parametrize("bits, ok", [(8, False), (9, True), (16, True), (21, True),
                                      (22, False)])
def test_qcow2_cluster_size_bounds(tmp_path, bits, ok):
    path = create(tmp_path, "d.qcow2", "qcow2")
    patch(path, 20, struct.pack(">I", bits))
    if ok:
        assert accepted(path).virtual_size == 4 * MIB
    else:
        # Only that rule: extensions are not walked with a bad cluster size.
        assert refused(whole(path)) == "d.qcow2: refused qcow2 image: cluster size out of range"


@pytest.mark.parametrize("version, ok", [(1, None), (2, True), (3, True), (4, False)])
def test_qcow2_versions(tmp_path, version, ok):
    options = ("-o", "compat=0.10") if version < 3 else ()
    path = create(tmp_path, "d.qcow2", "qcow2", "4M", *options)
    patch(path, 4, struct.pack(">I", version))
    if ok is None:
        refused(whole(path), "refused qcow image: qcow version 1 is not supported")
    else:
        judged(path, ok, "qcow2", "refused qcow2 image: unsupported version")


def test_qcow2_header_extension_bounds(tmp_path):
    path = create(tmp_path, "d.qcow2", "qcow2")
    # 112 is qemu-img's own; 72 (version 2's length) reads the zero feature
    # bits as the end of the chain.
    for length, ok in ((64, False), (72, True), (112, True), (116, False), (65536, False)):
        patch(path, 100, struct.pack(">I", length))
        judged(path, ok, "qcow2", "malformed header extensions")


# ------------------------------------------------------------------ VMDK


@pytest.mark.parametrize("grain, ok", [(0, False), (1, True), (3, False), (0x200000, True),
                                       (0x400000, False)])
def test_vmdk_grain_size_bounds(tmp_path, grain, ok):
    path = create(tmp_path, "d.vmdk", "vmdk")
    patch(path, 20, struct.pack("<Q", grain))
    judged(path, ok, "vmdk", "grain size not a power of two up to 1 GiB")


@pytest.mark.parametrize("version, ok", [(0, False), (1, True), (3, True), (4, False)])
def test_vmdk_versions(tmp_path, version, ok):
    path = create(tmp_path, "d.vmdk", "vmdk")
    patch(path, 4, struct.pack("<I", version))
    judged(path, ok, "vmdk", "unsupported sparse header version")


def test_vmdk_details_name_the_extent(tmp_path):
    path = create(tmp_path, "d.vmdk", "vmdk")
    details = accepted(path).details
    assert details["extent"] == "d.vmdk" and details["createType"] == "monolithicSparse"


def test_vmdk_compression_values(tmp_path):
    path = create(tmp_path, "d.vmdk", "vmdk")
    patch(path, 77, struct.pack("<H", 1))
    assert accepted(path).format == "vmdk"
    patch(path, 77, struct.pack("<H", 2))
    refused(whole(path), "unknown compression algorithm")


# ------------------------------------------------------------------ VHD


def set_vhd_size(path, size: int) -> None:
    """Set current size in every footer copy and fix their checksums."""
    total = path.stat().st_size
    for offset in (0, total - 512):
        with open(path, "rb") as handle:
            handle.seek(offset)
            footer = bytearray(handle.read(512))
        if not footer.startswith(b"conectix"):
            continue
        footer[48:56] = struct.pack(">Q", size)
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
        patch(path, offset, bytes(footer))


@pytest.mark.parametrize("size, ok", [(0, False), (1, True)])
def test_vhd_size_bound(tmp_path, size, ok):
    path = create(tmp_path, "d.vhd", "vpc", "4M", "-o", "subformat=fixed")
    set_vhd_size(path, size)
    if ok:
        assert accepted(path).virtual_size == size
    else:
        refused(whole(path), "refused vpc image: zero size")


def test_vhd_dynamic_header_required(tmp_path):
    path = create(tmp_path, "d.vhd", "vpc", "4M", "-o", "subformat=dynamic")
    assert accepted(path).details["subformat"] == "dynamic"
    patch(path, 512, b"xxsparse")
    refused(whole(path), "dynamic disk header missing")


# ------------------------------------------------------------------ VDI


def test_vdi_parent_uuid_every_byte(tmp_path):
    for offset in (424, 439, 440, 455):
        path = create(tmp_path, "d%d.vdi" % offset, "vdi")
        patch(path, offset, b"\x01")
        refused(whole(path), "refused vdi image: parent image set")
    assert accepted(create(tmp_path, "clean.vdi", "vdi")).format == "vdi"


@pytest.mark.parametrize("image_type, reasons", [
    (1, None), (2, None), (3, "unsupported image type"), (4, "differencing image"),
    (5, "unsupported image type")])
def test_vdi_image_types(tmp_path, image_type, reasons):
    # Dynamic (1) and fixed (2) only; differencing (4) says why, by itself.
    path = create(tmp_path, "d.vdi", "vdi")
    patch(path, 76, struct.pack("<I", image_type))
    if reasons is None:
        assert accepted(path).format == "vdi"
    else:
        assert refused(whole(path)) == "d.vdi: refused vdi image: " + reasons


@pytest.mark.parametrize("size, ok", [(0, False), (1, True)])
def test_vdi_size_bound(tmp_path, size, ok):
    path = create(tmp_path, "d.vdi", "vdi")
    patch(path, 368, struct.pack("<Q", size))
    if ok:
        assert accepted(path).virtual_size == 1
    else:
        refused(whole(path), "refused vdi image: zero size")


def test_vdi_block_counts(tmp_path):
    path = create(tmp_path, "d.vdi", "vdi")
    with open(path, "rb") as handle:
        header = handle.read(392)
    blocks, allocated = struct.unpack_from("<II", header, 384)
    assert (blocks, allocated) == (4, 0)
    # As many allocated blocks as blocks is fine; one more is not.
    patch(path, 388, struct.pack("<I", blocks))
    refused(whole(path), "truncated: the block map or data end")  # no data for them
    patch(path, 388, struct.pack("<I", blocks + 1))
    refused(whole(path), "block count out of range")


def test_vdi_block_map_entries(tmp_path):
    path = create(tmp_path, "d.vdi", "vdi")
    with open(path, "rb") as handle:
        header = handle.read(392)
    bmap = struct.unpack_from("<I", header, 340)[0]
    for entry, ok in ((0xFFFFFFFE, True), (0xFFFFFFFF, True),
                      (0xFFFFFFFD, False), (0, False)):
        patch(path, bmap, struct.pack("<I", entry))
        judged(path, ok, "vdi", "block map entry past the allocated blocks")


def test_vdi_block_extra_bytes_count_towards_the_data(tmp_path):
    path = create(tmp_path, "d.vdi", "vdi", "4M", "-o", "static=on")
    assert accepted(path).format == "vdi"
    patch(path, 380, struct.pack("<I", MIB))  # 1 MiB of extra data per block
    refused(whole(path), "truncated: the block map or data end past the end of the file")


def test_vdi_sector_size(tmp_path):
    path = create(tmp_path, "d.vdi", "vdi")
    patch(path, 360, struct.pack("<I", 4096))
    refused(whole(path), "sector size is not 512")


# ------------------------------------------------------------------ edges


def test_member_shorter_than_a_vhd_footer_is_raw(tmp_path):
    # The VHD probe looks 512 bytes before the end: never before the start.
    path = tmp_path / "small.img"
    path.write_bytes(b"\x07" * 511)
    assert accepted(path).format == "raw"


def test_qcow2_data_file_extension_alone_refused(tmp_path):
    path = create(tmp_path, "d.qcow2", "qcow2", "4M", "-o",
                  "data_file=%s" % (tmp_path / "d.data"))
    with open(path, "rb") as handle:
        handle.seek(72)
        features = struct.unpack(">Q", handle.read(8))[0]
    patch(path, 72, struct.pack(">Q", features & ~formats.QCOW2_INCOMPAT_DATA_FILE))
    assert refused(whole(path)) == "d.qcow2: refused qcow2 image: external data file set"


def test_vmdk_descriptor_of_zero_sectors_is_no_descriptor(tmp_path):
    path = create(tmp_path, "d.vmdk", "vmdk")
    patch(path, 36, struct.pack("<Q", 0))  # descriptor size, its offset kept
    assert refused(whole(path)) == "d.vmdk: refused vmdk image: no embedded descriptor"


def test_vhd_adjacent_blocks_are_not_a_shared_block(tmp_path):
    # Two stored 2 MiB blocks right after each other (bitmap sector + data):
    # exactly one span apart, they share nothing and are accepted.
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as handle:
        handle.truncate(8 * MIB)
        for offset in (0, 2 * MIB):
            handle.seek(offset)
            handle.write(b"\x11" * 4096)
    path = tmp_path / "d.vhd"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o",
                    "subformat=dynamic", str(raw), str(path)], check=True)
    with open(path, "rb") as handle:
        data = handle.read()
    table = struct.unpack_from(">Q", data, 512 + 16)[0]
    first, second = struct.unpack_from(">II", data, table)
    assert second - first == 1 + 4096  # one bitmap sector, 4096 data sectors
    assert accepted(path).details["subformat"] == "dynamic"
    # One sector closer, the blocks share a sector.
    patch(path, table + 4, struct.pack(">I", second - 1))
    refused(whole(path), "stored blocks overlap or are mapped more than once")


def dynamic_vhd(tmp_path, name: str, entries: int, table: bytes,
                block_size: int = 2 * MIB):
    """A dynamic VHD (qemu-img's footer and dynamic header) claiming
    `entries` table entries of `block_size`, its table `table`, at 1536."""
    path = create(tmp_path, name, "vpc", "4M", "-o", "subformat=dynamic")
    with open(path, "rb") as handle:
        head = bytearray(handle.read(1536))
    assert head[512:520] == b"cxsparse"
    head[512 + 16:512 + 24] = struct.pack(">Q", 1536)  # table offset
    head[512 + 28:512 + 36] = struct.pack(">II", entries, block_size)
    with open(path, "wb") as handle:
        handle.write(bytes(head) + table + bytes(head[:512]))  # footer last
    return path


@pytest.mark.parametrize("entries, ok", [(4 * MIB, True), (4 * MIB + 1, False)])
def test_vhd_table_size_bound(tmp_path, entries, ok):
    # The block allocation table read is bounded at 4 Mi entries (16 MiB,
    # 8 TiB of 2 MiB blocks); a larger one is refused even when every entry
    # is present and unused.
    path = dynamic_vhd(tmp_path, "d.vhd", entries, b"\xff" * (4 * entries))
    judged(path, ok, "vpc", "refused vpc image: block table of more than 4194304 entries")


@pytest.mark.parametrize("block_size, bitmap_sectors", [
    (2 * MIB, 1), (32 * MIB, 16), (2048 * MIB, 1024)])
def test_vhd_block_bitmap_in_whole_sectors(tmp_path, block_size, bitmap_sectors):
    # A block's bitmap has one bit a sector, padded to whole sectors (2 MiB:
    # 4096 bits, one sector; 32 MiB: 8 KiB, 16; 2 GiB: 512 KiB, 1024), and
    # its data follows: stored blocks one span apart share nothing.
    span = bitmap_sectors + block_size // 512
    for gap, ok in ((span, True), (span - 1, False)):
        table = struct.pack(">II", 3, 3 + gap)
        path = dynamic_vhd(tmp_path, "d%d.vhd" % gap, 2, table, block_size)
        judged(path, ok, "vpc", "stored blocks overlap or are mapped more than once")


def test_bytes_past_the_member_are_never_read(tmp_path):
    # A VDI signature (at offset 64) cut by the member's end and completed
    # by the bytes after it, as by the next member of an OVA: still raw.
    path = tmp_path / "pkg"
    path.write_bytes(bytes(64) + struct.pack("<I", formats.VDI_SIGNATURE) + bytes(1000))
    refused(whole(path), "refused vdi image")
    member = opened_member("m", str(path), 0, 66)
    assert formats.inspect(member) == formats.DiskImage("raw", 66, {})


def test_vmdk_descriptor_filling_its_sectors_is_read_whole(tmp_path):
    # No NUL ends a descriptor that fills its sectors to the last byte: it
    # is read to its last byte (here the extent line's closing quote) and
    # not one byte further (the grain directory that follows).
    path = create(tmp_path, "d.vmdk", "vmdk")
    with open(path, "rb") as handle:
        data = handle.read(64 * 1024)
    offset, sectors = struct.unpack_from("<QQ", data, 28)
    assert data[(offset + sectors) * 512] != 0

    def fill(text: str) -> str:
        lines = text.splitlines()
        body = "\n".join([line for line in lines if not line.startswith("RW ")]
                         + [line for line in lines if line.startswith("RW ")])
        return "#" * (sectors * 512 - len(body) - 1) + "\n" + body

    rewrite_descriptor(path, fill)
    assert accepted(path).details["extent"] == "d.vmdk"


@pytest.mark.parametrize("block_size", [256, 1000, 2 * MIB + 1])
def test_vhd_blocks_must_be_whole_sectors(tmp_path, block_size):
    path = dynamic_vhd(tmp_path, "d.vhd", 2, struct.pack(">II", 3, 10000), block_size)
    refused(whole(path), "block table of more than 4194304 entries, or blocks not whole"
                         " sectors")
