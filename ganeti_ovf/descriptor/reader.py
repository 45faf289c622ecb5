"""The OVF descriptor reader: XML bytes in, a frozen model.Appliance out.

Pure: no files, no subprocesses.  The envelope namespace decides the OVF
version (0.9, 1.x, 2.x; another namespace is refused; an Envelope in no
namespace at all, as SUSE exports it, is read as the version a prefix
declares, else 1.x, with a warning); after that elements are matched by
local name.  Envelope-level sections (References, DiskSection,
DeploymentOptionSection) are read once; each VirtualSystem, nested in
collections or not, becomes a model.VirtualSystem.

Choices the OVF specification leaves open, made here:
- Several VirtualHardwareSections are alternatives (one per hypervisor
  family), so the first one that has items is read and the others ignored.
- Only DiskSection disks that an item of the chosen profile references become
  disks; a disk no item references at all is reported in a warning.
- File hrefs are relative paths inside the package (percent-decoded segment
  by segment): `disks/disk1.vmdk` is accepted, as ovftool writes it; URLs,
  absolute paths, drive letters, backslashes and '..' components are refused
  (a name merely containing two dots, `sun..vhw-disk1.vmdk`, is fine).
- A disk without ovf:capacity (Ganeti's old converter wrote none) gets
  capacity 0, meaning "the image's virtual size", with a warning; a blank
  disk must state its capacity.
"""

import dataclasses
import re
import urllib.parse
from typing import Dict, List, Optional

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import devices, hardware, units, versions
from ganeti_ovf.descriptor.ganeti_section import (
    SECTION,
    GanetiData,
    apply_to_nics,
    read_ganeti_section,
)
from ganeti_ovf.descriptor.xmlsafe import parse_xml
from ganeti_ovf.descriptor.xmltree import Doc, child, children, descendants, kind, namespace
from ganeti_ovf.errors import DescriptorError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_DRIVE = re.compile(r"[A-Za-z]:")
_PROPERTY_REF = re.compile(r"\$\{(.+)\}")
_COMPRESSIONS = (model.COMPRESSION_NONE, model.COMPRESSION_GZIP)
MAX_OS_ID = 1 << 16
# Each VirtualSystem becomes an instance, each Configuration a profile to
# choose: real vApps have a handful of systems and appliances a few dozen
# profiles at most; these bounds keep `info` and `import` quick.
MAX_SYSTEMS = 256
MAX_PROFILES = 256
# Files (and so disks) of one package: an OVA holds at most 10000 members
# (package/tarreader.py MAX_MEMBERS), so no real descriptor lists more.
MAX_FILES = 10_000


def parse_descriptor(data: bytes, profile: Optional[str] = None,
                     source: str = "descriptor") -> model.Appliance:
    """Read an OVF descriptor for deployment profile `profile` (None: default).

    Raises DescriptorError, naming `source` and the line or field, for unsafe
    or invalid XML, an unknown OVF version, dangling references, refused
    values, or a `profile` the package does not define.
    """
    parse_warnings: List[str] = []
    root = parse_xml(data, source, parse_warnings)
    envelope_ns = namespace(root)
    version = versions.version_for_namespace(envelope_ns)
    if envelope_ns is None and kind(root) == "Envelope":
        version = _version_without_namespace(root)
    if kind(root) != "Envelope" or version is None:
        known = ", ".join(ns for v in versions.VERSIONS for ns in v.envelope_namespaces)
        raise DescriptorError("%s: root element %s is not an OVF Envelope (known namespaces:"
                              " %s)" % (source, root.tag, known))
    doc = Doc(source, envelope_ns)
    doc.warnings.extend(parse_warnings)
    if envelope_ns is None:
        doc.warn(root, "the Envelope has no namespace; read as OVF %s by local names"
                 % version.name)
    profiles = _read_profiles(doc, root)
    chosen = _choose_profile(doc, profiles, profile)
    files = _read_references(doc, root)
    disks = _read_disk_section(doc, root, files, _read_properties(doc, root))
    system_elements = list(descendants(root, "VirtualSystem"))
    if not system_elements:
        raise DescriptorError("%s: the descriptor has no VirtualSystem" % source)
    if len(system_elements) > MAX_SYSTEMS:
        raise doc.error(system_elements[MAX_SYSTEMS], "more than %d VirtualSystems"
                        % MAX_SYSTEMS)
    sections = _ganeti_sections(doc, root)
    interfaces = devices.ovirt_interfaces(doc, root)
    systems = []
    for index, element in enumerate(system_elements):
        systems.append(_read_system(doc, element, index, chosen, disks, files,
                                    sections.get(element, sections.get(None)), interfaces))
    seen = set()
    for system in systems:
        if system.system_id in seen:
            raise DescriptorError("%s: two virtual systems have the id %r"
                                  % (source, system.system_id))
        seen.add(system.system_id)
    referenced = hardware.referenced_disk_ids(doc, root)
    for disk_id in disks:
        if disk_id not in referenced:
            doc.warn(None, "DiskSection disk %s is used by no hardware item; not imported"
                     % disk_id)
    return model.Appliance(ovf_version=version.name, systems=tuple(systems),
                           files=tuple(files.values()), profiles=tuple(profiles),
                           profile=chosen, warnings=tuple(doc.warnings))


