"""Virtual hardware ↔ Ganeti hypervisor parameters, in both directions.

One table per kind of device, read line by line against the CIM values
(descriptor/devices.py says where vendors write them) and Ganeti's
constants (HT_DISK_*, HT_NIC_*, HT_SCSI_CONTROLLER_*).  Import: the package's
boot disk controller, NIC model, OS, CPU topology and firmware become
`disk_type` (+ `scsi_controller_type`), `nic_type`, `use_localtime`,
`cpu_cores`/`cpu_sockets` for kvm, and the equivalents xen-hvm has (plan.py
applies them where the operator and the package's Ganeti section are
silent).  Export: the instance's `disk_type`/`scsi_controller_type`/`nic_type`
choose the controller and NIC model written to the descriptor.

A guest made on VMware or VirtualBox usually has drivers only for the
hardware it ran on, so the aim is the device the guest can drive, and where
Ganeti has no such device, the one every OS drives with its own drivers
(IDE, E1000).  Every value the tables do not know gives a warning.
"""

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ganeti import constants

from ganeti_ovf import model
from ganeti_ovf.errors import OptionError

KVM = constants.HT_KVM
XEN_HVM = constants.HT_XEN_HVM
HV_DISK_TYPE = constants.HV_DISK_TYPE
HV_SCSI_CONTROLLER = constants.HV_KVM_SCSI_CONTROLLER_TYPE
HV_NIC_TYPE = constants.HV_NIC_TYPE
HV_LOCALTIME = constants.HV_USE_LOCALTIME
HV_CORES = constants.HV_CPU_CORES
HV_SOCKETS = constants.HV_CPU_SOCKETS
# Any subtype of the controller's ResourceType; NONE: no subtype written.
ANY = "*"
NONE = ""


@dataclass(frozen=True)
class Row:
    """One line of a table: what the package says → what Ganeti gets, and why."""

    resource_types: Tuple[int, ...]  # controllers only; () for NICs
    subtypes: Tuple[str, ...]  # lowercase ResourceSubType tokens; ANY
    kvm: Tuple[Tuple[str, str], ...]
    xen_hvm: Tuple[Tuple[str, str], ...]
    why: str


IDE, SCSI, OTHER_STORAGE, OVIRT = (5,), (6,), (20,), (0,)
_IDE = ((HV_DISK_TYPE, constants.HT_DISK_IDE),)
_XEN_EMULATED = ((HV_DISK_TYPE, constants.HT_DISK_IOEMU),)
_VIRTIO_BLK = ((HV_DISK_TYPE, constants.HT_DISK_PARAVIRTUAL),)
_XEN_PV = ((HV_DISK_TYPE, constants.HT_DISK_PARAVIRTUAL),)


def _scsi(controller: str) -> Tuple[Tuple[str, str], ...]:
    return ((HV_DISK_TYPE, constants.HT_DISK_SCSI_HD), (HV_SCSI_CONTROLLER, controller))


