"""The instance plan: overrides merged, Ganeti's validators applied."""

import dataclasses
from typing import Optional

import pytest
from ganeti import objects

from ganeti_ovf.cluster import guest_params
from ganeti_ovf.cluster.ganeti_export import ExportedDisk, build_config
from ganeti_ovf.errors import OptionError
from ganeti_ovf.model import Disk, FileRef, GanetiSettings, Nic, VirtualSystem
from ganeti_ovf.plan import ImportOverrides, make_plan

SYSTEM = VirtualSystem(
    system_id="vm", name="appliance", vcpus=2, memory_mib=2048,
    disks=(Disk("d0", 10 * 2**20, FileRef("f0", "a.vmdk")),),
    nics=(Nic(network="NAT", mac="08:00:27:2A:FB:4E"),),
    ganeti=GanetiSettings(hypervisor="kvm", os_name="debootstrap",
                          hypervisor_params=(("kernel_path", "/boot/x"), ("acpi", "True"),
                                             ("kvm_extra", "-drive file=/etc/shadow"),
                                             ("root_path", "/dev/vda1")),
                          os_params=(("script_file", "/etc/x"), ("dhcp", "yes")),
                          tags=("t1",)))


def test_design_document_example():
    overrides = ImportOverrides(
        disk_template="diskless", os_name="lenny-image", hypervisor="xen-pvm",
        backend_params={"vcpus": "1", "memory": "512", "auto_balance": True},
        nics={0: {"mode": "bridged", "link": "xen-br0"}}, name="xen.i1",
        force=True)  # -t diskless drops the package's disk only when forced
    result = make_plan(SYSTEM, overrides).system
    assert result.name == "xen.i1"
    assert result.disks == ()
    assert result.ganeti.disk_template == "diskless"
    assert result.ganeti.os_name == "lenny-image"
    assert result.ganeti.hypervisor == "xen-pvm"
    assert result.ganeti.hypervisor_params == ()  # the package's were for kvm
    backend = dict(result.ganeti.backend_params)
    assert backend == {"vcpus": "1", "maxmem": "512", "minmem": "512",
                       "auto_balance": "True"}
    assert (result.nics[0].mode, result.nics[0].link) == ("bridged", "xen-br0")
    assert result.nics[0].mac == "08:00:27:2a:fb:4e"


def test_host_parameters_dropped_unless_kept():
    result = make_plan(SYSTEM, ImportOverrides())
    params = dict(result.system.ganeti.hypervisor_params)
    assert params == {"acpi": "True", "root_path": "/dev/vda1"}
    assert dict(result.system.ganeti.os_params) == {"dhcp": "yes"}
    assert ("hypervisor", "kvm_extra") in result.dropped_params
    assert any("kernel_path" in w for w in result.warnings)
    kept = make_plan(SYSTEM, ImportOverrides(keep_host_params=True))
    assert dict(kept.system.ganeti.hypervisor_params)["kernel_path"] == "/boot/x"
    assert dict(kept.system.ganeti.os_params)["script_file"] == "/etc/x"


def _config(system: VirtualSystem, overrides: Optional[ImportOverrides] = None):
    """make_plan's result as gnt-backup import reads it: config.ini, parsed."""
    result = make_plan(system, overrides or ImportOverrides())
    text = build_config(result.system, [ExportedDisk("disk0.raw", 10, None)], "node1", 1)
    return objects.SerializableConfigParser.Loads(text), result.warnings


def _with_params(hypervisor: str, hv_params=(), os_params=()) -> VirtualSystem:
    return dataclasses.replace(SYSTEM, ganeti=GanetiSettings(
        hypervisor=hypervisor, os_name="noop", hypervisor_params=hv_params,
        os_params=os_params))


def _rule_warning(warnings, rule: str, name: str) -> bool:
    return any(w.startswith("parameters from the package not applied (%s;" % rule)
               and name in w for w in warnings)


# The names of issue 13: each reached config.ini from a package.
@pytest.mark.parametrize("hypervisor, name, value", [
    ("lxc", "extra_config", "lxc.hook.pre-start = /bin/sh -c 'touch /root/owned'"),
    ("lxc", "extra_cgroups", "devices,memory"),
    ("lxc", "devices", "b 8:0 rwm"),
    ("lxc", "drop_capabilities", ""),  # empty: the container keeps every capability
    ("kvm", "machine_version", "pc,kernel=/etc/shadow"),
    ("kvm", "keymap", "../../../../etc/shadow"),
])
def test_host_parameters_of_issue_13_never_reach_config(hypervisor, name, value):
    cfg, warnings = _config(_with_params(hypervisor, ((name, value),)))
    assert cfg.get("instance", "hypervisor") == hypervisor
    assert not cfg.has_option("hypervisor", name)
    assert _rule_warning(warnings, "not on %s's allow-list of guest-visible parameters"
                         % hypervisor, "hypervisor:%s" % name)
    kept, _ = _config(_with_params(hypervisor, ((name, value),)),
                      ImportOverrides(keep_host_params=True))
    assert kept.get("hypervisor", name) == value