def _version_without_namespace(root: etree._Element) -> versions.OvfVersion:
    """The version of an Envelope in no namespace (SUSE's exports): the one
    whose envelope namespace a prefix declares, else ovf:version, else 1.x."""
    for uri in root.nsmap.values():
        found = versions.version_for_namespace(uri)
        if found is not None:
            return found
    declared = Doc("", None).attr(root, "version") or ""
    if declared.startswith("2."):
        return versions.OVF_2
    return versions.OVF_1


def _read_profiles(doc: Doc, root: etree._Element) -> List[model.Profile]:
    entries = []
    defined = set()
    for section in children(root, "DeploymentOptionSection"):
        for element in children(section, "Configuration"):
            if len(entries) == MAX_PROFILES:
                raise doc.error(element, "more than %d deployment profiles (Configuration)"
                                % MAX_PROFILES)
            profile_id = doc.attr_value(element, "id")
            if profile_id is None:
                raise doc.error(element, "Configuration without ovf:id")
            if profile_id in defined:
                raise doc.error(element, "profile %r is defined twice" % profile_id)
            defined.add(profile_id)
            entries.append((profile_id, doc.child_value(element, "Label", collapse=True),
                            (doc.attr(element, "default") or "").lower() == "true"))
    default = next((entry[0] for entry in entries if entry[2]),
                   entries[0][0] if entries else None)
    return [model.Profile(profile_id=pid, label=label, default=pid == default)
            for pid, label, _ in entries]


def _choose_profile(doc: Doc, profiles: List[model.Profile],
                    wanted: Optional[str]) -> Optional[str]:
    if wanted is None:
        return next((p.profile_id for p in profiles if p.default), None)
    if any(p.profile_id == wanted for p in profiles):
        return wanted
    listed = ", ".join(p.profile_id for p in profiles) or "none"
    raise DescriptorError("%s: unknown profile %r (the package has: %s)"
                          % (doc.source, wanted, listed))


def _read_properties(doc: Doc, root: etree._Element) -> Dict[str, str]:
    """ProductSection property defaults, for ${key} capacities."""
    properties: Dict[str, str] = {}
    for section in descendants(root, "ProductSection"):
        for element in children(section, "Property"):
            key = doc.attr(element, "key")
            if key:
                properties.setdefault(key, doc.attr(element, "value") or "")
    return properties


