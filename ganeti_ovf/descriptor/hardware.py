"""A VirtualHardwareSection's items: CPUs, memory, disks and NICs.

Items are first selected for the chosen deployment profile (an item with
ovf:configuration applies only to the profiles it lists, and replaces the
generic item of the same InstanceID), then mapped by CIM ResourceType.  Disk
items resolve rasd:HostResource to a DiskSection disk (or directly to a File);
every disk item is a virtual disk of its own, even when several name the same
DiskSection disk, and one without HostResource is a blank disk sized by its
own VirtualQuantity;
the rest of the hardware either has no Ganeti counterpart and is skipped with a
warning, or is a controller, used only to order the disks.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import units, versions
from ganeti_ovf.descriptor.xmltree import Doc, child, children, descendants

# CIM_ResourceAllocationSettingData.ResourceType values.
RT_CPU = 3
RT_MEMORY = 4
RT_NIC = 10
RT_DISK = 17
# Controllers: they only order disks (Parent/AddressOnParent), so no warning.
CONTROLLER_TYPES = frozenset((5, 6, 20))
# Devices Ganeti does not import from a package; one short warning each.
SKIPPED_TYPES = {14: "floppy drive", 15: "CD/DVD drive", 16: "CD/DVD drive",
                 21: "serial port", 22: "parallel port", 23: "USB controller",
                 24: "video card", 35: "sound card"}

# ovf:/disk/ID, /disk/ID, ovf://disk/ID and the same with file/.
_HOST_RESOURCE = re.compile(r"(?:ovf:)?//?(disk|file)/(.+)")
_MAC_COLON = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")
_MAC_BARE = re.compile(r"[0-9a-fA-F]{12}")
NIC_MODES = ("bridged", "routed")


@dataclass
class Hardware:
    """What the reader keeps of one VirtualHardwareSection."""

    vcpus: Optional[int] = None
    memory_mib: Optional[int] = None
    disks: List[model.Disk] = field(default_factory=list)
    nics: List[model.Nic] = field(default_factory=list)
    items: List[etree._Element] = field(default_factory=list)  # for devices.py
    disk_items: List[etree._Element] = field(default_factory=list)  # each disk's item


def normalize_mac(text: Optional[str]) -> Optional[str]:
    """`text` as aa:bb:cc:dd:ee:ff, or None if it is not a MAC address."""
    if not text:
        return None
    if _MAC_COLON.fullmatch(text):
        digits = re.sub("[:-]", "", text)
    elif _MAC_BARE.fullmatch(text):
        digits = text
    else:
        return None
    digits = digits.lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def mode_from_network(network: Optional[str]) -> Optional[str]:
    """Ganeti's old convention: a network named "...bridged..." is bridged."""
    lowered = (network or "").lower()
    for mode in NIC_MODES:
        if mode in lowered:
            return mode
    return None


def parse_host_resource(text: Optional[str]) -> Optional[Tuple[str, str]]:
    """("disk"|"file", id) for a HostResource reference, else None."""
    if not text:
        return None
    match = _HOST_RESOURCE.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def instance_id(doc: Doc, item: etree._Element) -> Optional[str]:
    return doc.value(child(item, *versions.INSTANCE_ID_NAMES), "InstanceID")


def _label(doc: Doc, item: etree._Element) -> str:
    return "Item %s" % (instance_id(doc, item) or "without InstanceID")


def select_items(doc: Doc, section: etree._Element,
                 profile: Optional[str]) -> List[etree._Element]:
    """The items of `section` that apply to `profile`, in document order.

    Items sharing an InstanceID describe one device; one whose
    ovf:configuration lists the profile replaces the generic one.
    """
    groups: Dict[str, List[Tuple[bool, etree._Element]]] = {}
    order: List[str] = []
    for index, item in enumerate(children(section, *versions.ITEM_ELEMENTS)):
        key = instance_id(doc, item) or "#%d" % index
        configuration = doc.attr(item, "configuration")
        specific = configuration is not None
        if specific and (profile is None or profile not in configuration.split()):
            if profile is None:
                doc.warn(item, "Item %s is for profiles %r, but the package defines no"
                         " DeploymentOptionSection; skipped" % (key, configuration))
            continue
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((specific, item))
    selected = []
    for key in order:
        candidates = groups[key]
        best = [item for specific, item in candidates if specific] or \
            [item for _, item in candidates]
        if len(best) > 1:
            doc.warn(best[1], "several items with InstanceID %s apply; using the first" % key)
        selected.append(best[0])
    return selected