# The boot disk's controller.  Rows are tried in order; the first whose
# ResourceType and one subtype token match wins: a list of alternatives
# ("virtio lsilogic", "lsilogic virtio") means the guest drives both, and
# virtio comes first.
CONTROLLERS: Tuple[Row, ...] = (
    Row(IDE + SCSI + OTHER_STORAGE + OVIRT, ("virtio",), _VIRTIO_BLK, _XEN_PV,
        "virtio disk (oVirt, KVM sources, COT's \"virtio\"): virtio-blk as is"),
    Row(SCSI + OVIRT, ("virtio-scsi", "virtio_scsi", "virtioscsi"),
        _scsi(constants.HT_SCSI_CONTROLLER_VIRTIO), _XEN_PV,
        "virtio SCSI: the same controller"),
    Row(IDE, (ANY,), _IDE, _XEN_EMULATED,
        "IDE (PIIX): emulated as is; every OS has the driver"),
    Row(OVIRT, ("ide",), _IDE, _XEN_EMULATED, "IDE: emulated as is"),
    Row(SCSI, ("lsilogic", NONE), _scsi(constants.HT_SCSI_CONTROLLER_LSI), _XEN_EMULATED,
        "LSI Logic parallel SCSI (VMware's default): QEMU's lsi, the same family"
        " (Linux drives both with the generic kernel's modules)"),
    Row(SCSI, ("buslogic",), _scsi(constants.HT_SCSI_CONTROLLER_LSI), _XEN_EMULATED,
        "BusLogic: QEMU has none; lsi is Ganeti's parallel SCSI controller"),
    Row(SCSI, ("lsilogicsas",), _scsi(constants.HT_SCSI_CONTROLLER_MEGASAS), _XEN_EMULATED,
        "LSI Logic SAS: QEMU has no SAS 1068; megasas is the LSI SAS controller"
        " Ganeti offers (Windows since 2008 and Linux have its driver)"),
    Row(SCSI, ("virtualscsi", "pvscsi"), _IDE, _XEN_EMULATED,
        "VMware paravirtual SCSI: Ganeti has no pvscsi; IDE boots with the"
        " guest's own drivers (install virtio drivers, then switch to paravirtual)"),
    Row(OTHER_STORAGE + OVIRT, ("ahci", "vmware.sata.ahci", "sata"), _IDE, _XEN_EMULATED,
        "SATA/AHCI: Ganeti's kvm has no AHCI disk; IDE is what every OS drives"
        " with its own drivers (VirtualBox and VMware machines carry a PIIX IDE"
        " controller for their CD drive)"),
    Row(OTHER_STORAGE, ("nvme", "vmware.nvme.controller"), _IDE, _XEN_EMULATED,
        "NVMe: Ganeti 3.0 has no NVMe disk; IDE is what every OS drives with its"
        " own drivers"),
)

# NIC models (rasd:ResourceSubType; oVirt writes numbers: 0 rtl8139_pv,
# 1 rtl8139, 2 e1000, 3 pv).
NICS: Tuple[Row, ...] = (
    Row((), ("virtio", "3"), ((HV_NIC_TYPE, constants.HT_NIC_PARAVIRTUAL),),
        ((HV_NIC_TYPE, constants.HT_NIC_PARAVIRTUAL),), "virtio-net as is"),
    Row((), ("e1000", "2"), ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        ((HV_NIC_TYPE, constants.HT_NIC_E1000),), "Intel E1000: emulated as is"),
    Row((), ("e1000e",), ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        "E1000e: Ganeti has only e1000 (guests usually carry both drivers)"),
    Row((), ("pcnet32", "pcnet"), ((HV_NIC_TYPE, constants.HT_NIC_PCNET),),
        ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        "AMD PCnet: emulated as is (xen-hvm has none: e1000)"),
    Row((), ("rtl8139", "1", "0"), ((HV_NIC_TYPE, constants.HT_NIC_RTL8139),),
        ((HV_NIC_TYPE, constants.HT_NIC_RTL8139),), "Realtek 8139: emulated as is"),
    Row((), ("vmxnet3", "vmxnet2", "vmxnet"), ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        ((HV_NIC_TYPE, constants.HT_NIC_E1000),),
        "VMware vmxnet: Ganeti has no equivalent; e1000, which every OS drives"
        " with its own drivers (install virtio drivers, then switch to paravirtual)"),
)

# CIM_OperatingSystem.OsType values of Windows (ValueMap of CIM 2.x).
WINDOWS_CIM_IDS = frozenset((16, 17, 18, 19, 58, 63, 67, 69, 70, 71, 72, 73, 74, 75,
                             76, 77, 103, 105, 111, 112))
