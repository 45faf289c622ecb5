"""Hardened XML parsing of untrusted descriptors: bytes in, an lxml tree out.

A descriptor comes from whoever built the package, so the parser resolves no
entities, loads no DTD, touches no network and refuses any DOCTYPE at all (the
vehicle of XXE and "billion laughs").  Size, element count and depth are capped
before the tree reaches the reader, and attributes per element before the
parser sees them (see MAX_ATTRIBUTES).  Everything goes out as DescriptorError
with the source name and, where libxml2 knows it, the line.

Namespace mistakes that do not change the tree's shape are tolerated and
reported as warnings: a namespace URI that is not a valid URI (real vApp
descriptors declare `.../cim2608 schema/2/...` with a space) and a prefix
that is never declared.  The reader matches local names, so neither matters.
"""

import re
from typing import List, Optional

from lxml import etree

from ganeti_ovf.errors import DescriptorError

# An OVF descriptor is tens of kilobytes; these leave generous headroom.
MAX_DESCRIPTOR_BYTES = 32 * 1024 * 1024
MAX_ELEMENTS = 200_000
MAX_DEPTH = 64
# Attributes of one element, namespace declarations included.  libxml2
# compares each attribute of a start tag with every earlier one (80000
# attributes take minutes), so a long start tag is refused before parsing.
# Real descriptors have at most a dozen; a vbox:Machine element about 20.
MAX_ATTRIBUTES = 256
# Namespace declarations in the whole descriptor: libxml2's time grows with
# their square (200000 take seconds) even when each element declares its own.
# Real descriptors declare about ten, on the Envelope.
MAX_NAMESPACE_DECLARATIONS = 10_000

# A start tag of more than MAX_ATTRIBUTES attributes spans more than this many
# bytes without a '<' (each attribute is at least ` a=""`, and no attribute
# value may hold a '<'): only such spans are looked at, each once, so the scan
# is linear.  It may count a tag-like text inside a comment; never too few.
_LONG_MARKUP = re.compile(rb"<[^<]{%d,}" % (4 * MAX_ATTRIBUTES))
_START_TAG = re.compile(rb"<([^\s/<>!?][^\s/<>]*)")
_TOO_MANY_ATTRIBUTES = re.compile(rb"(?:\s+[^\s=/<>]+\s*=\s*(?:\"[^\"<]*\"|'[^'<]*')){%d}"
                                  % (MAX_ATTRIBUTES + 1))

# Refused before parsing; checked on the raw bytes, which is reliable because
# the document is parsed as UTF-8 only (UTF-16 could hide these strings).
_FORBIDDEN_MARKUP = (b"<!DOCTYPE", b"<!ENTITY")

# libxml2's namespace errors that leave a well-formed tree, and what they mean.
TOLERATED_NAMESPACE_ERRORS = {
    etree.ErrorTypes.WAR_NS_URI: "a namespace URI that is not a valid URI",
    etree.ErrorTypes.WAR_NS_URI_RELATIVE: "a relative namespace URI",
    etree.ErrorTypes.NS_ERR_UNDEFINED_NAMESPACE: "an undeclared namespace prefix",
}


def _new_parser(recover: bool = False) -> etree.XMLParser:
    # encoding="utf-8" overrides the XML declaration: every descriptor we know
    # of is UTF-8, and a single encoding keeps the raw-byte checks above sound.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True, encoding="utf-8", recover=recover)


