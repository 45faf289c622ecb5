"""cluster/hardware_map.py: the tables against Ganeti's constants, import
mapping per case, plan.py applying it, and the export direction."""

import dataclasses

import pytest
from ganeti import constants

from ganeti_ovf import model, plan
from ganeti_ovf.cluster import hardware_map as hm


def system(controller=None, nic_models=(), **fields):
    disks = (model.Disk("d1", 1 << 20, controller=controller),) if controller else ()
    return model.VirtualSystem("vm", name="vm", vcpus=fields.pop("vcpus", 4),
                               memory_mib=128, disks=disks,
                               nics=tuple(model.Nic(model=m) for m in nic_models), **fields)


def params(mapping):
    return {p.name: p.value for p in mapping.params}


def test_every_table_value_is_a_valid_ganeti_value():
    valid = {
        (hm.KVM, hm.HV_DISK_TYPE): constants.HT_KVM_VALID_DISK_TYPES,
        (hm.KVM, hm.HV_SCSI_CONTROLLER): constants.HT_KVM_VALID_SCSI_CONTROLLER_TYPES,
        (hm.KVM, hm.HV_NIC_TYPE): constants.HT_KVM_VALID_NIC_TYPES,
        (hm.XEN_HVM, hm.HV_DISK_TYPE): constants.HT_HVM_VALID_DISK_TYPES,
        (hm.XEN_HVM, hm.HV_NIC_TYPE): constants.HT_HVM_VALID_NIC_TYPES,
    }
    for row in hm.CONTROLLERS + hm.NICS:
        assert row.why
        for hypervisor, values in ((hm.KVM, row.kvm), (hm.XEN_HVM, row.xen_hvm)):
            for name, value in values:
                assert value in valid[(hypervisor, name)], (row, name, value)


@pytest.mark.parametrize("rtype, subtype, expected", [
    (5, None, {"disk_type": "ide"}),
    (5, "PIIX4", {"disk_type": "ide"}),
    (6, "lsilogic", {"disk_type": "scsi-hd", "scsi_controller_type": "lsi"}),
    (6, None, {"disk_type": "scsi-hd", "scsi_controller_type": "lsi"}),
    (6, "BusLogic", {"disk_type": "scsi-hd", "scsi_controller_type": "lsi"}),
    (6, "lsilogicsas", {"disk_type": "scsi-hd", "scsi_controller_type": "megasas"}),
    (6, "VirtualSCSI", {"disk_type": "ide"}),
    (6, "virtio lsilogic", {"disk_type": "paravirtual"}),
    (6, "lsilogic virtio", {"disk_type": "paravirtual"}),
    (20, "AHCI", {"disk_type": "ide"}),
    (20, "vmware.sata.ahci", {"disk_type": "ide"}),
    (20, "vmware.nvme.controller", {"disk_type": "ide"}),
    (0, "VirtIO", {"disk_type": "paravirtual"}),
    (0, "VirtIO_SCSI", {"disk_type": "scsi-hd",
                        "scsi_controller_type": "virtio-scsi-pci"}),
])
def test_controllers_for_kvm(rtype, subtype, expected):
    mapping = hm.import_mapping(system(model.Controller(rtype, subtype, "0", "Item 3")), "kvm")
    assert params(mapping) == expected and not mapping.notes


@pytest.mark.parametrize("subtype, kvm, xen", [
    ("E1000", "e1000", "e1000"), ("e1000e", "e1000", "e1000"),
    ("PCNet32", "pcnet", "e1000"), ("virtio", "paravirtual", "paravirtual"),
    ("VmxNet3", "e1000", "e1000"), ("VMXNET3 virtio", "paravirtual", "paravirtual"),
    ("3", "paravirtual", "paravirtual"), ("rtl8139", "rtl8139", "rtl8139"),
])
def test_nic_models(subtype, kvm, xen):
    assert params(hm.import_mapping(system(nic_models=(subtype,)), "kvm")) == \
        {"nic_type": kvm}
    assert params(hm.import_mapping(system(nic_models=(subtype,)), "xen-hvm")) == \
        {"nic_type": xen}


