"""Tests of manifest.py: parsing .mf files and checking member digests."""

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from conftest import CORPUS
from hypothesis import given, settings
from hypothesis import strategies as st

from members import opened_member
from ganeti_ovf.errors import ManifestError, OvfError
from ganeti_ovf.package.manifest import (
    ManifestEntry,
    format_manifest,
    hash_member,
    parse_manifest,
    verify_member,
)
from ganeti_ovf.model import Member
from ganeti_ovf.package.reader import Package

DATA = b"disk bytes " * 1000


def corpus(*parts: str) -> str:
    return os.path.join(CORPUS, *parts)


def read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def whole(path: str) -> Member:
    return opened_member(os.path.basename(path), path, 0, os.path.getsize(path))


@pytest.mark.parametrize("folder, manifest, algorithm", [
    ("cot", "input.mf", "SHA1"),
    ("cot", "ubuntu.2.0.mf", "SHA256"),
    ("ganeti", "ganeti.mf", "SHA1"),
])
def test_corpus_manifests_verify(folder: str, manifest: str, algorithm: str) -> None:
    parsed = parse_manifest(read(corpus(folder, manifest)), manifest)
    assert parsed.entries and all(e.algorithm == algorithm for e in parsed.entries)
    for entry in parsed.entries:
        verify_member(entry, whole(corpus(folder, entry.name)))


def test_corpus_wrong_manifest_refused() -> None:
    package = Package.open(corpus("ganeti", "wrong_manifest.ovf"))
    manifest = package.manifest()
    assert manifest.names() == ("new_disk.vmdk", "wrong_manifest.ovf")
    for entry in manifest.entries:
        with pytest.raises(ManifestError) as info:
            verify_member(entry, package.member(entry.name))
        assert str(info.value).startswith("%s: SHA1 digest mismatch (manifest says %s, file has "
                                          % (entry.name, entry.digest_hex))


@pytest.mark.parametrize("line", [
    "SHA256(disk.vmdk)= {h}",
    "SHA256 (disk.vmdk) = {h}",
    "SHA256(disk.vmdk)={h}",
    "sha256(disk.vmdk)= {h}",
    "SHA2-256(disk.vmdk)= {h}",
    "SHA-256(disk.vmdk)= {h}",
    "  SHA256(disk.vmdk)=   {H}  ",
])
def test_lenient_syntax(line: str) -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    text = line.format(h=digest, H=digest.upper())
    manifest = parse_manifest((text + "\r\n\r\n\n").encode(), "x.mf")
    assert manifest.entries == (ManifestEntry("SHA256", "disk.vmdk", digest, "x.mf"),)


def test_names_with_parentheses_bom_and_blank_lines() -> None:
    data = ("\ufeffSHA1(disk (1).vmdk)= %s\n\nSHA512(b.iso)= %s\n"
            % ("a" * 40, "b" * 128)).encode()
    manifest = parse_manifest(data, "x.mf")
    assert manifest.names() == ("disk (1).vmdk", "b.iso")
    assert manifest.entry("b.iso").algorithm == "SHA512"
    assert manifest.entry("nothing") is None


@pytest.mark.parametrize("data, message", [
    (b"SHA1(a)= " + b"a" * 40 + b"\ngarbage\n", "x.mf: line 2 is not of the form"),
    (b"SHA1 a = " + b"a" * 40, "line 1 is not of the form"),
    (b"SHA1(a)= xyz", "line 1 is not of the form"),
    (b"SHA1()= " + b"a" * 40, "line 1 is not of the form"),
    (b"MD5(a)= " + b"a" * 32, "line 1: unsupported digest algorithm 'MD5'"),
    (b"SHA256(a)= " + b"a" * 40, "line 1: SHA256 digest of a has 40 hex digits, not 64"),
    (b"SHA1(a)= " + b"a" * 40 + b"\nSHA1(a)= " + b"b" * 40, "line 2: a is listed twice"),
    (b"\n\n  \n", "the manifest lists no files"),
    (b"SHA1(\xff)= " + b"a" * 40, "line 1 is not UTF-8"),
    (b"SHA1(a\0b)= " + b"a" * 40, "line 1 is not of the form"),
])
def test_errors_name_the_line(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "x.mf")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_require() -> None:
    manifest = parse_manifest(b"SHA1(a.ovf)= " + b"a" * 40, "x.mf")
    manifest.require(["a.ovf"])
    with pytest.raises(ManifestError, match=r"x\.mf: no digest for d\.vmdk, d\.vmdk\.000000001"):
        manifest.require(["a.ovf", "d.vmdk", "d.vmdk.000000001"])


