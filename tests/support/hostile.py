"""Hostile packages, built at test time: each one breaks one rule of the import.

Owns the corpus that tests/test_hostile.py feeds to `gnt-ovf import`.  A
`Scene` plants a secret host file (a random token in tmp/secret/) that the
hostile images, links, entities and hrefs point at; every `Case` builds one
package in the scene's package folder from real parts (qemu-img images, the
project's descriptor writer, tarfile, zlib, header patches in Python) and
names the rule its refusal must mention.  Nothing binary is checked in.
"""

import gzip
import hashlib
import os
import secrets
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.writer import write_descriptor
from ganeti_ovf.model import Appliance, Disk, FileRef, GanetiSettings, Nic, VirtualSystem

MIB = 1024 * 1024
NAME = "appliance.example.com"
OVF = "appliance.ovf"
DISK_SIZE = 4 * MIB
HREF_MARK = "HREF-PLACEHOLDER"  # stands for a disk href the writer would refuse
FileData = Union[bytes, str]  # bytes, or the path of a file to copy


@dataclass(frozen=True)
class Scene:
    """A test's private tree: the planted secret, the package and output folders."""

    root: str
    secret: str  # absolute path of the host file hostile packages point at
    token: str  # its content: must never appear in any output
    pkgdir: str
    out: str

    def path(self, *parts: str) -> str:
        return os.path.join(self.pkgdir, *parts)


def plant_secret(root: str) -> Scene:
    """Create root/secret/host-secret.txt holding a fresh random token."""
    token = "HOST-SECRET-" + secrets.token_hex(16)
    secret_dir = os.path.join(root, "secret")
    os.makedirs(secret_dir)
    secret = os.path.join(secret_dir, "host-secret.txt")
    with open(secret, "w") as handle:
        handle.write(token + "\n")
    pkgdir = os.path.join(root, "pkg")
    os.makedirs(pkgdir)
    return Scene(root, secret, token, pkgdir, os.path.join(root, "out"))


# ------------------------------------------------------------------ parts


def qemu_img(*args: str) -> None:
    # qemu-img's LUKS key set-up times a PBKDF and fails now and then on a
    # busy machine ("Unable to get accurate CPU usage"): try again then.
    for _ in range(10):
        result = subprocess.run(["qemu-img"] + list(args), capture_output=True)
        if result.returncode == 0:
            return
        if b"accurate CPU usage" not in result.stderr:
            break
    result.check_returncode()


