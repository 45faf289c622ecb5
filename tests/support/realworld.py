"""Descriptors and packages in the shape real exports have, written at test time.

Each builder reproduces one pattern of issue 12 as the tool that makes it
writes it (element order, namespaces, units, names), with values chosen so
tests can assert them:

- `vcenter_appliance`: a vCenter Server Appliance OVF (deployment profiles,
  several disk Items naming one DiskSection disk, a disk Item sized only by
  its VirtualQuantity, profile-specific items replacing generic ones).
- `ovftool_package`: an OVF folder or OVA whose disks sit in a `disks/`
  sub-folder, one of them named `sun..vhw-disk2.img`.
- `suse_descriptor`: SUSE's export with an Envelope in no namespace at all.
- `vapp`: a vSphere vApp of two virtual systems in a VirtualSystemCollection,
  declaring a namespace URI with a space, a negative OS id and a bogus
  ovf:size, as real vApp exports do.
"""

import hashlib
import os
import tarfile

from packaging import MIB, convert, make_raw

GIB = 1 << 30
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
NAMESPACES = (
    'xmlns="http://schemas.dmtf.org/ovf/envelope/1"'
    ' xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common"'
    ' xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'
    ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_ResourceAllocationSettingData"'
    ' xmlns:vmw="http://www.vmware.com/schema/ovf"'
    ' xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
    'CIM_VirtualSystemSettingData"'
    ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
STREAM_OPTIMIZED = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def _item(rtype, instance, *fields, configuration=None):
    attrs = ' ovf:configuration="%s"' % configuration if configuration else ""
    body = "".join("\n        <rasd:%s>%s</rasd:%s>" % (name, value, name)
                   for name, value in fields)
    return ("      <Item%s>%s\n        <rasd:InstanceID>%s</rasd:InstanceID>"
            "\n        <rasd:ResourceType>%d</rasd:ResourceType>\n      </Item>"
            % (attrs, body, instance, rtype))


def _cpu(instance, count, configuration=None):
    return _item(3, instance, ("AllocationUnits", "hertz * 10^6"),
                 ("Description", "Number of Virtual CPUs"),
                 ("ElementName", "%d virtual CPU(s)" % count),
                 ("VirtualQuantity", count), configuration=configuration)


def _memory(instance, mib, configuration=None):
    return _item(4, instance, ("AllocationUnits", "byte * 2^20"),
                 ("Description", "Memory Size"), ("ElementName", "%dMB of memory" % mib),
                 ("VirtualQuantity", mib), configuration=configuration)


def _disk(instance, host, slot, parent="3", configuration=None):
    return _item(17, instance, ("AddressOnParent", slot),
                 ("ElementName", "Hard disk %d" % (slot + 1)),
                 ("HostResource", host), ("Parent", parent), configuration=configuration)


def _nic(instance, network, model="VmxNet3"):
    return _item(10, instance, ("AddressOnParent", 7),
                 ("AutomaticAllocation", "true"), ("Connection", network),
                 ("ElementName", "Network adapter 1"), ("ResourceSubType", model))


def _envelope(build, files, disks, network, content):
    """A vSphere export's envelope: References, DiskSection, NetworkSection."""
    return ("""<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-%s" %s>
  <References>
%s
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
%s
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="%s"><Description>The %s network</Description></Network>
  </NetworkSection>
%s
</Envelope>
""" % (build, NAMESPACES, files, disks, network, network, content)).encode("utf-8")


def _system(system_id, name, os_id, os_type, family, items):
    """A vSphere export's VirtualSystem with one VirtualHardwareSection."""
    return """  <VirtualSystem ovf:id="%s">
    <Info>A virtual machine</Info>
    <Name>%s</Name>
    <OperatingSystemSection ovf:id="%s" vmw:osType="%s">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>%s</vssd:VirtualSystemType>
      </System>
%s
    </VirtualHardwareSection>
  </VirtualSystem>""" % (system_id, name, os_id, os_type, system_id, family, "\n".join(items))


# --- vCenter Server Appliance ------------------------------------------------

# The storage disks each profile attaches after the three system disks
# (the tiny profile names disk25GB and disk10GB several times), and the size
# of the last disk, which only its own VirtualQuantity gives.
VCENTER_SYSTEM_GIB = (48, 6, 25)
VCENTER_STORAGE = {
    "tiny": ("disk10GB", "disk25GB", "disk25GB", "disk10GB", "disk10GB", "disk25GB",
             "disk10GB", "disk10GB", "disk25GB", "disk10GB", "disk10GB"),
    "small": ("disk25GB", "disk50GB", "disk50GB", "disk25GB", "disk25GB", "disk50GB",
              "disk25GB", "disk25GB", "disk50GB", "disk25GB", "disk25GB"),
}
VCENTER_SIZED_GIB = {"tiny": 15, "small": 30}
VCENTER_CPUS = {"tiny": 2, "small": 4}
VCENTER_MEMORY_MIB = {"tiny": 14336, "small": 21504}
_BLANK_GIB = {"disk10GB": 10, "disk25GB": 25, "disk50GB": 50}


def vcenter_capacities(profile):
    """The disk capacities, in order, that the profile's 15 disks have."""
    return [gib * GIB for gib in VCENTER_SYSTEM_GIB] + \
        [_BLANK_GIB[disk] * GIB for disk in VCENTER_STORAGE[profile]] + \
        [VCENTER_SIZED_GIB[profile] * GIB]


def vcenter_appliance():
    files = "\n".join(
        '    <File ovf:href="VMware-vCenter-Server-Appliance-9.1.0.0-disk%d.vmdk"'
        ' ovf:id="file%d" ovf:size="%d"/>' % (n, n, 1000000 + n) for n in (1, 2, 3))
    disks = "\n".join(
        '    <Disk ovf:capacity="%d" ovf:capacityAllocationUnits="byte * 2^30"'
        ' ovf:diskId="disk%d" ovf:fileRef="file%d" ovf:format="%s"'
        ' ovf:populatedSize="%d"/>' % (gib, n, n, STREAM_OPTIMIZED, gib << 28)
        for n, gib in zip((1, 2, 3), VCENTER_SYSTEM_GIB, strict=True))
    disks += "".join(
        '\n    <Disk ovf:capacity="%d" ovf:capacityAllocationUnits="byte * 2^30"'
        ' ovf:diskId="%s" ovf:format="%s"/>' % (gib, disk_id, STREAM_OPTIMIZED)
        for disk_id, gib in sorted(_BLANK_GIB.items()))
    items = []
    for profile in ("tiny", "small"):
        items.append(_cpu(1, VCENTER_CPUS[profile], profile))
        items.append(_memory(2, VCENTER_MEMORY_MIB[profile], profile))
    items.append(_item(6, 3, ("Description", "SCSI Controller"),
                       ("ElementName", "SCSI controller 0"),
                       ("ResourceSubType", "lsilogic")))
    for slot in range(3):
        items.append(_disk(4 + slot, "ovf:/disk/disk%d" % (slot + 1), slot))
    for profile, storage in sorted(VCENTER_STORAGE.items()):
        for offset, disk_id in enumerate(storage):
            items.append(_disk(10 + offset, "ovf:/disk/" + disk_id, 3 + offset,
                               configuration=profile))
        # No HostResource: a blank disk of the item's own size.
        items.append(_item(17, 30, ("AddressOnParent", 14),
                           ("AllocationUnits", "byte * 2^30"),
                           ("ElementName", "Hard disk 15"), ("Parent", 3),
                           ("VirtualQuantity", VCENTER_SIZED_GIB[profile]),
                           configuration=profile))
    items.append(_nic(40, "Network 1"))
    profiles = """  <DeploymentOptionSection>
    <Info>List of profiles</Info>
    <Configuration ovf:default="true" ovf:id="tiny">
      <Label>Tiny vCenter Server with Embedded PSC</Label>
      <Description>This will deploy a Tiny VM configuration.</Description>
    </Configuration>
    <Configuration ovf:id="small">
      <Label>Small vCenter Server with Embedded PSC</Label>
      <Description>This will deploy a Small VM configuration.</Description>
    </Configuration>
  </DeploymentOptionSection>
"""
    return _envelope("24322831", files, disks, "Network 1", profiles + _system(
        "VMware-vCenter-Server-Appliance", "VMware-vCenter-Server-Appliance", 100,
        "other4xLinux64Guest", "vmx-10", items))


# --- ovftool-style package with a disks/ folder ------------------------------

OVFTOOL_DISKS = (("disks/disk1.vmdk", 24 * MIB), ("disks/sun..vhw-disk2.img", 8 * MIB))


def ovftool_descriptor(hrefs=tuple(href for href, _ in OVFTOOL_DISKS),
                       sizes=tuple(size for _, size in OVFTOOL_DISKS)):
    files = "\n".join('    <File ovf:href="%s" ovf:id="file%d"/>' % (href, n)
                      for n, href in enumerate(hrefs, 1))
    formats = [STREAM_OPTIMIZED if href.endswith(".vmdk")
               else "http://en.wikipedia.org/wiki/Byte" for href in hrefs]
    disks = "\n".join(
        '    <Disk ovf:capacity="%d" ovf:capacityAllocationUnits="byte * 2^20"'
        ' ovf:diskId="vmdisk%d" ovf:fileRef="file%d" ovf:format="%s"/>'
        % (size // MIB, n, n, fmt)
        for n, (size, fmt) in enumerate(zip(sizes, formats, strict=True), 1))
    items = [_cpu(1, 1), _memory(2, 256),
             _item(6, 3, ("ElementName", "SCSI controller 0"),
                   ("ResourceSubType", "lsilogic"))]
    items += [_disk(4 + n, "ovf:/disk/vmdisk%d" % (n + 1), n) for n in range(len(hrefs))]
    items.append(_nic(9, "VM Network", "E1000"))
    return _envelope("12345", files, disks, "VM Network",
                     _system("ttylinux", "ttylinux.example.com", 36, "otherLinuxGuest",
                             "vmx-07", items))


def write_disk_files(workdir, folder, disks, seed=0):
    """Images for (href, size) pairs under `folder`; returns {href: raw source}."""
    sources = {}
    for index, (href, size) in enumerate(disks):
        raw = make_raw(os.path.join(workdir, "src-%d-%d.raw" % (seed, index)), size,
                       seed=seed * 10 + index)
        target = os.path.join(folder, href)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if href.endswith(".vmdk"):
            convert(raw, target, "vmdk", "subformat=streamOptimized")
        else:
            convert(raw, target, "raw")
        sources[href] = raw
    return sources


def write_manifest(folder, name, members):
    lines = []
    for member in members:
        with open(os.path.join(folder, member), "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        lines.append("SHA256(%s)= %s\n" % (member, digest))
    with open(os.path.join(folder, name), "w") as handle:
        handle.writelines(lines)


def package(workdir, descriptor, disks, name="appliance", ova=False, seed=0):
    """An OVF folder (or OVA) of `descriptor` and (href, size) disks with a
    SHA256 manifest; returns (package path, {href: raw source})."""
    folder = os.path.join(workdir, "pkg")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".ovf"), "wb") as handle:
        handle.write(descriptor)
    sources = write_disk_files(workdir, folder, disks, seed)
    members = [name + ".ovf"] + [href for href, _ in disks]
    write_manifest(folder, name + ".mf", members)
    if not ova:
        return os.path.join(folder, name + ".ovf"), sources
    path = os.path.join(workdir, name + ".ova")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member in [name + ".ovf", name + ".mf"] + [href for href, _ in disks]:
            archive.add(os.path.join(folder, member), arcname=member)
    return path, sources


# --- SUSE: an Envelope in no namespace -----------------------------------------

def suse_descriptor(declare_prefixes=True):
    """SUSE's export: Envelope and sections unqualified; with
    `declare_prefixes` False, even the ovf:/rasd:/vssd: prefixes are used
    without a declaration."""
    declarations = (
        ' xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"'
        ' xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_ResourceAllocationSettingData"'
        ' xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
        'CIM_VirtualSystemSettingData"') if declare_prefixes else ""
    items = "\n".join([
        _cpu(1, 2), _memory(2, 2048),
        _item(5, 3, ("ElementName", "IDE Controller 0"), ("Address", 0)),
        _disk(4, "ovf:/disk/vmdisk1", 0),
        _item(10, 5, ("AutomaticAllocation", "true"), ("Connection", "bridged"),
              ("ElementName", "ethernet0"), ("ResourceSubType", "virtio"))])
    return ("""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0"%s>
  <References>
    <File ovf:href="SLES15-SP6-Minimal-VM.x86_64-kvm-and-xen.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="24" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1"
          ovf:fileRef="file1" ovf:format="%s"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks</Info>
    <Network ovf:name="bridged"><Description>bridged network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="SLES15-SP6-Minimal-VM">
    <Info>SUSE Linux Enterprise Server 15 SP6 Minimal</Info>
    <Name>sles15-minimal</Name>
    <OperatingSystemSection ovf:id="85">
      <Info>Guest operating system</Info>
      <Description>SUSE Linux Enterprise 15 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware of the appliance</Info>
      <System>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-11</vssd:VirtualSystemType>
      </System>
%s
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
""" % (declarations, STREAM_OPTIMIZED, items)).encode("utf-8")


# --- a vApp of two virtual systems ------------------------------------------------

VAPP_SYSTEMS = (("web", "web.example.com", "web-disk1.vmdk", 16 * MIB),
                ("db", "db.example.com", "db-disk1.vmdk", 12 * MIB))
# What vApp exports really declare (with a space): not a valid URI.
BROKEN_NAMESPACE = ("http://schemas.dmtf.org/wbem/wscim/1/cim2608 schema/2/"
                    "CIM_VirtualSystemSettingData")


def vapp_disks():
    return tuple((href, size) for _, _, href, size in VAPP_SYSTEMS)


def vapp(names=tuple(name for _, name, _, _ in VAPP_SYSTEMS)):
    files = "\n".join(
        '    <File ovf:href="%s" ovf:id="file-%s" ovf:size="%s"/>'
        % (href, system_id, "-1" if system_id == "db" else size)
        for system_id, _, href, size in VAPP_SYSTEMS)
    disks = "\n".join(
        '    <Disk ovf:capacity="%d" ovf:capacityAllocationUnits="byte * 2^20"'
        ' ovf:diskId="vmdisk-%s" ovf:fileRef="file-%s" ovf:format="%s"/>'
        % (size // MIB, system_id, system_id, STREAM_OPTIMIZED)
        for system_id, _, _, size in VAPP_SYSTEMS)
    systems = []
    for (system_id, _, _, _), name, os_id in zip(VAPP_SYSTEMS, names, ("96", "-1"),
                                                 strict=True):
        items = [_cpu(1, 1), _memory(2, 512 if system_id == "web" else 1024),
                 _item(6, 3, ("ElementName", "SCSI controller 0"),
                       ("ResourceSubType", "lsilogic")),
                 _disk(4, "ovf:/disk/vmdisk-" + system_id, 0),
                 _nic(5, "VM Network")]
        systems.append(_system(system_id, name, os_id, "otherGuest", "vmx-13", items))
    collection = """  <VirtualSystemCollection ovf:id="shop">
    <Info>A vApp</Info>
    <Name>shop</Name>
    <StartupSection>
      <Info>VM startup order</Info>
      <Item ovf:id="db" ovf:order="0" ovf:startAction="powerOn" ovf:stopAction="guestShutdown"/>
      <Item ovf:id="web" ovf:order="1" ovf:startAction="powerOn" ovf:stopAction="guestShutdown"/>
    </StartupSection>
%s
  </VirtualSystemCollection>""" % "\n".join(systems)
    data = _envelope("17327586", files, disks, "VM Network", collection)
    # What vApp exports really declare: a namespace URI that is not a URI.
    return data.replace(b"<Envelope ", b'<Envelope xmlns:vcloud="%s" '
                        % BROKEN_NAMESPACE.encode(), 1)
