"""Reading a parsed descriptor tree: local-name lookups and checked values.

Tools disagree on prefixes and namespaces (children without a namespace under a
qualified root, `ovf:href` or `href`, sasd/epasd with `.xsd`-suffixed URIs), so
elements are matched by local name and OVF attributes in either form.  Every
string that reaches the model passes through `Doc.value`, which strips XML
blanks and refuses control characters (errors.UNPRINTABLE: C0, DEL, C1, the
Unicode line separators, which could end a config line, and the bidirectional
overrides, which disguise text): values end up in Ganeti's config.ini.
"""

import re
from typing import Iterator, List, Optional

from lxml import etree

from ganeti_ovf.descriptor import versions
from ganeti_ovf.errors import UNPRINTABLE, DescriptorError

MAX_VALUE_LENGTH = 4096
_XML_BLANKS = " \t\r\n"
_BLANK_RUNS = re.compile("[ \t\r\n]+")


def local_name(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def namespace(element: etree._Element) -> Optional[str]:
    tag = element.tag
    if isinstance(tag, str) and tag.startswith("{"):
        return tag[1:].partition("}")[0]
    return None


def kind(element: etree._Element) -> str:
    """The element's meaning: its local name, or 0.9's xsi:type without _Type."""
    name = local_name(element)
    if name in versions.TYPED_WRAPPERS:
        typed = element.get("{%s}type" % versions.XSI_NS)
        if typed:
            typed = typed.rpartition(":")[2]
            if typed.endswith(versions.TYPED_SUFFIX):
                return typed[:-len(versions.TYPED_SUFFIX)]
    return name


def children(element: etree._Element, *kinds: str) -> List[etree._Element]:
    return [child for child in element if isinstance(child.tag, str) and kind(child) in kinds]


def child(element: etree._Element, *kinds: str) -> Optional[etree._Element]:
    for candidate in element:
        if isinstance(candidate.tag, str) and kind(candidate) in kinds:
            return candidate
    return None


def descendants(element: etree._Element, *kinds: str) -> Iterator[etree._Element]:
    for candidate in element.iter():
        if isinstance(candidate.tag, str) and kind(candidate) in kinds:
            yield candidate


class Doc:
    """One descriptor being read: its source name, OVF namespaces, warnings."""

    def __init__(self, source: str, envelope_ns: Optional[str]) -> None:
        self.source = source
        known = [ns for version in versions.VERSIONS for ns in version.envelope_namespaces]
        if envelope_ns and envelope_ns not in known:
            known.insert(0, envelope_ns)
        self.ovf_namespaces = tuple(known)
        self.warnings: List[str] = []

    def where(self, element: Optional[etree._Element]) -> str:
        line = element.sourceline if element is not None else None
        return "%s: line %s" % (self.source, line) if line else self.source

    def error(self, element: Optional[etree._Element], message: str) -> DescriptorError:
        return DescriptorError("%s: %s" % (self.where(element), message))

    def warn(self, element: Optional[etree._Element], message: str) -> None:
        self.warnings.append("%s: %s" % (self.where(element), message))

    def attr(self, element: etree._Element, name: str) -> Optional[str]:
        """An OVF attribute, `ovf:name` (any OVF version's namespace) or `name`."""
        for ns in self.ovf_namespaces:
            found = element.get("{%s}%s" % (ns, name))
            if found is not None:
                return found
        return element.get(name)

    def check(self, element: Optional[etree._Element], field: str, raw: str,
              collapse: bool = False) -> str:
        """`raw` stripped of XML blanks, refused if it holds control characters."""
        text = raw.strip(_XML_BLANKS)
        if collapse:
            # Free text (descriptions) may be wrapped over lines; fold it.
            text = _BLANK_RUNS.sub(" ", text)
        if len(text) > MAX_VALUE_LENGTH:
            raise self.error(element, "%s: value longer than %d characters"
                             % (field, MAX_VALUE_LENGTH))
        if UNPRINTABLE.search(text):  # bidi overrides too: they reach config.ini
            raise self.error(element, "%s: control characters are refused in %r"
                             % (field, text[:60]))
        return text

    def value(self, element: Optional[etree._Element], field: str,
              collapse: bool = False) -> Optional[str]:
        """The checked text of `element`; None if it is absent or empty."""
        if element is None:
            return None
        text = self.check(element, field, element.text or "", collapse)
        return text or None

    def child_value(self, element: etree._Element, name: str,
                    collapse: bool = False) -> Optional[str]:
        return self.value(child(element, name), name, collapse)

    def attr_value(self, element: etree._Element, name: str) -> Optional[str]:
        raw = self.attr(element, name)
        if raw is None:
            return None
        return self.check(element, "ovf:" + name, raw) or None

    def raw_child_text(self, element: etree._Element, *names: str) -> Optional[str]:
        """A child's text as written (numbers are checked strictly elsewhere)."""
        found = child(element, *names)
        if found is None:
            return None
        return found.text or ""
