"""`gnt-ovf export`: a Ganeti export into an OVF folder or an OVA, one pass.

config.ini → model → disk files (written once, hashed as they are written)
→ descriptor → manifest → publish.  The stages run backwards from import and
use the same modules.  An OVF folder is built in a staging directory and
renamed into place; an OVA is written straight into its final file under a
staging name (see package/ova_writer.py for how the descriptor can come first).

The export directory is opened once, config.ini and each disk dump once from
it (package/openfile.py: no link followed, nothing but a regular file), and
every stage reads those descriptors; a dump that changed while it was read
fails the export.  The result is readable by no more users than the dumps.
"""

import contextlib
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, TextIO, Tuple

from ganeti_ovf.cluster import ganeti_export, hardware_map
from ganeti_ovf.package import manifest, signature
from ganeti_ovf import plan, publish
from ganeti_ovf.progress import Progress
from ganeti_ovf.disks import deflate, gzipstream, qemu, sparse, vmdkstream
from ganeti_ovf.package import openfile
from ganeti_ovf.package.openfile import OpenedFile
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.writer import write_descriptor
from ganeti_ovf.errors import DiskError, OptionError
from ganeti_ovf.model import (COMPRESSION_GZIP, COMPRESSION_NONE, Appliance, Disk,
                              FileRef)
from ganeti_ovf.package.ova_writer import MemberWriter, OvaWriter

Feedback = Callable[[str], None]
FORMATS = qemu.WRITE_FORMATS
FORMAT_ALIASES = {"cow": "qcow2"}  # the design document's name for qcow2
EXTENSIONS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk"}
MANIFEST_ALGORITHMS = tuple(manifest.CANONICAL)  # hashlib names
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {unit: 1024 ** power for power, units in
               ((2, ("", "m", "mb", "mib")), (3, ("g", "gb", "gib")), (4, ("t", "tb", "tib")))
               for unit in units}
_COPY_BLOCK = 1024 * 1024
_LARGEST_SIZE = 2 ** 63 - 1  # for reserving the descriptor's room in an OVA
_SECTOR = 512
_USTAR_NAME_BYTES = 100  # an OVA is ustar (OVF 1.0 section 5.3): no longer names


@dataclass(frozen=True)
class ExportRequest:
    """Everything `gnt-ovf export` was asked to do."""

    source: str
    output_dir: str
    export_dir: str
    disk_format: str = "vmdk"
    name: Optional[str] = None
    compress: bool = False
    compress_level: int = gzipstream.DEFAULT_LEVEL  # deflate level of --compress
    ova: bool = False
    external: bool = False
    manifest_algorithm: Optional[str] = "sha256"
    ovf_version: str = "1.0"
    hardware_family: str = "vmx-10"
    nic_model: Optional[str] = None  # None: from the instance's nic_type
    disk_controller: Optional[str] = None  # None: from the instance's disk_type
    chunk_size: Optional[int] = None
    force: bool = False
    sign_key: Optional[str] = None  # PEM private key: write a .cert signing the manifest
    sign_cert: Optional[str] = None  # PEM certificate (chain) of that key


@dataclass(frozen=True)
class ExportResult:
    path: str
    appliance: Appliance
    mode: int = publish.FILE_MODE  # of the OVA, or of the folder's files


def normalise_format(value: str, feedback: Feedback) -> str:
    if value in FORMAT_ALIASES:
        feedback("WARNING: format %r is written as %s (qemu-img no longer has %r)"
                 % (value, FORMAT_ALIASES[value], value))
        return FORMAT_ALIASES[value]
    if value not in FORMATS:
        raise OptionError("--format %r is not one of %s" % (value, ", ".join(FORMATS)))
    return value


