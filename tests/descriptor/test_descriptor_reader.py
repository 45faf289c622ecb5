"""Tests of the descriptor reader: the real corpus, synthetic edge cases, hostile XML."""

import glob
import os

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganeti_ovf.descriptor import xmlsafe
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError

GIB = 1 << 30
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"

needs_corpus = pytest.mark.skipif(not os.path.isdir(CORPUS), reason="no shared corpus")


def corpus(name):
    with open(os.path.join(CORPUS, name), "rb") as handle:
        return handle.read()


def read(name, profile=None):
    return parse_descriptor(corpus(name), profile=profile, source=os.path.basename(name))


def item(rtype, *fields, attrs=""):
    body = "".join("<rasd:%s>%s</rasd:%s>" % (n, v, n) for n, v in fields)
    return "<Item%s>%s<rasd:ResourceType>%s</rasd:ResourceType></Item>" % (attrs, body, rtype)


CPU = item(3, ("InstanceID", "1"), ("VirtualQuantity", "2"))
MEM = item(4, ("InstanceID", "2"), ("AllocationUnits", "byte * 2^20"),
           ("VirtualQuantity", "512"))
DISK = item(17, ("InstanceID", "3"), ("HostResource", "ovf:/disk/d1"))
NIC = item(10, ("InstanceID", "4"), ("Connection", "VM Network"))
FILE = '<File ovf:id="f1" ovf:href="disk1.vmdk" ovf:size="1024"/>'
DISKS = ('<Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"'
         ' ovf:capacityAllocationUnits="byte * 2^30"/>')


def envelope(items=(CPU, MEM, DISK, NIC), files=FILE, disks=DISKS, system_extra="",
             envelope_extra="", system_attrs=' ovf:id="vm1"', name="<Name>vm one</Name>",
             namespace=OVF1):
    return ("""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="%s" xmlns:ovf="%s" xmlns:rasd="%s"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:gnt="http://ganeti">
  <References>%s</References>
  <DiskSection><Info>disks</Info>%s</DiskSection>
  %s
  <VirtualSystem%s>
    <Info>a VM</Info>
    %s
    <VirtualHardwareSection>
      <Info>hw</Info>
      <System><vssd:VirtualSystemType>vmx-08</vssd:VirtualSystemType></System>
      %s
    </VirtualHardwareSection>
    %s
  </VirtualSystem>
</Envelope>
""" % (namespace, namespace, RASD, files, disks, envelope_extra, system_attrs, name,
       "\n".join(items), system_extra)).encode("utf-8")


def parse(data, profile=None):
    return parse_descriptor(data, profile=profile, source="test.ovf")


def refused(data, *fragments, profile=None):
    with pytest.raises(DescriptorError) as caught:
        parse(data, profile)
    message = str(caught.value)
    assert message.startswith("test.ovf"), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- the real corpus -----------------------------------------------------

GOOD = [
    "cot/input.ovf", "cot/ubuntu.2.0.ovf", "cot/vmware.ovf", "cot/v0.9.ovf",
    "cot/csr1000v.ovf", "cot/csr1000v_2017.ovf", "cot/iosv.ovf", "cot/minimal.ovf",
    "ganeti/ganeti.ovf", "ganeti/virtualbox.ovf", "ganeti/gzip_disk.ovf", "ganeti/empty.ovf",
    "ganeti/corrupted_resources.ovf", "ganeti/wrong_manifest.ovf",
    "ganeti/wrong_extension.ovd",
] + ["virt-v2v/test-i-ova%s.ovf" % s for s in (
    "", "-as-root", "-checksums", "-formats", "-gz", "-snapshots", "-subfolders", "-tar",
    "-two-disks")]
BAD = {
    "cot/ersatz_ovf_3.0.ovf": "envelope/3",
    "cot/invalid.ovf": "flash2",
    "ganeti/no_disk_in_ref.ovf": "'file1'",
    "ganeti/wrong_xml.ovf": "line 71",
    "virt-v2v/test-i-ova.xml": "not an OVF Envelope",
}


@needs_corpus
def test_every_corpus_descriptor_is_classified():
    found = {os.path.relpath(path, CORPUS)
             for pattern in ("*/*.ovf", "*/*.ovd", "*/*.xml")
             for path in glob.glob(os.path.join(CORPUS, pattern))}
    assert found == set(GOOD) | set(BAD)


@needs_corpus
@pytest.mark.parametrize("name", GOOD)
def test_corpus_parses(name):
    appliance = read(name)
    assert appliance.systems
    assert all(isinstance(w, str) and "\n" not in w for w in appliance.warnings)


