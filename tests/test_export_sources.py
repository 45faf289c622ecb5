"""gnt-ovf export against a hostile or changing source (issue 13, export
side): a dump swapped for a link after it was checked, a FIFO dump, a dump
rewritten while it is read, and the modes of what is published.

The races are made deterministic with a hook point between the check and
the use: exporter._disk_producer is called after the dumps were checked
(opened) and before any byte of that disk is read, and the producer's first
write comes after the read began.
"""

import hashlib
import os
import subprocess
import tarfile
import threading

import pytest
from packaging import MIB

from ganeti_ovf import exporter
from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf.cluster.ganeti_export import ExportedDisk
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import VirtualSystem

NOBODY = 65534  # the unprivileged attacker of the issue
DUMP = b"guest disk data " * (MIB // 16)
SECRET = b"ROOT-ONLY SECRET" * (MIB // 16)  # same length: a swap is seamless
RULE = "only a regular file is read (a symlink, FIFO, socket or device is refused)"


@pytest.fixture
def no_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def make_export(directory, dumps=(DUMP,), mode=0o644, owner=0):
    """An export directory with config.ini and one dump per entry of `dumps`;
    returns the dump paths."""
    os.makedirs(str(directory))
    disks, paths = [], []
    for index, data in enumerate(dumps):
        path = os.path.join(str(directory), "disk%d.raw" % index)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, owner, owner)
        os.chmod(path, mode)
        disks.append(ExportedDisk("disk%d.raw" % index, 1))
        paths.append(path)
    system = VirtualSystem(system_id="inst", name="inst", vcpus=1, memory_mib=128)
    with open(os.path.join(str(directory), "config.ini"), "w") as handle:
        handle.write(ganeti_export.build_config(system, disks, "node1", timestamp=1))
    return paths


def secret_file(tmp_path):
    path = str(tmp_path / "secret")
    with open(path, "wb") as handle:
        handle.write(SECRET)
    os.chmod(path, 0o600)
    return path


def run_export(tmp_path, source, **options):
    options.setdefault("manifest_algorithm", None)
    request = exporter.ExportRequest(source=str(source), output_dir=str(tmp_path / "out"),
                                     export_dir="/nonexistent", **options)
    return exporter.export_package(request, lambda _message: None)


def guest_bytes(tmp_path, result, fmt):
    """The first disk's guest data, through qemu-img from whatever it is stored as."""
    stored = os.path.join(result.path, "inst-disk0." + exporter.EXTENSIONS[fmt])
    raw = str(tmp_path / "guest.raw")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", stored, raw], check=True)
    with open(raw, "rb") as handle:
        return handle.read()


def before_disk(monkeypatch, action):
    """Run `action()` when the exporter turns to a disk: after the dumps were
    checked, before their bytes are read."""
    real = exporter._disk_producer

    def producer(*args, **kwargs):
        action()
        return real(*args, **kwargs)
    monkeypatch.setattr(exporter, "_disk_producer", producer)


def during_read(monkeypatch, action):
    """Run `action()` once, at the first bytes a disk producer writes (the
    dump is being read then)."""
    real = exporter._disk_producer

    class Interposed:
        def __init__(self, out):
            self._out, self._done = out, False

        def write(self, data):
            if not self._done:
                self._done = True
                action()
            return self._out.write(data)

        def __getattr__(self, name):
            return getattr(self._out, name)

    def producer(*args, **kwargs):
        produce = real(*args, **kwargs)
        return lambda out: produce(Interposed(out))
    monkeypatch.setattr(exporter, "_disk_producer", producer)


def swap_for_link(path, target):
    link = path + ".link"
    os.symlink(target, link)
    os.rename(link, path)  # atomic: the name now points at `target`


# ------------------------------------------------------------ a swapped dump


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "qcow2"])
def test_dump_swapped_for_a_link_after_the_check_is_not_followed(tmp_path, monkeypatch,
                                                                  fmt):
    """Each stage reads the descriptor checked at open (the raw copy, the
    VMDK writer, qemu-img): the secret never reaches the package."""
    (dump,) = make_export(tmp_path / "export")
    secret = secret_file(tmp_path)
    before_disk(monkeypatch, lambda: swap_for_link(dump, secret))
    result = run_export(tmp_path, tmp_path / "export", disk_format=fmt)
    data = guest_bytes(tmp_path, result, fmt)
    assert b"ROOT-ONLY SECRET" not in data
    assert hashlib.sha256(data).digest() == hashlib.sha256(DUMP).digest()


