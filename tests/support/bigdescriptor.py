"""Large descriptors of one shape each: what a hostile package uses to make
the reader slow, and what tests and `make bench` measure it with.

Each shape repeats one construct `count` times in an otherwise valid OVF 1.0
envelope with a known answer (see `SHAPES`), each repetition padded with
`pad` filler bytes where the shape has a value to pad; `largest` is the
count the reader's limits still accept, and `sized` makes a descriptor of
about a given size.  Values follow the index so tests can check what was
read: parameter `p7` is `v7` (then the padding), system `vm7` has
7 % 8 + 1 CPUs, profile `c7` selects 7 % 8 + 1 CPUs, disk `d7` is 8 bytes.
"""

from typing import Callable, Dict, Iterator, Optional

from ganeti_ovf.descriptor import ganeti_section, reader, xmlsafe

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
NAMESPACES = (
    'xmlns="%s" xmlns:ovf="%s"'
    ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_ResourceAllocationSettingData"'
    ' xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_VirtualSystemSettingData"'
    ' xmlns:gnt="http://ganeti"' % (OVF1, OVF1))
DEPTH = 60  # nesting shape: a little under the reader's depth limit
FILL = "x"


def vcpus(index: int) -> int:
    """The CPU count of system `vm<index>` and of profile `c<index>`."""
    return index % 8 + 1


def _item(rtype: int, instance: str, body: str = "", attrs: str = "") -> str:
    return ("<Item%s>%s<rasd:InstanceID>%s</rasd:InstanceID>"
            "<rasd:ResourceType>%d</rasd:ResourceType></Item>" % (attrs, body, instance, rtype))


def _cpu(instance: str, count: int, attrs: str = "") -> str:
    return _item(3, instance, "<rasd:VirtualQuantity>%d</rasd:VirtualQuantity>" % count, attrs)


MEMORY = _item(4, "2", "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
               "<rasd:VirtualQuantity>512</rasd:VirtualQuantity>")


def _system(system_id: str, hardware: str, extra: str = "", info_attrs: str = "",
            info: str = "a VM") -> str:
    return ('<VirtualSystem ovf:id="%s"><Info%s>%s</Info><Name>%s</Name>'
            "<VirtualHardwareSection><Info>hw</Info>%s</VirtualHardwareSection>%s"
            "</VirtualSystem>" % (system_id, info_attrs, info, system_id, hardware, extra))


def _envelope(*parts: str, root_attrs: str = "") -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Envelope %s%s>%s</Envelope>\n'
            % (NAMESPACES, root_attrs, "".join(parts))).encode("utf-8")


def _parameters(kind: str, indexes: Iterator[int], pad: int) -> str:
    return "<gnt:%s>%s<gnt:Parameters>%s</gnt:Parameters></gnt:%s>" % (
        kind, "<gnt:Name>kvm</gnt:Name>" if kind != "Backend" else "",
        "".join("<gnt:p%d>v%d%s</gnt:p%d>" % (i, i, FILL * pad, i) for i in indexes), kind)


def ganeti_params(count: int, pad: int = 0) -> bytes:
    """One system whose Ganeti section has `count` parameters: hypervisor
    p0, p3, ..., OS p1, p4, ..., backend p2, p5, ..."""
    section = "<gnt:GanetiSection><Info>Ganeti</Info>%s%s%s</gnt:GanetiSection>" % (
        _parameters("Hypervisor", iter(range(0, count, 3)), pad),
        _parameters("OperatingSystem", iter(range(1, count, 3)), pad),
        _parameters("Backend", iter(range(2, count, 3)), pad))
    return _envelope(_system("vm0", _cpu("1", 1) + MEMORY, section))


def systems(count: int, pad: int = 0) -> bytes:
    """`count` VirtualSystems vm0... in one VirtualSystemCollection."""
    return _envelope('<VirtualSystemCollection ovf:id="vapp"><Info>vApp</Info>%s'
                     "</VirtualSystemCollection>" % "".join(
                         _system("vm%d" % i, _cpu("1", vcpus(i)), info=FILL * pad)
                         for i in range(count)))


