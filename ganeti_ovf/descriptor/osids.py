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

vmw:osType is added only where VMware has a version-independent guest id.
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
