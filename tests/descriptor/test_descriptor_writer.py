"""Tests of ganeti_ovf.descriptor.writer: schema validity and meaning.

Every OVF 1.0 descriptor written here is validated against the DMTF schema
(tests/support/ovfschema.py); XPath checks then assert what the schema cannot: item
order, unique InstanceIDs, references between sections, file sizes of real
files built with qemu-img.
"""

import dataclasses
import gzip
import hashlib
import itertools
import os
import subprocess
from typing import List, Optional, Tuple

import pytest
from lxml import etree
from ovfschema import SCHEMA_DIR, ovf10_errors, validate_ovf10

from ganeti_ovf import model
from ganeti_ovf.descriptor import osids, versions
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.descriptor.writer import SCSI_UNITS, write_descriptor
from ganeti_ovf.errors import DescriptorError

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
NS = {"ovf": OVF1, "rasd": versions.RASD_NS, "vssd": versions.VSSD_NS,
      "gnt": versions.GANETI_NS, "vmw": versions.VMW_NS}
VMDK = versions.FORMAT_URIS["vmdk"][0]
GIB = 1 << 30


# --- fixtures: real disk files and the appliances that describe them --------

def _qemu_vmdk(path: str, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o",
                    "subformat=streamOptimized", path, size], check=True)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Tuple[str, Tuple[model.FileRef, ...]]:
    """Three package files: a plain vmdk, a gzipped one, one split in chunks."""
    folder = str(tmp_path_factory.mktemp("package"))
    plain = os.path.join(folder, "disk0.vmdk")
    _qemu_vmdk(plain, "64M")
    source = os.path.join(folder, "source.vmdk")
    _qemu_vmdk(source, "32M")
    with open(source, "rb") as handle:
        data = handle.read()
    zipped = os.path.join(folder, "disk1.vmdk.gz")
    with open(zipped, "wb") as handle:
        handle.write(gzip.compress(data, mtime=0))
    # ovf:chunkSize: the file is stored as disk2.vmdk.000000000, .000000001...
    chunk = 4096
    for index in range(0, len(data), chunk):
        with open(os.path.join(folder, "disk2.vmdk.%09d" % (index // chunk)), "wb") as out:
            out.write(data[index:index + chunk])
    return folder, (
        model.FileRef("file1", "disk0.vmdk", os.path.getsize(plain)),
        model.FileRef("file2", "disk1.vmdk.gz", os.path.getsize(zipped),
                      model.COMPRESSION_GZIP),
        model.FileRef("file3", "disk2.vmdk", len(data), chunk_size=chunk),
    )


@pytest.fixture(scope="module")
def disk_files(package) -> Tuple[model.FileRef, ...]:
    return package[1]


GANETI = model.GanetiSettings(
    version="0", disk_template="drbd", hypervisor="kvm",
    hypervisor_params=(("kernel_path", ""), ("root_path", "/dev/vda1"),
                       ("9p:share", "yes"), ("xmlish", "1")),
    os_name="debootstrap+bookworm", os_params=(("dhcp", "yes"), ("Parameter", "p")),
    os_private_params=(("password", "secret"),),
    backend_params=(("maxmem", "2048"), ("minmem", "1024"), ("vcpus", "2"),
                    ("spindle_use", "1"), ("always_failover", "False"),
                    ("auto_balance", "True")),
    tags=("web", "prod:eu"))

NICS = (model.Nic(mac="aa:00:00:11:22:33", mode="bridged", link="br0", ip="192.0.2.10",
                  name="eth0"),
        model.Nic(network="backend", mac="aa:00:00:44:55:66", mode="openvswitch",
                  link="switch1", ganeti_network="backend", vlan=".100"))


def appliance(files: Tuple[model.FileRef, ...], disks: int = 1, nics: int = 0,
              ganeti: Optional[model.GanetiSettings] = GANETI,
              name: str = "web1.example.com", **system) -> model.Appliance:
    disk_list = tuple(
        model.Disk("vmdisk%d" % (index + 1), (index + 1) * GIB, files[index], VMDK,
                   populated_size=None if index else 5 << 20,
                   name="disk%d" % index if index != 1 else None)
        for index in range(disks))
    vs = model.VirtualSystem(name, name, vcpus=2, memory_mib=2048, disks=disk_list,
                             nics=NICS[:nics], ganeti=ganeti, **system)
    return model.Appliance("1.0", (vs,), tuple(files[:disks]))


def parse(data: bytes) -> etree._Element:
    return etree.fromstring(data)


def texts(root: etree._Element, path: str, ns=None) -> List[str]:
    return [node if isinstance(node, str) else node.text
            for node in root.xpath(path, namespaces=ns or NS)]


def xsd_sequence(filename: str, type_name: str) -> List[str]:
    """The element names of a CIM type's xs:sequence, read from the schema."""
    xsd = etree.parse(os.path.join(SCHEMA_DIR, filename))
    refs = xsd.xpath("//xs:complexType[@name=$t]/xs:sequence/xs:element/@ref",
                     t=type_name, namespaces={"xs": "http://www.w3.org/2001/XMLSchema"})
    return [ref.split(":")[1] for ref in refs]


# --- schema validity ------------------------------------------------------------

@pytest.mark.parametrize("disks,nics,with_ganeti,external",
                         list(itertools.product((1, 3), (0, 2), (True, False),
                                                (False, True))))
def test_every_variant_is_valid_ovf10(disk_files, disks, nics, with_ganeti, external):
    app = appliance(disk_files, disks, nics, GANETI if with_ganeti else None)
    data = write_descriptor(app, external=external)
    validate_ovf10(data)
    root = parse(data)
    has_section = bool(root.xpath("//gnt:GanetiSection", namespaces=NS))
    assert has_section == (with_ganeti and not external)


def test_ganeti_section_elsewhere_is_invalid(disk_files):
    """Why the section sits in VirtualHardwareSection: nowhere else validates."""
    data = write_descriptor(appliance(disk_files, 1, 2))
    for target in ("/ovf:Envelope", "/ovf:Envelope/ovf:VirtualSystem"):
        root = parse(data)
        section = root.find(".//gnt:GanetiSection", NS)
        before = root.xpath(target + "/ovf:VirtualSystem | " + target
                            + "/ovf:OperatingSystemSection", namespaces=NS)[0]
        before.addprevious(section)
        assert ovf10_errors(etree.tostring(root)), target


def test_ovf2_differs_only_in_envelope_namespace(disk_files):
    app = appliance(disk_files, 3, 2)
    data2 = write_descriptor(app, ovf_version="2.0")
    root = parse(data2)
    assert root.tag == "{%s}Envelope" % OVF2
    assert root.get("{%s}version" % OVF2) == "2.0"
    assert root.xpath("count(//o:Item)", namespaces={"o": OVF2}) == 8
    # Same structure: with the 1.0 namespace it is valid OVF 1.0, byte for byte
    # the 1.0 output apart from the version attribute.
    as1 = data2.replace(OVF2.encode(), OVF1.encode()).replace(
        b'ovf:version="2.0"', b'ovf:version="1.0"')
    assert as1 == write_descriptor(app, ovf_version="1.0")


# --- meaning --------------------------------------------------------------------

def test_rasd_and_vssd_follow_schema_order(disk_files):
    rasd_order = xsd_sequence("CIM_ResourceAllocationSettingData.xsd",
                              "CIM_ResourceAllocationSettingData_Type")
    vssd_order = xsd_sequence("CIM_VirtualSystemSettingData.xsd",
                              "CIM_VirtualSystemSettingData_Type")
    assert "InstanceID" in rasd_order and "VirtualSystemType" in vssd_order
    root = parse(write_descriptor(appliance(disk_files, 3, 2)))
    for container, order in ((root.xpath("//ovf:Item", namespaces=NS), rasd_order),
                             (root.xpath("//ovf:System", namespaces=NS), vssd_order)):
        assert container
        for element in container:
            names = [etree.QName(child).localname for child in element]
            assert names == sorted(names, key=order.index)


def test_items_reference_each_other(disk_files):
    root = parse(write_descriptor(appliance(disk_files, 3, 2)))
    ids = texts(root, "//ovf:Item/rasd:InstanceID")
    assert len(ids) == len(set(ids)) == 2 + 1 + 3 + 2
    assert "0" not in ids  # the System's InstanceID
    disk_ids = texts(root, "//ovf:DiskSection/ovf:Disk/@ovf:diskId")
    assert texts(root, "//ovf:Item[rasd:ResourceType=17]/rasd:HostResource") == [
        "ovf:/disk/" + disk_id for disk_id in disk_ids]
    controllers = texts(root, "//ovf:Item[rasd:ResourceType=6]/rasd:InstanceID")
    assert texts(root, "//ovf:Item[rasd:ResourceType=6]/rasd:ResourceSubType") == ["lsilogic"]
    assert set(texts(root, "//ovf:Item[rasd:ResourceType=17]/rasd:Parent")) == set(controllers)
    assert texts(root, "//ovf:Item[rasd:ResourceType=17]/rasd:AddressOnParent") == [
        "0", "1", "2"]
    file_ids = texts(root, "//ovf:References/ovf:File/@ovf:id")
    assert texts(root, "//ovf:Disk/@ovf:fileRef") == file_ids
    assert texts(root, "//ovf:Item[rasd:ResourceType=3]/rasd:VirtualQuantity") == ["2"]
    assert texts(root, "//ovf:Item[rasd:ResourceType=4]/rasd:AllocationUnits") == [
        "byte * 2^20"]
    assert texts(root, "//ovf:Item[rasd:ResourceType=4]/rasd:VirtualQuantity") == ["2048"]
    assert texts(root, "//vssd:VirtualSystemType") == ["vmx-10"]


def test_references_and_disks_match_the_files(disk_files):
    root = parse(write_descriptor(appliance(disk_files, 3)))
    files = root.xpath("//ovf:References/ovf:File", namespaces=NS)
    assert [f.get("{%s}size" % OVF1) for f in files] == [str(r.size) for r in disk_files]
    assert [f.get("{%s}compression" % OVF1) for f in files] == [None, "gzip", None]
    assert [f.get("{%s}chunkSize" % OVF1) for f in files] == [None, None, "4096"]
    disks = root.xpath("//ovf:Disk", namespaces=NS)
    assert [d.get("{%s}capacity" % OVF1) for d in disks] == [str(n * GIB) for n in (1, 2, 3)]
    assert {d.get("{%s}capacityAllocationUnits" % OVF1) for d in disks} == {"byte"}
    assert {d.get("{%s}format" % OVF1) for d in disks} == {VMDK}
    assert [d.get("{%s}populatedSize" % OVF1) for d in disks] == [str(5 << 20), None, None]


def test_file_sizes_are_the_real_lengths(package):
    """ovf:size is the stored length: the file on disk, or its chunks summed."""
    folder, refs = package
    root = parse(write_descriptor(appliance(refs, 3)))
    on_disk = {}
    for name in sorted(os.listdir(folder)):
        href = name.rsplit(".", 1)[0] if name[-9:].isdigit() else name
        on_disk[href] = on_disk.get(href, 0) + os.path.getsize(os.path.join(folder, name))
    for href, size in zip(texts(root, "//ovf:File/@ovf:href"),
                          texts(root, "//ovf:File/@ovf:size"), strict=True):
        assert int(size) == on_disk[href] > 0
    assert texts(root, "//ovf:File[@ovf:chunkSize]/@ovf:href") == ["disk2.vmdk"]
    assert len([n for n in os.listdir(folder) if n.startswith("disk2.vmdk.")]) > 1


def test_nics_and_networks(disk_files):
    root = parse(write_descriptor(appliance(disk_files, 1, 2), nic_model="VmxNet3"))
    assert texts(root, "//ovf:NetworkSection/ovf:Network/@ovf:name") == ["br0", "backend"]
    nics = "//ovf:Item[rasd:ResourceType=10]"
    assert texts(root, nics + "/rasd:Connection") == ["br0", "backend"]
    assert texts(root, nics + "/rasd:Address") == ["aa:00:00:11:22:33", "aa:00:00:44:55:66"]
    assert texts(root, nics + "/rasd:ResourceSubType") == ["VmxNet3", "VmxNet3"]
    assert texts(root, nics + "/rasd:AutomaticAllocation") == ["true", "true"]


@pytest.mark.parametrize("nic,network", [
    (model.Nic(network="lan", ganeti_network="gnet", link="br0"), "lan"),
    (model.Nic(ganeti_network="gnet", link="br0"), "gnet"),
    (model.Nic(link="br0"), "br0"),
    (model.Nic(), "VM Network"),
])
def test_nic_without_network_gets_one(disk_files, nic, network):
    app = appliance(disk_files, 1)
    system = app.systems[0]
    app = model.Appliance("1.0", (model.VirtualSystem(
        system.system_id, system.name, vcpus=1, memory_mib=512, disks=system.disks,
        nics=(nic, nic, model.Nic(model="PCNet32")), ganeti=GANETI),), app.files)
    data = write_descriptor(app)
    validate_ovf10(data)
    root = parse(data)
    names = texts(root, "//ovf:NetworkSection/ovf:Network/@ovf:name")
    assert names == ([network] if network == "VM Network" else [network, "VM Network"])
    assert texts(root, "//ovf:Item[rasd:ResourceType=10]/rasd:ResourceSubType") == [
        "E1000", "E1000", "PCNet32"]
    assert texts(root, "//ovf:Item[rasd:ResourceType=10]/rasd:Address") == []


def test_many_disks_use_more_controllers_and_skip_unit_7(tmp_path):
    files = tuple(model.FileRef("f%d" % i, "d%d.vmdk" % i, 100) for i in range(17))
    disks = tuple(model.Disk("d%d" % i, GIB, files[i], "vmdk") for i in range(17))
    app = model.Appliance("1.0", (model.VirtualSystem(
        "big", vcpus=1, memory_mib=128, disks=disks),), files)
    data = write_descriptor(app)
    validate_ovf10(data)
    root = parse(data)
    controllers = texts(root, "//ovf:Item[rasd:ResourceType=6]/rasd:InstanceID")
    assert len(controllers) == 2
    assert texts(root, "//ovf:Item[rasd:ResourceType=6]/rasd:Address") == ["0", "1"]
    disk_items = root.xpath("//ovf:Item[rasd:ResourceType=17]", namespaces=NS)
    placed = [(item.findtext("rasd:Parent", namespaces=NS),
               item.findtext("rasd:AddressOnParent", namespaces=NS)) for item in disk_items]
    assert len(set(placed)) == 17
    assert all(unit != "7" for _, unit in placed)
    assert [p for p, _ in placed].count(controllers[0]) == 15
    ids = texts(root, "//ovf:Item/rasd:InstanceID")
    assert len(ids) == len(set(ids))


# --- the Ganeti section ------------------------------------------------------------

def test_ganeti_section_contents(disk_files):
    data = write_descriptor(appliance(disk_files, 3, 2))
    root = parse(data)
    (section,) = root.xpath("/ovf:Envelope/ovf:VirtualSystem/ovf:VirtualHardwareSection/"
                            "gnt:GanetiSection", namespaces=NS)
    assert section.get("{%s}required" % OVF1) == "false"

    def one(path):
        return texts(section, path)

    assert one("gnt:Version") == ["0"]
    assert one("gnt:DiskTemplate") == ["drbd"]
    assert one("gnt:AutoBalance") == ["True"]
    assert one("gnt:Tags") == ["web,prod:eu"]
    assert one("gnt:OperatingSystem/gnt:Name") == ["debootstrap+bookworm"]
    assert one("gnt:OperatingSystem/gnt:Parameters/gnt:dhcp") == ["yes"]
    # "Parameter" itself and names XML cannot spell use the generic form.
    assert one("gnt:OperatingSystem/gnt:Parameters/gnt:Parameter[@gnt:name='Parameter']") == [
        "p"]
    assert one("gnt:Hypervisor/gnt:Name") == ["kvm"]
    hv = "gnt:Hypervisor/gnt:Parameters/"
    assert one(hv + "gnt:kernel_path") == [None]  # empty value: empty element
    assert one(hv + "gnt:root_path") == ["/dev/vda1"]
    assert one(hv + "gnt:Parameter[@gnt:name='9p:share']") == ["yes"]
    assert one(hv + "gnt:Parameter[@gnt:name='xmlish']") == ["1"]
    backend = [(etree.QName(e).localname, e.text)
               for e in section.xpath("gnt:Backend/gnt:Parameters/*", namespaces=NS)]
    assert backend == list(GANETI.backend_params)
    assert b"secret" not in data and b"password" not in data
    assert one("gnt:Network/gnt:Nic/@ovf:name") == ["br0", "backend"]
    assert one("gnt:Network/gnt:Nic[1]/*/text()") == [
        "bridged", "aa:00:00:11:22:33", "192.0.2.10", "br0", "eth0"]
    assert [etree.QName(e).localname for e in section.xpath(
        "gnt:Network/gnt:Nic[2]/*", namespaces=NS)] == [
        "Mode", "MACAddress", "Link", "Net", "Vlan"]
    assert one("gnt:Network/gnt:Nic[2]/gnt:Vlan") == [".100"]
    assert one("gnt:Disks/gnt:Disk/@ovf:diskId") == ["vmdisk1", "vmdisk2", "vmdisk3"]
    assert one("gnt:Disks/gnt:Disk/gnt:Name") == ["disk0", "disk2"]


def test_ganeti_section_omits_unknown_values(disk_files):
    settings = model.GanetiSettings(os_name="noop")
    root = parse(write_descriptor(appliance(disk_files, 1, 0, settings)))
    (section,) = root.xpath("//gnt:GanetiSection", namespaces=NS)
    assert [etree.QName(e).localname for e in section] == [
        "Info", "OperatingSystem", "Disks"]
    assert texts(section, "gnt:OperatingSystem/*/text()") == ["noop"]


def test_output_is_deterministic_utf8(disk_files):
    app = appliance(disk_files, 3, 2, name="wébserver-ü")
    first = write_descriptor(app)
    second = write_descriptor(app)
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(second).hexdigest()
    assert first.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Envelope ')
    assert "wébserver-ü".encode("utf-8") in first
    assert b"\n    <File " in first  # pretty-printed
    validate_ovf10(first)


# --- operating system ---------------------------------------------------------------

@pytest.mark.parametrize("os_name,cim_id,vmw", [
    ("debootstrap+default", 96, "otherLinux64Guest"),
    ("image+debian11", 96, "debian11_64Guest"),
    ("image+ubuntu-22.04", 94, "ubuntu64Guest"),
    ("debootstrap+ubuntu", 94, "ubuntu64Guest"),
    ("instance-image+centos7", 107, "centos7_64Guest"),
    ("image+rhel9", 80, "rhel9_64Guest"),
    ("image+fedora", 101, "fedora64Guest"),
    ("image+sles15", 85, "sles15_64Guest"),
    ("snf-image+windows", 102, None),
    ("image+win2008r2", 103, "windows7Server64Guest"),
    ("image+freebsd13", 78, "freebsd64Guest"),
    ("noop", 101, "otherLinux64Guest"),
    (None, 101, "otherLinux64Guest"),
])
def test_operating_system_from_ganeti_os(disk_files, os_name, cim_id, vmw):
    settings = model.GanetiSettings(os_name=os_name)
    data = write_descriptor(appliance(disk_files, 1, 0, settings))
    validate_ovf10(data)
    (section,) = parse(data).xpath("//ovf:OperatingSystemSection", namespaces=NS)
    assert section.get("{%s}id" % OVF1) == str(cim_id)
    assert section.get("{%s}osType" % versions.VMW_NS) == vmw
    assert section.findtext("ovf:Description", namespaces=NS) == \
        osids.os_type_for(os_name).description


def test_operating_system_from_model_wins(disk_files):
    app = appliance(disk_files, 1, 0, GANETI, os_id=80, os_description="RHEL 8")
    (section,) = parse(write_descriptor(app)).xpath("//ovf:OperatingSystemSection",
                                                    namespaces=NS)
    assert section.get("{%s}id" % OVF1) == "80"
    assert section.get("{%s}osType" % versions.VMW_NS) is None
    assert section.findtext("ovf:Description", namespaces=NS) == "RHEL 8"


# --- refusals -------------------------------------------------------------------------

def _replace_system(app: model.Appliance, **changes) -> model.Appliance:
    fields = dict(app.systems[0].__dict__)
    fields.update(changes)
    return model.Appliance(app.ovf_version, (model.VirtualSystem(**fields),), app.files)


def _bad_cases(files):
    base = appliance(files, 2, 2)
    system = base.systems[0]
    disk = system.disks[0]
    yield "version", base, {"ovf_version": "0.9"}
    yield "version", base, {"ovf_version": "3.0"}
    yield "exactly one", model.Appliance("1.0", (system, system), base.files), {}
    yield "exactly one", model.Appliance("1.0", ()), {}
    yield "not in References", model.Appliance("1.0", base.systems, base.files[1:]), {}
    yield "used twice", _replace_system(base, disks=(disk, disk)), {}
    yield "vcpus and memory", _replace_system(base, vcpus=None), {}
    yield "vcpus", _replace_system(base, vcpus=0), {}
    yield "capacity", _replace_system(base, disks=(model.Disk("x", 0),)), {}
    yield "no format", _replace_system(
        base, disks=(model.Disk(disk.disk_id, GIB, disk.file),)), {}
    yield "compression", model.Appliance("1.0", base.systems, (
        model.FileRef("file1", "disk0.vmdk", 1, "bzip2"), base.files[1])), {}
    yield "bare file name", model.Appliance("1.0", base.systems, (
        model.FileRef("file1", "../disk0.vmdk", 1), base.files[1])), {}
    yield "bare file name", model.Appliance("1.0", base.systems, (
        model.FileRef("file1", "/etc/passwd", 1), base.files[1])), {}
    yield "bare file name", model.Appliance("1.0", base.systems, (
        model.FileRef("file1", "http:disk0.vmdk", 1), base.files[1])), {}
    yield "differs from", model.Appliance("1.0", base.systems, (
        dataclasses.replace(base.files[0], size=1), base.files[1])), {}
    yield "comma", _replace_system(base, ganeti=model.GanetiSettings(tags=("a,b",))), {}
    yield "U+0007", _replace_system(base, ganeti=model.GanetiSettings(
        hypervisor_params=(("kernel_args", "ro\x07"),))), {}
    yield "U+000A", _replace_system(base, name="two\nlines"), {}
    yield "given twice", _replace_system(base, ganeti=model.GanetiSettings(
        os_params=(("a", "1"), ("a", "2")))), {}
    yield "must be a string", _replace_system(base, ganeti=model.GanetiSettings(
        backend_params=(("maxmem", 1024),))), {}
    yield "out of range", _replace_system(base, os_id=70000), {}
    yield "hardware family", base, {"hardware_family": ""}


def test_refusals_are_descriptor_errors(disk_files):
    cases = list(_bad_cases(disk_files))
    assert len(cases) == 22
    for expected, app, options in cases:
        with pytest.raises(DescriptorError) as caught:
            write_descriptor(app, **options)
        message = str(caught.value)
        assert expected in message and "\n" not in message, message


# --- round trip through our reader ----------------------------------------------------

# The reader refuses parameter names that cannot be config.ini keys (":"), so
# the round trip uses names it takes, including ones written generically.
GANETI_RT = dataclasses.replace(
    GANETI, hypervisor_params=(("kernel_path", ""), ("root_path", "/dev/vda1"),
                               ("9pshare", "yes"), ("xmlish", "1")))


def _expected_back(app: model.Appliance, version: str, external: bool) -> model.Appliance:
    """What the reader must return: the model, plus what the writer filled in."""
    system = app.systems[0]
    nics = []
    for nic in system.nics:
        network = nic.network or nic.ganeti_network or nic.link or "VM Network"
        if external:
            nic = model.Nic(mac=nic.mac)
        nics.append(dataclasses.replace(nic, network=network, model=nic.model or "E1000"))
    disks = system.disks
    ganeti = None
    if not external and system.ganeti is not None:
        ganeti = dataclasses.replace(system.ganeti, os_private_params=())
    else:
        disks = tuple(dataclasses.replace(disk, name=None) for disk in disks)
    # The writer puts every disk without a controller on SCSI (lsilogic),
    # controller item 3 (after CPU and memory), at the units vSphere allows.
    controller = model.Controller(6, "lsilogic", "0", "Item 3")
    disks = tuple(dataclasses.replace(disk, controller=controller, unit=str(unit))
                  for disk, unit in zip(disks, SCSI_UNITS[:len(disks)], strict=True))
    os_type = osids.os_type_for(system.ganeti.os_name if system.ganeti else None)
    system = dataclasses.replace(
        system, os_id=os_type.cim_id, os_description=os_type.description,
        hardware_family="vmx-10", nics=tuple(nics), disks=disks, ganeti=ganeti,
        vmware_os_type=osids.vmware_guest_id(system.ganeti.os_name if system.ganeti else None))
    return model.Appliance(version, (system,), app.files)


@pytest.mark.parametrize("ovf_version,external", [
    ("1.0", False), ("1.0", True), ("2.0", False), ("2.0", True)])
def test_round_trip_through_reader(disk_files, ovf_version, external):
    app = appliance(disk_files, 3, 2, GANETI_RT)
    data = write_descriptor(app, ovf_version=ovf_version, external=external)
    back = parse_descriptor(data, source="written.ovf")
    version = {"1.0": "1.x", "2.0": "2.x"}[ovf_version]
    assert back == _expected_back(app, version, external)
    # And writing what was read gives the same descriptor again.
    again = model.Appliance(ovf_version, back.systems, back.files)
    assert write_descriptor(again, ovf_version=ovf_version, external=external) == data


def test_round_trip_minimal(disk_files):
    app = appliance(disk_files, 1, 0, None)
    back = parse_descriptor(write_descriptor(app), source="written.ovf")
    assert back == _expected_back(app, "1.x", True)


def test_href_is_percent_encoded_and_read_back(tmp_path):
    ref = model.FileRef("file1", "web 1 disk#0.vmdk", 10)
    app = model.Appliance("1.0", (model.VirtualSystem(
        "web1", vcpus=1, memory_mib=256,
        disks=(model.Disk("d0", GIB, ref, VMDK),)),), (ref,))
    data = write_descriptor(app)
    validate_ovf10(data)
    assert texts(parse(data), "//ovf:File/@ovf:href") == ["web%201%20disk%230.vmdk"]
    back = parse_descriptor(data, source="written.ovf")
    assert back.files == (ref,)
    assert back.systems[0].disks[0].file == ref


# --- disk controllers (cluster/hardware_map.py chooses them on export) --------

@pytest.mark.parametrize("controller, per_bus, subtype", [
    (model.Controller(5), 2, None),
    (model.Controller(20, "AHCI"), 30, "AHCI"),
    (model.Controller(6, "lsilogic virtio"), 15, "lsilogic virtio"),
])
def test_disks_on_the_controller_the_model_names(disk_files, controller, per_bus, subtype):
    base = appliance(disk_files, 3, 1, GANETI_RT)
    system = base.systems[0]
    system = dataclasses.replace(system, disks=tuple(
        dataclasses.replace(disk, controller=controller) for disk in system.disks))
    data = write_descriptor(model.Appliance("1.0", (system,), base.files))
    validate_ovf10(data)
    root = parse(data)
    rtype = str(controller.resource_type)
    buses = texts(root, "//ovf:Item[rasd:ResourceType='%s']/rasd:Address" % rtype)
    assert buses == (["0", "1"] if per_bus == 2 else ["0"])
    assert texts(root, "//ovf:Item[rasd:ResourceType='%s']/rasd:ResourceSubType"
                 % rtype) == ([subtype] * len(buses) if subtype else [])
    back = parse_descriptor(data, source="written.ovf").systems[0]
    assert [(d.controller.resource_type, d.controller.subtype, d.controller.address,
             d.unit) for d in back.disks] == [
        (controller.resource_type, subtype, str(index // per_bus),
         str(index % per_bus)) for index in range(3)]


def test_too_many_disks_for_ide_are_refused(disk_files):
    base = appliance(disk_files, 3, 0, None)
    disk = dataclasses.replace(base.systems[0].disks[0], controller=model.Controller(5))
    disks = tuple(dataclasses.replace(disk, disk_id="d%d" % i) for i in range(5))
    system = dataclasses.replace(base.systems[0], disks=disks)
    with pytest.raises(DescriptorError, match="5 disks do not fit on 2 IDE controllers"):
        write_descriptor(model.Appliance("1.0", (system,), base.files))