def profiles(count: int, pad: int = 0) -> bytes:
    """`count` deployment profiles c0... (c0 the default), one CPU item per
    profile, and a memory item listing every profile in ovf:configuration."""
    options = "".join('<Configuration ovf:id="c%d"%s><Label>c%d</Label>'
                      "<Description>profile %d%s</Description></Configuration>"
                      % (i, ' ovf:default="true"' if i == 0 else "", i, i, FILL * pad)
                      for i in range(count))
    items = "".join(_cpu("1", vcpus(i), ' ovf:configuration="c%d"' % i) for i in range(count))
    every = ' ovf:configuration="%s"' % " ".join("c%d" % i for i in range(count))
    memory = MEMORY.replace("<Item>", "<Item%s>" % every, 1)
    return _envelope("<DeploymentOptionSection><Info>profiles</Info>%s"
                     "</DeploymentOptionSection>" % options,
                     _system("vm0", items + memory))


def attributes(count: int, pad: int = 0) -> bytes:
    """One element (the system's Info) with `count` attributes a0="v0"..."""
    attrs = "".join(' a%d="v%d%s"' % (i, i, FILL * pad) for i in range(count))
    return _envelope(_system("vm0", _cpu("1", 1) + MEMORY, info_attrs=attrs))


def items(count: int, pad: int = 0) -> bytes:
    """One system with CPU, memory and `count` more items: serial ports
    (skipped), IDE controllers and items of an unknown ResourceType, in turn."""
    kinds = (21, 5, 1)
    extra = "".join(_item(kinds[i % 3], "x%d%s" % (i, FILL * pad)) for i in range(count))
    return _envelope(_system("vm0", _cpu("1", 1) + MEMORY + extra))


def disks(count: int, pad: int = 0) -> bytes:
    """`count` Files and Disks; the one system's only disk item names d0."""
    files = "".join('<File ovf:id="f%d" ovf:href="disk%d%s.vmdk"/>' % (i, i, FILL * pad)
                    for i in range(count))
    declared = "".join('<Disk ovf:diskId="d%d" ovf:fileRef="f%d" ovf:capacity="%d"/>'
                       % (i, i, i + 1) for i in range(count))
    disk = _item(17, "3", "<rasd:HostResource>ovf:/disk/d0</rasd:HostResource>")
    return _envelope("<References>%s</References>" % files,
                     "<DiskSection><Info>disks</Info>%s</DiskSection>" % declared,
                     _system("vm0", _cpu("1", 1) + MEMORY + disk))


def nesting(count: int, pad: int = 0) -> bytes:
    """`count` chains of elements nested DEPTH deep in an unknown section."""
    chain = "<n>" * DEPTH + FILL * pad + "</n>" * DEPTH
    return _envelope(_system("vm0", _cpu("1", 1) + MEMORY,
                             '<AnnotationSection ovf:required="false"><Info>notes</Info>'
                             "%s</AnnotationSection>" % (chain * count)))


def namespaces(count: int, pad: int = 0) -> bytes:
    """`count` elements in the system, each declaring its own namespace."""
    extra = "\n".join('<x%d:Note xmlns:x%d="urn:note:%d%s"/>' % (i, i, i, FILL * pad)
                    for i in range(count))
    return _envelope(_system("vm0", _cpu("1", 1) + MEMORY, extra))


SHAPES: Dict[str, Callable[..., bytes]] = {
    "ganeti-params": ganeti_params,
    "systems": systems,
    "profiles": profiles,
    "attributes": attributes,
    "items": items,
    "disks": disks,
    "nesting": nesting,
    "namespaces": namespaces,
}


# Filler per repetition at most: padded values stay under the reader's
# MAX_VALUE_LENGTH where it reads them.
MAX_PAD = 4000


def largest(shape: str) -> int:
    """The largest count of `shape` that the reader's limits accept."""
    elements = xmlsafe.MAX_ELEMENTS - 50  # the envelope around the repetitions
    return {
        "ganeti-params": 3 * ganeti_section.MAX_PARAMETERS,
        "systems": reader.MAX_SYSTEMS,
        "profiles": reader.MAX_PROFILES,
        "attributes": xmlsafe.MAX_ATTRIBUTES,
        "items": elements // 3,
        "disks": reader.MAX_FILES,
        "nesting": elements // DEPTH,
        "namespaces": xmlsafe.MAX_NAMESPACE_DECLARATIONS - NAMESPACES.count("xmlns"),
    }[shape]


def sized(shape: str, size: int, count: Optional[int] = None) -> bytes:
    """A descriptor of `shape` of about `size` bytes: `count` repetitions
    padded up to it (at most MAX_PAD each), or as many as it takes."""
    build = SHAPES[shape]
    base = len(build(0))
    if count is not None:
        step = len(build(1)) - base
        return build(count, min(MAX_PAD, max(0, (size - base) // max(count, 1) - step)))
    step = (len(build(1000)) - base) / 1000
    return build(max(0, int((size - base) / step)))
