"""The disks stage: from a package's disk file to a sparse raw disk, and back.

This module owns the order of the steps and the files in between: a gzip or
chunked file is first materialised (streamed, bounded) into a private staging
file (a gzip file holding a streamOptimized VMDK is instead converted while
it inflates, vmdkflow.py, when that pass can vouch for the result); then the
image is inspected in Python (formats.py), opened by qemu-img info with the
format found, cross-checked (qcow2 also by qemu-img check, which finds a
truncated image), and converted to raw: into a new sparse file (import_disk)
or, for a direct import, into an instance's existing disk (prepare, then
write_into; target.py opens and zeroes that disk).  Nothing is trusted to be
raw without inspection saying so.  Programs run only in
qemu.py.
"""

import dataclasses
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ganeti_ovf.disks import formats, gzipstream, qemu, vmdkflow, vmdkread
from ganeti_ovf.disks.target import Target, create_sparse
from ganeti_ovf.errors import DiskError
from ganeti_ovf.package import openfile
from ganeti_ovf.model import COMPRESSION_GZIP, COMPRESSION_NONE, Member

BLOCK = 1024 ** 2  # read and write unit; an all-zero block becomes a hole
MIB = 1024 ** 2
# Expansion allowed when materialising without a caller's limit: the image
# file may exceed the guest size by its metadata, never by more.
METADATA_SLACK = 64 * 1024 ** 2
_ZERO = bytes(BLOCK)


@dataclass(frozen=True)
class ImportedDisk:
    """A disk written to `path` as sparse raw."""

    path: str
    format: str  # what the package held (qemu-img driver name)
    virtual_size: int  # the image's own guest size
    size: int  # the raw file's size: at least the declared capacity
    details: Dict[str, Any] = field(default_factory=dict)


def _member_blocks(member: Member) -> Iterator[bytes]:
    """The bytes of `member`, in blocks, read within its range only."""
    return gzipstream.read_range(member, member.offset, member.size)


class _SparseWriter:
    """Writes blocks to a file, leaving holes where a block is all zeros.

    Two bounds, both checked before a byte is written: the file's size
    (`limit`, said to be `rule`) and the bytes it allocates (`room`, the
    free space of `where` when it began)."""

    def __init__(self, fd: int, limit: int, name: str, rule: str = "",
                 room: Optional[int] = None, where: str = "") -> None:
        self.fd = fd
        self.limit = limit
        self.name = name
        self.rule = rule
        self.room = room
        self.where = where
        self.size = 0
        self.allocated = 0

    def _within_limit(self, count: int) -> None:
        if self.size + count > self.limit:
            raise DiskError("%s: expands beyond the limit of %d bytes%s"
                            % (self.name, self.limit,
                               " (%s)" % self.rule if self.rule else ""))

    def write(self, data: bytes) -> None:
        self._within_limit(len(data))
        for start in range(0, len(data), BLOCK):
            piece = data[start:start + BLOCK]
            if piece != (_ZERO if len(piece) == BLOCK else bytes(len(piece))):
                if self.room is not None and self.allocated + len(piece) > self.room:
                    raise DiskError("%s: expands beyond the free space of %s (%d bytes"
                                    " available)" % (self.name, self.where, self.room))
                os.pwrite(self.fd, piece, self.size)
                self.allocated += len(piece)
            self.size += len(piece)

    def skip(self, count: int) -> None:
        """`count` bytes left out: a hole, within the size limit."""
        self._within_limit(count)
        self.size += count

    def finish(self) -> None:
        # Trailing holes are not written: give the file its full length.
        os.ftruncate(self.fd, self.size)


def materialize(members: Sequence[Member], compression: str, staging_dir: str,
                limit: int, rule: str = "") -> Member:
    """Join `members` in order (decompressing gzip) into a private staging file.

    Returns a Member for the new file: created private in `staging_dir` and
    unlinked at once, it lives while its descriptor (member.fd, the caller's
    to close) is open.  Raises DiskError for an unknown compression, a
    truncated or trailing-garbage gzip, output beyond `limit` bytes (`rule`
    says whose limit) or beyond the free space of `staging_dir`, or a read
    or write failure.
    """
    if not members:
        raise DiskError("no file to materialise")
    name = members[0].name
    if compression not in (COMPRESSION_NONE, COMPRESSION_GZIP):
        raise DiskError("%s: unsupported compression %r" % (name, compression))

    def fill(out: _SparseWriter) -> None:
        if compression == COMPRESSION_GZIP:
            gzipstream.gunzip(members, out.write, name)
        else:
            for block in (block for member in members for block in _member_blocks(member)):
                out.write(block)

    return _staged(name, staging_dir, limit, rule, fill)