def _read_references(doc: Doc, root: etree._Element) -> Dict[str, model.FileRef]:
    files: Dict[str, model.FileRef] = {}
    for section in children(root, "References"):
        for element in children(section, "File"):
            if len(files) == MAX_FILES:
                raise doc.error(element, "more than %d References/File entries" % MAX_FILES)
            file_id = doc.attr_value(element, "id")
            if file_id is None:
                raise doc.error(element, "File without ovf:id")
            if file_id in files:
                raise doc.error(element, "File id %r is used twice" % file_id)
            label = "File %s" % file_id
            compression = doc.attr_value(element, "compression") or model.COMPRESSION_NONE
            if compression not in _COMPRESSIONS:
                raise doc.error(element, "%s: unsupported ovf:compression %r"
                                % (label, compression))
            files[file_id] = model.FileRef(
                file_id=file_id, href=_check_href(doc, element, label),
                size=_advisory_size(doc, element, label),
                compression=compression,
                chunk_size=_optional_uint(doc, element, "chunkSize", label,
                                          units.MAX_CAPACITY, minimum=1))
    return files


def _check_href(doc: Doc, element: etree._Element, label: str) -> str:
    """The percent-decoded href: a relative path inside the package.

    Each '/'-separated segment is decoded on its own, so an encoded '/' cannot
    make a separator; the package layer then resolves the path without
    following links (see package/reader.py).
    """
    raw = doc.attr(element, "href")
    if raw is None or raw == "":
        raise doc.error(element, "%s has no ovf:href" % label)
    field = "%s ovf:href" % label
    doc.check(element, field, raw)
    try:
        segments = [urllib.parse.unquote(part, errors="strict") for part in raw.split("/")]
    except UnicodeDecodeError:
        raise doc.error(element, "%s: %r is not valid percent-encoded UTF-8" % (field, raw))
    href = "/".join(segments)
    doc.check(element, field, href)
    problem = _href_problem(raw, segments)
    if problem:
        raise doc.error(element, "%s: %r refused: %s" % (field, raw, problem))
    while segments[0] == "." and len(segments) > 1:
        segments.pop(0)  # "./disk.vmdk" is "disk.vmdk"
    return "/".join(segments)


def _href_problem(raw: str, segments: List[str]) -> Optional[str]:
    """The rule an href breaks, or None; checked in this order on purpose:
    a drive letter is also a one-letter URL scheme."""
    joined = "/".join(segments)
    if _DRIVE.match(raw) or _DRIVE.match(joined):
        return "a drive letter (hrefs are relative paths inside the package)"
    if _SCHEME.match(raw) or _SCHEME.match(joined):
        return "URLs are refused (the package must hold the file)"
    if raw.startswith("/") or joined.startswith("/"):
        return "an absolute path (hrefs are relative paths inside the package)"
    if "\\" in joined:
        return "a backslash (path components are separated by '/')"
    if any("/" in segment for segment in segments):
        return "a percent-encoded '/' (path components are separated by a plain '/')"
    if joined != joined.strip():
        return "blanks around the name"
    if ".." in segments:
        return "a '..' path component (hrefs may not leave the package)"
    while len(segments) > 1 and segments[0] == ".":
        segments = segments[1:]
    if any(segment in ("", ".") for segment in segments):
        return "an empty or '.' path component"
    return None


def _optional_uint(doc: Doc, element: etree._Element, name: str, label: str,
                   maximum: int, minimum: int = 0) -> Optional[int]:
    raw = doc.attr(element, name)
    if raw is None:
        return None
    return units.parse_uint(raw, "%s: %s ovf:%s" % (doc.where(element), label, name),
                            maximum=maximum, minimum=minimum)


def _advisory_size(doc: Doc, element: etree._Element, label: str) -> Optional[int]:
    """ovf:size, or None with a warning when it is not a usable byte count.

    It is advisory: the real size of every file is known from the package,
    and real exports write negative, huge or placeholder values.
    """
    try:
        return _optional_uint(doc, element, "size", label, units.MAX_CAPACITY)
    except DescriptorError:
        doc.warn(element, "%s: ovf:size %r is not a byte count; ignored (the file's real"
                 " size is used)" % (label, (doc.attr(element, "size") or "")[:40]))
        return None


