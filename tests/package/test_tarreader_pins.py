"""Pins of tarreader.py's limits that a mutation run found untested.

Every bound is tested from both sides: at the limit the archive is read, one
over it is refused with the rule in the message.  The tar builders come from
test_package_reader.py.
"""

from pathlib import Path

import pytest
from test_package_reader import DESCRIPTOR, END, entry, header, open_error, ova, pax_record

from ganeti_ovf.errors import PackageError
from ganeti_ovf.package import tarreader
from ganeti_ovf.package.reader import Package


def names(path: str, **kwargs) -> list:
    return Package.open(path, **kwargs).names()


def pax_of_length(key: str, length: int) -> bytes:
    """One pax record of exactly `length` bytes."""
    record = pax_record(key, "")
    value = "v" * (length - len(record))
    record = pax_record(key, value)
    while len(record) > length:  # the length field grew by a digit
        value = value[:-1]
        record = pax_record(key, value)
    assert len(record) == length
    return record


def test_limits_are_the_documented_ones():
    assert (tarreader.MAX_MEMBERS, tarreader.MAX_PAX_HEADER, tarreader.MAX_LONG_NAME) == \
        (10000, 1 << 20, 4096)


def test_member_count_bound(tmp_path: Path):
    files = entry(b"vm.ovf", DESCRIPTOR) + b"".join(entry(b"f%d" % i) for i in range(2))
    path = ova(tmp_path, files + END)
    assert names(path, max_members=3) == ["vm.ovf", "f0", "f1"]
    assert "more than 2 members" in open_error(path, max_members=2)


def test_default_member_count_reached_exactly(tmp_path: Path):
    files = entry(b"vm.ovf", DESCRIPTOR) + b"".join(
        header(b"f%d" % i) for i in range(tarreader.MAX_MEMBERS - 1))
    path = ova(tmp_path, files + END)
    assert len(names(path)) == tarreader.MAX_MEMBERS
    path = ova(tmp_path, files + header(b"last") + END, "over.ova")
    assert "more than 10000 members" in open_error(path)


def test_directories_count_as_members(tmp_path: Path):
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"dir/", typeflag=b"5") + END
    assert "more than 1 members" in open_error(ova(tmp_path, blocks), max_members=1)
    assert names(ova(tmp_path, blocks, "b.ova"), max_members=2) == ["vm.ovf"]


def test_header_count_bound(tmp_path: Path):
    # Global pax headers are headers but not members: at most 4 per member.
    glob = entry(b"pax_global_header", pax_record("comment", "x"), b"g")
    members = entry(b"vm.ovf", DESCRIPTOR) + entry(b"d")
    path = ova(tmp_path, glob * 6 + members + END)
    assert names(path, max_members=2) == ["vm.ovf", "d"]
    path = ova(tmp_path, glob * 7 + members + END, "over.ova")
    assert "more than 8 tar headers" in open_error(path, max_members=2)


def test_pax_header_size_bound(tmp_path: Path):
    for length, allowed in ((1 << 20, True), ((1 << 20) + 1, False)):
        pax = pax_of_length("comment", length)
        blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x")
                  + entry(b"d") + END)
        path = ova(tmp_path, blocks, "p%d.ova" % length)
        if allowed:
            assert names(path) == ["vm.ovf", "d"]
        else:
            assert "is 1048577 bytes, more than the 1048576 allowed" in open_error(path)


def test_gnu_long_name_size_bound(tmp_path: Path):
    at_limit = b"n" * 4095 + b"\0"
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"././@LongLink", at_limit, b"L")
              + entry(b"d") + END)
    assert names(ova(tmp_path, blocks)) == ["vm.ovf", "n" * 4095]
    over = b"n" * 4096 + b"\0"
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"././@LongLink", over, b"L")
              + entry(b"d") + END)
    assert "is 4097 bytes, more than the 4096 allowed" in open_error(ova(tmp_path, blocks,
                                                                         "b.ova"))


def test_member_name_length_bound(tmp_path: Path):
    for length, allowed in ((4096, True), (4097, False)):
        pax = pax_record("path", "p" * length)
        blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x")
                  + entry(b"d") + END)
        path = ova(tmp_path, blocks, "p%d.ova" % length)
        if allowed:
            assert names(path) == ["vm.ovf", "p" * length]
        else:
            assert "name longer than 4096 bytes" in open_error(path)


