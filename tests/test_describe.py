"""gnt-ovf info for people (describe.to_text): sizes as people read them,
"unknown" for what the package does not say, a missing disk file flagged."""

import json
import os

from packaging import MIB, build_package, run_gnt_ovf

from ganeti_ovf import describe
from ganeti_ovf.describe import human_size
from ganeti_ovf.model import GanetiSettings, VirtualSystem


def test_human_sizes():
    assert human_size(4 * 1024 ** 3) == "4 GiB"
    assert human_size(1536 * 1024 ** 3) == "1.5 TiB"
    assert human_size(512 * MIB) == "512 MiB"
    assert human_size(1000 * 1000 * 1000) == "953.67 MiB"
    assert human_size(700) == "700 bytes"


def test_info_text_for_people(tmp_path):
    workdir = str(tmp_path / "pkg")
    package, _raws = build_package(workdir, disks=(("raw", 64 * MIB), ("raw", 2 * MIB)))
    os.unlink(os.path.join(workdir, "appliance-disk1.img"))
    text = run_gnt_ovf("info", package, check=True).stdout
    assert "None" not in text
    assert "  vCPUs: 2, memory: 512 MiB" in text
    assert "  disk/0: vmdisk0, 64 MiB (appliance-disk0.img)" in text
    assert "  disk/1: vmdisk1, 2 MiB (appliance-disk1.img, MISSING from the package)" \
        in text
    doc = json.loads(run_gnt_ovf("info", "--output=json", package, check=True).stdout)
    assert [disk["present"] for disk in doc["systems"][0]["disks"]] == [True, False]


def test_info_names_the_parameters_import_drops():
    # Screened as import screens them: lxc's allow-list has num_ttys only.
    system = VirtualSystem(system_id="vm", name="vm", ganeti=GanetiSettings(
        hypervisor="lxc", hypervisor_params=(("extra_config", "lxc.hook.mount = /x"),
                                             ("num_ttys", "2")),
        os_params=(("image", "/etc/shadow"), ("dhcp", "yes"))))
    assert describe._system(system, None)["dropped_parameters"] == [
        "hypervisor:extra_config", "os:image"]
