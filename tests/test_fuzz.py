"""Bounded fuzzing of every parser of untrusted input: nothing but an OvfError
may escape parse_descriptor, parse_manifest, parse_allocation_units, the tar
reader, the disk format inspector and the Ganeti export reader.

Seeds are real: the corpus descriptors, images made by qemu-img, tars made by
tarfile, a config.ini made by the project's writer; hypothesis mutates them
(bit flips, deletions, insertions of tokens that matter to each parser) or
builds input from each grammar's vocabulary.  Examples per test come from
GANETI_OVF_FUZZ_EXAMPLES (`make fuzz` sets 20000); the default keeps this file
well under a minute.  No example database is written (database=None).
"""

import glob
import io
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from members import opened_member
from ganeti_ovf.disks import formats
from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf.package import tarreader
from ganeti_ovf.descriptor import units, versions
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import OvfError
from ganeti_ovf.package.manifest import parse_manifest
from ganeti_ovf.model import Disk, FileRef, GanetiSettings, Nic, VirtualSystem

EXAMPLES = int(os.environ.get("GANETI_OVF_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def refused_or_parsed(function, *args, **kwargs):
    """Call `function`; an OvfError is a fine answer, anything else fails."""
    try:
        return function(*args, **kwargs)
    except OvfError:
        return None


# ------------------------------------------------------------------ mutation


def mutations(tokens):
    """A list of edits: (kind, relative position, payload)."""
    edit = st.tuples(st.sampled_from(["flip", "delete", "insert", "token", "overwrite"]),
                     st.floats(min_value=0, max_value=1, allow_nan=False),
                     st.one_of(st.binary(max_size=16), st.sampled_from(tokens)))
    return st.lists(edit, min_size=1, max_size=8)


def mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for kind, where, payload in edits:
        pos = min(int(where * len(buffer)), max(len(buffer) - 1, 0))
        if kind == "flip" and buffer:
            buffer[pos] ^= 1 << (len(payload) % 8)
        elif kind == "delete":
            del buffer[pos:pos + 1 + len(payload) * 4]
        elif kind in ("insert", "token"):
            buffer[pos:pos] = payload
        else:
            buffer[pos:pos + len(payload)] = payload
    return bytes(buffer)


# ------------------------------------------------------------------ descriptors


def corpus_descriptors():
    seeds = []
    for path in sorted(glob.glob(os.path.join(CORPUS, "**", "*.ovf"), recursive=True)):
        if os.path.getsize(path) < 256 * 1024:
            with open(path, "rb") as handle:
                seeds.append(handle.read())
    from hostile import descriptor
    settings_ = GanetiSettings(version="0", hypervisor="kvm",
                               hypervisor_params=(("acpi", "True"),), os_name="noop",
                               tags=("a",))
    seeds.append(descriptor())
    seeds.append(descriptor(compression="gzip", chunk_size=1 << 20, ganeti=settings_))
    return seeds


DESCRIPTORS = corpus_descriptors()
XML_TOKENS = [b"<", b">", b"</", b"/>", b"&", b"&amp;", b"&#0;", b"&#x85;", b"<!DOCTYPE x>",
              b"<!ENTITY", b"<![CDATA[", b"]]>", b"ovf:", b"xmlns=\"\"", b"\"", b"'",
              b"${", b"}", b"-1", b"0", b"99999999999999999999999", b"4294967296",
              b"byte * 2^", b"%2e%2e%2f", b"../", b"/", b"http://x", b"\x00", b"\xff",
              b"\xef\xbb\xbf", b"\t", "\u0663".encode()]


@FUZZ
@given(seed=st.sampled_from(DESCRIPTORS), edits=mutations(XML_TOKENS),
       profile=st.one_of(st.none(), st.sampled_from(["default", "small", "1"])))
def test_fuzz_descriptor_mutated(seed, edits, profile):
    refused_or_parsed(parse_descriptor, mutate(seed, edits), profile=profile, source="f.ovf")


OVF_NS = versions.VERSIONS[1].envelope_namespaces[0]
RASD = versions.RASD_NS
NAMES = ["References", "File", "DiskSection", "Disk", "VirtualSystem",
         "VirtualSystemCollection", "VirtualHardwareSection", "Item", "System", "Info",
         "Name", "OperatingSystemSection", "NetworkSection", "Network",
         "DeploymentOptionSection", "Configuration", "ProductSection", "Property",
         "{%s}ResourceType" % RASD, "{%s}VirtualQuantity" % RASD,
         "{%s}AllocationUnits" % RASD, "{%s}HostResource" % RASD,
         "{%s}InstanceID" % RASD, "{%s}Address" % RASD, "{%s}Connection" % RASD,
         "{%s}Parent" % RASD, "{%s}AddressOnParent" % RASD,
         "{%s}GanetiSection" % versions.GANETI_NS, "{%s}Hypervisor" % versions.GANETI_NS,
         "{%s}Parameters" % versions.GANETI_NS, "{%s}Nic" % versions.GANETI_NS]
ATTRIBUTES = ["id", "href", "size", "compression", "chunkSize", "capacity",
              "capacityAllocationUnits", "diskId", "fileRef", "format", "parentRef",
              "populatedSize", "configuration", "default", "key", "value", "required"]
VALUES = ["0", "1", "2", "3", "4", "10", "17", "-1", "+1", "1e3", "ovf:/disk/d",
          "ovf:/file/f", "/disk/d", "d", "f", "gzip", "identity", "bzip2", "byte * 2^20",
          "MegaBytes", "byte * 2^99", "${p}", "../x", "x%2fy", "", " ", "true", "false",
          "99999999999999999999", "18446744073709551616", "default small", "\u0663"]
texts = st.one_of(st.sampled_from(VALUES), st.text(max_size=12))


@st.composite
def elements(draw, depth=0):
    name = draw(st.sampled_from(NAMES))
    tag = name if name.startswith("{") else "{%s}%s" % (OVF_NS, name)
    element = etree.Element(tag)
    for attribute in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=4, unique=True)):
        value = draw(texts)
        try:
            element.set("{%s}%s" % (OVF_NS, attribute), value)
        except ValueError:
            continue  # not representable in XML at all
    if depth < 3:
        for child in draw(st.lists(elements(depth=depth + 1), max_size=3)):
            element.append(child)
    if not len(element):
        try:
            element.text = draw(texts)
        except ValueError:
            pass
    return element


