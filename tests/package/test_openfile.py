"""package/openfile.py: a file opened once, only a regular file, never a
link, never blocking on a FIFO; and a change while it is read detected."""

import os
import socket
import stat

import pytest

from ganeti_ovf.disks import qemu, sparse
from ganeti_ovf.package import openfile
from ganeti_ovf.errors import DiskError

RULE = "only a regular file is read (a symlink, FIFO, socket or device is refused)"
NOBODY = 65534


def refusal(path, **kwargs) -> str:
    with pytest.raises(DiskError) as info:
        openfile.open_regular(str(path), "disk dump", error=DiskError, **kwargs)
    return str(info.value)


def test_regular_file_opened_with_its_identity(tmp_path):
    path = tmp_path / "disk0"
    path.write_bytes(b"x" * 1000)
    with openfile.open_regular(str(path), "disk dump", error=DiskError) as dump:
        info = os.stat(str(path))
        assert dump.size == 1000 and dump.path == str(path)
        assert dump.identity == openfile.Identity(info.st_dev, info.st_ino, 1000,
                                                  info.st_mtime_ns, info.st_ctime_ns)
        assert os.pread(dump.fd, 4, 0) == b"xxxx"
        # Blocking reads again (O_NONBLOCK was for the open only), not inherited.
        flags = os.get_blocking(dump.fd), os.get_inheritable(dump.fd)
        assert flags == (True, False)
        assert dump.proc_path == "/proc/self/fd/%d" % dump.fd
        dump.check_unchanged()
        fd = dump.fd
    assert dump.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    dump.close()  # twice: nothing more to close
    with pytest.raises(DiskError) as info:
        dump.check_unchanged()
    assert str(info.value) == "%s: cannot check disk dump: Bad file descriptor" % path


