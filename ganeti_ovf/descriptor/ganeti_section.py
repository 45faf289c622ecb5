"""Reading the Ganeti section (namespace http://ganeti): what only Ganeti knows.

Ganeti's old converter put it under Envelope (where the DMTF schema does not
allow it); our writer (writer_gnt.py) puts it inside the VirtualSystem.  Both
are read the same: Version, DiskTemplate, AutoBalance, Tags,
OperatingSystem/{Name, Parameters}, Hypervisor/{Name, Parameters},
Backend/Parameters, Network/Nic and Disks/Disk/Name.  A parameter is an
element named after it, or `<gnt:Parameter gnt:name="NAME">` for names that
are no XML names; names are kept as written.  Unknown elements are skipped
with a warning; OS private parameters are never imported.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from lxml import etree

from ganeti_ovf import model
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.hardware import normalize_mac
from ganeti_ovf.descriptor.xmltree import Doc, child, children, local_name

SECTION = "GanetiSection"
GENERIC_PARAMETER = "Parameter"
# Values Ganeti writes for "not set".
_UNSET = ("", "none", "auto")
# Parameter names become config.ini keys: no delimiters (=, :), no blanks.
_PARAM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# Parameters of one kind (hypervisor, OS, backend): Ganeti 3.0 knows about
# 80 hypervisor parameters of all hypervisors together and a dozen backend ones.
MAX_PARAMETERS = 256
_KNOWN = ("Info", "Version", "DiskTemplate", "AutoBalance", "Tags", "OperatingSystem",
          "Hypervisor", "Backend", "Network", "Disks")


@dataclass
class GanetiNic:
    """One gnt:Nic: applied to the hardware NIC of the same position."""

    mode: Optional[str] = None
    mac: Optional[str] = None
    ip: Optional[str] = None
    link: Optional[str] = None
    network: Optional[str] = None
    vlan: Optional[str] = None
    name: Optional[str] = None


@dataclass
class GanetiData:
    settings: model.GanetiSettings
    nics: List[GanetiNic] = field(default_factory=list)
    # (ovf:diskId or None, name): matched by id if given, else by position.
    disk_names: List[Tuple[Optional[str], str]] = field(default_factory=list)


def read_ganeti_section(doc: Doc, section: etree._Element) -> GanetiData:
    for element in section:
        if local_name(element) not in _KNOWN:
            doc.warn(element, "Ganeti section: unknown element %s skipped"
                     % local_name(element))
    os_element = child(section, "OperatingSystem")
    hv_element = child(section, "Hypervisor")
    backend = _named_params(doc, child(section, "Backend"), "Backend")
    balance = doc.child_value(section, "AutoBalance")
    if balance is not None and balance.lower() not in _UNSET:
        if balance.lower() not in ("true", "false"):
            raise doc.error(section, "Ganeti section AutoBalance: %r is not True or False"
                            % balance)
        # Our writer also lists it among the backend parameters; those win.
        if "auto_balance" not in dict(backend):
            backend += (("auto_balance", balance.capitalize()),)
    if os_element is not None and child(os_element, "PrivateParameters") is not None:
        doc.warn(os_element, "Ganeti section: OS private parameters are not imported")
    settings = model.GanetiSettings(
        version=doc.child_value(section, "Version"),
        disk_template=doc.child_value(section, "DiskTemplate"),
        hypervisor=doc.child_value(hv_element, "Name") if hv_element is not None else None,
        hypervisor_params=_named_params(doc, hv_element, "Hypervisor"),
        os_name=doc.child_value(os_element, "Name") if os_element is not None else None,
        os_params=_named_params(doc, os_element, "OperatingSystem"),
        backend_params=backend,
        tags=_tags(doc.child_value(section, "Tags")),
    )
    return GanetiData(settings=settings, nics=_nics(doc, child(section, "Network")),
                      disk_names=_disk_names(doc, child(section, "Disks")))


def _tags(text: Optional[str]) -> Tuple[str, ...]:
    return tuple(tag for tag in re.split(r"[,\s]+", text or "") if tag)


def _named_params(doc: Doc, element: Optional[etree._Element], what: str) -> model.Params:
    if element is None:
        return ()
    parameters = child(element, "Parameters")
    if parameters is None:
        return ()
    result: List[Tuple[str, str]] = []
    names = set()
    for param in parameters:
        if len(result) == MAX_PARAMETERS:
            raise doc.error(param, "Ganeti section %s: more than %d parameters"
                            % (what, MAX_PARAMETERS))
        name = local_name(param)
        if name == GENERIC_PARAMETER:
            name = param.get("{%s}name" % versions.GANETI_NS) or param.get("name") or ""
        if not _PARAM_NAME.fullmatch(name):
            raise doc.error(param, "Ganeti section %s parameter name %r is refused"
                            % (what, name[:60]))
        if name in names:
            raise doc.error(param, "Ganeti section %s parameter %s is given twice"
                            % (what, name))
        names.add(name)
        result.append((name, doc.value(param, "%s parameter %s" % (what, name)) or ""))
    return tuple(result)


def _unset(value: Optional[str]) -> Optional[str]:
    return None if value is None or value.lower() in _UNSET else value


def _nics(doc: Doc, network: Optional[etree._Element]) -> List[GanetiNic]:
    if network is None:
        return []
    nics = []
    for element in network:
        if local_name(element) != "Nic":
            doc.warn(element, "Ganeti section: Network/%s is not a Nic; skipped"
                     % local_name(element))
            continue
        raw_mac = _unset(doc.child_value(element, "MACAddress"))
        mac = normalize_mac(raw_mac)
        if raw_mac is not None and mac is None:
            doc.warn(element, "Ganeti section: invalid MAC address %r dropped" % raw_mac)
        nics.append(GanetiNic(
            mode=_unset(doc.child_value(element, "Mode")), mac=mac,
            ip=_unset(doc.child_value(element, "IPAddress")),
            link=_unset(doc.child_value(element, "Link")),
            network=_unset(doc.child_value(element, "Net")),
            vlan=_unset(doc.child_value(element, "Vlan")),
            name=_unset(doc.child_value(element, "Name"))))
    return nics


def _disk_names(doc: Doc, disks: Optional[etree._Element]) -> List[Tuple[Optional[str], str]]:
    if disks is None:
        return []
    names = []
    for element in children(disks, "Disk"):
        name = doc.child_value(element, "Name")
        if name is not None:
            names.append((doc.attr_value(element, "diskId"), name))
    return names


def apply_to_nics(doc: Doc, nics: List[model.Nic], ganeti: List[GanetiNic],
                  where: etree._Element) -> List[model.Nic]:
    """Hardware NICs with the Ganeti section's settings, matched by position.

    The Ganeti section wins where it says something; Ganeti NICs beyond the
    hardware ones become NICs of their own.
    """
    if nics and ganeti and len(nics) != len(ganeti):
        doc.warn(where, "Ganeti section lists %d NICs, the hardware %d; matched by position"
                 % (len(ganeti), len(nics)))
    result = []
    for index in range(max(len(nics), len(ganeti))):
        nic = nics[index] if index < len(nics) else model.Nic()
        if index < len(ganeti):
            extra = ganeti[index]
            nic = dataclasses.replace(nic, mac=extra.mac or nic.mac,
                                      mode=extra.mode or nic.mode, link=extra.link,
                                      ip=extra.ip, ganeti_network=extra.network,
                                      vlan=extra.vlan, name=extra.name)
        result.append(nic)
    return result