def test_dump_swapped_by_its_owner_refused(tmp_path, monkeypatch):
    """A dump its (unprivileged) owner swaps after the check: the ctime of
    the file that was read moved, so the export fails and publishes nothing."""
    (dump,) = make_export(tmp_path / "export", owner=NOBODY)
    secret = secret_file(tmp_path)
    before_disk(monkeypatch, lambda: swap_for_link(dump, secret))
    with pytest.raises(DiskError) as info:
        run_export(tmp_path, tmp_path / "export", ova=True)
    assert str(info.value).startswith("%s: disk dump changed while it was read (ctime_ns"
                                      " moved)" % dump)
    assert os.listdir(str(tmp_path / "out")) == []


def test_dump_that_is_a_link_refused(tmp_path):
    (dump,) = make_export(tmp_path / "export")
    swap_for_link(dump, secret_file(tmp_path))
    with pytest.raises(DiskError) as info:
        run_export(tmp_path, tmp_path / "export", ova=True)
    assert str(info.value) == "%s: disk dump is a symbolic link: refused, %s" % (dump, RULE)
    assert not os.path.exists(str(tmp_path / "out"))


def test_export_directory_replaced_after_config_read(tmp_path, monkeypatch):
    """config.ini and the dumps come from one directory descriptor: renaming
    the export directory and putting a link to another in its place while
    the export runs changes nothing read."""
    make_export(tmp_path / "export")
    other = tmp_path / "other"
    make_export(other, dumps=(SECRET,), mode=0o600)
    real = ganeti_export.read_export

    def read_then_swap(*args, **kwargs):
        export = real(*args, **kwargs)
        os.rename(str(tmp_path / "export"), str(tmp_path / "moved"))
        os.symlink(str(other), str(tmp_path / "export"))
        return export
    monkeypatch.setattr(ganeti_export, "read_export", read_then_swap)
    result = run_export(tmp_path, tmp_path / "export", disk_format="raw")
    assert guest_bytes(tmp_path, result, "raw") == DUMP


# ------------------------------------------------------------ a FIFO dump


def test_fifo_dump_refused_without_hanging(tmp_path):
    (dump,) = make_export(tmp_path / "export")
    os.unlink(dump)
    os.mkfifo(dump)
    outcome = {}

    def work():
        try:
            run_export(tmp_path, tmp_path / "export", ova=True)
        except Exception as err:  # noqa: B902 (asserted below)
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(60)  # a safety net only: the refusal is immediate
    if worker.is_alive():
        # Blocked opening the FIFO: a writer releases it, then the test fails.
        os.close(os.open(dump, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(60)
        pytest.fail("the export blocked opening a FIFO dump")
    assert isinstance(outcome.get("error"), DiskError), outcome
    assert str(outcome["error"]) == "%s: disk dump is a FIFO: refused, %s" % (dump, RULE)


# ------------------------------------------------------------ changed while read


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "qcow2"])
def test_dump_rewritten_while_read_refused(tmp_path, monkeypatch, fmt):
    (dump,) = make_export(tmp_path / "export")

    def rewrite():
        with open(dump, "r+b") as handle:
            handle.write(SECRET[:4096])
    during_read(monkeypatch, rewrite)
    with pytest.raises(DiskError) as info:
        run_export(tmp_path, tmp_path / "export", disk_format=fmt)
    assert str(info.value).startswith("%s: disk dump changed while it was read (mtime_ns"
                                      " moved)" % dump)
    assert os.listdir(str(tmp_path / "out")) == []


