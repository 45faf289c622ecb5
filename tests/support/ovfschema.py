"""The DMTF OVF 1.0 envelope schema, compiled once, for tests to validate with.

The schema files in ../shared/schemas/ovf-1.0/ import each other by namespace
only (no schemaLocation).  We rewrite DSP8023.xsd's imports in memory to point
at the files beside it, so nothing is fetched from the network; the CIM
schemas' own import of the common namespace then resolves to the copy that
DSP8023.xsd already loaded.  Use `validate_ovf10(xml_bytes)`.
"""

import functools
import os
from typing import List

from conftest import SCHEMAS
from lxml import etree

SCHEMA_DIR = os.path.join(SCHEMAS, "ovf-1.0")
XS_NS = "http://www.w3.org/2001/XMLSchema"

# Imported namespace -> the local file that defines it (see the folder's README).
LOCAL_IMPORTS = {
    "http://www.w3.org/XML/1998/namespace": "xml.xsd",
    "http://schemas.dmtf.org/wbem/wscim/1/common": "common.xsd",
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData":
        "CIM_VirtualSystemSettingData.xsd",
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData":
        "CIM_ResourceAllocationSettingData.xsd",
}


class SchemaInvalid(AssertionError):
    """A descriptor the schema refuses; the message lists libxml2's errors."""


@functools.lru_cache(maxsize=1)
def ovf10_schema() -> etree.XMLSchema:
    """DSP8023 1.0.0 with its imports bound to the local files."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    path = os.path.join(SCHEMA_DIR, "DSP8023.xsd")
    tree = etree.parse(path, parser)
    for element in tree.getroot().iterchildren("{%s}import" % XS_NS):
        local = LOCAL_IMPORTS.get(element.get("namespace"))
        if local is None:
            raise RuntimeError("DSP8023.xsd imports an unknown namespace %r"
                               % element.get("namespace"))
        element.set("schemaLocation", os.path.join(SCHEMA_DIR, local))
    return etree.XMLSchema(tree)


def ovf10_errors(xml_bytes: bytes) -> List[str]:
    """The schema's complaints about `xml_bytes` (empty when valid)."""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    document = etree.fromstring(xml_bytes, parser)
    schema = ovf10_schema()
    if schema.validate(document):
        return []
    return ["line %d: %s" % (error.line, error.message) for error in schema.error_log]


def validate_ovf10(xml_bytes: bytes) -> None:
    """Raise SchemaInvalid unless `xml_bytes` is a valid OVF 1.0 descriptor."""
    errors = ovf10_errors(xml_bytes)
    if errors:
        raise SchemaInvalid("not valid OVF 1.0: " + "; ".join(errors))