def read_hardware(doc: Doc, section: Optional[etree._Element], profile: Optional[str],
                  disks: Dict[str, model.Disk], files: Dict[str, model.FileRef]) -> Hardware:
    """Map the items of `section` (None: no hardware section) to the model."""
    hardware = Hardware()
    if section is None:
        return hardware
    items = select_items(doc, section, profile)
    hardware.items = items
    positions = {}
    for index, item in enumerate(items):
        positions.setdefault(instance_id(doc, item), index)
    placed_disks: List[Tuple[Tuple[int, int, int], model.Disk, etree._Element]] = []
    skipped: Dict[str, int] = {}
    for index, item in enumerate(items):
        label = _label(doc, item)
        raw_type = doc.raw_child_text(item, "ResourceType")
        if raw_type is None:
            doc.warn(item, "%s has no ResourceType; skipped" % label)
            continue
        rtype = units.parse_uint(raw_type, "%s: %s ResourceType" % (doc.where(item), label))
        if rtype == RT_CPU:
            _read_cpu(doc, item, label, hardware)
        elif rtype == RT_MEMORY:
            _read_memory(doc, item, label, hardware)
        elif rtype == RT_DISK:
            disk = _read_disk(doc, item, label, disks, files)
            if disk is not None:
                # Several items naming one DiskSection disk (vCenter's
                # profiles do) are several virtual disks alike.
                placed_disks.append((_disk_order(doc, item, index, positions), disk, item))
        elif rtype == RT_NIC:
            hardware.nics.append(_read_nic(doc, item, label))
        elif rtype in CONTROLLER_TYPES:
            continue
        elif rtype in SKIPPED_TYPES:
            skipped[SKIPPED_TYPES[rtype]] = skipped.get(SKIPPED_TYPES[rtype], 0) + 1
        else:
            doc.warn(item, "%s of unsupported ResourceType %d skipped" % (label, rtype))
    if skipped:
        doc.warn(section, "not imported: %s" % ", ".join(
            "%d %s%s" % (count, name, "s" if count > 1 else "")
            for name, count in skipped.items()))
    placed_disks.sort(key=lambda placed: placed[0])
    hardware.disks = [disk for _, disk, _item in placed_disks]
    hardware.disk_items = [item for _, _disk, item in placed_disks]
    for what, count in (("disks", len(hardware.disks)), ("NICs", len(hardware.nics))):
        if count > units.MAX_DEVICES:
            raise doc.error(section, "%d %s, more than the limit of %d"
                            % (count, what, units.MAX_DEVICES))
    return hardware


def _quantity(doc: Doc, item: etree._Element, label: str, maximum: int) -> Optional[int]:
    raw = doc.raw_child_text(item, "VirtualQuantity")
    if raw is None:
        doc.warn(item, "%s has no VirtualQuantity; ignored" % label)
        return None
    return units.parse_uint(raw, "%s: %s VirtualQuantity" % (doc.where(item), label),
                            maximum=maximum, minimum=1)


def _read_cpu(doc: Doc, item: etree._Element, label: str, hardware: Hardware) -> None:
    # AllocationUnits of a CPU item ("hertz * 10^6") describe speed, not count.
    count = _quantity(doc, item, label, units.MAX_VCPUS)
    if count is None:
        return
    if hardware.vcpus is not None:
        doc.warn(item, "%s: a second CPU item; the first one counts" % label)
        return
    hardware.vcpus = count


def _read_memory(doc: Doc, item: etree._Element, label: str, hardware: Hardware) -> None:
    quantity = _quantity(doc, item, label, 1 << 62)
    if quantity is None:
        return
    raw_units = doc.raw_child_text(item, "AllocationUnits")
    if raw_units is None or not raw_units.strip():
        doc.warn(item, "%s: memory without AllocationUnits; taken as MiB" % label)
        multiplier = units.MIB
    else:
        multiplier = units.parse_allocation_units(
            raw_units, "%s: %s AllocationUnits" % (doc.where(item), label))
    mib = units.bytes_to_mib(quantity * multiplier)
    if mib > units.MAX_MEMORY_MIB:
        raise doc.error(item, "%s: memory of %d MiB is more than the limit of %d MiB"
                        % (label, mib, units.MAX_MEMORY_MIB))
    if hardware.memory_mib is not None:
        doc.warn(item, "%s: a second memory item; the first one counts" % label)
        return
    hardware.memory_mib = mib


