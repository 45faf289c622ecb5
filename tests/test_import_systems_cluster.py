"""A whole vApp into the real cluster: `gnt-ovf import --system all
--submit-import` makes one instance per virtual system, through the same
import job as a single system.  Disks are compared by sha256."""

import os

import realworld
from nscluster import EXPORT_DIR, NODE
from packaging import sha256_file

NAMES = ("vappweb.example.com", "vappdb.example.com")


def test_system_all_submits_one_import_per_system(ganeti_cluster):
    cluster = ganeti_cluster
    workdir = cluster.host_path("/srv/ganeti") + "/vapp"
    package, sources = realworld.package(workdir, realworld.vapp(names=NAMES),
                                         realworld.vapp_disks(), name="shop", ova=True)
    try:
        result = cluster.run(
            ["/usr/bin/python3", "-m", "ganeti_ovf", "import", "--system", "all",
             "--disk-template", "file", "--no-nics",
             "--submit-import", "-n", NODE, "--no-name-check", "--no-ip-check",
             "--ignore-ipolicy", cluster.inner_path(package)],
            checkout_on_path=True)
        for name, (system_id, _, href, size) in zip(NAMES, realworld.VAPP_SYSTEMS,
                                                   strict=True):
            assert "Instance %s written to %s/%s" % (name, EXPORT_DIR, name) in result.stdout
            assert "Instance %s imported" % name in result.stdout
            info = cluster.instance_info(name)
            assert info["disk_template"] == "file"
            assert info["be/maxmem"] == (512 if system_id == "web" else 1024)
            (disk,) = cluster.disk_paths(name)
            assert os.path.getsize(disk) == size
            assert sha256_file(disk) == sha256_file(sources[href])
    finally:
        for name in NAMES:
            cluster.run(["gnt-instance", "remove", "-f", name], check=False)
            cluster.run(["gnt-backup", "remove", name], check=False)