def guest_data(size: int = DISK_SIZE, seed: int = 1) -> bytes:
    """Recognisable, incompressible-looking guest bytes (non-zero everywhere)."""
    block = hashlib.sha512(b"guest-%d" % seed).digest() * 2048  # 128 KiB
    return (block * (size // len(block) + 1))[:size]


def raw_file(scene: Scene, name: str = "src.raw", size: int = DISK_SIZE,
             seed: int = 1) -> str:
    path = os.path.join(scene.root, name)
    with open(path, "wb") as handle:
        handle.write(guest_data(size, seed))
    return path


def image(scene: Scene, fmt: str, name: str, options: Optional[str] = None,
          size: int = DISK_SIZE) -> str:
    """A `fmt` image of guest_data() at scene.path(name)."""
    dest = scene.path(name)
    args = ["convert", "-q", "-f", "raw", "-O", fmt]
    if options:
        args += ["-o", options]
    qemu_img(*(args + [raw_file(scene, size=size), dest]))
    return dest


def descriptor(href: str = "appliance-disk0.qcow2", fmt: str = "qcow2",
               capacity: int = DISK_SIZE, compression: str = "identity",
               chunk_size: Optional[int] = None, name: str = NAME,
               ganeti: Optional[GanetiSettings] = None) -> bytes:
    """A valid OVF 1.0 descriptor (the project's writer) for one disk file."""
    written_href = href if "/" not in href and ":" not in href and ".." not in href \
        and "%" not in href else HREF_MARK
    ref = FileRef("file0", written_href, None, compression, chunk_size)
    disk = Disk("vmdisk0", capacity, ref, versions.FORMAT_URIS[fmt][0])
    system = VirtualSystem(system_id="appliance", name="NAME-PLACEHOLDER", vcpus=2,
                           memory_mib=512, disks=(disk,),
                           nics=(Nic(network="VM Network", mac="aa:00:00:00:00:01"),),
                           ganeti=ganeti)
    data = write_descriptor(Appliance("1.x", (system,), (ref,)), external=ganeti is None)
    data = data.replace(HREF_MARK.encode(), href.encode())
    return data.replace(b"NAME-PLACEHOLDER", name.encode("utf-8"))


def manifest_text(scene: Scene, names: Sequence[str], algorithm: str = "sha256") -> bytes:
    lines = []
    for item in names:
        with open(scene.path(item), "rb") as handle:
            digest = hashlib.new(algorithm, handle.read()).hexdigest()
        lines.append("%s(%s)= %s\n" % (algorithm.upper(), item, digest))
    return "".join(lines).encode()


def folder(scene: Scene, data: bytes, files: Dict[str, FileData],
           manifest: Optional[str] = "sha256",
           edit_manifest: Optional[Callable[[bytes], bytes]] = None) -> str:
    """Write the descriptor, `files` and a manifest of them all; the .ovf path."""
    with open(scene.path(OVF), "wb") as handle:
        handle.write(data)
    for name, content in files.items():
        if isinstance(content, str):
            if os.path.abspath(content) != scene.path(name):
                os.rename(content, scene.path(name))
        else:
            with open(scene.path(name), "wb") as handle:
                handle.write(content)
    if manifest:
        text = manifest_text(scene, [OVF] + list(files), manifest)
        if edit_manifest:
            text = edit_manifest(text)
        with open(scene.path("appliance.mf"), "wb") as handle:
            handle.write(text)
    return scene.path(OVF)


def package_members(scene: Scene) -> List[str]:
    """The folder's files in OVA order: descriptor, manifest, then the rest."""
    names = sorted(os.listdir(scene.pkgdir))
    first = [n for n in (OVF, "appliance.mf", "appliance.cert") if n in names]
    return first + [n for n in names if n not in first and not n.endswith(".ova")]


def ova(scene: Scene, extra: Sequence[Tuple[tarfile.TarInfo, Optional[bytes]]] = (),
        fmt: int = tarfile.USTAR_FORMAT, skip: Sequence[str] = ()) -> str:
    """Pack the folder into appliance.ova, then append `extra` raw entries."""
    path = scene.path("appliance.ova")
    with tarfile.open(path, "w", format=fmt) as archive:
        for name in package_members(scene):
            if name not in skip:
                archive.add(scene.path(name), arcname=name)
        for info, content in extra:
            archive.addfile(info, None if content is None else _BytesReader(content))
    return path


class _BytesReader:
    """The file object tarfile.addfile wants, over bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
          linkname: str = "", pax: Optional[Dict[str, str]] = None) -> Tuple[tarfile.TarInfo,
                                                                            Optional[bytes]]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    if pax:
        info.pax_headers = dict(pax)
    return info, (data if kind == tarfile.REGTYPE else None)


def basic_folder(scene: Scene, fmt: str = "qcow2", **kwargs: object) -> str:
    """A good package with one small disk of `fmt` (before any mischief)."""
    href = "appliance-disk0.%s" % ("img" if fmt == "raw" else fmt)
    options = "subformat=streamOptimized" if fmt == "vmdk" else None
    disk = image(scene, fmt, href, options)
    return folder(scene, descriptor(href, fmt), {href: disk}, **kwargs)  # type: ignore


def edit_descriptor(scene: Scene, old: bytes, new: bytes, count: int = 1) -> None:
    """Replace text in the folder's descriptor and re-make its manifest."""
    path = scene.path(OVF)
    with open(path, "rb") as handle:
        data = handle.read()
    if data.count(old) < count:
        raise AssertionError("descriptor lacks %r" % old)
    with open(path, "wb") as handle:
        handle.write(data.replace(old, new))
    remanifest(scene)


def remanifest(scene: Scene) -> None:
    names = [n for n in package_members(scene) if n not in ("appliance.mf", "appliance.cert")]
    with open(scene.path("appliance.mf"), "wb") as handle:
        handle.write(manifest_text(scene, names))


# ------------------------------------------------------------------ header patches


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def qcow2_set_incompatible(path: str, bits: int) -> None:
    """OR `bits` into a qcow2 v3 header's incompatible feature field (offset 72)."""
    with open(path, "rb") as handle:
        header = handle.read(104)
    if struct.unpack(">I", header[4:8])[0] != 3:
        raise AssertionError("%s is not a qcow2 v3 image" % path)
    current = struct.unpack(">Q", header[72:80])[0]
    patch(path, 72, struct.pack(">Q", current | bits))


def qcow2_set_data_file(path: str, name: str) -> None:
    """Rewrite the external data file name header extension (0x44415441)."""
    with open(path, "rb") as handle:
        cluster = handle.read(65536)
    header_length = struct.unpack(">I", cluster[100:104])[0]
    pos, extensions = header_length, []
    while True:
        ext_type, length = struct.unpack(">II", cluster[pos:pos + 8])
        if ext_type == 0:
            break
        extensions.append((ext_type, cluster[pos + 8:pos + 8 + length]))
        pos += 8 + (length + 7) // 8 * 8
    extensions = [(t, name.encode() if t == 0x44415441 else d) for t, d in extensions]
    if not any(t == 0x44415441 for t, _ in extensions):
        raise AssertionError("%s has no data file extension" % path)
    out = b"".join(struct.pack(">II", t, len(d)) + d.ljust((len(d) + 7) // 8 * 8, b"\0")
                   for t, d in extensions) + bytes(8)
    patch(path, header_length, out.ljust(pos + 8 - header_length, b"\0"))


def vmdk_replace_descriptor(path: str, edit: Callable[[str], str]) -> None:
    """Edit the descriptor embedded in a hosted sparse VMDK, in place."""
    with open(path, "rb") as handle:
        header = handle.read(512)
    offset, size = struct.unpack("<QQ", header[28:44])
    with open(path, "rb") as handle:
        handle.seek(offset * 512)
        text = handle.read(size * 512).split(b"\0", 1)[0].decode()
    new = edit(text).encode()
    if len(new) > size * 512:
        raise AssertionError("new VMDK descriptor does not fit")
    patch(path, offset * 512, new.ljust(size * 512, b"\0"))


def tar_member_header(path: str, name: str) -> int:
    with tarfile.open(path) as archive:
        return archive.getmember(name).offset


def tar_set_size(path: str, name: str, size: int) -> None:
    """Set the size field of member `name`'s header and fix its checksum."""
    offset = tar_member_header(path, name)
    with open(path, "rb") as handle:
        handle.seek(offset)
        block = bytearray(handle.read(512))
    block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    patch(path, offset, bytes(block))


# ------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Case:
    """One hostile package: how to build it and what its refusal must name."""

    name: str
    rule: str  # text the one "Failure: " line must contain
    build: Callable[[Scene], str]
    args: Tuple[str, ...] = ()


CASES: List[Case] = []


def case(rule: str, *args: str, name: Optional[str] = None) -> Callable:
    def register(build: Callable[[Scene], str]) -> Callable[[Scene], str]:
        CASES.append(Case(name or build.__name__, rule, build, tuple(args)))
        return build
    return register


def _variants(rule: str, values: Dict[str, object],
              build: Callable[[Scene, object], str], *args: str) -> None:
    for suffix, value in values.items():
        CASES.append(Case("%s_%s" % (build.__name__, suffix), rule,
                          lambda scene, v=value: build(scene, v), tuple(args)))


# --- the archive ---------------------------------------------------------

def _ova_in_place_of_disk(scene: Scene, info: Tuple[tarfile.TarInfo, Optional[bytes]]) -> str:
    basic_folder(scene)
    return ova(scene, [info], skip=("appliance-disk0.qcow2",))


def ova_member(scene: Scene, variant: object) -> str:
    kind, target = variant  # type: ignore[misc]
    target = target.replace("SECRET", scene.secret)
    return _ova_in_place_of_disk(scene, entry("appliance-disk0.qcow2", kind, linkname=target))


_variants("only regular files are allowed", {
    "symlink": (tarfile.SYMTYPE, "SECRET"),
    "symlink_relative": (tarfile.SYMTYPE, "../secret/host-secret.txt"),
    "hardlink": (tarfile.LNKTYPE, "SECRET"),
    "chardevice": (tarfile.CHRTYPE, ""),
    "blockdevice": (tarfile.BLKTYPE, ""),
    "fifo": (tarfile.FIFOTYPE, ""),
}, ova_member)


def ova_name(scene: Scene, name: object) -> str:
    basic_folder(scene)
    return ova(scene, [entry(str(name).replace("SECRET", scene.secret), data=b"x")])


_variants("unsafe member name", {
    "dotdot": "../secret/host-secret.txt",
    "absolute": "SECRET",
    "inner_dotdot": "a/../../x",
}, ova_name)


@case("duplicate member name")
def ova_duplicate_plain(scene: Scene) -> str:
    basic_folder(scene)
    return ova(scene, [entry("appliance-disk0.qcow2", data=scene.token.encode())])


@case("duplicate member name")
def ova_duplicate_pax_path(scene: Scene) -> str:
    basic_folder(scene)
    return ova(scene, [entry("innocent.txt", data=b"x", pax={"path": "appliance-disk0.qcow2"})],
               fmt=tarfile.PAX_FORMAT)


@case("duplicate member name")
def ova_duplicate_dot_slash(scene: Scene) -> str:
    basic_folder(scene)
    return ova(scene, [entry("./appliance.ovf", data=b"<x/>")])


@case("truncated archive")
def ova_truncated(scene: Scene) -> str:
    basic_folder(scene)
    path = ova(scene)
    offset = tar_member_header(path, "appliance-disk0.qcow2")
    os.truncate(path, offset + 512 + 4096)
    return path


@case("truncated archive")
def ova_data_past_eof(scene: Scene) -> str:
    basic_folder(scene)
    path = ova(scene)
    tar_set_size(path, "appliance-disk0.qcow2", 1 << 32)
    return path


# --- the descriptor ------------------------------------------------------

def _descriptor_text(scene: Scene, transform: Callable[[bytes], bytes]) -> str:
    path = basic_folder(scene)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(transform(data))
    remanifest(scene)
    return path


_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


@case("DOCTYPE")
def descriptor_xxe(scene: Scene) -> str:
    doctype = b'<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file://%s">]>\n' % \
        scene.secret.encode()
    return _descriptor_text(scene, lambda d: d.replace(_DECLARATION, _DECLARATION + doctype)
                            .replace(NAME.encode(), b"&xxe;", 1))


@case("DOCTYPE")
def descriptor_xxe_parameter_entity(scene: Scene) -> str:
    doctype = (b'<!DOCTYPE Envelope [<!ENTITY % ext SYSTEM "file://' + scene.secret.encode()
               + b'"> %ext;]>\n')
    return _descriptor_text(scene, lambda d: d.replace(_DECLARATION, _DECLARATION + doctype))


@case("invalid XML")
def descriptor_xxe_utf16(scene: Scene) -> str:
    doctype = '<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file://%s">]>\n' % scene.secret

    def utf16(data: bytes) -> bytes:
        text = data.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
        text = text.replace("?>\n", "?>\n" + doctype, 1).replace(NAME, "&xxe;", 1)
        return text.encode("utf-16")
    return _descriptor_text(scene, utf16)


@case("DOCTYPE")
def descriptor_billion_laughs(scene: Scene) -> str:
    lines = [b'<!ENTITY lol0 "lol">']
    lines += [b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)]
    doctype = b"<!DOCTYPE Envelope [" + b"".join(lines) + b"]>\n"
    return _descriptor_text(scene, lambda d: d.replace(_DECLARATION, _DECLARATION + doctype)
                            .replace(NAME.encode(), b"&lol9;", 1))


@case("nested deeper than")
def descriptor_deep_nesting(scene: Scene) -> str:
    deep = b"<x>" * 200 + b"</x>" * 200
    return _descriptor_text(scene, lambda d: d.replace(b"</VirtualSystem>",
                                                       deep + b"</VirtualSystem>"))


@case("more than the")
def descriptor_huge(scene: Scene) -> str:
    filler = b"<!--" + b"x" * (33 * MIB) + b"-->"
    return _descriptor_text(scene, lambda d: d.replace(b"</Envelope>",
                                                       filler + b"</Envelope>"))


@case("elements")
def descriptor_too_many_elements(scene: Scene) -> str:
    return _descriptor_text(scene, lambda d: d.replace(
        b"</VirtualSystem>", b"<Annotation>" + b"<x/>" * 250_000 + b"</Annotation>"
        b"</VirtualSystem>"))


def descriptor_href(scene: Scene, href: object) -> str:
    href = str(href).replace("SECRET", scene.secret)
    disk = image(scene, "qcow2", "appliance-disk0.qcow2")
    return folder(scene, descriptor(href), {"appliance-disk0.qcow2": disk})


_variants("ovf:href", {
    "dotdot": "../secret/host-secret.txt",
    "absolute": "SECRET",
    "http": "http://127.0.0.1:9/disk.qcow2",
    "file_url": "file://SECRET",
    "percent_dotdot": "%2e%2e%2fsecret%2fhost-secret.txt",
    "percent_absolute": "%2Fetc%2Fpasswd",
    "backslash": "..\\secret\\host-secret.txt",
}, descriptor_href)


@case("parentRef")
def descriptor_delta_disk(scene: Scene) -> str:
    path = basic_folder(scene)
    edit_descriptor(scene, b'ovf:diskId="vmdisk0"',
                    b'ovf:diskId="vmdisk0" ovf:parentRef="vmdisk1"')
    edit_descriptor(scene, b"</DiskSection>",
                    b'<Disk ovf:capacity="4194304" ovf:diskId="vmdisk1"/></DiskSection>')
    return path


@case("parentRef")
def descriptor_delta_disk_dangling(scene: Scene) -> str:
    path = basic_folder(scene)
    edit_descriptor(scene, b'ovf:diskId="vmdisk0"',
                    b'ovf:diskId="vmdisk0" ovf:parentRef="base"')
    return path


@case("ovf:compression")
def descriptor_bzip2(scene: Scene) -> str:
    path = basic_folder(scene)
    edit_descriptor(scene, b'ovf:id="file0"', b'ovf:id="file0" ovf:compression="bzip2"')
    return path


def descriptor_number(scene: Scene, change: object) -> str:
    old, new = change  # type: ignore[misc]
    path = basic_folder(scene)
    edit_descriptor(scene, old.encode(), new.encode())
    return path


_CPU = "<rasd:VirtualQuantity>2</rasd:VirtualQuantity>"
_MEMORY_UNITS = "<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
_MEMORY = "<rasd:VirtualQuantity>512</rasd:VirtualQuantity>"
_CAPACITY = 'ovf:capacity="4194304"'


def _quantity(value: str) -> str:
    return "<rasd:VirtualQuantity>%s</rasd:VirtualQuantity>" % value


def _memory_units(value: str) -> str:
    return "<rasd:AllocationUnits>%s</rasd:AllocationUnits>" % value


for _suffix, _rule, _old, _new in (
        ("capacity_1e30", "ovf:capacity", _CAPACITY, 'ovf:capacity="1%s"' % ("0" * 30)),
        ("capacity_2pib", "ovf:capacity", _CAPACITY, 'ovf:capacity="%d"' % (2 << 50)),
        ("capacity_units_overflow", "ovf:capacity", 'ovf:capacityAllocationUnits="byte"',
         'ovf:capacityAllocationUnits="byte * 2^60"'),
        ("capacity_negative", "ovf:capacity", _CAPACITY, 'ovf:capacity="-4194304"'),
        ("capacity_hex", "ovf:capacity", _CAPACITY, 'ovf:capacity="0x400000"'),
        ("vcpus_1e9", "VirtualQuantity", _CPU, _quantity("1000000000")),
        ("vcpus_plus", "VirtualQuantity", _CPU, _quantity("+1")),
        ("vcpus_zero", "VirtualQuantity", _CPU, _quantity("0")),
        ("vcpus_unicode_digits", "VirtualQuantity", _CPU, _quantity("\u0663")),
        ("vcpus_fullwidth_digits", "VirtualQuantity", _CPU, _quantity("\uff12")),
        ("vcpus_underscore", "VirtualQuantity", _CPU, _quantity("1_0")),
        ("memory_bad_units", "AllocationUnits", _MEMORY_UNITS, _memory_units("hertz * 10^6")),
        ("memory_garbage_units", "AllocationUnits", _MEMORY_UNITS,
         _memory_units("byte * 2^20 * lots")),
        ("memory_exponent", "AllocationUnits", _MEMORY_UNITS,
         _memory_units("byte * 2^99999999")),
        ("memory_huge", "memory", _MEMORY, _quantity(str(1 << 61)))):
    CASES.append(Case("descriptor_number_" + _suffix, _rule,
                      lambda scene, o=_old, n=_new: descriptor_number(scene, (o, n))))


def descriptor_name(scene: Scene, name: object) -> str:
    disk = image(scene, "qcow2", "appliance-disk0.qcow2")
    return folder(scene, descriptor(name=str(name)), {"appliance-disk0.qcow2": disk})


_variants("control characters", {
    "nel": "evil\u0085name.example.com",
    "tab": "evil&#9;name.example.com",
    "escape_sequence": "evil\u009b31mname",
    "line_separator": "evil\u2028name",
}, descriptor_name)
_variants("instance name", {
    "spaces": "bad name!",
    "dotdot": "..",
    "staging_lookalike": ".gnt-ovf-staging-import.x",
    "slash": "..%2F..%2Fetc",
    "path": "a/../../escape",
}, descriptor_name)


# --- disk images -----------------------------------------------------------

def _qcow2(scene: Scene, *create: str, href: str = "appliance-disk0.qcow2",
           fmt: str = "qcow2") -> str:
    path = scene.path(href)
    qemu_img("create", "-q", "-f", "qcow2", *create, path, str(DISK_SIZE))
    return folder(scene, descriptor(href, fmt), {href: path})


def qcow2_backing(scene: Scene, backing: object) -> str:
    backing = str(backing).replace("SECRET", scene.secret)
    return _qcow2(scene, "-u", "-b", backing, "-F", "raw")


_variants("backing file set", {
    "absolute": "SECRET",
    "relative": "../secret/host-secret.txt",
    "json": 'json:{"driver": "raw", "file": {"driver": "file", "filename": "SECRET"}}',
    "nbd": "nbd://127.0.0.1:9/x",
}, qcow2_backing)


@case("backing file set")
def qcow2_backing_qcow2_format(scene: Scene) -> str:
    return _qcow2(scene, "-u", "-b", scene.secret, "-F", "qcow2")


@case("backing file set")
def declared_raw_really_qcow2(scene: Scene) -> str:
    """CVE-2024-40767: a raw-named image that is a qcow2 with a backing file."""
    return _qcow2(scene, "-u", "-b", scene.secret, "-F", "raw",
                  href="appliance-disk0.img", fmt="raw")


def declared_raw(scene: Scene, fmt: object) -> str:
    """A clean image of `fmt` whose Disk says ovf:format raw."""
    href = "appliance-disk0.img"
    path = image(scene, str(fmt), href)
    return folder(scene, descriptor(href, "raw"), {href: path})


for _fmt in ("qcow2", "vdi", "vpc"):
    _variants("declared raw but it holds a %s image (ambiguous format)" % _fmt,
              {_fmt: _fmt}, declared_raw)


@case("external data file set")
def qcow2_data_file(scene: Scene) -> str:
    href = "appliance-disk0.qcow2"
    path = scene.path(href)
    data = os.path.join(scene.root, "data-file.raw")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s,data_file_raw=on" % data,
             path, str(DISK_SIZE))
    os.unlink(data)
    qcow2_set_data_file(path, scene.secret)
    return folder(scene, descriptor(href), {href: path})


@case("encrypted")
def qcow2_encrypted(scene: Scene) -> str:
    return _qcow2(scene, "--object", "secret,id=sec0,data=hunter2",
                  "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10")


@case("internal snapshots present")
def qcow2_snapshot(scene: Scene) -> str:
    path = basic_folder(scene)
    qemu_img("snapshot", "-c", "snap1", scene.path("appliance-disk0.qcow2"))
    remanifest(scene)
    return path


def qcow2_feature(scene: Scene, bits: object) -> str:
    path = basic_folder(scene)
    qcow2_set_incompatible(scene.path("appliance-disk0.qcow2"), int(bits))  # type: ignore
    remanifest(scene)
    return path


_variants("dirty", {"dirty": 1}, qcow2_feature)
_variants("marked corrupt", {"corrupt": 2}, qcow2_feature)
_variants("unknown incompatible features", {"bit40": 1 << 40, "bit5": 1 << 5},
          qcow2_feature)


@case("qcow version 1")
def qcow1(scene: Scene) -> str:
    return _qcow2_like(scene, "qcow")


def _qcow2_like(scene: Scene, fmt: str, options: Optional[str] = None) -> str:
    href = "appliance-disk0.img"
    path = scene.path(href)
    args = ["create", "-q", "-f", fmt] + (["-o", options] if options else [])
    qemu_img(*(args + [path, str(DISK_SIZE)]))
    return folder(scene, descriptor(href, "raw"), {href: path})


@case("text descriptor file")
def vmdk_text_descriptor(scene: Scene) -> str:
    text = ('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            'createType="monolithicFlat"\n\n# Extent description\n'
            'RW 8192 FLAT "%s" 0\n\nddb.virtualHWVersion = "4"\n' % scene.secret)
    href = "appliance-disk0.vmdk"
    return folder(scene, descriptor(href, "vmdk"), {href: text.encode()})


@case("text descriptor file")
def vmdk_two_gb_max_extent(scene: Scene) -> str:
    href = "appliance-disk0.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
             scene.path(href), str(DISK_SIZE))
    extents = sorted(n for n in os.listdir(scene.pkgdir) if n != href)
    files: Dict[str, FileData] = {href: scene.path(href)}
    files.update({n: scene.path(n) for n in extents})
    return folder(scene, descriptor(href, "vmdk"), files)


