"""The workloads of `make bench`: seeded data, packages, exports and commands.

This module owns what is measured: it builds (once per work directory) the
seeded raw disks, the OVF packages made from them and Ganeti-3.0-style
export directories, and describes each workload as three commands doing the
same work: ours (`python3 -m ganeti_ovf ...` from the checkout), the bare
tools' baseline, and a copy floor (cp/cat of the same bytes).  It also owns
the content checks of our outputs.  Timing, memory and reporting are run.py's.

Data: a disk is `stripes` equal strides; each stride starts with random
(incompressible) bytes followed by text-like (compressible) bytes and is a
hole after that.  Everything is derived from fixed seeds, so two runs (and
two commits) see the same bytes.
"""

import glob
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import ganeti_ovf  # noqa: E402,F401  (puts Ganeti's library on sys.path)
from ganeti_ovf.cluster import ganeti_export  # noqa: E402
from ganeti_ovf.descriptor import versions  # noqa: E402
from ganeti_ovf.descriptor.writer import write_descriptor  # noqa: E402
from ganeti_ovf.model import (Appliance, Disk, FileRef, GanetiSettings, Nic,  # noqa: E402
                              VirtualSystem)

PYTHON = "/usr/bin/python3"
QEMU_IMG = "/usr/bin/qemu-img"
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
TEXT_BLOCK = 8 * MIB
CHUNK_SIZE = 256 * MIB  # of the --chunk-size export
# Hashing a whole disk is only sensible when it is small; larger ones are
# compared with qemu-img compare, which skips holes.
SHA256_LIMIT = 64 * GIB


@dataclass(frozen=True)
class DiskData:
    """The layout of one seeded disk (all sizes in bytes, MiB multiples)."""

    virtual: int
    random: int
    text: int
    stripes: int


@dataclass(frozen=True)
class Sizes:
    w1: DiskData  # workloads 1 and 2, and the first export data set
    w3: DiskData  # each of the w3_count disks of workload 3
    w3_count: int
    w4: DiskData  # the almost empty 1 TiB disk
    wr: DiskData  # dense random data (nothing compresses)


FULL = Sizes(w1=DiskData(4 * GIB, GIB, GIB, 16),
             w3=DiskData(GIB, 64 * MIB, 64 * MIB, 4), w3_count=4,
             w4=DiskData(TIB, 4 * MIB, 4 * MIB, 4), wr=DiskData(GIB, GIB, 0, 1))
QUICK = Sizes(w1=DiskData(256 * MIB, 32 * MIB, 32 * MIB, 4),
              w3=DiskData(64 * MIB, 8 * MIB, 8 * MIB, 2), w3_count=4,
              w4=DiskData(TIB, 2 * MIB, 2 * MIB, 2),
              wr=DiskData(64 * MIB, 64 * MIB, 0, 1))


@dataclass
class Source:
    """A seeded raw disk: the reference every output is checked against."""

    path: str
    virtual: int
    data: int  # bytes of data written (the rest is holes)
    sha256: Optional[str]  # of all `virtual` bytes; None when too large


@dataclass
class Package:
    """An OVF folder or OVA and where its disk files are."""

    path: str  # the .ova or the .ovf
    files: List[str]  # every file making up the package
    members: List[Dict]  # per disk: name, path, offset, size, compression


@dataclass
class Job:
    """One command to time.  `outputs` are removed before every run."""

    argv: List[str]
    outputs: List[str]
    cwd: str = ROOT


@dataclass
class Workload:
    name: str
    number: int  # the workload number (1-5)
    description: str
    kind: str  # "import" or "export"
    ours: Job
    baseline: Job
    floor: Job
    inputs: List[str]  # files read (for the page-cache report)
    sources: List[Source]
    notes: List[str] = field(default_factory=list)


# ------------------------------------------------------------ seeded data