def parse_chunk_size(value: Optional[str]) -> Optional[int]:
    """--chunk-size in bytes: a number with an optional unit M, G or T (MiB
    if none).  Not Ganeti's unit parser: that one rounds up to 4 MiB."""
    if value is None:
        return None
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else None
    if unit not in _SIZE_UNITS:
        raise OptionError("--chunk-size %r is not a size such as 512M or 2G" % value)
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def compress_level(compress: bool, level: Optional[int]) -> int:
    """--compress-level, which only means something with --compress."""
    if level is None:
        return gzipstream.DEFAULT_LEVEL
    if not compress:
        raise OptionError("--compress-level applies only with --compress")
    return level


def check_request(request: ExportRequest) -> None:
    if request.manifest_algorithm not in MANIFEST_ALGORITHMS + (None,):
        raise OptionError("--manifest %r is not one of %s, none"
                          % (request.manifest_algorithm, ", ".join(MANIFEST_ALGORITHMS)))
    if request.ovf_version not in versions.WRITABLE:
        raise OptionError("--ovf-version %r is not one of %s"
                          % (request.ovf_version, ", ".join(sorted(versions.WRITABLE))))
    if isinstance(request.compress_level, bool) \
            or not isinstance(request.compress_level, int) \
            or not deflate.MIN_LEVEL <= request.compress_level <= deflate.MAX_LEVEL:
        raise OptionError("--compress-level %r is not a level from %d to %d"
                          % (request.compress_level, deflate.MIN_LEVEL, deflate.MAX_LEVEL))
    if bool(request.sign_key) != bool(request.sign_cert):
        raise OptionError("--sign and --cert go together")
    if request.sign_key and request.manifest_algorithm is None:
        raise OptionError("--sign needs a manifest (not --manifest none)")
    if request.chunk_size is not None:
        if request.chunk_size < 1024 * 1024:
            raise OptionError("--chunk-size must be at least 1M")
        if request.ova:
            raise OptionError("--chunk-size applies to OVF folders, not to --ova")


# ------------------------------------------------------------ disk writing


class _Sink:
    """Where files go: a folder or an OVA; records each file's digest."""

    def __init__(self, directory: Optional[str], ova: Optional[OvaWriter],
                 algorithm: Optional[str], mode: int = publish.FILE_MODE) -> None:
        self.directory = directory
        self.ova = ova
        self.algorithm = algorithm
        self.mode = mode
        self.digests: dict = {}

    def write_file(self, name: str, produce: Callable[[BinaryIO], None]) -> int:
        if self.ova is not None:
            size = self.ova.add(name, produce)
            if self.ova.digests.get(name):
                self.digests[name] = self.ova.digests[name]
            return size
        handle, member = self.open_file(name)
        with handle:
            produce(member)
            member.finish()
        self.close_file(name, member)
        return member.size

    def open_file(self, name: str) -> Tuple[BinaryIO, MemberWriter]:
        """A new file of the folder, and the hashing writer in front of it."""
        path = os.path.join(self.directory, name)
        # The published mode already; the staging directory (0700) hides it
        # until published.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, self.mode)
        handle = os.fdopen(fd, "wb", buffering=_COPY_BLOCK)
        return handle, MemberWriter(handle, self.algorithm)

    def close_file(self, name: str, member: MemberWriter) -> None:
        if member.hexdigest():
            self.digests[name] = member.hexdigest()


