"""`gnt-ovf export`: a Ganeti export into an OVF folder or an OVA, one pass.

config.ini → model → disk files (written once, hashed as they are written)
→ descriptor → manifest → publish.  The stages run backwards from import and
use the same modules.  An OVF folder is built in a staging directory and
renamed into place; an OVA is written straight into its final file under a
staging name (see ova_writer.py for how the descriptor can come first).
"""

import dataclasses
import hashlib
import os
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional

from ganeti_ovf import ganeti_export, manifest, plan, publish, qemu, vmdkstream
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.writer import write_descriptor
from ganeti_ovf.errors import OptionError
from ganeti_ovf.model import (COMPRESSION_GZIP, COMPRESSION_NONE, Appliance, Disk,
                              FileRef)
from ganeti_ovf.ova_writer import MemberWriter, OvaWriter

Feedback = Callable[[str], None]
FORMATS = ("raw", "qcow2", "vmdk")
FORMAT_ALIASES = {"cow": "qcow2"}  # the design document's name for qcow2
EXTENSIONS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk"}
MANIFEST_ALGORITHMS = ("sha1", "sha256", "sha512")
_COPY_BLOCK = 1024 * 1024
_LARGEST_SIZE = 2 ** 63 - 1  # for reserving the descriptor's room in an OVA


@dataclass(frozen=True)
class ExportRequest:
    """Everything `gnt-ovf export` was asked to do."""

    source: str
    output_dir: str
    export_dir: str
    disk_format: str = "vmdk"
    name: Optional[str] = None
    compress: bool = False
    ova: bool = False
    external: bool = False
    manifest_algorithm: Optional[str] = "sha256"
    ovf_version: str = "1.0"
    hardware_family: str = "vmx-10"
    nic_model: str = "E1000"
    chunk_size: Optional[int] = None
    force: bool = False


@dataclass(frozen=True)
class ExportResult:
    path: str
    appliance: Appliance


def normalise_format(value: str, feedback: Feedback) -> str:
    if value in FORMAT_ALIASES:
        feedback("WARNING: format %r is written as %s (qemu-img no longer has %r)"
                 % (value, FORMAT_ALIASES[value], value))
        return FORMAT_ALIASES[value]
    if value not in FORMATS:
        raise OptionError("--format %r is not one of %s" % (value, ", ".join(FORMATS)))
    return value


def check_request(request: ExportRequest) -> None:
    if request.manifest_algorithm not in MANIFEST_ALGORITHMS + (None,):
        raise OptionError("--manifest %r is not one of %s, none"
                          % (request.manifest_algorithm, ", ".join(MANIFEST_ALGORITHMS)))
    if request.ovf_version not in versions.WRITABLE:
        raise OptionError("--ovf-version %r is not one of %s"
                          % (request.ovf_version, ", ".join(sorted(versions.WRITABLE))))
    if request.chunk_size is not None:
        if request.chunk_size < 1024 * 1024:
            raise OptionError("--chunk-size must be at least 1M")
        if request.ova:
            raise OptionError("--chunk-size applies to OVF folders, not to --ova")


# ------------------------------------------------------------ disk writing


class _GzipWriter:
    """A gzip stream (RFC 1952) in front of another writer."""

    def __init__(self, out) -> None:
        self._out = out
        self._compressor = zlib.compressobj(1, zlib.DEFLATED, 31)

    def write(self, data) -> int:
        self._out.write(self._compressor.compress(data))
        return len(data)

    def finish(self) -> None:
        self._out.write(self._compressor.flush())