@FUZZ
@given(children=st.lists(elements(), max_size=4))
def test_fuzz_descriptor_generated(children):
    envelope = etree.Element("{%s}Envelope" % OVF_NS, nsmap={"ovf": OVF_NS, "rasd": RASD})
    for child in children:
        envelope.append(child)
    refused_or_parsed(parse_descriptor, etree.tostring(envelope), source="g.ovf")


# ------------------------------------------------------------------ manifest, units


MANIFEST_LINE = st.builds(
    "{}{}({}){}={}{}".format,
    st.sampled_from(["SHA1", "SHA256", "sha512", "SHA2-256", "MD5", "", "SHA256 "]),
    st.sampled_from(["", " "]),
    st.one_of(st.sampled_from(["a.ovf", "d(1).vmdk", ")", "", "a)=b"]), st.text(max_size=8)),
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", " "]),
    st.one_of(st.sampled_from(["ab" * 20, "AB" * 32, "cd" * 64, "0", "xyz"]),
              st.text(alphabet="0123456789abcdefABCDEF", max_size=130)))


@FUZZ
@given(lines=st.lists(MANIFEST_LINE, max_size=6),
       separator=st.sampled_from(["\n", "\r\n", "\r", "\n\n"]),
       noise=st.binary(max_size=32), edits=mutations([b"\n", b"(", b")", b"=", b"\xff"]))
def test_fuzz_manifest(lines, separator, noise, edits):
    text = separator.join(lines).encode("utf-8", "surrogatepass")
    refused_or_parsed(parse_manifest, text, "m.mf")
    refused_or_parsed(parse_manifest, mutate(text + noise, edits), "m.mf")


UNIT_TOKENS = ["byte", "bytes", "KiB", "MegaBytes", "GB", "bit", "hertz", "*", "^", "2",
               "10", "20", "0", "-1", "64", "65", "99999999999999999999999", " ", "(",
               "\u0663", "\t"]


@FUZZ
@given(tokens=st.lists(st.sampled_from(UNIT_TOKENS), max_size=10), text=st.text(max_size=40))
def test_fuzz_allocation_units(tokens, text):
    for candidate in (" ".join(tokens), "".join(tokens), text):
        value = refused_or_parsed(units.parse_allocation_units, candidate)
        assert value is None or 1 <= value <= units.MAX_MULTIPLIER


# ------------------------------------------------------------------ tar, images


def tar_seeds():
    seeds = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
            for name, data in (("a.ovf", b"<x/>"), ("d/" + "n" * 90 + ".vmdk", b"x" * 700),
                               ("a.mf", b"SHA256(a.ovf)= 00\n")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                if fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"comment": "pax"}
                archive.addfile(info, io.BytesIO(data))
            folder = tarfile.TarInfo("d")
            folder.type = tarfile.DIRTYPE
            archive.addfile(folder)
        seeds.append(buffer.getvalue())
    return seeds


TAR_SEEDS = tar_seeds()
TAR_TOKENS = [b"ustar\x00", b"ustar ", b"0", b"1", b"2", b"5", b"x", b"g", b"L", b"S",
              b"../", b"/", b"\x80", b"\xff" * 12, b"77777777777", b"30 path=../x\n",
              b"13 size=-1\n", b"\x00" * 512]


@pytest.fixture(scope="module")
def scratch():
    path = tempfile.mkdtemp(prefix="gnt-ovf-fuzz-")
    yield path
    shutil.rmtree(path)


def write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def test_fuzz_tar(scratch):
    @FUZZ
    @given(seed=st.sampled_from(TAR_SEEDS), edits=mutations(TAR_TOKENS),
           fix_checksums=st.booleans())
    def run(seed, edits, fix_checksums):
        data = mutate(seed, edits)
        if fix_checksums:
            data = fix_tar_checksums(data)
        path = write(scratch, "f.tar", data)
        members = refused_or_parsed(tarreader.read_tar, path, "f.ova", max_members=50)
        for member in members or ():
            assert tarreader.member_name_problem(member.name) is None
            assert member.offset >= 0 and member.offset + member.size <= len(data)
    run()