@needs_corpus
@pytest.mark.parametrize("name, fragment", sorted(BAD.items()))
def test_corpus_errors(name, fragment):
    with pytest.raises(DescriptorError) as caught:
        read(name)
    assert os.path.basename(name) in str(caught.value)
    assert fragment in str(caught.value)


@needs_corpus
def test_cot_input_default_profile():
    appliance = read("cot/input.ovf")
    assert appliance.ovf_version == "1.x"
    assert appliance.profile == "4CPU-4GB-3NIC"
    assert [(p.profile_id, p.default) for p in appliance.profiles] == [
        ("1CPU-1GB-1NIC", False), ("2CPU-2GB-1NIC", False), ("4CPU-4GB-3NIC", True)]
    system = appliance.system()
    assert (system.system_id, system.name, system.os_id) == ("test", "test", 100)
    assert system.os_description == "DEVELOPMENT IMAGE"
    assert system.hardware_family == "vmx-07 vmx-08"
    assert (system.vcpus, system.memory_mib) == (4, 4096)
    assert [(d.disk_id, d.capacity, d.file.href) for d in system.disks] == [
        ("vmdisk1", GIB, "input.vmdk")]
    assert [(n.network, n.model, n.mac, n.mode) for n in system.nics] == [
        ("VM Network", "VMXNET3", None, None)] * 3
    # The ISO and the text file are files of the package but not disks.
    assert [f.href for f in appliance.files] == ["input.vmdk", "input.iso", "sample_cfg.txt"]
    assert any("CD/DVD" in w and "serial" in w for w in appliance.warnings)


@needs_corpus
@pytest.mark.parametrize("profile, vcpus, memory, nics", [
    ("1CPU-1GB-1NIC", 1, 1024, 1), ("2CPU-2GB-1NIC", 2, 2048, 1), ("4CPU-4GB-3NIC", 4, 4096, 3)])
def test_cot_input_profiles(profile, vcpus, memory, nics):
    appliance = read("cot/input.ovf", profile)
    system = appliance.system()
    assert appliance.profile == profile
    assert (system.vcpus, system.memory_mib, len(system.nics)) == (vcpus, memory, nics)


@needs_corpus
def test_unknown_profile_lists_profiles():
    with pytest.raises(DescriptorError) as caught:
        read("cot/input.ovf", "8CPU")
    assert "'8CPU'" in str(caught.value)
    assert "1CPU-1GB-1NIC, 2CPU-2GB-1NIC, 4CPU-4GB-3NIC" in str(caught.value)


@needs_corpus
def test_cot_ubuntu_virtualbox_2_0():
    appliance = read("cot/ubuntu.2.0.ovf")
    assert appliance.ovf_version == "2.x"
    system = appliance.system()
    assert (system.system_id, system.os_id, system.os_description) == ("ubuntu", 94, "Ubuntu_64")
    assert (system.vcpus, system.memory_mib, system.hardware_family) == (1, 512, "virtualbox-2.2")
    [disk] = system.disks
    assert (disk.disk_id, disk.capacity, disk.file.href, disk.file.size) == (
        "vmdisk1", 8589934592, "ubuntu.2.0-disk1.vmdk", None)
    [nic] = system.nics
    # The MAC comes from vbox:Machine's first enabled adapter.
    assert (nic.network, nic.mac, nic.model, nic.mode) == (
        "NAT", "08:00:27:2a:fb:4e", "E1000", None)


@needs_corpus
def test_cot_vmware_and_v0_9():
    system = read("cot/vmware.ovf").system()
    assert (system.vcpus, system.memory_mib, system.os_id) == (2, 1536, 80)
    assert [d.populated_size for d in system.disks] == [293011456]
    assert [n.network for n in system.nics] == ["lanethernet0"] * 4
    appliance = read("cot/v0.9.ovf")
    assert appliance.ovf_version == "0.9"
    system = appliance.system()
    assert (system.system_id, system.os_id, system.vcpus, system.memory_mib) == (
        "v0.9", 107, 1, 8192)
    assert system.hardware_family == "vmx-04"
    assert [(d.disk_id, d.capacity, d.file.href) for d in system.disks] == [
        ("vmdisk1", GIB, "input.vmdk")]
    assert [(n.network, n.mode, n.model) for n in system.nics] == [
        ("bridged", "bridged", "PCNet32")]