def _staged(name: str, staging_dir: str, limit: int, rule: str,
            fill: Callable[[_SparseWriter], None]) -> Member:
    """A private staging file (see materialize) that fill() writes."""
    room = openfile.free_space(staging_dir, DiskError)
    try:
        fd, path = tempfile.mkstemp(prefix=".disk-", suffix=".img", dir=staging_dir)
        os.unlink(path)  # reached through its descriptor only; gone when closed
    except OSError as err:
        raise DiskError("%s: cannot create a staging file in %s: %s"
                        % (name, staging_dir, err.strerror)) from None
    try:
        out = _SparseWriter(fd, limit, name, rule, room, staging_dir)
        fill(out)
        out.finish()
    except BaseException as err:
        os.close(fd)
        if isinstance(err, OSError):
            raise DiskError("%s: cannot materialise: %s" % (name, err)) from None
        if isinstance(err, zlib.error):
            raise DiskError("%s: corrupt gzip data: %s" % (name, err)) from None
        raise
    return Member(name=name, path=path, offset=0, size=out.size, fd=fd)


@dataclass(frozen=True)
class PreparedDisk:
    """A package disk inspected and ready to convert: read from `member`
    (a staging file when `staged`), as `image.format`."""

    member: Member
    image: formats.DiskImage
    virtual_size: int
    staged: bool


# How far a format's own size granularity may carry an image past the size
# it was made for: qemu sizes a VHD in whole CHS cylinders, at most 16 heads
# of 255 sectors (an 8 MiB disk becomes 8 MiB + 2 KiB).
GEOMETRY_ROUNDING = {"vpc": 16 * 255 * 512}


