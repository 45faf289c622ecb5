"""Pure-Python disk image format inspection: which format a file holds.

This module owns the decision "what is this disk image and may qemu-img open
it".  It reads only headers, with os.pread inside a Member's byte range, and
never runs a program.  Each format is one small class: how it is recognised,
what its header says, and its safety checks declared as data.  Every check of
the matching format runs; failures are collected and raised once.  A file that
matches no format is raw; a file that matches two formats is refused, since
qemu-img would not read it the way we would.

Specifications read: qemu's docs/interop/qcow2.txt, VMware's "Virtual Disk
Format 5.0", Microsoft's "Virtual Hard Disk Image Format Specification", and
the VirtualBox VDI header as qemu's block/vdi.c documents it.
"""

import itertools
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

Fields = Dict[str, Any]


@dataclass(frozen=True)
class DiskImage:
    """What inspection found: qemu-img driver name, guest size, header facts."""

    format: str  # raw, qcow2, vmdk, vpc, vdi
    virtual_size: int
    details: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """A named safety rule: `ok(fields)` is True when the image obeys it."""

    reason: str  # said when the rule fails, e.g. "backing file set"
    ok: Callable[[Fields], bool]


class _Reader:
    """Bounded reads within one member: nothing outside its range is seen."""

    def __init__(self, fd: int, member: Member) -> None:
        self.fd = fd
        self.offset = member.offset
        self.size = member.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` of the member; short at its end."""
        if offset < 0 or length <= 0 or offset >= self.size:
            return b""
        length = min(length, self.size - offset)
        chunks: List[bytes] = []
        while length > 0:
            chunk = os.pread(self.fd, length, self.offset + offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)


class Format:
    """One disk format: recognition, header parsing and checks as data."""

    name = ""  # qemu-img driver name, or a label for refused formats
    checks: Tuple[Check, ...] = ()

    def matches(self, reader: _Reader) -> bool:
        raise NotImplementedError

    def parse(self, reader: _Reader) -> Fields:
        """The header fields the checks and virtual_size use."""
        return {}

    def virtual_size(self, fields: Fields) -> int:
        """The guest size in bytes; every format that can be accepted says it."""
        raise NotImplementedError

    def details(self, fields: Fields) -> Fields:
        """Facts worth reporting (subformat, creator, hardware version)."""
        return {}


def _refused(reason: str) -> Tuple[Check, ...]:
    return (Check(reason, lambda fields: False),)


def _if_descriptor(ok: Callable[[Fields], bool]) -> Callable[[Fields], bool]:
    """A descriptor rule; a missing descriptor is reported once, by its own check."""
    return lambda f: f["descriptor"] is None or ok(f)


# --- qcow2 -----------------------------------------------------------------
# Big-endian header (qcow2.txt): 0 magic "QFI\xfb", 4 version, 8 backing file
# offset (u64), 16 backing file size, 20 cluster bits, 24 size (u64),
# 32 crypt method, 36 L1 size, 40 L1 offset (u64), 48 refcount table offset
# (u64), 56 refcount clusters, 60 nb_snapshots, 64 snapshots offset (u64);
# version 3 adds 72 incompatible features (u64), 80 compatible, 88 autoclear,
# 96 refcount order, 100 header length.  Header extensions (type u32, length
# u32, data padded to 8) follow the header, within the first cluster.
QCOW_MAGIC = b"QFI\xfb"
QCOW2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
QCOW2_V3_TAIL = struct.Struct(">QQQII")
QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_KNOWN = 0x1f  # dirty, corrupt, data file, compression, ext. L2
QCOW2_EXT_DATA_FILE = 0x44415441
QCOW2_EXT_ENCRYPTION = 0x0537BE77
QCOW2_MAX_EXTENSIONS = 256


class Qcow2(Format):
    """QEMU copy-on-write version 2 and 3."""

    name = "qcow2"
    checks = (
        Check("unsupported version", lambda f: f["version"] in (2, 3)),
        Check("truncated header", lambda f: not f["truncated"]),
        Check("cluster size out of range", lambda f: 9 <= f["cluster_bits"] <= 21),
        Check("backing file set", lambda f: f["backing_file_offset"] == 0),
        Check("encrypted", lambda f: f["crypt_method"] == 0
              and QCOW2_EXT_ENCRYPTION not in f["extensions"]),
        Check("internal snapshots present", lambda f: f["nb_snapshots"] == 0),
        Check("external data file set",
              lambda f: not f["incompatible"] & QCOW2_INCOMPAT_DATA_FILE
              and QCOW2_EXT_DATA_FILE not in f["extensions"]),
        Check("dirty (not cleanly closed)",
              lambda f: not f["incompatible"] & QCOW2_INCOMPAT_DIRTY),
        Check("marked corrupt", lambda f: not f["incompatible"] & QCOW2_INCOMPAT_CORRUPT),
        Check("unknown incompatible features",
              lambda f: not f["incompatible"] & ~QCOW2_INCOMPAT_KNOWN),
        Check("malformed header extensions", lambda f: not f["bad_extensions"]),
    )

    def matches(self, reader: _Reader) -> bool:
        head = reader.read(0, 8)
        # Version 1 shares the magic; it is QcowV1's, refused by name.
        return head[:4] == QCOW_MAGIC and head[4:8] != b"\0\0\0\1"

    def parse(self, reader: _Reader) -> Fields:
        data = reader.read(0, QCOW2_HEADER.size + QCOW2_V3_TAIL.size)
        fields: Fields = {"truncated": len(data) < QCOW2_HEADER.size,
                          "incompatible": 0, "extensions": (),
                          "bad_extensions": False}
        if fields["truncated"]:
            data = data.ljust(QCOW2_HEADER.size + QCOW2_V3_TAIL.size, b"\0")
        (_, fields["version"], fields["backing_file_offset"], _,
         fields["cluster_bits"], fields["size"], fields["crypt_method"], _, _, _,
         _, fields["nb_snapshots"], _) = QCOW2_HEADER.unpack_from(data)
        header_length = 72
        if fields["version"] == 3:
            (fields["incompatible"], _, _, _,
             header_length) = QCOW2_V3_TAIL.unpack_from(data, QCOW2_HEADER.size)
        if fields["version"] in (2, 3) and 9 <= fields["cluster_bits"] <= 21:
            exts, bad = _qcow2_extensions(reader, header_length,
                                          1 << fields["cluster_bits"])
            fields["extensions"], fields["bad_extensions"] = exts, bad
        return fields

    def virtual_size(self, fields: Fields) -> int:
        return fields["size"]


def _qcow2_extensions(reader: _Reader, start: int,
                      cluster_size: int) -> Tuple[Tuple[int, ...], bool]:
    """Header extension types, and whether their chain is malformed."""
    if start < 72 or start % 8 or start >= cluster_size:
        return (), True
    found: List[int] = []
    pos = start
    for _ in range(QCOW2_MAX_EXTENSIONS):
        head = reader.read(pos, 8)
        if len(head) < 8 or pos + 8 > cluster_size:
            return tuple(found), True
        ext_type, length = struct.unpack(">II", head)
        if ext_type == 0:
            return tuple(found), False
        found.append(ext_type)
        pos += 8 + (length + 7) // 8 * 8
    return tuple(found), True


# --- VMDK ------------------------------------------------------------------
# Little-endian SparseExtentHeader (VMDK 5.0, section "Hosted Sparse Extent
# Header"): 0 magic "KDMV", 4 version, 8 flags, 12 capacity (sectors, u64),
# 20 grain size (sectors), 28 descriptor offset (sectors), 36 descriptor size
# (sectors), 44 GTEs per GT (u32), 48 rgd offset, 56 gd offset, 64 overhead,
# 72 unclean shutdown (u8), 73 four line-end check bytes, 77 compression (u16).
VMDK_MAGIC = b"KDMV"
VMDK_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
VMDK_MAX_DESCRIPTOR_SECTORS = 2048  # 1 MiB of text is far more than enough
VMDK_CREATE_TYPES = ("streamOptimized", "monolithicSparse")
VMDK_NO_PARENT = "ffffffff"


class Vmdk(Format):
    """VMware hosted sparse extent with its descriptor embedded."""

    name = "vmdk"
    checks = (
        Check("truncated header", lambda f: not f["truncated"]),
        Check("unsupported sparse header version", lambda f: f["version"] in (1, 2, 3)),
        Check("zero capacity", lambda f: f["capacity"] > 0),
        Check("grain size not a power of two up to 1 GiB",
              lambda f: 0 < f["grain_size"] <= 0x200000
              and not f["grain_size"] & (f["grain_size"] - 1)),
        Check("unknown compression algorithm", lambda f: f["compression"] in (0, 1)),
        Check("no embedded descriptor", lambda f: f["descriptor"] is not None),
        Check("descriptor is not text", _if_descriptor(lambda f: f["descriptor_text"])),
        Check("createType is not streamOptimized or monolithicSparse",
              _if_descriptor(lambda f: f["create_type"] in VMDK_CREATE_TYPES)),
        Check("descriptor must have exactly one extent",
              _if_descriptor(lambda f: len(f["extents"]) == 1)),
        Check("extent is not this file's sparse data",
              _if_descriptor(lambda f: all(e[0] in ("RW", "RDONLY") and e[2] == "SPARSE"
                            and len(e) == 4 for e in f["extents"]))),
        Check("extent file name is not a plain file name",
              _if_descriptor(lambda f: all(_plain_name(e[3])
                                           for e in f["extents"] if len(e) == 4))),
        Check("extent size differs from header capacity",
              _if_descriptor(lambda f: all(e[1] == str(f["capacity"]) for e in f["extents"]))),
        Check("parent disk set (parentCID)",
              _if_descriptor(lambda f: f["descriptor"].get("parentCID", VMDK_NO_PARENT).lower()
              == VMDK_NO_PARENT)),
        Check("parent disk set (parentFileNameHint)",
              _if_descriptor(lambda f: "parentFileNameHint" not in f["descriptor"])),
    )

    def matches(self, reader: _Reader) -> bool:
        return reader.read(0, 4) == VMDK_MAGIC

    def parse(self, reader: _Reader) -> Fields:
        data = reader.read(0, VMDK_HEADER.size)
        fields: Fields = {"truncated": len(data) < VMDK_HEADER.size,
                          "descriptor": None, "descriptor_text": True,
                          "create_type": None, "extents": []}
        (_, fields["version"], _, fields["capacity"], fields["grain_size"],
         desc_offset, desc_size, _, _, _, _, _, _,
         fields["compression"]) = VMDK_HEADER.unpack(data.ljust(VMDK_HEADER.size, b"\0"))
        if (0 < desc_size <= VMDK_MAX_DESCRIPTOR_SECTORS and desc_offset > 0
                and (desc_offset + desc_size) * 512 <= reader.size):
            raw = reader.read(desc_offset * 512, desc_size * 512).split(b"\0", 1)[0]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                fields["descriptor_text"] = False
                text = ""
            settings, extents = _vmdk_descriptor(text)
            fields["descriptor"] = settings
            fields["create_type"] = settings.get("createType")
            fields["extents"] = extents
        return fields

    def virtual_size(self, fields: Fields) -> int:
        return fields["capacity"] * 512

    def details(self, fields: Fields) -> Fields:
        settings = fields["descriptor"] or {}
        out = {key: settings[key] for key in (
            "createType", "ddb.virtualHWVersion", "ddb.adapterType", "ddb.toolsVersion")
            if key in settings}
        if len(fields["extents"]) == 1 and len(fields["extents"][0]) == 4:
            out["extent"] = fields["extents"][0][3]
        return out


def _plain_name(name: str) -> bool:
    """A file name with no directory part: the extent must be this file."""
    return (bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


def _vmdk_descriptor(text: str) -> Tuple[Dict[str, str], List[Tuple[str, ...]]]:
    """Settings (key=value, quotes stripped) and extent lines, split in words.

    An extent line is `ACCESS SECTORS TYPE "NAME" [OFFSET]`; the name is kept
    whole even with spaces in it.
    """
    settings: Dict[str, str] = {}
    extents: List[Tuple[str, ...]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.split()[0] in ("RW", "RDONLY", "NOACCESS"):
            words, _, rest = line.partition('"')
            name, quote, tail = rest.partition('"')
            extents.append(tuple(words.split())
                           + ((name,) if quote else ()) + tuple(tail.split()))
            continue
        key, equal, value = line.partition("=")
        if equal:
            settings[key.strip()] = value.strip().strip('"')
    return settings, extents


# --- VHD (qemu's "vpc") ----------------------------------------------------
# Big-endian 512-byte footer at the end of the file, copied to the start of
# dynamic disks: 0 cookie "conectix", 8 features, 12 format version, 16 data
# offset (u64), 24 timestamp, 28 creator application, 32 creator version,
# 36 creator OS, 40 original size (u64), 48 current size (u64), 56 geometry,
# 60 disk type (2 fixed, 3 dynamic, 4 differencing), 64 checksum, 68 UUID.
VHD_COOKIE = b"conectix"
VHD_FOOTER = struct.Struct(">8sIIQI4sI4sQQIII")
VHD_TYPES = {2: "fixed", 3: "dynamic"}
# Dynamic disk header at the footer's data offset: 0 cookie "cxsparse",
# 8 data offset, 16 block allocation table offset (u64), 24 version,
# 28 max table entries (u32), 32 block size (u32).  Each table entry is the
# sector of a block's bitmap (then its data), or 0xffffffff: not stored.
VHD_DYNAMIC = struct.Struct(">8sQQIII")
VHD_UNUSED = 0xFFFFFFFF
VHD_MAX_ENTRIES = 1 << 22  # 8 TiB of 2 MiB blocks; bounds the table read


def _vhd_dynamic_header(reader: "_Reader", data_offset: int) -> Optional[tuple]:
    """(table offset, entries, block size) of a dynamic VHD's header, or
    None when there is none."""
    header = reader.read(data_offset, VHD_DYNAMIC.size)
    if len(header) < VHD_DYNAMIC.size or not header.startswith(b"cxsparse"):
        return None
    _, _, table, _, entries, block_size = VHD_DYNAMIC.unpack(header)
    return table, entries, block_size


def _vhd_table_usable(dynamic: Optional[tuple]) -> bool:
    """Whether the block table is one we read: at most VHD_MAX_ENTRIES
    entries of blocks made of whole sectors."""
    if dynamic is None:
        return False
    _, entries, block_size = dynamic
    return entries <= VHD_MAX_ENTRIES and block_size >= 512 and not block_size % 512


def _vhd_blocks_disjoint(reader: "_Reader", dynamic: tuple) -> bool:
    """Whether no two stored blocks of a dynamic VHD share bytes: one block
    mapped at many places would expand a small file into a large disk."""
    table, entries, block_size = dynamic
    raw = reader.read(table, 4 * entries)
    if len(raw) < 4 * entries:
        return False
    # A block is its sector bitmap (one bit a sector, in whole sectors),
    # then its data.
    bitmap_sectors = -(-(block_size // 512) // (8 * 512))
    span = bitmap_sectors + block_size // 512
    starts = sorted(sector for (sector,) in struct.iter_unpack(">I", raw)
                    if sector != VHD_UNUSED)
    return all(later - earlier >= span for earlier, later in itertools.pairwise(starts))


class Vpc(Format):
    """Microsoft Virtual PC / Hyper-V VHD, fixed or dynamic."""

    name = "vpc"
    checks = (
        Check("footer checksum mismatch", lambda f: f["checksum_ok"]),
        Check("differencing disk", lambda f: f["disk_type"] != 4),
        Check("unsupported disk type", lambda f: f["disk_type"] in (2, 3, 4)),
        Check("zero size", lambda f: f["current_size"] > 0),
        Check("dynamic disk header missing",
              lambda f: f["disk_type"] != 3 or f["dynamic_header"]),
        Check("block table of more than %d entries, or blocks not whole sectors"
              % VHD_MAX_ENTRIES,
              lambda f: f["disk_type"] != 3 or not f["dynamic_header"] or f["table_usable"]),
        Check("stored blocks overlap or are mapped more than once",
              lambda f: f["disk_type"] != 3 or f["blocks_disjoint"]),
    )

    def matches(self, reader: _Reader) -> bool:
        return self._footer(reader) is not None

    @staticmethod
    def _footer(reader: _Reader) -> Optional[bytes]:
        # qemu reads the copy at the start first: do the same.
        for offset in (0, reader.size - 512):
            footer = reader.read(offset, 512)
            if len(footer) == 512 and footer.startswith(VHD_COOKIE):
                return footer
        return None

    def parse(self, reader: _Reader) -> Fields:
        footer = self._footer(reader) or bytes(512)
        (_, _, _, data_offset, _, creator, _, _, _, current_size, _, disk_type,
         checksum) = VHD_FOOTER.unpack_from(footer)
        summed = footer[:64] + b"\0\0\0\0" + footer[68:]
        dynamic = _vhd_dynamic_header(reader, data_offset)
        usable = _vhd_table_usable(dynamic)
        return {"data_offset": data_offset, "current_size": current_size,
                "disk_type": disk_type, "creator": creator,
                "checksum_ok": (~sum(summed)) & 0xFFFFFFFF == checksum,
                "dynamic_header": dynamic is not None,
                "table_usable": usable,
                "blocks_disjoint": usable and _vhd_blocks_disjoint(reader, dynamic)}

    def virtual_size(self, fields: Fields) -> int:
        # qemu may derive the size from the CHS geometry instead: the caller
        # takes qemu-img's figure for this format.
        return fields["current_size"]

    def details(self, fields: Fields) -> Fields:
        return {"subformat": VHD_TYPES.get(fields["disk_type"], "other"),
                "creator": fields["creator"].decode("latin-1")}


# --- VDI -------------------------------------------------------------------
# Little-endian header after a 64-byte text banner: 64 signature 0xbeda107f,
# 68 version (0x00010001), 72 header size, 76 image type (1 dynamic, 2 fixed,
# 3 undo, 4 differencing), 80 flags, 84 description (256), 340 blocks offset,
# 344 data offset, 348 cylinders, heads, sectors, sector size, 364 unused,
# 368 disk size (u64), 376 block size, 380 block extra, 384 blocks,
# 388 blocks allocated, 392 UUIDs: image, last snapshot, link, parent (16 each).
VDI_SIGNATURE = 0xBEDA107F
VDI_HEADER = struct.Struct("<IIII")
VDI_GEOMETRY = struct.Struct("<IIIIIIQ")
VDI_BLOCKS = struct.Struct("<IIII")  # 376: block size, extra, blocks, allocated
VDI_TYPES = {1: "dynamic", 2: "fixed"}
VDI_UNALLOCATED = 0xFFFFFFFE  # this and above: a block map entry with no data
VDI_MAX_BLOCKS = 1 << 24  # 16 TiB of 1 MiB blocks; bounds the block map read


class Vdi(Format):
    """VirtualBox disk image, dynamic or fixed."""

    name = "vdi"
    checks = (
        Check("truncated header", lambda f: not f["truncated"]),
        Check("unsupported version", lambda f: f["version"] == 0x00010001),
        Check("differencing image", lambda f: f["type"] != 4),
        Check("unsupported image type", lambda f: f["type"] in (1, 2, 4)),
        Check("parent image set", lambda f: not any(f["link_uuid"] + f["parent_uuid"])),
        Check("sector size is not 512", lambda f: f["sector_size"] == 512),
        Check("zero size", lambda f: f["disk_size"] > 0),
        Check("block count out of range",
              lambda f: f["blocks_allocated"] <= f["blocks"] <= VDI_MAX_BLOCKS),
        # qemu reads blocks past the end of a truncated file as zeros:
        # a cut download would import as a silently damaged disk.
        Check("truncated: the block map or data end past the end of the file",
              lambda f: f["bmap_ok"] and f["data_end"] <= f["file_size"]),
        Check("block map entry past the allocated blocks", lambda f: f["entries_ok"]),
        # One stored block mapped at many places would expand a small file
        # into a large allocated disk, past the free-space check.
        Check("a data block is mapped more than once", lambda f: f["entries_unique"]),
    )

    def matches(self, reader: _Reader) -> bool:
        return reader.read(64, 4) == struct.pack("<I", VDI_SIGNATURE)

    def parse(self, reader: _Reader) -> Fields:
        data = reader.read(0, 456)
        fields: Fields = {"truncated": len(data) < 456, "file_size": reader.size}
        data = data.ljust(456, b"\0")
        _, fields["version"], _, fields["type"] = VDI_HEADER.unpack_from(data, 64)
        (bmap_offset,) = struct.unpack_from("<I", data, 340)
        (data_offset, _, _, _, fields["sector_size"], _,
         fields["disk_size"]) = VDI_GEOMETRY.unpack_from(data, 344)
        (block_size, extra, fields["blocks"],
         fields["blocks_allocated"]) = VDI_BLOCKS.unpack_from(data, 376)
        fields["link_uuid"] = data[424:440]
        fields["parent_uuid"] = data[440:456]
        fields["data_end"] = data_offset + fields["blocks_allocated"] * (block_size + extra)
        fields["bmap_ok"] = fields["entries_ok"] = fields["entries_unique"] = False
        if fields["blocks"] <= VDI_MAX_BLOCKS:
            bmap = reader.read(bmap_offset, 4 * fields["blocks"])
            fields["bmap_ok"] = len(bmap) == 4 * fields["blocks"]
            if fields["bmap_ok"]:
                mapped = [entry for (entry,) in struct.iter_unpack("<I", bmap)
                          if entry < VDI_UNALLOCATED]
                fields["entries_ok"] = all(entry < fields["blocks_allocated"]
                                           for entry in mapped)
                fields["entries_unique"] = len(set(mapped)) == len(mapped)
        return fields

    def virtual_size(self, fields: Fields) -> int:
        return fields["disk_size"]

    def details(self, fields: Fields) -> Fields:
        return {"subformat": VDI_TYPES.get(fields["type"], "other")}


# --- formats recognised only to be refused ---------------------------------
class _Magic(Format):
    """A format refused by name, recognised by bytes at a fixed offset."""

    def __init__(self, name: str, offset: int, magics: Tuple[bytes, ...],
                 reason: str) -> None:
        self.name = name
        self.offset = offset
        self.magics = magics
        self.checks = _refused(reason)

    def matches(self, reader: _Reader) -> bool:
        longest = max(len(magic) for magic in self.magics)
        head = reader.read(self.offset, longest)
        return any(head.startswith(magic) for magic in self.magics)


class VmdkText(Format):
    """A VMDK descriptor file: its extents would be other files, so refused."""

    name = "vmdk descriptor"
    checks = _refused("a text descriptor file names other files as its data;"
                      " only monolithic VMDK (streamOptimized, monolithicSparse) is accepted")

    def matches(self, reader: _Reader) -> bool:
        # qemu's probe: the first line that is not a comment is "version=".
        for line in reader.read(0, 1024).split(b"\n")[:-1]:
            line = line.strip()
            if line and not line.startswith(b"#"):
                return line.startswith(b"version=")
        return False


# The explicit registry.  Anything not matching one of these is raw.
FORMATS: Tuple[Format, ...] = (
    Qcow2(), Vmdk(), Vpc(), Vdi(), VmdkText(),
    _Magic("qcow", 0, (QCOW_MAGIC + b"\0\0\0\1",), "qcow version 1 is not supported"),
    _Magic("vmdk3", 0, (b"COWD",), "VMware 3 (COWD) sparse disks are not supported"),
    _Magic("vhdx", 0, (b"vhdxfile",),
           "VHDX is not supported; convert it to VHD, qcow2 or raw first"),
    _Magic("qed", 0, (b"QED\0",), "QED is not supported"),
    _Magic("luks", 0, (b"LUKS\xba\xbe",), "LUKS-encrypted images are not supported"),
    _Magic("cloop", 0, (b"#!/bin/sh\n#V2.0 Format\n",), "cloop is not supported"),
    _Magic("bochs", 0, (b"Bochs Virtual HD Image",), "bochs is not supported"),
    _Magic("parallels", 0, (b"WithoutFreeSpace", b"WithouFreSpacExt"),
           "parallels is not supported"),
    _Magic("iso", 0x8001, (b"CD001",), "an ISO 9660 image is not a disk"),
    # A compressed file not declared as such would become a garbage disk.
    _Magic("gzip", 0, (b"\x1f\x8b\x08",), "compressed data not declared as gzip"),
    _Magic("xz", 0, (b"\xfd7zXZ\0",), "xz-compressed data is not a disk"),
)


def open_image(member: Member) -> int:
    """The descriptor the package opened for `member` (the caller must not
    close it), whose byte range must lie inside the file; DiskError otherwise."""
    try:
        info = os.fstat(member.fd)
    except OSError as err:
        raise DiskError("%s: cannot read %s: %s"
                        % (member.name, member.path, err.strerror)) from None
    if not stat.S_ISREG(info.st_mode) or member.offset < 0 or member.size < 0 \
            or member.offset + member.size > info.st_size:
        raise DiskError("%s: byte range %d+%d lies outside %s"
                        % (member.name, member.offset, member.size, member.path))
    return member.fd


def inspect(member: Member, declared: Optional[str] = None) -> DiskImage:
    """Identify the disk image in `member`; DiskError if it is refused.

    `declared` is the format the package names (None: it names none, or one
    unknown).  A raw image's virtual size is the member's size (qemu rounds
    it up to whole sectors).
    """
    fd = open_image(member)
    try:
        reader = _Reader(fd, member)
        matched = [fmt for fmt in FORMATS if fmt.matches(reader)]
        if len(matched) > 1:
            raise DiskError("%s: refused image: it matches several formats (%s)"
                            % (member.name, ", ".join(f.name for f in matched)))
        if not matched:
            return DiskImage("raw", member.size, {})
        fmt = matched[0]
        fields = fmt.parse(reader)
    except OSError as err:
        raise DiskError("%s: cannot read %s: %s"
                        % (member.name, member.path, err.strerror)) from None
    failures = [check.reason for check in fmt.checks if not _passes(check, fields)]
    if failures or not fmt.checks:
        raise DiskError("%s: refused %s image: %s"
                        % (member.name, fmt.name, "; ".join(failures) or "no checks"))
    if declared == "raw":
        # Like two formats matching: the package and the bytes disagree on
        # how to read the disk, so neither reading is safe to pick.  (An
        # image its own checks refuse was refused above, for that reason.)
        raise DiskError("%s: refused image: declared raw but it holds a %s image"
                        " (ambiguous format)" % (member.name, fmt.name))
    return DiskImage(fmt.name, fmt.virtual_size(fields), fmt.details(fields))


def _passes(check: Check, fields: Fields) -> bool:
    # A rule that cannot be evaluated (a field another failure left unset or
    # of the wrong shape) counts as failed, never as an escaped exception.
    try:
        return bool(check.ok(fields))
    except (LookupError, TypeError, ValueError, AttributeError):
        return False