@needs_corpus
def test_cot_cisco_blank_disk_and_profiles():
    appliance = read("cot/iosv.ovf")
    system = appliance.system()
    assert appliance.profile == "1CPU-384MB-2NIC"
    assert (system.vcpus, system.memory_mib, len(system.nics)) == (1, 384, 2)
    main, flash = system.disks
    assert (main.disk_id, main.capacity, main.file.href, main.blank) == (
        "vios-adventerprisek9-m.vmdk", GIB, "input.vmdk", False)
    assert (flash.disk_id, flash.capacity, flash.blank) == ("flash2", 128 << 20, True)
    large = read("cot/iosv.ovf", "1CPU-3GB-16NIC").system()
    assert (large.memory_mib, len(large.nics)) == (3072, 16)
    assert large.nics[-1].network == "GigabitEthernet0_15"
    for name in ("cot/csr1000v.ovf", "cot/csr1000v_2017.ovf"):
        system = read(name).system()
        assert (system.name, system.vcpus, system.memory_mib) == (
            "Cisco CSR 1000V Cloud Services Router", 1, 4096)
        assert [d.capacity for d in system.disks] == [GIB]
        assert [n.network for n in system.nics] == [
            "GigabitEthernet1", "GigabitEthernet2", "GigabitEthernet3"]
    assert read("cot/csr1000v.ovf", "4CPU-8GB").system().memory_mib == 8192


@needs_corpus
def test_cot_minimal():
    appliance = read("cot/minimal.ovf")
    system = appliance.system()
    assert (system.system_id, system.disks, system.nics, system.vcpus) == ("x", (), (), None)
    assert appliance.files == () and appliance.warnings == ()


@needs_corpus
def test_ganeti_old_section():
    appliance = read("ganeti/ganeti.ovf")
    system = appliance.system()
    assert (system.system_id, system.name, system.os_id) == (
        "New-shiny-instance", "ganeti-test-xen", 93)
    assert (system.vcpus, system.memory_mib) == (1, 2048)
    [disk] = system.disks
    # The old converter wrote no capacity: 0 means "the image's size".
    assert (disk.capacity, disk.file.href) == (0, "new_disk.vmdk")
    assert any("no ovf:capacity" in w for w in appliance.warnings)
    [nic] = system.nics
    assert (nic.network, nic.mac, nic.mode, nic.link, nic.ip, nic.model) == (
        None, "aa:00:00:d8:2c:1e", "bridged", "xen-br0", None, "PCNet32")
    ganeti = system.ganeti
    assert (ganeti.version, ganeti.disk_template, ganeti.os_name, ganeti.hypervisor) == (
        "0", "plain", "lenny-image", "xen-pvm")
    assert ganeti.hypervisor_params == (("root-path", "/dev/sda"), ("kernel_args", "ro"))
    assert ganeti.backend_params == (("auto_balance", "False"),)
    assert ganeti.tags == ()


@needs_corpus
def test_ganeti_corpus_variants():
    gzip_disk = read("ganeti/gzip_disk.ovf").system().disks[0].file
    assert (gzip_disk.href, gzip_disk.compression) == ("compr_disk.vmdk.gz", "gzip")
    appliance = read("ganeti/virtualbox.ovf")
    system = appliance.system()
    assert (system.system_id, system.ganeti) == ("Ubuntu-freshly-created", None)
    # Both disk items name vmdisk1: each item is a disk of its own (the
    # corpus README counts two disks); vmdisk2 is reported as unused.
    assert [d.disk_id for d in system.disks] == ["vmdisk1", "vmdisk1"]
    assert any("vmdisk2" in w for w in appliance.warnings)
    assert [(n.network, n.mode) for n in system.nics] == [("bridged", "bridged")]
    empty = read("ganeti/empty.ovf").system()
    assert (empty.system_id, empty.name, empty.disks, empty.nics, empty.os_id) == (
        "system1", None, (), (), None)
    corrupted = read("ganeti/corrupted_resources.ovf").system()
    assert corrupted.disks[0].capacity == 16514 << 20
    assert corrupted.disks[0].file.href == "other_disk.vmdk"
    odd = read("ganeti/wrong_manifest.ovf")
    assert odd.system().ganeti.hypervisor == "xen-pvm"
    assert any("VersionId" in w for w in odd.warnings)