def capacity_allowance(capacity: int, fmt: str = "raw") -> int:
    """The largest virtual size a disk declaring `capacity` bytes may have
    when its image is in format `fmt`.

    The capacity is a contract: a larger image is refused, never grown into.
    Only rounding is forgiven: tools size images in whole sectors or
    clusters (VHD in whole cylinders), and Ganeti sizes disks in whole MiB,
    so an image up to the MiB boundary above that rounding is the disk the
    capacity asks for.  Capacity 0 allows nothing."""
    if capacity <= 0:
        return 0
    return -(-(capacity + GEOMETRY_ROUNDING.get(fmt, 0)) // MIB) * MIB


def _materialize_limit(capacity: Optional[int],
                       max_size: Optional[int]) -> Tuple[int, str]:
    """How large a materialised image file may grow, and whose rule that is:
    the guest size it may hold plus room for the image's own metadata."""
    if capacity is not None:
        base = capacity_allowance(capacity)
        rule = "the declared capacity of %d bytes and image metadata" % capacity
    else:
        base = max_size or 0
        rule = "--max-disk-size %d and image metadata; no ovf:capacity" % base
    return base + base // 8 + METADATA_SLACK, rule


def prepare(members: Sequence[Member], compression: str, capacity: Optional[int],
            staging_dir: str, limit: Optional[int] = None,
            max_size: Optional[int] = None,
            declared_format: Optional[str] = None) -> PreparedDisk:
    """Make a package's disk file readable and inspect it: no output yet.

    `members` are the file's chunks in order (one for an unchunked file).
    `capacity` is the declared capacity, or None when the package states
    none.  A compressed or chunked file is materialised first; `limit`
    bounds it (default: the capacity, or without one `max_size`, plus
    metadata slack), and so does the free space of `staging_dir`.  The image
    is inspected here (`declared_format`: the format the package names) and
    by qemu-img info; an image whose virtual size exceeds the capacity (see
    capacity_allowance) or `max_size` is refused.  release() frees the
    staging file.
    """
    if not members:
        raise DiskError("no disk file")
    if capacity is not None and capacity < 0:
        raise DiskError("%s: negative capacity %d" % (members[0].name, capacity))
    member = members[0]
    staged = False
    if compression != COMPRESSION_NONE or len(members) > 1 \
            or not qemu.readable_in_place(member):
        limit, rule = _staging_limit(capacity, max_size, limit)
        member = materialize(members, compression, staging_dir, limit, rule)
        staged = True
    return _inspected(member, staged, capacity, max_size, declared_format)


def _staging_limit(capacity: Optional[int], max_size: Optional[int],
                   limit: Optional[int]) -> Tuple[int, str]:
    if limit is None:
        return _materialize_limit(capacity, max_size)
    return limit, "the caller's limit"


def _admit(name: str, virtual_size: int, fmt: str, capacity: Optional[int],
           max_size: Optional[int]) -> None:
    """Refuse a virtual size over the declared capacity (capacity_allowance)
    or `max_size`."""
    if capacity is not None and virtual_size > capacity_allowance(capacity, fmt):
        raise DiskError("%s: virtual size %d bytes is larger than the declared"
                        " capacity of %d bytes (ovf:capacity)"
                        % (name, virtual_size, capacity))
    if max_size is not None and virtual_size > max_size:
        raise DiskError("%s: virtual size %d bytes is over the maximum of %d"
                        " (--max-disk-size)" % (name, virtual_size, max_size))


def _inspected(member: Member, staged: bool, capacity: Optional[int],
               max_size: Optional[int], declared_format: Optional[str]) -> PreparedDisk:
    """Inspect `member` (here and by qemu-img info) and admit its size; a
    staged member is closed when this fails."""
    try:
        image = formats.inspect(member, declared_format)
        described = qemu.info(member, image.format, expected_size=image.virtual_size)
        virtual_size = described["virtual-size"]
        _admit(member.name, virtual_size, image.format, capacity, max_size)
    except BaseException:
        if staged:
            os.close(member.fd)
        raise
    return PreparedDisk(member=member, image=image, virtual_size=virtual_size,
                        staged=staged)


def release(prepared: PreparedDisk) -> None:
    """Remove the staging file of `prepared`, if any (closing it is enough)."""
    if prepared.staged:
        os.close(prepared.member.fd)


def _checked(prepared: PreparedDisk, write: Callable[[], None]) -> None:
    """Run write() while qemu-img check vouches for the image beside it
    (a truncated or damaged image); either failing fails the whole."""
    with ThreadPoolExecutor(max_workers=1) as checker:
        check = None
        if _needs_check(prepared.image):
            check = checker.submit(qemu.check_member, prepared.member,
                                   prepared.image.format)
        try:
            write()
        finally:
            if check is not None:
                check.result()


def import_disk(members: Sequence[Member], compression: str, capacity: Optional[int],
                dest: str, staging_dir: str,
                progress: Optional[Callable[[float], None]] = None,
                limit: Optional[int] = None, max_size: Optional[int] = None,
                declared_format: Optional[str] = None) -> ImportedDisk:
    """Convert a package's disk file to a new sparse raw file `dest`.

    See prepare() for `members`, `capacity`, `limit`, `max_size` and
    `declared_format`.  The raw output is extended (sparsely) to `capacity`
    when the image is smaller; it is never cut.  A gzip file holding a
    streamOptimized VMDK is converted as it inflates (vmdkflow.py) when that
    pass can vouch for the result.  Raises DiskError; no `dest` is left
    behind then.
    """
    if not members:
        raise DiskError("%s: no disk file" % dest)
    if capacity is not None and capacity < 0:
        raise DiskError("%s: negative capacity %d" % (members[0].name, capacity))
    prepared = None
    if compression == COMPRESSION_GZIP:
        flowed = _import_flowing(members, capacity, dest, staging_dir, progress, limit,
                                 max_size, declared_format)
        if isinstance(flowed, ImportedDisk):
            return _extended(flowed, capacity)
        prepared = flowed  # stored whole, not a streamOptimized VMDK; or None
    if prepared is None:
        prepared = prepare(members, compression, capacity, staging_dir, limit, max_size,
                           declared_format)
    member, image, virtual_size = prepared.member, prepared.image, prepared.virtual_size

    def write() -> None:
        if _stream_optimized(image):
            # qemu-img walks every grain of the virtual disk; our
            # reader only reads the stored ones (vmdkread.py).
            vmdkread.convert_stream_optimized(member, dest, virtual_size,
                                              progress=progress)
        else:
            qemu.convert_to_raw(member, image.format, dest, progress, virtual_size)

    try:
        _checked(prepared, write)
    except BaseException:
        _discard(dest)
        raise
    finally:
        release(prepared)
    return _extended(ImportedDisk(path=dest, format=image.format, virtual_size=virtual_size,
                                  size=0, details=dict(image.details)), capacity)


def _extended(disk: ImportedDisk, capacity: Optional[int]) -> ImportedDisk:
    """`disk` with its file extended (sparsely) to `capacity` when smaller,
    and its size filled in; removed on failure."""
    capacity = capacity or 0
    try:
        size = os.stat(disk.path).st_size
        if size < capacity:
            os.truncate(disk.path, capacity)
            size = capacity
    except OSError as err:
        _discard(disk.path)
        raise DiskError("%s: cannot extend to %d bytes: %s"
                        % (disk.path, capacity, err.strerror)) from None
    return dataclasses.replace(disk, size=size)


def _import_flowing(members: Sequence[Member], capacity: Optional[int], dest: str,
                    staging_dir: str, progress: Optional[Callable[[float], None]],
                    limit: Optional[int], max_size: Optional[int],
                    declared_format: Optional[str]
                    ) -> Union[ImportedDisk, PreparedDisk, None]:
    """Inflate a gzip file once, converting a streamOptimized VMDK in it on
    the way (vmdkflow.py) into `dest`.

    Returns the ImportedDisk when the pass vouched for it; the PreparedDisk
    of the whole file stored in staging when it holds another kind of image;
    None, having removed `dest`, when the pass cannot vouch for the VMDK:
    then the caller reads it the ordinary way, which says what is wrong.
    """
    name = members[0].name
    created: List[int] = []

    def output(virtual_size: int) -> Tuple[int, str]:
        _admit(name, virtual_size, "vmdk", capacity, max_size)
        created.append(create_sparse(dest, virtual_size))
        return created[0], dest

    flow: Optional[vmdkflow.Flow] = None

    def fill(out: _SparseWriter) -> None:
        nonlocal flow
        flow = vmdkflow.Flow(name, out, output, progress=progress)
        try:
            gzipstream.gunzip(members, flow.write, name)
            flow.finish()
        finally:
            flow.close()

    limit, rule = _staging_limit(capacity, max_size, limit)
    try:
        skeleton = _staged(name, staging_dir, limit, rule, fill)
    except vmdkflow.FlowRefused:
        _removed(dest, created)
        return None
    except BaseException:
        _removed(dest, created)
        raise
    if not flow.flowing:
        return _inspected(skeleton, True, capacity, max_size, declared_format)
    try:
        flow.verify(skeleton.fd, skeleton.size)
        prepared = _inspected(skeleton, False, capacity, max_size, declared_format)
        if not _stream_optimized(prepared.image) \
                or prepared.virtual_size != flow.geo.capacity:
            raise vmdkflow.FlowRefused("inspection disagrees with the header")
        if progress is not None:
            progress(100.0)
    except (vmdkflow.FlowRefused, DiskError):
        # Inspected in a skeleton: the ordinary reading says what is wrong.
        _removed(dest, created)
        return None
    except BaseException:
        _removed(dest, created)
        raise
    finally:
        os.close(skeleton.fd)
    os.close(created[0])
    return ImportedDisk(path=dest, format=prepared.image.format,
                        virtual_size=prepared.virtual_size, size=0,
                        details=dict(prepared.image.details))


def _removed(dest: str, created: List[int]) -> None:
    """Close and remove the output the flow created, if it did."""
    if created:
        os.close(created[0])
        _discard(dest)


def write_into(prepared: PreparedDisk, disk: Target, staging_dir: str,
               progress: Optional[Callable[[float], None]] = None) -> None:
    """Convert `prepared` into the existing disk `disk`, every byte of it.

    Where `disk` is known to read as zeros only data is written; elsewhere
    the ranges without data, and the disk's tail past the image, are zeroed
    (BLKZEROOUT, a punched hole; qemu-img without --target-is-zero).  The
    disk is flushed before this returns.
    """
    member, image, virtual_size = prepared.member, prepared.image, prepared.virtual_size
    if virtual_size > disk.size:
        raise DiskError("%s: virtual size %d bytes does not fit the instance disk %s"
                        " (%d bytes)" % (member.name, virtual_size, disk.path, disk.size))
    zero = None if disk.known_zero else disk.zero

    def write() -> None:
        if _stream_optimized(image):
            vmdkread.write_stream_optimized(member, disk.fd, disk.path, virtual_size,
                                            zero=zero, progress=progress)
        else:
            qemu.convert_into(member, image.format, disk.path, disk.size,
                              disk.known_zero, staging_dir, progress, virtual_size)

    _checked(prepared, write)
    if zero is not None and disk.size > virtual_size:
        zero(virtual_size, disk.size - virtual_size)
    disk.sync()


def fill_blank(disk: Target) -> None:
    """Make the whole of `disk` read as zeros (nothing to do on a new sparse
    file) and flush it."""
    if not disk.known_zero:
        disk.zero(0, disk.size)
    disk.sync()


def _stream_optimized(image: formats.DiskImage) -> bool:
    return (image.format == "vmdk"
            and image.details.get("createType") == "streamOptimized")


def _needs_check(image: formats.DiskImage) -> bool:
    """Whether qemu-img check must vouch for the image's completeness.

    A streamOptimized VMDK ends in a footer and an end-of-stream marker that
    qemu-img reads before converting, so a cut one already fails there; the
    check would only walk every grain table once more."""
    if image.format not in qemu.CHECK_FORMATS:
        return False
    return not _stream_optimized(image)


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def create_blank(dest: str, size: int) -> None:
    """Create `dest` as a new sparse file of `size` bytes (mode 0600)."""
    if size < 0:
        raise DiskError("%s: negative disk size %d" % (dest, size))
    os.close(create_sparse(dest, size))