def _read_disk_section(doc: Doc, root: etree._Element, files: Dict[str, model.FileRef],
                       properties: Dict[str, str]) -> Dict[str, model.Disk]:
    disks: Dict[str, model.Disk] = {}
    file_users: Dict[str, str] = {}  # fileRef -> the Disk that uses it
    for section in children(root, "DiskSection"):
        for element in children(section, "Disk"):
            if len(disks) == MAX_FILES:
                raise doc.error(element, "more than %d DiskSection/Disk entries" % MAX_FILES)
            disk_id = doc.attr_value(element, "diskId")
            if disk_id is None:
                raise doc.error(element, "Disk without ovf:diskId")
            if disk_id in disks:
                raise doc.error(element, "Disk id %r is used twice" % disk_id)
            label = "Disk %s" % disk_id
            if doc.attr(element, "parentRef") is not None:
                # A delta disk holds only what differs from its parent: alone
                # it is not the guest's disk, and Ganeti has no disk chains.
                raise doc.error(element, "%s: ovf:parentRef (a delta disk over another"
                                " disk) is not supported" % label)
            file_ref = doc.attr_value(element, "fileRef")
            if file_ref is not None and file_ref not in files:
                raise doc.error(element, "%s: ovf:fileRef %r names no References/File"
                                % (label, file_ref))
            if file_ref is not None and file_ref in file_users:
                # Two guest disks written from one image: one would be a
                # silent copy of the other, never what the package meant.
                raise doc.error(element, "%s: ovf:fileRef %r is already the file of Disk"
                                " %r; two disks cannot share one file"
                                % (label, file_ref, file_users[file_ref]))
            if file_ref is not None:
                file_users[file_ref] = disk_id
            disks[disk_id] = model.Disk(
                disk_id=disk_id,
                capacity=_capacity(doc, element, label, file_ref is None, properties),
                file=files[file_ref] if file_ref is not None else None,
                format_uri=doc.attr_value(element, "format"),
                populated_size=_optional_uint(doc, element, "populatedSize", label,
                                              units.MAX_CAPACITY),
                capacity_declared=doc.attr(element, "capacity") is not None)
    return disks


def _capacity(doc: Doc, element: etree._Element, label: str, blank: bool,
              properties: Dict[str, str]) -> int:
    field = "%s: %s ovf:capacity" % (doc.where(element), label)
    raw = doc.attr(element, "capacity")
    if raw is None:
        if blank:
            raise doc.error(element, "%s: a blank disk needs ovf:capacity" % label)
        doc.warn(element, "%s has no ovf:capacity; the image's virtual size is used" % label)
        return 0
    reference = _PROPERTY_REF.fullmatch(raw)
    if reference:
        key = reference.group(1)
        if key not in properties:
            raise DescriptorError("%s: %r names no ProductSection property" % (field, raw))
        raw = properties[key]
        field += " (property %s)" % key
    count = units.parse_uint(raw, field, maximum=units.MAX_CAPACITY)
    unit_text = doc.attr(element, "capacityAllocationUnits")
    multiplier = 1 if unit_text is None else units.parse_allocation_units(
        unit_text, "%s: %s ovf:capacityAllocationUnits" % (doc.where(element), label))
    capacity = count * multiplier
    if capacity > units.MAX_CAPACITY:
        raise DescriptorError("%s: %d bytes is more than the limit of %d"
                              % (field, capacity, units.MAX_CAPACITY))
    return capacity


def _ganeti_sections(doc: Doc, root: etree._Element) -> Dict[Optional[etree._Element],
                                                             GanetiData]:
    """Ganeti sections by the VirtualSystem holding them (None: the envelope)."""
    found: Dict[Optional[etree._Element], GanetiData] = {}
    for section in root.iter("{%s}%s" % (versions.GANETI_NS, SECTION)):
        owner = next((a for a in section.iterancestors() if kind(a) == "VirtualSystem"),
                     None)
        if owner in found:
            doc.warn(section, "a second Ganeti section for the same scope is ignored")
            continue
        found[owner] = read_ganeti_section(doc, section)
    return found