def test_unknown_values_warn_and_set_nothing_or_the_default():
    mapping = hm.import_mapping(system(model.Controller(20, "floppybus", None, "Item 3"),
                                       nic_models=("tulip",)), "kvm")
    assert params(mapping) == {}
    assert any("disk controller Item 3 (ResourceType 20, floppybus) is not known" in n
               for n in mapping.notes)
    assert any("NIC model 'tulip' is not known" in n for n in mapping.notes)
    scsi = hm.import_mapping(system(model.Controller(6, "mystery", None, "Item 3")), "kvm")
    assert params(scsi)["disk_type"] == "scsi-hd" and "not known" in scsi.notes[0]


def test_windows_topology_and_efi():
    mapping = hm.import_mapping(system(os_id=103, cores_per_socket=2, firmware="efi"), "kvm")
    assert params(mapping) == {"use_localtime": "true", "cpu_cores": "2", "cpu_sockets": "2"}
    assert any("UEFI" in note and "kvm_extra" in note for note in mapping.notes)
    assert params(hm.import_mapping(system(vmware_os_type="windows9_64Guest"), "xen-hvm")) \
        == {"use_localtime": "true"}
    odd = hm.import_mapping(system(cores_per_socket=3), "kvm")
    assert params(odd) == {} and "does not divide" in odd.notes[0]


def test_other_hypervisors_get_nothing():
    assert hm.import_mapping(system(model.Controller(5), ("E1000",)), "fake").params == ()


def test_plan_applies_where_operator_and_package_are_silent():
    vm = system(model.Controller(6, "lsilogic", None, "Item 3"), ("E1000",), os_id=103)
    result = plan.make_plan(vm, plan.ImportOverrides(default_hypervisor="kvm"))
    settings = result.system.ganeti
    assert settings.hypervisor == "kvm"
    assert dict(settings.hypervisor_params) == {
        "disk_type": "scsi-hd", "scsi_controller_type": "lsi", "nic_type": "e1000",
        "use_localtime": "true"}
    assert [p.name for p in result.hardware] == [
        "disk_type", "scsi_controller_type", "nic_type", "use_localtime"]
    # -H wins, with its whole group (disk_type goes with scsi_controller_type).
    result = plan.make_plan(vm, plan.ImportOverrides(
        hypervisor="kvm", hypervisor_params={"disk_type": "paravirtual"}))
    assert dict(result.system.ganeti.hypervisor_params) == {
        "disk_type": "paravirtual", "nic_type": "e1000", "use_localtime": "true"}
    # The package's own Ganeti section wins too.
    own = dataclasses.replace(vm, ganeti=model.GanetiSettings(
        hypervisor="kvm", hypervisor_params=(("nic_type", "paravirtual"),)))
    assert dict(plan.make_plan(own, plan.ImportOverrides()).system.ganeti
                .hypervisor_params)["nic_type"] == "paravirtual"


def test_plan_without_a_hypervisor_says_what_it_would_set():
    vm = system(model.Controller(5), ("E1000",))
    result = plan.make_plan(vm, plan.ImportOverrides())
    assert result.hardware == () and result.system.ganeti.hypervisor is None
    assert any("not mapped (disk_type=ide, nic_type=e1000)" in w for w in result.warnings)


@pytest.mark.parametrize("hv, override, expected", [
    ({"disk_type": "ide"}, None, (5, None)),
    ({"disk_type": "scsi-hd", "scsi_controller_type": "megasas"}, None, (6, "lsilogicsas")),
    ({"disk_type": "paravirtual"}, None, (6, "lsilogic virtio")),
    ({}, None, (6, "lsilogic")),
    ({"disk_type": "ide"}, "sata", (20, "AHCI")),
])
def test_export_controller(hv, override, expected):
    assert hm.export_controller(hv, override) == expected


def test_export_nic_model_and_round_trip_of_each_type():
    assert hm.export_nic_model({"nic_type": "paravirtual"}, None) == "VmxNet3 virtio"
    assert hm.export_nic_model({}, None) == "E1000"
    assert hm.export_nic_model({"nic_type": "pcnet"}, "VmxNet3") == "VmxNet3"
    for disk_type in ("ide", "paravirtual"):
        rtype, subtype = hm.export_controller({"disk_type": disk_type}, None)
        back = hm.import_mapping(system(model.Controller(rtype, subtype)), "kvm")
        assert params(back)["disk_type"] == disk_type
    for nic_type in ("e1000", "pcnet", "rtl8139", "paravirtual"):
        written = hm.export_nic_model({"nic_type": nic_type}, None)
        assert params(hm.import_mapping(system(nic_models=(written,)), "kvm")) == \
            {"nic_type": nic_type}
