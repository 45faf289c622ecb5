"""Files in sub-folders of a package (issue 12): read in place, never through
a link out of the package, even when the folder changes after it was checked."""

import hashlib
import io
import os
import tarfile

import pytest

from ganeti_ovf.disks import formats
from ganeti_ovf.errors import PackageError
from ganeti_ovf.package.manifest import hash_member
from ganeti_ovf.package.reader import Package, read_member

DESCRIPTOR = b"<?xml version='1.0'?><Envelope/>\n"
DISK = b"in the package" * 100
SECRET = b"outside the package" * 100


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.fixture
def layout(tmp_path):
    """pkg/appliance.ovf, pkg/disks/disk1.vmdk and, outside, secret/disk1.vmdk."""
    write(str(tmp_path / "pkg" / "appliance.ovf"), DESCRIPTOR)
    write(str(tmp_path / "pkg" / "disks" / "disk1.vmdk"), DISK)
    write(str(tmp_path / "pkg" / "disks" / "deeper" / "sun..vhw-disk2.img"), DISK[:100])
    write(str(tmp_path / "secret" / "disk1.vmdk"), SECRET)
    return tmp_path


def read_all(member):
    return read_member(member)


def test_members_in_sub_folders(layout):
    with Package.open(str(layout / "pkg" / "appliance.ovf")) as package:
        member = package.member("disks/disk1.vmdk")
        assert (member.name, member.size) == ("disks/disk1.vmdk", len(DISK))
        assert read_all(member) == DISK
        deeper = package.member("disks/deeper/sun..vhw-disk2.img")
        assert read_all(deeper) == DISK[:100]
        assert package.has("disks/disk1.vmdk") and not package.has("disks/nope.vmdk")


def test_swapping_the_sub_folder_for_a_link_after_the_check(layout):
    """The member keeps reading the checked directory: digests, the format
    inspector and anything given the member's path see the package's bytes."""
    pkg = layout / "pkg"
    with Package.open(str(pkg / "appliance.ovf")) as package:
        member = package.member("disks/disk1.vmdk")
        os.rename(str(pkg / "disks"), str(pkg / "moved"))
        os.symlink(str(layout / "secret"), str(pkg / "disks"))
        assert read_all(member) == DISK
        assert hash_member(member, "SHA256") == hashlib.sha256(DISK).hexdigest()
        assert os.pread(formats.open_image(member), len(DISK), 0) == DISK
        with open("/proc/self/fd/%d" % member.fd, "rb") as stream:  # what qemu-img opens
            assert stream.read() == DISK
        # Looking the member up again still refuses nothing new: the folder
        # was pinned when first checked.
        assert read_all(package.member("disks/disk1.vmdk")) == DISK
    # A new run sees the link and refuses it.
    with Package.open(str(pkg / "appliance.ovf")) as package:
        with pytest.raises(PackageError, match="symbolic link"):
            package.member("disks/disk1.vmdk")


@pytest.mark.parametrize("link", ["disks", "disks/deeper"])
def test_linked_sub_folders_are_refused(layout, link):
    pkg = layout / "pkg"
    target = pkg / link
    os.rename(str(target), str(layout / "aside"))
    os.symlink(str(layout / "aside"), str(target))  # pointing inside or out: refused
    with Package.open(str(pkg / "appliance.ovf")) as package:
        name = "disks/disk1.vmdk" if link == "disks" else "disks/deeper/sun..vhw-disk2.img"
        with pytest.raises(PackageError) as caught:
            package.member(name)
        assert "symbolic link" in str(caught.value)


@pytest.mark.parametrize("name, rule", [
    ("disks/../../secret/disk1.vmdk", "'..'"), ("/etc/passwd", "absolute path"),
    ("disks\\disk1.vmdk", "backslash"), ("disks//disk1.vmdk", "''"),
])
def test_unsafe_member_names_name_the_rule(layout, name, rule):
    with Package.open(str(layout / "pkg" / "appliance.ovf")) as package:
        with pytest.raises(PackageError) as caught:
            package.member(name)
        assert "unsafe member name" in str(caught.value) and rule in str(caught.value)


def test_closing_releases_pinned_folders(layout):
    package = Package.open(str(layout / "pkg" / "appliance.ovf"))
    before = len(os.listdir("/proc/self/fd"))
    package.member("disks/disk1.vmdk")
    package.member("disks/deeper/sun..vhw-disk2.img")
    assert len(os.listdir("/proc/self/fd")) == before + 4  # two folders, two files
    package.member("disks/disk1.vmdk")  # each folder and file is opened once
    assert len(os.listdir("/proc/self/fd")) == before + 4
    package.close()  # and the descriptor and the folder, open since Package.open
    assert len(os.listdir("/proc/self/fd")) == before - 2


def test_chunks_in_a_pinned_sub_folder(layout):
    pkg = layout / "pkg"
    parts = [DISK[:500], DISK[500:]]
    for index, part in enumerate(parts):
        write(str(pkg / "disks" / ("big.vmdk.%09d" % index)), part)
    with Package.open(str(pkg / "appliance.ovf")) as package:
        chunks = package.chunks("disks/big.vmdk")
        assert [c.name for c in chunks] == ["disks/big.vmdk.000000000",
                                            "disks/big.vmdk.000000001"]
        assert b"".join(read_all(c) for c in chunks) == DISK


def test_ova_members_with_a_directory_part(tmp_path):
    path = str(tmp_path / "appliance.ova")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (("appliance.ovf", DESCRIPTOR), ("disks/", None),
                           ("disks/disk1.vmdk", DISK)):
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
                continue
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with Package.open(path) as package:
        member = package.member("disks/disk1.vmdk")
        assert read_all(member) == DISK
        assert not package.has("disks")