class _ChunkSplitter:
    """Splits one stream into files of `chunk_size` bytes (href.000000000...).

    Writes straight into one chunk file at a time: a chunk may be gigabytes,
    so it is never held in memory.  Folders only (check_request).
    """

    def __init__(self, sink: _Sink, href: str, chunk_size: int) -> None:
        self.sink, self.href, self.chunk_size = sink, href, chunk_size
        self.names: list = []
        self.size = 0
        self._handle: Optional[BinaryIO] = None
        self._member: Optional[MemberWriter] = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = view.nbytes
        while view:
            if self._member is None:
                self._next()
            room = self.chunk_size - self._member.size
            self._member.write(view[:room])
            view = view[room:]
            if self._member.size == self.chunk_size:
                self._close()
        self.size += written
        return written

    def skip(self, count: int) -> None:
        """`count` zero bytes, left as holes in the chunk files."""
        self.size += count
        while count > 0:
            if self._member is None:
                self._next()
            piece = min(count, self.chunk_size - self._member.size)
            self._member.skip(piece)
            count -= piece
            if self._member.size == self.chunk_size:
                self._close()

    def tell(self) -> int:
        return self.size

    def finish(self) -> None:
        if not self.names:  # an empty file is still one (empty) chunk
            self._next()
        self._close()

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def _next(self) -> None:
        name = "%s.%09d" % (self.href, len(self.names))
        self.names.append(name)
        self._handle, self._member = self.sink.open_file(name)

    def _close(self) -> None:
        if self._handle is not None:
            self._member.finish()
            self._handle.close()
            self.sink.close_file(self.names[-1], self._member)
            self._handle, self._member = None, None


def _disk_producer(request: ExportRequest, source: OpenedFile, capacity: int, href: str,
                   scratch: str, feedback: Feedback,
                   progress: Optional[Callable[[float], None]] = None
                   ) -> Callable[[BinaryIO], None]:
    """A function writing one disk's stored bytes (format, then gzip) to `out`
    from the open dump `source`, which must not change meanwhile;
    progress(percent) follows the VMDK writer."""
    fmt = request.disk_format

    def produce_format(out) -> None:
        if fmt == "vmdk":
            vmdkstream.write_stream_optimized(
                source, out, capacity=capacity, name=href.rsplit(".gz", 1)[0],
                progress=None if progress is None
                else lambda done, total: progress(100.0 * done / max(total, 1)))
        elif fmt == "raw":
            sparse.copy(source, out)
        else:
            # qemu-img cannot write qcow2 to a stream: convert into scratch.
            converted = os.path.join(scratch, "disk.qcow2")
            qemu.convert_from_raw(source, "qcow2", converted)
            try:
                sparse.copy(converted, out)
            finally:
                os.unlink(converted)

    def produce(out) -> None:
        if request.compress:
            gzip_out = gzipstream.GzipWriter(out, request.compress_level)
            try:
                produce_format(gzip_out)
                gzip_out.finish()
            finally:
                gzip_out.abort()
        else:
            produce_format(out)
        source.check_unchanged()  # the bytes written and hashed are the dump's
    return produce


# ------------------------------------------------------------ the pipeline


def check_target(request: ExportRequest, instance: str) -> None:
    """What export_package would refuse before reading a byte (the options,
    a result that already exists), for an export of `instance` that a
    Ganeti job must make first: checked before that job runs."""
    check_request(request)
    name = plan.instance_name(request.name or instance)
    target = name + ".ova" if request.ova else name
    _check_absent(os.path.join(publish.output_directory(request.output_dir), target),
                  request.force)


def export_package(request: ExportRequest, feedback: Feedback,
                   progress_stream: Optional[TextIO] = None) -> ExportResult:
    """Convert a Ganeti export into an OVF package or an OVA."""
    check_request(request)
    config_path = ganeti_export.find_config(request.source, request.export_dir)
    with contextlib.ExitStack() as opened:
        export, dumps = _open_export(config_path, opened)
        return _export(request, export, dumps, feedback, progress_stream)


def _open_export(config_path: str, opened: contextlib.ExitStack
                 ) -> Tuple[ganeti_export.GanetiExport, list]:
    """The export of `config_path` and its disk dumps, each opened once from
    one descriptor of the export directory (closed by `opened`)."""
    directory = openfile.open_directory(os.path.dirname(os.path.abspath(config_path)),
                                        DiskError)
    try:
        export = ganeti_export.read_export(config_path, dir_fd=directory)
        dumps = [opened.enter_context(openfile.open_regular(
                     ganeti_export.dump_path(export, disk), "disk dump", dir_fd=directory,
                     error=DiskError))
                 for disk in export.disks]
    finally:
        os.close(directory)
    return export, dumps


