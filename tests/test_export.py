"""gnt-ovf export end to end (command line), against its acceptance: every
descriptor valid DMTF OVF 1.0, every disk passing qemu-img check and equal to
its dump, the manifest and the OVA layout exact, failures one line and
leaving nothing behind.  Sources: the corpus's old-layout export and
Ganeti-3.0-style exports built here (`write_ganeti3_export`)."""

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest
from conftest import CORPUS
from lxml import etree
from ovfschema import validate_ovf10
from members import opened_member
from packaging import MIB, make_raw, run_gnt_ovf, sha256_file

from ganeti_ovf import exporter
from ganeti_ovf.disks import qemu
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import OvfError


OVF_NS = "http://schemas.dmtf.org/ovf/envelope/1"
GANETI_CORPUS = os.path.join(CORPUS, "ganeti")

# `gnt-backup export`'s config.ini on Ganeti 3.0, verbatim but for the name,
# the sizes and the disk and NIC entries, which are repeated per index.
GANETI3_CONFIG = """\
[export]
version = 0
timestamp = 1795499862
source = ed079327-cd22-4670-84ec-af5b8d1765e7
os = noop
compression = none

[instance]
name = {name}
maxmem = {memory}
minmem = {memory}
memory = {memory}
vcpus = {vcpus}
disk_template = file
hypervisor = fake
tags = {tags}
{nics}nic_count = {nic_count}
{disks}disk_count = {disk_count}

[hypervisor]

[backend]
always_failover = False
auto_balance = True
maxmem = {memory}
minmem = {memory}
spindle_use = 1
vcpus = {vcpus}

[os]

[os_private]
"""
GANETI3_NIC = """\
nic{i}_mac = aa:00:00:95:fb:{i:02x}
nic{i}_ip = 192.0.2.{ip}
nic{i}_network = None
nic{i}_name = None
nic{i}_link = lo
nic{i}_mode = routed
nic{i}_vlan = 
"""  # noqa: W291  (Ganeti writes "nicN_vlan = " with the trailing space)
GANETI3_DISK = """\
disk{i}_ivname = disk/{i}
disk{i}_dump = {dump}
disk{i}_size = {size}
disk{i}_name = None
"""


def write_ganeti3_export(directory, name="inst1.example.com", disks_mib=(6,), nics=1,
                         vcpus=1, memory=128, tags=""):
    """A Ganeti 3.0 export directory with sparse dumps of known content.

    Returns the dump paths, by disk index.
    """
    os.makedirs(directory)
    dumps, disk_text = [], ""
    for index, size in enumerate(disks_mib):
        dump = "c798fcc5-3e41-4f1e-82ad-8ab126bb0f3%d" % index
        dumps.append(make_raw(os.path.join(directory, dump), size * MIB, seed=10 + index))
        disk_text += GANETI3_DISK.format(i=index, dump=dump, size=size)
    nic_text = "".join(GANETI3_NIC.format(i=index, ip=50 + index) for index in range(nics))
    with open(os.path.join(directory, "config.ini"), "w") as handle:
        handle.write(GANETI3_CONFIG.format(
            name=name, memory=memory, vcpus=vcpus, tags=tags, nics=nic_text,
            nic_count=nics, disks=disk_text, disk_count=len(disks_mib)))
    return dumps


class Source:
    """A Ganeti export to export from, and what the package must say."""

    def __init__(self, path, name, dumps, capacities, vcpus, memory, nics):
        self.path, self.name, self.dumps = path, name, dumps
        self.capacities, self.vcpus, self.memory, self.nics = capacities, vcpus, memory, nics


