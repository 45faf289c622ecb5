"""Images whose block maps point many times at one stored block are refused.

A VDI or dynamic VHD of a few MiB can map one stored block at every place of
a large disk: converted, it allocates the whole disk, far beyond what the
free-space check (which counts stored bytes) expects.  Inspection refuses a
map that uses a stored block twice (or, for VHD, blocks that overlap); the
images qemu-img writes pass.
"""

import os
import struct
import subprocess

import pytest
from packaging import MIB, make_raw

from members import opened_member
from ganeti_ovf.disks import formats
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member


def whole(path) -> Member:
    return opened_member(os.path.basename(str(path)), str(path), 0, os.path.getsize(str(path)))


def qemu_image(tmp_path, fmt, size=8 * MIB, options=()):
    raw = make_raw(str(tmp_path / "src.raw"), size, seed=3)
    image = str(tmp_path / ("disk." + fmt))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options, raw, image],
                   check=True)
    return image


def patch(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def vdi_map(path):
    with open(path, "rb") as handle:
        header = handle.read(512)
    (bmap_offset,) = struct.unpack_from("<I", header, 340)
    (blocks,) = struct.unpack_from("<I", header, 384)
    return bmap_offset, blocks


def test_vdi_block_mapped_twice_refused(tmp_path):
    image = qemu_image(tmp_path, "vdi")
    assert formats.inspect(whole(image)).format == "vdi"  # as written: accepted
    bmap_offset, blocks = vdi_map(image)
    assert blocks >= 2
    patch(image, bmap_offset + 4, struct.pack("<I", 0))  # block 1 -> stored block 0
    with pytest.raises(DiskError, match="a data block is mapped more than once"):
        formats.inspect(whole(image))


def vhd_table(path):
    with open(path, "rb") as handle:
        footer = handle.read(512)
        (data_offset,) = struct.unpack_from(">Q", footer, 16)
        handle.seek(data_offset)
        _, _, table, _, entries, block_size = struct.unpack(">8sQQIII", handle.read(36))
        handle.seek(table)
        sectors = [s for (s,) in struct.iter_unpack(">I", handle.read(4 * entries))]
    return table, sectors, block_size


@pytest.mark.parametrize("shift, rule", [
    (0, "stored blocks overlap or are mapped more than once"),
    (1, "stored blocks overlap or are mapped more than once"),
], ids=["same-block", "overlapping"])
def test_vhd_blocks_mapped_twice_or_overlapping_refused(tmp_path, shift, rule):
    image = qemu_image(tmp_path, "vpc", options=("-o", "subformat=dynamic"))
    assert formats.inspect(whole(image)).format == "vpc"
    table, sectors, _block_size = vhd_table(image)
    stored = [s for s in sectors if s != 0xFFFFFFFF]
    assert len(stored) >= 2
    second = sectors.index(stored[1])
    patch(image, table + 4 * second, struct.pack(">I", stored[0] + shift))
    with pytest.raises(DiskError, match=rule):
        formats.inspect(whole(image))
