"""The descriptor reader on the long tail of real exports (issue 12): each
pattern in the shape the tool that writes it uses, values asserted."""

import pytest
import realworld
from realworld import GIB, MIB

from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError


def parse(data, profile=None):
    return parse_descriptor(data, profile=profile, source="test.ovf")


@pytest.mark.parametrize("profile", ["tiny", "small"])
def test_vcenter_appliance_every_disk_item_is_a_disk(profile):
    appliance = parse(realworld.vcenter_appliance(), profile)
    system = appliance.system()
    # 3 system disks, 11 storage disks naming 2-3 DiskSection disks several
    # times, and one disk sized by its item alone: 15 disks.
    assert len(system.disks) == 15
    assert [disk.capacity for disk in system.disks] == realworld.vcenter_capacities(profile)
    ids = [disk.disk_id for disk in system.disks]
    assert ids[:3] == ["disk1", "disk2", "disk3"]
    assert ids[3:14] == list(realworld.VCENTER_STORAGE[profile])
    assert ids[14] == "item30"
    assert [d.file.href for d in system.disks[:3]] == [
        "VMware-vCenter-Server-Appliance-9.1.0.0-disk%d.vmdk" % n for n in (1, 2, 3)]
    assert all(disk.blank for disk in system.disks[3:])
    assert (system.vcpus, system.memory_mib) == (realworld.VCENTER_CPUS[profile],
                                                 realworld.VCENTER_MEMORY_MIB[profile])
    assert appliance.profile == profile
    assert not any("again" in w or "HostResource" in w for w in appliance.warnings)


def test_vcenter_default_profile_is_tiny():
    appliance = parse(realworld.vcenter_appliance())
    assert appliance.profile == "tiny"
    assert len(appliance.system().disks) == 15


@pytest.mark.parametrize("units, capacity", [
    (("AllocationUnits", "byte * 2^30"), 3 * GIB),
    (("VirtualQuantityUnits", "byte * 2^20"), 3 * MIB),
    (("AllocationUnits", "GigaBytes"), 3 * GIB),
])
def test_disk_item_without_host_resource_is_blank(units, capacity):
    data = realworld.ovftool_descriptor(hrefs=(), sizes=()).replace(
        b"</VirtualHardwareSection>",
        realworld._item(17, 7, units, ("VirtualQuantity", 3)).encode()
        + b"</VirtualHardwareSection>")
    [disk] = parse(data).system().disks
    assert (disk.blank, disk.capacity, disk.disk_id) == (True, capacity, "item7")


def test_disk_item_without_units_is_bytes_with_a_warning():
    data = realworld.ovftool_descriptor(hrefs=(), sizes=()).replace(
        b"</VirtualHardwareSection>",
        realworld._item(17, 7, ("VirtualQuantity", 1 << 30)).encode()
        + b"</VirtualHardwareSection>")
    appliance = parse(data)
    assert appliance.system().disks[0].capacity == GIB
    assert any("taken as bytes" in w for w in appliance.warnings)


@pytest.mark.parametrize("quantity, fragment", [("0", "less than 1"), ("-5", "plain decimal"),
                                                ("ten", "plain decimal")])
def test_disk_item_with_a_bad_quantity_is_refused(quantity, fragment):
    data = realworld.ovftool_descriptor(hrefs=(), sizes=()).replace(
        b"</VirtualHardwareSection>",
        realworld._item(17, 7, ("AllocationUnits", "byte"),
                        ("VirtualQuantity", quantity)).encode()
        + b"</VirtualHardwareSection>")
    with pytest.raises(DescriptorError, match="VirtualQuantity.*%s" % fragment):
        parse(data)


def test_ovftool_disks_folder_and_double_dot_name():
    system = parse(realworld.ovftool_descriptor()).system()
    assert [(d.file.href, d.capacity) for d in system.disks] == [
        ("disks/disk1.vmdk", 24 * MIB), ("disks/sun..vhw-disk2.img", 8 * MIB)]
    assert system.name == "ttylinux.example.com"


