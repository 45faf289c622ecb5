"""The package layer: an OVF folder or an OVA tar, members read in place.

Owns finding the descriptor, manifest and certificate of a package and handing
out `Member` byte ranges for the files it holds.  Nothing is ever extracted: an
OVF folder's member is the file itself, an OVA member is a range of the tar
(see tarreader.py for the tar rules).  A gzip-compressed OVA is the one case
that needs a copy: it is decompressed, streaming, into a private file in the
caller's staging directory and read in place from there.  The caller passes
the inflater (disks/gzipstream.gunzip, a later stage, which this one may not
import: igzip, libdeflate or pigz, else zlib); there is no second one here.

Safety: member names are relative paths of plain components (hrefs such as
`disks/disk1.vmdk` included); in a folder every component is opened with
O_NOFOLLOW below the package directory, so a symlink (even one pointing
inside) or a non-regular file is refused.  Every file is opened once
(openfile.py) and a `Member` carries its descriptor: no later stage opens a
path.  Small files (descriptor, manifest, certificate) are read once, so the
bytes parsed are the bytes whose digest and signature are checked.  Members
are valid while the package is open; check_unchanged() tells whether any of
its files was rewritten in place meanwhile.
"""

import errno
import os
import stat
import tempfile
import weakref
from typing import BinaryIO, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from ganeti_ovf.errors import OvfError, PackageError
from ganeti_ovf.model import Member
from ganeti_ovf.package import tarreader
from ganeti_ovf.package.manifest import Manifest, parse_manifest
from ganeti_ovf.package.openfile import OPEN_FLAGS, OpenedFile, free_space

DESCRIPTOR_CAP = 32 << 20
MANIFEST_CAP = 4 << 20
CERTIFICATE_CAP = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_DIGITS = 9  # href.000000000, as the OVF specification numbers chunks


class Inflate(Protocol):
    """How a gzip-compressed OVA is inflated (disks/gzipstream.gunzip has
    this shape): the gzip file made of `members` into write(), refusing a
    corrupt, truncated or empty stream and data after it but zeros when
    `padding`; write()'s errors pass through."""

    def __call__(self, members: Sequence[Member], write: Callable[[bytes], None],
                 name: str, *, padding: bool) -> object: ...


class Package:
    """An opened package.  Use `Package.open`; close() releases its files."""

    kind = ""  # "ovf" (a folder) or "ova"

    def __init__(self, path: str, descriptor_name: str) -> None:
        self.path = path
        self.descriptor_name = descriptor_name
        self.warnings: List[str] = []
        # Every file this package opened, each once; closed by close().
        self._opened: List[OpenedFile] = []
        self._finalizer = weakref.finalize(self, _close_all, self._opened)
        self._read_cache: Dict[str, bytes] = {}

    @classmethod
    def open(cls, path: str, staging_dir: Optional[str] = None,
             max_members: int = tarreader.MAX_MEMBERS,
             max_staged: Optional[int] = None,
             inflate: Optional[Inflate] = None) -> "Package":
        """Open the .ovf descriptor (files beside it) or .ova archive at `path`.

        A gzip-compressed OVA is decompressed into `staging_dir` by `inflate`
        (the disks stage's gzipstream.gunzip, which the importer passes: this
        stage imports no later one): at most `max_staged` bytes (--max-disk-size;
        None: no cap of its own) and never more than the free space there.
        Raises PackageError for anything that is neither, is unsafe, or
        exceeds those bounds.
        """
        directory, source, linked = _open_operator_path(path)
        try:
            try:
                head = os.pread(source.fd, tarreader.BLOCK, 0)
            except OSError as err:
                raise PackageError("%s: cannot read: %s" % (path, err.strerror))
            if head.startswith(GZIP_MAGIC):
                if staging_dir is None or inflate is None:
                    raise PackageError("%s: a gzip-compressed OVA needs a staging directory"
                                       " and an inflater" % path)
                return _OvaPackage(path, [source, _gunzip(source, staging_dir, max_staged,
                                                           inflate)],
                                   max_members)
            if tarreader.is_tar_header(head):
                return _OvaPackage(path, [source], max_members)
            if path.lower().endswith(".ovf"):
                if linked:
                    raise PackageError("%s: a symbolic link (refused: a folder package's "
                                       "files are read from the folder itself)" % path)
                package = _FolderPackage(path, directory, source)
                directory = -1  # the package owns it now
                return package
            why = "not a tar archive" if path.lower().endswith(".ova") else \
                "expected a .ovf file or a tar archive"
            raise PackageError("%s: not an OVF descriptor or OVA archive (%s)" % (path, why))
        except BaseException:
            source.close()
            raise
        finally:
            if directory >= 0:
                os.close(directory)

    def close(self) -> None:
        """Close every file of the package (and so free a staged copy)."""
        self._finalizer()

    def __enter__(self) -> "Package":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_unchanged(self) -> None:
        """PackageError if a file of the package changed in place since it
        was opened: whatever was read from it then cannot be trusted."""
        for opened in self._opened:
            opened.check_unchanged()

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
        """The descriptor, read once: the bytes parsed are the bytes checked."""
        return self._read(self.descriptor_name, DESCRIPTOR_CAP)

    def manifest_name(self) -> Optional[str]:
        return self._manifest_name(".mf")

    def certificate_name(self) -> Optional[str]:
        return self._manifest_name(".cert")

    def manifest_bytes(self) -> Optional[bytes]:
        """The manifest, read once: the bytes signed are the entries used."""
        name = self.manifest_name()
        return None if name is None else self._read(name, MANIFEST_CAP)

    def manifest(self) -> Optional[Manifest]:
        data = self.manifest_bytes()
        name = self.manifest_name()
        return None if data is None or name is None else \
            parse_manifest(data, self.label(name))

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

    def _keep(self, opened: OpenedFile) -> OpenedFile:
        self._opened.append(opened)
        return opened

    def _read(self, name: str, cap: int) -> bytes:
        cached = self._read_cache.get(name)
        if cached is not None:
            return cached
        member = self.member(name)
        if member.size > cap:
            raise PackageError("%s: %d bytes, more than the %d allowed"
                               % (self.label(name), member.size, cap))
        try:
            data = read_member(member)
        except OSError as err:
            raise PackageError("%s: cannot read: %s" % (self.label(name), err.strerror))
        if len(data) != member.size:
            raise PackageError("%s: file is shorter than its listed size" % self.label(name))
        self._read_cache[name] = data
        return data


