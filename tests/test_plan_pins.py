"""Pins of the plan's Ganeti counts that a mutation run found untested: a
package may bring as many disks and NICs as Ganeti allows, not one more."""

import dataclasses

import pytest
from ganeti import constants

from ganeti_ovf.errors import OptionError
from ganeti_ovf.model import Disk, FileRef, Nic, VirtualSystem
from ganeti_ovf.plan import ImportOverrides, make_plan

SYSTEM = VirtualSystem(system_id="vm", name="appliance", vcpus=1, memory_mib=256)


def with_disks(count: int) -> VirtualSystem:
    disks = tuple(Disk("d%d" % i, 2 ** 20, FileRef("f%d" % i, "d%d.vmdk" % i))
                  for i in range(count))
    return dataclasses.replace(SYSTEM, disks=disks)


def with_nics(count: int) -> VirtualSystem:
    return dataclasses.replace(SYSTEM, nics=tuple(Nic() for _ in range(count)))


def test_disk_count_bound():
    assert constants.MAX_DISKS == 16
    assert len(make_plan(with_disks(16), ImportOverrides()).system.disks) == 16
    with pytest.raises(OptionError, match="the package has 17 disks; Ganeti allows 16"):
        make_plan(with_disks(17), ImportOverrides())


def test_nic_count_bound():
    assert constants.MAX_NICS == 8
    assert len(make_plan(with_nics(8), ImportOverrides()).system.nics) == 8
    with pytest.raises(OptionError, match="the package has 9 NICs; Ganeti allows 8"):
        make_plan(with_nics(9), ImportOverrides())
    overrides = ImportOverrides(nics={7: {"mode": "bridged"}})
    assert len(make_plan(with_nics(0), overrides).system.nics) == 8
    with pytest.raises(OptionError, match="--net index 8 is over Ganeti's limit of 8 NICs"):
        make_plan(with_nics(0), ImportOverrides(nics={8: {"mode": "bridged"}}))
