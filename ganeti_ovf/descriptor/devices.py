"""The virtual hardware a guest was made on: disk controllers, boot disk,
guest OS type, CPU topology and firmware, as the descriptor declares them.

The hardware reader (hardware.py) maps items to disks and NICs; this module
adds what a guest needs to find its disks and boot (the mapping to Ganeti
hypervisor parameters is cluster/hardware_map.py).  Where vendors write it:

- Controllers: items of ResourceType 5 (IDE), 6 (parallel SCSI; subtype
  lsilogic, buslogic, lsilogicsas, VirtualSCSI, virtio), 20 (other storage:
  VirtualBox "AHCI", VMware "vmware.sata.ahci", "vmware.nvme.controller").
  A disk item names its controller by rasd:Parent (InstanceID) and its slot
  by rasd:AddressOnParent.  Subtypes are kept as written; a list such as
  COT's "virtio lsilogic" names alternatives.
- oVirt names the bus on the DiskSection disk instead (ovf:disk-interface:
  VirtIO, VirtIO_SCSI, IDE, SATA) and marks the boot disk (ovf:boot).
- vmw:osType on OperatingSystemSection; vmw:CoresPerSocket inside the CPU
  item (VMware writes it in OVF 1.x and 2.x packages alike).
- Firmware: VMware's <vmw:Config vmw:key="firmware" vmw:value="efi"/> in
  VirtualHardwareSection; VirtualBox's vbox:Machine Hardware/Firmware@type.

Disk order: the package's boot disk first (ovf:boot), then by controller
kind (in the order the items declare the first controller of each kind),
controller address (rasd:Address) and slot, so the boot disk is disk 0.
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import hardware, units, versions
from ganeti_ovf.descriptor.xmltree import Doc, child, children, descendants

CONTROLLER_TYPES = (5, 6, 20)
RT_CPU = 3
FIRMWARES = {"efi": "efi", "efi32": "efi", "efi64": "efi", "efidual": "efi", "bios": "bios"}
_LAST = 1 << 30
Interfaces = Dict[str, Tuple[Optional[str], bool]]


@dataclass
class Devices:
    """What this module adds to a virtual system."""

    disks: List[model.Disk]
    vmware_os_type: Optional[str] = None
    cores_per_socket: Optional[int] = None
    firmware: Optional[str] = None


def read_devices(doc: Doc, system: etree._Element, section: Optional[etree._Element],
                 items: List[etree._Element], disks: List[model.Disk],
                 disk_items: List[etree._Element], interfaces: Interfaces) -> Devices:
    """Controllers and boot order of `disks`, and the system-wide hardware.

    `items` are the hardware items selected for the profile, `disk_items`
    the item of each disk (hardware.py): a DiskSection disk that several
    items name is several disks, each in its own item's place;
    `interfaces` the descriptor's ovirt_interfaces().
    """
    controllers, kind_rank = _controllers(doc, items)
    annotated = []
    for index, (disk, item) in enumerate(zip(disks, disk_items, strict=True)):
        parent = doc.child_value(item, "Parent")
        unit = doc.child_value(item, "AddressOnParent")
        controller = controllers.get(parent) if parent else None
        interface, boot = interfaces.get(disk.disk_id, (None, False))
        if controller is None and interface is not None:
            controller = model.Controller(0, interface, None, "ovf:disk-interface")
        annotated.append((_order(controller, unit, boot, index, kind_rank),
                          dataclasses.replace(disk, controller=controller, unit=unit,
                                              boot=boot)))
    annotated.sort(key=lambda pair: pair[0])
    return Devices(disks=[disk for _, disk in annotated],
                   vmware_os_type=_vmware_os_type(doc, system),
                   cores_per_socket=_cores_per_socket(doc, items),
                   firmware=_firmware(doc, system, section))


def _controllers(doc: Doc, items: List[etree._Element]
                 ) -> Tuple[Dict[str, model.Controller], Dict[int, int]]:
    found: Dict[str, model.Controller] = {}
    rank: Dict[int, int] = {}
    for position, item in enumerate(items):
        rtype = _resource_type(doc, item)
        if rtype not in CONTROLLER_TYPES:
            continue
        item_id = hardware.instance_id(doc, item)
        rank.setdefault(rtype, position)
        if item_id is None:
            continue
        found[item_id] = model.Controller(
            resource_type=rtype, subtype=doc.child_value(item, "ResourceSubType"),
            address=doc.child_value(item, "Address"), source="Item %s" % item_id)
    return found, rank


def _resource_type(doc: Doc, item: etree._Element) -> Optional[int]:
    raw = doc.raw_child_text(item, "ResourceType")
    raw = raw.strip() if raw else ""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 6 else None



def ovirt_interfaces(doc: Doc, root: etree._Element) -> Interfaces:
    """disk id -> (ovf:disk-interface, ovf:boot) of oVirt's DiskSection disks.

    Read once per descriptor (a search of the whole tree per system would
    make a descriptor of many systems quadratic).
    """
    found: Interfaces = {}
    for section in descendants(root, "DiskSection"):
        for element in children(section, "Disk"):
            disk_id = doc.attr_value(element, "diskId")
            interface = doc.attr_value(element, "disk-interface")
            boot = (doc.attr_value(element, "boot") or "").lower() == "true"
            if disk_id is not None and (interface is not None or boot):
                found.setdefault(disk_id, (interface, boot))
    return found


def _number(text: Optional[str]) -> int:
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 9 else _LAST


def _order(controller: Optional[model.Controller], unit: Optional[str], boot: bool,
           index: int, kind_rank: Dict[int, int]) -> Tuple[int, int, int, int, int]:
    if controller is None:
        return (0 if boot else 1, _LAST, _LAST, _LAST, index)
    return (0 if boot else 1, kind_rank.get(controller.resource_type, _LAST),
            _number(controller.address), _number(unit), index)


def _vmware_os_type(doc: Doc, system: etree._Element) -> Optional[str]:
    section = child(system, "OperatingSystemSection")
    if section is None:
        return None
    raw = section.get("{%s}osType" % versions.VMW_NS)
    return doc.check(section, "vmw:osType", raw) or None if raw is not None else None


def _cores_per_socket(doc: Doc, items: List[etree._Element]) -> Optional[int]:
    for item in items:
        if _resource_type(doc, item) != RT_CPU:
            continue
        for element in children(item, "CoresPerSocket"):
            if element.tag != "{%s}CoresPerSocket" % versions.VMW_NS:
                continue
            raw = (element.text or "").strip()
            if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= units.MAX_VCPUS:
                doc.warn(element, "vmw:CoresPerSocket %r is not a core count; ignored"
                         % doc.check(element, "vmw:CoresPerSocket", raw))
                return None
            return int(raw)
    return None


def _firmware(doc: Doc, system: etree._Element,
              section: Optional[etree._Element]) -> Optional[str]:
    declared: List[Tuple[etree._Element, str, str]] = []
    if section is not None:
        for config in children(section, "Config"):
            if config.tag == "{%s}Config" % versions.VMW_NS and \
                    config.get("{%s}key" % versions.VMW_NS) == "firmware":
                declared.append((config, "vmw:Config firmware",
                                 config.get("{%s}value" % versions.VMW_NS) or ""))
    for machine in children(system, "Machine"):
        if machine.tag != "{%s}Machine" % versions.VBOX_NS:
            continue
        for element in descendants(machine, "Firmware"):
            declared.append((element, "vbox:Firmware type", element.get("type") or ""))
    for element, field, raw in declared:
        value = doc.check(element, field, raw)
        if value.lower() in FIRMWARES:
            return FIRMWARES[value.lower()]
        doc.warn(element, "%s %r is not a firmware this tool knows (efi, bios); ignored"
                 % (field, value))
    return None