@pytest.mark.parametrize("href, fragment", [
    ("../disk.vmdk", "'..' path component"),
    ("disks/../../etc/passwd", "'..' path component"),
    ("/etc/passwd", "absolute path"),
    ("%2Fetc%2Fpasswd", "absolute path"),
    ("disks%2F..%2F..%2Fsecret", "percent-encoded '/'"),
    ("%2e%2e/secret", "'..' path component"),
    ("disks\\disk1.vmdk", "backslash"),
    ("C:disk1.vmdk", "drive letter"),
    ("c:/disks/disk1.vmdk", "drive letter"),
    ("http://example.com/disk1.vmdk", "URLs are refused"),
    ("file:///etc/passwd", "URLs are refused"),
    ("disks//disk1.vmdk", "empty or '.' path component"),
    ("disks/./disk1.vmdk", "empty or '.' path component"),
    ("disks/", "empty or '.' path component"),
])
def test_unsafe_hrefs_name_the_rule(href, fragment):
    data = realworld.ovftool_descriptor(hrefs=(href,), sizes=(MIB,))
    with pytest.raises(DescriptorError) as caught:
        parse(data)
    message = str(caught.value)
    assert "\n" not in message and "File file1 ovf:href" in message
    assert fragment in message, message


@pytest.mark.parametrize("href, read", [
    ("sun..vhw-disk1.vmdk", "sun..vhw-disk1.vmdk"),
    ("./disks/disk%201.vmdk", "disks/disk 1.vmdk"),
    ("a..b/c...vmdk", "a..b/c...vmdk"),
])
def test_safe_hrefs(href, read):
    data = realworld.ovftool_descriptor(hrefs=(href,), sizes=(MIB,))
    assert parse(data).system().disks[0].file.href == read


@pytest.mark.parametrize("declare", [True, False], ids=["prefixes", "nothing-declared"])
def test_suse_envelope_without_namespace(declare):
    appliance = parse(realworld.suse_descriptor(declare_prefixes=declare))
    assert appliance.ovf_version == "1.x"
    system = appliance.system()
    assert (system.system_id, system.name, system.vcpus, system.memory_mib, system.os_id) \
        == ("SLES15-SP6-Minimal-VM", "sles15-minimal", 2, 2048, 85)
    assert system.os_description == "SUSE Linux Enterprise 15 (64-bit)"
    [disk] = system.disks
    assert (disk.disk_id, disk.capacity, disk.file.href) == (
        "vmdisk1", 24 * GIB, "SLES15-SP6-Minimal-VM.x86_64-kvm-and-xen.vmdk")
    assert [(n.network, n.model) for n in system.nics] == [("bridged", "virtio")]
    assert any("no namespace" in w for w in appliance.warnings)
    assert any("undeclared namespace prefix" in w for w in appliance.warnings) != declare


def test_undeclared_prefix_does_not_hide_real_errors():
    data = realworld.suse_descriptor(declare_prefixes=False).replace(b"</Envelope>", b"")
    with pytest.raises(DescriptorError, match="invalid XML"):
        parse(data)


def test_vapp_systems_and_harmless_wrong_values():
    appliance = parse(realworld.vapp())
    assert [(s.system_id, s.name) for s in appliance.systems] == [
        ("web", "web.example.com"), ("db", "db.example.com")]
    web, db = appliance.systems
    assert [(d.disk_id, d.capacity) for d in web.disks] == [("vmdisk-web", 16 * MIB)]
    assert [(d.disk_id, d.capacity) for d in db.disks] == [("vmdisk-db", 12 * MIB)]
    assert (web.os_id, db.os_id) == (96, None)
    assert (web.memory_mib, db.memory_mib) == (512, 1024)
    sizes = {ref.href: ref.size for ref in appliance.files}
    assert sizes == {"web-disk1.vmdk": 16 * MIB, "db-disk1.vmdk": None}
    warnings = " | ".join(appliance.warnings)
    assert "not a valid URI" in warnings and "cim2608 schema" in warnings
    assert "ovf:size '-1'" in warnings
    assert "ovf:id '-1' is not a CIM OS id" in warnings


@pytest.mark.parametrize("size", ["-1", "99999999999999999999999", "${file.size}", "1.5G"])
def test_harmless_ovf_size_values_are_warnings(size):
    data = realworld.vapp().replace(b'ovf:size="-1"', b'ovf:size="%s"' % size.encode())
    appliance = parse(data)
    assert [ref.size for ref in appliance.files] == [16 * MIB, None]
    assert any("not a byte count" in w for w in appliance.warnings)


@pytest.mark.parametrize("os_id", ["-1", "-200", "abc", "70000"])
def test_unusable_os_ids_are_warnings(os_id):
    data = realworld.vapp().replace(b'ovf:id="-1"', b'ovf:id="%s"' % os_id.encode())
    appliance = parse(data)
    assert appliance.systems[1].os_id is None
    assert any("the OS is unknown" in w for w in appliance.warnings)
