"""Every difference between OVF 0.9, 1.x and 2.x, in one table.

The reader matches elements by local name, so most differences do not matter
to it; what remains (which envelope namespace means which version, how 0.9
names its sections, the disk format URIs, CIM namespaces used by the writer)
is declared here and nowhere else.
"""

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"
CIM_NS = "http://schemas.dmtf.org/wbem/wscim/1/common"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
SASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData"
EPASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData"
VMW_NS = "http://www.vmware.com/schema/ovf"
VBOX_NS = "http://www.virtualbox.org/ovf/machine"
# The design document's Ganeti section (and what Ganeti's old converter wrote).
GANETI_NS = "http://ganeti"


@dataclass(frozen=True)
class OvfVersion:
    """What one OVF version spells differently."""

    name: str  # "0.9", "1.x", "2.x"
    envelope_namespaces: Tuple[str, ...]
    version_attribute: str  # what the writer puts in ovf:version
    # 0.9 wraps sections as <Section xsi:type="ovf:DiskSection_Type"> and
    # virtual systems as <Content xsi:type="ovf:VirtualSystem_Type">.
    typed_sections: bool = False
    extra_namespaces: Dict[str, str] = field(default_factory=dict)


OVF_0_9 = OvfVersion(
    name="0.9",
    envelope_namespaces=("http://www.vmware.com/schema/ovf/1/envelope",),
    version_attribute="0.9",
    typed_sections=True,
)
OVF_1 = OvfVersion(
    name="1.x",
    envelope_namespaces=("http://schemas.dmtf.org/ovf/envelope/1",
                         "http://schemas.dmtf.org/ovf/envelope/1/"),
    version_attribute="1.0",
)
OVF_2 = OvfVersion(
    name="2.x",
    envelope_namespaces=("http://schemas.dmtf.org/ovf/envelope/2",
                         "http://schemas.dmtf.org/ovf/envelope/2/"),
    version_attribute="2.0",
    extra_namespaces={"sasd": SASD_NS, "epasd": EPASD_NS},
)
VERSIONS = (OVF_0_9, OVF_1, OVF_2)
WRITABLE = {"1.0": OVF_1, "2.0": OVF_2}


def version_for_namespace(namespace: Optional[str]) -> Optional[OvfVersion]:
    """The OVF version whose envelope lives in `namespace`, or None."""
    for version in VERSIONS:
        if namespace in version.envelope_namespaces:
            return version
    return None


# Disk format URIs (DiskSection/Disk/@ovf:format) by qemu-img format name.
# The first URI of each entry is what the writer emits.
FORMAT_URIS: Dict[str, Tuple[str, ...]] = {
    "vmdk": ("http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
             "http://www.vmware.com/specifications/vmdk.html#sparse",
             "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse",
             "http://www.vmware.com/specifications/vmdk.html#compressed"),
    "qcow2": ("http://www.gnome.org/~markmc/qcow-image-format.html",),
    "raw": ("http://en.wikipedia.org/wiki/Byte",),
    "vpc": ("http://technet.microsoft.com/en-us/virtualserver/bb676673.aspx",),
    "vdi": ("http://www.virtualbox.org/manual/ch05.html#vdi",),
}


def format_for_uri(uri: Optional[str]) -> Optional[str]:
    """The qemu-img format an ovf:format URI names, or None (absent or unknown:
    inspection alone decides)."""
    for name, uris in FORMAT_URIS.items():
        if uri in uris:
            return name
    return None


# Element spellings the reader must accept across versions (it matches local
# names, so only the names differ, never the namespaces).
# 0.9 wraps sections and systems in these, naming the real element in xsi:type
# with this suffix: <Section xsi:type="ovf:DiskSection_Type">.
TYPED_WRAPPERS = ("Section", "Content")
TYPED_SUFFIX = "_Type"
# 0.9's CIM schemas spell InstanceId; 1.x and 2.x InstanceID.
INSTANCE_ID_NAMES = ("InstanceID", "InstanceId")
# 2.x adds StorageItem (sasd:) and EthernetPortItem (epasd:) beside Item.
ITEM_ELEMENTS = ("Item", "StorageItem", "EthernetPortItem")
