"""Pins of reader.py's and manifest.py's limits that a mutation run found
untested: the size caps of the descriptor, manifest and certificate (at the
cap read, one byte over refused), chunk numbering, how an unopenable member
is reported, whole-member digests and the shortening of quoted lines.
"""

import gzip
import hashlib
import io
import resource
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import ROOT

from members import opened_member
from ganeti_ovf.errors import ManifestError, PackageError
from ganeti_ovf.package import manifest, reader
from ganeti_ovf.package.reader import Package

DESCRIPTOR = b"<?xml version='1.0'?><Envelope/>\n"


def folder(tmp_path: Path, **files: bytes) -> Package:
    (tmp_path / "vm.ovf").write_bytes(DESCRIPTOR)
    for name, data in files.items():
        (tmp_path / name.replace("_", ".")).write_bytes(data)
    return Package.open(str(tmp_path / "vm.ovf"))


def sized(path: Path, size: int) -> None:
    with open(path, "wb") as stream:
        stream.truncate(size)  # sparse: costs nothing on disk


def test_caps_are_the_documented_ones():
    assert (reader.DESCRIPTOR_CAP, reader.MANIFEST_CAP, reader.CERTIFICATE_CAP) == \
        (32 << 20, 4 << 20, 1 << 20)


@pytest.mark.parametrize("name, cap, read", [
    ("vm.ovf", 32 << 20, Package.descriptor_bytes),
    ("vm.mf", 4 << 20, Package.manifest_bytes),
    ("vm.cert", 1 << 20, Package.certificate_bytes),
])
def test_size_caps(tmp_path: Path, name: str, cap: int, read) -> None:
    folder(tmp_path, vm_mf=b"", vm_cert=b"")
    sized(tmp_path / name, cap)
    assert len(read(Package.open(str(tmp_path / "vm.ovf")))) == cap
    sized(tmp_path / name, cap + 1)
    with pytest.raises(PackageError) as info:
        read(Package.open(str(tmp_path / "vm.ovf")))
    assert str(info.value) == "%s: %d bytes, more than the %d allowed" % (
        tmp_path / name, cap + 1, cap)


def test_manifest_cap_applies_to_parsing_too(tmp_path: Path) -> None:
    package = folder(tmp_path, vm_mf=b"")
    sized(tmp_path / "vm.mf", (4 << 20) + 1)
    with pytest.raises(PackageError, match="more than the 4194304 allowed"):
        package.manifest()


def test_chunk_suffix_has_exactly_nine_digits(tmp_path: Path) -> None:
    package = folder(tmp_path, **{"d_vmdk_00000000": b"8", "d_vmdk_0000000000": b"10"})
    with pytest.raises(PackageError, match=r"no chunk files d\.vmdk\.000000000 "):
        package.chunks("d.vmdk")
    (tmp_path / "d.vmdk.000000000").write_bytes(b"first")
    (tmp_path / "d.vmdk.000000001").write_bytes(b"second")
    assert [m.name for m in package.chunks("d.vmdk")] == ["d.vmdk.000000000",
                                                          "d.vmdk.000000001"]


def test_unopenable_member_reported_with_the_reason(tmp_path: Path) -> None:
    package = folder(tmp_path)
    name = "n" * 300  # a valid member name no filesystem holds
    with pytest.raises(PackageError) as info:
        package.member(name)
    assert str(info.value) == "%s: cannot open: File name too long" % (tmp_path / name)


def test_member_read_from_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    assert reader.read_member(opened_member("m", str(path), 3, 4)) == b"3456"


def test_digest_covers_every_byte_of_a_large_member(tmp_path: Path) -> None:
    # One byte more than a read: the last piece is a single byte.
    data = bytes(range(256)) * (manifest.READ_SIZE // 256) + b"\x01"
    path = tmp_path / "big"
    path.write_bytes(b"prefix" + data + b"suffix")
    member = opened_member("big", str(path), 6, len(data))
    assert manifest.hash_member(member, "SHA256") == hashlib.sha256(data).hexdigest()
    assert manifest.hash_member(opened_member("big", str(path), 6, 1), "sha1") == \
        hashlib.sha1(data[:1]).hexdigest()


def test_quoted_lines_are_shortened_past_80_characters() -> None:
    line = "x" * 80
    with pytest.raises(ManifestError) as info:
        manifest.parse_manifest(line.encode(), "m.mf")
    assert str(info.value).endswith(": %r" % line)
    with pytest.raises(ManifestError) as info:
        manifest.parse_manifest(line.encode() + b"y", "m.mf")
    assert str(info.value).endswith(": %r" % (line + "..."))


def test_entry_lookup() -> None:
    parsed = manifest.parse_manifest(b"SHA1(a)= " + b"0" * 40 + b"\n", "m.mf")
    assert parsed.entry("a").name == "a"
    assert parsed.entry("b") is None


def test_gzip_ova_that_cannot_be_staged(tmp_path: Path) -> None:
    # A staging filesystem that refuses the write (here: a file size limit
    # in a child process): the error names the staging directory, and the
    # partial copy is removed.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("vm.ovf")
        info.size = len(DESCRIPTOR)
        tar.addfile(info, io.BytesIO(DESCRIPTOR))
        info = tarfile.TarInfo("disk.img")
        info.size = 256 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    (tmp_path / "vm.ova").write_bytes(gzip.compress(archive.getvalue()))
    staging = tmp_path / "staging"
    staging.mkdir()
    script = ("from ganeti_ovf.disks import gzipstream\n"
              "from ganeti_ovf.package.reader import Package\n"
              "try:\n"
              "    Package.open(%r, %r, inflate=gzipstream.gunzip)\n"
              "except Exception as err:\n"
              "    print(type(err).__name__, err)\n" % (str(tmp_path / "vm.ova"), str(staging)))

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, preexec_fn=limit_file_size)
    assert result.stdout == "PackageError %s: cannot decompress into %s: File too large\n" % (
        tmp_path / "vm.ova", staging), result.stderr
    assert list(staging.iterdir()) == []
