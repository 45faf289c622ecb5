"""Publishing: private staging on the destination filesystem, atomic rename.

Every result (an import's export directory, an export's OVF folder or OVA) is
built under a hidden staging directory (".gnt-ovf-staging-*", mode 0700) inside
the output directory, so the final rename never crosses filesystems and Ganeti
(`gnt-backup list` hides dot names) never sees a half-written export.  The
staging directory is flock()ed while in use: a later run removes those whose
lock is free (left by a killed run).  The rename refuses to replace anything
(renameat2 RENAME_NOREPLACE), and a per-name lock serialises concurrent runs.

The output directory is checked first (output_directory): root must not work
in a directory that another user can change under it, since renaming the
staging directory away and putting a link in its place would redirect
root's writes onto any file.  Every directory on the way must belong to root
(or to the user running gnt-ovf, or to Ganeti's daemon users) and be writable
by nobody else, except
root's sticky directories such as /tmp, where others cannot move our
entries.  The path is resolved once and only the resolved path is used.

What is published is never readable by more users than its sources
(not_wider_mode): 0644 for an export of world-readable dumps, 0600 (and a
0700 folder) for Ganeti's own, which are private.
"""

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ganeti import errors, runtime

from ganeti_ovf.errors import PublishError

FILE_MODE = 0o644  # what a result's files get from sources anybody may read
STAGING_PREFIX = ".gnt-ovf-staging-"
LOCK_PREFIX = ".gnt-ovf-lock-"
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def rename_noreplace(source: str, target: str) -> None:
    """Rename `source` to `target`, failing if `target` exists."""
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD,
                            os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise PublishError("%s: cannot put in place: %s"
                               % (target, os.strerror(err)))
    # Filesystems without RENAME_NOREPLACE: the caller holds the name lock,
    # so checking first is race-free among gnt-ovf runs.
    if os.path.lexists(target):
        raise PublishError("%s: cannot put in place: %s"
                           % (target, os.strerror(errno.EEXIST)))
    os.rename(source, target)


def _trusted_ids() -> tuple:
    """(uids, gids) that may own the output directory's path: root, the user
    running gnt-ovf, and Ganeti's own daemon users and groups (they own
    /var/lib/ganeti; whoever controls them controls the cluster already)."""
    uids, gids = {0, os.geteuid()}, {0}
    try:
        ents = runtime.GetEnts()
    except errors.GenericError:  # Ganeti's users are not set up here
        return uids, gids
    for name, value in vars(ents).items():
        if name.endswith("_uid"):
            uids.add(value)
        elif name.endswith("_gid") and name != "admin_gid":
            gids.add(value)
    return uids, gids


def _unsafe_directory(info: os.stat_result, trusted: tuple) -> str:
    """Why another user could change the entries of a directory ("" if
    nobody untrusted can)."""
    uids, gids = trusted
    if info.st_uid not in uids:
        return "belongs to uid %d" % info.st_uid
    sticky = bool(info.st_mode & stat.S_ISVTX)
    if info.st_mode & stat.S_IWOTH and not sticky:
        return "is writable by every user"
    if info.st_mode & stat.S_IWGRP and info.st_gid not in gids and not sticky:
        return "is writable by group %d" % info.st_gid
    return ""


def output_directory(path: str) -> str:
    """The output directory `path`, resolved, once checked that no other user
    can change it or a directory above it; PublishError naming the culprit.
    A missing tail is fine: it is created later, by root, private."""
    resolved = os.path.realpath(path)
    trusted = _trusted_ids()
    current = "/"
    for part in [""] + [p for p in resolved.split("/") if p]:
        current = os.path.join(current, part) if part else "/"
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            break
        except OSError as err:
            raise PublishError("%s: cannot check output directory: %s"
                               % (current, err.strerror))
        if not stat.S_ISDIR(info.st_mode):
            raise PublishError("%s: the output directory is not a directory" % current)
        problem = _unsafe_directory(info, trusted)
        if problem:
            raise PublishError("%s: refused as (part of) the output directory: it %s,"
                               " who could redirect what gnt-ovf writes there"
                               % (current, problem))
    return resolved