def test_rewrite_with_mtime_put_back_refused(tmp_path, monkeypatch):
    """The dump's owner rewrites it in place and restores its mtime: the
    ctime, which no owner can set, still gives it away."""
    (dump,) = make_export(tmp_path / "export", owner=NOBODY)
    before = os.stat(dump)

    def rewrite():
        with open(dump, "r+b") as handle:
            handle.write(SECRET[:4096])
        os.utime(dump, ns=(before.st_atime_ns, before.st_mtime_ns))
    during_read(monkeypatch, rewrite)
    with pytest.raises(DiskError, match=r"disk0.raw: disk dump changed while it was read"
                       r" \(ctime_ns moved\)"):
        run_export(tmp_path, tmp_path / "export", ova=True)
    assert os.listdir(str(tmp_path / "out")) == []


def test_dump_changed_after_its_disk_was_written_refused(tmp_path, monkeypatch):
    """Disk 0 is rewritten while disk 1 is read: checked again before publishing."""
    dump0, _dump1 = make_export(tmp_path / "export", dumps=(DUMP, DUMP))
    real = exporter._disk_producer
    calls = []

    def producer(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.truncate(dump0, len(DUMP) // 2)
        return real(*args, **kwargs)
    monkeypatch.setattr(exporter, "_disk_producer", producer)
    with pytest.raises(DiskError, match=r"disk0.raw: disk dump changed while it was read"
                       r" \(size, mtime_ns"):
        run_export(tmp_path, tmp_path / "export")


# ------------------------------------------------------------ published modes


def modes(path):
    found = {}
    for root, _dirs, files in os.walk(path):
        found[os.path.relpath(root, path)] = os.stat(root).st_mode & 0o777
        for name in files:
            found[name] = os.stat(os.path.join(root, name)).st_mode & 0o777
    return found


@pytest.mark.parametrize("dump_modes, expected, folder_mode", [
    ((0o600,), 0o600, 0o700),  # Ganeti's own dumps (umask 077): private
    ((0o644, 0o600), 0o600, 0o700),  # the most private dump decides
    ((0o640,), 0o640, 0o750),  # the dump's group (the same as the output's) may read
    ((0o604,), 0o604, 0o705),
    ((0o644,), 0o644, 0o755),  # world-readable dumps: as before
    ((0o666,), 0o644, 0o755),  # never writable by others, never wider than 0644
])
def test_published_mode_not_wider_than_the_dumps(tmp_path, no_umask, dump_modes, expected,
                                                 folder_mode):
    make_export(tmp_path / "export", dumps=(DUMP,) * len(dump_modes), mode=0o644)
    for index, mode in enumerate(dump_modes):
        os.chmod(str(tmp_path / "export" / ("disk%d.raw" % index)), mode)
    folder = run_export(tmp_path, tmp_path / "export", name="folder",
                        manifest_algorithm="sha256")
    ova = run_export(tmp_path, tmp_path / "export", name="vm", ova=True)
    assert os.stat(ova.path).st_mode & 0o777 == expected
    found = modes(folder.path)
    assert found.pop(".") == folder_mode
    assert set(found.values()) == {expected}, found
    assert sorted(found) == ["folder-disk%d.vmdk" % i for i in range(len(dump_modes))] \
        + ["folder.mf", "folder.ovf"]
    assert (folder.mode, ova.mode) == (expected, expected)  # what the hook publishes
    with tarfile.open(ova.path) as archive:
        assert len(archive.getnames()) == 1 + len(dump_modes)


def test_group_read_kept_only_for_the_outputs_group(tmp_path, no_umask):
    """A dump readable by its group 65534 gives nothing to the output's group."""
    (dump,) = make_export(tmp_path / "export", mode=0o640)
    os.chown(dump, 0, NOBODY)
    run_export(tmp_path, tmp_path / "export", ova=True)
    assert os.stat(str(tmp_path / "out" / "inst.ova")).st_mode & 0o777 == 0o600

