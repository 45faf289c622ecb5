"""The allow-lists of guest-visible hypervisor parameters, against Ganeti 3.0."""

import pytest
from ganeti import constants, utils

from ganeti_ovf.cluster import guest_params
from ganeti_ovf.cluster.guest_params import GUEST_VISIBLE, screen_hypervisor, screen_os


def test_a_table_for_every_hypervisor_naming_only_its_parameters():
    assert set(GUEST_VISIBLE) == set(constants.HYPER_TYPES)
    for hypervisor, table in GUEST_VISIBLE.items():
        assert set(table) <= set(constants.HVC_DEFAULTS[hypervisor]), hypervisor


def test_ganeti_defaults_of_allowed_parameters_pass_their_checks():
    # A check that refused Ganeti's own default would drop a harmless value.
    for hypervisor, table in GUEST_VISIBLE.items():
        for name, allowed in table.items():
            default = constants.HVC_DEFAULTS[hypervisor][name]
            if default in (None, "") or isinstance(default, bool):
                continue
            assert allowed.check(str(default)), (hypervisor, name, default)


@pytest.mark.parametrize("hypervisor, name", [
    (hypervisor, name) for hypervisor in constants.HYPER_TYPES
    for name in constants.HVC_DEFAULTS[hypervisor]
    if name.endswith(("_path", "_file", "_script", "_dir", "_cmd", "_bind", "_port",
                      "_address", "_mask", "_extra", "_args", "_model"))
    and name not in (constants.HV_ROOT_PATH, constants.HV_KERNEL_ARGS)])
def test_host_named_parameters_never_allowed(hypervisor, name):
    assert name not in GUEST_VISIBLE[hypervisor]


def test_screen_names_the_rule_for_each_dropped_parameter():
    kept, dropped = screen_hypervisor("kvm", (
        ("root-path", "/dev/vda1"), ("kvm_extra", "-x"), ("num_ttys", "2"),
        ("cpu_cores", "many"), ("acpi", "True")))
    assert kept == (("root_path", "/dev/vda1"), ("acpi", "True"))  # Ganeti's spelling
    assert dropped == [
        ("kvm_extra", "not on kvm's allow-list of guest-visible parameters"),
        ("num_ttys", "not parameters of kvm"),
        ("cpu_cores", "values kvm's allow-list does not accept for them")]
    assert screen_hypervisor(None, (("acpi", "True"),)) == (
        (), [("acpi", guest_params.NO_HYPERVISOR_RULE)])


def test_allowed_values_typed_as_ganeti_types_them():
    for name, value in (("acpi", "True"), ("cpu_sockets", "2"), ("serial_speed", "115200"),
                        ("vga", "std")):
        params = {name: value}
        utils.ForceDictType(params, constants.HVS_PARAMETER_TYPES)
        assert screen_hypervisor("kvm", ((name, value),))[0] == ((name, value),)


def test_os_values_one_plain_word():
    kept, dropped = screen_os((("dhcp", "yes"), ("locale", "en_US.UTF-8"),
                               ("path", "/etc/shadow"), ("flag", "-rf"), ("two", "a b"),
                               ("quote", "a'b"), ("empty", "")))
    assert kept == (("dhcp", "yes"), ("locale", "en_US.UTF-8"), ("empty", ""))
    assert [name for name, _ in dropped] == ["path", "flag", "two", "quote"]
    assert {rule for _, rule in dropped} == {guest_params.OS_VALUE_RULE}
