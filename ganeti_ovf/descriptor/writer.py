"""Writing the OVF descriptor of `gnt-ovf export`: model in, XML bytes out.

The output is what strict importers (ovftool/vSphere, VirtualBox, COT, our
reader) accept and what the DMTF OVF 1.0 schema validates:

- References, DiskSection (capacity in bytes, ovf:capacityAllocationUnits
  "byte"), NetworkSection, then one VirtualSystem with OperatingSystemSection
  and VirtualHardwareSection.
- Hardware items carry their rasd elements in the order of the CIM schema's
  xs:sequence (alphabetical); InstanceIDs are 1.. in item order.
- OVF 2.0 only changes the envelope namespace and ovf:version: the 2.0 schema
  still allows plain rasd Items next to StorageItem/EthernetPortItem, and
  every importer reads Items, so the hardware is written the same way.
- A NIC without a network name is connected to its Ganeti network, else its
  link, else "VM Network" (vSphere's default port group): OVF requires every
  connection to name a network of the NetworkSection.
- The Ganeti section (writer_gnt.py) goes inside VirtualHardwareSection,
  after the items: the only xs:any ##other slot of a VirtualSystem (the
  VirtualSystem's own section list accepts only declared ovf:Section members,
  which is why Ganeti's old Envelope-level placement failed validation).

The output is deterministic: the same model gives the same bytes.
"""

import urllib.parse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import osids, versions
from ganeti_ovf.descriptor.writer_gnt import build_ganeti_section
from ganeti_ovf.descriptor.writer_text import add, check_text, set_attr
from ganeti_ovf.errors import DescriptorError

DEFAULT_NETWORK = "VM Network"
SCSI_SUBTYPE = "lsilogic"
# An LSI Logic controller takes units 0-15 but 7 is the controller's own
# (VMware refuses a disk there); vSphere allows four SCSI controllers.
SCSI_UNITS = tuple(unit for unit in range(16) if unit != 7)
MAX_SCSI_CONTROLLERS = 4

RT_PROCESSOR = 3
RT_MEMORY = 4
RT_IDE = 5
RT_SCSI = 6
RT_ETHERNET = 10
RT_DISK = 17
RT_OTHER_STORAGE = 20  # SATA (AHCI), as VMware and VirtualBox write it


@dataclass(frozen=True)
class Bus:
    """A kind of disk controller: its slots and how many vSphere allows."""

    units: Tuple[int, ...]
    controllers: int
    description: str
    element_name: str


BUSES = {
    RT_IDE: Bus((0, 1), 2, "IDE Controller", "IDE"),  # master and slave, two channels
    RT_SCSI: Bus(SCSI_UNITS, MAX_SCSI_CONTROLLERS, "SCSI Controller", "SCSI controller"),
    RT_OTHER_STORAGE: Bus(tuple(range(30)), 4, "SATA Controller", "SATA controller"),
}

# CIM_ResourceAllocationSettingData_Type's xs:sequence, in schema order.
RASD_ORDER = (
    "Address", "AddressOnParent", "AllocationUnits", "AutomaticAllocation",
    "AutomaticDeallocation", "Caption", "ChangeableType", "ConfigurationName",
    "Connection", "ConsumerVisibility", "Description", "ElementName", "Generation",
    "HostResource", "InstanceID", "Limit", "MappingBehavior", "OtherResourceType",
    "Parent", "PoolID", "Reservation", "ResourceSubType", "ResourceType",
    "VirtualQuantity", "Weight",
)
# CIM_VirtualSystemSettingData_Type's sequence, the part we write.
VSSD_ORDER = ("ElementName", "InstanceID", "VirtualSystemIdentifier", "VirtualSystemType")



