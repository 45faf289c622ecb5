"""Pins of the import's integrity and size checks that a mutation run found
untested, each on its own (the pipeline tests stop at the first refusal).

importer.py: a certificate needs a manifest (with and without
--require-signature); a present manifest must list the descriptor; each
--max-disk-size check (declared capacity here, the image's own virtual size
and the materialising bound in disks/convert.py); the free-space check.
Bounds are tested from both sides and the rule named in the message.
"""

import gzip
import hashlib
import os
from types import SimpleNamespace

import pytest

from members import opened_member
from ganeti_ovf import importer
from ganeti_ovf.disks import convert
from ganeti_ovf.errors import DiskError, ManifestError
from ganeti_ovf.model import (COMPRESSION_GZIP, COMPRESSION_NONE, Disk, FileRef, Member,
                              VirtualSystem)
from ganeti_ovf.package.reader import Package
from ganeti_ovf.package.signature import SignatureError

MIB = 1024 ** 2
DESCRIPTOR = b"<?xml version='1.0'?><Envelope/>\n"
DISK = b"disk bytes\n" * 100


def digest_line(name: str, data: bytes) -> bytes:
    return b"SHA256(%s)= %s\n" % (name.encode(), hashlib.sha256(data).hexdigest().encode())


def make_folder(tmp_path, manifest=None, cert=None) -> Package:
    (tmp_path / "vm.ovf").write_bytes(DESCRIPTOR)
    (tmp_path / "disk.img").write_bytes(DISK)
    if manifest is not None:
        (tmp_path / "vm.mf").write_bytes(manifest)
    if cert is not None:
        (tmp_path / "vm.cert").write_bytes(cert)
    return Package.open(str(tmp_path / "vm.ovf"))


class Said(list):
    """A feedback function that keeps what it was told."""

    def __call__(self, text: str) -> None:
        self.append(text)


# ------------------------------------------------------------------ signature policy


@pytest.mark.parametrize("require", [True, False])
def test_certificate_without_manifest_refused(tmp_path, require):
    package = make_folder(tmp_path, cert=b"SHA256(vm.mf)= 00\n")
    with pytest.raises(SignatureError) as info:
        importer.check_signature(package, None, require, Said())
    assert str(info.value) == "vm.cert: a certificate without a manifest to sign"


def test_unsigned_package_refused_only_when_required(tmp_path):
    package = make_folder(tmp_path, manifest=digest_line("vm.ovf", DESCRIPTOR))
    with pytest.raises(SignatureError, match=r"vm.ovf: the package is not signed \(required"
                                             r" by --require-signature\)"):
        importer.check_signature(package, None, True, Said())
    said = Said()
    assert importer.check_signature(package, None, False, said) is None
    assert said == []


# ------------------------------------------------------------------ manifest coverage


def test_manifest_must_list_the_descriptor(tmp_path):
    package = make_folder(tmp_path, manifest=digest_line("disk.img", DISK))
    disk = package.member("disk.img")
    for require in (False, True):
        with pytest.raises(ManifestError) as info:
            importer.check_manifest(package, [disk], require, Said())
        assert str(info.value) == "%s: no digest for vm.ovf" % (tmp_path / "vm.mf")


def test_manifest_listing_everything_checks_the_descriptor_now(tmp_path):
    manifest = digest_line("vm.ovf", DESCRIPTOR) + digest_line("disk.img", DISK)
    package = make_folder(tmp_path, manifest=manifest)
    disk = package.member("disk.img")
    checks = importer.check_manifest(package, [disk], True, Said())
    assert [(entry.name, member.name) for entry, member in checks] == [("disk.img",
                                                                         "disk.img")]
    (tmp_path / "tampered").mkdir()
    tampered = make_folder(tmp_path / "tampered", manifest=manifest)
    (tmp_path / "tampered" / "vm.ovf").write_bytes(DESCRIPTOR.replace(b"Envelope", b"Envelopf"))
    with pytest.raises(ManifestError, match="vm.ovf: SHA256 digest mismatch"):
        importer.check_manifest(tampered, [disk], False, Said())


def test_missing_manifest_warns_or_is_refused(tmp_path):
    package = make_folder(tmp_path)
    said = Said()
    assert importer.check_manifest(package, [], False, said) == []
    assert said == ["WARNING: the package has no manifest: its files are not verified"]
    with pytest.raises(ManifestError, match="no manifest \\(required by --require-manifest\\)"):
        importer.check_manifest(package, [], True, Said())


# ------------------------------------------------------------------ --max-disk-size


def system_with(capacity: int, size=None) -> VirtualSystem:
    ref = FileRef("file0", "disk.img", size)
    return VirtualSystem(system_id="vm", name="vm", disks=(Disk("vmdisk0", capacity, ref),))