class _FolderPackage(Package):
    """A descriptor and the files beside it, or in sub-folders below it.

    The package's folder is opened once, and every file in it is opened once
    relative to it, component by component with O_NOFOLLOW (a sub-folder
    stays open while the package is).  Renaming, replacing or linking paths
    afterwards changes nothing we read.
    """

    kind = "ovf"

    def __init__(self, path: str, directory: int, descriptor: OpenedFile) -> None:
        super().__init__(path, os.path.basename(path))
        self.directory = os.path.dirname(os.path.abspath(path))
        self._directory_fd = directory
        self._pinned: Dict[str, int] = {"": directory}
        self._files: Dict[str, OpenedFile] = {self.descriptor_name: self._keep(descriptor)}
        self._dir_finalizer = weakref.finalize(self, _close_fds, self._pinned)

    def close(self) -> None:
        super().close()
        self._dir_finalizer()

    def label(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def names(self) -> List[str]:
        try:
            entries = sorted(os.listdir(self._directory_fd))
        except OSError as err:
            raise PackageError("%s: cannot list: %s" % (self.directory, err.strerror))
        return [name for name in entries
                if tarreader.member_name_problem(name) is None and self._is_file(name)]

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(name, dir_fd=self._directory_fd).st_mode)
        except OSError:
            return False

    def member(self, name: str) -> Member:
        _check_name(self.label(name), name)
        opened = self._files.get(name)
        if opened is None:
            subdir, _, base = name.rpartition("/")
            try:
                opened = OpenedFile.open(base, self.label(name),
                                         dir_fd=self._pinned_directory(subdir))
            except OSError as err:
                raise PackageError("%s: %s" % (self.label(name), _open_problem(err)))
            self._files[name] = self._keep(opened)
        return Member(name, self.label(name), 0, opened.size, opened.fd)

    def _pinned_directory(self, subdir: str) -> int:
        """The sub-folder's descriptor, opened once for the package's life."""
        fd = self._pinned.get(subdir)
        if fd is not None:
            return fd
        fd = os.dup(self._directory_fd)
        try:
            for part in subdir.split("/"):
                child = os.open(part, OPEN_FLAGS | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._pinned[subdir] = fd
        return fd

    def _manifest_name(self, extension: str) -> Optional[str]:
        name = os.path.splitext(self.descriptor_name)[0] + extension
        try:
            os.lstat(name, dir_fd=self._directory_fd)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise PackageError("%s: %s" % (self.label(name), _open_problem(err)))
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
        except OSError:
            return []  # chunks() then reports that there are none
        return [subdir + "/" + entry for entry in sorted(entries)]


def _close_all(files: List[OpenedFile]) -> None:
    for opened in files:
        opened.close()
    files.clear()


def _close_fds(fds: Dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class _OvaPackage(Package):
    """A tar archive, opened once; or a gzip OVA and its private decompressed
    copy (the last of `files`), whose members are read from the copy."""

    kind = "ova"

    def __init__(self, path: str, files: List[OpenedFile], max_members: int) -> None:
        super().__init__(path, "")
        for opened in files:
            self._keep(opened)
        self.archive = files[-1]
        members = tarreader.scan_tar(self.archive.fd, path, max_members)
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
        self.descriptor_name = descriptor.name[len(prefix):]
        if members[0] is not descriptor:
            self.warnings.append("%s: the descriptor %s is not the first member of the "
                                 "archive, as the OVF specification requires"
                                 % (path, descriptor.name))
        self._companions = {ext: self._find_companion(ext) for ext in (".mf", ".cert")}

    def label(self, name: str) -> str:
        return "%s:%s" % (self.path, name)

    def names(self) -> List[str]:
        return list(self._members)

    def member(self, name: str) -> Member:
        _check_name(self.label(name), name)
        found = self._members.get(name)
        if found is None:
            raise PackageError("%s: no such member in the archive" % self.label(name))
        return Member(name, self.archive.path, found.offset, found.size, self.archive.fd)

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


def read_member(member: Member) -> bytes:
    """All of a small member's bytes (a capped file: descriptor, manifest,
    certificate), read through its open descriptor in one pread, which a
    regular file answers whole unless it ends early.  Raises OSError."""
    return os.pread(member.fd, member.size, member.offset)


def _open_operator_path(path: str) -> Tuple[int, OpenedFile, bool]:
    """(its folder's descriptor, the file, whether it was reached through a
    symlink) for the package path the operator named.

    The file is opened without following a symlink, relative to its folder,
    so that a folder package's descriptor is the one its folder holds; an
    operator's symlink to an archive is followed (it is his path).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise PackageError("%s: cannot open its folder: %s" % (path, err.strerror))
    try:
        try:
            return directory, OpenedFile.open(os.path.basename(path), path,
                                              dir_fd=directory), False
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
        return directory, OpenedFile.open(path, path, follow=True), True
    except OSError as err:
        os.close(directory)
        raise PackageError("%s: cannot open: %s" % (path, err.strerror))
    except BaseException:
        os.close(directory)
        raise


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


def _gunzip_bound(path: str, staging_dir: str, cap: Optional[int]) -> Tuple[int, str]:
    """The most a gzip OVA may decompress to in `staging_dir`, and the rule
    that says so: the space an unprivileged user may still write there (the
    root reserve stays free), and `cap` when smaller."""
    room = free_space(staging_dir, PackageError)
    if cap is not None and cap < room:
        return cap, "--max-disk-size"
    return room, "the free space of %s" % staging_dir


def _gunzip(source: OpenedFile, staging_dir: str, cap: Optional[int],
            inflate: Inflate) -> OpenedFile:
    """Decompress the gzip OVA `source` into a private file in `staging_dir`
    with `inflate`, within _gunzip_bound().

    The copy is unlinked at once: it lives while its descriptor is open, and
    nobody can reach it by name.  Zero padding after the stream (a tape's
    blocks) is accepted, as gzip -d accepts it.
    """
    path = source.path
    try:
        fd, staged = tempfile.mkstemp(prefix=".ova-", suffix=".tar", dir=staging_dir)
        os.unlink(staged)
    except OSError as err:
        raise PackageError("%s: cannot create a file in %s: %s"
                           % (path, staging_dir, err.strerror))
    try:
        with os.fdopen(os.dup(fd), "wb") as target:
            bounded = _BoundedTarget(path, target, *_gunzip_bound(path, staging_dir, cap))
            whole = Member(os.path.basename(path), path, 0, source.size, source.fd)
            try:
                inflate([whole], bounded.write, path, padding=True)
            except PackageError:
                raise  # the bounds'
            except OvfError as err:  # the inflater's stage's: this stage's here
                raise PackageError(str(err)) from None
    except OSError as err:
        os.close(fd)
        raise PackageError("%s: cannot decompress into %s: %s"
                           % (path, staging_dir, err.strerror))
    except BaseException:
        os.close(fd)
        raise
    return OpenedFile(fd, "%s (decompressed)" % path)


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
