"""Which Ganeti parameters a package may set: the allow-lists.

A package's Ganeti section can name any hypervisor or OS parameter, but
most of Ganeti's hypervisor parameters configure the node, not the guest:
host files and devices, raw arguments to QEMU or xl, namespaces, cgroups,
capabilities, CPU pinning, bind addresses and ports.  LXC's extra_config is
appended verbatim to lxc.conf (an lxc.hook line runs a host command),
machine_version becomes QEMU's -machine argument, keymap names a file under
QEMU's keymap directory.  So a package's parameter is applied only when the
table of its hypervisor below lists it: each entry shapes only what the
guest sees, and its value passes a check, since Ganeti checks some values
not at all and Xen writes them between quotes into the domain's config
file.  Everything else is the operator's: -H, or --keep-host-params for a
package the operator trusts.

Each entry was read against Ganeti 3.0's hypervisor modules
(ganeti/hypervisor/hv_kvm, hv_xen.py, hv_lxc.py), where the value is used.
Left out on purpose, besides host paths, devices and addresses:
  cpu_type, soundhw, machine_version, kvm_extra, cpuid: free text handed to
    QEMU or xl as an argument or config value;
  kvm_flag, vhost_net, vnet_hdr, virtio_net_queues, disk_cache, disk_aio,
    disk_discard, use_chroot, security_*, mem_path: how the host runs the
    guest (kvm_flag=disabled emulates every instruction on the node's CPUs);
  cpu_cap, cpu_weight, migration_*, reboot_behavior, user_shutdown,
    startup_timeout, kvm_pci_reservations: the cluster's policy;
  use_bootloader: makes dom0 run pygrub over the guest's own boot files;
  spice_*, vnc_*, keymap: the node's console server.

OS parameters are read by the OS definition's scripts, which run as root on
the node, and each OS gives them its own meaning: no table can say which
are harmless.  A package's OS parameter is applied when its value is one
plain word (OS_VALUE_RULE), so it can never name a host path ("/"), pass an
option ("-") or split into several shell words.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ganeti import constants, errors, utils

C = constants


@dataclass(frozen=True)
class Allowed:
    """A guest-visible parameter: the check its value must pass, and why it
    is the guest's."""

    check: Callable[[str], bool]
    why: str


def _one_of(values) -> Callable[[str], bool]:
    return frozenset(values).__contains__


def _typed(_value: str) -> bool:
    return True  # Ganeti's type check (bool, int) is the whole check


_COUNT = re.compile(r"^[0-9]{1,4}$").match
# A guest kernel command line: QEMU passes it as one argument, but Xen writes
# it as 'extra = '...'' into the domain's config file, where a quote ends the
# string and ';' the statement.  So no quotes, backslashes, ';' or '#'.
_GUEST_TEXT = re.compile(r"^[A-Za-z0-9 _.,:=/+@%-]*$").match
# QEMU's -vga models (Ganeti checks none).
_VGA_MODELS = ("std", "cirrus", "vmware", "qxl", "virtio", "none")

_KVM: Dict[str, Allowed] = {
    C.HV_ACPI: Allowed(_typed, "whether the guest has ACPI"),
    C.HV_BOOT_ORDER: Allowed(_one_of(C.HT_KVM_VALID_BO_TYPES),
                             "the guest's boot device"),
    C.HV_DISK_TYPE: Allowed(_one_of(C.HT_KVM_VALID_DISK_TYPES), "the guest's disk bus"),
    C.HV_KVM_CDROM_DISK_TYPE: Allowed(_one_of(C.HT_KVM_VALID_DISK_TYPES),
                                      "the guest's CD-ROM bus"),
    C.HV_KVM_SCSI_CONTROLLER_TYPE: Allowed(
        _one_of(C.HT_KVM_VALID_SCSI_CONTROLLER_TYPES), "the guest's SCSI controller"),
    C.HV_NIC_TYPE: Allowed(_one_of(C.HT_KVM_VALID_NIC_TYPES), "the guest's NIC model"),
    C.HV_CPU_CORES: Allowed(_COUNT, "the guest's CPU topology"),
    C.HV_CPU_THREADS: Allowed(_COUNT, "the guest's CPU topology"),
    C.HV_CPU_SOCKETS: Allowed(_COUNT, "the guest's CPU topology"),
    C.HV_USE_LOCALTIME: Allowed(_typed, "the guest's clock: local time or UTC"),
    C.HV_USB_MOUSE: Allowed(_one_of(C.HT_KVM_VALID_MOUSE_TYPES), "the guest's pointer"),
    C.HV_VGA: Allowed(_one_of(_VGA_MODELS), "the guest's display adapter"),
    C.HV_SERIAL_CONSOLE: Allowed(_typed, "whether the guest has a serial port (its"
                                 " host end is Ganeti's own socket)"),
    C.HV_SERIAL_SPEED: Allowed(_one_of(str(speed) for speed in C.VALID_SERIAL_SPEEDS),
                               "the guest's serial console speed"),
    C.HV_USE_GUEST_AGENT: Allowed(_typed, "a virtio-serial port for the guest's agent"
                                  " (its host end is Ganeti's own socket)"),
    # Used only with the host kernel (kernel_path, the operator's): the guest
    # kernel's command line and root device.
    C.HV_KERNEL_ARGS: Allowed(_GUEST_TEXT, "the guest kernel's command line"),
    C.HV_ROOT_PATH: Allowed(_GUEST_TEXT, "the guest's root device, inside the guest"),
}