def not_wider_mode(sources: Iterable[os.stat_result], gid: int) -> int:
    """The mode of a result made of `sources` (an export's disk dumps), in a
    file of group `gid`: FILE_MODE without the read permissions some source
    does not grant.  The group may read only if every source is readable by
    that same group, others only if every source is readable by others; so
    an instance's private (0600) disks never become a world-readable OVA."""
    mode = FILE_MODE
    for info in sources:
        if not info.st_mode & stat.S_IRGRP or info.st_gid != gid:
            mode &= ~stat.S_IRWXG
        if not info.st_mode & stat.S_IROTH:
            mode &= ~stat.S_IRWXO
    return mode


def directory_mode(file_mode: int) -> int:
    """A directory's mode for files of `file_mode`: searchable by whom may
    read them (0644: 0755, 0640: 0750, 0600: 0700)."""
    readers = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    return file_mode | (file_mode & readers) >> 2  # r to x: 4 to 1


def clean_stale_staging(output_dir: str) -> list[str]:
    """Remove staging directories of runs that died; return their names."""
    return _remove_abandoned(output_dir, STAGING_PREFIX)


def _remove_abandoned(parent: str, prefix: str) -> list[str]:
    """Remove the directories `prefix`* in `parent` that are ours (owned by
    this user) and whose flock is free: their run died.  Return their names."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                continue  # another user's: not ours to judge
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it
            if _same_directory(path, fd):  # the name still leads to what was judged
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        finally:
            os.close(fd)
    return removed


def _same_directory(path: str, fd: int) -> bool:
    """Whether `path` (not followed) is the directory open as `fd`."""
    try:
        named, opened = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISDIR(named.st_mode) and \
        (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


@contextmanager
def name_lock(output_dir: str, name: str) -> Iterator[None]:
    """Hold the lock for publishing `name` in `output_dir`."""
    path = os.path.join(output_dir, LOCK_PREFIX + name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise PublishError("%s: cannot create lock: %s" % (path, err.strerror))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PublishError("%s: another gnt-ovf run is writing %s in %s"
                               % (path, name, output_dir))
        try:
            yield
        finally:
            # Tidy up, after a failure too; a racing run that opened the old
            # file still cannot overwrite anything, since publishing never
            # replaces silently.
            os.unlink(path)
    finally:
        os.close(fd)


class Staging:
    """A private staging directory that becomes `name` in `output_dir`.

    Use as a context manager: anything not published is removed on exit, on
    success or failure alike.
    """

    def __init__(self, output_dir: str, name: str) -> None:
        self.output_dir = output_dir
        self.name = name
        self.target = os.path.join(output_dir, name)
        self.path = ""
        self._fd = -1
        self._published = False

    def __enter__(self) -> "Staging":
        # makedirs gives missing parents 0o777 less the umask: with a lax
        # umask, directories other users could write (see output_directory).
        old_umask = os.umask(0o022)
        try:
            os.makedirs(self.output_dir, mode=0o755, exist_ok=True)
        except OSError as err:
            raise PublishError("%s: cannot create output directory: %s"
                               % (self.output_dir, err.strerror))
        finally:
            os.umask(old_umask)
        try:  # mode 0700, whatever the umask
            self.path = tempfile.mkdtemp(prefix=STAGING_PREFIX + _safe(self.name) + ".",
                                         dir=self.output_dir)
        except OSError as err:
            raise PublishError("%s: cannot create staging directory: %s"
                               % (self.output_dir, err.strerror))
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def new_file_gid(self) -> int:
        """The group a file created in the staging directory gets."""
        info = os.fstat(self._fd)
        return info.st_gid if info.st_mode & stat.S_ISGID else os.getegid()

    def file(self, name: str) -> str:
        """The path of `name` inside the staging directory."""
        return os.path.join(self.path, name)

    def scratch(self) -> str:
        """A private directory for intermediate files, never published."""
        path = os.path.join(self.path, ".scratch")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def publish_directory(self, replace: bool = False, mode: int = FILE_MODE) -> str:
        """Publish the staging directory itself as `target`, searchable by
        whom its files' `mode` lets read them."""
        shutil.rmtree(os.path.join(self.path, ".scratch"), ignore_errors=True)
        self._fsync_tree(self.path)
        os.chmod(self.path, directory_mode(mode))
        old = self._move_aside(replace)
        rename_noreplace(self.path, self.target)
        self._published = True
        _remove(old)
        _fsync_dir(self.output_dir)
        return self.target

    def publish_file(self, name: str, replace: bool = False, mode: int = FILE_MODE) -> str:
        """Publish one file of the staging directory as `target`, with `mode`."""
        source = self.file(name)
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(source, mode)
        old = self._move_aside(replace)
        rename_noreplace(source, self.target)
        _remove(old)
        _fsync_dir(self.output_dir)
        return self.target

    def _move_aside(self, replace: bool) -> str:
        if not os.path.lexists(self.target):
            return ""
        if not replace:
            raise PublishError("%s already exists (use --force to replace it)" % self.target)
        # The old result is renamed to a staging name, so a crash between the
        # two renames leaves it where the next run cleans up.
        aside = tempfile.mktemp(prefix=STAGING_PREFIX + "replaced.", dir=self.output_dir)
        os.rename(self.target, aside)
        return aside

    @staticmethod
    def _fsync_tree(path: str) -> None:
        for root, _dirs, files in os.walk(path):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _fsync_dir(root)

    def __exit__(self, *exc_info) -> None:
        try:
            if not self._published:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