def write_descriptor(appliance: model.Appliance, ovf_version: str = "1.0",
                     external: bool = False, hardware_family: str = "vmx-10",
                     nic_model: str = "E1000") -> bytes:
    """The descriptor of `appliance` (one virtual system) as UTF-8 XML bytes.

    `external` leaves out the Ganeti section (a package for other tools);
    `nic_model` is the ResourceSubType of NICs whose model is unknown.
    Raises DescriptorError for anything that cannot be written.
    """
    version = versions.WRITABLE.get(ovf_version)
    if version is None:
        raise DescriptorError("cannot write OVF version %r (writable: %s)"
                              % (ovf_version, ", ".join(sorted(versions.WRITABLE))))
    if len(appliance.systems) != 1:
        raise DescriptorError("an exported package holds exactly one virtual system, not %d"
                              % len(appliance.systems))
    check_text(hardware_family, "hardware family (vssd:VirtualSystemType)")
    check_text(nic_model, "NIC model (rasd:ResourceSubType)")
    system = appliance.systems[0]
    files = _check_files(appliance.files)
    _check_disks(system.disks, files)

    ovf_ns = version.envelope_namespaces[0]
    nsmap = {None: ovf_ns, "ovf": ovf_ns, "rasd": versions.RASD_NS,
             "vssd": versions.VSSD_NS, "vmw": versions.VMW_NS}
    if system.ganeti is not None and not external:
        nsmap["gnt"] = versions.GANETI_NS
    envelope = etree.Element("{%s}Envelope" % ovf_ns, nsmap=nsmap)
    envelope.set("{%s}version" % ovf_ns, version.version_attribute)
    envelope.set("{%s}lang" % versions.XML_NS, "en-US")
    writer = _Writer(ovf_ns, hardware_family, nic_model)
    writer.references(envelope, appliance.files)
    networks = [_network_name(nic) for nic in system.nics]
    if system.disks:
        writer.disk_section(envelope, system.disks)
    if networks:
        writer.network_section(envelope, networks)
    hardware = writer.virtual_system(envelope, system, networks)
    if system.ganeti is not None and not external:
        hardware.append(build_ganeti_section(system, networks, ovf_ns))
    etree.indent(envelope, space="  ")
    body = etree.tostring(envelope, encoding="UTF-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def _network_name(nic: model.Nic) -> str:
    for candidate in (nic.network, nic.ganeti_network, nic.link):
        if candidate:
            return candidate
    return DEFAULT_NETWORK


def _check_files(files: Sequence[model.FileRef]) -> Dict[str, model.FileRef]:
    by_id: Dict[str, model.FileRef] = {}
    hrefs = set()
    for ref in files:
        check_text(ref.file_id, "File ovf:id")
        if ref.file_id in by_id:
            raise DescriptorError("References: file id %r is used twice" % ref.file_id)
        _href(ref)
        if ref.href in hrefs:
            raise DescriptorError("References: href %r is listed twice" % ref.href)
        if ref.compression not in (model.COMPRESSION_NONE, model.COMPRESSION_GZIP):
            raise DescriptorError("References: file %r has unknown compression %r"
                                  % (ref.file_id, ref.compression))
        _check_count(ref.size, 0, "References: file %r ovf:size" % ref.file_id)
        _check_count(ref.chunk_size, 1, "References: file %r ovf:chunkSize" % ref.file_id)
        by_id[ref.file_id] = ref
        hrefs.add(ref.href)
    return by_id


def _href(ref: model.FileRef) -> str:
    """The file's ovf:href: its name in the package, percent-encoded.

    Only bare file names are written, as our reader accepts only those: no
    directory part, no "..", no ":" (a URL scheme), no outer blanks.
    """
    name = check_text(ref.href, "References: file %r ovf:href" % ref.file_id)
    if any(bad in name for bad in ("/", "\\", ":", "..")) or name != name.strip():
        raise DescriptorError("References: file %r href %r is not a bare file name"
                              % (ref.file_id, name))
    return urllib.parse.quote(name, safe="")


def _check_disks(disks: Sequence[model.Disk], files: Dict[str, model.FileRef]) -> None:
    seen = set()
    per_kind: Dict[Tuple[int, Optional[str]], int] = {}
    for disk in disks:
        kind = _controller_kind(disk)
        per_kind[kind] = per_kind.get(kind, 0) + 1
    for (resource_type, _subtype), count in per_kind.items():
        bus = BUSES[resource_type]
        if count > len(bus.units) * bus.controllers:
            raise DescriptorError("DiskSection: %d disks do not fit on %d %s controllers"
                                  " (choose another --disk-controller)"
                                  % (count, bus.controllers, bus.element_name.split()[0]))
    for disk in disks:
        check_text(disk.disk_id, "Disk ovf:diskId")
        if disk.disk_id in seen:
            raise DescriptorError("DiskSection: disk id %r is used twice" % disk.disk_id)
        seen.add(disk.disk_id)
        _check_count(disk.capacity, 1, "DiskSection: disk %r ovf:capacity" % disk.disk_id)
        _check_count(disk.populated_size, 0,
                     "DiskSection: disk %r ovf:populatedSize" % disk.disk_id)
        if disk.file is not None and disk.file.file_id not in files:
            raise DescriptorError("DiskSection: disk %r refers to file %r, which is not"
                                  " in References" % (disk.disk_id, disk.file.file_id))
        if disk.file is not None and disk.file != files[disk.file.file_id]:
            raise DescriptorError("DiskSection: disk %r's file %r differs from its"
                                  " References entry" % (disk.disk_id, disk.file.file_id))
        if disk.file is not None and disk.format_uri is None:
            raise DescriptorError("DiskSection: disk %r has no format" % disk.disk_id)


def _check_count(value: Optional[int], minimum: int, field: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DescriptorError("%s must be an integer >= %d, not %r" % (field, minimum, value))


def _format_uri(disk: model.Disk) -> str:
    """The disk's ovf:format; a qemu-img format name is mapped to its URI."""
    if disk.format_uri is None:
        # A blank disk: the importer creates it, in the format VMware expects.
        return versions.FORMAT_URIS["vmdk"][0]
    if disk.format_uri in versions.FORMAT_URIS:
        return versions.FORMAT_URIS[disk.format_uri][0]
    return disk.format_uri


class _Writer:
    """Builds the sections; holds what every section needs to know."""

    def __init__(self, ovf_ns: str, hardware_family: str, nic_model: str) -> None:
        self.ovf_ns = ovf_ns
        self.hardware_family = hardware_family
        self.nic_model = nic_model

    def _ovf(self, name: str) -> str:
        return "{%s}%s" % (self.ovf_ns, name)

    def _section(self, parent: etree._Element, name: str, info: str) -> etree._Element:
        section = etree.SubElement(parent, self._ovf(name))
        add(section, self._ovf("Info"), info, "%s Info" % name)
        return section

    def references(self, envelope: etree._Element,
                   files: Sequence[model.FileRef]) -> None:
        references = etree.SubElement(envelope, self._ovf("References"))
        for ref in files:
            element = etree.SubElement(references, self._ovf("File"))
            element.set(self._ovf("href"), _href(ref))
            set_attr(element, self._ovf("id"), ref.file_id, "File ovf:id")
            if ref.size is not None:
                element.set(self._ovf("size"), str(ref.size))
            if ref.compression == model.COMPRESSION_GZIP:
                element.set(self._ovf("compression"), ref.compression)
            if ref.chunk_size is not None:
                element.set(self._ovf("chunkSize"), str(ref.chunk_size))

    def disk_section(self, envelope: etree._Element, disks: Sequence[model.Disk]) -> None:
        section = self._section(envelope, "DiskSection",
                                "List of the virtual disks used in the package")
        for disk in disks:
            element = etree.SubElement(section, self._ovf("Disk"))
            element.set(self._ovf("capacity"), str(disk.capacity))
            element.set(self._ovf("capacityAllocationUnits"), "byte")
            element.set(self._ovf("diskId"), disk.disk_id)
            if disk.file is not None:
                element.set(self._ovf("fileRef"), disk.file.file_id)
            set_attr(element, self._ovf("format"), _format_uri(disk),
                     "disk %r ovf:format" % disk.disk_id)
            if disk.populated_size is not None:
                element.set(self._ovf("populatedSize"), str(disk.populated_size))

    def network_section(self, envelope: etree._Element, networks: List[str]) -> None:
        section = self._section(envelope, "NetworkSection",
                                "Logical networks used in the package")
        for name in dict.fromkeys(networks):  # distinct, in order of first use
            network = etree.SubElement(section, self._ovf("Network"))
            set_attr(network, self._ovf("name"), name, "Network ovf:name")
            add(network, self._ovf("Description"), "The %s network" % name,
                "Network Description")

    def virtual_system(self, envelope: etree._Element, system: model.VirtualSystem,
                       networks: List[str]) -> etree._Element:
        """Write the VirtualSystem; return its VirtualHardwareSection."""
        element = etree.SubElement(envelope, self._ovf("VirtualSystem"))
        check_text(system.system_id, "VirtualSystem ovf:id")
        element.set(self._ovf("id"), system.system_id)
        add(element, self._ovf("Info"), "A virtual machine", "VirtualSystem Info")
        add(element, self._ovf("Name"), system.name or system.system_id,
            "VirtualSystem Name")
        self._operating_system(element, system)
        hardware = self._section(element, "VirtualHardwareSection",
                                 "Virtual hardware requirements")
        self._system(hardware, system)
        for fields in self._items(system, networks):
            item = etree.SubElement(hardware, self._ovf("Item"))
            for name in RASD_ORDER:
                if name in fields:
                    add(item, "{%s}%s" % (versions.RASD_NS, name), fields[name],
                        "hardware item rasd:%s" % name)
        return hardware

    def _operating_system(self, parent: etree._Element, system: model.VirtualSystem) -> None:
        os_name = system.ganeti.os_name if system.ganeti is not None else None
        guess = osids.os_type_for(os_name)
        cim_id = guess.cim_id if system.os_id is None else system.os_id
        _check_count(cim_id, 0, "OperatingSystemSection ovf:id")
        if cim_id > 0xFFFF:  # xs:unsignedShort
            raise DescriptorError("OperatingSystemSection ovf:id %d is out of range" % cim_id)
        if system.os_description:
            description = system.os_description
        elif cim_id == guess.cim_id:
            description = guess.description
        else:
            description = osids.description_for(cim_id)
        section = etree.SubElement(parent, self._ovf("OperatingSystemSection"))
        section.set(self._ovf("id"), str(cim_id))
        vmware = system.vmware_os_type
        if vmware is None and cim_id == guess.cim_id:
            vmware = osids.vmware_guest_id(os_name)
        if vmware:
            section.set("{%s}osType" % versions.VMW_NS,
                        check_text(vmware, "OperatingSystemSection vmw:osType"))
        add(section, self._ovf("Info"), "The kind of installed guest operating system",
            "OperatingSystemSection Info")
        add(section, self._ovf("Description"), description,
            "OperatingSystemSection Description")

    def _system(self, hardware: etree._Element, system: model.VirtualSystem) -> None:
        element = etree.SubElement(hardware, self._ovf("System"))
        values = {"ElementName": "Virtual Hardware Family", "InstanceID": "0",
                  "VirtualSystemIdentifier": system.name or system.system_id,
                  "VirtualSystemType": self.hardware_family}
        for name in VSSD_ORDER:
            add(element, "{%s}%s" % (versions.VSSD_NS, name), values[name],
                "vssd:%s" % name)

    def _items(self, system: model.VirtualSystem,
               networks: List[str]) -> List[Dict[str, str]]:
        """The hardware items as rasd field -> value, InstanceIDs assigned."""
        if system.vcpus is None or system.memory_mib is None:
            raise DescriptorError("virtual system %r: vcpus and memory must be known"
                                  " to write its hardware" % system.system_id)
        _check_count(system.vcpus, 1, "virtual system vcpus")
        _check_count(system.memory_mib, 1, "virtual system memory")
        items: List[Dict[str, str]] = [
            {"AllocationUnits": "hertz * 10^6", "Description": "Number of Virtual CPUs",
             "ElementName": "%d virtual CPU(s)" % system.vcpus,
             "ResourceType": str(RT_PROCESSOR), "VirtualQuantity": str(system.vcpus)},
            {"AllocationUnits": "byte * 2^20", "Description": "Memory Size",
             "ElementName": "%dMB of memory" % system.memory_mib,
             "ResourceType": str(RT_MEMORY), "VirtualQuantity": str(system.memory_mib)},
        ]
        disk_items, controllers = self._disk_items(system.disks, len(items))
        items.extend(controllers)
        items.extend(disk_items)
        for index, (nic, network) in enumerate(zip(system.nics, networks, strict=True)):
            fields = {"AutomaticAllocation": "true", "Connection": network,
                      "Description": "%s ethernet adapter on \"%s\""
                      % (nic.model or self.nic_model, network),
                      "ElementName": "Network adapter %d" % (index + 1),
                      "ResourceSubType": nic.model or self.nic_model,
                      "ResourceType": str(RT_ETHERNET)}
            if nic.mac:
                fields["Address"] = nic.mac
            items.append(fields)
        for number, fields in enumerate(items, start=1):
            if "InstanceID" not in fields:
                fields["InstanceID"] = str(number)
        return items

    def _disk_items(self, disks: Sequence[model.Disk],
                    before: int) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
        """Disk items and the controllers they hang on (see BUSES).

        Disks keep their order; each kind of controller (the disk's
        model.Controller, SCSI lsilogic when it has none) fills its slots
        and then its next controller.  Controllers come first among the
        items, so their InstanceIDs are known: they are numbered right after
        the `before` items written earlier.
        """
        controllers: List[Dict[str, str]] = []
        placed = []
        # kind -> [index in controllers, disks on it, buses of that kind so far]
        current: Dict[Tuple[int, Optional[str]], List[int]] = {}
        for disk in disks:
            kind = _controller_kind(disk)
            bus = BUSES[kind[0]]
            state = current.get(kind)
            if state is None or state[1] == len(bus.units):
                buses = state[2] + 1 if state else 1
                controllers.append(_controller_item(kind, buses - 1))
                state = current[kind] = [len(controllers) - 1, 0, buses]
            placed.append((disk, state[0], bus.units[state[1]]))
            state[1] += 1
        for number, fields in enumerate(controllers):
            fields["InstanceID"] = str(before + 1 + number)
        disk_items = []
        for index, (disk, controller, unit) in enumerate(placed):
            disk_items.append(
                {"AddressOnParent": str(unit),
                 "ElementName": "Hard disk %d" % (index + 1),
                 "HostResource": "ovf:/disk/%s" % disk.disk_id,
                 "Parent": controllers[controller]["InstanceID"],
                 "ResourceType": str(RT_DISK)})
        return disk_items, controllers


def _controller_kind(disk: model.Disk) -> Tuple[int, Optional[str]]:
    controller = disk.controller
    if controller is None or controller.resource_type not in BUSES:
        return (RT_SCSI, SCSI_SUBTYPE)
    return (controller.resource_type, controller.subtype)


def _controller_item(kind: Tuple[int, Optional[str]], bus: int) -> Dict[str, str]:
    resource_type, subtype = kind
    bus_kind = BUSES[resource_type]
    fields = {"Address": str(bus), "Description": bus_kind.description,
              "ElementName": "%s %d" % (bus_kind.element_name, bus),
              "ResourceType": str(resource_type)}
    if subtype:
        fields["ResourceSubType"] = check_text(subtype, "disk controller ResourceSubType")
    return fields