def test_verify_member_range_in_ova(tmp_path: Path) -> None:
    path = str(tmp_path / "p.ova")
    with tarfile.open(path, "w") as archive:
        for name, data in (("vm.ovf", b"<Envelope/>"), ("disk.vmdk", DATA)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    package = Package.open(path)
    member = package.member("disk.vmdk")
    digest = hashlib.sha512(DATA).hexdigest()
    entry = parse_manifest(b"SHA512(disk.vmdk)= " + digest.encode(), "m").entries[0]
    verify_member(entry, member)
    assert hash_member(member, "SHA-1") == hashlib.sha1(DATA).hexdigest()
    wrong = parse_manifest(b"SHA512(disk.vmdk)= " + b"0" * 128, "m").entries[0]
    with pytest.raises(ManifestError, match="disk.vmdk: SHA512 digest mismatch"):
        verify_member(wrong, member)


def test_verify_member_large_and_short(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several 1 MiB reads
    path = tmp_path / "big.raw"
    path.write_bytes(data)
    member = opened_member("big.raw", str(path), 5, len(data) - 5)
    assert hash_member(member, "SHA256") == hashlib.sha256(data[5:]).hexdigest()
    too_long = opened_member("big.raw", str(path), 5, len(data))
    with pytest.raises(ManifestError, match="big.raw: file ends 5 bytes early"):
        hash_member(too_long, "SHA256")
    with pytest.raises(ManifestError, match="big.raw: cannot read"):
        hash_member(opened_member("big.raw", str(tmp_path / "gone"), 0, 1), "SHA256")
    # The file is read through the descriptor: replacing the path by a
    # symlink to another file after it was opened changes nothing.
    (tmp_path / "other.raw").write_bytes(b"secret" * 1000)
    os.rename(str(path), str(tmp_path / "moved.raw"))
    (tmp_path / "big.raw").symlink_to("other.raw")
    assert hash_member(member, "SHA256") == hashlib.sha256(data[5:]).hexdigest()
    with pytest.raises(ManifestError, match="unsupported digest algorithm 'MD5'"):
        hash_member(member, "MD5")


def test_incremental_hasher() -> None:
    entry = parse_manifest(b"SHA256(d)= " + hashlib.sha256(DATA).hexdigest().encode(),
                           "m").entries[0]
    hasher = entry.new_hasher()
    for start in range(0, len(DATA), 777):
        hasher.update(DATA[start:start + 777])
    entry.check(hasher.hexdigest())
    entry.check(hasher.hexdigest().upper())
    with pytest.raises(ManifestError, match="d: SHA256 digest mismatch"):
        entry.check("0" * 64)


def test_format_manifest_round_trip() -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    data = format_manifest([("sha2-256", "disk.vmdk", digest.upper()), ("SHA1", "a", "b" * 40)])
    assert data == ("SHA256(disk.vmdk)= %s\nSHA1(a)= %s\n" % (digest, "b" * 40)).encode()
    assert parse_manifest(data, "m").names() == ("disk.vmdk", "a")
    with pytest.raises(ManifestError, match="unsupported digest algorithm"):
        format_manifest([("CRC32", "a", "00")])


_VALID = b"SHA1(input.ovf)= c3bd2579c2edc76ea35b5bde7d4f4e41eab08963\r\n" \
         b"SHA256(d.vmdk)= " + b"ab" * 32 + b"\n"


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.text(alphabet="SHA1256-()= \r\n\tabcdef0123456789.\0\u00e9", max_size=200).map(
        lambda text: text.encode("utf-8")),
    st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6).map(
        lambda edits: _mutate(_VALID, edits)),
))
def test_parse_manifest_fuzz(data: bytes) -> None:
    try:
        manifest = parse_manifest(data, "fuzz.mf")
    except OvfError:
        return
    assert len(set(manifest.names())) == len(manifest.entries)


def _mutate(data: bytes, edits: list) -> bytes:
    result = bytearray(data)
    for position, value in edits:
        result[position] = value
    return bytes(result)
