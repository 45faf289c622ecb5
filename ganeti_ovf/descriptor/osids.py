"""Guessing the OperatingSystemSection of an export from its Ganeti OS name.

OVF names the guest OS by a CIM_OperatingSystem.OsType value (DMTF CIM schema,
ValueMap of OsType; the values below are the ones up to CIM 2.25, which every
importer knows).  Ganeti only knows the OS *definition* that installed the
instance ("debootstrap+buster", "image+ubuntu-22.04", "snf-image+windows"),
so we look for a distribution keyword among the name's words.

Ganeti does not record the guest's word size; Ganeti clusters run 64-bit
guests almost without exception, so the 64-bit value of a family is chosen.
A name with no known keyword becomes 101 "Linux 64-Bit": Ganeti's OS
definitions are Linux installers unless the name says otherwise, and a Linux
type boots a 64-bit guest on every importer, where "Other" (1) makes VMware
pick a 32-bit "otherGuest" type.

vmw:osType (vmware_guest_id) is VMware's guest id, which vSphere shows and
which chooses its defaults: a version-specific id when the OS name carries a
version VMware knows ("debian+bookworm" does not, "debootstrap+debian12"
does), else the family's version-independent id, else "otherLinux64Guest"
for the Linux families.
"""

import re
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class OsType:
    """One CIM OsType value and how we describe it."""

    cim_id: int
    description: str
    vmware: Optional[str] = None  # vmw:osType, when not version-specific


OTHER = OsType(1, "Other")
LINUX_64 = OsType(101, "Linux 64-Bit", "otherLinux64Guest")

# (keyword, type): the first keyword found among the OS name's words wins, in
# this order, so that "centos" is not taken for the "rhel" it derives from.
KEYWORDS: Tuple[Tuple[str, OsType], ...] = (
    ("ubuntu", OsType(94, "Ubuntu 64-Bit", "ubuntu64Guest")),
    ("debian", OsType(96, "Debian 64-Bit")),
    ("debootstrap", OsType(96, "Debian 64-Bit")),
    ("centos", OsType(107, "CentOS 64-bit", "centos64Guest")),
    ("oracle", OsType(109, "Oracle Enterprise Linux 64-bit", "oracleLinux64Guest")),
    ("oel", OsType(109, "Oracle Enterprise Linux 64-bit", "oracleLinux64Guest")),
    ("rhel", OsType(80, "RedHat Enterprise Linux 64-Bit")),
    ("redhat", OsType(80, "RedHat Enterprise Linux 64-Bit")),
    ("fedora", OsType(101, "Fedora (Linux 64-Bit)", "fedora64Guest")),
    ("sles", OsType(85, "SLES 64-Bit")),
    ("opensuse", OsType(83, "SUSE 64-Bit", "opensuse64Guest")),
    ("suse", OsType(83, "SUSE 64-Bit", "opensuse64Guest")),
    ("mandriva", OsType(90, "Mandriva 64-Bit")),
    ("freebsd", OsType(78, "FreeBSD 64-Bit", "freebsd64Guest")),
    ("openbsd", OsType(65, "OpenBSD")),
    ("netbsd", OsType(43, "NetBSD")),
    ("solaris", OsType(81, "Solaris 64-Bit", "solaris11_64Guest")),
    # Windows: specific versions first, then the family.  CIM has no generic
    # "Windows 64-bit" value, so the family maps to 102 "Other 64-Bit" with a
    # description saying Windows, which is what importers show the user.
    ("win2008r2", OsType(103, "Microsoft Windows Server 2008 R2", "windows7Server64Guest")),
    ("win2008", OsType(77, "Microsoft Windows Server 2008 64-Bit", "winLonghorn64Guest")),
    ("win2003", OsType(70, "Microsoft Windows Server 2003 64-Bit", "winNetStandard64Guest")),
    ("win7", OsType(105, "Microsoft Windows 7", "windows7Guest")),
    ("winxp", OsType(71, "Windows XP 64-Bit", "winXPPro64Guest")),
    ("windows", OsType(102, "Microsoft Windows (64-bit)")),
    ("win", OsType(102, "Microsoft Windows (64-bit)")),
    ("linux", LINUX_64),
)

_WORD = re.compile(r"[a-z0-9]+")

# keyword -> {version: VMware guest id}, for families whose ids are per version.
VMWARE_VERSIONED = {
    "debian": {str(v): "debian%d_64Guest" % v for v in range(6, 13)},
    "rhel": {str(v): "rhel%d_64Guest" % v for v in range(5, 10)},
    "redhat": {str(v): "rhel%d_64Guest" % v for v in range(5, 10)},
    "centos": {str(v): "centos%d_64Guest" % v for v in (6, 7, 8, 9)},
    "sles": {str(v): "sles%d_64Guest" % v for v in (10, 11, 12, 15)},
    "win": {"10": "windows9_64Guest", "11": "windows11_64Guest",
            "2012": "windows8Server64Guest", "2016": "windows9Server64Guest",
            "2019": "windows2019srv_64Guest", "2022": "windows2019srvNext_64Guest"},
}
VMWARE_VERSIONED["windows"] = VMWARE_VERSIONED["win"]
VMWARE_VERSIONED["debootstrap"] = VMWARE_VERSIONED["debian"]
OTHER_LINUX_VMWARE = "otherLinux64Guest"
_NOT_LINUX = ("freebsd", "openbsd", "netbsd", "solaris", "win", "windows")


def os_type_for(os_name: Optional[str]) -> OsType:
    """The OsType guessed from a Ganeti OS name (see the module docstring)."""
    if not os_name:
        return LINUX_64
    words = _WORD.findall(os_name.lower())
    for keyword, os_type in KEYWORDS:
        for word in words:
            # "debian11", "ubuntu2204", "centos7": a keyword followed by digits.
            if word == keyword or (word.startswith(keyword)
                                   and word[len(keyword):].isdigit()):
                return os_type
    return LINUX_64


def description_for(cim_id: int) -> str:
    """A description for a CIM id the model carries without one."""
    for os_type in (OTHER, LINUX_64) + tuple(t for _, t in KEYWORDS):
        if os_type.cim_id == cim_id:
            return os_type.description
    return "CIM operating system type %d" % cim_id


def vmware_guest_id(os_name: Optional[str]) -> Optional[str]:
    """VMware's guest id (vmw:osType) for a Ganeti OS name (module docstring)."""
    os_type = os_type_for(os_name)
    words = _WORD.findall((os_name or "").lower())
    for index, word in enumerate(words):
        for keyword, versions in VMWARE_VERSIONED.items():
            if not word.startswith(keyword):
                continue
            version = word[len(keyword):]
            if not version and index + 1 < len(words):
                version = words[index + 1]  # "debian-12", "win 2019"
            if version in versions:
                return versions[version]
    if os_type.vmware:
        return os_type.vmware
    keyword = next((k for k, t in KEYWORDS if t is os_type), None)
    if os_type.cim_id in (1, 102) or keyword in _NOT_LINUX:
        return None
    return OTHER_LINUX_VMWARE
