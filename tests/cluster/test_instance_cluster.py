"""The direct import (ganeti_ovf/cluster/instance.py) on the real cluster.

`gnt-ovf import --submit-import` creates the instance through Ganeti and
writes each package disk straight into the instance's disk.  The disks are
read back through the paths `gnt-instance activate-disks` prints and compared
with the source by sha256; parameters, NICs, OS and tags with what was
planned.  Failures (a wrong digest, a disk that cannot be converted, a run
killed with SIGKILL) must leave no instance behind, or, after SIGKILL, one
marked as interrupted that the next run handles; nothing is ever started.
"""

import glob
import hashlib
import os
import signal
import time

import pytest
from nscluster import FILE_STORAGE_DIR, NODE, SHARED_FILE_STORAGE_DIR
from packaging import MIB, build_package, sha256_file

from ganeti_ovf import publish

MARKER = "ganeti-ovf:importing"
DIRECT_OPTS = ["--submit-import", "--no-name-check", "--no-ip-check", "--ignore-ipolicy"]
STORAGE = {"file": FILE_STORAGE_DIR, "sharedfile": SHARED_FILE_STORAGE_DIR}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gnt_ovf(cluster, *args, check=True):
    return cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", *args],
                       checkout_on_path=True, check=check, cwd=ROOT)