@needs_corpus
def test_virt_v2v():
    two = read("virt-v2v/test-i-ova-two-disks.ovf").system()
    assert [(d.disk_id, d.capacity, d.file.href) for d in two.disks] == [
        ("vmdisk1", 50 * GIB, "disk1.vmdk"), ("vmdisk2", 450 * GIB, "disk2.vmdk")]
    assert (two.os_id, two.vcpus, two.memory_mib) == (103, 1, 1024)
    assert [(n.network, n.model) for n in two.nics] == [("PG-VLAN60", "E1000")]
    gz = read("virt-v2v/test-i-ova-gz.ovf").system().disks[0].file
    assert (gz.href, gz.compression, gz.size) == ("disk1.vmdk.gz", "gzip", 7804077568)
    root = read("virt-v2v/test-i-ova-as-root.ovf").system()
    assert (root.disks[0].capacity, root.disks[0].format_uri, root.nics) == (512 << 20, None, ())
    sub = read("virt-v2v/test-i-ova-subfolders.ovf").system()
    assert sub.disks[0].file.href == "disk1.vmdk"
    plain = read("virt-v2v/test-i-ova.ovf").system()
    assert (plain.name, plain.os_id, plain.os_description, plain.memory_mib) == (
        "TestOva", 74, None, 2048)


# --- synthetic descriptors ------------------------------------------------

def test_synthetic_baseline():
    appliance = parse(envelope())
    system = appliance.system()
    assert (system.system_id, system.name, system.vcpus, system.memory_mib) == (
        "vm1", "vm one", 2, 512)
    assert [(d.disk_id, d.capacity, d.file.file_id) for d in system.disks] == [("d1", GIB, "f1")]
    assert [n.network for n in system.nics] == ["VM Network"]
    assert appliance.warnings == ()


@pytest.mark.parametrize("host", ["ovf:/disk/d1", "/disk/d1", "ovf://disk/d1"])
def test_host_resource_forms(host):
    disk = item(17, ("InstanceID", "3"), ("HostResource", host))
    assert parse(envelope(items=(disk,))).system().disks[0].disk_id == "d1"


def test_host_resource_names_a_file():
    disk = item(17, ("InstanceID", "3"), ("HostResource", "ovf:/file/f1"))
    appliance = parse(envelope(items=(disk,), disks=""))
    [found] = appliance.system().disks
    assert (found.disk_id, found.capacity, found.file.href) == ("f1", 0, "disk1.vmdk")


@pytest.mark.parametrize("host, fragment", [
    ("ovf:/disk/nope", "'nope'"), ("ovf:/file/nope", "'nope'"),
    ("nonexistent.vmdk", "nonexistent.vmdk")])
def test_dangling_host_resource(host, fragment):
    disk = item(17, ("InstanceID", "3"), ("HostResource", host))
    refused(envelope(items=(disk,)), fragment)


def test_dangling_file_ref():
    refused(envelope(files=""), "'f1'", "References")


def test_unreferenced_disk_warns():
    disks = DISKS + '<Disk ovf:diskId="d2" ovf:capacity="5"/>'
    appliance = parse(envelope(disks=disks))
    assert [d.disk_id for d in appliance.system().disks] == ["d1"]
    assert any("d2" in w for w in appliance.warnings)


def test_disk_order_follows_controller_and_slot():
    files = FILE + '<File ovf:id="f2" ovf:href="disk2.vmdk"/>'
    disks = DISKS + '<Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="1"/>'
    items = (item(6, ("InstanceID", "10")), item(5, ("InstanceID", "11")),
             item(17, ("InstanceID", "3"), ("HostResource", "ovf:/disk/d1"),
                  ("Parent", "11"), ("AddressOnParent", "0")),
             item(17, ("InstanceID", "4"), ("HostResource", "ovf:/disk/d2"),
                  ("Parent", "10"), ("AddressOnParent", "1")))
    assert [d.disk_id for d in parse(envelope(items=items, files=files,
                                              disks=disks)).system().disks] == ["d2", "d1"]


def test_blank_disk_and_property_capacity():
    product = ('<ProductSection><Info>p</Info><Property ovf:key="size" ovf:type="uint64"'
               ' ovf:value="3"/></ProductSection>')
    disks = ('<Disk ovf:diskId="d1" ovf:capacity="${size}"'
             ' ovf:capacityAllocationUnits="byte * 2^30"/>')
    [disk] = parse(envelope(disks=disks, files="", system_extra=product)).system().disks
    assert (disk.capacity, disk.blank) == (3 * GIB, True)
    refused(envelope(disks=disks, files=""), "${size}")
    refused(envelope(disks='<Disk ovf:diskId="d1"/>', files=""), "blank disk")