def test_pax_size_digits_bound(tmp_path: Path):
    data = b"0123456789"
    for digits, allowed in ((20, True), (21, False)):
        pax = pax_record("size", "%0*d" % (digits, len(data)))
        blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", pax, b"x")
                  + header(b"d", 0) + data + bytes(512 - len(data)) + END)
        path = ova(tmp_path, blocks, "p%d.ova" % digits)
        if allowed:
            package = Package.open(path)
            assert package.member("d").size == len(data)
        else:
            assert "pax size '%s' is not a decimal number" % ("0" * 19 + "10") \
                in open_error(path)


@pytest.mark.parametrize("name, problem", [
    ("a\x1fb", "control character in name"),
    ("a\x7fb", "control character in name"),
    ("a\x9fb", "control character in name"),
    ("a\ud800b", "name is not valid UTF-8"),
    ("a\udfffb", "name is not valid UTF-8"),
    ("a" * 4097, "name longer than 4096 bytes"),
    ("a/./b", "path component '.'"),
])
def test_member_name_problems(name: str, problem: str):
    assert tarreader.member_name_problem(name) == problem


@pytest.mark.parametrize("name", ["a b", "a~b", "a\xa0b", "a\ud7ffb", "a\ue000b", "a" * 4096,
                                  "\u00e9t\u00e9/x.vmdk"])
def test_member_names_just_inside_the_rules(name: str):
    assert tarreader.member_name_problem(name) is None


def test_is_tar_header():
    good = header(b"vm.ovf")
    assert tarreader.is_tar_header(good)
    assert not tarreader.is_tar_header(good[:511])
    assert not tarreader.is_tar_header(bytes(512))
    assert not tarreader.is_tar_header(good[:148] + b"0000000\0" + good[156:])
    assert not tarreader.is_tar_header(good[:257] + b"bogus\0" + good[263:])


def test_data_ending_at_end_of_file_is_read_then_end_marker_missing(tmp_path: Path):
    # The member's data ends exactly at the end of the file: its range is
    # fine, the next header is what is missing.
    blocks = entry(b"vm.ovf", b"x" * 512)
    message = open_error(ova(tmp_path, blocks))
    assert "truncated archive: tar header at offset 1024 ends past the end" in message
    blocks = header(b"vm.ovf", 513) + b"x" * 512
    message = open_error(ova(tmp_path, blocks, "b.ova"))
    assert "the data of the entry at offset 0 (513 bytes) ends past the end" in message


def test_number_fields():
    # GNU base-256: the sign bit refused, the six bits after it are value bits.
    assert tarreader._parse_number(b"\x81" + bytes(11), "w", "size") == 1 << 88
    assert tarreader._parse_number(b"\xbf" + b"\xff" * 11, "w", "size") == (1 << 94) - 1
    with pytest.raises(PackageError, match="negative size"):
        tarreader._parse_number(b"\xc0" + bytes(11), "w", "size")
    # An empty octal field is 0, as tar reads it.
    assert tarreader._parse_number(bytes(12), "w", "size") == 0
    assert tarreader._parse_number(b" 17 \0", "w", "size") == 15


def test_empty_size_field_is_a_zero_length_member(tmp_path: Path):
    blocks = entry(b"vm.ovf", DESCRIPTOR) + header(b"empty", size_field=bytes(12)) + END
    package = Package.open(ova(tmp_path, blocks))
    assert package.member("empty").size == 0


def with_checksum(block: bytearray, signed: bool = False) -> bytes:
    block[148:156] = b" " * 8
    total = sum(b - 256 if signed and b >= 128 else b for b in block)
    block[148:156] = b"%06o\0 " % total
    return bytes(block)


def test_checksum_covers_every_byte_around_its_field():
    # A 12-digit mtime with no terminator: byte 147 counts.
    block = bytearray(header(b"vm.ovf"))
    block[136:148] = b"000000000001"
    assert tarreader.is_tar_header(with_checksum(block))
    # A byte of exactly 0x80 in a header summed as signed chars.
    block = bytearray(header(b"vm.ovf"))
    block[257:265] = b"ustar  \0"
    block[265] = 0x80  # uname
    assert tarreader.is_tar_header(with_checksum(block, signed=True))
    assert tarreader.is_tar_header(with_checksum(block, signed=False))


def test_pax_record_too_short_for_a_key(tmp_path: Path):
    blocks = (entry(b"vm.ovf", DESCRIPTOR) + entry(b"PaxHeader", b"3 \n", b"x")
              + entry(b"d") + END)
    assert "record at byte 0 has a wrong length" in open_error(ova(tmp_path, blocks))