def test_guest_parameters_pass_through():
    cfg, warnings = _config(_with_params("kvm", (
        ("boot_order", "cdrom"), ("nic_type", "e1000"), ("cpu_sockets", "2"),
        ("usb_mouse", "tablet"), ("kernel_args", "ro console=ttyS0,115200"))))
    assert dict(cfg.items("hypervisor")) == {
        "boot_order": "cdrom", "nic_type": "e1000", "cpu_sockets": "2",
        "usb_mouse": "tablet", "kernel_args": "ro console=ttyS0,115200"}
    assert not any("not applied" in w for w in warnings)
    lxc, _ = _config(_with_params("lxc", (("num_ttys", "4"),)))
    assert lxc.get("hypervisor", "num_ttys") == "4"


def test_parameter_unknown_to_the_hypervisor_dropped():
    # disk_type is kvm's, not lxc's; colour is nobody's.
    cfg, warnings = _config(_with_params("lxc", (("disk_type", "ide"), ("colour", "red"))))
    assert cfg.items("hypervisor") == []
    assert _rule_warning(warnings, "not parameters of lxc", "hypervisor:disk_type")
    assert _rule_warning(warnings, "not parameters of lxc", "hypervisor:colour")


def test_guest_parameter_with_a_bad_value_dropped():
    # Xen writes root_path into the domain's config between quotes: a quote
    # would end the string and ';' start a new setting.
    cfg, warnings = _config(_with_params("xen-pvm", (
        ("root_path", "/dev/xvda1' ; bootloader = '/bin/sh"), ("blockdev_prefix", "xvd"),
        ("kernel_args", "ro"))))
    assert dict(cfg.items("hypervisor")) == {"blockdev_prefix": "xvd", "kernel_args": "ro"}
    assert _rule_warning(warnings, "values xen-pvm's allow-list does not accept for them",
                         "hypervisor:root_path")
    cfg, _ = _config(_with_params("kvm", (("acpi", "maybe"), ("disk_type", "nvme"))))
    assert cfg.items("hypervisor") == []


def test_package_parameters_screened_for_the_instance_hypervisor():
    # The package names no hypervisor: the cluster's default decides; none
    # known, nothing can be checked.
    system = dataclasses.replace(SYSTEM, ganeti=GanetiSettings(
        os_name="noop", hypervisor_params=(("extra_config", "x"), ("acpi", "True"))))
    cfg, _ = _config(system, ImportOverrides(default_hypervisor="lxc"))
    assert not cfg.has_option("hypervisor", "extra_config")
    assert not cfg.has_option("hypervisor", "acpi")  # not an lxc parameter
    cfg, warnings = _config(system)
    assert not cfg.has_option("hypervisor", "extra_config")
    assert _rule_warning(warnings, guest_params.NO_HYPERVISOR_RULE, "hypervisor:acpi")


def test_operator_parameters_not_filtered():
    cfg, _ = _config(_with_params("kvm"), ImportOverrides(
        hypervisor_params={"machine_version": "pc-i440fx-7.2", "keymap": "de"},
        os_params={"image": "/srv/images/base.img"}))
    assert cfg.get("hypervisor", "machine_version") == "pc-i440fx-7.2"
    assert cfg.get("hypervisor", "keymap") == "de"
    assert cfg.get("os", "image") == "/srv/images/base.img"


def test_os_parameters_only_plain_words():
    cfg, warnings = _config(_with_params("kvm", os_params=(
        ("dhcp", "yes"), ("image", "/etc/shadow"), ("opts", "-rf"), ("cmd", "a b"),
        ("mirror", "http://deb.example/debian"))))
    assert dict(cfg.items("os")) == {"dhcp": "yes"}
    assert _rule_warning(warnings, guest_params.OS_VALUE_RULE, "os:image")
    assert [w for w in warnings if "os:opts" in w and "os:cmd" in w and "os:mirror" in w]


def test_dropped_names_are_escaped():
    warnings = make_plan(_with_params("kvm", (("evil\x1b[2J", "1"),)),
                         ImportOverrides()).warnings
    assert any("hypervisor:evil\\x1b[2J" in w for w in warnings)


def test_blank_disks_replace_package_disks():
    result = make_plan(SYSTEM, ImportOverrides(blank_disks={0: 2**30, 1: 2**20}))
    assert [d.capacity for d in result.system.disks] == [2**30, 2**20]
    assert all(d.blank for d in result.system.disks)
    with pytest.raises(OptionError, match="no gaps"):
        make_plan(SYSTEM, ImportOverrides(blank_disks={1: 2**20}))


