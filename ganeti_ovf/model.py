"""The neutral model every stage speaks: an appliance and its virtual systems.

The descriptor reader produces it from XML, the Ganeti export reader produces
it from config.ini; the writers consume it.  Values are frozen dataclasses so
no stage can change what an earlier stage saw.  Sizes are bytes, memory is MiB.
Ganeti-only settings live in GanetiSettings; a package from another tool has
none, and its Nic/Disk Ganeti fields stay None.
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

# Compression values the OVF specification defines for File/@ovf:compression.
COMPRESSION_NONE = "identity"
COMPRESSION_GZIP = "gzip"

Params = Tuple[Tuple[str, str], ...]
"""Ordered (name, value) pairs: hypervisor, OS and backend parameters."""


@dataclass(frozen=True)
class Member:
    """A byte range of a file on disk: one file of a package, read in place.

    An OVF folder's file is the whole file (offset 0); an OVA member is the
    range of the tar that holds its data.
    """

    name: str  # the name inside the package
    path: str  # where the bytes are, for messages: never opened again
    offset: int
    size: int
    fd: int = -1  # the file, opened once by the package (package/openfile.py)


@dataclass(frozen=True)
class FileRef:
    """A References/File entry: a file of the package."""

    file_id: str
    href: str
    size: Optional[int] = None  # ovf:size as declared (stored bytes); may lie
    compression: str = COMPRESSION_NONE
    chunk_size: Optional[int] = None  # ovf:chunkSize: stored as href.000000000...


@dataclass(frozen=True)
class Controller:
    """The storage controller a disk hangs on, as the package declares it.

    `resource_type` is the CIM ResourceType of the controller item (5 IDE,
    6 parallel SCSI, 20 other storage: SATA, NVMe), or 0 when only oVirt's
    ovf:disk-interface names the bus.  `subtype` is rasd:ResourceSubType (or
    the disk-interface value) as written: vendors spell it differently, and
    the hardware map (cluster/hardware_map.py) reads it.
    """

    resource_type: int
    subtype: Optional[str] = None
    address: Optional[str] = None  # rasd:Address: the controller's bus number
    source: str = ""  # where it was read, for messages ("Item 3", "ovf:disk-interface")


@dataclass(frozen=True)
class Disk:
    """A virtual disk: DiskSection/Disk joined with its hardware item."""

    disk_id: str
    capacity: int  # bytes, as the guest sees it
    file: Optional[FileRef] = None  # None: a blank disk of `capacity`
    format_uri: Optional[str] = None  # ovf:format, informative only on import
    populated_size: Optional[int] = None
    name: Optional[str] = None  # Ganeti disk name (diskN_name)
    controller: Optional[Controller] = None  # None: the package does not say
    unit: Optional[str] = None  # rasd:AddressOnParent: the slot on the controller
    boot: bool = False  # the package marks it as the boot disk (oVirt's ovf:boot)
    # False: the package states no capacity (`capacity` is 0 and the image's
    # virtual size is used); True: `capacity` is a contract the image must keep.
    capacity_declared: bool = True

    @property
    def blank(self) -> bool:
        return self.file is None


@dataclass(frozen=True)
class Nic:
    """A network adapter (hardware item of ResourceType 10)."""

    network: Optional[str] = None  # rasd:Connection / NetworkSection name
    mac: Optional[str] = None  # normalised to aa:bb:cc:dd:ee:ff
    model: Optional[str] = None  # rasd:ResourceSubType, e.g. E1000, PCNet32
    # Ganeti settings (from the Ganeti section or config.ini); None: cluster default
    mode: Optional[str] = None
    link: Optional[str] = None
    ip: Optional[str] = None
    ganeti_network: Optional[str] = None
    vlan: Optional[str] = None
    name: Optional[str] = None


@dataclass(frozen=True)
class GanetiSettings:
    """What only Ganeti knows: the design document's gnt: section."""

    version: Optional[str] = None
    disk_template: Optional[str] = None
    hypervisor: Optional[str] = None
    hypervisor_params: Params = ()
    os_name: Optional[str] = None
    os_params: Params = ()
    os_private_params: Params = ()
    backend_params: Params = ()
    tags: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A DeploymentOptionSection configuration."""

    profile_id: str
    label: Optional[str] = None
    default: bool = False


@dataclass(frozen=True)
class VirtualSystem:
    """One virtual machine of the package."""

    system_id: str
    name: Optional[str] = None
    os_id: Optional[int] = None  # CIM OperatingSystemSection ovf:id
    os_description: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mib: Optional[int] = None
    hardware_family: Optional[str] = None  # vssd:VirtualSystemType
    vmware_os_type: Optional[str] = None  # OperatingSystemSection vmw:osType
    cores_per_socket: Optional[int] = None  # vmw:CoresPerSocket of the CPU item
    firmware: Optional[str] = None  # "efi" or "bios" when the package says
    disks: Tuple[Disk, ...] = ()
    nics: Tuple[Nic, ...] = ()
    ganeti: Optional[GanetiSettings] = None


@dataclass(frozen=True)
class Appliance:
    """A whole package's description."""

    ovf_version: str  # "0.9", "1.x" or "2.x"
    systems: Tuple[VirtualSystem, ...]
    files: Tuple[FileRef, ...] = ()
    profiles: Tuple[Profile, ...] = ()
    profile: Optional[str] = None  # the profile the values were read for
    warnings: Tuple[str, ...] = field(default=())

    def system(self, wanted: Optional[str] = None) -> VirtualSystem:
        """The virtual system named by id or name; the only one if not named."""
        from ganeti_ovf.errors import DescriptorError

        if wanted is None:
            if len(self.systems) == 1:
                return self.systems[0]
            listed = ", ".join(_system_label(s) for s in self.systems)
            raise DescriptorError(
                "the package holds %d virtual systems (%s); choose one with --system,"
                " or import all with --system all"
                % (len(self.systems), listed or "none"))
        for system in self.systems:
            if wanted in (system.system_id, system.name):
                return system
        listed = ", ".join(_system_label(s) for s in self.systems)
        raise DescriptorError("no virtual system %r in the package (it has: %s)"
                              % (wanted, listed))


def _system_label(system: VirtualSystem) -> str:
    if system.name and system.name != system.system_id:
        return "%s (%s)" % (system.system_id, system.name)
    return system.system_id