@pytest.fixture(scope="module", params=["corpus", "ganeti3"])
def source(request, tmp_path_factory):
    if request.param == "corpus":
        # The old layout: disk0_size = 0, so the 5120-byte dump gives the capacity.
        return Source(os.path.join(GANETI_CORPUS, "config.ini"), "ganeti-test-xen",
                      [os.path.join(GANETI_CORPUS, "rawdisk.raw")], [5120], 1, 512, 1)
    directory = str(tmp_path_factory.mktemp("ganeti3") / "inst1.example.com")
    # 10 MiB: three chunks of 4 MiB; two disks and two NICs to check the order.
    dumps = write_ganeti3_export(directory, disks_mib=(10, 3), nics=2, vcpus=2,
                                 memory=256)
    return Source(directory, "inst1.example.com", dumps, [10 * MIB, 3 * MIB], 2, 256, 2)


# ---------------------------------------------------------------- checking a package


class Package:
    """An exported OVF folder or OVA, read back with the standard library."""

    def __init__(self, path, workdir):
        self.path = path
        self.ova = path.endswith(".ova")
        self.files = {}  # name -> host path of its bytes
        self.offsets = {}  # OVA: name -> (data offset, size)
        if self.ova:
            self.order = self._read_ova(workdir)
        else:
            self.order = sorted(os.listdir(path))
            self.files = {name: os.path.join(path, name) for name in self.order}
        (self.descriptor_name,) = [n for n in self.order if n.endswith(".ovf")]
        manifests = [n for n in self.order if n.endswith(".mf")]
        self.manifest_name = manifests[0] if manifests else None
        self.descriptor = self.read(self.descriptor_name)

    def _read_ova(self, workdir):
        os.makedirs(workdir)
        with open(self.path, "rb") as raw, tarfile.open(self.path) as archive:
            members = archive.getmembers()
            for member in members:
                assert member.isreg(), member.name
                raw.seek(member.offset)
                header = raw.read(512)
                assert header[257:265] == b"ustar\x0000", (member.name, header[257:265])
                self.offsets[member.name] = (member.offset_data, member.size)
                path = os.path.join(workdir, member.name)
                with archive.extractfile(member) as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, MIB)
                self.files[member.name] = path
        return [member.name for member in members]

    def read(self, name):
        with open(self.files[name], "rb") as handle:
            return handle.read()

    def size(self, name):
        return os.path.getsize(self.files[name])


def ovf_attr(element, name):
    return element.get("{%s}%s" % (OVF_NS, name))


def parse_manifest_strictly(text, algorithm):
    """Canonical lines only: `SHA256(name)= hex`, lower-case hex, one per line."""
    width = hashlib.new(algorithm).digest_size * 2
    pattern = re.compile(r"%s\(([^()\n]+)\)= ([0-9a-f]{%d})\Z" % (algorithm.upper(), width))
    assert text.endswith("\n")
    entries = []
    for line in text[:-1].split("\n"):
        match = pattern.match(line)
        assert match, "not canonical: %r" % line
        entries.append(match.groups())
    return entries


def disk_image(package, names, gzipped, workdir, index):
    """The disk's image bytes in one file: chunks joined, gzip undone."""
    joined = os.path.join(workdir, "disk%d.stored" % index)
    with open(joined, "wb") as out:
        for name in names:
            with open(package.files[name], "rb") as src:
                shutil.copyfileobj(src, out, MIB)
    if not gzipped:
        return joined
    image = os.path.join(workdir, "disk%d.image" % index)
    with gzip.open(joined, "rb") as src, open(image, "wb") as out:
        shutil.copyfileobj(src, out, MIB)
    return image


