"""Format inspection: images built by qemu-img now, patched where qemu-img
cannot make the bad case, plus the real corpus disks."""

import gzip
import os
import struct
import subprocess
import tarfile

import pytest
from conftest import CORPUS

from members import opened_member
from ganeti_ovf.disks import formats
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

MIB = 1024 ** 2


def qemu_img(*args: str) -> None:
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def whole(path) -> Member:
    path = str(path)
    return opened_member(os.path.basename(path), path, 0, os.path.getsize(path))


def create(tmp_path, name, fmt, size="4M", *options):
    path = tmp_path / name
    qemu_img("create", "-f", fmt, *options, str(path), size)
    return path


def create_encrypted(tmp_path, name, fmt, options):
    """qemu-img's LUKS key-setup benchmark fails now and then on a busy machine
    ("Unable to get accurate CPU usage"): try a few times."""
    for _ in range(10):
        try:
            return create(tmp_path, name, fmt, "4M", "--object", "secret,id=s0,data=pw",
                          "-o", options)
        except subprocess.CalledProcessError:
            continue
    pytest.fail("qemu-img could not create an encrypted %s image" % fmt)


def patch(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def refused(member: Member, *reasons: str) -> str:
    with pytest.raises(DiskError) as caught:
        formats.inspect(member)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(member.name + ": ")
    for reason in reasons:
        assert reason in message
    return message


@pytest.mark.parametrize("fmt, options, details", [
    ("qcow2", (), {}),
    ("qcow2", ("-o", "compat=0.10"), {}),
    ("vmdk", (), {"createType": "monolithicSparse"}),
    ("vmdk", ("-o", "subformat=streamOptimized"), {"createType": "streamOptimized"}),
    ("vpc", ("-o", "subformat=dynamic"), {"subformat": "dynamic"}),
    ("vpc", ("-o", "subformat=fixed"), {"subformat": "fixed"}),
    ("vdi", (), {"subformat": "dynamic"}),
    ("vdi", ("-o", "static=on"), {"subformat": "fixed"}),
])
def test_accepted_formats(tmp_path, fmt, options, details):
    path = create(tmp_path, "disk.img", fmt, "4M", *options)
    image = formats.inspect(whole(path))
    assert image.format == fmt
    if fmt == "vpc":  # VHD rounds up to whole CHS cylinders
        assert image.virtual_size >= 4 * MIB
    else:
        assert image.virtual_size == 4 * MIB
    # A mapping for every format (callers copy it and look keys up), with
    # at least these facts; qcow2 reports none.
    assert isinstance(image.details, dict)
    assert {key: image.details.get(key) for key in details} == details
    if fmt == "qcow2":
        assert image.details == {}


def test_raw_is_whatever_matches_nothing(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(4096) + bytes(8192))
    image = formats.inspect(whole(path))
    assert (image.format, image.virtual_size) == ("raw", 12288)


def test_qcow2_disguised_as_raw_is_qcow2(tmp_path):
    path = create(tmp_path, "disk.raw", "qcow2", "1G")
    assert formats.inspect(whole(path)).format == "qcow2"


def test_member_inside_a_tar_is_read_in_place(tmp_path):
    image = create(tmp_path, "disk.qcow2", "qcow2", "3M")
    (tmp_path / "first").write_bytes(b"x" * 3000)
    tar = tmp_path / "pkg.ova"
    with tarfile.open(tar, "w") as archive:
        archive.add(tmp_path / "first", "first")
        archive.add(image, "disk.qcow2")
    with tarfile.open(tar) as archive:
        info = archive.getmember("disk.qcow2")
    member = opened_member("disk.qcow2", str(tar), info.offset_data, info.size)
    assert member.offset > 0
    assert formats.inspect(member).virtual_size == 3 * MIB
    # The same bytes seen from the tar's start are the tar header: raw.
    assert formats.inspect(opened_member("x", str(tar), 0, 512)).format == "raw"


def test_member_outside_its_file(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes(100))
    refused(opened_member("short", str(path), 50, 100), "outside")
    refused(opened_member("gone", str(tmp_path / "missing"), 0, 1), "cannot read")


# --- qcow2 -----------------------------------------------------------------
def test_qcow2_backing_file(tmp_path):
    create(tmp_path, "base.qcow2", "qcow2")
    path = create(tmp_path, "top.qcow2", "qcow2", "4M", "-b", "base.qcow2", "-F", "qcow2")
    refused(whole(path), "refused qcow2 image: backing file set")


def test_qcow2_external_data_file(tmp_path):
    path = create(tmp_path, "d.qcow2", "qcow2", "4M", "-o",
                  "data_file=%s" % (tmp_path / "d.data"))
    refused(whole(path), "external data file set")


def test_qcow2_encrypted(tmp_path):
    path = create_encrypted(tmp_path, "e.qcow2", "qcow2",
                            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10")
    refused(whole(path), "encrypted")
    # qcow2's old built-in AES: the header's crypt method alone refuses it.
    path = create(tmp_path, "aes.qcow2", "qcow2")
    patch(path, 32, struct.pack(">I", 1))
    refused(whole(path), "encrypted")


def test_qcow2_internal_snapshot(tmp_path):
    path = create(tmp_path, "s.qcow2", "qcow2")
    qemu_img("snapshot", "-c", "snap1", str(path))
    refused(whole(path), "internal snapshots present")


@pytest.mark.parametrize("bits, reason", [
    (1 << 0, "dirty"),
    (1 << 1, "marked corrupt"),
    (1 << 2, "external data file set"),
    (1 << 40, "unknown incompatible features"),
])
def test_qcow2_incompatible_feature_bits(tmp_path, bits, reason):
    path = create(tmp_path, "f.qcow2", "qcow2")
    patch(path, 72, struct.pack(">Q", bits))
    refused(whole(path), reason)


def test_qcow2_every_failure_is_reported_at_once(tmp_path):
    create(tmp_path, "base.qcow2", "qcow2")
    path = create(tmp_path, "top.qcow2", "qcow2", "4M", "-b", "base.qcow2", "-F", "qcow2")
    patch(path, 72, struct.pack(">Q", 3))
    message = refused(whole(path), "backing file set", "dirty", "marked corrupt")
    assert message.count(";") == 2


def test_qcow_magic_with_garbage_is_refused_cleanly(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"QFI\xfb" + os.urandom(200000))
    refused(whole(path), "refused qcow2 image")
    path.write_bytes(b"QFI\xfb")
    refused(whole(path), "truncated header")


@pytest.mark.parametrize("options", [(), ("-o", "compat=0.10")])
def test_qcow2_extension_chain_leaving_the_cluster(tmp_path, options):
    # Version 2 and 3 both have extensions: after the 72-byte version 2
    # header, or where a version 3 header says it ends.
    path = create(tmp_path, "x.qcow2", "qcow2", "4M", *options)
    with open(path, "rb") as handle:
        head = handle.read(104)
    version = struct.unpack_from(">I", head, 4)[0]
    header_length = 72 if version == 2 else struct.unpack_from(">I", head, 100)[0]
    patch(path, header_length, struct.pack(">II", 0x12345678, 0x7FFFFFF0))
    refused(whole(path), "malformed header extensions")


# --- VMDK ------------------------------------------------------------------
def rewrite_descriptor(path, edit) -> None:
    """Replace the embedded descriptor's text by edit(text), in place."""
    with open(path, "rb") as handle:
        header = handle.read(512)
    offset, size = struct.unpack_from("<QQ", header, 28)
    with open(path, "rb") as handle:
        handle.seek(offset * 512)
        text = handle.read(size * 512).split(b"\0", 1)[0].decode()
    new = edit(text).encode()
    assert len(new) <= size * 512
    patch(path, offset * 512, new.ljust(size * 512, b"\0"))


def test_vmdk_snapshot(tmp_path):
    create(tmp_path, "base.vmdk", "vmdk")
    path = create(tmp_path, "snap.vmdk", "vmdk", "4M", "-b", "base.vmdk", "-F", "vmdk")
    refused(whole(path), "parent disk set (parentCID)", "parentFileNameHint")


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse"])
def test_vmdk_descriptor_file(tmp_path, subformat):
    path = create(tmp_path, "d.vmdk", "vmdk", "4M", "-o", "subformat=" + subformat)
    refused(whole(path), "refused vmdk descriptor image")


def test_vmdk_extent_of_a_split_disk(tmp_path):
    create(tmp_path, "d.vmdk", "vmdk", "4M", "-o", "subformat=twoGbMaxExtentSparse")
    refused(whole(tmp_path / "d-s001.vmdk"), "createType")


@pytest.mark.parametrize("edit, reason", [
    (lambda t: t.replace('"monolithicSparse"', '"vmfsSparse"'), "createType"),
    (lambda t: t.replace('SPARSE "d.vmdk"', 'SPARSE "../etc/d.vmdk"'), "plain file name"),
    (lambda t: t.replace('SPARSE "d.vmdk"', 'SPARSE "/d.vmdk"'), "plain file name"),
    (lambda t: t.replace('RW 8192 SPARSE "d.vmdk"',
                         'RW 8192 SPARSE "d.vmdk"\nRW 8192 SPARSE "e.vmdk"'), "exactly one extent"),
    (lambda t: t.replace("RW 8192 SPARSE", "RW 8192 FLAT"), "sparse data"),
    (lambda t: t.replace("RW 8192 SPARSE", "RW 4096 SPARSE"), "extent size"),
    (lambda t: t.replace("parentCID=ffffffff", "parentCID=12345678"), "parentCID"),
])
def test_vmdk_descriptor_rules(tmp_path, edit, reason):
    path = create(tmp_path, "d.vmdk", "vmdk")
    rewrite_descriptor(path, edit)
    refused(whole(path), reason)


def test_vmdk_extent_may_name_another_file(tmp_path):
    # COT's and VMware's exports keep the name the disk was made under.
    path = create(tmp_path, "d.vmdk", "vmdk")
    rewrite_descriptor(path, lambda t: t.replace('"d.vmdk"', '"generated.vmdk"'))
    assert formats.inspect(whole(path)).details["extent"] == "generated.vmdk"


def test_vmdk_without_embedded_descriptor(tmp_path):
    path = create(tmp_path, "d.vmdk", "vmdk")
    patch(path, 28, struct.pack("<QQ", 0, 0))
    message = refused(whole(path), "no embedded descriptor")
    assert "createType" not in message


# --- VHD, VDI --------------------------------------------------------------
def test_vpc_differencing(tmp_path):
    path = create(tmp_path, "d.vhd", "vpc")
    for offset in (0, os.path.getsize(path) - 512):
        with open(path, "rb") as handle:
            handle.seek(offset)
            footer = bytearray(handle.read(512))
        footer[60:64] = struct.pack(">I", 4)
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
        patch(path, offset, bytes(footer))
    message = refused(whole(path), "differencing disk")
    assert "checksum" not in message


def test_vpc_bad_checksum(tmp_path):
    path = create(tmp_path, "d.vhd", "vpc", "4M", "-o", "subformat=fixed")
    patch(path, os.path.getsize(path) - 512 + 64, b"\0\0\0\0")
    refused(whole(path), "footer checksum mismatch")


def test_vdi_differencing(tmp_path):
    path = create(tmp_path, "d.vdi", "vdi")
    patch(path, 76, struct.pack("<I", 4))
    patch(path, 440, os.urandom(16))
    refused(whole(path), "differencing image", "parent image set")


# --- formats refused by name, and ambiguity --------------------------------
@pytest.mark.parametrize("fmt", ["vhdx", "qed", "qcow"])
def test_refused_by_name(tmp_path, fmt):
    path = create(tmp_path, "disk.img", fmt)
    refused(whole(path), "refused %s image" % fmt)


def test_luks_refused_by_name(tmp_path):
    path = create_encrypted(tmp_path, "disk.luks", "luks", "key-secret=s0,iter-time=10")
    refused(whole(path), "refused luks image: LUKS-encrypted images are not supported")


def test_vhdx_message_says_what_to_do(tmp_path):
    path = create(tmp_path, "disk.vhdx", "vhdx")
    refused(whole(path), "VHDX is not supported")


def test_iso_is_not_a_disk(tmp_path):
    path = tmp_path / "cd.iso"
    path.write_bytes(bytes(0x8001) + b"CD001" + bytes(4000))
    refused(whole(path), "ISO 9660")


def test_undeclared_compression(tmp_path):
    path = tmp_path / "disk.vmdk"
    path.write_bytes(gzip.compress(bytes(10000)))
    refused(whole(path), "refused gzip image: compressed data not declared as gzip")


def test_two_formats_at_once(tmp_path):
    vpc = create(tmp_path, "d.vhd", "vpc", "4M", "-o", "subformat=fixed")
    with open(vpc, "rb") as handle:
        handle.seek(-512, os.SEEK_END)
        footer = handle.read()
    path = create(tmp_path, "d.vmdk", "vmdk")
    with open(path, "ab") as handle:
        handle.write(footer)
    refused(whole(path), "matches several formats (vmdk, vpc)")


# --- real disks from other tools -------------------------------------------
@pytest.mark.parametrize("name, size, create_type", [
    ("cot/ubuntu.2.0-disk1.vmdk", 8 * 1024 ** 3, "streamOptimized"),
    ("cot/input.vmdk", 1024 ** 3, "streamOptimized"),
    ("cot/blank.vmdk", 512 * MIB, "streamOptimized"),
    ("ganeti/new_disk.vmdk", 51200, "monolithicSparse"),
])
def test_corpus_vmdk(name, size, create_type):
    image = formats.inspect(whole(os.path.join(CORPUS, name)))
    assert (image.format, image.virtual_size) == ("vmdk", size)
    assert image.details["createType"] == create_type


def test_corpus_raw_and_iso():
    assert formats.inspect(whole(os.path.join(CORPUS, "ganeti/rawdisk.raw"))).format == "raw"
    refused(whole(os.path.join(CORPUS, "cot/input.iso")), "ISO 9660")


def test_every_registered_format_declares_checks():
    for fmt in formats.FORMATS:
        assert fmt.checks, fmt.name


# --- the declared format ---------------------------------------------------
@pytest.mark.parametrize("fmt", ["qcow2", "vdi", "vpc", "vmdk"])
def test_declared_raw_holding_an_image_is_ambiguous(tmp_path, fmt):
    member = whole(create(tmp_path, "disk.img", fmt))
    # Undeclared (or declared as what it is), detection decides.
    assert formats.inspect(member).format == fmt
    assert formats.inspect(member, fmt).format == fmt
    with pytest.raises(DiskError, match=r"disk.img: refused image: declared raw but it"
                       r" holds a %s image \(ambiguous format\)" % fmt):
        formats.inspect(member, "raw")


def test_declared_raw_that_is_raw_accepted(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(MIB))
    assert formats.inspect(whole(path), "raw") == formats.DiskImage("raw", MIB, {})