_XEN_COMMON: Dict[str, Allowed] = {
    # A device name prefix (sd, xvd) written into the disk lines of the
    # domain's config; Ganeti leaves it unchecked.
    C.HV_BLOCKDEV_PREFIX: Allowed(re.compile(r"^[a-z]{1,8}$").match,
                                  "the guest's disk device names"),
}

_XEN_PVM: Dict[str, Allowed] = dict(_XEN_COMMON, **{
    C.HV_KERNEL_ARGS: _KVM[C.HV_KERNEL_ARGS],
    C.HV_ROOT_PATH: _KVM[C.HV_ROOT_PATH],
})

_XEN_HVM: Dict[str, Allowed] = dict(_XEN_COMMON, **{
    C.HV_ACPI: _KVM[C.HV_ACPI],
    C.HV_PAE: Allowed(_typed, "the guest CPU's PAE"),
    C.HV_VIRIDIAN: Allowed(_typed, "Hyper-V enlightenments the guest sees"),
    C.HV_USE_LOCALTIME: _KVM[C.HV_USE_LOCALTIME],
    C.HV_BOOT_ORDER: Allowed(re.compile(r"^[acdn]{1,4}$").match,
                             "the guest's boot devices"),
    C.HV_DISK_TYPE: Allowed(_one_of(C.HT_HVM_VALID_DISK_TYPES), "the guest's disk bus"),
    C.HV_NIC_TYPE: Allowed(_one_of(C.HT_HVM_VALID_NIC_TYPES), "the guest's NIC model"),
    C.HV_VIF_TYPE: Allowed(_one_of(C.HT_HVM_VALID_VIF_TYPES),
                           "emulated or paravirtual NICs in the guest"),
})

_LXC: Dict[str, Allowed] = {
    C.HV_LXC_NUM_TTYS: Allowed(_COUNT, "the number of ttys in the container"),
}

# Per hypervisor.  fake and chroot have none: chroot's init_script is run
# by the node as root (a chroot is no sandbox).
GUEST_VISIBLE: Dict[str, Dict[str, Allowed]] = {
    C.HT_KVM: _KVM,
    C.HT_XEN_PVM: _XEN_PVM,
    C.HT_XEN_HVM: _XEN_HVM,
    C.HT_LXC: _LXC,
    C.HT_FAKE: {},
    C.HT_CHROOT: {},
}

OS_VALUE_RULE = ("an OS parameter from a package must be one plain word (letters,"
                 " digits and _.,:=+@%-, not starting with -): no host path")
_OS_VALUE = re.compile(r"^(?!-)[A-Za-z0-9_.,:=+@%-]*$").match
NO_HYPERVISOR_RULE = ("no hypervisor is known, so no parameter can be checked"
                      " against its allow-list")


def _unknown_rule(hypervisor: str) -> str:
    return "not parameters of %s" % hypervisor


def _host_rule(hypervisor: str) -> str:
    return "not on %s's allow-list of guest-visible parameters" % hypervisor


def _value_rule(hypervisor: str) -> str:
    return "values %s's allow-list does not accept for them" % hypervisor


Dropped = List[Tuple[str, str]]  # (name, rule)


def screen_hypervisor(hypervisor: Optional[str],
                      params: Tuple[Tuple[str, str], ...]) -> Tuple[tuple, Dropped]:
    """The package's hypervisor parameters that `hypervisor`'s allow-list
    accepts (named as Ganeti names them: root-path is root_path), and the
    others with the rule that drops each."""
    kept, dropped = [], []
    table = GUEST_VISIBLE.get(hypervisor) if hypervisor else None
    for key, value in params:
        name = key.replace("-", "_")
        if table is None:
            dropped.append((key, NO_HYPERVISOR_RULE))
        elif name not in C.HVC_DEFAULTS.get(hypervisor, {}):
            dropped.append((key, _unknown_rule(hypervisor)))
        elif name not in table:
            dropped.append((key, _host_rule(hypervisor)))
        elif not (_has_type(name, value) and table[name].check(value)):
            dropped.append((key, _value_rule(hypervisor)))
        else:
            kept.append((name, value))
    return tuple(kept), dropped


def _has_type(name: str, value: str) -> bool:
    try:
        utils.ForceDictType({name: value}, {name: C.HVS_PARAMETER_TYPES[name]})
    except errors.TypeEnforcementError:
        return False
    return True


def screen_os(params: Tuple[Tuple[str, str], ...]) -> Tuple[tuple, Dropped]:
    """The package's OS parameters whose values are plain words, and the
    others with OS_VALUE_RULE."""
    kept, dropped = [], []
    for key, value in params:
        if _OS_VALUE(value):
            kept.append((key, value))
        else:
            dropped.append((key, OS_VALUE_RULE))
    return tuple(kept), dropped
