"""gnt-ovf import under faults: killed with SIGKILL mid-way, and a full disk.

A killed run must leave nothing that looks like a finished export (only
hidden staging and lock files), and the next run must clean up and succeed.
A full output filesystem (a small tmpfs) must give one clean error line and
leave nothing behind.  Kill points are events seen in the output directory
(staging created, disk file created, disk half written) or short delays; a
run that finishes before its kill point is checked as a success instead.
"""

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from hostile import MIB, NAME, Scene, descriptor, folder, guest_data, ova, plant_secret
from packaging import read_config, run_gnt_ovf, sha256_file

BIG = 256 * MIB
STAGING = ".gnt-ovf-staging-"
LOCK = ".gnt-ovf-lock-"


def big_package(scene: Scene, size: int = BIG, compress: bool = False) -> str:
    """A raw disk of `size` non-zero bytes (nothing to skip as holes)."""
    href = "appliance-disk0.img"
    path = scene.path(href)
    block = guest_data(MIB)
    with open(path, "wb") as handle:
        for index in range(size // MIB):
            handle.write(block[:-8] + index.to_bytes(8, "big"))
    if compress:
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb", compresslevel=1) as dst:
            while True:
                chunk = src.read(8 * MIB)
                if not chunk:
                    break
                dst.write(chunk)
        os.unlink(path)
        href, path = href + ".gz", path + ".gz"
    return folder(scene, descriptor(href, "raw", capacity=size,
                                    compression="gzip" if compress else "identity"),
                  {href: path})


def big_digest(size: int = BIG) -> str:
    digest = hashlib.sha256()
    block = guest_data(MIB)
    for index in range(size // MIB):
        digest.update(block[:-8] + index.to_bytes(8, "big"))
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    scene = plant_secret(str(tmp_path_factory.mktemp("big")))
    return scene, big_package(scene), big_digest()


# ------------------------------------------------------------------ SIGKILL


def staging_dirs(out: str) -> list:
    try:
        return [n for n in os.listdir(out) if n.startswith(STAGING)]
    except OSError:
        return []


def staged_disk(out: str) -> int:
    """Bytes allocated to the disk being written in a staging directory (-1: none)."""
    for name in staging_dirs(out):
        try:
            return os.stat(os.path.join(out, name, "disk0.raw")).st_blocks * 512
        except OSError:
            continue
    return -1


KILL_POINTS = {
    "after_0.2s": lambda out, started: time.monotonic() - started >= 0.2,
    "staging_created": lambda out, started: bool(staging_dirs(out)),
    "disk_created": lambda out, started: staged_disk(out) >= 0,
    "disk_half_written": lambda out, started: staged_disk(out) >= BIG // 2,
    "after_1s": lambda out, started: time.monotonic() - started >= 1.0,
}


def kill_own_children(marker: str) -> None:
    """SIGKILL the processes this test started that outlive gnt-ovf.

    coreutils `timeout` puts qemu-img in a process group of its own, so it
    survives the kill of gnt-ovf's group: found by the test's unique path.
    """
    for _ in range(100):
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    cmdline = handle.read()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(pid))
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_import_leaves_no_export_and_next_run_succeeds(big, tmp_path, point):
    scene, package, digest = big
    out = str(tmp_path / "out")
    process = subprocess.Popen([sys.executable, "-m", "ganeti_ovf", "import",
                                "--output-dir", out, package], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    started = time.monotonic()
    reached = KILL_POINTS[point]
    try:
        while process.poll() is None and not reached(out, started):
            time.sleep(0.002)
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        kill_own_children(out)
    process.stderr.close()
    if finished:
        # The run beat its kill point: then it must have succeeded whole.
        assert process.returncode == 0
    else:
        left = os.listdir(out) if os.path.isdir(out) else []
        if NAME in left:
            # Killed after publishing, while exiting: then the export is whole.
            directory = os.path.join(out, NAME)
            assert sorted(os.listdir(directory)) == ["config.ini", "disk0.raw"]
            assert sha256_file(os.path.join(directory, "disk0.raw")) == digest
        assert all(n == NAME or n.startswith((STAGING, LOCK)) for n in left), left
    again = run_gnt_ovf("import", "--output-dir", out, "--force", package)
    assert again.returncode == 0, again.stderr
    assert os.listdir(out) == [NAME]
    directory = os.path.join(out, NAME)
    assert sorted(os.listdir(directory)) == ["config.ini", "disk0.raw"]
    assert sha256_file(os.path.join(directory, "disk0.raw")) == digest
    assert read_config(directory).get("instance", "disk0_size") == str(BIG // MIB)


# ------------------------------------------------------------------ full disk


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = str(tmp_path / "full")
    os.mkdir(mountpoint)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mountpoint],
                   check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", mountpoint], check=True)


def assert_one_failure(result) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("WARNING: ")]
    assert len(lines) == 1 and lines[0].startswith("Failure: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("layout", ["plain", "gzip_disk", "ova", "gzip_ova"])
def test_full_disk_clean_error_nothing_left(tmp_path, small_fs, layout):
    scene = plant_secret(str(tmp_path / "pkg-root"))
    package = big_package(scene, 64 * MIB, compress=layout == "gzip_disk")
    if layout in ("ova", "gzip_ova"):
        package = ova(scene)
    if layout == "gzip_ova":
        with open(package, "rb") as src, gzip.open(package + ".gz", "wb", 1) as dst:
            shutil.copyfileobj(src, dst)
        package += ".gz"
    result = run_gnt_ovf("import", "--output-dir", small_fs, package)
    line = assert_one_failure(result)
    # Refused up front when the stored bytes already do not fit, else when
    # the conversion meets the full file system; what a gzip file inflates
    # to is bounded by the free space before it is written.
    expected = {"gzip_disk": ("expands beyond the free space of",),
                "gzip_ova": ("bytes (the free space of",)}.get(
                    layout, ("No space left on device", "bytes free"))
    assert any(text in line for text in expected), line
    assert os.listdir(small_fs) == []


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_cleans_up_like_ctrl_c(big, tmp_path, signum):
    scene, package, _digest = big
    out = str(tmp_path / "out")
    process = subprocess.Popen([sys.executable, "-m", "ganeti_ovf", "import",
                                "--output-dir", out, package], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while process.poll() is None and staged_disk(out) < BIG // 4:
            time.sleep(0.002)
        finished = process.poll() is not None
        process.send_signal(signum)
        _out, err = process.communicate(timeout=120)
    finally:
        kill_own_children(out)
    if finished:  # beat the signal: then it must have succeeded whole
        assert process.returncode == 0, err
        return
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "Failure: interrupted by %s; nothing was written" \
        % signum.name, err
    assert os.listdir(out) == []  # no staging directory, no lock, no export