def _export(request: ExportRequest, export: ganeti_export.GanetiExport, sources: list,
            feedback: Feedback, progress_stream: Optional[TextIO]) -> ExportResult:
    system = export.system
    name = plan.instance_name(request.name or system.name)
    output_dir = publish.output_directory(request.output_dir)
    for stale in publish.clean_stale_staging(output_dir):
        feedback("Removed staging left by an interrupted run: %s" % stale)

    # Old exports may give no size (the dump decides) or a dump that is not
    # whole sectors; a guest disk is, so the capacity is rounded up.
    capacities = [_round_up(max(disk.size_mib * ganeti_export.MIB, dump.size), _SECTOR)
                  for disk, dump in zip(export.disks, sources, strict=True)]
    ext = EXTENSIONS[request.disk_format] + (".gz" if request.compress else "")
    hrefs = ["%s-disk%d.%s" % (name, index, ext) for index in range(len(sources))]
    descriptor_name, manifest_name = name + ".ovf", name + ".mf"
    cert_name = name + ".cert"
    target_name = name + ".ova" if request.ova else name
    if request.ova:
        _check_member_names([descriptor_name, manifest_name, cert_name] + hrefs)
    _check_absent(os.path.join(output_dir, target_name), request.force)

    # Staging first: it creates a missing output directory, which the name
    # lock needs to exist.
    with publish.Staging(output_dir, target_name) as staging, \
            publish.name_lock(output_dir, target_name):
        _check_absent(staging.target, request.force)  # again, under the lock
        mode = publish.not_wider_mode([dump.info for dump in sources],
                                      staging.new_file_gid())
        ova = None
        if request.ova:
            reserved = [(descriptor_name, _descriptor_room(request, export, name, hrefs,
                                                           capacities))]
            if request.manifest_algorithm:
                manifest_room = _manifest_room(request.manifest_algorithm,
                                               [descriptor_name] + hrefs)
                reserved.append((manifest_name, manifest_room))
                if request.sign_key:
                    reserved.append((cert_name, _certificate_room(
                        request, manifest_name, manifest_room)))
            ova = OvaWriter(staging.file(target_name), reserved,
                            digest=request.manifest_algorithm)
        try:
            sink = _Sink(None if ova else staging.path, ova, request.manifest_algorithm,
                         mode)
            line = Progress(progress_stream, capacities)
            try:
                stored_sizes, file_names = _write_disks(request, sources, capacities, hrefs,
                                                        sink, staging.scratch(), feedback,
                                                        line)
            finally:
                line.close()
            appliance = _appliance(request, export, name, hrefs, capacities, stored_sizes)
            descriptor = write_descriptor(appliance, request.ovf_version, request.external,
                                          request.hardware_family)
            if ova is not None:
                descriptor = _pad(descriptor, ova, descriptor_name)
            manifest_bytes = _manifest(request.manifest_algorithm, descriptor_name,
                                       descriptor, file_names, sink.digests)
            cert_bytes = None
            if request.sign_key and manifest_bytes is not None:
                cert_bytes = signature.sign_manifest(
                    manifest_name, manifest_bytes, request.sign_key, request.sign_cert,
                    request.manifest_algorithm.upper())
            for dump in sources:  # none changed after its disk was written either
                dump.check_unchanged()
            if ova is not None:
                ova.fill(descriptor_name, descriptor)
                if manifest_bytes is not None:
                    ova.fill(manifest_name, manifest_bytes)
                if cert_bytes is not None:
                    ova.fill(cert_name, _pad(cert_bytes, ova, cert_name))
                ova.close()
                path = staging.publish_file(target_name, replace=request.force, mode=mode)
            else:
                _write_new(staging.file(descriptor_name), descriptor, mode)
                if manifest_bytes is not None:
                    _write_new(staging.file(manifest_name), manifest_bytes, mode)
                if cert_bytes is not None:
                    _write_new(staging.file(cert_name), cert_bytes, mode)
                path = staging.publish_directory(replace=request.force, mode=mode)
        finally:
            if ova is not None:
                ova.abort()  # a no-op once closed; the staging removal does the rest
    return ExportResult(path=path, appliance=appliance, mode=mode)