def _text_block(seed: int) -> bytes:
    """Pseudo-English text (compresses to about a third with deflate)."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    words = rng.choices(vocabulary, k=TEXT_BLOCK // 4)
    return " ".join(words).encode()[:TEXT_BLOCK].ljust(TEXT_BLOCK, b"\n")


def sha256_file(path: str, length: Optional[int] = None) -> str:
    """sha256 of the first `length` bytes of `path` (zeros past its end)."""
    digest = hashlib.sha256()
    left = os.path.getsize(path) if length is None else length
    with open(path, "rb", buffering=0) as handle:
        while left > 0:
            block = handle.read(min(8 * MIB, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    while left > 0:
        digest.update(bytes(min(8 * MIB, left)))
        left -= min(8 * MIB, left)
    return digest.hexdigest()


def write_source(path: str, data: DiskData, seed: int) -> Source:
    rng = random.Random(seed)
    text = _text_block(seed)
    stride = data.virtual // data.stripes
    with open(path, "wb") as out:
        out.truncate(data.virtual)
        for stripe in range(data.stripes):
            out.seek(stripe * stride)
            for _ in range(data.random // data.stripes // MIB):
                out.write(rng.randbytes(MIB))
            for _ in range(data.text // data.stripes // MIB):
                start = rng.randrange(TEXT_BLOCK - MIB)
                out.write(text[start:start + MIB])
    digest = sha256_file(path) if data.virtual <= SHA256_LIMIT else None
    return Source(path=path, virtual=data.virtual, data=data.random + data.text,
                  sha256=digest)


# ------------------------------------------------------------ packages


def run(argv: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kwargs)


def _stream_vmdks(sources: List[Source], paths: List[str]) -> None:
    """qemu-img streamOptimized conversions, two at a time (two cores)."""
    pending = list(zip(sources, paths, strict=True))
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = [subprocess.Popen([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "vmdk",
                                   "-o", "subformat=streamOptimized", src.path, dest])
                 for src, dest in batch]
        if any(proc.wait() for proc in procs):
            raise RuntimeError("qemu-img convert failed while building workloads")


def descriptor(name: str, hrefs: List[str], stored: List[int], capacities: List[int],
               compression: str = "identity", fmt: str = "vmdk") -> bytes:
    files = tuple(FileRef("file%d" % i, href, size, compression)
                  for i, (href, size) in enumerate(zip(hrefs, stored, strict=True)))
    disks = tuple(Disk("vmdisk%d" % i, capacity, ref, versions.FORMAT_URIS[fmt][0])
                  for i, (capacity, ref) in enumerate(zip(capacities, files, strict=True)))
    system = VirtualSystem(system_id=name, name=name + ".example.com", vcpus=1,
                           memory_mib=512, disks=disks,
                           nics=(Nic(network="VM Network", mac="aa:00:00:00:00:01"),))
    return write_descriptor(Appliance("1.x", (system,), files), external=True)


def _manifest(directory: str, names: List[str]) -> bytes:
    lines = ["SHA256(%s)= %s\n" % (item, sha256_file(os.path.join(directory, item)))
             for item in names]
    return "".join(lines).encode()


def build_package(directory: str, name: str, sources: List[Source], vmdks: List[str],
                  ova: bool, gzip: bool = False, gzip_ova: bool = False) -> Package:
    """A package of the streamOptimized `vmdks` (one per source); `gzip_ova`:
    the whole OVA gzip-compressed (its members' offsets are the tar's)."""
    os.makedirs(directory, exist_ok=True)
    hrefs = ["%s-disk%d.vmdk" % (name, i) for i in range(len(sources))]
    for vmdk, href in zip(vmdks, hrefs, strict=True):
        os.link(vmdk, os.path.join(directory, href))
    compression = "identity"
    if gzip:
        for href in hrefs:
            # pigz for build speed; -n keeps the output independent of time.
            with open(os.path.join(directory, href + ".gz"), "wb") as out:
                run(["pigz", "-6", "-n", "-c", os.path.join(directory, href)], stdout=out)
            os.unlink(os.path.join(directory, href))
        hrefs = [href + ".gz" for href in hrefs]
        compression = "gzip"
    stored = [os.path.getsize(os.path.join(directory, href)) for href in hrefs]
    ovf, mf = name + ".ovf", name + ".mf"
    with open(os.path.join(directory, ovf), "wb") as handle:
        handle.write(descriptor(name, hrefs, stored, [s.virtual for s in sources],
                                compression))
    manifest = _manifest(directory, [ovf] + hrefs)
    with open(os.path.join(directory, mf), "wb") as handle:
        handle.write(manifest)
    order = [ovf, mf] + hrefs
    if not ova:
        return Package(path=os.path.join(directory, ovf),
                       files=[os.path.join(directory, item) for item in order],
                       members=[{"name": href, "path": os.path.join(directory, href),
                                 "offset": 0, "size": size, "compression": compression}
                                for href, size in zip(hrefs, stored, strict=True)])
    path = os.path.join(directory, name + ".ova")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for item in order:
            archive.add(os.path.join(directory, item), arcname=item)
    for item in order:
        os.unlink(os.path.join(directory, item))
    with tarfile.open(path) as archive:
        members = [{"name": info.name, "path": path, "offset": info.offset_data,
                    "size": info.size, "compression": compression}
                   for info in archive.getmembers() if info.name in hrefs]
    if gzip_ova:
        with open(path + ".gz", "wb") as out:
            run(["pigz", "-6", "-n", "-c", path], stdout=out)
        os.replace(path + ".gz", path)
        for member in members:
            member["compression"] = "gzip-ova"
    return Package(path=path, files=[path], members=members)


def build_export_dir(directory: str, name: str, sources: List[Source]) -> str:
    """A Ganeti 3.0 export: config.ini and one raw dump per disk (hard links)."""
    shutil.rmtree(directory, ignore_errors=True)  # a stale one of other sizes
    os.makedirs(directory)
    exported = []
    for index, src in enumerate(sources):
        dump = "disk%d.raw" % index
        os.link(src.path, os.path.join(directory, dump))
        exported.append(ganeti_export.ExportedDisk(dump=dump,
                                                   size_mib=ganeti_export.size_to_mib(src.virtual)))
    system = VirtualSystem(system_id=name, name=name + ".example.com", vcpus=1,
                           memory_mib=512, nics=(Nic(mac="aa:00:00:00:00:02"),),
                           ganeti=GanetiSettings(os_name="noop", disk_template="plain",
                                                 hypervisor="kvm"))
    with open(os.path.join(directory, "config.ini"), "w") as handle:
        handle.write(ganeti_export.build_config(system, exported, source="bench",
                                                timestamp=0))
    return directory


# ------------------------------------------------------------ the builder


# Packages of workload 1's disk: w2 gzip-compressed in an OVF folder, wg in a
# gzip-compressed OVA.
W1_PACKAGES = ("w2", "wg")


class Builder:
    """Builds artefacts in `workdir` once; a kept work directory is reused."""

    def __init__(self, workdir: str, sizes: Sizes) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.key = json.dumps(asdict(sizes), sort_keys=True)
        self._memo: Dict[str, object] = {}
        self.log: Callable[[str], None] = lambda message: None

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def _key(self, name: str) -> str:
        """What an artefact depends on: the sizes of its data set only, so
        adding a data set does not rebuild the others."""
        which = name.split("-", 1)[1]
        data = getattr(self.sizes, "w1" if which in W1_PACKAGES else which)
        extra = {"w3_count": self.sizes.w3_count} if which == "w3" else {}
        return json.dumps(dict(asdict(data), **extra), sort_keys=True)

    def _cached(self, name: str, kind: type, make: Callable[[], object]):
        if name in self._memo:
            return self._memo[name]
        stamp = self.path("built", name + ".json")
        value = None
        if os.path.exists(stamp):
            with open(stamp) as handle:
                saved = json.load(handle)
            if saved["key"] == self._key(name):
                value = [kind(**item) for item in saved["value"]] if kind is not str \
                    else saved["value"]
        if value is None:
            self.log("building %s" % name)
            value = make()
            if kind is str and isinstance(value, str):
                value = [value]
            os.makedirs(os.path.dirname(stamp), exist_ok=True)
            data = value if kind is str else [asdict(item) for item in value]
            with open(stamp, "w") as handle:
                json.dump({"key": self._key(name), "value": data}, handle)
        self._memo[name] = value
        return value

    def sources(self, which: str) -> List[Source]:
        def make() -> List[Source]:
            os.makedirs(self.path("src"), exist_ok=True)
            data, count = {"w1": (self.sizes.w1, 1), "w4": (self.sizes.w4, 1),
                           "wr": (self.sizes.wr, 1),
                           "w3": (self.sizes.w3, self.sizes.w3_count)}[which]
            return [write_source(self.path("src", "%s-%d.raw" % (which, i)), data,
                                 seed=hash_seed(which, i)) for i in range(count)]
        return self._cached("src-" + which, Source, make)

    def vmdks(self, which: str) -> List[str]:
        """streamOptimized VMDKs made by qemu-img (as by a foreign tool)."""
        def make() -> List[str]:
            srcs = self.sources(which)
            os.makedirs(self.path("vmdk"), exist_ok=True)
            paths = [self.path("vmdk", "%s-%d.vmdk" % (which, i)) for i in range(len(srcs))]
            _stream_vmdks(srcs, paths)
            return paths
        return self._cached("vmdk-" + which, str, make)

    def package(self, which: str) -> Package:
        folder = which == "w2"
        data = "w1" if which in W1_PACKAGES else which
        return self._cached("pkg-" + which, Package, lambda: [build_package(
            self.path("pkg", which), "bench-" + which, self.sources(data),
            self.vmdks(data), ova=not folder, gzip=folder, gzip_ova=which == "wg")])[0]

    def export_dir(self, which: str) -> str:
        return self._cached("exp-" + which, str, lambda: build_export_dir(
            self.path("exp", which), "bench-" + which, self.sources(which)))[0]


def hash_seed(which: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(b"%s/%d" % (which.encode(), index)).digest()[:8],
                          "big")


# ------------------------------------------------------------ commands


# The checkout whose gnt-ovf is "ours" (run.py --ours-root: another commit's).
OURS_ROOT = ROOT


def ours(*args: str) -> List[str]:
    return [PYTHON, "-m", "ganeti_ovf"] + list(args)


def shell(lines: List[str]) -> List[str]:
    return ["/bin/sh", "-ec", "\n".join(lines)]


def q(value: str) -> str:
    return shlex.quote(value)


def member_opts(member: Dict) -> str:
    """qemu's in-place window over a tar member (size in whole sectors)."""
    if member["offset"] == 0 and member["size"] == os.path.getsize(member["path"]):
        return "driver=vmdk,file.driver=file,file.filename=%s" % member["path"]
    return ("driver=vmdk,file.driver=raw,file.offset=%d,file.size=%d,"
            "file.file.filename=%s" % (member["offset"], -(-member["size"] // 512) * 512,
                                       member["path"]))


def import_workload(builder: Builder, name: str, number: int, which: str,
                    description: str) -> Workload:
    pkg = builder.package(which)
    srcs = builder.sources("w1" if which in W1_PACKAGES else which)
    out = builder.path("out", name)
    mine, base, floor = (os.path.join(out, part) for part in ("ours", "base", "floor"))
    script = ["mkdir -p %s" % q(base)]
    tar_dir = os.path.join(base, "tar")
    if pkg.members[0]["compression"] == "gzip-ova":
        # Extracted, then the disks hashed (openssl: the fastest sha256 here)
        # as the manifest asks, then converted.
        names = [q(os.path.join(tar_dir, member["name"])) for member in pkg.members]
        script += ["mkdir -p %s" % q(tar_dir),
                   "gzip -dc %s | tar -xf - -C %s" % (q(pkg.path), q(tar_dir)),
                   "openssl dgst -sha256 %s > /dev/null" % " ".join(names)]
    for index, member in enumerate(pkg.members):
        dest = q(os.path.join(base, "disk%d.raw" % index))
        if member["compression"] == "gzip-ova":
            script.append("qemu-img convert -f vmdk -O raw %s %s"
                          % (q(os.path.join(tar_dir, member["name"])), dest))
        elif member["compression"] == "gzip":
            tmp = q(os.path.join(base, "disk%d.vmdk" % index))
            script += ["gzip -dc %s > %s" % (q(member["path"]), tmp),
                       "qemu-img convert -f vmdk -O raw %s %s" % (tmp, dest),
                       "rm -f %s" % tmp]
        else:
            script.append("qemu-img convert --image-opts %s -O raw %s"
                          % (q(member_opts(member)), dest))
    script += ["rm -rf %s" % q(tar_dir), "sync %s/*" % q(base)]
    floor_script = ["mkdir -p %s" % q(floor),
                    "cat %s > /dev/null" % " ".join(q(f) for f in pkg.files)]
    floor_script += ["cp --sparse=always %s %s" % (q(src.path),
                                                   q(os.path.join(floor, "disk%d.raw" % i)))
                     for i, src in enumerate(srcs)]
    floor_script.append("sync %s/*" % q(floor))
    return Workload(
        name=name, number=number, description=description, kind="import",
        ours=Job(ours("import", "--output-dir", mine, pkg.path), [mine], OURS_ROOT),
        baseline=Job(shell(script), [base]), floor=Job(shell(floor_script), [floor]),
        inputs=list(pkg.files), sources=srcs)


EXPORT_MODES = {  # mode: (our options, extension, description)
    "vmdk-ova": (["--format=vmdk", "--ova"], "vmdk", "--format=vmdk --ova"),
    "qcow2": (["--format=qcow2"], "qcow2", "--format=qcow2 (folder)"),
    "raw-gz": (["--format=raw", "--compress"], "raw.gz", "--format=raw --compress (folder)"),
    "raw": (["--format=raw"], "raw", "--format=raw (folder)"),
    "raw-chunked": (["--format=raw", "--chunk-size=%dM" % (CHUNK_SIZE // MIB)], "raw",
                    "--format=raw --chunk-size=%dM (folder)" % (CHUNK_SIZE // MIB)),
}
# Which data sets each export mode runs on (see SKIPPED for the others).
EXPORT_DATA = {"vmdk-ova": ("w1", "w3", "w4", "wr"), "qcow2": ("w1", "w3", "w4"),
               "raw-gz": ("w1", "w3"), "raw": ("w1", "w3"), "raw-chunked": ("w3",)}


def export_workload(builder: Builder, name: str, which: str, mode: str) -> Workload:
    source_dir = builder.export_dir(which)
    srcs = builder.sources(which)
    options, ext, label = EXPORT_MODES[mode]
    out = builder.path("out", name)
    mine, base, floor = (os.path.join(out, part) for part in ("ours", "base", "floor"))
    pkg = "bench-%s.example.com" % which
    hrefs = ["%s-disk%d.%s" % (pkg, i, ext) for i in range(len(srcs))]
    template = builder.path("exp", "%s.ovf" % which)
    if not os.path.exists(template):
        with open(template, "wb") as handle:
            handle.write(descriptor(pkg, hrefs, [0] * len(srcs), [s.virtual for s in srcs]))
    script = ["mkdir -p %s" % q(base), "cd %s" % q(base),
              "cp %s %s.ovf" % (q(template), q(pkg))]
    for src, href in zip(srcs, hrefs, strict=True):
        if mode == "vmdk-ova":
            script.append("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized %s %s"
                          % (q(src.path), q(href)))
        elif mode.startswith("raw") and mode != "raw-gz":
            # qemu-img keeps holes (-S 4k by default); the digest comes after.
            script.append("qemu-img convert -f raw -O raw %s %s" % (q(src.path), q(href)))
        elif mode == "qcow2":
            script.append("qemu-img convert -f raw -O qcow2 %s %s" % (q(src.path), q(href)))
        else:
            script.append("gzip -c %s > %s" % (q(src.path), q(href)))
    names = " ".join(q(item) for item in [pkg + ".ovf"] + hrefs)
    script.append("sha256sum --tag %s > %s.mf" % (names, q(pkg)))
    if mode == "vmdk-ova":
        script += ["tar -cf %s.ova %s.ovf %s.mf %s" % (q(pkg), q(pkg), q(pkg), " ".join(
            q(h) for h in hrefs)), "rm -f %s %s.ovf %s.mf" % (" ".join(q(h) for h in hrefs),
                                                              q(pkg), q(pkg))]
    script.append("sync %s/*" % q(base))
    floor_script = ["mkdir -p %s" % q(floor)]
    floor_script += ["cp --sparse=always %s %s" % (q(src.path),
                                                   q(os.path.join(floor, "disk%d.raw" % i)))
                     for i, src in enumerate(srcs)]
    floor_script.append("sync %s/*" % q(floor))
    return Workload(
        name=name, number=5, description="export of %s data: %s" % (which, label),
        kind="export",
        ours=Job(ours("export", *options, "--output-dir", mine, source_dir), [mine],
                 OURS_ROOT),
        baseline=Job(shell(script), [base]), floor=Job(shell(floor_script), [floor]),
        inputs=[src.path for src in srcs], sources=srcs)


# The machine's limits that bound each case (../shared/PERF-FACTS.md: 2 shared
# cores, MB/s of uncompressed bytes), printed beside the results.
PERF_FACTS = {
    "write": "write 426 MB/s (dd fdatasync)",
    "sha256": "sha256 919 MB/s (Python)",
    "sparse-copy": "cp --sparse 1612 MB/s",
    "zlib-inflate": "zlib inflate 344 MB/s",
    "igzip-inflate": "igzip -d 1402 MB/s",
    "libdeflate-inflate": "libdeflate -d 960 MB/s",
    "libdeflate-deflate": "libdeflate -1 2 threads 461 MB/s",
    "igzip-deflate": "igzip -1 1 thread 663 MB/s",
    "qemu-raw": "qemu-img raw->raw 812 MB/s",
    "qemu-vmdk": "qemu-img streamOptimized 66 MB/s",
    "gzip-6": "gzip -6 46 MB/s",
}
LIMITS = {  # workload name (or its export mode) -> keys of PERF_FACTS
    "import-ova-vmdk": ("libdeflate-inflate", "sha256", "write"),
    "import-folder-gzip": ("igzip-inflate", "libdeflate-inflate", "sha256", "write"),
    "import-ova-gzip": ("igzip-inflate", "libdeflate-inflate", "sha256", "write"),
    "import-four-disks": ("libdeflate-inflate", "sha256", "write"),
    "import-1tib-sparse": ("libdeflate-inflate", "write"),
    "vmdk-ova": ("igzip-deflate", "libdeflate-deflate", "qemu-vmdk", "sha256", "write"),
    "qcow2": ("qemu-raw", "sha256", "write"),
    "raw-gz": ("igzip-deflate", "libdeflate-deflate", "gzip-6", "sha256", "write"),
    "raw": ("sparse-copy", "qemu-raw", "sha256", "write"),
    "raw-chunked": ("sparse-copy", "qemu-raw", "sha256", "write"),
}


def limits(name: str) -> str:
    """The PERF-FACTS.md figures that bound workload `name`."""
    key = name if name in LIMITS else name.split("-", 2)[-1]
    return "; ".join(PERF_FACTS[item] for item in LIMITS.get(key, ()))


def catalogue(builder: Builder) -> List[tuple]:
    """(name, number, factory) of every workload, in the order they run."""
    s = builder.sizes

    def size(value: int) -> str:
        return "%d TiB" % (value // TIB) if value >= TIB else (
            "%d GiB" % (value // GIB) if value >= GIB else "%d MiB" % (value // MIB))

    w1 = "%s virtual, %s random + %s text" % (size(s.w1.virtual), size(s.w1.random),
                                             size(s.w1.text))
    table = [
        ("import-ova-vmdk", 1, lambda: import_workload(
            builder, "import-ova-vmdk", 1, "w1", "OVA, one streamOptimized VMDK, " + w1)),
        ("import-folder-gzip", 2, lambda: import_workload(
            builder, "import-folder-gzip", 2, "w2",
            "OVF folder, gzip-compressed VMDK, " + w1)),
        ("import-ova-gzip", 2, lambda: import_workload(
            builder, "import-ova-gzip", 2, "wg",
            "gzip-compressed OVA (pigz -6), one streamOptimized VMDK, " + w1)),
        ("import-four-disks", 3, lambda: import_workload(
            builder, "import-four-disks", 3, "w3", "OVA, %d VMDKs of %s virtual, %s data each"
            % (s.w3_count, size(s.w3.virtual), size(s.w3.random + s.w3.text)))),
        ("import-1tib-sparse", 4, lambda: import_workload(
            builder, "import-1tib-sparse", 4, "w4", "OVA, one VMDK of %s virtual, %s data"
            % (size(s.w4.virtual), size(s.w4.random + s.w4.text)))),
    ]
    for which in ("w1", "w3", "w4", "wr"):
        for mode in EXPORT_MODES:
            if which not in EXPORT_DATA[mode]:
                continue  # see SKIPPED
            name = "export-%s-%s" % (which, mode)
            table.append((name, 5, lambda n=name, w=which, m=mode: export_workload(
                builder, n, w, m)))
    return table


SKIPPED = [
    "export-w4-raw-gz: a raw dump of 1 TiB cannot be compressed in reasonable time"
    " (gzip reads every hole as zeros); only vmdk and qcow2 make sense there.",
    "export-w4-raw: its manifest digest hashes 1 TiB of zeros (20 minutes at 1 GB/s,"
    " for ours and sha256sum alike).",
    "export-*-raw-chunked: on w3 only (chunking is the same work on any data).",
    "export-wr-*: the random data set is for the vmdk --ova case (stored grains).",
    "export of workload 2's data: it is workload 1's data, so export-w1-* covers it.",
]


# ------------------------------------------------------------ checks


def _qemu(args: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU_IMG] + args, capture_output=True, text=True)


def _disk_index(path: str) -> int:
    found = re.findall(r"disk(\d+)", os.path.basename(path))
    return int(found[-1]) if found else -1


def outputs(job_dir: str) -> List[str]:
    """Every regular file under `job_dir` (sorted by disk number)."""
    files = [path for path in glob.glob(os.path.join(job_dir, "**"), recursive=True)
             if os.path.isfile(path)]
    return sorted(files, key=lambda path: (_disk_index(path), path))


def check_import(workload: Workload) -> Dict[str, str]:
    results = {}
    disks = [p for p in outputs(workload.ours.outputs[0]) if p.endswith(".raw")]
    if len(disks) != len(workload.sources):
        return {"disks": "FAIL: %d raw disks, expected %d" % (len(disks), len(workload.sources))}
    for index, (disk, src) in enumerate(zip(disks, workload.sources, strict=True)):
        if src.sha256 is not None:
            got = sha256_file(disk, src.virtual)
            results["disk%d sha256" % index] = "ok" if got == src.sha256 else \
                "FAIL: %s != source %s" % (got[:16], src.sha256[:16])
        else:
            done = _qemu(["compare", "-q", "-f", "raw", "-F", "raw", src.path, disk])
            results["disk%d qemu-img compare" % index] = "ok" if done.returncode == 0 else \
                "FAIL: %s" % (done.stdout + done.stderr).strip()[-200:]
    return results


def _export_images(workload: Workload) -> List[tuple]:
    """(image-opts or path, format) of each exported disk."""
    files = outputs(workload.ours.outputs[0])
    ova = [p for p in files if p.endswith(".ova")]
    if ova:
        with tarfile.open(ova[0]) as archive:
            members = [{"name": i.name, "path": ova[0], "offset": i.offset_data,
                        "size": i.size} for i in archive.getmembers()
                       if i.name.endswith(".vmdk")]
        members.sort(key=lambda m: _disk_index(m["name"]))
        return [(member_opts(m), "vmdk-opts") for m in members]
    result = []
    for path in files:
        for ext, fmt in ((".qcow2", "qcow2"), (".vmdk", "vmdk"), (".raw.gz", "raw.gz"),
                         (".raw", "raw"), (".raw.000000000", "raw-chunks")):
            if path.endswith(ext):
                result.append((path, fmt))
    return result


def _chunks(first: str) -> List[str]:
    """Every chunk file of the chunked file whose first chunk is `first`."""
    return sorted(glob.glob(glob.escape(first[:-len("000000000")]) + "[0-9]" * 9))


def _sha256_files(paths: List[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while block := handle.read(8 * MIB):
                digest.update(block)
    return digest.hexdigest()


def check_export(workload: Workload) -> Dict[str, str]:
    results: Dict[str, str] = {}
    images = _export_images(workload)
    if len(images) != len(workload.sources):
        return {"disks": "FAIL: %d disk files, expected %d" % (len(images),
                                                               len(workload.sources))}
    for index, ((image, fmt), src) in enumerate(zip(images, workload.sources, strict=True)):
        if fmt == "raw.gz":
            for reader in (["pigz", "-dc"], ["gzip", "-dc"]):
                proc = subprocess.Popen(reader + [image], stdout=subprocess.PIPE)
                digest = hashlib.sha256()
                while block := proc.stdout.read(8 * MIB):
                    digest.update(block)
                ok = proc.wait() == 0 and digest.hexdigest() == src.sha256
                results["disk%d %s sha256" % (index, reader[0])] = "ok" if ok else "FAIL"
            continue
        if fmt in ("raw", "raw-chunks"):
            files = [image] if fmt == "raw" else _chunks(image)
            ok = sum(os.path.getsize(p) for p in files) == src.virtual \
                and _sha256_files(files) == src.sha256
            results["disk%d sha256" % index] = "ok" if ok else "FAIL"
            continue
        if fmt == "vmdk-opts":
            check = _qemu(["check", "--image-opts", image])
            compare = _qemu(["compare", "-q", "--image-opts",
                             "driver=raw,file.filename=%s" % src.path, image])
        else:
            check = _qemu(["check", "-f", fmt, image])
            compare = _qemu(["compare", "-q", "-f", "raw", "-F", fmt, src.path, image])
        results["disk%d qemu-img check" % index] = "ok" if check.returncode == 0 else \
            "FAIL: %s" % (check.stdout + check.stderr).strip()[-200:]
        results["disk%d qemu-img compare" % index] = "ok" if compare.returncode == 0 else \
            "FAIL: %s" % (compare.stdout + compare.stderr).strip()[-200:]
    return results


def check(workload: Workload) -> Dict[str, str]:
    """Content checks of our last output; values are "ok" or "FAIL: why"."""
    return check_import(workload) if workload.kind == "import" else check_export(workload)


def output_sizes(job: Job, only_disks: bool = True) -> Dict[str, int]:
    """Apparent and allocated bytes of a job's output files."""
    files = [p for p in outputs(job.outputs[0])
             if not only_disks or not p.endswith((".ini", ".ovf", ".mf"))]
    stats = [os.stat(p) for p in files]
    return {"files": len(files), "apparent": sum(s.st_size for s in stats),
            "allocated": sum(s.st_blocks * 512 for s in stats)}