def test_unqualified_attributes_and_unqualified_children():
    data = b"""<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
      <References><File id="f1" href="a%20b.vmdk" size="10"/></References>
      <DiskSection><Disk diskId="d1" fileRef="f1" capacity="100"/></DiskSection>
      <VirtualSystem id="v"><VirtualHardwareSection>
        <Item><InstanceId>1</InstanceId><ResourceType>17</ResourceType>
          <HostResource>/disk/d1</HostResource></Item>
        <Item><InstanceId>2</InstanceId><ResourceType>3</ResourceType>
          <VirtualQuantity>3</VirtualQuantity></Item>
      </VirtualHardwareSection></VirtualSystem></ovf:Envelope>"""
    system = parse(data).system()
    assert [(d.capacity, d.file.href) for d in system.disks] == [(100, "a b.vmdk")]
    assert system.vcpus == 3


def test_trailing_slash_namespace_and_collection():
    data = b"""<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1/"
        xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">
      <References/>
      <VirtualSystemCollection ovf:id="all">
        <VirtualSystem ovf:id="a"><Name>A</Name></VirtualSystem>
        <VirtualSystemCollection ovf:id="inner">
          <VirtualSystem ovf:id="b"/>
        </VirtualSystemCollection>
      </VirtualSystemCollection></Envelope>"""
    appliance = parse(data)
    assert [(s.system_id, s.name) for s in appliance.systems] == [("a", "A"), ("b", "b")]
    assert appliance.system("A").system_id == "a"


def test_first_hardware_section_with_items_is_read():
    data = envelope().replace(
        b"<VirtualHardwareSection>",
        b"<VirtualHardwareSection><Info>empty</Info></VirtualHardwareSection>"
        b"<VirtualHardwareSection>", 1)
    second = envelope(items=(CPU, MEM, DISK, NIC, item(3, ("InstanceID", "9"),
                                                        ("VirtualQuantity", "8"))))
    second = second.replace(b"</VirtualHardwareSection>",
                            b"</VirtualHardwareSection><VirtualHardwareSection><Info/>"
                            + CPU.replace("2<", "7<").encode() + b"</VirtualHardwareSection>")
    assert parse(data).system().vcpus == 2
    appliance = parse(second)
    assert appliance.system().vcpus == 2
    assert any("VirtualHardwareSections" in w for w in appliance.warnings)


def test_profile_items_replace_generic_ones():
    section = ('<DeploymentOptionSection><Info>p</Info>'
               '<Configuration ovf:id="small"><Label>S</Label></Configuration>'
               '<Configuration ovf:id="big"><Label>B</Label></Configuration>'
               '</DeploymentOptionSection>')
    big_cpu = item(3, ("InstanceID", "1"), ("VirtualQuantity", "8"),
                   attrs=' ovf:configuration="big huge"')
    big_nic = item(10, ("InstanceID", "5"), ("Connection", "extra"),
                   attrs=' ovf:configuration="big"')
    data = envelope(items=(CPU, big_cpu, MEM, DISK, NIC, big_nic), envelope_extra=section)
    small = parse(data)
    assert small.profile == "small"
    assert [p.default for p in small.profiles] == [True, False]
    assert (small.system().vcpus, len(small.system().nics)) == (2, 1)
    big = parse(data, "big").system()
    assert (big.vcpus, [n.network for n in big.nics]) == (8, ["VM Network", "extra"])
    refused(data, "'huge'", "small, big", profile="huge")
    refused(envelope(), "none", profile="small")
    orphan = parse(envelope(items=(CPU, big_cpu)))
    assert orphan.system().vcpus == 2 and orphan.profile is None
    assert any("DeploymentOptionSection" in w for w in orphan.warnings)


def test_memory_units():
    def memory(units, quantity="1536"):
        fields = [("InstanceID", "2"), ("VirtualQuantity", quantity)]
        if units is not None:
            fields.append(("AllocationUnits", units))
        return parse(envelope(items=(item(4, *fields),)))

    assert memory("byte * 2^30", "2").system().memory_mib == 2048
    assert memory("KiloBytes", "1536").system().memory_mib == 2  # rounded up
    assert memory("MegaBytes").system().memory_mib == 1536
    no_units = memory(None)
    assert no_units.system().memory_mib == 1536
    assert any("taken as MiB" in w for w in no_units.warnings)
    with pytest.raises(DescriptorError, match="AllocationUnits"):
        memory("hertz * 10^6")
    with pytest.raises(DescriptorError, match="limit"):
        memory("byte * 2^40", "17")