def zeros_digest(size):
    digest = hashlib.sha256()
    block = bytes(MIB)
    for _ in range(size // MIB):
        digest.update(block)
    return digest.hexdigest()


def activated_disks(cluster, name):
    """Host paths of the disks, as `gnt-instance activate-disks` prints them."""
    out = cluster.run(["gnt-instance", "activate-disks", name]).stdout
    paths = [line.split(":", 2)[2] for line in out.splitlines() if line.count(":") >= 2]
    cluster.run(["gnt-instance", "deactivate-disks", name])
    return [cluster.host_path(path) for path in paths]


def state(cluster, name):
    out = cluster.run(["gnt-instance", "list", "--no-headers", "--separator=|", "-o",
                       "admin_state,oper_state,tags", name], check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def instances(cluster):
    return cluster.run(["gnt-instance", "list", "--no-headers", "-o", "name"]).stdout.split()


def check_instance(cluster, name, raws, blank, template):
    info = cluster.instance_info(name)
    assert info["disk_template"] == template
    assert info["os"] == "noop"
    assert info["be/vcpus"] == 2 and info["be/maxmem"] == 512
    assert info["nic.macs"] == ["aa:00:00:00:00:01"]  # the package's MAC kept
    assert info["tags"] == ["appliance"]  # as planned, the marker gone
    assert state(cluster, name).startswith("down|N|")  # never started
    disks = activated_disks(cluster, name)
    assert len(disks) == len(raws) + len(blank)
    for disk, raw in zip(disks, raws, strict=False):
        assert sha256_file(disk, os.path.getsize(raw)) == sha256_file(raw)
        assert os.path.getsize(disk) == os.path.getsize(raw)
    for disk, size in zip(disks[len(raws):], blank, strict=True):
        assert sha256_file(disk) == zeros_digest(size)
    if template in STORAGE:
        assert disks == cluster.disk_paths(name, STORAGE[template])


@pytest.mark.parametrize("template, placement", [("file", ()),
                                                 ("sharedfile", ("-n", NODE))])
def test_ova_becomes_an_instance(ganeti_cluster, template, placement):
    cluster = ganeti_cluster
    name = "direct-%s.example.com" % template
    workdir = cluster.host_path("/srv/ganeti") + "/pkg-direct-" + template
    package, raws = build_package(workdir, disks=(("vmdk", 24 * MIB), ("vmdk", 8 * MIB)),
                                  ova=True, system_name=name, blank=(4 * MIB,))
    result = gnt_ovf(cluster, "import", *DIRECT_OPTS, *placement, "--disk-template",
                     template, "--tags", "appliance", "--net", "0:ip=192.0.2.90",
                     cluster.inner_path(package))
    try:
        line = result.stdout.strip()
        assert line.startswith("Instance %s imported on %s in " % (name, NODE)), line
        assert line.endswith(" s (stopped)")
        assert "\r" not in result.stderr  # no progress line without a terminal
        check_instance(cluster, name, raws, (4 * MIB,), template)
        exports = cluster.host_path("/var/lib/ganeti/export")
        assert not os.path.exists(os.path.join(exports, name))  # no export directory
    finally:
        cluster.remove_instance(name)


def test_gzip_folder_becomes_an_instance_and_starts(ganeti_cluster):
    cluster = ganeti_cluster
    name = "direct-gzip.example.com"
    workdir = cluster.host_path("/srv/ganeti") + "/pkg-direct-gzip"
    package, raws = build_package(workdir, disks=(("qcow2", 16 * MIB), ("raw", 8 * MIB)),
                                  gzip_disks=True, system_name=name)
    gnt_ovf(cluster, "import", *DIRECT_OPTS, "--disk-template", "file", "--tags",
            "appliance", "--net", "0:ip=192.0.2.91", cluster.inner_path(package))
    try:
        check_instance(cluster, name, raws, (), "file")
        gnt_ovf(cluster, "import", *DIRECT_OPTS, "--start", "--name",
                "direct-gzip2.example.com", "--net", "0:ip=192.0.2.92,mac=generate",
                cluster.inner_path(package))
        assert state(cluster, "direct-gzip2.example.com").startswith("up|Y|")
    finally:
        cluster.remove_instance(name)
        cluster.run(["gnt-instance", "remove", "-f", "direct-gzip2.example.com"],
                    check=False)


def _package(cluster, suffix, **kwargs):
    """(instance name, work directory, package, raw sources) for one test."""
    name = "direct-%s.example.com" % suffix
    workdir = cluster.host_path("/srv/ganeti") + "/pkg-direct-" + suffix
    package, raws = build_package(workdir, system_name=name, **kwargs)
    return name, workdir, package, raws


def _assert_failed_cleanly(cluster, result, name, rule):
    assert result.returncode != 0
    failure = [line for line in result.stderr.splitlines() if line.startswith("Failure:")]
    assert len(failure) == 1 and result.stderr.splitlines()[-1] == failure[0], result.stderr
    assert rule in failure[0]
    assert failure[0].endswith("instance %s removed" % name)
    assert name not in instances(cluster)
    assert not os.path.exists(cluster.host_path("%s/%s" % (FILE_STORAGE_DIR, name)))


def test_wrong_digest_removes_the_instance(ganeti_cluster):
    cluster = ganeti_cluster
    name, workdir, package, _raws = _package(cluster, "baddigest",
                                             disks=(("vmdk", 8 * MIB),))
    manifest = os.path.join(workdir, "appliance.mf")
    with open(manifest) as handle:
        lines = handle.readlines()
    lines = [line[:-2] + ("0" if line[-2] != "0" else "1") + "\n"
             if "disk0" in line else line for line in lines]
    with open(manifest, "w") as handle:
        handle.writelines(lines)
    result = gnt_ovf(cluster, "import", *DIRECT_OPTS, "--disk-template", "file",
                     "--net", "0:ip=192.0.2.93", cluster.inner_path(package), check=False)
    _assert_failed_cleanly(cluster, result, name, "appliance-disk0.vmdk")


def test_disk_that_fails_to_convert_removes_the_instance(ganeti_cluster):
    cluster = ganeti_cluster
    name, workdir, package, _raws = _package(cluster, "badgrain",
                                             disks=(("vmdk", 8 * MIB),), manifest=None)
    vmdk = os.path.join(workdir, "appliance-disk0.vmdk")
    with open(vmdk, "r+b") as handle:
        data = handle.read()
        # The first grain of guest offset 0: a sector-aligned marker (LBA 0,
        # a size) followed by zlib data; its deflate stream is damaged.
        first = next(pos for pos in range(512, len(data), 512)
                     if data[pos:pos + 8] == bytes(8) and data[pos + 12] == 0x78)
        handle.seek(first + 14)
        handle.write(b"\xff" * 32)
    result = gnt_ovf(cluster, "import", *DIRECT_OPTS, "--disk-template", "file",
                     "--net", "0:ip=192.0.2.94", cluster.inner_path(package), check=False)
    _assert_failed_cleanly(cluster, result, name, "deflate")


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sigkill_leaves_a_marked_instance_the_next_run_handles(ganeti_cluster):
    cluster = ganeti_cluster
    name, workdir, package, raws = _package(cluster, "killed", disks=(("qcow2", 8 * MIB),))
    # A disk big enough to be killed while it is written: 512 MiB of data.
    big = os.path.join(workdir, "big.raw")
    with open(big, "wb") as handle:
        for index in range(512):
            handle.write(hashlib.sha512(b"%d" % index).digest() * (MIB // 64))
    killed = os.path.join(workdir, "killed")
    os.makedirs(killed)
    killed_package, _ = build_package(killed, disks=(("raw", 512 * MIB),),
                                      system_name=name)
    os.replace(big, os.path.join(killed, "appliance-disk0.img"))
    with open(os.path.join(killed, "appliance.mf"), "w") as handle:
        for item in ("appliance.ovf", "appliance-disk0.img"):
            handle.write("SHA256(%s)= %s\n" % (item, sha256_file(os.path.join(killed, item))))
    log = cluster.inner_path(os.path.join(workdir, "run.log"))
    scratch_before = set(glob.glob("/var/tmp/%s*" % publish.SCRATCH_PREFIX))
    started = cluster.run(
        "cd %s && PYTHONPATH=%s nohup /usr/bin/python3 -m ganeti_ovf import %s"
        " --disk-template file --net 0:ip=192.0.2.95 %s >%s 2>&1 </dev/null & echo $!"
        % (ROOT, ROOT, " ".join(DIRECT_OPTS), cluster.inner_path(killed_package), log))
    pid = started.stdout.strip()
    disk_dir = cluster.host_path("%s/%s" % (FILE_STORAGE_DIR, name))

    def writing():
        try:
            return any(os.stat(os.path.join(disk_dir, entry)).st_blocks
                       for entry in os.listdir(disk_dir))
        except FileNotFoundError:
            return False
    _wait_for(writing)
    cluster.run(["kill", "-%d" % signal.SIGKILL, pid])
    # Its scratch directory (the cluster shares the host's /var/tmp) stays:
    # nothing of the disk is in it (staged copies have no name).
    (left,) = set(glob.glob("/var/tmp/%s*" % publish.SCRATCH_PREFIX)) - scratch_before
    assert all(name.startswith(".qemu-img-") for name in os.listdir(left)), os.listdir(left)

    assert MARKER in state(cluster, name)
    assert state(cluster, name).startswith("down|N|")
    listing = gnt_ovf(cluster, "status", name).stdout
    assert "interrupted" in listing and "gnt-instance remove %s" % name in listing
    again = gnt_ovf(cluster, "import", *DIRECT_OPTS, "--disk-template", "file",
                    "--net", "0:ip=192.0.2.95", cluster.inner_path(package), check=False)
    assert again.returncode != 0
    assert ("instance %s is left over from an interrupted import (tag %s): remove it with"
            " gnt-instance remove %s, or import again with --force"
            % (name, MARKER, name)) in again.stderr
    assert MARKER in state(cluster, name)
    try:
        gnt_ovf(cluster, "import", *DIRECT_OPTS, "--force", "--tags", "appliance",
                "--disk-template", "file", "--net", "0:ip=192.0.2.95",
                cluster.inner_path(package))
        info = cluster.instance_info(name)
        assert info["tags"] == ["appliance"]
        (disk,) = activated_disks(cluster, name)
        assert sha256_file(disk, os.path.getsize(raws[0])) == sha256_file(raws[0])
        assert "interrupted" not in gnt_ovf(cluster, "status", name).stdout
        assert not os.path.exists(left)  # removed by the next run that made one
    finally:
        cluster.run(["gnt-instance", "remove", "-f", name], check=False)


def test_direct_options_refused_before_anything(ganeti_cluster):
    cluster = ganeti_cluster
    workdir = cluster.host_path("/srv/ganeti") + "/pkg-direct-refused"
    package, _raws = build_package(workdir, disks=(("vmdk", 8 * MIB),),
                                   system_name="direct-refused.example.com")
    result = gnt_ovf(cluster, "import", *DIRECT_OPTS, "--output-dir", "/var/tmp",
                     cluster.inner_path(package), check=False)
    assert "Failure: --output-dir applies only with --via-export" in result.stderr
    result = gnt_ovf(cluster, "import", "--start", cluster.inner_path(package), check=False)
    assert "Failure: --start applies only with --submit-import" in result.stderr
    result = gnt_ovf(cluster, "import", *DIRECT_OPTS, "-n", "node9.example.com",
                     cluster.inner_path(package), check=False)
    assert "node 'node9.example.com' is not known to the cluster" in result.stderr
    assert "direct-refused.example.com" not in instances(cluster)
