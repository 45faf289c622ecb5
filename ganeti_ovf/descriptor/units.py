"""Numbers and units in descriptors: strict integers and DMTF allocation units.

Capacities and memory sizes come as a number plus a DMTF DSP0004 "programmatic
unit" (`byte * 2^20`) or one of the names tools write instead (`MegaBytes`,
`MB`).  The units are parsed with a pyparsing grammar and an allow-list of
base units: anything that is not a number of bytes is refused.  Integers are
ASCII digits only - no sign, separator, space or non-ASCII digit - because
Python's int() would accept all of those.
"""

import re
from typing import Optional

import pyparsing as pp

from ganeti_ovf.errors import DescriptorError

MIB = 1 << 20
MAX_CAPACITY = 1 << 50  # 1 PiB: no real disk is larger
MAX_MEMORY_MIB = 16 << 20  # 16 TiB
MAX_VCPUS = 1024
MAX_DEVICES = 128  # disks or NICs per virtual system
MAX_MULTIPLIER = 1 << 60
MAX_EXPONENT = 64
_MAX_DIGITS = 20

# Base unit names (lower case) and the bytes they stand for.  The named
# multiples are binary: VirtualBox's "MegaBytes" and Ganeti's "MB" mean MiB.
BYTE_UNITS = {
    "byte": 1, "bytes": 1, "b": 1,
    "kilobyte": 1 << 10, "kilobytes": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
    "kibibyte": 1 << 10, "kibibytes": 1 << 10,
    "megabyte": 1 << 20, "megabytes": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
    "mebibyte": 1 << 20, "mebibytes": 1 << 20,
    "gigabyte": 1 << 30, "gigabytes": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
    "gibibyte": 1 << 30, "gibibytes": 1 << 30,
    "terabyte": 1 << 40, "terabytes": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
    "tebibyte": 1 << 40, "tebibytes": 1 << 40,
}

_DIGITS = re.compile(r"[0-9]+")


def _build_grammar() -> pp.ParserElement:
    # unit := base-unit ( "*" factor )* ; factor := integer [ "^" integer ]
    # pyparsing's `nums` is ASCII 0-9 only, and it skips ASCII blanks between
    # tokens, which is the "any spacing" DSP0004 allows.
    integer = pp.Word(pp.nums)
    power = pp.Group(integer + pp.Suppress("^") + integer)
    factor = power | pp.Group(integer)
    base = pp.one_of(sorted(BYTE_UNITS, key=len, reverse=True), caseless=True,
                     as_keyword=True)
    return base("base") + pp.Group(pp.ZeroOrMore(pp.Suppress("*") + factor))("factors") \
        + pp.StringEnd()


_GRAMMAR = _build_grammar()


def parse_allocation_units(text: str, field: str = "allocation units") -> int:
    """The number of bytes one unit of `text` stands for, e.g. 1048576 for MiB.

    Raises DescriptorError naming `field` for anything that is not a byte unit.
    """
    if not isinstance(text, str) or len(text) > 200:
        raise DescriptorError("%s: unsupported allocation units" % field)
    try:
        parsed = _GRAMMAR.parse_string(text, parse_all=True)
    except pp.ParseBaseException:
        raise DescriptorError("%s: unsupported allocation units %r (expected a byte unit"
                              " such as 'byte * 2^20' or 'MegaBytes')" % (field, text))
    multiplier = BYTE_UNITS[parsed["base"].lower()]
    for factor in parsed["factors"]:
        numbers = [_digits(token, field) for token in factor]
        if len(numbers) == 2:
            base, exponent = numbers
            if base < 2 or exponent > MAX_EXPONENT:
                raise DescriptorError("%s: unsupported multiplier %d^%d in %r"
                                      % (field, base, exponent, text))
            value = base ** exponent
        else:
            value = numbers[0]
        if value < 1:
            raise DescriptorError("%s: zero multiplier in %r" % (field, text))
        multiplier *= value
        if multiplier > MAX_MULTIPLIER:
            raise DescriptorError("%s: allocation units %r are too large" % (field, text))
    return multiplier


def _digits(token: str, field: str) -> int:
    if len(token) > _MAX_DIGITS:
        raise DescriptorError("%s: number %s... is too long" % (field, token[:_MAX_DIGITS]))
    return int(token)


def parse_uint(text: Optional[str], field: str, maximum: Optional[int] = None,
               minimum: int = 0) -> int:
    """A non-negative decimal integer written with ASCII digits only.

    Raises DescriptorError naming `field` if `text` is missing, has anything
    but digits (sign, '_', spaces, non-ASCII digits) or is out of bounds.
    """
    if text is None or text == "":
        raise DescriptorError("%s: missing number" % field)
    if len(text) > _MAX_DIGITS or not _DIGITS.fullmatch(text):
        raise DescriptorError("%s: %r is not a plain decimal number" % (field, text[:40]))
    value = int(text)
    if value < minimum:
        raise DescriptorError("%s: %d is less than %d" % (field, value, minimum))
    if maximum is not None and value > maximum:
        raise DescriptorError("%s: %d is more than the limit of %d" % (field, value, maximum))
    return value


def bytes_to_mib(size: int) -> int:
    """Whole MiB holding `size` bytes, rounded up."""
    return (size + MIB - 1) // MIB
