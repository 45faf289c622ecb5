"""The package layer: an OVF folder or an OVA tar, members read in place.

Owns finding the descriptor, manifest and certificate of a package and handing
out `Member` byte ranges for the files it holds.  Nothing is ever extracted: an
OVF folder's member is the file itself, an OVA member is a range of the tar
(see tarreader.py for the tar rules).  A gzip-compressed OVA is the one case
that needs a copy: it is decompressed, streaming, into a private file in the
caller's staging directory and read in place from there.

Safety: member names are relative paths of plain components (hrefs such as
`disks/disk1.vmdk` included); in a folder every component is opened with
O_NOFOLLOW below the package directory, so a symlink (even one pointing
inside) or a non-regular file is refused, and a sub-folder stays pinned open
so that later reads cannot be redirected out of the package.  A folder
package's members are valid while the package is open.
"""

import errno
import os
import stat
import tempfile
import weakref
import zlib
from typing import BinaryIO, Dict, List, Optional, Tuple

from ganeti_ovf.package import tarreader
from ganeti_ovf.errors import PackageError
from ganeti_ovf.package.manifest import Manifest, parse_manifest
from ganeti_ovf.model import Member

DESCRIPTOR_CAP = 32 << 20
MANIFEST_CAP = 4 << 20
CERTIFICATE_CAP = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_GUNZIP_READ = 1 << 20
_GUNZIP_OUT = 16 << 20  # bounds memory per step however well the input compresses
_CHUNK_DIGITS = 9  # href.000000000, as the OVF specification numbers chunks
# O_NONBLOCK: opening a FIFO planted in the folder must not hang.
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Package:
    """An opened package.  Use `Package.open`; close() removes any staged copy."""

    kind = ""  # "ovf" (a folder) or "ova"

    def __init__(self, path: str, descriptor_name: str) -> None:
        self.path = path
        self.descriptor_name = descriptor_name
        self.warnings: List[str] = []

    @classmethod
    def open(cls, path: str, staging_dir: Optional[str] = None,
             max_members: int = tarreader.MAX_MEMBERS,
             max_staged: Optional[int] = None) -> "Package":
        """Open the .ovf descriptor (files beside it) or .ova archive at `path`.

        A gzip-compressed OVA is decompressed into `staging_dir`: at most
        `max_staged` bytes (--max-disk-size; None: no cap of its own) and
        never more than the free space there.  Raises PackageError for
        anything that is neither, is unsafe, or exceeds those bounds.
        """
        head = _read_head(path)
        if head.startswith(GZIP_MAGIC):
            if staging_dir is None:
                raise PackageError("%s: a gzip-compressed OVA needs a staging directory"
                                   % path)
            staged = _gunzip(path, staging_dir, max_staged)
            try:
                return _OvaPackage(path, staged, max_members)
            except BaseException:
                _remove(staged)
                raise
        if tarreader.is_tar_header(head):
            return _OvaPackage(path, None, max_members)
        if path.lower().endswith(".ovf"):
            return _FolderPackage(path)
        why = "not a tar archive" if path.lower().endswith(".ova") else \
            "expected a .ovf file or a tar archive"
        raise PackageError("%s: not an OVF descriptor or OVA archive (%s)" % (path, why))

    def close(self) -> None:
        """Release what the package holds (a staged decompressed copy)."""

    def __enter__(self) -> "Package":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # What each kind of package provides.
    def names(self) -> List[str]:
        raise NotImplementedError

    def member(self, name: str) -> Member:
        raise NotImplementedError

    def label(self, name: str) -> str:
        """How messages name member `name` of this package."""
        raise NotImplementedError

    def _manifest_name(self, extension: str) -> Optional[str]:
        raise NotImplementedError

    def _chunk_candidates(self, href: str) -> List[str]:
        raise NotImplementedError

    # Common behaviour.
    def has(self, name: str) -> bool:
        try:
            self.member(name)
        except PackageError:
            return False
        return True

    def descriptor_bytes(self) -> bytes:
        return self._read(self.descriptor_name, DESCRIPTOR_CAP)

    def manifest_name(self) -> Optional[str]:
        return self._manifest_name(".mf")

    def certificate_name(self) -> Optional[str]:
        return self._manifest_name(".cert")

    def manifest_bytes(self) -> Optional[bytes]:
        name = self.manifest_name()
        return None if name is None else self._read(name, MANIFEST_CAP)

    def manifest(self) -> Optional[Manifest]:
        name = self.manifest_name()
        if name is None:
            return None
        return parse_manifest(self._read(name, MANIFEST_CAP), self.label(name))

    def certificate_bytes(self) -> Optional[bytes]:
        name = self.certificate_name()
        return None if name is None else self._read(name, CERTIFICATE_CAP)

    def chunks(self, href: str) -> List[Member]:
        """The members href.000000000, href.000000001, ... of a chunked file, in order."""
        _check_name(self.label(href), href)
        prefix = href + "."
        found: Dict[int, str] = {}
        for name in self._chunk_candidates(href):
            suffix = name[len(prefix):]
            if name.startswith(prefix) and len(suffix) == _CHUNK_DIGITS \
                    and suffix.isascii() and suffix.isdigit():
                found[int(suffix)] = name
        if not found:
            raise PackageError("%s: no chunk files %s%s for chunked file %s"
                               % (self.path, prefix, "0" * _CHUNK_DIGITS, href))
        for index in range(len(found)):
            if index not in found:
                raise PackageError("%s: chunk %s%0*d of %s is missing (chunks must be "
                                   "numbered without gaps)"
                                   % (self.path, prefix, _CHUNK_DIGITS, index, href))
        return [self.member(found[index]) for index in range(len(found))]

    def _read(self, name: str, cap: int) -> bytes:
        member = self.member(name)
        if member.size > cap:
            raise PackageError("%s: %d bytes, more than the %d allowed"
                               % (self.label(name), member.size, cap))
        try:
            with open_member(member) as stream:
                data = stream.read(member.size)
        except OSError as err:
            raise PackageError("%s: cannot read: %s" % (self.label(name), err.strerror))
        if len(data) != member.size:
            raise PackageError("%s: file is shorter than its listed size" % self.label(name))
        return data


