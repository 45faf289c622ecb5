"""Writing into an existing disk (disks/target.py, convert.write_into).

The direct import writes into a disk Ganeti made.  Where that disk is not
known to read as zeros (LVM, DRBD, a file with old data), every byte must be
written: the tests fill the target with garbage first and compare the
result with the source by sha256, for the project's VMDK reader and for
qemu-img; where it is a new sparse file, only data is written.
"""

import os
import subprocess

import pytest
from packaging import MIB, convert, make_raw, sha256_file

from members import opened_member
from ganeti_ovf.disks import convert as disk_convert
from ganeti_ovf.disks.target import Target
from ganeti_ovf.errors import DiskError

SIZE = 100 * MIB  # 4 grain tables of 32 MiB: the third holds no data
TARGET = 112 * MIB  # Ganeti rounds disks up: the tail must read as zeros too


def garbage(path, size):
    with open(path, "wb") as handle:
        for _ in range(size // MIB):
            handle.write(b"\xaa" * MIB)
    return path


def sparse(path, size):
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def expected_digest(raw, size):
    return sha256_file(raw, size)  # the source, then zeros to `size`


def prepared(tmp_path, fmt, options=None):
    raw = make_raw(str(tmp_path / "src.raw"), SIZE)
    image = convert(raw, str(tmp_path / ("src." + fmt)), fmt, options)
    member = opened_member("src." + fmt, image, 0, os.path.getsize(image))
    return raw, disk_convert.prepare([member], "identity", SIZE, str(tmp_path))


@pytest.mark.parametrize("fmt, options", [("vmdk", "subformat=streamOptimized"),
                                          ("qcow2", None)])
def test_every_byte_written_where_the_disk_holds_old_data(tmp_path, fmt, options):
    raw, disk = prepared(tmp_path, fmt, options)
    dest = garbage(str(tmp_path / "disk"), TARGET)
    with Target(dest, known_zero=True) as target:  # allocated: not trusted
        assert not target.known_zero
        disk_convert.write_into(disk, target, str(tmp_path))
    assert os.path.getsize(dest) == TARGET
    assert sha256_file(dest) == expected_digest(raw, TARGET)


@pytest.mark.parametrize("fmt, options", [("vmdk", "subformat=streamOptimized"),
                                          ("qcow2", None)])
def test_only_data_written_into_a_new_sparse_file(tmp_path, fmt, options):
    raw, disk = prepared(tmp_path, fmt, options)
    dest = sparse(str(tmp_path / "disk"), TARGET)
    with Target(dest, known_zero=True) as target:
        assert target.known_zero
        disk_convert.write_into(disk, target, str(tmp_path))
    assert sha256_file(dest) == expected_digest(raw, TARGET)
    # make_raw writes 3 x 256 KiB of data; the rest stays holes.
    assert os.stat(dest).st_blocks * 512 <= 4 * MIB


def test_not_trusted_to_be_zero_unless_told(tmp_path):
    dest = sparse(str(tmp_path / "disk"), TARGET)
    with Target(dest, known_zero=False) as target:
        assert not target.known_zero and target.size == TARGET


def test_blank_disk_zeroed(tmp_path):
    dest = garbage(str(tmp_path / "disk"), 8 * MIB)
    with Target(dest, known_zero=False) as target:
        disk_convert.fill_blank(target)
    assert sha256_file(dest) == sha256_file(sparse(str(tmp_path / "zeros"), 8 * MIB))


def test_image_larger_than_the_disk_refused(tmp_path):
    _raw, disk = prepared(tmp_path, "vmdk", "subformat=streamOptimized")
    dest = garbage(str(tmp_path / "disk"), 8 * MIB)
    with Target(dest, known_zero=False) as target, \
            pytest.raises(DiskError, match="does not fit the instance disk"):
        disk_convert.write_into(disk, target, str(tmp_path))


def test_target_must_exist_and_be_a_file_or_device(tmp_path):
    with pytest.raises(DiskError, match="cannot open the instance disk"):
        Target(str(tmp_path / "missing"), known_zero=False)
    os.mkfifo(str(tmp_path / "fifo"))
    fd = os.open(str(tmp_path / "fifo"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(DiskError, match="neither a file nor a block device"):
            Target(str(tmp_path / "fifo"), known_zero=False)
    finally:
        os.close(fd)


def test_every_byte_written_into_a_block_device(tmp_path):
    """A loop device over a file of old data stands for an LVM volume (this
    machine's kernel has no device-mapper): BLKGETSIZE64 and BLKZEROOUT."""
    raw, disk = prepared(tmp_path, "vmdk", "subformat=streamOptimized")
    backing = garbage(str(tmp_path / "backing"), TARGET)
    device = subprocess.run(["losetup", "--find", "--show", backing], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        target = Target(device, known_zero=False)
    finally:
        # Detached at once: the kernel frees the device when our descriptor
        # closes (autoclear), even if this test dies.
        subprocess.run(["losetup", "--detach", device], check=True)
    with target:
        assert target.block_device and target.size == TARGET
        disk_convert.write_into(disk, target, str(tmp_path))
    assert sha256_file(backing) == expected_digest(raw, TARGET)