def _read_system(doc: Doc, element: etree._Element, index: int, profile: Optional[str],
                 disks: Dict[str, model.Disk], files: Dict[str, model.FileRef],
                 ganeti: Optional[GanetiData],
                 interfaces: devices.Interfaces) -> model.VirtualSystem:
    name = doc.child_value(element, "Name")
    system_id = doc.attr_value(element, "id")
    if system_id is None:
        system_id = name or "system%d" % (index + 1)
        doc.warn(element, "VirtualSystem without ovf:id; calling it %s" % system_id)
    os_id = os_description = None
    os_section = child(element, "OperatingSystemSection")
    if os_section is not None:
        os_id = _os_id(doc, os_section)
        os_description = doc.child_value(os_section, "Description", collapse=True)
    section = _hardware_section(doc, element)
    family = None
    if section is not None:
        system_settings = child(section, "System")
        if system_settings is not None:
            family = doc.child_value(system_settings, "VirtualSystemType")
    found = hardware.read_hardware(doc, section, profile, disks, files)
    nics = _add_vbox_macs(doc, element, found.nics)
    found_devices = devices.read_devices(doc, element, section, found.items, found.disks,
                                         found.disk_items, interfaces)
    disk_list = found_devices.disks
    settings = None
    if ganeti is not None:
        settings = ganeti.settings
        nics = apply_to_nics(doc, nics, ganeti.nics, element)
        disk_list = _name_disks(doc, element, disk_list, ganeti)
        if len(nics) > units.MAX_DEVICES:
            raise doc.error(element, "%d NICs, more than the limit of %d"
                            % (len(nics), units.MAX_DEVICES))
    return model.VirtualSystem(
        system_id=system_id, name=name or doc.attr_value(element, "id"),
        os_id=os_id, os_description=os_description, vcpus=found.vcpus,
        memory_mib=found.memory_mib, hardware_family=family, disks=tuple(disk_list),
        nics=tuple(nics), ganeti=settings, vmware_os_type=found_devices.vmware_os_type,
        cores_per_socket=found_devices.cores_per_socket, firmware=found_devices.firmware)


def _os_id(doc: Doc, section: etree._Element) -> Optional[int]:
    """The CIM OS id; an unusable one (real exports write -1) means "unknown"."""
    raw = doc.attr(section, "id")
    if raw is None:
        return None
    try:
        return units.parse_uint(raw, "OperatingSystemSection ovf:id", maximum=MAX_OS_ID)
    except DescriptorError:
        doc.warn(section, "OperatingSystemSection ovf:id %r is not a CIM OS id; the OS is"
                 " unknown" % raw[:40])
        return None


def _hardware_section(doc: Doc, system: etree._Element) -> Optional[etree._Element]:
    sections = children(system, "VirtualHardwareSection")
    with_items = [s for s in sections if children(s, *versions.ITEM_ELEMENTS)]
    if len(with_items) > 1:
        doc.warn(with_items[1], "%d VirtualHardwareSections; only the first is read"
                 % len(with_items))
    if with_items:
        return with_items[0]
    return sections[0] if sections else None


def _add_vbox_macs(doc: Doc, system: etree._Element,
                   nics: List[model.Nic]) -> List[model.Nic]:
    macs = hardware.vbox_macs(doc, system)
    result = []
    for index, nic in enumerate(nics):
        if nic.mac is None and index < len(macs) and macs[index]:
            nic = dataclasses.replace(nic, mac=macs[index])
        result.append(nic)
    return result


def _name_disks(doc: Doc, system: etree._Element, disks: List[model.Disk],
                ganeti: GanetiData) -> List[model.Disk]:
    names: Dict[int, str] = {}
    for position, (disk_id, name) in enumerate(ganeti.disk_names):
        if disk_id is None:
            index = position
        else:
            index = next((i for i, d in enumerate(disks) if d.disk_id == disk_id), -1)
        if not 0 <= index < len(disks):
            doc.warn(system, "Ganeti section names disk %s, which is not imported"
                     % (disk_id or "#%d" % position))
            continue
        names[index] = name
    return [dataclasses.replace(disk, name=names.get(i, disk.name))
            for i, disk in enumerate(disks)]
