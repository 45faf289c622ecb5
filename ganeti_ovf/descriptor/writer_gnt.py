"""The writer's Ganeti section: what only Ganeti knows, as gnt: elements.

Layout (namespace versions.GANETI_NS, every element optional, omitted when
its value is None; the reader accepts exactly this):

    <gnt:GanetiSection ovf:required="false">
      <ovf:Info>...</ovf:Info>              informative, for tools that list sections
      <gnt:Version>, <gnt:DiskTemplate>, <gnt:AutoBalance> (backend auto_balance)
      <gnt:Tags>a,b,c</gnt:Tags>
      <gnt:OperatingSystem> <gnt:Name/> <gnt:Parameters>PARAMS</gnt:Parameters>
      <gnt:Hypervisor> <gnt:Name/> <gnt:Parameters>PARAMS</gnt:Parameters>
      <gnt:Backend> <gnt:Parameters>PARAMS</gnt:Parameters>
      <gnt:Network> one <gnt:Nic ovf:name="NETWORK"> per NIC, in hardware order:
          gnt:Mode, gnt:MACAddress, gnt:IPAddress, gnt:Link, gnt:Net, gnt:Vlan, gnt:Name
      <gnt:Disks> one <gnt:Disk ovf:diskId="ID"> per disk, in order: gnt:Name

PARAMS: one element per parameter, `<gnt:NAME>VALUE</gnt:NAME>`, when NAME is
an ASCII XML name (letter or "_" first, then letters, digits, "_", "-", ".")
that does not start with "xml" and is not "Parameter"; any other name is
written `<gnt:Parameter gnt:name="NAME">VALUE</gnt:Parameter>`.  An empty
value is an empty element.  OS private parameters are never written: they
are secrets, and a package is meant to be handed around.

The section sits in VirtualHardwareSection's xs:any ##other slot (see
writer.py); ovf:required="false" tells other importers they may ignore it.
"""

import re
from typing import List, Sequence

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.writer_text import add, check_text
from ganeti_ovf.errors import DescriptorError

GENERIC_PARAMETER = "Parameter"
_ELEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def gnt(name: str) -> str:
    return "{%s}%s" % (versions.GANETI_NS, name)


def element_name_for(param: str) -> bool:
    """Whether parameter `param` can be written as an element of its own name."""
    return (bool(_ELEMENT_NAME.match(param)) and not param.lower().startswith("xml")
            and param != GENERIC_PARAMETER)


def build_ganeti_section(system: model.VirtualSystem, networks: Sequence[str],
                         ovf_ns: str) -> etree._Element:
    """The gnt:GanetiSection of `system`; `networks` are its NICs' OVF networks."""
    settings = system.ganeti
    if settings is None:
        raise DescriptorError("virtual system %r has no Ganeti settings" % system.system_id)
    section = etree.Element(gnt("GanetiSection"))
    section.set("{%s}required" % ovf_ns, "false")
    add(section, "{%s}Info" % ovf_ns, "Ganeti instance settings", "Ganeti Info")
    _optional(section, "Version", settings.version)
    _optional(section, "DiskTemplate", settings.disk_template)
    _optional(section, "AutoBalance", dict(settings.backend_params).get("auto_balance"))
    if settings.tags:
        section.append(_tags(settings.tags))
    if settings.os_name is not None or settings.os_params:
        _named_params(section, "OperatingSystem", settings.os_name, settings.os_params)
    if settings.hypervisor is not None or settings.hypervisor_params:
        _named_params(section, "Hypervisor", settings.hypervisor, settings.hypervisor_params)
    if settings.backend_params:
        backend = etree.SubElement(section, gnt("Backend"))
        _params(backend, settings.backend_params, "backend")
    if system.nics:
        network = etree.SubElement(section, gnt("Network"))
        for index, (nic, name) in enumerate(zip(system.nics, networks, strict=True)):
            _nic(network, nic, name, index, ovf_ns)
    if system.disks:
        disks = etree.SubElement(section, gnt("Disks"))
        for disk in system.disks:
            element = etree.SubElement(disks, gnt("Disk"))
            element.set("{%s}diskId" % ovf_ns, disk.disk_id)
            _optional(element, "Name", disk.name, "disk %r name" % disk.disk_id)
    return section


def _optional(parent: etree._Element, name: str, value: object,
              field: str = "") -> None:
    if value is not None:
        add(parent, gnt(name), value, field or "Ganeti %s" % name, allow_empty=True)


def _tags(tags: Sequence[str]) -> etree._Element:
    for tag in tags:
        check_text(tag, "Ganeti tag")
        # Tags are joined with commas; Ganeti's tag syntax has none.
        if "," in tag:
            raise DescriptorError("Ganeti tag %r contains a comma, which the Tags"
                                  " element cannot carry" % tag)
    element = etree.Element(gnt("Tags"))
    element.text = ",".join(tags)
    return element


def _named_params(parent: etree._Element, kind: str, name: object,
                  params: model.Params) -> None:
    element = etree.SubElement(parent, gnt(kind))
    _optional(element, "Name", name, "Ganeti %s name" % kind)
    if params:
        _params(element, params, kind)


def _params(parent: etree._Element, params: model.Params, kind: str) -> None:
    element = etree.SubElement(parent, gnt("Parameters"))
    seen: List[str] = []
    for pair in params:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise DescriptorError("Ganeti %s parameters: %r is not a (name, value) pair"
                                  % (kind, pair))
        name, value = pair
        check_text(name, "Ganeti %s parameter name" % kind)
        if name in seen:
            raise DescriptorError("Ganeti %s parameter %r is given twice" % (kind, name))
        seen.append(name)
        if value is None:
            continue
        field = "Ganeti %s parameter %r" % (kind, name)
        if element_name_for(name):
            add(element, gnt(name), value, field, allow_empty=True)
        else:
            child = add(element, gnt(GENERIC_PARAMETER), value, field, allow_empty=True)
            child.set(gnt("name"), name)


def _nic(parent: etree._Element, nic: model.Nic, network: str, index: int,
         ovf_ns: str) -> None:
    element = etree.SubElement(parent, gnt("Nic"))
    element.set("{%s}name" % ovf_ns, network)
    field = "Ganeti nic %d " % index
    _optional(element, "Mode", nic.mode, field + "mode")
    _optional(element, "MACAddress", nic.mac, field + "MAC")
    _optional(element, "IPAddress", nic.ip, field + "IP")
    _optional(element, "Link", nic.link, field + "link")
    _optional(element, "Net", nic.ganeti_network, field + "network")
    _optional(element, "Vlan", nic.vlan, field + "vlan")
    _optional(element, "Name", nic.name, field + "name")
