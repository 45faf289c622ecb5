"""Ganeti jobs from gnt-ovf (ganeti_ovf/cluster/jobs.py) on the real cluster.

`gnt-ovf export INSTANCE --node NODE` submits the export job only when no
export is there (or with --refresh), then converts; `gnt-ovf import
--submit-import` converts and submits the import job, waiting for it or,
with --submit, printing its id.  Disks are compared by sha256.
"""

import os

import pytest
from nscluster import NODE
from packaging import MIB, sha256_file

SOURCE = "jobsrc1.example.com"
OUTPUT = "/var/lib/ganeti/ovf-jobs"
JOB_OPTS = ["--no-name-check", "--no-ip-check", "--ignore-ipolicy"]


def gnt_ovf(cluster, *args, check=True):
    return cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", *args],
                       checkout_on_path=True, check=check)


def net(ip):
    # A new MAC: Ganeti would reuse config.ini's, still held by the source.
    return ["--net", "0:mac=generate,mode=routed,link=lo,ip=%s" % ip]


@pytest.fixture(scope="module")
def exported(ganeti_cluster):
    """SOURCE exported with `gnt-ovf export jobsrc1 --node`: (OVA, digest)."""
    cluster = ganeti_cluster
    cluster.add_instance(SOURCE, "192.0.2.80", disk_size="16M")
    cluster.write_disk(SOURCE, 0, {0: b"jobs head" * 100, 15 * MIB: os.urandom(4096)})
    (disk,) = cluster.disk_paths(SOURCE)
    digest = sha256_file(disk)
    config = cluster.host_path("/var/lib/ganeti/export/%s/config.ini" % SOURCE)
    assert not os.path.exists(config)
    # A short instance name and node name, expanded by the cluster.
    result = gnt_ovf(cluster, "export", "jobsrc1", "--node", "node1", "--long-sleep",
                     "--ova", "--output-dir", OUTPUT)
    ova = "%s/%s.ova" % (OUTPUT, SOURCE)
    assert "Package written to %s" % ova in result.stdout
    assert os.path.isfile(config)
    yield ova, digest
    cluster.remove_instance(SOURCE)


def test_export_job_then_convert(ganeti_cluster, exported):
    cluster = ganeti_cluster
    ova, _digest = exported
    config = cluster.host_path("/var/lib/ganeti/export/%s/config.ini" % SOURCE)
    before = os.stat(config).st_ino

    again = gnt_ovf(cluster, "export", SOURCE, "--node", NODE, "-v", "--ova", "--force",
                    "--output-dir", OUTPUT)
    assert "Using the existing export of %s" % SOURCE in again.stderr
    assert os.stat(config).st_ino == before  # no new export job

    gnt_ovf(cluster, "export", SOURCE, "--node", NODE, "--refresh", "--long-sleep",
            "--ova", "--force", "--output-dir", OUTPUT)
    assert os.stat(config).st_ino != before  # Ganeti wrote a new export
    assert os.path.isfile(cluster.host_path(ova))


def test_existing_output_refused_before_the_export_job(ganeti_cluster, exported):
    # A short name: the check runs on the name the cluster expands it to.
    cluster = ganeti_cluster
    ova, _digest = exported
    config = cluster.host_path("/var/lib/ganeti/export/%s/config.ini" % SOURCE)
    before = os.stat(config).st_ino
    result = gnt_ovf(cluster, "export", "jobsrc1", "--node", NODE, "--refresh",
                     "--long-sleep", "--ova", "--output-dir", OUTPUT, check=False)
    assert result.returncode == 1
    assert "Failure: %s already exists (use --force to replace it)" % ova \
        in result.stderr, result.stderr
    assert os.stat(config).st_ino == before  # no export job ran


def test_export_node_must_be_this_node(ganeti_cluster, exported):
    result = gnt_ovf(ganeti_cluster, "export", SOURCE, "--node", "node9.example.com",
                     "--output-dir", OUTPUT, check=False)
    assert result.returncode != 0
    assert "node 'node9.example.com' is not known to the cluster" in result.stderr
    result = gnt_ovf(ganeti_cluster, "export", "nosuch.example.com", "--node", NODE,
                     "--output-dir", OUTPUT, check=False)
    assert "instance 'nosuch.example.com' is not known" in result.stderr


def test_submit_import_waits_for_the_job(ganeti_cluster, exported):
    cluster = ganeti_cluster
    ova, digest = exported
    copy = "jobcopy1.example.com"
    result = gnt_ovf(cluster, "import", "--submit-import", "-n", NODE, "--name", copy,
                     *net("192.0.2.81"), *JOB_OPTS, ova)
    assert "Instance %s imported" % copy in result.stdout
    info = cluster.instance_info(copy)
    assert info["disk_template"] == "file"  # config.ini's, not the cluster default
    assert info["nic.ips"] == ["192.0.2.81"]
    (disk,) = cluster.disk_paths(copy)
    assert sha256_file(disk) == digest
    cluster.remove_instance(copy)


def test_submit_import_with_submit_prints_the_job(ganeti_cluster, exported):
    cluster = ganeti_cluster
    ova, digest = exported
    copy = "jobcopy2.example.com"
    result = gnt_ovf(cluster, "import", "--submit-import", "--submit", "--print-jobid",
                     "-n", NODE, "--name", copy, *net("192.0.2.82"), *JOB_OPTS, ova)
    job_id = result.stdout.splitlines()[1]  # after "Instance ... written to ..."
    assert job_id.isdigit(), result.stdout
    cluster.run(["gnt-job", "watch", job_id])
    status = cluster.run(["gnt-job", "list", "--no-headers", "-o", "status", job_id])
    assert status.stdout.strip() == "success"
    (disk,) = cluster.disk_paths(copy)
    assert sha256_file(disk) == digest
    cluster.remove_instance(copy)


def test_submit_import_refused_before_converting(ganeti_cluster, exported):
    ova, _digest = exported
    result = gnt_ovf(ganeti_cluster, "import", "--submit-import", "-n", NODE,
                     "--output-dir", "/var/lib/ganeti/elsewhere", "--name",
                     "jobcopy3.example.com", ova, check=False)
    assert result.returncode != 0
    assert ("Failure: --submit-import: --output-dir /var/lib/ganeti/elsewhere is outside"
            in result.stderr)
    assert not os.path.exists(ganeti_cluster.host_path("/var/lib/ganeti/elsewhere"))
    result = gnt_ovf(ganeti_cluster, "import", "--submit-import", ova, check=False)
    assert "--submit-import needs --node" in result.stderr
    result = gnt_ovf(ganeti_cluster, "import", "--src-node", NODE, ova, check=False)
    assert "Failure: --src-node applies only with --submit-import" in result.stderr