def vmdk_embedded(scene: Scene, variant: object) -> str:
    href = "appliance-disk0.vmdk"
    path = image(scene, "vmdk", href, "subformat=monolithicSparse")
    secret = scene.secret

    def edit(text: str) -> str:
        lines = text.splitlines()
        if variant == "flat_extent":
            lines = ['RW 8192 FLAT "%s" 0' % secret if line.startswith("RW ") else line
                     for line in lines]
        elif variant == "sparse_extent_path":
            lines = ['RW 8192 SPARSE "%s"' % secret if line.startswith("RW ") else line
                     for line in lines]
        elif variant == "second_extent":
            lines = [line + '\nRW 8192 FLAT "%s" 0' % secret if line.startswith("RW ")
                     else line for line in lines]
        elif variant == "parent_hint":
            lines = ["parentCID=12345678" if line.startswith("parentCID") else line
                     for line in lines] + ['parentFileNameHint="%s"' % secret]
        elif variant == "create_type":
            lines = ['createType="vmfsSparse"' if line.startswith("createType") else line
                     for line in lines]
        return "\n".join(lines) + "\n"
    vmdk_replace_descriptor(path, edit)
    return folder(scene, descriptor(href, "vmdk"), {href: path})


_variants("refused vmdk image", {
    "flat_extent": "flat_extent",
    "sparse_extent_path": "sparse_extent_path",
    "second_extent": "second_extent",
    "parent_hint": "parent_hint",
    "create_type": "create_type",
}, vmdk_embedded)