def test_cpu_units_are_ignored_and_bounded():
    cpu = item(3, ("InstanceID", "1"), ("AllocationUnits", "hertz * 10^6"),
               ("VirtualQuantity", "4"))
    assert parse(envelope(items=(cpu,))).system().vcpus == 4
    refused(envelope(items=(item(3, ("InstanceID", "1"), ("VirtualQuantity", "1025")),)),
            "VirtualQuantity", "1024")
    refused(envelope(items=(item(3, ("InstanceID", "1"), ("VirtualQuantity", "0")),)),
            "VirtualQuantity")


@pytest.mark.parametrize("number", ["+1", "1_000", "\u0661\u0662", " 12", "12 ", "-3", "",
                                    "0x10", "1e3"])
def test_bad_numbers_are_refused(number):
    disks = '<Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="%s"/>' % number
    refused(envelope(disks=disks), "Disk d1 ovf:capacity")
    cpu = item(3, ("InstanceID", "1"), ("VirtualQuantity", number))
    refused(envelope(items=(cpu,)), "VirtualQuantity")
    # ovf:size is advisory: a bad one is a warning, never a refusal.
    files = '<File ovf:id="f1" ovf:href="disk1.vmdk" ovf:size="%s"/>' % number
    appliance = parse(envelope(files=files))
    assert appliance.files[0].size is None
    assert any("ovf:size" in w and "ignored" in w for w in appliance.warnings)


@pytest.mark.parametrize("units", ["percent", "hertz", "byte * 2^99", "byte * 2^20 + 1",
                                   "Megabits"])
def test_bad_capacity_units_are_refused(units):
    disks = ('<Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"'
             ' ovf:capacityAllocationUnits="%s"/>' % units)
    refused(envelope(disks=disks), "capacityAllocationUnits")


def test_capacity_bound():
    disks = ('<Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="2"'
             ' ovf:capacityAllocationUnits="byte * 2^50"/>')
    refused(envelope(disks=disks), "limit")


@pytest.mark.parametrize("href", ["../disk.vmdk", "/etc/passwd", "http://x/disk.vmdk",
                                  "file:disk.vmdk", "a%2Fb.vmdk",
                                  "a\\b.vmdk", "..", "a&#9;b.vmdk", "a%00b", "%ff.vmdk",
                                  "a%0Ab.vmdk", ""])
def test_bad_hrefs_are_refused(href):
    refused(envelope(files='<File ovf:id="f1" ovf:href="%s"/>' % href), "File f1")


def test_compression_values():
    files = '<File ovf:id="f1" ovf:href="d.vmdk.gz" ovf:compression="gzip" ovf:chunkSize="8"/>'
    ref = parse(envelope(files=files)).files[0]
    assert (ref.compression, ref.chunk_size) == ("gzip", 8)
    refused(envelope(files=files.replace("gzip", "bzip2")), "bzip2")


@pytest.mark.parametrize("text", ["a&#10;b", "a&#13;b", "a&#9;b", "a\u0085b", "a\u2028b"])
def test_control_characters_are_refused(text):
    refused(envelope(name="<Name>%s</Name>" % text), "Name", "control")
    refused(envelope(items=(item(10, ("InstanceID", "4"), ("Connection", text)),)),
            "Connection", "control")


def test_description_is_folded_and_value_length_capped():
    os_section = ('<OperatingSystemSection ovf:id="1"><Info/>'
                  '<Description>two\n   lines</Description></OperatingSystemSection>')
    assert parse(envelope(system_extra=os_section)).system().os_description == "two lines"
    refused(envelope(name="<Name>%s</Name>" % ("x" * 5000)), "longer than")


def test_nics_mac_and_mode():
    items = (item(10, ("InstanceID", "4"), ("Connection", "Bridged LAN"),
                  ("Address", "00-50-56-AA-BB-CC"), ("ResourceSubType", "E1000")),
             item(10, ("InstanceID", "5"), ("Connection", ""), ("Address", "005056aabbcd")),
             item(10, ("InstanceID", "6"), ("Connection", "routed1"),
                  ("Address", "zz:zz:zz:zz:zz:zz")))
    appliance = parse(envelope(items=items))
    assert [(n.network, n.mac, n.mode, n.model) for n in appliance.system().nics] == [
        ("Bridged LAN", "00:50:56:aa:bb:cc", "bridged", "E1000"),
        (None, "00:50:56:aa:bb:cd", None, None),
        ("routed1", None, "routed", None)]
    assert any("zz:zz" in w for w in appliance.warnings)