def _write_disks(request: ExportRequest, sources: list, capacities: list, hrefs: list,
                 sink: _Sink, scratch: str, feedback: Feedback,
                 line: Progress) -> Tuple[list, list]:
    """Write every disk file; (stored size of each disk, every file name)."""
    stored_sizes, file_names = [], []
    for index, (source, capacity, href) in enumerate(
            zip(sources, capacities, hrefs, strict=True)):
        feedback("Writing disk %d as %s (%s)" % (index, request.disk_format, href))
        producer = _disk_producer(request, source, capacity, href, scratch, feedback,
                                  line.callback(index))
        if request.chunk_size:
            splitter = _ChunkSplitter(sink, href, request.chunk_size)
            try:
                producer(splitter)
                splitter.finish()
            finally:
                splitter.abort()
            stored_sizes.append(splitter.size)
            file_names.extend(splitter.names)
        else:
            stored_sizes.append(sink.write_file(href, producer))
            file_names.append(href)
        progress = line.callback(index)
        if progress is not None:
            progress(100.0)  # formats that report nothing on the way
    return stored_sizes, file_names


def _manifest(algorithm: Optional[str], descriptor_name: str, descriptor: bytes,
              file_names: list, digests: dict) -> Optional[bytes]:
    """The manifest: the descriptor first, then every file (each chunk)."""
    if algorithm is None:
        return None
    digests = dict(digests)
    digests[descriptor_name] = hashlib.new(algorithm, descriptor).hexdigest()
    return manifest.format_manifest([(algorithm, item, digests[item])
                                     for item in [descriptor_name] + file_names])


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
    system = hardware_map.for_export(system, request.disk_controller, request.nic_model)
    return Appliance(ovf_version=request.ovf_version, systems=(system,),
                     files=tuple(files))


def _descriptor_room(request: ExportRequest, export, name: str, hrefs: list,
                     capacities: list) -> int:
    """The longest the descriptor can be: every size at its widest."""
    widest = _appliance(request, export, name, hrefs, capacities,
                        [_LARGEST_SIZE] * len(hrefs))
    return len(write_descriptor(widest, request.ovf_version, request.external,
                                request.hardware_family))


def _manifest_room(algorithm: str, names: list) -> int:
    width = hashlib.new(algorithm).digest_size * 2
    return len(manifest.format_manifest([(algorithm, item, "0" * width) for item in names]))


def _certificate_room(request: ExportRequest, manifest_name: str, manifest_room: int) -> int:
    """Room for the .cert: a trial signature of a manifest of the same length,
    plus slack for ECDSA signatures, whose DER length varies by a few bytes."""
    trial = signature.sign_manifest(manifest_name, b"0" * manifest_room, request.sign_key,
                                    request.sign_cert, request.manifest_algorithm.upper())
    return len(trial) + 16


def _pad(data: bytes, ova: OvaWriter, name: str) -> bytes:
    # Trailing newlines are allowed after an XML root element and after PEM
    # blocks; they fill the room reserved before the sizes were known.
    room = ova.reserved_size(name)
    if len(data) > room:
        raise OptionError("internal: %s outgrew its reserved room" % name)
    return data + b"\n" * (room - len(data))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_absent(target: str, force: bool) -> None:
    if os.path.lexists(target) and not force:
        raise OptionError("%s already exists (use --force to replace it)" % target)


def _check_member_names(names: list) -> None:
    # Refused before any disk is written, not after the first one.
    for member in names:
        if len(member.encode("utf-8")) > _USTAR_NAME_BYTES:
            raise OptionError("%s: an OVA member name is limited to %d bytes"
                              " (choose a shorter --name)" % (member, _USTAR_NAME_BYTES))


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
