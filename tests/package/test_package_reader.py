"""Tests of package/reader.py and package/tarreader.py: OVF folders and OVAs read in place."""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from conftest import CORPUS
from inflaters import PATHS, choose_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganeti_ovf.disks import gzipstream
from ganeti_ovf.disks.gzipstream import GzipWriter
from ganeti_ovf.package import tarreader
from ganeti_ovf.errors import OvfError, PackageError
from ganeti_ovf.model import Member
from ganeti_ovf.package.reader import Package, read_member

DESCRIPTOR = b"<?xml version='1.0'?><Envelope/>\n"
DISK = bytes(range(256)) * 7 + b"tail"  # not a multiple of 512 bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_bytes(member: Member) -> bytes:
    return read_member(member)


def make_tar(path: str, files: List[Tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT,
             pax_headers: Optional[dict] = None) -> str:
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_headers) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def header(name: bytes, size: int = 0, typeflag: bytes = b"0", size_field: Optional[bytes] = None,
           magic: bytes = b"ustar\x0000", linkname: bytes = b"", prefix: bytes = b"") -> bytes:
    """One ustar header block with a correct checksum."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[157:157 + len(linkname)] = linkname
    block[257:265] = magic
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    if len(block) != 512:
        raise ValueError("test header fields overflow")
    return bytes(block)


def entry(name: bytes, data: bytes = b"", typeflag: bytes = b"0", **kwargs: object) -> bytes:
    padding = bytes(-len(data) % 512)
    return header(name, len(data), typeflag, **kwargs) + data + padding  # type: ignore[arg-type]


def pax_record(key: str, value: str) -> bytes:
    body = (" %s=%s\n" % (key, value)).encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


END = bytes(1024)


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as stream:
        stream.write(data)
    return path


def ova(tmp_path: Path, blocks: bytes, name: str = "p.ova") -> str:
    return write(str(tmp_path / name), blocks)


def open_error(path: str, staging: Optional[str] = None, **kwargs: object) -> str:
    with pytest.raises(PackageError) as info:
        Package.open(path, staging, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- OVF folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write(str(tmp_path / "vm.ovf"), DESCRIPTOR)
    write(str(tmp_path / "disk.vmdk"), DISK)
    write(str(tmp_path / "vm.mf"), b"SHA256(disk.vmdk)= %s\n" % sha(DISK).encode())
    write(str(tmp_path / "vm.cert"), b"SHA256(vm.mf)= 00\n")
    return tmp_path


def test_folder_members(folder: Path) -> None:
    package = Package.open(str(folder / "vm.ovf"))
    assert package.descriptor_name == "vm.ovf"
    assert package.descriptor_bytes() == DESCRIPTOR
    assert package.names() == ["disk.vmdk", "vm.cert", "vm.mf", "vm.ovf"]
    disk = package.member("disk.vmdk")
    assert (disk.offset, disk.size) == (0, len(DISK))
    assert sha(member_bytes(disk)) == sha(DISK)
    assert package.has("disk.vmdk") and not package.has("other.vmdk")
    assert package.manifest().entry("disk.vmdk").digest_hex == sha(DISK)
    assert package.certificate_bytes() == b"SHA256(vm.mf)= 00\n"
    assert package.warnings == []


def test_folder_without_manifest(tmp_path: Path) -> None:
    write(str(tmp_path / "vm.ovf"), DESCRIPTOR)
    write(str(tmp_path / "other.mf"), b"garbage")  # another package's manifest: not ours
    package = Package.open(str(tmp_path / "vm.ovf"))
    assert package.manifest() is None and package.certificate_bytes() is None


def test_folder_missing_member(folder: Path) -> None:
    package = Package.open(str(folder / "vm.ovf"))
    with pytest.raises(PackageError, match=r"missing\.vmdk: no such file in the package"):
        package.member("missing.vmdk")


def test_folder_refuses_symlink_member_even_inside(folder: Path) -> None:
    os.symlink("disk.vmdk", str(folder / "link.vmdk"))
    package = Package.open(str(folder / "vm.ovf"))
    with pytest.raises(PackageError, match=r"link\.vmdk: a symbolic link"):
        package.member("link.vmdk")
    assert "link.vmdk" not in package.names()


def test_folder_refuses_symlinked_directory(folder: Path) -> None:
    os.mkdir(str(folder / "real"))
    write(str(folder / "real" / "d.vmdk"), DISK)
    os.symlink("real", str(folder / "sub"))
    package = Package.open(str(folder / "vm.ovf"))
    assert package.member("real/d.vmdk").size == len(DISK)
    with pytest.raises(PackageError, match=r"sub/d\.vmdk: a symbolic link"):
        package.member("sub/d.vmdk")


def test_folder_refuses_symlinked_descriptor(folder: Path) -> None:
    os.symlink("vm.ovf", str(folder / "alias.ovf"))
    assert "alias.ovf: a symbolic link" in open_error(str(folder / "alias.ovf"))


def test_folder_refuses_fifo(folder: Path) -> None:
    os.mkfifo(str(folder / "pipe.vmdk"))
    package = Package.open(str(folder / "vm.ovf"))
    with pytest.raises(PackageError, match=r"pipe\.vmdk: file is a FIFO: refused, only a regular"):
        package.member("pipe.vmdk")


@pytest.mark.parametrize("name, reason", [
    ("../vm.ovf", "path component '..'"),
    ("/etc/passwd", "absolute path"),
    ("a\\b", "backslash"),
    ("", "empty name"),
    ("a//b", "path component ''"),
    ("./disk.vmdk", "path component '.'"),
    ("bad\x01name", "control character"),
])
def test_folder_refuses_unsafe_names(folder: Path, name: str, reason: str) -> None:
    package = Package.open(str(folder / "vm.ovf"))
    with pytest.raises(PackageError, match="unsafe member name: " + reason.replace(".", r"\.")):
        package.member(name)
    assert not package.has(name)


def test_folder_chunks(folder: Path) -> None:
    parts = [b"a" * 1000, b"b" * 1000, b"c" * 10]
    for index, part in enumerate(parts):
        write(str(folder / ("big.vmdk.%09d" % index)), part)
    write(str(folder / "big.vmdk.12"), b"not a chunk")  # wrong digit count: ignored
    package = Package.open(str(folder / "vm.ovf"))
    chunks = package.chunks("big.vmdk")
    assert [c.name for c in chunks] == ["big.vmdk.%09d" % i for i in range(3)]
    assert b"".join(member_bytes(c) for c in chunks) == b"".join(parts)


def test_folder_chunks_in_subfolder(folder: Path) -> None:
    os.mkdir(str(folder / "sub"))
    write(str(folder / "sub" / "d.vmdk.000000000"), b"x")
    package = Package.open(str(folder / "vm.ovf"))
    assert [c.name for c in package.chunks("sub/d.vmdk")] == ["sub/d.vmdk.000000000"]


def test_folder_chunks_gap_and_none(folder: Path) -> None:
    write(str(folder / "big.vmdk.000000000"), b"a")
    write(str(folder / "big.vmdk.000000002"), b"c")
    package = Package.open(str(folder / "vm.ovf"))
    with pytest.raises(PackageError, match=r"chunk big\.vmdk\.000000001 of big\.vmdk is missing"):
        package.chunks("big.vmdk")
    with pytest.raises(PackageError, match=r"no chunk files none\.vmdk\.000000000"):
        package.chunks("none.vmdk")
    with pytest.raises(PackageError, match="unsafe member name"):
        package.chunks("../big.vmdk")


def test_folder_descriptor_size_cap(tmp_path: Path) -> None:
    path = str(tmp_path / "huge.ovf")
    with open(path, "wb") as stream:
        stream.truncate(33 << 20)  # sparse: costs nothing
    package = Package.open(path)
    with pytest.raises(PackageError, match="more than the 33554432 allowed"):
        package.descriptor_bytes()


def test_wrong_extension_refused() -> None:
    message = open_error(os.path.join(CORPUS, "ganeti", "wrong_extension.ovd"))
    assert "not an OVF descriptor or OVA archive" in message


def test_missing_path(tmp_path: Path) -> None:
    assert "cannot open" in open_error(str(tmp_path / "nothing.ova"))


def test_directory_and_fifo_paths(tmp_path: Path) -> None:
    assert "file is a directory: refused" in open_error(str(tmp_path))
    os.mkfifo(str(tmp_path / "pipe.ova"))
    assert "pipe.ova: file is a FIFO: refused" in open_error(str(tmp_path / "pipe.ova"))


def test_ova_named_through_symlink(tmp_path: Path) -> None:
    real = make_tar(str(tmp_path / "real.ova"), [("vm.ovf", DESCRIPTOR), ("disk.vmdk", DISK)])
    os.symlink("real.ova", str(tmp_path / "alias.ova"))
    package = Package.open(str(tmp_path / "alias.ova"))
    member = package.member("disk.vmdk")
    assert os.path.samestat(os.fstat(member.fd), os.stat(real))
    assert member_bytes(member) == DISK
    assert package.descriptor_bytes() == DESCRIPTOR


# ---------------------------------------------------------------- OVA


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_ova_formats_offsets(tmp_path: Path, fmt: int) -> None:
    files = [("vm.ovf", DESCRIPTOR), ("vm.mf", b"SHA256(disk.vmdk)= %s\n" % sha(DISK).encode()),
             ("empty.iso", b""), ("disk.vmdk", DISK)]
    path = make_tar(str(tmp_path / "p.ova"), files, fmt)
    package = Package.open(path)
    assert package.names() == ["vm.ovf", "vm.mf", "empty.iso", "disk.vmdk"]
    for name, data in files:
        member = package.member(name)
        assert member.path == path and member.size == len(data)
        assert member.offset % 512 == 0
        assert sha(member_bytes(member)) == sha(data)
    assert package.descriptor_bytes() == DESCRIPTOR
    assert package.manifest().names() == ("disk.vmdk",)
    assert package.certificate_bytes() is None
    assert package.warnings == []


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_ova_long_names(tmp_path: Path, fmt: int) -> None:
    long_name = "d" * 150 + ".vmdk"
    path = make_tar(str(tmp_path / "p.ova"), [("vm.ovf", DESCRIPTOR), (long_name, DISK)], fmt)
    assert sha(member_bytes(Package.open(path).member(long_name))) == sha(DISK)


def test_ova_ustar_prefix(tmp_path: Path) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"disk.vmdk", DISK, prefix=b"p" * 120) + END
    package = Package.open(ova(tmp_path, blocks))
    assert sha(member_bytes(package.member("p" * 120 + "/disk.vmdk"))) == sha(DISK)


def test_ova_pax_utf8_name_and_size_record(tmp_path: Path) -> None:
    name = "disque-été.vmdk"
    path = make_tar(str(tmp_path / "p.ova"), [("vm.ovf", DESCRIPTOR), (name, DISK)],
                    tarfile.PAX_FORMAT)
    assert member_bytes(Package.open(path).member(name)) == DISK
    # A pax size record wins over the header's size field.
    pax = pax_record("size", str(len(DISK)))
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x")
              + header(b"disk.vmdk", 0) + DISK + bytes(-len(DISK) % 512) + END)
    package = Package.open(ova(tmp_path, blocks, "q.ova"))
    member = package.member("disk.vmdk")
    assert member.size == len(DISK) and member_bytes(member) == DISK


def test_ova_descriptor_not_first_warns(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"), [("disk.vmdk", DISK), ("vm.ovf", DESCRIPTOR)])
    package = Package.open(path)
    assert package.descriptor_name == "vm.ovf"
    assert package.member("disk.vmdk").offset == 512
    assert any("not the first member" in w for w in package.warnings)


def test_ova_directories_ignored_and_dot_slash(tmp_path: Path) -> None:
    blocks = (entry(b"./", typeflag=b"5") + entry(b"./vm.ovf", DESCRIPTOR)
              + entry(b"sub/", typeflag=b"5") + entry(b"sub/disk.vmdk", DISK) + END)
    package = Package.open(ova(tmp_path, blocks))
    assert package.names() == ["vm.ovf", "sub/disk.vmdk"]
    assert member_bytes(package.member("sub/disk.vmdk")) == DISK


def test_ova_descriptor_in_subfolder(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"), [("pkg/vm.ovf", DESCRIPTOR), ("pkg/vm.mf", b"x"),
                                              ("pkg/disk.vmdk", DISK), ("other.txt", b"o")])
    package = Package.open(path)
    assert package.descriptor_name == "vm.ovf"
    assert package.names() == ["vm.ovf", "vm.mf", "disk.vmdk"]
    assert member_bytes(package.member("disk.vmdk")) == DISK
    assert package.manifest_name() == "vm.mf"


def test_ova_manifest_and_certificate_names(tmp_path: Path) -> None:
    mf = b"SHA1(vm.ovf)= %s\n" % hashlib.sha1(DESCRIPTOR).hexdigest().encode()
    path = make_tar(str(tmp_path / "a.ova"), [("vm.ovf", DESCRIPTOR), ("other.mf", mf),
                                              ("other.cert", b"cert")])
    package = Package.open(path)
    assert package.manifest().names() == ("vm.ovf",)
    assert package.manifest_bytes() == mf
    assert package.certificate_bytes() == b"cert"
    assert package.warnings == [
        "%s: other.mf is not named after the descriptor; using it" % path,
        "%s: other.cert is not named after the descriptor; using it" % path]
    path = make_tar(str(tmp_path / "b.ova"), [("vm.ovf", DESCRIPTOR), ("x.mf", mf),
                                              ("y.mf", mf)])
    assert "2 .mf files (x.mf, y.mf) and none named vm.mf" in open_error(path)


def test_ova_chunks_and_missing_member(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"), [
        ("vm.ovf", DESCRIPTOR), ("d.vmdk.000000001", b"second"), ("d.vmdk.000000000", b"first")])
    package = Package.open(path)
    assert [member_bytes(c) for c in package.chunks("d.vmdk")] == [b"first", b"second"]
    with pytest.raises(PackageError, match=r"p\.ova:nope\.vmdk: no such member"):
        package.member("nope.vmdk")


def test_ova_without_descriptor(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"), [("disk.vmdk", DISK)])
    assert "holds no .ovf descriptor" in open_error(path)


def test_ova_two_descriptors(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"), [("a.ovf", DESCRIPTOR), ("b.ovf", DESCRIPTOR)])
    assert "2 .ovf descriptors (a.ovf, b.ovf); exactly one" in open_error(path)


@pytest.mark.parametrize("typeflag, what", [
    (b"1", "a hard link"), (b"2", "a symbolic link"), (b"3", "a character device"),
    (b"4", "a block device"), (b"6", "a FIFO"), (b"S", "a GNU sparse file"),
    (b"V", "a GNU volume label"), (b"Z", "unsupported entry type 'Z'"),
])
def test_ova_refuses_non_regular(tmp_path: Path, typeflag: bytes, what: str) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"disk.vmdk", typeflag=typeflag,
                                                  linkname=b"vm.ovf") + END
    message = open_error(ova(tmp_path, blocks))
    assert "entry at offset 1024" in message and what in message


def test_ova_refuses_tarfile_symlink(tmp_path: Path) -> None:
    path = str(tmp_path / "p.ova")
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("vm.ovf")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    assert "'vm.ovf' is a symbolic link" in open_error(path)


@pytest.mark.parametrize("name, reason", [
    (b"../vm.ovf", "path component '..'"), (b"/vm.ovf", "absolute path"),
    (b"a/../vm.ovf", "path component '..'"), (b"a\\vm.ovf", "backslash"),
    (b"a//vm.ovf", "path component ''"), (b"vm\x1b.ovf", "control character"),
    (b"vm\xff.ovf", "not UTF-8"), (b"a/./vm.ovf", "path component '.'"),
])
def test_ova_refuses_unsafe_names(tmp_path: Path, name: bytes, reason: str) -> None:
    message = open_error(ova(tmp_path, entry(name, DESCRIPTOR) + END))
    assert reason in message


def test_ova_refuses_duplicates(tmp_path: Path) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"d.vmdk", DISK) + entry(b"d.vmdk", b"x") + END
    assert "duplicate member name 'd.vmdk'" in open_error(ova(tmp_path, blocks))
    # The same name reached through a pax path record or a GNU long name.
    pax = pax_record("path", "d.vmdk")
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"d.vmdk", DISK)
              + entry(b"PaxHeader/x", pax, b"x") + entry(b"innocent", b"x") + END)
    assert "duplicate member name 'd.vmdk'" in open_error(ova(tmp_path, blocks, "b.ova"))
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"d.vmdk", DISK)
              + entry(b"././@LongLink", b"d.vmdk\0", b"L", magic=b"ustar  \0")
              + entry(b"innocent", b"x", magic=b"ustar  \0") + END)
    assert "duplicate member name 'd.vmdk'" in open_error(ova(tmp_path, blocks, "c.ova"))
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"./vm.ovf", b"x") + END
    assert "duplicate member name 'vm.ovf'" in open_error(ova(tmp_path, blocks, "d.ova"))
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"d/", typeflag=b"5") + entry(b"d", b"x") + END
    assert "duplicate member name 'd'" in open_error(ova(tmp_path, blocks, "e.ova"))


def test_ova_truncated(tmp_path: Path) -> None:
    whole = entry(b"vm.ovf", DESCRIPTOR) + entry(b"disk.vmdk", DISK) + END
    cut_in_data = whole[:1024 + 512 + 100]
    message = open_error(ova(tmp_path, cut_in_data))
    assert "truncated archive" in message and "offset 1024" in message
    cut_at_header = whole[:1024]  # no end-of-archive marker at all
    message = open_error(ova(tmp_path, cut_at_header, "b.ova"))
    assert "truncated archive: tar header at offset 1024" in message
    cut_in_header = whole[:1024 + 300]
    assert "truncated archive" in open_error(ova(tmp_path, cut_in_header, "c.ova"))


def test_ova_member_past_end_of_file(tmp_path: Path) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"disk.vmdk", 1 << 32) + DISK + END
    message = open_error(ova(tmp_path, blocks))
    assert "entry at offset 1024 (4294967296 bytes) ends past the end of the file" in message


def test_ova_bad_checksum(tmp_path: Path) -> None:
    second = bytearray(entry(b"disk.vmdk", DISK))
    second[0] = ord("D")  # the checksum no longer matches
    blocks = entry(b"vm.ovf", DESCRIPTOR) + bytes(second) + END
    assert "tar header at offset 1024: bad header checksum" in open_error(ova(tmp_path, blocks))


def test_ova_signed_checksum_accepted(tmp_path: Path) -> None:
    block = bytearray(header(b"vm.ovf", len(DESCRIPTOR)))
    block[345] = 0xE9  # a high byte in the (unused) prefix of a GNU header
    block[257:265] = b"ustar  \0"
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b >= 128 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    blocks = bytes(block) + DESCRIPTOR + bytes(-len(DESCRIPTOR) % 512) + END
    assert Package.open(ova(tmp_path, blocks)).descriptor_bytes() == DESCRIPTOR


def test_ova_bad_size_field(tmp_path: Path) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"d", size_field=b"00000000x12\0") + END
    assert "size field" in open_error(ova(tmp_path, blocks))


def test_ova_too_many_members(tmp_path: Path) -> None:
    path = make_tar(str(tmp_path / "p.ova"),
                    [("vm.ovf", DESCRIPTOR)] + [("f%d" % i, b"") for i in range(10000)])
    assert "more than 10000 members" in open_error(path)
    path = make_tar(str(tmp_path / "q.ova"), [("vm.ovf", DESCRIPTOR), ("a", b""), ("b", b"")])
    assert "more than 2 members" in open_error(path, max_members=2)
    assert Package.open(path, max_members=3).names() == ["vm.ovf", "a", "b"]


def test_ova_huge_pax_header(tmp_path: Path) -> None:
    pax = pax_record("comment", "x" * (1 << 20))
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x") + entry(b"d") + END
    assert "more than the 1048576 allowed" in open_error(ova(tmp_path, blocks))


def test_ova_long_name_cap(tmp_path: Path) -> None:
    long_name = b"n" * 5000 + b"\0"
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"././@LongLink", long_name, b"L")
              + entry(b"d") + END)
    assert "more than the 4096 allowed" in open_error(ova(tmp_path, blocks))
    pax = pax_record("path", "p" * 5000)
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x") + entry(b"d") + END
    assert "name longer than 4096 bytes" in open_error(ova(tmp_path, blocks, "b.ova"))


def test_ova_base256_size(tmp_path: Path) -> None:
    field = b"\x80" + len(DISK).to_bytes(11, "big")
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + header(b"disk.vmdk", size_field=field)
              + DISK + bytes(-len(DISK) % 512) + END)
    package = Package.open(ova(tmp_path, blocks))
    member = package.member("disk.vmdk")
    assert member.size == len(DISK) and member_bytes(member) == DISK
    # tarfile writes base-256 for members of 8 GiB and more: the size is read
    # right and, with no data behind it, refused.
    huge = b"\x80" + (8 << 30).to_bytes(11, "big")
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"big.vmdk", size_field=huge) + END
    assert "(8589934592 bytes) ends past the end" in open_error(ova(tmp_path, blocks, "b.ova"))
    negative = b"\xff" * 12
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"neg", size_field=negative) + END
    assert "negative size" in open_error(ova(tmp_path, blocks, "c.ova"))


def test_ova_pax_sparse_and_global_refused(tmp_path: Path) -> None:
    pax = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x") + entry(b"d") + END
    assert "sparse member" in open_error(ova(tmp_path, blocks))
    pax = pax_record("path", "evil")
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"Global", pax, b"g") + entry(b"d") + END
    assert "global pax header sets 'path'" in open_error(ova(tmp_path, blocks, "b.ova"))
    pax = pax_record("comment", "fine")
    blocks = entry(b"Global", pax, b"g") + entry(b"vm.ovf", DESCRIPTOR) + END
    assert Package.open(ova(tmp_path, blocks, "c.ova")).names() == ["vm.ovf"]


@pytest.mark.parametrize("records, reason", [
    (b"5 a=b\n", "has a wrong length"),
    (b"06 a=b\n", "malformed record"),
    (b"x a=b\n", "malformed record"),
    (b"7 abc\n\n", "no KEY=VALUE"),
    (b"6 a=b\n6 a=c\n", "duplicate record 'a'"),
    (b"11 size=1x\n", "pax size '1x' is not a decimal number"),
    (b"15 path=\xff\xfe.ovf\n", "not UTF-8"),
])
def test_ova_malformed_pax(tmp_path: Path, records: bytes, reason: str) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", records, b"x") + entry(b"d") + END
    assert reason in open_error(ova(tmp_path, blocks))


def test_ova_dangling_and_doubled_extended_headers(tmp_path: Path) -> None:
    pax = pax_record("path", "x")
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x") + END
    assert "extended header not followed by a member" in open_error(ova(tmp_path, blocks))
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"P1", pax, b"x") + entry(b"P2", pax, b"x")
              + entry(b"d") + END)
    assert "two pax extended headers in a row" in open_error(ova(tmp_path, blocks, "b.ova"))
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"L", b"x\0", b"L")
              + entry(b"PaxHeader", pax, b"x") + entry(b"d") + END)
    assert "both a GNU long name and a pax path" in open_error(ova(tmp_path, blocks, "c.ova"))


def test_ova_unknown_magic(tmp_path: Path) -> None:
    blocks = entry(b"vm.ovf", DESCRIPTOR) + entry(b"d", magic=b"tarxx\x0000") + END
    assert "unknown header magic" in open_error(ova(tmp_path, blocks))


def test_not_a_tar_and_empty(tmp_path: Path) -> None:
    path = write(str(tmp_path / "x.ova"), b"<?xml version='1.0'?>" + bytes(600))
    assert "not an OVF descriptor or OVA archive (not a tar archive)" in open_error(path)
    path = write(str(tmp_path / "empty.ova"), b"")
    assert "not an OVF descriptor or OVA archive" in open_error(path)
    path = write(str(tmp_path / "zeros.ova"), bytes(1024))
    assert "not an OVF descriptor or OVA archive" in open_error(path)


def test_read_tar_direct_errors(tmp_path: Path) -> None:
    path = write(str(tmp_path / "empty.tar"), b"")
    with pytest.raises(PackageError, match="truncated archive: tar header at offset 0"):
        tarreader.read_tar(path)
    os.symlink("empty.tar", str(tmp_path / "link.tar"))
    with pytest.raises(PackageError, match="cannot open"):
        tarreader.read_tar(str(tmp_path / "link.tar"))
    assert tarreader.read_tar(write(str(tmp_path / "z.tar"), END)) == ()


# ---------------------------------------------------------------- gzip OVA
# Each case runs with disks/gzipstream.gunzip forced onto each of its ways,
# which the fixture checks it took.

INFLATERS = ["gzipstream-" + name for name in PATHS]


class Inflater:
    """gzipstream.gunzip, recording how it inflated."""

    def __init__(self) -> None:
        self.used: List[str] = []

    def __call__(self, members, write, name, *, padding):  # type: ignore[no-untyped-def]
        self.used.append(gzipstream.gunzip(members, write, name, padding=padding))
        return self.used[-1]


@pytest.fixture(params=INFLATERS)
def inflate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    way = request.param.split("-", 1)[1]
    choose_tools(monkeypatch, *PATHS[way])
    inflater = Inflater()
    yield inflater
    # libdeflate: the members gnt-ovf writes, found without a tool.
    assert set(inflater.used) <= {way, "libdeflate"}


def open_gzip_ova(path: str, staging: str, inflate: Optional[Inflater],
                  **kwargs: object) -> Package:
    return Package.open(path, staging, inflate=inflate, **kwargs)  # type: ignore[arg-type]


def test_gzip_ova_staged_and_removed(tmp_path: Path, inflate: Optional[Inflater]) -> None:
    tar_path = make_tar(str(tmp_path / "p.tar"), [("vm.ovf", DESCRIPTOR), ("disk.vmdk", DISK)])
    with open(tar_path, "rb") as stream:
        plain = stream.read()
    path = write(str(tmp_path / "p.ova"), gzip.compress(plain))
    staging = tmp_path / "staging"
    staging.mkdir()
    assert "needs a staging directory" in open_error(path, inflate=inflate)
    with open_gzip_ova(path, str(staging), inflate) as package:
        member = package.member("disk.vmdk")
        # The copy is on the staging file system, reachable by no name.
        assert os.fstat(member.fd).st_dev == os.stat(str(staging)).st_dev
        assert os.fstat(member.fd).st_nlink == 0
        assert os.listdir(str(staging)) == []
        assert sha(member_bytes(member)) == sha(DISK)
        assert package.descriptor_bytes() == DESCRIPTOR
    assert os.listdir(str(staging)) == []


GOOD_GZIP = {  # how the tar is gzip-compressed: tools, members, padding
    "one member": lambda plain: gzip.compress(plain, mtime=0),
    "gzip -9": lambda plain: run_filter(["gzip", "-9", "-n", "-c"], plain),
    "pigz": lambda plain: run_filter(["pigz", "-n", "-c"], plain),
    "igzip": lambda plain: run_filter(["igzip", "-c"], plain),
    "two members, padded": lambda plain: gzip.compress(plain[:1000], mtime=0)
    + gzip.compress(plain[1000:], mtime=0) + bytes(100),
    # A tape pads to its block; the trailer itself ends in zero bytes (the
    # tar's size is a multiple of 512).
    "tape padding": lambda plain: tape_padded(gzip.compress(plain, mtime=0), 10240),
    "written by gnt-ovf": lambda plain: gnt_ovf_gzip(plain) + bytes(512),
}


def run_filter(argv: List[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def tape_padded(data: bytes, block: int) -> bytes:
    assert data.endswith(b"\0")
    return data + bytes(-len(data) % block or block)


def gnt_ovf_gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    writer = GzipWriter(out)
    writer.write(data)
    writer.finish()
    return out.getvalue()


@pytest.mark.parametrize("kind", list(GOOD_GZIP))
def test_gzip_ova_members_tools_and_padding(tmp_path: Path, inflate: Optional[Inflater],
                                            kind: str) -> None:
    plain = make_tar_bytes(tmp_path)
    path = write(str(tmp_path / "p.ova"), GOOD_GZIP[kind](plain))
    with open_gzip_ova(path, str(tmp_path), inflate) as package:
        assert sha(member_bytes(package.member("disk.vmdk"))) == sha(DISK)
        assert package.descriptor_bytes() == DESCRIPTOR
    if inflate is not None:
        assert (inflate.used == ["libdeflate"]) == (kind == "written by gnt-ovf")


BAD_GZIP = {  # (how the good stream is spoilt, the rule the refusal names)
    "truncated": (lambda whole: whole[:len(whole) // 2], "gzip stream is truncated"),
    "corrupt": (lambda whole: whole[:20] + b"\xff" * 20 + whole[40:], "corrupt gzip data"),
    "trailing garbage": (lambda whole: whole + b"garbage",
                         "trailing data after the gzip stream"),
    "zeros then garbage": (lambda whole: whole + bytes(4096) + b"garbage",
                           "trailing data after the gzip stream"),
    "zeros then a member": (lambda whole: whole + bytes(100) + gzip.compress(b"more"),
                            "trailing data after the gzip stream"),
    "not a tar": (lambda whole: gzip.compress(b"<Envelope/>" * 100), "bad header checksum"),
}


@pytest.mark.parametrize("case", list(BAD_GZIP))
def test_gzip_ova_errors_leave_nothing(tmp_path: Path, inflate: Optional[Inflater],
                                       case: str) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    change, rule = BAD_GZIP[case]
    path = write(str(tmp_path / "bad.ova"), change(gzip.compress(make_tar_bytes(tmp_path))))
    assert rule in open_error(path, str(staging), inflate=inflate)
    assert os.listdir(str(staging)) == []


def test_gzip_ova_staging_missing(tmp_path: Path, inflate: Optional[Inflater]) -> None:
    path = write(str(tmp_path / "ok.ova"), gzip.compress(make_tar_bytes(tmp_path)))
    assert "cannot create a file in" in open_error(path, str(tmp_path / "nowhere"),
                                                   inflate=inflate)


def make_tar_bytes(tmp_path: Path) -> bytes:
    path = make_tar(str(tmp_path / "m.tar"), [("vm.ovf", DESCRIPTOR), ("disk.vmdk", DISK)])
    with open(path, "rb") as stream:
        return stream.read()


# ---------------------------------------------------------------- corpus


def test_corpus_gzip_ova(tmp_path: Path, inflate: Optional[Inflater]) -> None:
    with open_gzip_ova(os.path.join(CORPUS, "ganeti", "ova.ova"), str(tmp_path),
                       inflate) as package:
        assert package.descriptor_name == "ganeti.ovf"
        assert package.names() == ["ganeti.ovf", "new_disk.vmdk"]
        disk = package.member("new_disk.vmdk")
        assert disk.size == 1114624
        assert member_bytes(disk)[:4] == b"KDMV"
        assert b"<Envelope" in package.descriptor_bytes()
        assert package.manifest() is None and package.warnings == []


def test_corpus_bad_ovas(tmp_path: Path) -> None:
    message = open_error(os.path.join(CORPUS, "ganeti", "no_ovf.ova"), str(tmp_path),
                         inflate=gzipstream.gunzip)
    assert "holds no .ovf descriptor" in message
    message = open_error(os.path.join(CORPUS, "ganeti", "wrong_ova.ova"), str(tmp_path),
                         inflate=gzipstream.gunzip)
    assert "not an OVF descriptor or OVA archive" in message
    assert os.listdir(str(tmp_path)) == []


def test_corpus_folder_copy(tmp_path: Path) -> None:
    for name in ("ganeti.ovf", "ganeti.mf", "new_disk.vmdk"):
        shutil.copy(os.path.join(CORPUS, "ganeti", name), str(tmp_path / name))
    package = Package.open(str(tmp_path / "ganeti.ovf"))
    assert package.manifest().names() == ("ganeti.ovf", "new_disk.vmdk")


# ---------------------------------------------------------------- fuzzing


def _seed_tars() -> List[bytes]:
    pax = pax_record("path", "p.vmdk") + pax_record("size", "5")
    return [
        entry(b"vm.ovf", DESCRIPTOR) + entry(b"d.vmdk", DISK) + END,
        entry(b"PaxHeader", pax, b"x") + header(b"x", 0) + b"hello" + bytes(507) + END,
        entry(b"././@LongLink", b"long.ovf\0", b"L", magic=b"ustar  \0")
        + entry(b"l", b"abc", magic=b"ustar  \0") + END,
    ]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.sampled_from(_seed_tars()),
       edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 4000)))
def test_tar_reader_fuzz(tmp_path: Path, seed: bytes, edits: List[Tuple[int, int]],
                         cut: Optional[int]) -> None:
    data = bytearray(seed)
    for position, value in edits:
        if position < len(data):
            data[position] = value
            if position < 512:  # keep the first checksum right so parsing goes deeper
                data[148:156] = b" " * 8
                data[148:156] = b"%06o\0 " % sum(data[:512])
    if cut is not None:
        data = data[:cut]
    path = write(str(tmp_path / "fuzz.ova"), bytes(data))
    try:
        members = tarreader.read_tar(path)
    except OvfError:
        return
    size = len(data)
    for member in members:
        assert member.offset + member.size <= size
        assert tarreader.member_name_problem(member.name) is None


def test_gzip_ova_decompresses_within_its_cap(tmp_path: Path,
                                               inflate: Optional[Inflater]) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    data = make_tar_bytes(tmp_path)
    path = write(str(tmp_path / "p.ova"), gzip.compress(data))
    assert ("decompresses to more than %d bytes (--max-disk-size)" % (len(data) - 1)
            in open_error(path, str(staging), max_staged=len(data) - 1, inflate=inflate))
    assert os.listdir(str(staging)) == []
    with open_gzip_ova(path, str(staging), inflate, max_staged=len(data)) as package:
        assert member_bytes(package.member("disk.vmdk")) == DISK


def test_package_in_a_folder_that_cannot_be_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "missing" / "vm.ova")
    assert open_error(path) == "%s: cannot open its folder: No such file or directory" % path