def fix_tar_checksums(data: bytes) -> bytes:
    """Recompute the checksum of every block that looks like a header, so that
    mutations reach the parser behind the checksum check."""
    buffer = bytearray(data)
    for start in range(0, len(buffer) - 511, 512):
        block = buffer[start:start + 512]
        if block[257:262] == b"ustar":
            block[148:156] = b" " * 8
            block[148:156] = b"%06o\0 " % sum(block)
            buffer[start:start + 512] = block
    return bytes(buffer)


def image_seeds():
    directory = tempfile.mkdtemp(prefix="gnt-ovf-fuzz-seeds-")
    seeds = {}
    try:
        for name, fmt, options in (("qcow2", "qcow2", None), ("qcow2v2", "qcow2", "compat=0.10"),
                                   ("vmdk-stream", "vmdk", "subformat=streamOptimized"),
                                   ("vmdk-sparse", "vmdk", "subformat=monolithicSparse"),
                                   ("vpc", "vpc", None), ("vdi", "vdi", None),
                                   ("qcow", "qcow", None)):
            path = os.path.join(directory, name)
            args = ["qemu-img", "create", "-q", "-f", fmt]
            args += ["-o", options] if options else []
            subprocess.run(args + [path, "2M"], check=True)
            with open(path, "rb") as handle:
                seeds[name] = handle.read(1 << 20)
    finally:
        shutil.rmtree(directory)
    seeds["vmdk-text"] = (b'# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n'
                          b'createType="monolithicFlat"\nRW 4096 FLAT "x.img" 0\n')
    return [seeds[key] for key in sorted(seeds)]


IMAGE_SEEDS = image_seeds()
IMAGE_TOKENS = [b"QFI\xfb", b"KDMV", b"conectix", b"\x7f\x10\xda\xbe", b"version=1\n",
                b"\xff" * 8, b"\x00" * 8, b"\x00\x00\x00\x03", b"\x80\x00\x00\x00",
                b"RW 4096 SPARSE \"/etc/passwd\"\n", b"parentFileNameHint=\"x\"\n",
                b"\x1f\x8b\x08", b"CD001"]


def test_fuzz_disk_inspect(scratch):
    @FUZZ
    @given(seed=st.sampled_from(IMAGE_SEEDS), edits=mutations(IMAGE_TOKENS),
           head=st.booleans(), offset=st.sampled_from([0, 512, 1536]))
    def run(seed, edits, head, offset):
        if head:
            # Most mutations should hit the header that decides everything.
            data = mutate(seed[:4096], edits) + seed[4096:]
        else:
            data = mutate(seed, edits)
        path = write(scratch, "disk.img", bytes(offset) + data)
        found = refused_or_parsed(formats.inspect,
                                  opened_member("disk.img", path, offset, len(data)))
        if found is not None:
            assert found.format in ("raw", "qcow2", "vmdk", "vpc", "vdi")
            assert found.virtual_size >= 0
    run()


# ------------------------------------------------------------------ config.ini


def config_seed() -> bytes:
    system = VirtualSystem(
        system_id="inst1", name="inst1.example.com", vcpus=2, memory_mib=512,
        disks=(Disk("d0", 1 << 30, FileRef("f0", "disk0.raw")),),
        nics=(Nic(mac="aa:00:00:00:00:01", mode="bridged", link="br0"),),
        ganeti=GanetiSettings(version="0", disk_template="plain", hypervisor="kvm",
                              hypervisor_params=(("acpi", "True"),), os_name="noop",
                              backend_params=(("auto_balance", "True"),), tags=("t",)))
    text = ganeti_export.build_config(
        system, [ganeti_export.ExportedDisk(dump="disk0.raw", size_mib=1024)],
        source="node1.example.com", timestamp=1)
    return text.encode()


CONFIG_SEEDS = [config_seed()]
if os.path.exists(os.path.join(CORPUS, "ganeti", "config.ini")):
    with open(os.path.join(CORPUS, "ganeti", "config.ini"), "rb") as _handle:
        CONFIG_SEEDS.append(_handle.read())
CONFIG_TOKENS = [b"[instance]", b"[export]", b"[backend]", b"[hypervisor]", b"[os]", b"=",
                 b":", b"\n", b"disk_count = 99", b"disk0_dump = ../../etc/passwd",
                 b"nic_count = -1", b"nic0_mac = zz", b"vcpus = 1e9", b"%(", b"\xff",
                 b"disk0_size = 99999999999999999999999", b"[DEFAULT]", b" ", b"\t"]


def test_fuzz_read_export(scratch):
    @FUZZ
    @given(seed=st.sampled_from(CONFIG_SEEDS), edits=mutations(CONFIG_TOKENS))
    def run(seed, edits):
        path = write(scratch, "config.ini", mutate(seed, edits))
        refused_or_parsed(ganeti_export.read_export, path)
    run()