def test_declared_capacity_bound():
    assert importer._check_sizes(system_with(64 * MIB), {}, 64 * MIB) == []
    with pytest.raises(DiskError) as info:
        importer._check_sizes(system_with(64 * MIB + 1), {}, 64 * MIB)
    assert str(info.value) == ("disk vmdisk0: capacity 67108865 bytes is over the maximum"
                               " of 67108864 (--max-disk-size)")


def test_declared_file_size_checked_against_the_members():
    members = {"vmdisk0": [opened_member("disk.img", "/nonexistent", 0, 1000)]}
    assert importer._check_sizes(system_with(MIB, 1000), members, MIB) == []
    assert importer._check_sizes(system_with(MIB, 999), members, MIB) == [
        "disk.img: ovf:size says 999 bytes, the file has 1000"]


@pytest.fixture
def staging(tmp_path):
    path = tmp_path / "staging"
    path.mkdir()
    return path


def raw_member(tmp_path, size: int) -> Member:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\xa5" * size)
    return opened_member("disk.raw", str(path), 0, size)


def test_image_virtual_size_bound(tmp_path, staging):
    # No capacity declared: the image itself is what the bound must catch.
    member = raw_member(tmp_path, MIB)
    dest = tmp_path / "at-limit.raw"
    done = convert.import_disk([member], COMPRESSION_NONE, None, str(dest), str(staging),
                               max_size=MIB)
    assert done.virtual_size == MIB and os.path.getsize(dest) == MIB
    with pytest.raises(DiskError) as info:
        convert.import_disk([member], COMPRESSION_NONE, None, str(tmp_path / "over.raw"),
                            str(staging), max_size=MIB - 1)
    assert str(info.value) == ("disk.raw: virtual size 1048576 bytes is over the maximum"
                               " of 1048575 (--max-disk-size)")
    assert not os.path.exists(tmp_path / "over.raw")


def test_materialising_bound_follows_max_size_without_capacity(tmp_path, staging):
    # No ovf:capacity: what a gzip file may expand to is bounded by
    # --max-disk-size plus an eighth plus the metadata slack.
    max_size = 8 * MIB
    limit = max_size + max_size // 8 + 64 * MIB  # the metadata slack
    path = tmp_path / "disk.gz"
    path.write_bytes(gzip.compress(bytes(limit + 1), 1))
    member = opened_member("disk.gz", str(path), 0, os.path.getsize(path))
    with pytest.raises(DiskError) as info:
        convert.import_disk([member], COMPRESSION_GZIP, None, str(tmp_path / "out.raw"),
                            str(staging), max_size=max_size)
    assert str(info.value) == ("disk.gz: expands beyond the limit of %d bytes (--max-disk-size"
                               " %d and image metadata; no ovf:capacity)" % (limit, max_size))
    assert os.listdir(staging) == []


def test_materialising_bound_is_inclusive(tmp_path, staging):
    path = tmp_path / "disk"
    path.write_bytes(b"\x01" * 3000)
    member = opened_member("disk", str(path), 0, 3000)
    staged = convert.materialize([member], COMPRESSION_NONE, str(staging), 3000)
    assert staged.size == 3000
    os.close(staged.fd)
    with pytest.raises(DiskError, match="expands beyond the limit of 2999 bytes"):
        convert.materialize([member], COMPRESSION_NONE, str(staging), 2999)


# ------------------------------------------------------------------ free space


def members_of(*sizes: int) -> list:
    return [opened_member("d%d" % i, "/nonexistent", 0, size) for i, size in enumerate(sizes)]


def test_free_space_bound(tmp_path, monkeypatch):
    # A fixed filesystem answer: others write to this machine's disks.
    fixed = SimpleNamespace(f_bavail=1000, f_frsize=4096)
    monkeypatch.setattr(importer.os, "statvfs", lambda path: fixed)
    importer._check_free_space(str(tmp_path), members_of(4096 * 500, 4096 * 500))
    with pytest.raises(DiskError) as info:
        importer._check_free_space(str(tmp_path), members_of(4096 * 500, 4096 * 500 + 1))
    assert str(info.value) == ("%s: 4096000 bytes free, the package's disks need at least"
                               " 4096001" % tmp_path)


def test_free_space_of_the_real_filesystem(tmp_path):
    stats = os.statvfs(str(tmp_path))
    free = stats.f_bavail * stats.f_frsize
    with pytest.raises(DiskError, match="bytes free, the package's disks need at least"):
        importer._check_free_space(str(tmp_path), members_of(free + (1 << 40)))
    importer._check_free_space(str(tmp_path), members_of(1))
    # An output directory that does not exist yet is checked by the conversion.
    importer._check_free_space(str(tmp_path / "later"), members_of(1 << 60))
