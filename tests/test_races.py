"""A package that changes while it is imported (issue 13: one open per file).

Whoever owns a package may swap, link or rewrite its files between our
checks and our use of them.  Each test changes the package at a fixed point
of the import (a stage function wrapped to act first: no timing luck) and
asserts what was used: the bytes that were checked, or a refusal naming the
rule, and nothing published.
"""

import hashlib
import os

import pytest
from hostile import make_ca, make_leaf, sign_package
from packaging import MIB, build_package, sha256_file

from ganeti_ovf import importer
from ganeti_ovf.disks import convert
from ganeti_ovf.errors import OvfError
from ganeti_ovf.package import openfile
from ganeti_ovf.plan import ImportOverrides

SECRET = b"root-only secret\n" * 65536  # 1.1 MiB: longer than the disk's first read


def request(path, out, **options):
    return importer.ImportRequest(package_path=path, output_dir=out,
                                  overrides=ImportOverrides(), **options)


def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    os.chmod(str(path), 0o600)
    return path


def run_before(monkeypatch, module, name, act):
    """Make `module.name` call act() first: the attacker's move, at exactly
    that point of the import."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        act()
        return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)


def run_after(monkeypatch, module, name, act):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        act()
        return result
    monkeypatch.setattr(module, name, wrapped)


def published(out):
    return [name for name in os.listdir(out) if not name.startswith(".")] \
        if os.path.isdir(out) else []


def test_disk_swapped_for_a_link_after_the_check_imports_the_checked_file(
        tmp_path, monkeypatch):
    """The package folder is replaced, after the package opened its files, by
    one whose disk is a symlink to a root-only file (the disk file itself is
    untouched, so nothing about it changes): the import copies the package's
    disk, never the secret."""
    path, raws = build_package(str(tmp_path / "pkg"), disks=(("raw", MIB),),
                               manifest=None)
    expected = sha256_file(raws[0])
    secret = secret_file(tmp_path)

    def swap():
        os.rename(str(tmp_path / "pkg"), str(tmp_path / "moved"))
        os.mkdir(str(tmp_path / "pkg"))
        os.symlink(str(tmp_path / "moved" / "appliance.ovf"), path)
        os.symlink(str(secret), str(tmp_path / "pkg" / "appliance-disk0.img"))
    run_before(monkeypatch, convert, "import_disk", swap)
    out = str(tmp_path / "out")
    result = importer.import_package(request(path, out), lambda message: None)
    dump = os.path.join(result.directory, "disk0.raw")
    assert sha256_file(dump) == expected
    with open(dump, "rb") as handle:
        assert SECRET[:64] not in handle.read()


def test_descriptor_swapped_after_parsing_is_checked_as_parsed(tmp_path, monkeypatch):
    """The parsed descriptor is not the one the manifest lists; the benign one
    is put back before the digest check.  The digest covers the bytes that
    were parsed, so the import is refused."""
    path, _ = build_package(str(tmp_path / "pkg"), disks=(("raw", MIB),))
    benign = path + ".benign"
    os.rename(path, benign)
    with open(benign, "rb") as handle:
        text = handle.read()
    with open(path, "wb") as handle:
        handle.write(text.replace(b"appliance.example.com", b"attacker.example.com"))

    def put_back():
        os.rename(benign, path)
    run_before(monkeypatch, importer, "check_signature", put_back)
    out = str(tmp_path / "out")
    with pytest.raises(OvfError) as info:
        importer.import_package(request(path, out), lambda message: None)
    assert "appliance.ovf: SHA256 digest mismatch" in str(info.value)
    assert published(out) == []


def test_manifest_swapped_after_the_signature_check_is_not_used(tmp_path, monkeypatch):
    """The signed manifest is replaced (with a disk to match it) once its
    signature has been checked: the entries used are the signed ones, so the
    new disk fails its digest."""
    workdir = tmp_path / "pkg"
    path, _ = build_package(str(workdir), disks=(("raw", MIB),))
    manifest = str(workdir / "appliance.mf")
    ca = make_ca(str(tmp_path / "ca"), "Test CA")
    signer = make_leaf(str(tmp_path / "leaf"), ca, "Appliance Vendor")
    sign_package(manifest, str(workdir / "appliance.cert"), signer)
    disk = workdir / "appliance-disk0.img"
    evil = os.urandom(MIB)
    with open(manifest, "rb") as handle:
        signed = handle.read().decode()
    forged = signed.replace(hashlib.sha256(disk.read_bytes()).hexdigest(),
                            hashlib.sha256(evil).hexdigest())
    assert forged != signed

    def swap():
        (workdir / "evil.mf").write_text(forged)
        os.rename(str(workdir / "evil.mf"), manifest)
        (workdir / "evil.img").write_bytes(evil)
        os.rename(str(workdir / "evil.img"), str(disk))
    run_after(monkeypatch, importer, "check_signature", swap)
    out = str(tmp_path / "out")
    with pytest.raises(OvfError) as info:
        importer.import_package(request(path, out, trust_store=ca.cert,
                                        require_signature=True), lambda message: None)
    assert "appliance-disk0.img: SHA256 digest mismatch" in str(info.value)
    assert published(out) == []


@pytest.mark.parametrize("ova", [True, False], ids=["ova", "folder"])
def test_package_rewritten_in_place_during_the_conversion_is_refused(
        tmp_path, monkeypatch, ova):
    """The owner rewrites the package file in place (same inode) while the
    disk converts: the identity taken at open no longer holds, and nothing
    read from the file is used."""
    path, _ = build_package(str(tmp_path / "pkg"), disks=(("raw", MIB),), ova=ova,
                            manifest=None)
    target = path if ova else str(tmp_path / "pkg" / "appliance-disk0.img")

    def rewrite():
        with open(target, "r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            handle.write(b"\x01")
    run_after(monkeypatch, convert, "import_disk", rewrite)
    out = str(tmp_path / "out")
    with pytest.raises(OvfError) as info:
        importer.import_package(request(path, out), lambda message: None)
    assert "file changed while it was read" in str(info.value)
    assert "nothing read from it is used" in str(info.value)
    assert published(out) == []


def test_a_fifo_disk_is_refused_at_open_without_reading(tmp_path):
    path, _ = build_package(str(tmp_path / "pkg"), disks=(("raw", MIB),), manifest=None)
    disk = str(tmp_path / "pkg" / "appliance-disk0.img")
    os.unlink(disk)
    os.mkfifo(disk)
    out = str(tmp_path / "out")
    with pytest.raises(OvfError) as info:
        importer.import_package(request(path, out), lambda message: None)
    assert str(info.value) == "%s: file is a FIFO: refused, %s" % (disk, openfile.RULE)
    assert published(out) == []