def test_skipped_and_unknown_items():
    items = (item(15, ("InstanceID", "7"), ("HostResource", "ovf:/file/f1")),
             item(14, ("InstanceID", "8")), item(21, ("InstanceID", "9")),
             item(1, ("InstanceID", "10")), item(5, ("InstanceID", "11")),
             item(17, ("InstanceID", "12"), attrs=' ovf:required="false"'),
             "<Item><rasd:InstanceID>13</rasd:InstanceID></Item>")
    appliance = parse(envelope(items=items))
    assert appliance.system().disks == ()
    joined = " | ".join(appliance.warnings)
    for fragment in ("CD/DVD", "floppy", "serial", "ResourceType 1 ", "HostResource",
                     "no ResourceType"):
        assert fragment in joined
    refused(envelope(items=(item(17, ("InstanceID", "12")),)), "without HostResource")


def test_device_count_bound():
    nics = tuple(item(10, ("InstanceID", str(i))) for i in range(129))
    refused(envelope(items=nics), "129 NICs")


GANETI_IN_SYSTEM = """
  <gnt:GanetiSection ovf:required="false">
    <Info>Ganeti instance settings</Info>
    <gnt:Version>3.0</gnt:Version>
    <gnt:DiskTemplate>drbd</gnt:DiskTemplate>
    <gnt:AutoBalance>True</gnt:AutoBalance>
    <gnt:Tags>a,b c</gnt:Tags>
    <gnt:OperatingSystem><gnt:Name>debootstrap+default</gnt:Name>
      <gnt:Parameters><gnt:dhcp>yes</gnt:dhcp></gnt:Parameters>
      <gnt:PrivateParameters><gnt:secret>x</gnt:secret></gnt:PrivateParameters>
    </gnt:OperatingSystem>
    <gnt:Hypervisor><gnt:Name>kvm</gnt:Name><gnt:Parameters>
      <gnt:kernel_path></gnt:kernel_path>
      <gnt:Parameter gnt:name="odd+name">1</gnt:Parameter>
    </gnt:Parameters></gnt:Hypervisor>
    <gnt:Backend><gnt:Parameters><gnt:memory>512</gnt:memory>
      <gnt:auto_balance>True</gnt:auto_balance></gnt:Parameters></gnt:Backend>
    <gnt:Network>
      <gnt:Nic ovf:name="VM Network"><gnt:Mode>openvswitch</gnt:Mode>
        <gnt:MACAddress>AA:00:00:11:22:33</gnt:MACAddress><gnt:IPAddress>none</gnt:IPAddress>
        <gnt:Link>br0</gnt:Link><gnt:Net>net1</gnt:Net><gnt:Vlan>.100</gnt:Vlan>
        <gnt:Name>eth0</gnt:Name></gnt:Nic>
      <gnt:Nic><gnt:Link>br1</gnt:Link></gnt:Nic>
    </gnt:Network>
    <gnt:Disks><gnt:Disk ovf:diskId="d1"><gnt:Name>root</gnt:Name></gnt:Disk></gnt:Disks>
  </gnt:GanetiSection>"""


def test_ganeti_section_inside_virtual_system():
    appliance = parse(envelope(system_extra=GANETI_IN_SYSTEM))
    system = appliance.system()
    ganeti = system.ganeti
    assert (ganeti.version, ganeti.disk_template, ganeti.os_name, ganeti.hypervisor) == (
        "3.0", "drbd", "debootstrap+default", "kvm")
    assert ganeti.tags == ("a", "b", "c")
    assert ganeti.os_params == (("dhcp", "yes"),)
    assert ganeti.os_private_params == ()
    assert ganeti.hypervisor_params == (("kernel_path", ""), ("odd+name", "1"))
    assert ganeti.backend_params == (("memory", "512"), ("auto_balance", "True"))
    assert [d.name for d in system.disks] == ["root"]
    first, second = system.nics
    assert (first.network, first.mac, first.mode, first.ip, first.link, first.ganeti_network,
            first.vlan, first.name) == ("VM Network", "aa:00:00:11:22:33", "openvswitch",
                                        None, "br0", "net1", ".100", "eth0")
    assert (second.network, second.link) == (None, "br1")
    assert any("private" in w for w in appliance.warnings)