@pytest.mark.parametrize("overrides, message", [
    (ImportOverrides(name="bad name!"), "instance name"),
    (ImportOverrides(disk_template="floppy"), "disk template"),
    (ImportOverrides(hypervisor="vmware"), "hypervisor"),
    (ImportOverrides(os_name="../etc"), "OS name"),
    (ImportOverrides(backend_params={"vcpus": "many"}), "backend"),
    (ImportOverrides(backend_params={"cpu_cap": "1"}), "unknown backend parameter"),
    (ImportOverrides(nics={0: {"mac": "zz:zz"}}), "--net 0"),
    (ImportOverrides(nics={0: {"mode": "nat"}}), "mode"),
    (ImportOverrides(nics={0: {"ip": "300.1.1.1"}}), "IP"),
    (ImportOverrides(nics={0: {"colour": "red"}}), "unknown option"),
    (ImportOverrides(nics={0: {"network": "n", "link": "br0"}}), "network"),
    (ImportOverrides(no_nics=True, nics={0: {}}), "--no-nics"),
    (ImportOverrides(tags=("ok", "b@d tag\n")), "tag"),
])
def test_bad_overrides_are_refused(overrides, message):
    with pytest.raises(OptionError, match=message):
        make_plan(SYSTEM, overrides)


def test_package_values_checked_too():
    bad_mac = VirtualSystem(system_id="x", name="x", nics=(Nic(mac="01:02"),))
    with pytest.raises(OptionError, match="MAC"):
        make_plan(bad_mac, ImportOverrides())
    with pytest.raises(OptionError, match="--name"):
        make_plan(VirtualSystem(system_id="", name=None), ImportOverrides())


def test_nic_overrides_extend_and_no_nics():
    result = make_plan(SYSTEM, ImportOverrides(nics={2: {"mode": "routed", "ip": "192.0.2.9"}}))
    assert len(result.system.nics) == 3
    assert result.system.nics[2].ip == "192.0.2.9"
    assert make_plan(SYSTEM, ImportOverrides(no_nics=True)).system.nics == ()


def test_memory_and_vcpus_from_hardware():
    result = make_plan(SYSTEM, ImportOverrides()).system
    assert (result.vcpus, result.memory_mib) == (2, 2048)
    assert dict(result.ganeti.backend_params)["minmem"] == "2048"


def test_diskless_with_disks_refused_unless_forced():
    with pytest.raises(OptionError, match="-t diskless would drop the package's 1 disk:"
                       " use -f to import without them"):
        make_plan(SYSTEM, ImportOverrides(disk_template="diskless"))
    assert make_plan(SYSTEM, ImportOverrides(disk_template="diskless",
                                             force=True)).system.disks == ()


def test_unresolvable_name_warned_unless_not_checked():
    warned = make_plan(SYSTEM, ImportOverrides(name="nowhere.invalid")).warnings
    assert [w for w in warned if w.startswith(
        "instance name nowhere.invalid does not resolve (DNS or /etc/hosts): Ganeti will"
        " refuse it unless imported with --no-name-check; or choose a name that"
        " resolves with --name")]
    quiet = make_plan(SYSTEM, ImportOverrides(name="nowhere.invalid", name_check=False))
    assert not [w for w in quiet.warnings if "does not resolve" in w]
    assert not [w for w in make_plan(SYSTEM, ImportOverrides(name="localhost")).warnings
                if "does not resolve" in w]


def test_net_map_sets_link_or_network_and_unmapped_networks_warned():
    system = VirtualSystem(system_id="vm", name="appliance", nics=(
        Nic(network="VM Network"), Nic(network="Backup"), Nic(network="VM Network"),
        Nic(network="Storage")))
    result = make_plan(system, ImportOverrides(net_map={"VM Network": "br0",
                                                        "Backup": "network:backnet"}))
    nics = result.system.nics
    assert [(n.link, n.ganeti_network) for n in nics] == [
        ("br0", None), (None, "backnet"), ("br0", None), (None, None)]
    assert [w for w in result.warnings if w.startswith(
        "source network 'Storage' not mapped (--net-map 'NAME=LINK' or"
        " 'NAME=network:NET'): its NICs get the cluster's default NIC mode and link")]
    with pytest.raises(OptionError, match="--net-map Nope: the package has no such network"
                       r" \(it has: Backup, Storage, VM Network\)"):
        make_plan(system, ImportOverrides(net_map={"Nope": "br0"}))


@pytest.mark.parametrize("nic, rule", [
    (Nic(network="n", mode="evilmode"), "the package's NIC 0: mode 'evilmode' is not one of"),
    (Nic(network="n", ip="999.999.1.1"), "the package's NIC 0: invalid IP address"),
], ids=["mode", "ip"])
def test_package_nic_values_pass_ganetis_checks(nic, rule):
    system = VirtualSystem(system_id="vm", name="appliance", nics=(nic,))
    with pytest.raises(OptionError, match=rule):
        make_plan(system, ImportOverrides())


def test_many_dropped_parameters_one_bounded_warning():
    params = tuple(("p%02d" % index, "1") for index in range(25))
    warnings = [w for w in make_plan(_with_params("kvm", params), ImportOverrides()).warnings
                if "not applied" in w]
    assert len(warnings) == 1
    assert warnings[0].endswith("hypervisor:p19 and 5 more")