def _read_disk(doc: Doc, item: etree._Element, label: str, disks: Dict[str, model.Disk],
               files: Dict[str, model.FileRef]) -> Optional[model.Disk]:
    host = doc.child_value(item, "HostResource")
    if host is None:
        if doc.raw_child_text(item, "VirtualQuantity") is not None:
            return _item_sized_disk(doc, item, label)
        if doc.attr(item, "required") == "false":
            doc.warn(item, "%s: optional disk without HostResource skipped" % label)
            return None
        raise doc.error(item, "%s: disk item without HostResource or VirtualQuantity"
                        % label)
    reference = parse_host_resource(host)
    if reference is None:
        raise doc.error(item, "%s: HostResource %r is neither ovf:/disk/ID nor ovf:/file/ID"
                        % (label, host))
    what, ref_id = reference
    if what == "disk":
        if ref_id not in disks:
            raise doc.error(item, "%s: HostResource names disk %r, which DiskSection lacks"
                            % (label, ref_id))
        return disks[ref_id]
    if ref_id not in files:
        raise doc.error(item, "%s: HostResource names file %r, which References lacks"
                        % (label, ref_id))
    doc.warn(item, "%s: disk is file %s without a DiskSection entry; its capacity is"
             " taken from the image" % (label, ref_id))
    return model.Disk(disk_id=ref_id, capacity=0, file=files[ref_id],
                      capacity_declared=False)


def _item_sized_disk(doc: Doc, item: etree._Element, label: str) -> model.Disk:
    """A blank disk sized by the item itself: VirtualQuantity in
    AllocationUnits (or CIM's VirtualQuantityUnits), bytes if neither."""
    where = "%s: %s" % (doc.where(item), label)
    count = units.parse_uint(doc.raw_child_text(item, "VirtualQuantity"),
                             "%s VirtualQuantity" % where, maximum=units.MAX_CAPACITY,
                             minimum=1)
    unit_text = doc.raw_child_text(item, "AllocationUnits", "VirtualQuantityUnits")
    if unit_text is None or not unit_text.strip():
        doc.warn(item, "%s: disk size without AllocationUnits; taken as bytes" % label)
        multiplier = 1
    else:
        multiplier = units.parse_allocation_units(unit_text.strip(),
                                                  "%s AllocationUnits" % where)
    capacity = count * multiplier
    if capacity > units.MAX_CAPACITY:
        raise doc.error(item, "%s: disk of %d bytes is more than the limit of %d"
                        % (label, capacity, units.MAX_CAPACITY))
    return model.Disk(disk_id="item%s" % (instance_id(doc, item) or ""), capacity=capacity)


def _disk_order(doc: Doc, item: etree._Element, index: int,
                positions: Dict[Optional[str], int]) -> Tuple[int, int, int]:
    """Sort key: the controller's place among the items, the slot on it, then
    the item's own place.  Unknown parts sort last; they only order disks."""
    last = 1 << 30
    parent = doc.value(child(item, "Parent"), "Parent")
    controller = positions.get(parent, last) if parent else last
    slot_text = doc.raw_child_text(item, "AddressOnParent")
    slot = int(slot_text) if slot_text and slot_text.isascii() and slot_text.isdigit() \
        and len(slot_text) < 10 else last
    return (controller, slot, index)


def _read_nic(doc: Doc, item: etree._Element, label: str) -> model.Nic:
    network = doc.child_value(item, "Connection")
    mac = None
    for name in ("Address", "MACAddress"):
        raw = doc.child_value(item, name)
        if raw is not None:
            mac = normalize_mac(raw)
            if mac is None:
                doc.warn(item, "%s: invalid MAC address %r dropped" % (label, raw))
            break
    return model.Nic(network=network, mac=mac, model=doc.child_value(item, "ResourceSubType"),
                     mode=mode_from_network(network))


def vbox_macs(doc: Doc, system: etree._Element) -> List[Optional[str]]:
    """MACs of the enabled adapters of VirtualBox's vbox:Machine, by slot.

    VirtualBox exports one EthernetPortItem per enabled adapter, in slot order,
    without a MAC; its own machine section has them.
    """
    adapters = []
    for machine in children(system, "Machine"):
        if machine.tag != "{%s}Machine" % versions.VBOX_NS:
            continue
        for adapter in descendants(machine, "Adapter"):
            if adapter.get("enabled", "true").lower() == "false":
                continue
            slot = adapter.get("slot", "")
            order = int(slot) if slot.isascii() and slot.isdigit() and len(slot) < 6 else 1 << 20
            raw = adapter.get("MACAddress")
            mac = normalize_mac(doc.check(adapter, "vbox:Adapter MACAddress", raw)) \
                if raw else None
            if raw and mac is None:
                doc.warn(adapter, "VirtualBox adapter: invalid MAC address %r dropped" % raw)
            adapters.append((order, len(adapters), mac))
    return [mac for _, _, mac in sorted(adapters)]


def referenced_disk_ids(doc: Doc, root: etree._Element) -> Set[str]:
    """Disk ids any item of any profile names in its HostResource."""
    found = set()
    for item in descendants(root, *versions.ITEM_ELEMENTS):
        reference = parse_host_resource(doc.raw_child_text(item, "HostResource"))
        if reference:
            found.add(reference[1].strip())
    return found