LOCALTIME_WHY = "Windows keeps the hardware clock in local time"
TOPOLOGY_WHY = "the guest's CPU topology (licences count sockets)"
EFI_ADVICE = ("the package boots with UEFI firmware (%s); Ganeti 3.0's kvm boots"
              " with BIOS, so the guest boots only if it also has a BIOS boot loader:"
              " give it UEFI at gnt-backup import, e.g. -H kvm_extra=\"-bios"
              " /usr/share/ovmf/OVMF.fd\" (Debian package ovmf)")

# Export: disk_type (and scsi_controller_type) → (ResourceType, ResourceSubType).
EXPORT_CONTROLLERS = {
    constants.HT_DISK_IDE: (5, None),
    constants.HT_DISK_IOEMU: (5, None),
    constants.HT_DISK_SCSI: (6, "lsilogic"),
    constants.HT_DISK_SCSI_HD: (6, "lsilogic"),
    constants.HT_DISK_SCSI_BLOCK: (6, "lsilogic"),
    constants.HT_DISK_SCSI_GENERIC: (6, "lsilogic"),
    # VMware has no virtio: its guests with virtio-era kernels boot from
    # LSI Logic (mptspi is in every distribution kernel).  The alternative
    # "virtio" (as Cisco's and COT's packages write it) tells KVM importers,
    # ours included, that the guest drives virtio.
    constants.HT_DISK_PARAVIRTUAL: (6, "lsilogic virtio"),
}
EXPORT_SCSI_SUBTYPES = {
    constants.HT_SCSI_CONTROLLER_LSI: "lsilogic",
    constants.HT_SCSI_CONTROLLER_MEGASAS: "lsilogicsas",
    constants.HT_SCSI_CONTROLLER_VIRTIO: "lsilogic virtio-scsi",
}
# --disk-controller values.
DISK_CONTROLLERS = {"ide": (5, None), "lsilogic": (6, "lsilogic"),
                    "lsilogicsas": (6, "lsilogicsas"), "buslogic": (6, "buslogic"),
                    "sata": (20, "AHCI"), "virtio": (6, "lsilogic virtio")}
EXPORT_NICS = {
    constants.HT_NIC_E1000: "E1000", constants.HT_NIC_PCNET: "PCNet32",
    constants.HT_NIC_RTL8139: "rtl8139",
    # VMware's paravirtual NIC is what its virtio-era guests use (vmxnet3
    # is in Linux since 2.6.32); "virtio" as the alternative for KVM.
    constants.HT_NIC_PARAVIRTUAL: "VmxNet3 virtio",
}
DEFAULT_EXPORT_NIC = "E1000"


@dataclass(frozen=True)
class Param:
    """One hypervisor parameter the package's hardware asks for."""

    name: str
    value: str
    source: str  # the element it comes from
    why: str


@dataclass(frozen=True)
class Mapping:
    hypervisor: str
    groups: Tuple[Tuple[Param, ...], ...]  # applied together or not at all
    notes: Tuple[str, ...]  # warnings: unknown values, what the user must do

    @property
    def params(self) -> Tuple[Param, ...]:
        return tuple(param for group in self.groups for param in group)


def _tokens(subtype: Optional[str]) -> List[str]:
    return (subtype or "").lower().split() or [NONE]


def _match(rows: Tuple[Row, ...], resource_type: Optional[int],
           subtype: Optional[str]) -> Optional[Row]:
    tokens = _tokens(subtype)
    for row in rows:
        if (resource_type is None or resource_type in row.resource_types) \
                and any(token in row.subtypes for token in tokens):
            return row
    for row in rows:
        if resource_type is not None and resource_type in row.resource_types \
                and ANY in row.subtypes:
            return row
    return None


def _values(row: Row, hypervisor: str) -> Tuple[Tuple[str, str], ...]:
    return row.kvm if hypervisor == KVM else row.xen_hvm


def _group(row: Row, hypervisor: str, source: str) -> Tuple[Param, ...]:
    return tuple(Param(name, value, source, row.why) for name, value in _values(row, hypervisor))