@case("refused vdi image")
def vdi_with_parent(scene: Scene) -> str:
    href = "appliance-disk0.vdi"
    path = image(scene, "vdi", href)
    patch(path, 440, secrets.token_bytes(16))  # the parent UUID
    return folder(scene, descriptor(href, "vdi"), {href: path})


@case("differencing disk")
def vhd_differencing(scene: Scene) -> str:
    href = "appliance-disk0.vpc"
    path = image(scene, "vpc", href)
    size = os.path.getsize(path)
    for offset in (0, size - 512):
        with open(path, "rb") as handle:
            handle.seek(offset)
            footer = bytearray(handle.read(512))
        footer[60:64] = struct.pack(">I", 4)
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", (~sum(footer)) & 0xFFFFFFFF)
        patch(path, offset, bytes(footer))
    return folder(scene, descriptor(href, "vpc"), {href: path})


def truncated_image(scene: Scene, kind: object) -> str:
    """An image cut in half, listed with the digest of what is left (a cut
    download): qemu reads some formats' missing data as zeros."""
    fmt, options = kind  # type: ignore[misc]
    href = "appliance-disk0.%s" % fmt
    path = image(scene, fmt, href, options)
    os.truncate(path, os.path.getsize(path) // 2)
    return folder(scene, descriptor(href, fmt), {href: path})


# Each cut is found by a different layer: qemu-img check (qcow2, hosted
# sparse VMDK), the VDI header check, our streamOptimized reader, qemu's VHD
# driver when it opens the image.
for _suffix, (_fmt, _options, _rule) in {
    "qcow2": ("qcow2", None, "corruptions (truncated or damaged)"),
    "vdi": ("vdi", None, "truncated: the block map or data end past the end of the file"),
    "vdi_fixed": ("vdi", "static=on",
                  "truncated: the block map or data end past the end of the file"),
    "vmdk_stream": ("vmdk", "subformat=streamOptimized",
                    "VMDK grain table 0 entry 32 points past the end of the file"),
    "vmdk_sparse": ("vmdk", "subformat=monolithicSparse",
                    "points after EOF (truncated or damaged)"),
    "vpc": ("vpc", None, "The image has been truncated"),
}.items():
    _variants(_rule, {_suffix: (_fmt, _options)}, truncated_image)


# --- the declared capacity -------------------------------------------------
# DISK_SIZE is 4 MiB; the capacity declared below is less: the image must
# be refused, not imported grown past what the package promised.

def over_capacity(scene: Scene, kind: object) -> str:
    fmt, options = {"qcow2": ("qcow2", None),
                    "vmdk_stream": ("vmdk", "subformat=streamOptimized"),
                    "vdi": ("vdi", None)}[str(kind)]
    href = "appliance-disk0.%s" % fmt
    path = image(scene, fmt, href, options)
    return folder(scene, descriptor(href, fmt, capacity=DISK_SIZE // 2), {href: path})


_variants("virtual size 4194304 bytes is larger than the declared capacity of 2097152"
          " bytes", {kind: kind for kind in ("qcow2", "vmdk_stream", "vdi")}, over_capacity)


@case("virtual size 4194304 bytes is larger than the declared capacity of 0 bytes")
def capacity_zero(scene: Scene) -> str:
    basic_folder(scene)
    edit_descriptor(scene, b'ovf:capacity="%d"' % DISK_SIZE, b'ovf:capacity="0"')
    return scene.path(OVF)


@case("virtual size 4194304 bytes is larger than the declared capacity of 2097152 bytes")
def gzip_over_capacity(scene: Scene) -> str:
    """A gzip stream that inflates to a raw image larger than its capacity."""
    href = "appliance-disk0.img.gz"
    data = gzip.compress(guest_data())
    return folder(scene, descriptor(href, "raw", capacity=DISK_SIZE // 2,
                                    compression="gzip"), {href: data})


# --- compression and chunks ------------------------------------------------

def _gzip_folder(scene: Scene, payload: bytes, capacity: int = DISK_SIZE) -> str:
    href = "appliance-disk0.qcow2.gz"
    return folder(scene, descriptor(href, "qcow2", capacity=capacity, compression="gzip"),
                  {href: payload})


@case("expands beyond the limit")
def gzip_bomb(scene: Scene) -> str:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(100)] + [compressor.flush()]
    return _gzip_folder(scene, b"".join(parts))


def without_capacity(scene: Scene) -> None:
    """Drop the folder's ovf:capacity, as Ganeti's old converter wrote disks."""
    edit_descriptor(scene, b'ovf:capacity="%d" ovf:capacityAllocationUnits="byte" '
                    % DISK_SIZE, b"")


def gzip_no_capacity(scene: Scene, payload: bytes) -> str:
    """A raw disk, gzip-compressed, whose Disk states no capacity."""
    href = "appliance-disk0.img.gz"
    folder(scene, descriptor(href, "raw", compression="gzip"), {href: payload})
    without_capacity(scene)
    return scene.path(OVF)


def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(bytes(MIB)) for _ in range(size // MIB)]
    return b"".join(parts) + compressor.flush()


# No capacity: --max-disk-size (8 MiB, plus an eighth and 64 MiB of metadata
# slack: 76546048 bytes) bounds the inflation, and the refusal names it.
@case("expands beyond the limit of 76546048 bytes (--max-disk-size 8388608",
      "--max-disk-size", "8M")
def gzip_no_capacity_over_max_size(scene: Scene) -> str:
    return gzip_no_capacity(scene, gzip_of_zeros(80 * MIB))


def _gzipped_qcow2(scene: Scene) -> bytes:
    path = image(scene, "qcow2", "inner.qcow2")
    with open(path, "rb") as handle:
        data = gzip.compress(handle.read())
    os.unlink(path)
    return data


@case("truncated")
def gzip_truncated(scene: Scene) -> str:
    data = _gzipped_qcow2(scene)
    return _gzip_folder(scene, data[:len(data) // 2])


@case("trailing data after the gzip stream")
def gzip_trailing_garbage(scene: Scene) -> str:
    return _gzip_folder(scene, _gzipped_qcow2(scene) + b"GARBAGE" + scene.secret.encode())


@case("corrupt gzip data")
def gzip_corrupt(scene: Scene) -> str:
    data = bytearray(_gzipped_qcow2(scene))
    data[20:40] = bytes(range(20))
    return _gzip_folder(scene, bytes(data))


@case("compressed data not declared as gzip")
def gzip_undeclared(scene: Scene) -> str:
    href = "appliance-disk0.qcow2"
    return folder(scene, descriptor(href), {href: _gzipped_qcow2(scene)})


def _chunked(scene: Scene, numbers: Optional[Sequence[int]]) -> str:
    """A qcow2 split in 256 KiB chunks; only chunks `numbers` (None: all) kept."""
    href = "appliance-disk0.qcow2"
    path = image(scene, "qcow2", "inner.qcow2")
    with open(path, "rb") as handle:
        data = handle.read()
    os.unlink(path)
    size = 256 * 1024
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    numbers = range(len(pieces)) if numbers is None else numbers
    files: Dict[str, FileData] = {"%s.%09d" % (href, n): pieces[n] for n in numbers}
    return folder(scene, descriptor(href, chunk_size=size), files)


@case("is missing")
def chunk_gap(scene: Scene) -> str:
    return _chunked(scene, [0, 1, 3, 4])


@case("is missing")
def chunk_none(scene: Scene) -> str:
    return _chunked(scene, [1, 2])


# --- the manifest ----------------------------------------------------------

@case("digest mismatch")
def manifest_mismatch(scene: Scene) -> str:
    def flip(text: bytes) -> bytes:
        lines = text.splitlines(keepends=True)
        line = lines[1]
        last = line.rstrip()[-1:]
        lines[1] = line.rstrip()[:-1] + (b"0" if last != b"0" else b"1") + b"\n"
        return b"".join(lines)
    return basic_folder(scene, edit_manifest=flip)


@case("digest mismatch")
def manifest_mismatch_descriptor(scene: Scene) -> str:
    path = basic_folder(scene)
    with open(path, "ab") as handle:
        handle.write(b"<!-- changed after signing -->\n")
    return path


@case("no digest for")
def manifest_missing_entry(scene: Scene) -> str:
    return basic_folder(scene, edit_manifest=lambda text: text.splitlines(True)[0])


@case("is not of the form")
def manifest_malformed_line(scene: Scene) -> str:
    return basic_folder(scene, edit_manifest=lambda text: text + b"this is no digest line\n")


@case("unsupported digest algorithm")
def manifest_md5(scene: Scene) -> str:
    return basic_folder(scene, edit_manifest=lambda text: text.replace(
        b"SHA256(appliance.ovf)= ", b"MD5(appliance.ovf)= ", 1))


@case("listed twice")
def manifest_duplicate(scene: Scene) -> str:
    return basic_folder(scene, edit_manifest=lambda text: text + text.splitlines(True)[1])


@case("no manifest", "--require-manifest")
def manifest_required_absent(scene: Scene) -> str:
    return basic_folder(scene, manifest=None)


@case("more than the")
def manifest_huge(scene: Scene) -> str:
    return basic_folder(scene, edit_manifest=lambda text: text + b"\n" * (5 * MIB))


# ------------------------------------------------------------------ good controls


@dataclass(frozen=True)
class Control:
    """A package that must import, with the raw guest bytes it must yield."""

    name: str
    build: Callable[[Scene], Tuple[str, List[bytes]]]
    args: Tuple[str, ...] = ()
    expected: Tuple[str, ...] = field(default=())  # text stderr must contain


def good_sha512(scene: Scene) -> Tuple[str, List[bytes]]:
    return basic_folder(scene, manifest="sha512"), [guest_data()]


def good_gzip(scene: Scene) -> Tuple[str, List[bytes]]:
    return _gzip_folder(scene, _gzipped_qcow2(scene)), [guest_data()]


def good_chunked(scene: Scene) -> Tuple[str, List[bytes]]:
    _chunked(scene, None)
    return ova(scene), [guest_data()]


def good_raw_named_raw(scene: Scene) -> Tuple[str, List[bytes]]:
    return basic_folder(scene, fmt="raw"), [guest_data()]


def good_capacity_rounded(scene: Scene) -> Tuple[str, List[bytes]]:
    """A capacity a little under the image, within its MiB: Ganeti's disk is
    the same, so the image is accepted (rounding, not excess)."""
    basic_folder(scene, fmt="raw")
    edit_descriptor(scene, b'ovf:capacity="%d"' % DISK_SIZE,
                    b'ovf:capacity="%d"' % (DISK_SIZE - 1000))
    return scene.path(OVF), [guest_data()]


def good_no_capacity(scene: Scene) -> Tuple[str, List[bytes]]:
    """No ovf:capacity (Ganeti's old converter): the image's size is used."""
    basic_folder(scene)
    without_capacity(scene)
    return scene.path(OVF), [guest_data()]


def good_host_params(scene: Scene) -> Tuple[str, List[bytes]]:
    """A Ganeti section that asks for host paths: dropped, with a warning."""
    settings = GanetiSettings(
        version="0", hypervisor="kvm",
        hypervisor_params=(("kvm_extra", "-drive file=%s" % scene.secret),
                           ("kernel_path", scene.secret), ("acpi", "True")),
        os_name="noop", os_params=(("script_dir", scene.secret),))
    href = "appliance-disk0.qcow2"
    disk = image(scene, "qcow2", href)
    return folder(scene, descriptor(href, ganeti=settings), {href: disk}), [guest_data()]


CONTROLS = [
    Control("sha512_manifest", good_sha512),
    Control("gzip_disk", good_gzip),
    Control("chunked_ova", good_chunked),
    Control("raw_disk", good_raw_named_raw),
    Control("capacity_rounded", good_capacity_rounded),
    Control("no_capacity", good_no_capacity,
            expected=("has no ovf:capacity; the image's virtual size is used",)),
    Control("host_params_dropped", good_host_params,
            expected=("WARNING: parameters from the package not applied",
                      "hypervisor:kvm_extra", "hypervisor:kernel_path", "os:script_dir")),
]


# ------------------------------------------------------------------ signing


@dataclass(frozen=True)
class Identity:
    """A key and certificate written as PEM files."""

    key: str  # path of the PEM private key
    cert: str  # path of the PEM certificate


def _write_identity(base: str, key: object, cert: object) -> Identity:
    from cryptography.hazmat.primitives import serialization
    os.makedirs(base, exist_ok=True)
    identity = Identity(os.path.join(base, "key.pem"), os.path.join(base, "cert.pem"))
    with open(identity.key, "wb") as handle:
        handle.write(key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    with open(identity.cert, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore
    return identity


def _certificate(subject: str, key: object, issuer_name: object, issuer_key: object,
                 ca: bool) -> object:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name or name)  # type: ignore[arg-type]
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))  # type: ignore[arg-type]


def make_ca(base: str, subject: str) -> Identity:
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    return _write_identity(base, key, _certificate(subject, key, None, key, True))


def make_leaf(base: str, ca: Identity, subject: str) -> Identity:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    with open(ca.key, "rb") as handle:
        ca_key = serialization.load_pem_private_key(handle.read(), password=None)
    with open(ca.cert, "rb") as handle:
        ca_cert = x509.load_pem_x509_certificate(handle.read())
    key = ec.generate_private_key(ec.SECP256R1())
    return _write_identity(base, key, _certificate(subject, key, ca_cert.subject, ca_key,
                                                   False))


def sign_package(manifest: str, cert_path: str, signer: Identity) -> None:
    """Write the .cert signing `manifest` (ganeti_ovf.signature.sign_manifest)."""
    from ganeti_ovf.package.signature import sign_manifest
    with open(manifest, "rb") as handle:
        data = handle.read()
    with open(cert_path, "wb") as handle:
        handle.write(sign_manifest(os.path.basename(manifest), data, signer.key, signer.cert))
