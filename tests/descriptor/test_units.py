"""Tests of ganeti_ovf.descriptor.units: DMTF allocation units, strict numbers."""

import pytest

from ganeti_ovf.descriptor import units
from ganeti_ovf.errors import DescriptorError

MIB = 1 << 20


@pytest.mark.parametrize("text, expected", [
    ("byte", 1),
    ("bytes", 1),
    ("byte * 2^20", MIB),
    ("byte*2^30", 1 << 30),
    ("byte * 2 ^ 20", MIB),
    ("  byte   *\t2^20 ", MIB),
    ("byte * 1024", 1024),
    ("byte * 10^3", 1000),
    ("byte * 2^10 * 1024", MIB),
    ("BYTE * 2^10", 1024),
    ("KiloBytes", 1024),
    ("MegaBytes", MIB),
    ("GigaBytes", 1 << 30),
    ("TeraBytes", 1 << 40),
    ("KB", 1024),
    ("MB", MIB),
    ("GB", 1 << 30),
    ("kilobyte", 1024),
    ("megabyte", MIB),
    ("gigabytes", 1 << 30),
    ("MiB", MIB),
])
def test_units_accepted(text, expected):
    assert units.parse_allocation_units(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "hertz * 10^6", "MegaHertz", "percent", "byte / second", "byte +2",
    "byte *", "* 2^20", "byte * 2^", "byte * -1", "byte * 0", "byte * 1^20",
    "byte * 2^99", "byte * 2^40 * 2^40", "byte * 2^\u0662\u0660",
    "byte\u00a0* 2^20", "bytex", "MBytes", "2^20 * byte", "byte * 2.5",
    "byte * 99999999999999999999999", "byte * 2^20\x00",
])
def test_units_refused(text):
    with pytest.raises(DescriptorError) as caught:
        units.parse_allocation_units(text, "Disk d1 ovf:capacityAllocationUnits")
    assert "Disk d1 ovf:capacityAllocationUnits" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("12", 12), ("0012", 12), ("1125899906842624", 1 << 50),
])
def test_uint_accepted(text, expected):
    assert units.parse_uint(text, "field") == expected


@pytest.mark.parametrize("text", [
    "+1", "-1", "1_000", "\u0661\u0662", " 12", "12 ", "1 2", "0x10", "1e3", "1.0",
    "", None, "\uff11", "12\n", "9" * 21,
])
def test_uint_refused(text):
    with pytest.raises(DescriptorError) as caught:
        units.parse_uint(text, "Item 1 VirtualQuantity")
    assert "Item 1 VirtualQuantity" in str(caught.value)


def test_uint_bounds():
    assert units.parse_uint("1024", "vcpus", maximum=1024, minimum=1) == 1024
    with pytest.raises(DescriptorError, match="limit"):
        units.parse_uint("1025", "vcpus", maximum=1024, minimum=1)
    with pytest.raises(DescriptorError, match="less than"):
        units.parse_uint("0", "vcpus", maximum=1024, minimum=1)


@pytest.mark.parametrize("size, mib", [(0, 0), (1, 1), (MIB, 1), (MIB + 1, 2),
                                       (1536 * 1024, 2), (1 << 30, 1024)])
def test_bytes_to_mib_rounds_up(size, mib):
    assert units.bytes_to_mib(size) == mib
