"""A foreign appliance through gnt-ovf import and a real `gnt-backup import`.

The package is built at test time (streamOptimized VMDK in an OVA, as vSphere
writes it), converted by gnt-ovf inside the cluster's namespaces into the
cluster's export directory, and imported by Ganeti with nothing but what
config.ini says: NIC mode and link left to the cluster ("none"), and the
noop OS, by default (Ganeti 3.0 copies no disk data for an instance without
an OS) or named.  The new instance's disk must hold the
appliance's bytes.
"""

import os
import shlex

import pytest
from conftest import ROOT
from nscluster import EXPORT_DIR, NODE
from packaging import MIB, build_package, sha256_file


@pytest.mark.parametrize("os_args, suffix", [((), "default"), (("--os-type", "noop"), "noop")])
def test_foreign_ova_imports_into_ganeti(ganeti_cluster, tmp_path, os_args, suffix):
    cluster = ganeti_cluster
    name = "appliance-%s.example.com" % suffix
    ip = "192.0.2.%d" % (70 if suffix == "default" else 71)
    workdir = cluster.host_path("/srv/ganeti") + "/pkg-" + suffix
    package, raws = build_package(workdir, disks=(("vmdk", 16 * MIB),), ova=True,
                                  system_name=name)
    inner_package = cluster.inner_path(package)
    # Without a template the printed next step names the cluster's default.
    template_args = ("--disk-template", "file") if os_args else ()
    converted = cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "import", *os_args,
                             *template_args, "--net", "0:ip=%s" % ip, inner_package],
                            checkout_on_path=True, cwd=ROOT)
    export_dir = os.path.join(EXPORT_DIR, name)
    next_step = "gnt-backup import -n %s --src-node %s --src-dir %s -t file %s" % (
        NODE, NODE, export_dir, name)
    assert "Import it with: %s\n" % next_step in converted.stdout
    assert os.path.isfile(cluster.host_path(export_dir + "/config.ini"))
    listed = cluster.run(["gnt-backup", "list", "--no-headers"]).stdout
    assert name in listed
    try:
        if os_args:
            cluster.import_instance(name, export_dir, ip=None, disk_template=None)
        else:  # the printed command as it is (the test cluster's policy aside)
            words = shlex.split(next_step)
            cluster.run(words[:2] + ["--no-name-check", "--no-ip-check",
                                     "--ignore-ipolicy"] + words[2:])
        info = cluster.instance_info(name)
        assert info["be/vcpus"] == 2 and info["be/maxmem"] == 512
        assert info["nic.ips"] == [ip]
        assert info["nic.modes"] == ["routed"]  # the cluster's default
        assert info["nic.macs"] == ["aa:00:00:00:00:01"]
        (disk,) = cluster.disk_paths(name)
        assert sha256_file(disk, 16 * MIB) == sha256_file(raws[0])
    finally:
        cluster.run(["gnt-instance", "remove", "-f", name], check=False)
        cluster.run(["gnt-backup", "remove", name], check=False)
