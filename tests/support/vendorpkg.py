"""OVAs wrapped the way VMware, VirtualBox and oVirt write them, around one
disk image, for the boot tests (tests/test_boot_cluster.py).

Each vendor declares the guest's hardware in its own words (the corpus,
../shared/corpus, holds real examples of each):

- VMware (vSphere/ovftool): vmx family, controllers as Items of ResourceType
  5 (IDE, no subtype) or 6 (SCSI "lsilogic"), E1000 NICs, vmw:osType,
  streamOptimized VMDK.
- VirtualBox: "virtualbox-2.2" family, two PIIX4 IDE controllers (for the
  CD drive) and a SATA controller (ResourceType 20, "AHCI") holding the
  disk, PCNet32 or E1000 NICs, streamOptimized VMDK.
- oVirt: the bus on the DiskSection disk (ovf:disk-interface="VirtIO",
  ovf:boot="true"), no controller items, NIC models as numbers (3: virtio),
  qcow2 disks.
"""

import os
import subprocess
import tarfile

VMDK_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
QCOW2_URI = "http://www.gnome.org/~markmc/qcow-image-format.html"

_ENVELOPE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:href="%(href)s" ovf:id="file1"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:capacity="%(capacity)d" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1"
          ovf:fileRef="file1" ovf:format="%(format)s"%(disk_attrs)s/>
  </DiskSection>
  <NetworkSection><Info>Networks</Info><Network ovf:name="%(network)s">
    <Description>The network</Description></Network></NetworkSection>
  <VirtualSystem ovf:id="%(name)s">
    <Info>A virtual machine</Info>
    <Name>%(name)s</Name>
    <OperatingSystemSection ovf:id="96"%(os_attrs)s>
      <Info>Guest OS</Info><Description>Debian 64-Bit</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection><Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>%(family)s</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>128MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>128</rasd:VirtualQuantity></Item>
%(items)s
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def _controller(instance, resource_type, subtype=None, address="0", name="Controller"):
    sub = "<rasd:ResourceSubType>%s</rasd:ResourceSubType>" % subtype if subtype else ""
    return ("      <Item><rasd:Address>%s</rasd:Address><rasd:ElementName>%s</rasd:ElementName>"
            "<rasd:InstanceID>%s</rasd:InstanceID>%s<rasd:ResourceType>%d</rasd:ResourceType>"
            "</Item>" % (address, name, instance, sub, resource_type))


def _disk(instance, parent=None, unit="0"):
    place = ("<rasd:AddressOnParent>%s</rasd:AddressOnParent>" % unit if parent else "")
    parent_text = "<rasd:Parent>%s</rasd:Parent>" % parent if parent else ""
    return ("      <Item>%s<rasd:ElementName>Hard disk 1</rasd:ElementName>"
            "<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>"
            "<rasd:InstanceID>%s</rasd:InstanceID>%s<rasd:ResourceType>17</rasd:ResourceType>"
            "</Item>" % (place, instance, parent_text))


def _nic(instance, model, network):
    return ("      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>"
            "<rasd:Connection>%s</rasd:Connection><rasd:ElementName>Network adapter 1"
            "</rasd:ElementName><rasd:InstanceID>%s</rasd:InstanceID>"
            "<rasd:ResourceSubType>%s</rasd:ResourceSubType>"
            "<rasd:ResourceType>10</rasd:ResourceType></Item>" % (network, instance, model))


# vendor -> (family, disk format, descriptor pieces)
def _vmware(controller_type, subtype):
    return dict(family="vmx-10", network="VM Network", format=VMDK_URI, disk_attrs="",
                os_attrs=' vmw:osType="debian10_64Guest"',
                items="\n".join([_controller(3, controller_type, subtype),
                                 _disk(4, parent=3), _nic(5, "E1000", "VM Network")]))


VENDORS = {
    "vmware-ide": _vmware(5, None),
    "vmware-lsilogic": _vmware(6, "lsilogic"),
    "virtualbox-sata": dict(
        family="virtualbox-2.2", network="NAT", format=VMDK_URI, disk_attrs="", os_attrs="",
        items="\n".join([_controller(3, 5, "PIIX4", "0", "ideController0"),
                         _controller(4, 5, "PIIX4", "1", "ideController1"),
                         _controller(5, 20, "AHCI", "0", "sataController0"),
                         _disk(6, parent=5), _nic(7, "PCNet32", "NAT")])),
    "ovirt-virtio": dict(
        family="ENGINE 4.4.0.0", network="ovirtmgmt", format=QCOW2_URI,
        disk_attrs=' ovf:disk-interface="VirtIO" ovf:boot="true"', os_attrs="",
        items="\n".join([_disk(3), _nic(4, "3", "ovirtmgmt")])),
}


def build_ova(directory: str, vendor: str, name: str, raw_image: str) -> str:
    """An OVA named NAME.ova in `directory` holding `raw_image` as `vendor` writes it."""
    spec = VENDORS[vendor]
    os.makedirs(directory, exist_ok=True)
    qcow = spec["format"] == QCOW2_URI
    href = "%s-disk1.%s" % (name, "qcow2" if qcow else "vmdk")
    disk = os.path.join(directory, href)
    options = ["-O", "qcow2"] if qcow else ["-O", "vmdk", "-o", "subformat=streamOptimized"]
    subprocess.run(["qemu-img", "convert", "-f", "raw", *options, raw_image, disk],
                   check=True, capture_output=True)
    descriptor = os.path.join(directory, name + ".ovf")
    with open(descriptor, "w", encoding="utf-8") as handle:
        handle.write(_ENVELOPE % dict(spec, href=href, name=name,
                                      capacity=os.path.getsize(raw_image)))
    ova = os.path.join(directory, name + ".ova")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(descriptor, arcname=name + ".ovf")
        tar.add(disk, arcname=href)
    os.unlink(descriptor)
    os.unlink(disk)
    return ova
