"""qemu-img through qemu.py: in-place opening, re-checks, conversions, limits."""

import hashlib
import json
import os
import struct
import subprocess
import tarfile

import pytest

from members import opened_member
from ganeti_ovf.disks import formats, qemu
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

MIB = 1024 ** 2
PATTERN_OFFSETS = (0, MIB + 512, 5 * MIB, 8 * MIB - 4096)


def qemu_img(*args: str) -> None:
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def whole(path) -> Member:
    return opened_member(os.path.basename(str(path)), str(path), 0, os.path.getsize(path))


def patterned_raw(path, size: int = 8 * MIB) -> None:
    """A raw disk with random data at a few offsets, holes elsewhere."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in PATTERN_OFFSETS:
            handle.seek(offset)
            handle.write(os.urandom(4096))


def in_tar(tmp_path, image) -> Member:
    """`image` stored in a tar after an odd-sized member: read in place."""
    (tmp_path / "lead").write_bytes(b"y" * 1234)
    tar = tmp_path / "pkg.ova"
    with tarfile.open(tar, "w") as archive:
        archive.add(tmp_path / "lead", "lead")
        archive.add(image, "disk")
    with tarfile.open(tar) as archive:
        info = archive.getmember("disk")
    return opened_member("disk", str(tar), info.offset_data, info.size)


@pytest.fixture(name="raw")
def fixture_raw(tmp_path):
    path = tmp_path / "src.raw"
    patterned_raw(path)
    return path


def test_image_source_forms(tmp_path):
    path = tmp_path / "a,b.img"
    path.write_bytes(bytes(1000))
    member = whole(path)
    source = qemu.image_source(member, "raw")
    assert source.startswith("json:")
    # The package's descriptor, never the path; no backing file, ever.
    assert json.loads(source[5:]) == {
        "driver": "raw", "backing": None,
        "file": {"driver": "file", "filename": "/proc/self/fd/%d" % member.fd}}
    ranged = opened_member("m", str(path), 0, 300)
    assert json.loads(qemu.image_source(ranged, "raw")[5:])["file"] == {
        "driver": "raw", "offset": 0, "size": 512,
        "file": {"driver": "file", "filename": "/proc/self/fd/%d" % ranged.fd}}
    with pytest.raises(DiskError, match="cannot be read in place"):
        qemu.image_source(opened_member("m", str(path), 512, 300), "raw")
    with pytest.raises(DiskError, match="not one qemu-img may read"):
        qemu.image_source(member, "vvfat")


def test_info_reads_a_tar_member_in_place(tmp_path, raw):
    image = tmp_path / "d.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    member = in_tar(tmp_path, image)
    assert member.offset > 0
    data = qemu.info(member, "qcow2", expected_size=8 * MIB)
    assert (data["format"], data["virtual-size"]) == ("qcow2", 8 * MIB)


def test_info_refuses_backing_file_and_size_mismatch(tmp_path):
    qemu_img("create", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             str(tmp_path / "top.qcow2"))
    with pytest.raises(DiskError, match="top.qcow2: refused qcow2 image .*backing file set"):
        qemu.info(whole(tmp_path / "top.qcow2"), "qcow2")
    with pytest.raises(DiskError, match="virtual size 4194304 differs"):
        qemu.info(whole(tmp_path / "base.qcow2"), "qcow2", expected_size=MIB)


def test_info_refuses_data_file(tmp_path):
    qemu_img("create", "-f", "qcow2", "-o", "data_file=%s" % (tmp_path / "x.data"),
             str(tmp_path / "x.qcow2"), "1M")
    with pytest.raises(DiskError, match="external data file set"):
        qemu.info(whole(tmp_path / "x.qcow2"), "qcow2")


def test_info_failure_is_one_line(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"not a vdi" * 100)
    with pytest.raises(DiskError) as caught:
        qemu.info(whole(path), "vdi")
    assert "qemu-img failed" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("fmt, options", [
    ("raw", ()), ("qcow2", ()), ("qcow2", ("-c",)),
    ("vmdk", ("-o", "subformat=streamOptimized")), ("vmdk", ()),
    ("vpc", ()), ("vdi", ()),
])
def test_convert_to_raw_in_place_matches_plain_convert(tmp_path, raw, fmt, options):
    image = tmp_path / "image"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, str(raw), str(image))
    plain = tmp_path / "plain.raw"
    qemu_img("convert", "-f", fmt, "-O", "raw", str(image), str(plain))
    member = in_tar(tmp_path, image)
    found = formats.inspect(member)
    assert found.format == fmt
    seen = []
    out = tmp_path / "out.raw"
    qemu.convert_to_raw(member, fmt, str(out), progress=seen.append)
    assert sha256(out) == sha256(plain)
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)


def test_convert_to_raw_output_is_sparse(tmp_path):
    image = tmp_path / "empty.qcow2"
    qemu_img("create", "-f", "qcow2", str(image), "1G")
    out = tmp_path / "out.raw"
    qemu.convert_to_raw(whole(image), "qcow2", str(out))
    stat = os.stat(out)
    assert stat.st_size == 1024 ** 3
    assert stat.st_blocks * 512 <= MIB


def test_convert_to_raw_refuses_an_existing_target(tmp_path, raw):
    out = tmp_path / "out.raw"
    out.write_bytes(b"keep")
    with pytest.raises(DiskError, match="cannot create"):
        qemu.convert_to_raw(whole(raw), "raw", str(out))
    assert out.read_bytes() == b"keep"


def test_file_size_limit_stops_a_lying_image(tmp_path, raw):
    # Told the guest is 1 MiB, qemu-img may not write the 8 MiB it holds.
    out = tmp_path / "out.raw"
    with pytest.raises(DiskError, match="qemu-img failed"):
        qemu.convert_to_raw(whole(raw), "raw", str(out), virtual_size=MIB)
    assert not out.exists()


@pytest.mark.parametrize("fmt, compress", [("raw", False), ("qcow2", False),
                                           ("qcow2", True), ("vmdk", False)])
def test_convert_from_raw(tmp_path, raw, fmt, compress):
    out = tmp_path / ("out." + fmt)
    qemu.convert_from_raw(str(raw), fmt, str(out), compress=compress)
    assert qemu.compare(str(raw), "raw", str(out), fmt)
    image = formats.inspect(whole(out))
    assert (image.format, image.virtual_size) == (fmt, 8 * MIB)
    if fmt != "raw":
        assert qemu.check(str(out), fmt)["check-errors"] == 0
    else:
        assert os.stat(out).st_blocks * 512 < 2 * MIB


def test_vmdk_export_is_what_vmware_imports(tmp_path, raw):
    out = tmp_path / "out.vmdk"
    qemu.convert_from_raw(str(raw), "vmdk", str(out))
    with open(out, "rb") as handle:
        magic, version = struct.unpack("<4sI", handle.read(8))
    assert (magic, version) == (b"KDMV", 3)  # ESXi refuses older stream headers
    details = formats.inspect(whole(out)).details
    assert details["createType"] == "streamOptimized"
    assert details["ddb.virtualHWVersion"] == qemu.VMDK_HWVERSION
    assert details["ddb.adapterType"] == "lsilogic"


def test_convert_from_raw_refuses_other_formats(tmp_path, raw):
    with pytest.raises(DiskError, match="cannot write disk format 'vpc'"):
        qemu.convert_from_raw(str(raw), "vpc", str(tmp_path / "x"))


def test_check_and_compare_report_problems(tmp_path, raw):
    with pytest.raises(DiskError, match="does not support 'raw'"):
        qemu.check(str(raw), "raw")
    other = tmp_path / "other.raw"
    patterned_raw(other)
    assert not qemu.compare(str(raw), "raw", str(other), "raw")
    with pytest.raises(DiskError):
        qemu.compare(str(raw), "raw", str(tmp_path / "missing"), "raw")


def test_an_image_never_opens_a_backing_file(tmp_path):
    """A qcow2 that names a backing file (a host file it wants copied into the
    disk) reads as its own clusters only: qemu-img is told "backing": null,
    so even an image rewritten after inspection cannot reach another file."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"host secret!" * 87382)  # 1 MiB and a bit
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(overlay), "1M")
    member = whole(overlay)
    with pytest.raises(DiskError, match="backing file set"):
        qemu.info(member, "qcow2")
    dest = tmp_path / "out.raw"
    qemu.convert_to_raw(member, "qcow2", str(dest), virtual_size=MIB)
    assert dest.read_bytes() == bytes(MIB)
    # The package's descriptor is what qemu-img reads: the path may be gone.
    os.unlink(str(overlay))
    assert qemu.check_member(member, "qcow2")["check-errors"] == 0
