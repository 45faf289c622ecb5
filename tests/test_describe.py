"""gnt-ovf info for people (describe.to_text): sizes as people read them,
"unknown" for what the package does not say, a missing disk file flagged."""

import gzip
import json
import os
import re

from packaging import MIB, build_package, run_gnt_ovf, run_gnt_ovf_on_small_fs

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


# --- a gzip-compressed OVA: decompressed into $TMPDIR, bounded ---------------


def gzip_ova(tmp_path) -> str:
    package, _raws = build_package(str(tmp_path / "pkg"), disks=(("raw", 4 * MIB),),
                                   ova=True)
    with open(package, "rb") as handle:
        data = gzip.compress(handle.read(), 1)
    packed = str(tmp_path / "packed.ova")
    with open(packed, "wb") as handle:
        handle.write(data)
    return packed


def failure_line(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Failure: "), result.stderr
    return lines[0]


def test_info_gzip_ova_scratch_in_tmpdir_and_capped(tmp_path):
    package = gzip_ova(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    doc = json.loads(run_gnt_ovf("info", "--output=json", package, env=env,
                                 check=True).stdout)
    assert doc["kind"] == "ova"
    assert os.listdir(scratch) == []
    # --max-disk-size caps the decompressed copy; the refusal names it.
    line = failure_line(run_gnt_ovf("info", "--max-disk-size", "4M", package, env=env))
    assert "decompresses to more than 4194304 bytes (--max-disk-size)" in line
    assert os.listdir(scratch) == []


def test_info_gzip_ova_bounded_by_free_space(tmp_path):
    # $TMPDIR on a 2 MiB filesystem: the 4 MiB tar does not fit, and the
    # refusal comes before the filesystem is full.
    package = gzip_ova(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result, left = run_gnt_ovf_on_small_fs(scratch, 2 * MIB, "info", package,
                                           env=dict(os.environ, TMPDIR=str(scratch)))
    line = failure_line(result)
    assert re.search(r"decompresses to more than \d+ bytes \(the free space of %s/gnt-ovf-"
                     % re.escape(str(scratch)), line), line
    assert left == []