# Where scratch directories go without an output directory to hold them
# (info, the direct import), unless $TMPDIR names an absolute path: the
# administrator's choice of a filesystem with room.
SCRATCH_PARENT = "/var/tmp"
SCRATCH_PREFIX = "gnt-ovf-scratch-"
SCRATCH_ATTEMPTS = 5


def scratch_parent() -> str:
    """$TMPDIR when it is an absolute path, else SCRATCH_PARENT."""
    given = os.environ.get("TMPDIR", "")
    return given if os.path.isabs(given) else SCRATCH_PARENT


@contextmanager
def scratch_dir() -> Iterator[str]:
    """A private temporary directory (mode 0700, as mkdtemp always makes
    it) under scratch_parent(), removed afterwards.

    It is flock()ed while in use, like a staging directory: a run killed
    with SIGKILL cannot remove it, so the next one does (those of this user
    whose lock is free)."""
    parent = scratch_parent()
    path, fd = _locked_scratch(parent)
    try:
        _remove_abandoned(parent, SCRATCH_PREFIX)
        yield path
    finally:
        if _same_directory(path, fd):
            shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def _locked_scratch(parent: str) -> tuple[str, int]:
    """A new scratch directory in `parent`, flock()ed: (path, descriptor).

    Between mkdtemp and flock another run may take it for abandoned and
    remove it; then its name is free for anybody to take in a sticky
    directory, so it is not used: the lock must hold the directory that
    the name still leads to, or a new one is made."""
    for _ in range(SCRATCH_ATTEMPTS):
        try:
            path = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=parent)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as err:
            raise PublishError("%s: cannot create a scratch directory: %s"
                               % (parent, err.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another run holds it, about to remove it
            continue
        if _same_directory(path, fd):
            return path, fd
        os.close(fd)
    raise PublishError("%s: cannot create a scratch directory: other runs removed"
                       " %d in a row" % (parent, SCRATCH_ATTEMPTS))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Remove what `path` names, if anything ("" names nothing)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64]