def parse_xml(data: bytes, source: str,
              warnings: Optional[List[str]] = None) -> etree._Element:
    """Parse `data` into an element tree, refusing anything unsafe or broken.

    Tolerated namespace mistakes are appended to `warnings` (if given).
    """
    if not isinstance(data, (bytes, bytearray)):
        raise DescriptorError("%s: descriptor must be bytes, not %s"
                              % (source, type(data).__name__))
    data = bytes(data)
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise DescriptorError("%s: descriptor is %d bytes, more than the limit of %d"
                              % (source, len(data), MAX_DESCRIPTOR_BYTES))
    if not data.strip():
        raise DescriptorError("%s: descriptor is empty" % source)
    for markup in _FORBIDDEN_MARKUP:
        if markup in data:
            raise DescriptorError("%s: line %d: %s declarations are refused"
                                  % (source, data[:data.index(markup)].count(b"\n") + 1,
                                     markup[2:].decode("ascii")))
    # Every element starts with '<', so this bounds the tree before it exists.
    if data.count(b"<") > MAX_ELEMENTS * 2:
        raise DescriptorError("%s: descriptor has more than %d elements"
                              % (source, MAX_ELEMENTS))
    # Counted on the raw bytes, text included: never too few.
    if data.count(b"xmlns") > MAX_NAMESPACE_DECLARATIONS:
        raise DescriptorError("%s: descriptor has more than %d namespace declarations"
                              % (source, MAX_NAMESPACE_DECLARATIONS))
    _check_attribute_counts(data, source)
    try:
        root = etree.fromstring(data, _new_parser())
    except etree.XMLSyntaxError as err:
        if err.code not in TOLERATED_NAMESPACE_ERRORS:
            raise _syntax_error(source, err)
        root = _parse_tolerating_namespaces(data, source, warnings)
    except (ValueError, etree.LxmlError) as err:
        raise DescriptorError("%s: invalid XML: %s" % (source, str(err).splitlines()[0]))
    if root is None:
        raise DescriptorError("%s: descriptor holds no XML element" % source)
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise DescriptorError("%s: DOCTYPE declarations are refused" % source)
    _check_shape(root, source)
    return root


def _check_attribute_counts(data: bytes, source: str) -> None:
    """Refuse a start tag with more than MAX_ATTRIBUTES attributes."""
    for span in _LONG_MARKUP.finditer(data):
        tag = _START_TAG.match(data, span.start())
        if tag is not None and _TOO_MANY_ATTRIBUTES.match(data, tag.end()):
            name = tag.group(1)[:60].decode("utf-8", "replace")
            raise DescriptorError("%s: line %d: element %r has more than %d attributes"
                                  " (namespace declarations included)"
                                  % (source, data.count(b"\n", 0, span.start()) + 1, name,
                                     MAX_ATTRIBUTES))


def _syntax_error(source: str, err: object) -> DescriptorError:
    """The one-line error for an XMLSyntaxError or a libxml2 log entry."""
    message = (getattr(err, "msg", None) or getattr(err, "message", None) or str(err)
               or "invalid XML").splitlines()[0]
    line = getattr(err, "lineno", None) or getattr(err, "line", None)
    return DescriptorError("%s: line %s: invalid XML: %s" % (source, line or "?", message))


def _parse_tolerating_namespaces(data: bytes, source: str,
                                 warnings: Optional[List[str]]) -> etree._Element:
    """Parse again in recovery mode, accepted only if every error libxml2
    reports is a tolerated namespace error (anything else is refused)."""
    parser = _new_parser(recover=True)
    try:
        root = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError) as err:
        raise DescriptorError("%s: invalid XML: %s" % (source, str(err).splitlines()[0]))
    tolerated = {}
    for entry in parser.error_log:
        if entry.type in TOLERATED_NAMESPACE_ERRORS:
            tolerated.setdefault(entry.type, entry)
        elif entry.level >= etree.ErrorLevels.ERROR:
            raise _syntax_error(source, entry)
    if root is None:
        raise DescriptorError("%s: descriptor holds no XML element" % source)
    if warnings is not None:
        for kind, entry in tolerated.items():
            warnings.append("%s: line %s: %s (read by local names): %r"
                            % (source, entry.line, TOLERATED_NAMESPACE_ERRORS[kind],
                               entry.message.strip()[:200]))
    return root


def _check_shape(root: etree._Element, source: str) -> None:
    """Refuse trees deeper than MAX_DEPTH or with more than MAX_ELEMENTS."""
    count = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS:
            raise DescriptorError("%s: descriptor has more than %d elements"
                                  % (source, MAX_ELEMENTS))
        if depth > MAX_DEPTH:
            raise DescriptorError("%s: line %s: elements nested deeper than %d"
                                  % (source, element.sourceline or "?", MAX_DEPTH))
        if not isinstance(element.tag, str):
            # Comments and PIs are removed by the parser; an entity reference
            # is all that could remain, and none may.
            raise DescriptorError("%s: line %s: entity references are refused"
                                  % (source, element.sourceline or "?"))
        stack.extend((child, depth + 1) for child in element)