def _label(controller: model.Controller) -> str:
    return "%s (ResourceType %d%s)" % (
        controller.source, controller.resource_type,
        ", %s" % controller.subtype if controller.subtype else "") \
        if controller.resource_type else "%s %s" % (controller.source, controller.subtype)


def is_windows(system: model.VirtualSystem) -> bool:
    if system.os_id in WINDOWS_CIM_IDS:
        return True
    if (system.vmware_os_type or "").lower().startswith("win"):
        return True
    return "windows" in (system.os_description or "").lower()


def import_mapping(system: model.VirtualSystem, hypervisor: str) -> Mapping:
    """The parameters `system`'s hardware asks for on `hypervisor`."""
    groups: List[Tuple[Param, ...]] = []
    notes: List[str] = []
    supported = hypervisor in (KVM, XEN_HVM)
    target = hypervisor if supported else KVM
    disks = [disk for disk in system.disks if disk.controller is not None]
    if disks:
        boot = disks[0].controller
        row = _match(CONTROLLERS, boot.resource_type, boot.subtype)
        if row is None:
            row = _match(CONTROLLERS, boot.resource_type, None)
            notes.append("disk controller %s is not known: %s" % (
                _label(boot), "disk_type is left to the cluster's default" if row is None
                else "taken as the default of its kind"))
        if row is not None:
            groups.append(_group(row, target, _label(boot)))
            for disk in disks[1:]:
                other = _match(CONTROLLERS, disk.controller.resource_type,
                               disk.controller.subtype)
                if other is not None and _values(other, target) != _values(row, target):
                    notes.append("disk %s is on %s, but Ganeti gives all disks the boot"
                                 " disk's type" % (disk.disk_id, _label(disk.controller)))
    models = [(index, nic.model) for index, nic in enumerate(system.nics) if nic.model]
    if models:
        index, first = models[0]
        row = _match(NICS, None, first)
        if row is None:
            notes.append("NIC model %r is not known: nic_type is left to the cluster's"
                         " default" % first)
        else:
            groups.append(_group(row, target, "NIC %d ResourceSubType %s" % (index, first)))
            if any(_match(NICS, None, other) != row for _, other in models[1:]):
                notes.append("the NICs have different models; Ganeti gives all NICs"
                             " the first one's type")
    if is_windows(system):
        source = "OperatingSystemSection %s" % (
            system.vmware_os_type or system.os_description or system.os_id)
        groups.append((Param(HV_LOCALTIME, "true", source, LOCALTIME_WHY),))
    cores = system.cores_per_socket
    if cores and cores > 1 and system.vcpus:
        if system.vcpus % cores:
            notes.append("vmw:CoresPerSocket %d does not divide %d vCPUs; topology"
                         " not set" % (cores, system.vcpus))
        elif target == KVM:
            source = "vmw:CoresPerSocket %d" % cores
            groups.append((Param(HV_CORES, str(cores), source, TOPOLOGY_WHY),
                           Param(HV_SOCKETS, str(system.vcpus // cores), source,
                                 TOPOLOGY_WHY)))
    if system.firmware == "efi":
        notes.append(EFI_ADVICE % "firmware efi")
    if not supported:
        return Mapping(hypervisor, (), tuple(notes))
    return Mapping(hypervisor, tuple(groups), tuple(notes))


# ------------------------------------------------------------------ export


def export_controller(hv_params: dict, override: Optional[str]) -> Tuple[int, Optional[str]]:
    """(ResourceType, ResourceSubType) of the disk controller to write."""
    if override is not None:
        if override not in DISK_CONTROLLERS:
            raise OptionError("--disk-controller %r is not one of %s"
                              % (override, ", ".join(sorted(DISK_CONTROLLERS))))
        return DISK_CONTROLLERS[override]
    disk_type = hv_params.get(HV_DISK_TYPE)
    if disk_type in (constants.HT_DISK_SCSI_HD, constants.HT_DISK_SCSI_BLOCK,
                     constants.HT_DISK_SCSI_GENERIC) \
            and hv_params.get(HV_SCSI_CONTROLLER) in EXPORT_SCSI_SUBTYPES:
        return (6, EXPORT_SCSI_SUBTYPES[hv_params[HV_SCSI_CONTROLLER]])
    return EXPORT_CONTROLLERS.get(disk_type, (6, "lsilogic"))


def export_nic_model(hv_params: dict, override: Optional[str]) -> str:
    if override is not None:
        return override
    return EXPORT_NICS.get(hv_params.get(HV_NIC_TYPE), DEFAULT_EXPORT_NIC)


def for_export(system: model.VirtualSystem, disk_controller: Optional[str] = None,
               nic_model: Optional[str] = None) -> model.VirtualSystem:
    """`system` with the controller of each disk and the model of each NIC
    its hypervisor parameters (or the overrides) choose."""
    hv_params = dict(system.ganeti.hypervisor_params) if system.ganeti else {}
    resource_type, subtype = export_controller(hv_params, disk_controller)
    source = "--disk-controller" if disk_controller else "hypervisor parameters"
    controller = model.Controller(resource_type, subtype, None, source)
    model_name = export_nic_model(hv_params, nic_model)
    return dataclasses.replace(
        system,
        disks=tuple(dataclasses.replace(disk, controller=controller) for disk in system.disks),
        nics=tuple(dataclasses.replace(nic, model=nic.model or model_name)
                   for nic in system.nics))


def cluster_default_hypervisor() -> Optional[str]:
    """The cluster's default hypervisor (the first enabled one) when this
    runs on a Ganeti node, else None."""
    from ganeti import errors, ssconf
    try:
        enabled = ssconf.SimpleStore().GetHypervisorList()
    except (errors.ConfigurationError, OSError, errors.GenericError):
        return None
    return enabled[0] if enabled else None


def describe(system: model.VirtualSystem) -> dict:
    """What import would set from `system`'s hardware, for `gnt-ovf info`
    (JSON; see gnt-ovf(8), INFO JSON SCHEMA): the package's Ganeti hypervisor,
    else the cluster's default, else kvm."""
    package = system.ganeti.hypervisor if system.ganeti else None
    hypervisor = package or cluster_default_hypervisor() or KVM
    mapping = import_mapping(system, hypervisor)
    given = dict(system.ganeti.hypervisor_params) if system.ganeti else {}
    parameters = []
    for group in mapping.groups:
        kept = any(param.name in given for param in group)
        parameters.extend(dict(entry, package_sets_it=kept)
                          for entry in describe_params(group))
    return {"hypervisor": hypervisor, "parameters": parameters, "notes": list(mapping.notes)}


def describe_params(params) -> List[dict]:
    """Parameters as gnt-ovf info's JSON lists them."""
    return [{"name": p.name, "value": p.value, "source": p.source, "reason": p.why}
            for p in params]


def describe_text(section: dict) -> List[str]:
    """The text lines of describe()'s section."""
    lines = ["  Hardware for %s: %s=%s (from %s)%s" % (
        section["hypervisor"], p["name"], p["value"], p["source"],
        "; the package's Ganeti section sets it" if p["package_sets_it"] else "")
        for p in section["parameters"]]
    return lines + ["  Hardware note: %s" % note for note in section["notes"]]


def controller_info(controller: Optional[model.Controller]) -> Optional[dict]:
    if controller is None:
        return None
    return {"resource_type": controller.resource_type, "subtype": controller.subtype,
            "address": controller.address, "source": controller.source}


def line(param: Param) -> str:
    """One line for the operator: what is set, from where."""
    return "%s=%s (from %s: %s)" % (param.name, param.value, param.source, param.why)