def test_ganeti_nics_without_hardware_nics():
    section = ('<gnt:GanetiSection><gnt:Network><gnt:Nic><gnt:Mode>routed</gnt:Mode>'
               '<gnt:IPAddress>192.0.2.1</gnt:IPAddress></gnt:Nic></gnt:Network>'
               '<gnt:AutoBalance>false</gnt:AutoBalance></gnt:GanetiSection>')
    system = parse(envelope(items=(CPU,), envelope_extra=section)).system()
    assert [(n.mode, n.ip, n.network) for n in system.nics] == [("routed", "192.0.2.1", None)]
    assert system.ganeti.backend_params == (("auto_balance", "False"),)


@pytest.mark.parametrize("section, fragment", [
    ("<gnt:GanetiSection><gnt:AutoBalance>maybe</gnt:AutoBalance></gnt:GanetiSection>",
     "AutoBalance"),
    ("<gnt:GanetiSection><gnt:Hypervisor><gnt:Parameters><gnt:Parameter gnt:name='a=b'>1"
     "</gnt:Parameter></gnt:Parameters></gnt:Hypervisor></gnt:GanetiSection>", "'a=b'"),
    ("<gnt:GanetiSection><gnt:OperatingSystem><gnt:Name>a&#10;b</gnt:Name>"
     "</gnt:OperatingSystem></gnt:GanetiSection>", "control"),
])
def test_ganeti_section_refusals(section, fragment):
    refused(envelope(system_extra=section), fragment)


# --- hostile XML -------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem>
<Name>&xxe;</Name></VirtualSystem></Envelope>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&lol3;</Envelope>"""


@pytest.mark.parametrize("data, fragment", [
    (XXE, "DOCTYPE"),
    (LAUGHS, "DOCTYPE"),
    (b'<!ENTITY x "y"><Envelope/>', "ENTITY"),
    (b'<Envelope xmlns="%s"><Name>&x;</Name></Envelope>' % OVF1.encode(), "invalid XML"),
    (b"<a>" * 70 + b"</a>" * 70, "deeper than 64"),
    (b"<a>" * 300 + b"</a>" * 300, "invalid XML"),
    (b"<a>" + b"<b/>" * 400_001 + b"</a>", "elements"),
    (b"", "empty"),
    (b"not xml at all", "line 1"),
    (b"<Envelope", "line 1"),
    (("<Envelope xmlns='%s'/>" % OVF1).encode("utf-16"), "invalid XML"),
    (b"<a>\xff</a>", "invalid XML"),
    (b"<Envelope xmlns='urn:other'/>", "not an OVF Envelope"),
    (b"<Envelope/>", "no VirtualSystem"),  # no namespace: read as 1.x
    (("<Envelope xmlns='%s'><References/></Envelope>" % OVF1).encode(), "no VirtualSystem"),
])
def test_hostile_or_broken_xml(data, fragment):
    refused(data, fragment)


def test_huge_attribute_and_size_cap():
    big = envelope(name='<Name>x</Name><Extra a="%s"/>' % ("x" * (11 << 20)))
    refused(big, "invalid XML")
    assert len(big) < xmlsafe.MAX_DESCRIPTOR_BYTES
    refused(b" " * (xmlsafe.MAX_DESCRIPTOR_BYTES + 1), "limit")
    with pytest.raises(DescriptorError):
        parse_descriptor("<Envelope/>", source="test.ovf")


def _corpus_samples():
    if not os.path.isdir(CORPUS):
        return [envelope()]
    return [corpus(name) for name in GOOD] + [envelope()]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_only_descriptor_errors(data):
    samples = _corpus_samples()
    base = data.draw(st.sampled_from(samples))
    choice = data.draw(st.integers(0, 3))
    if choice == 0:
        blob = data.draw(st.binary(max_size=2000))
    else:
        blob = bytearray(base)
        for _ in range(data.draw(st.integers(1, 8))):
            where = data.draw(st.integers(0, len(blob) - 1))
            if choice == 1:
                blob[where] = data.draw(st.integers(0, 255))
            elif choice == 2:
                del blob[where:where + data.draw(st.integers(1, 50))]
            else:
                blob[where:where] = data.draw(st.sampled_from(
                    [b"<", b">", b"&", b'"', b"/", b"<Item>", b"</Item>", b"${x}",
                     b"ovf:/disk/", b"-1", b"\xc3", b"<!DOCTYPE a>", b"xmlns:q='u'"]))
        blob = bytes(blob)
    try:
        parse_descriptor(blob, source="fuzz.ovf")
    except DescriptorError as err:
        assert "\n" not in str(err)