class _FolderPackage(Package):
    """A descriptor and the files beside it, or in sub-folders below it.

    A sub-folder is opened once, component by component with O_NOFOLLOW, and
    its descriptor is kept open while the package is: its members are named
    through /proc/PID/fd/N/NAME, which resolves in that very directory however
    the folder is changed afterwards (a component swapped for a symlink, the
    sub-folder renamed), for this process and for the qemu-img it runs.
    """

    kind = "ovf"

    def __init__(self, path: str) -> None:
        self.directory = os.path.dirname(os.path.abspath(path))
        self._pinned: Dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _close_all, self._pinned)
        super().__init__(path, os.path.basename(path))
        self.member(self.descriptor_name)  # a symlinked descriptor is refused too

    def close(self) -> None:
        self._finalizer()

    def label(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def names(self) -> List[str]:
        try:
            entries = sorted(os.listdir(self.directory))
        except OSError as err:
            raise PackageError("%s: cannot list: %s" % (self.directory, err.strerror))
        return [name for name in entries
                if tarreader.member_name_problem(name) is None and self._is_file(name)]

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(os.path.join(self.directory, name)).st_mode)
        except OSError:
            return False

    def member(self, name: str) -> Member:
        _check_name(self.label(name), name)
        subdir, _, base = name.rpartition("/")
        try:
            if subdir:
                directory = self._pinned_directory(subdir)
                path = "%s/%s" % (_fd_path(directory), base)
            else:
                directory = self._open_directory([])
                path = os.path.join(self.directory, name)
            try:
                fd = os.open(base, _NOFOLLOW, dir_fd=directory)
            finally:
                if not subdir:
                    os.close(directory)
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise PackageError("%s: %s" % (self.label(name), _open_problem(err)))
        if not stat.S_ISREG(info.st_mode):
            raise PackageError("%s: not a regular file" % self.label(name))
        return Member(name, path, 0, info.st_size)

    def _pinned_directory(self, subdir: str) -> int:
        """The sub-folder's descriptor, opened once for the package's life."""
        fd = self._pinned.get(subdir)
        if fd is not None:
            return fd
        fd = self._open_directory(subdir.split("/"))
        try:
            # The /proc name must lead to this very directory, or nothing may
            # be read through it (no /proc, or another pid namespace's).
            seen, pinned = os.stat(_fd_path(fd)), os.fstat(fd)
            if (seen.st_dev, seen.st_ino) != (pinned.st_dev, pinned.st_ino):
                raise PackageError("%s: cannot pin the sub-folder: %s does not lead to it"
                                   % (self.label(subdir), _fd_path(fd)))
        except BaseException:
            os.close(fd)
            raise
        self._pinned[subdir] = fd
        return fd

    def _open_directory(self, parts: List[str]) -> int:
        """A descriptor of the package sub-directory `parts`, no symlink followed."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts:
                child = os.open(part, _NOFOLLOW | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _manifest_name(self, extension: str) -> Optional[str]:
        name = os.path.splitext(self.descriptor_name)[0] + extension
        if not os.path.lexists(os.path.join(self.directory, name)):
            return None
        # There: a symlink, FIFO or device is refused, never taken for "no
        # manifest" (which would drop the integrity check).
        self.member(name)
        return name

    def _chunk_candidates(self, href: str) -> List[str]:
        subdir, _, _ = href.rpartition("/")
        if not subdir:
            return self.names()
        try:
            entries = os.listdir(self._pinned_directory(subdir))
        except (OSError, PackageError):
            return []  # chunks() then reports that there are none
        return [subdir + "/" + entry for entry in sorted(entries)]


def _fd_path(fd: int) -> str:
    return "/proc/%d/fd/%d" % (os.getpid(), fd)


def _close_all(fds: Dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class _OvaPackage(Package):
    """A tar archive (possibly a staged decompressed copy of a gzip OVA)."""

    kind = "ova"

    def __init__(self, path: str, staged: Optional[str], max_members: int) -> None:
        # The operator may name the OVA through a symlink; members are then
        # read from the real file, which the tar reader opens with O_NOFOLLOW.
        self.archive = staged or os.path.realpath(path)
        self._finalizer = weakref.finalize(self, _remove, staged) if staged else None
        members = tarreader.read_tar(self.archive, path, max_members)
        descriptors = [m for m in members if m.name.lower().endswith(".ovf")]
        if not descriptors:
            raise PackageError("%s: the archive holds no .ovf descriptor" % path)
        if len(descriptors) > 1:
            raise PackageError("%s: the archive holds %d .ovf descriptors (%s); exactly one "
                               "is allowed" % (path, len(descriptors),
                                               ", ".join(m.name for m in descriptors)))
        descriptor = descriptors[0]
        # Hrefs are relative to the descriptor, which may sit in a folder of the tar.
        self.base = descriptor.name.rpartition("/")[0]
        prefix = self.base + "/" if self.base else ""
        self._members = {m.name[len(prefix):]: m for m in members
                         if m.name.startswith(prefix)}
        super().__init__(path, descriptor.name[len(prefix):])
        if members[0] is not descriptor:
            self.warnings.append("%s: the descriptor %s is not the first member of the "
                                 "archive, as the OVF specification requires"
                                 % (path, descriptor.name))
        self._companions = {ext: self._find_companion(ext) for ext in (".mf", ".cert")}

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()

    def label(self, name: str) -> str:
        return "%s:%s" % (self.path, name)

    def names(self) -> List[str]:
        return list(self._members)

    def member(self, name: str) -> Member:
        _check_name(self.label(name), name)
        found = self._members.get(name)
        if found is None:
            raise PackageError("%s: no such member in the archive" % self.label(name))
        return Member(name, self.archive, found.offset, found.size)

    def _manifest_name(self, extension: str) -> Optional[str]:
        return self._companions[extension]

    def _find_companion(self, extension: str) -> Optional[str]:
        """The .mf/.cert member named after the descriptor, else the only one."""
        wanted = os.path.splitext(self.descriptor_name)[0] + extension
        if wanted in self._members:
            return wanted
        candidates = [name for name in self._members if name.lower().endswith(extension)]
        if len(candidates) == 1:
            self.warnings.append("%s: %s is not named after the descriptor; using it"
                                 % (self.path, candidates[0]))
            return candidates[0]
        if candidates:
            raise PackageError("%s: %d %s files (%s) and none named %s"
                               % (self.path, len(candidates), extension,
                                  ", ".join(candidates), wanted))
        return None

    def _chunk_candidates(self, href: str) -> List[str]:
        return self.names()


def open_member(member: Member) -> BinaryIO:
    """An unbuffered stream positioned at the start of `member`'s bytes.

    O_NOFOLLOW: a folder member swapped for a symlink after it was checked is
    still refused.  Raises OSError.
    """
    fd = os.open(member.path, _NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        stream = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    stream.seek(member.offset)
    return stream  # type: ignore[return-value]


def _check_name(label: str, name: str) -> None:
    problem = tarreader.member_name_problem(name)
    if problem:
        raise PackageError("%s: unsafe member name: %s" % (label, problem))


def _open_problem(err: OSError) -> str:
    if err.errno == errno.ENOENT:
        return "no such file in the package"
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        return "a symbolic link or not a plain path (refused)"
    return "cannot open: %s" % err.strerror


def _read_head(path: str) -> bytes:
    """The first tar block of the file at `path` (O_NONBLOCK: a FIFO must not hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise PackageError("%s: cannot open: %s" % (path, err.strerror))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PackageError("%s: not a regular file" % path)
        return os.pread(fd, tarreader.BLOCK, 0)
    except OSError as err:
        raise PackageError("%s: cannot read: %s" % (path, err.strerror))
    finally:
        os.close(fd)


def _gunzip_bound(path: str, staging_dir: str, cap: Optional[int]) -> Tuple[int, str]:
    """The most a gzip OVA may decompress to in `staging_dir`, and the rule
    that says so: the space an unprivileged user may still write there (the
    root reserve stays free), and `cap` when smaller."""
    try:
        stats = os.statvfs(staging_dir)
    except OSError as err:
        raise PackageError("%s: cannot tell the free space of %s: %s"
                           % (path, staging_dir, err.strerror))
    room = stats.f_bavail * stats.f_frsize
    if cap is not None and cap < room:
        return cap, "--max-disk-size"
    return room, "the free space of %s" % staging_dir


def _gunzip(path: str, staging_dir: str, cap: Optional[int] = None) -> str:
    """Decompress gzip file `path` into a new private file in `staging_dir`,
    within _gunzip_bound()."""
    try:
        fd, staged = tempfile.mkstemp(prefix=".ova-", suffix=".tar", dir=staging_dir)
    except OSError as err:
        raise PackageError("%s: cannot create a file in %s: %s"
                           % (path, staging_dir, err.strerror))
    try:
        with open(path, "rb") as source, os.fdopen(fd, "wb") as target:
            bound = _gunzip_bound(path, staging_dir, cap)
            _gunzip_stream(path, source, _BoundedTarget(path, target, *bound))
    except OSError as err:
        _remove(staged)
        raise PackageError("%s: cannot decompress into %s: %s"
                           % (path, staging_dir, err.strerror))
    except BaseException:
        _remove(staged)
        raise
    return staged


class _BoundedTarget:
    """A file that refuses, before writing, data past `limit` bytes."""

    def __init__(self, path: str, target: BinaryIO, limit: int, rule: str) -> None:
        self.path = path
        self.target = target
        self.limit = limit
        self.rule = rule
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            raise PackageError("%s: decompresses to more than %d bytes (%s)"
                               % (self.path, self.limit, self.rule))
        self.target.write(data)
        self.size += len(data)


def _gunzip_stream(path: str, source: BinaryIO, target: "_BoundedTarget") -> None:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = b""
    try:
        while True:
            if not pending:
                pending = source.read(_GUNZIP_READ)
                if not pending:
                    break
            if decompressor.eof and len(pending) < len(GZIP_MAGIC):
                more = source.read(_GUNZIP_READ)  # the next magic may straddle reads
                if more:
                    pending += more
                    continue
            if decompressor.eof:
                # Another gzip member follows (pigz and cat produce these),
                # or zero padding, which gzip itself ignores.
                if pending.startswith(GZIP_MAGIC):
                    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif not pending.strip(b"\0"):
                    pending = b""
                    continue
                else:
                    raise PackageError("%s: data after the end of the gzip stream" % path)
            target.write(decompressor.decompress(pending, _GUNZIP_OUT))
            pending = decompressor.unconsumed_tail or decompressor.unused_data
        if not decompressor.eof:
            target.write(decompressor.flush())  # output held back by the size bound
    except zlib.error as err:
        raise PackageError("%s: corrupt gzip data: %s" % (path, err))
    if not decompressor.eof:
        raise PackageError("%s: truncated gzip data" % path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
