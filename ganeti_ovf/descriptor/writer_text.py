"""Checked text for the descriptor writer: every string goes through here.

lxml refuses strings XML cannot carry with a bare ValueError; we refuse them
first, with the field's name.  We also refuse what our own reader refuses
(control characters, including tab and newline, and the Unicode line
separators), so the writer never produces a descriptor the reader rejects.
"""

import re
from typing import Optional

from lxml import etree

from ganeti_ovf.errors import DescriptorError

# The reader's rule (xmltree.py): C0, DEL, C1 and U+2028/U+2029; plus the
# surrogates and U+FFFE/U+FFFF, which XML 1.0 cannot represent at all.
_UNWRITABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
MAX_VALUE_LENGTH = 4096  # the reader's limit for one value


def check_text(value: object, field: str, allow_empty: bool = False) -> str:
    """`value` if it is a string the descriptor can carry; else DescriptorError."""
    if not isinstance(value, str):
        raise DescriptorError("%s must be a string, not %s" % (field, type(value).__name__))
    if not value and not allow_empty:
        raise DescriptorError("%s is empty" % field)
    if len(value) > MAX_VALUE_LENGTH:
        raise DescriptorError("%s is longer than %d characters" % (field, MAX_VALUE_LENGTH))
    match = _UNWRITABLE.search(value)
    if match:
        raise DescriptorError("%s contains the character U+%04X, which a descriptor"
                              " cannot carry" % (field, ord(match.group())))
    return value


def add(parent: etree._Element, tag: str, text: Optional[str], field: str,
        allow_empty: bool = False) -> etree._Element:
    """A new child `tag` of `parent` holding `text` (checked)."""
    child = etree.SubElement(parent, tag)
    if text is not None:
        child.text = check_text(text, field, allow_empty)
    return child


def set_attr(element: etree._Element, name: str, value: str, field: str) -> None:
    """Set attribute `name` to the checked `value`."""
    element.set(name, check_text(value, field))
