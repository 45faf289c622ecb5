"""Policies of the hostile catalogue (issue 13) that the descriptor and the
plan enforce: two Disks never share one File, and a virtual system with
neither a Name nor an ovf:id names no instance."""

import pytest
from hostile import descriptor

from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError, OptionError
from ganeti_ovf.plan import ImportOverrides, make_plan


def test_two_disks_sharing_one_file_refused():
    data = descriptor()
    assert len(parse_descriptor(data).systems[0].disks) == 1
    second = (b'<Disk ovf:capacity="4194304" ovf:capacityAllocationUnits="byte"'
              b' ovf:diskId="vmdisk1" ovf:fileRef="file0"/>\n  </DiskSection>')
    data = data.replace(b"</DiskSection>", second, 1)
    with pytest.raises(DescriptorError, match="Disk vmdisk1: ovf:fileRef 'file0' is already"
                       " the file of Disk 'vmdisk0'; two disks cannot share one file"):
        parse_descriptor(data)


def test_system_without_name_or_id_needs_a_name():
    data = descriptor().replace(b'<VirtualSystem ovf:id="appliance">', b"<VirtualSystem>")
    data = data.replace(b"<Name>appliance.example.com</Name>", b"")
    system = parse_descriptor(data).systems[0]
    assert system.name is None
    with pytest.raises(OptionError, match="the virtual system has neither a Name nor an"
                       " ovf:id; give --name"):
        make_plan(system, ImportOverrides())
    assert make_plan(system, ImportOverrides(name="chosen.example.com")).system.name == \
        "chosen.example.com"
    # An ovf:id alone still names it.
    with_id = parse_descriptor(descriptor().replace(
        b"<Name>appliance.example.com</Name>", b"")).systems[0]
    assert make_plan(with_id, ImportOverrides()).system.name == "appliance"