def virtual_size(path, fmt):
    out = subprocess.run(["qemu-img", "info", "-f", fmt, "--output=json", path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["virtual-size"]


def check_package(path, source, fmt, workdir, compress=False, external=False,
                  chunk_size=None, algorithm="sha256"):
    """Every acceptance check of one exported package."""
    package = Package(path, os.path.join(workdir, "members"))
    name = source.name
    assert package.descriptor_name == name + ".ovf"

    # The descriptor: valid OVF 1.0, References and DiskSection as written.
    validate_ovf10(package.descriptor)
    root = etree.fromstring(package.descriptor)
    refs = root.findall("{%s}References/{%s}File" % (OVF_NS, OVF_NS))
    disks = root.findall("{%s}DiskSection/{%s}Disk" % (OVF_NS, OVF_NS))
    ext = exporter.EXTENSIONS[fmt] + (".gz" if compress else "")
    hrefs = ["%s-disk%d.%s" % (name, index, ext) for index in range(len(source.dumps))]
    assert [ovf_attr(ref, "href") for ref in refs] == hrefs
    assert len(disks) == len(hrefs)
    file_names = []
    for index, (ref, disk) in enumerate(zip(refs, disks, strict=True)):
        href = hrefs[index]
        assert ovf_attr(ref, "compression") == ("gzip" if compress else None)
        if chunk_size:
            assert ovf_attr(ref, "chunkSize") == str(chunk_size)
            names = sorted(n for n in package.order if n.startswith(href + "."))
            assert names == ["%s.%09d" % (href, i) for i in range(len(names))]
            assert all(package.size(n) == chunk_size for n in names[:-1])
            assert 0 < package.size(names[-1]) <= chunk_size
        else:
            assert ovf_attr(ref, "chunkSize") is None
            names = [href]
        file_names += names
        assert ovf_attr(ref, "size") == str(sum(package.size(n) for n in names))
        assert ovf_attr(disk, "fileRef") == ovf_attr(ref, "id")
        assert ovf_attr(disk, "format") == versions.FORMAT_URIS[fmt][0]
        assert ovf_attr(disk, "capacity") == str(source.capacities[index])
        assert ovf_attr(disk, "capacityAllocationUnits") in (None, "byte")

        # The disk: qemu-img check clean, same guest data as the dump.
        image = disk_image(package, names, compress, workdir, index)
        if fmt == "raw":
            assert sha256_file(image) == sha256_file(source.dumps[index])
        else:
            qemu.check(image, fmt)
            assert virtual_size(image, fmt) == source.capacities[index]
        assert qemu.compare(image, fmt, source.dumps[index], "raw")
        if package.ova and not compress:
            assert compare_in_place(package, href, fmt, source.dumps[index])

    # What the descriptor says, read back by the project's reader.
    appliance = parse_descriptor(package.descriptor)
    (system,) = appliance.systems
    assert (system.vcpus, system.memory_mib) == (source.vcpus, source.memory)
    assert len(system.nics) == source.nics
    assert [d.capacity for d in system.disks] == source.capacities
    has_ganeti = root.find(".//{http://ganeti}GanetiSection") is not None
    assert has_ganeti is not external

    # The manifest: canonical, the descriptor then every file, digests right.
    expected_order = [package.descriptor_name]
    if algorithm:
        assert package.manifest_name == name + ".mf"
        entries = parse_manifest_strictly(package.read(package.manifest_name).decode(),
                                          algorithm)
        assert [entry[0] for entry in entries] == [package.descriptor_name] + file_names
        for member, digest in entries:
            assert hashlib.new(algorithm, package.read(member)).hexdigest() == digest
        expected_order.append(package.manifest_name)
    else:
        assert package.manifest_name is None
    expected_order += file_names

    # The layout: an OVA in the specification's order, a folder with nothing else.
    if package.ova:
        assert package.order == expected_order
    else:
        assert package.order == sorted(expected_order)
    return package


def compare_in_place(package, href, fmt, dump):
    """qemu-img reads the OVA member in place (a json: byte window on its
    open descriptor)."""
    offset, size = package.offsets[href]
    member = opened_member(href, package.path, offset, size)
    result = subprocess.run(["qemu-img", "compare", "-q", "-F", "raw",
                             qemu.image_source(member, fmt), dump], pass_fds=[member.fd])
    return result.returncode == 0


def export(source, out, *args):
    result = run_gnt_ovf("export", "--output-dir", out, *args, source.path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def failure_line(result):
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Failure: "), result.stderr
    return lines[0]


# ---------------------------------------------------------------- the variants

VARIANTS = {
    "raw": ("raw", []),
    "qcow2": ("qcow2", []),
    "vmdk": ("vmdk", []),
    "raw-gzip": ("raw", ["--compress"]),
    "qcow2-gzip": ("qcow2", ["--compress"]),
    "vmdk-gzip": ("vmdk", ["--compress"]),
    "raw-ova": ("raw", ["--ova"]),
    "qcow2-ova": ("qcow2", ["--ova"]),
    "vmdk-ova": ("vmdk", ["--ova"]),
    "vmdk-gzip-ova": ("vmdk", ["--compress", "--ova"]),
    "raw-chunked": ("raw", ["--chunk-size", "4M"]),
    "vmdk-gzip-chunked": ("vmdk", ["--compress", "--chunk-size", "4M"]),
    "raw-gzip-external": ("raw", ["--compress", "--external"]),
    "qcow2-external": ("qcow2", ["--external"]),
    "vmdk-ova-external": ("vmdk", ["--ova", "--external"]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_variant(tmp_path, source, variant):
    fmt, args = VARIANTS[variant]
    out = str(tmp_path / "out")
    export(source, out, "--format", fmt, *args)
    suffix = ".ova" if "--ova" in args else ""
    assert os.listdir(out) == [source.name + suffix]  # no staging, no lock left
    check_package(os.path.join(out, source.name + suffix), source, fmt, str(tmp_path),
                  compress="--compress" in args, external="--external" in args,
                  chunk_size=4 * MIB if "--chunk-size" in args else None)


@pytest.mark.parametrize("algorithm", ["sha1", "sha512", "none"])
@pytest.mark.parametrize("ova", [False, True], ids=["folder", "ova"])
def test_manifest_algorithms(tmp_path, source, algorithm, ova):
    out = str(tmp_path / "out")
    export(source, out, "--manifest", algorithm, *(["--ova"] if ova else []))
    path = os.path.join(out, source.name + (".ova" if ova else ""))
    check_package(path, source, "vmdk", str(tmp_path),
                  algorithm=None if algorithm == "none" else algorithm)


def test_verbatim_ganeti3_export(tmp_path):
    """The single-disk config.ini of a Ganeti 3.0 cluster, as it is."""
    directory = str(tmp_path / "inst1.example.com")
    dumps = write_ganeti3_export(directory)
    with open(os.path.join(directory, "config.ini")) as handle:
        text = handle.read()
    assert "nic0_vlan = \n" in text and "tags = \n" in text
    source = Source(directory, "inst1.example.com", dumps, [6 * MIB], 1, 128, 1)
    out = str(tmp_path / "out")
    export(source, out, "--ova")
    package = check_package(os.path.join(out, "inst1.example.com.ova"), source, "vmdk",
                            str(tmp_path))
    (nic,) = parse_descriptor(package.descriptor).systems[0].nics
    assert (nic.mac, nic.ip, nic.mode, nic.link) == ("aa:00:00:95:fb:00", "192.0.2.50",
                                                     "routed", "lo")


def test_chunk_size_exact_in_library(tmp_path):
    """1 MiB chunks (the smallest allowed), through the library."""
    directory = str(tmp_path / "inst1.example.com")
    dumps = write_ganeti3_export(directory, disks_mib=(3,))
    source = Source(directory, "inst1.example.com", dumps, [3 * MIB], 1, 128, 1)
    request = exporter.ExportRequest(source=directory, output_dir=str(tmp_path / "out"),
                                     export_dir="/nonexistent", disk_format="raw",
                                     chunk_size=MIB)
    result = exporter.export_package(request, lambda message: None)
    package = check_package(result.path, source, "raw", str(tmp_path), chunk_size=MIB)
    assert len([n for n in package.order if ".raw." in n]) == 3


def test_chunk_size_option_is_not_rounded(tmp_path, source):
    """--chunk-size 1M means 1 MiB (Ganeti's unit parser rounds to 4 MiB)."""
    out = str(tmp_path / "out")
    export(source, out, "--format", "raw", "--chunk-size", "1M")
    check_package(os.path.join(out, source.name), source, "raw", str(tmp_path),
                  chunk_size=MIB)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("ova", [False, True], ids=["folder", "ova"])
def test_existing_output_refused_then_forced(tmp_path, source, ova):
    out = str(tmp_path / "out")
    extra = ["--ova"] if ova else []
    export(source, out, "--format", "raw", *extra)
    target = os.path.join(out, source.name + (".ova" if ova else ""))
    before = sha256_file(target if ova else os.path.join(target, source.name + ".mf"))
    again = run_gnt_ovf("export", "--output-dir", out, "--format", "qcow2", *extra,
                        source.path)
    line = failure_line(again)
    assert "already exists" in line and "--force" in line
    after = sha256_file(target if ova else os.path.join(target, source.name + ".mf"))
    assert after == before
    assert os.listdir(out) == [os.path.basename(target)]
    export(source, out, "--format", "qcow2", "--force", *extra)
    assert os.listdir(out) == [os.path.basename(target)]
    check_package(target, source, "qcow2", str(tmp_path))


@pytest.mark.parametrize("config, message", [
    ("unsafe_path.ini", "not a file name inside the export directory"),
    ("no_disk.ini", "cannot open disk dump"),
    ("empty.ini", "[instance] name is missing"),
    ("wrong_config.ini", "not a Ganeti export configuration"),
])
def test_corpus_bad_exports_one_line(tmp_path, config, message):
    out = str(tmp_path / "out")
    result = run_gnt_ovf("export", "--output-dir", out, "--ova",
                         os.path.join(GANETI_CORPUS, config))
    line = failure_line(result)
    assert message in line
    assert not os.path.exists(out) or os.listdir(out) == []


@pytest.mark.parametrize("args, message", [
    (["--ova", "--chunk-size", "4M"], "--chunk-size applies to OVF folders"),
    (["--format", "vdi"], "--format 'vdi' is not one of"),
    (["--ova", "--name", "x" * 90 + ".example.com"], "limited to 100 bytes"),
    (["--compress-level", "3"], "--compress-level applies only with --compress"),
    (["--compress", "--compress-level", "10"], "--compress-level 10 is not a level from 0"),
])
def test_option_errors_one_line(tmp_path, source, args, message):
    out = str(tmp_path / "out")
    line = failure_line(run_gnt_ovf("export", "--output-dir", out, *args, source.path))
    assert message in line
    assert not os.path.exists(out) or os.listdir(out) == []


class _Interrupted(OvfError):
    pass


@pytest.mark.parametrize("args", [{}, {"ova": True}, {"chunk_size": MIB}],
                         ids=["folder", "ova", "chunked"])
def test_failure_while_writing_leaves_nothing(tmp_path, args):
    """A failure after the first disk is written: nothing of the run stays."""
    directory = str(tmp_path / "inst1.example.com")
    write_ganeti3_export(directory, disks_mib=(3, 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated").write_text("kept")

    def feedback(message):
        if message.startswith("Writing disk 1"):
            raise _Interrupted("stop")

    request = exporter.ExportRequest(source=directory, output_dir=str(out),
                                     export_dir="/nonexistent", **args)
    with pytest.raises(_Interrupted):
        exporter.export_package(request, feedback)
    assert os.listdir(str(out)) == ["unrelated"]


def test_export_json_result_for_scripts(tmp_path):
    directory = str(tmp_path / "inst1.example.com")
    write_ganeti3_export(directory, disks_mib=(6, 2))
    out = str(tmp_path / "out")
    result = run_gnt_ovf("export", "--output=json", "--ova", "--format", "cow",
                         "--output-dir", out, directory, check=True)
    doc = json.loads(result.stdout)
    assert (doc["schema_version"], doc["command"], doc["instance"], doc["kind"],
            doc["path"]) == (1, "export", "inst1.example.com", "ova",
                             os.path.join(out, "inst1.example.com.ova"))
    assert [(d["index"], d["file"], d["capacity"]) for d in doc["disks"]] == [
        (0, "inst1.example.com-disk0.qcow2", 6 * MIB),
        (1, "inst1.example.com-disk1.qcow2", 2 * MIB)]
    # The warning went to standard error, and into the object.
    assert "format 'cow' is written as qcow2" in result.stderr
    assert [w for w in doc["warnings"] if "format 'cow' is written as qcow2" in w]


# ---------------------------------------------------------------- performance round two


def allocated(path):
    return os.stat(path).st_blocks * 512


@pytest.fixture(scope="module")
def sparse_source(tmp_path_factory):
    """A 64 MiB disk holding 3 MiB of data: random, zeros written out (a
    block the guest zeroed), and an unaligned tail; the rest is holes."""
    directory = str(tmp_path_factory.mktemp("sparse") / "inst1.example.com")
    (dump,) = write_ganeti3_export(directory, disks_mib=(64,))
    with open(dump, "wb") as handle:  # replaced: new content, same name
        handle.truncate(64 * MIB)
        handle.write(os.urandom(2 * MIB))
        handle.seek(10 * MIB)
        handle.write(bytes(4 * MIB))  # allocated zeros: a hole in the export
        handle.seek(63 * MIB + 4096)
        handle.write(os.urandom(MIB - 4096))
    return Source(directory, "inst1.example.com", [dump], [64 * MIB], 1, 128, 1)


@pytest.mark.parametrize("args", [[], ["--chunk-size", "16M"], ["--ova"]],
                         ids=["folder", "chunked", "ova"])
def test_raw_export_keeps_holes(tmp_path, sparse_source, args):
    """A raw export allocates the data (3 MiB), not the disk (64 MiB), and
    holds the dump's bytes exactly; the manifest covers the holes' zeros."""
    out = str(tmp_path / "out")
    export(sparse_source, out, "--format", "raw", *args)
    ova = "--ova" in args
    path = os.path.join(out, sparse_source.name + (".ova" if ova else ""))
    check_package(path, sparse_source, "raw", str(tmp_path),
                  chunk_size=16 * MIB if "--chunk-size" in args else None)
    files = [path] if ova else [os.path.join(path, name) for name in os.listdir(path)]
    data = 3 * MIB
    assert sum(allocated(name) for name in files) <= data * 1.1 + 256 * 1024
    if not ova:
        disks = sorted(name for name in files if ".raw" in name)
        digest = hashlib.sha256()
        for name in disks:
            with open(name, "rb") as handle:
                digest.update(handle.read())
        assert digest.hexdigest() == sha256_file(sparse_source.dumps[0])
        assert sum(os.path.getsize(name) for name in disks) == 64 * MIB


@pytest.mark.parametrize("level", ["0", "1", "9"])
def test_compressed_export_reads_back_everywhere(tmp_path, sparse_source, level):
    """--compress writes gzip members every reader takes as one stream."""
    out = str(tmp_path / "out")
    export(sparse_source, out, "--format", "raw", "--compress", "--compress-level", level)
    folder = os.path.join(out, sparse_source.name)
    check_package(folder, sparse_source, "raw", str(tmp_path), compress=True)
    (gz,) = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".gz")]
    want = sha256_file(sparse_source.dumps[0])
    for argv in (["gzip", "-dc"], ["pigz", "-dc"], ["igzip", "-dc"]):
        done = subprocess.run(argv + [gz], capture_output=True, check=True)
        assert hashlib.sha256(done.stdout).hexdigest() == want, argv
    with gzip.open(gz) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == want
    if level != "0":  # level 0 stores everything, zeros too
        # holes (60 MiB of them) cost about a KiB per 512 KiB member
        assert os.path.getsize(gz) < 3 * MIB + 256 * 1024