def test_symlink_refused_and_not_followed(tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(str(tmp_path / "secret"), str(tmp_path / "disk0"))
    assert refusal(tmp_path / "disk0") == (
        "%s: disk dump is a symbolic link: refused, %s" % (tmp_path / "disk0", RULE))


def test_fifo_refused_without_blocking(tmp_path):
    # Without O_NONBLOCK, opening a FIFO waits for a writer: the test would
    # hang here rather than fail.
    os.mkfifo(str(tmp_path / "disk0"))
    assert refusal(tmp_path / "disk0") == (
        "%s: disk dump is a FIFO: refused, %s" % (tmp_path / "disk0", RULE))


def test_socket_device_and_directory_refused(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "sock"))
        # A socket cannot be opened at all (ENXIO): refused at open.
        assert refusal(tmp_path / "sock").startswith(
            "%s: cannot open disk dump: " % (tmp_path / "sock"))
    finally:
        server.close()
    assert refusal("/dev/null").endswith("is a character device: refused, " + RULE)
    assert refusal(tmp_path).endswith("is a directory: refused, " + RULE)
    os.mknod(str(tmp_path / "blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 250))
    assert refusal(tmp_path / "blk") in (
        "%s: disk dump is a block device: refused, %s" % (tmp_path / "blk", RULE),
        "%s: cannot open disk dump: No such device or address" % (tmp_path / "blk"))
    assert refusal(tmp_path / "missing") == (
        "%s: cannot open disk dump: No such file or directory" % (tmp_path / "missing"))


def test_opened_relative_to_the_directory_descriptor(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "disk0").write_bytes(b"from a")
    directory = openfile.open_directory(str(tmp_path / "a"), DiskError)
    try:
        os.rename(str(tmp_path / "a"), str(tmp_path / "b"))  # the path moves away
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "disk0").write_bytes(b"elsewhere")
        with openfile.open_regular(str(tmp_path / "a" / "disk0"), "disk dump", error=DiskError,
                                   dir_fd=directory) as dump:
            assert os.pread(dump.fd, 100, 0) == b"from a"
    finally:
        os.close(directory)
    with pytest.raises(DiskError, match="missing: cannot open directory"):
        openfile.open_directory(str(tmp_path / "missing"), DiskError)


@pytest.mark.parametrize("change, moved", [
    (lambda path: os.truncate(path, 10), "size, mtime_ns"),
    (lambda path: os.utime(path, ns=(0, 0)), "mtime_ns"),
])
def test_change_in_place_detected(tmp_path, change, moved):
    path = str(tmp_path / "disk0")
    with open(path, "wb") as handle:
        handle.write(b"x" * 1000)
    with openfile.open_regular(path, "disk dump", error=DiskError) as dump:
        change(path)
        with pytest.raises(DiskError) as info:
            dump.check_unchanged()
    assert str(info.value) == (
        "%s: disk dump changed while it was read (%s moved); nothing read from"
        " it is used" % (path, moved))


def test_rewrite_with_mtime_put_back_detected_by_ctime(tmp_path):
    """An owner can put the mtime back, never the ctime."""
    path = str(tmp_path / "disk0")
    with open(path, "wb") as handle:
        handle.write(b"x" * 1000)
    os.chown(path, NOBODY, NOBODY)
    with openfile.open_regular(path, "disk dump", error=DiskError) as dump:
        before = os.stat(path)
        with open(path, "r+b") as handle:
            handle.write(b"y")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        with pytest.raises(DiskError, match=r"changed while it was read \(ctime_ns moved\)"):
            dump.check_unchanged()


@pytest.mark.parametrize("owner, mode, refused", [
    (0, 0o600, False),  # root's own file: only root writes it (Ganeti's dumps)
    (0, 0o755, False),
    (0, 0o620, True),  # a group may write it
    (0, 0o602, True),
    (NOBODY, 0o600, True),  # its owner may rewrite it and put the mtime back
])
def test_ctime_counts_unless_only_root_can_write(tmp_path, owner, mode, refused):
    """Another link removed (the hook's snapshot when Ganeti replaces the
    export) changes only the ctime: accepted for a file only root writes."""
    path = str(tmp_path / "disk0")
    with open(path, "wb") as handle:
        handle.write(b"x" * 1000)
    os.chown(path, owner, 0)
    os.chmod(path, mode)
    os.link(path, str(tmp_path / "link"))
    with openfile.open_regular(path, "disk dump", error=DiskError) as dump:
        os.unlink(str(tmp_path / "link"))
        if refused:
            with pytest.raises(DiskError, match=r"\(ctime_ns moved\)"):
                dump.check_unchanged()
        else:
            dump.check_unchanged()


def test_readers_use_the_descriptor_not_the_path(tmp_path):
    """sparse.copy and qemu-img (through /proc/self/fd/N) read the file that
    was opened, after its name was given to a link to another file."""
    path = str(tmp_path / "disk0")
    with open(path, "wb") as handle:
        handle.write(b"dump" * 256 * 1024)
    with open(str(tmp_path / "secret"), "wb") as handle:
        handle.write(b"SECRET!!" * 128 * 1024)
    with openfile.open_regular(path, "disk dump", error=DiskError) as dump:
        os.unlink(path)
        os.symlink(str(tmp_path / "secret"), path)

        class Collect:
            data = bytearray()

            def write(self, data):
                self.data += data
                return len(data)

            def skip(self, count):
                self.data += bytes(count)

        out = Collect()
        assert sparse.copy(dump, out) == 1024 * 1024
        qemu.convert_from_raw(dump, "qcow2", str(tmp_path / "out.qcow2"))
        assert dump.fd >= 0  # left open for the caller
    assert bytes(out.data) == b"dump" * 256 * 1024
    assert qemu.compare(str(tmp_path / "out.qcow2"), "qcow2", str(tmp_path / "secret"),
                        "raw") is False
    os.unlink(path)
    with open(path, "wb") as handle:
        handle.write(b"dump" * 256 * 1024)
    assert qemu.compare(str(tmp_path / "out.qcow2"), "qcow2", path, "raw") is True


def test_opened_takes_an_open_file_as_it_is_and_opens_a_path_once(tmp_path):
    path = tmp_path / "disk0"
    path.write_bytes(b"y" * 10)
    with openfile.open_regular(str(path), "disk dump", error=DiskError) as dump:
        with openfile.opened(dump, "disk dump", DiskError) as same:
            assert same is dump
        assert dump.fd >= 0  # left open: its owner closes it
    with openfile.opened(str(path), "disk dump", DiskError) as fresh:
        assert os.pread(fresh.fd, 10, 0) == b"y" * 10
    assert fresh.fd == -1  # closed on leaving
    os.symlink(str(path), str(tmp_path / "link"))
    with pytest.raises(DiskError, match="link: disk dump is a symbolic link: refused"):
        openfile.opened(str(tmp_path / "link"), "disk dump", DiskError)