class _Sink:
    """Where files go: a folder (sparse where possible) or an OVA."""

    def __init__(self, directory: Optional[str], ova: Optional[OvaWriter],
                 algorithm: Optional[str]) -> None:
        self.directory = directory
        self.ova = ova
        self.algorithm = algorithm
        self.digests: dict = {}
        self.sizes: dict = {}

    def write_file(self, name: str, produce: Callable[[BinaryIO], None]) -> int:
        if self.ova is not None:
            size = self.ova.add(name, produce)
            if self.ova.digests.get(name):
                self.digests[name] = self.ova.digests[name]
        else:
            path = os.path.join(self.directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb", buffering=_COPY_BLOCK) as handle:
                member = MemberWriter(handle, self.algorithm)
                produce(member)
                size = member.size
            if member.hexdigest():
                self.digests[name] = member.hexdigest()
        self.sizes[name] = size
        return size


class _ChunkSplitter:
    """Splits one stream into files of `chunk_size` bytes (href.000000000...)."""

    def __init__(self, sink: _Sink, href: str, chunk_size: int) -> None:
        self.sink, self.href, self.chunk_size = sink, href, chunk_size
        self.names: list = []
        self._buffer = bytearray()
        self.size = 0

    def write(self, data) -> int:
        self._buffer += data
        self.size += len(data)
        while len(self._buffer) >= self.chunk_size:
            self._emit(bytes(self._buffer[:self.chunk_size]))
            del self._buffer[:self.chunk_size]
        return len(data)

    def tell(self) -> int:
        return self.size

    def finish(self) -> None:
        if self._buffer or not self.names:
            self._emit(bytes(self._buffer))
            self._buffer.clear()

    def _emit(self, data: bytes) -> None:
        name = "%s.%09d" % (self.href, len(self.names))
        self.names.append(name)
        self.sink.write_file(name, lambda out: out.write(data))


def _copy_raw(source: str, out) -> None:
    with open(source, "rb") as handle:
        while True:
            block = handle.read(_COPY_BLOCK)
            if not block:
                break
            out.write(block)


def _disk_producer(request: ExportRequest, source: str, capacity: int, href: str,
                   scratch: str, feedback: Feedback) -> Callable[[BinaryIO], None]:
    """A function writing one disk's stored bytes (format, then gzip) to `out`."""
    fmt = request.disk_format

    def produce_format(out) -> None:
        if fmt == "vmdk":
            vmdkstream.write_stream_optimized(source, out, capacity=capacity,
                                              name=href.rsplit(".gz", 1)[0])
        elif fmt == "raw":
            _copy_raw(source, out)
        else:
            # qemu-img cannot write qcow2 to a stream: convert into scratch.
            converted = os.path.join(scratch, "disk.qcow2")
            qemu.convert_from_raw(source, "qcow2", converted)
            try:
                _copy_raw(converted, out)
            finally:
                os.unlink(converted)

    def produce(out) -> None:
        if request.compress:
            gzip_out = _GzipWriter(out)
            produce_format(gzip_out)
            gzip_out.finish()
        else:
            produce_format(out)
    return produce


# ------------------------------------------------------------ the pipeline


def export_package(request: ExportRequest, feedback: Feedback) -> ExportResult:
    """Convert a Ganeti export into an OVF package or an OVA."""
    check_request(request)
    config_path = ganeti_export.find_config(request.source, request.export_dir)
    export = ganeti_export.read_export(config_path)
    system = export.system
    name = plan.instance_name(request.name or system.name)
    output_dir = os.path.abspath(request.output_dir)
    for stale in publish.clean_stale_staging(output_dir):
        feedback("Removed staging left by an interrupted run: %s" % stale)

    sources = [ganeti_export.dump_path(export, disk) for disk in export.disks]
    capacities = [max(disk.size_mib * ganeti_export.MIB, os.stat(path).st_size)
                  for disk, path in zip(export.disks, sources, strict=True)]
    ext = EXTENSIONS[request.disk_format] + (".gz" if request.compress else "")
    hrefs = ["%s-disk%d.%s" % (name, index, ext) for index in range(len(sources))]
    descriptor_name, manifest_name = name + ".ovf", name + ".mf"
    target_name = name + ".ova" if request.ova else name

    with publish.name_lock(output_dir, target_name), \
            publish.Staging(output_dir, target_name) as staging:
        if os.path.lexists(staging.target) and not request.force:
            raise OptionError("%s already exists (use --force to replace it)"
                              % staging.target)
        scratch = staging.scratch()
        ova = None
        if request.ova:
            reserved = [(descriptor_name, _descriptor_room(request, export, name, hrefs,
                                                           capacities))]
            if request.manifest_algorithm:
                reserved.append((manifest_name, _manifest_room(
                    request.manifest_algorithm, [descriptor_name] + hrefs)))
            ova = OvaWriter(staging.file(target_name), reserved,
                            digest=request.manifest_algorithm)
        sink = _Sink(None if ova else staging.path, ova, request.manifest_algorithm)

        stored_sizes, chunk_names = [], []
        for index, (source, capacity, href) in enumerate(
                zip(sources, capacities, hrefs, strict=True)):
            feedback("Writing disk %d as %s (%s)" % (index, request.disk_format, href))
            producer = _disk_producer(request, source, capacity, href, scratch, feedback)
            if request.chunk_size:
                splitter = _ChunkSplitter(sink, href, request.chunk_size)
                producer(splitter)
                splitter.finish()
                stored_sizes.append(splitter.size)
                chunk_names.extend(splitter.names)
            else:
                stored_sizes.append(sink.write_file(href, producer))
                chunk_names.append(href)

        appliance = _appliance(request, export, name, hrefs, capacities, stored_sizes)
        descriptor = write_descriptor(appliance, request.ovf_version, request.external,
                                      request.hardware_family, request.nic_model)
        manifest_bytes = None
        if request.manifest_algorithm:
            algorithm = request.manifest_algorithm
            if ova is not None:
                descriptor = _pad(descriptor, ova, descriptor_name)
            digests = dict(sink.digests)
            digests[descriptor_name] = hashlib.new(algorithm, descriptor).hexdigest()
            manifest_bytes = manifest.format_manifest(
                [(algorithm, item, digests[item])
                 for item in [descriptor_name] + chunk_names])

        if ova is not None:
            if request.manifest_algorithm is None:
                descriptor = _pad(descriptor, ova, descriptor_name)
            ova.fill(descriptor_name, descriptor)
            if manifest_bytes is not None:
                ova.fill(manifest_name, manifest_bytes)
            ova.close()
            path = staging.publish_file(target_name, replace=request.force)
        else:
            _write_new(staging.file(descriptor_name), descriptor)
            if manifest_bytes is not None:
                _write_new(staging.file(manifest_name), manifest_bytes)
            path = staging.publish_directory(replace=request.force)
    return ExportResult(path=path, appliance=appliance)


def _appliance(request: ExportRequest, export, name: str, hrefs: list,
               capacities: list, stored_sizes: list) -> Appliance:
    compression = COMPRESSION_GZIP if request.compress else COMPRESSION_NONE
    files, disks = [], []
    for index, (href, capacity, size) in enumerate(
            zip(hrefs, capacities, stored_sizes, strict=True)):
        ref = FileRef(file_id="file%d" % index, href=href, size=size,
                      compression=compression, chunk_size=request.chunk_size)
        files.append(ref)
        disks.append(Disk(disk_id="disk%d" % index, capacity=capacity, file=ref,
                          format_uri=versions.FORMAT_URIS[request.disk_format][0],
                          name=export.disks[index].name))
    system = dataclasses.replace(export.system, system_id=name, name=name,
                                 disks=tuple(disks))
    return Appliance(ovf_version=request.ovf_version, systems=(system,),
                     files=tuple(files))


def _descriptor_room(request: ExportRequest, export, name: str, hrefs: list,
                     capacities: list) -> int:
    """The longest the descriptor can be: every size at its widest."""
    widest = _appliance(request, export, name, hrefs, capacities,
                        [_LARGEST_SIZE] * len(hrefs))
    return len(write_descriptor(widest, request.ovf_version, request.external,
                                request.hardware_family, request.nic_model))


def _manifest_room(algorithm: str, names: list) -> int:
    width = hashlib.new(algorithm).digest_size * 2
    return len(manifest.format_manifest([(algorithm, item, "0" * width) for item in names]))


def _pad(descriptor: bytes, ova: OvaWriter, name: str) -> bytes:
    # Trailing white space after the root element is allowed by XML; it
    # fills the room reserved before the sizes were known.
    room = ova.reserved_size(name)
    if len(descriptor) > room:
        raise OptionError("internal: descriptor outgrew its reserved room")
    return descriptor + b"\n" * (room - len(descriptor))


def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
