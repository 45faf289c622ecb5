"""descriptor/devices.py: controllers, slots, boot disk, OS type, CPU
topology and firmware, from descriptors written as vendors write them."""

import os

import pytest
from conftest import CORPUS

from ganeti_ovf import model
from ganeti_ovf.descriptor.reader import parse_descriptor

HEAD = """<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf"
  xmlns:vbox="http://www.virtualbox.org/ovf/machine">
<References><File ovf:href="a.vmdk" ovf:id="f1"/><File ovf:href="b.vmdk" ovf:id="f2"/></References>
<DiskSection><Info>d</Info>
 <Disk ovf:capacity="1048576" ovf:diskId="d1" ovf:fileRef="f1"%(d1)s/>
 <Disk ovf:capacity="1048576" ovf:diskId="d2" ovf:fileRef="f2"%(d2)s/>
</DiskSection>
<VirtualSystem ovf:id="vm"><Info>vm</Info>
<OperatingSystemSection ovf:id="%(os)s"%(ostype)s><Info>os</Info></OperatingSystemSection>
<VirtualHardwareSection><Info>hw</Info>
<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
 <rasd:VirtualQuantity>4</rasd:VirtualQuantity>%(cores)s</Item>
%(items)s
%(config)s
</VirtualHardwareSection>
%(machine)s
</VirtualSystem></Envelope>
"""


def item(instance, rtype, subtype=None, address=None, parent=None, unit=None, host=None):
    parts = ["<rasd:InstanceID>%s</rasd:InstanceID>" % instance,
             "<rasd:ResourceType>%d</rasd:ResourceType>" % rtype]
    for name, value in (("ResourceSubType", subtype), ("Address", address),
                        ("Parent", parent), ("AddressOnParent", unit),
                        ("HostResource", host and "ovf:/disk/" + host)):
        if value is not None:
            parts.append("<rasd:%s>%s</rasd:%s>" % (name, value, name))
    return "<Item>%s</Item>" % "".join(parts)


def read(items=(), d1="", d2="", os_id=96, ostype="", cores="", config="", machine=""):
    xml = HEAD % dict(items="\n".join(items), d1=d1, d2=d2, os=os_id, ostype=ostype,
                      cores=cores, config=config, machine=machine)
    return parse_descriptor(xml.encode(), source="t.ovf").systems[0]


def test_disk_controllers_and_slots_as_declared():
    system = read([item(3, 6, "lsilogicsas", "0"), item(4, 5, None, "1"),
                   item(5, 17, parent=3, unit="1", host="d2"),
                   item(6, 17, parent=4, unit="0", host="d1")])
    assert [(d.disk_id, d.controller, d.unit) for d in system.disks] == [
        ("d2", model.Controller(6, "lsilogicsas", "0", "Item 3"), "1"),
        ("d1", model.Controller(5, None, "1", "Item 4"), "0")]


def test_lower_controller_address_first_whatever_the_item_order():
    # virt-v2v's vSphere exports list "IDE 1" before "IDE 0".
    system = read([item(3, 5, None, "1"), item(4, 5, None, "0"),
                   item(5, 17, parent=3, unit="0", host="d1"),
                   item(6, 17, parent=4, unit="0", host="d2")])
    assert [d.disk_id for d in system.disks] == ["d2", "d1"]


def test_ovirt_disk_interface_and_boot_disk_first():
    system = read([item(3, 17, host="d1"), item(4, 17, host="d2")],
                  d1=' ovf:disk-interface="IDE"',
                  d2=' ovf:disk-interface="VirtIO" ovf:boot="true"')
    assert [(d.disk_id, d.controller.subtype, d.boot) for d in system.disks] == [
        ("d2", "VirtIO", True), ("d1", "IDE", False)]
    assert system.disks[0].controller.source == "ovf:disk-interface"


def test_os_type_cores_and_vmware_firmware():
    system = read(ostype=' vmw:osType="windows9Server64Guest"',
                  cores='<vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket>',
                  config='<vmw:Config ovf:required="false" vmw:key="firmware"'
                         ' vmw:value="efi"/>')
    assert (system.vmware_os_type, system.cores_per_socket, system.firmware) == \
        ("windows9Server64Guest", 2, "efi")


def test_virtualbox_firmware():
    machine = ('<vbox:Machine ovf:required="false"><ovf:Info>m</ovf:Info><Hardware>'
               '<Firmware type="EFI"/></Hardware></vbox:Machine>')
    assert read(machine=machine).firmware == "efi"


@pytest.mark.parametrize("config, cores, warning", [
    ('<vmw:Config vmw:key="firmware" vmw:value="coreboot"/>', "",
     "vmw:Config firmware 'coreboot' is not a firmware"),
    ("", "<vmw:CoresPerSocket>many</vmw:CoresPerSocket>",
     "vmw:CoresPerSocket 'many' is not a core count")])
def test_unknown_values_warn(config, cores, warning):
    xml = HEAD % dict(items="", d1="", d2="", os=96, ostype="", cores=cores, config=config,
                      machine="")
    appliance = parse_descriptor(xml.encode(), source="t.ovf")
    assert any(warning in text for text in appliance.warnings), appliance.warnings
    system = appliance.systems[0]
    assert system.firmware is None and system.cores_per_socket is None


@pytest.mark.skipif(not os.path.isdir(CORPUS), reason="no corpus")
@pytest.mark.parametrize("name, expected", [
    ("cot/ubuntu.2.0.ovf", (20, "AHCI")),
    ("cot/vmware.ovf", (6, "virtio lsilogic")),
    ("virt-v2v/test-i-ova-tar.ovf", (6, "lsilogicsas")),
    ("ganeti/virtualbox.ovf", (5, "PIIX4")),
])
def test_corpus_controllers(name, expected):
    with open(os.path.join(CORPUS, name), "rb") as handle:
        system = parse_descriptor(handle.read(), source=name).systems[0]
    controller = system.disks[0].controller
    assert (controller.resource_type, controller.subtype) == expected


def test_a_disk_named_by_several_items_takes_each_items_place():
    # vCenter profiles name one DiskSection disk from several items on
    # different slots: each disk keeps its own item's slot, so the order is
    # the slots' order and not the first item's place repeated.
    import realworld
    from ganeti_ovf.descriptor.reader import parse_descriptor

    system = parse_descriptor(realworld.vcenter_appliance(), profile="tiny").systems[0]
    assert [disk.unit for disk in system.disks] == [str(slot) for slot in range(15)]
    assert [disk.capacity for disk in system.disks] == realworld.vcenter_capacities("tiny")
