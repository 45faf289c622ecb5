"""config.ini both ways, as Ganeti 3.0 writes and reads it."""

import os
import subprocess

import pytest
from conftest import CORPUS, ROOT
from ganeti import constants, objects

from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf.package import openfile
from ganeti_ovf.errors import ConfigError, DiskError
from ganeti_ovf.cluster.ganeti_export import ExportedDisk, build_config, read_export, size_to_mib
from ganeti_ovf.model import GanetiSettings, Nic, VirtualSystem

GANETI_CORPUS = os.path.join(CORPUS, "ganeti")


def parse(text):
    return objects.SerializableConfigParser.Loads(text)


def test_size_rounds_up_and_never_to_zero():
    assert size_to_mib(1) == 1
    assert size_to_mib(50 * 1024) == 1
    assert size_to_mib(1024 * 1024) == 1
    assert size_to_mib(1024 * 1024 + 1) == 2
    assert size_to_mib(0) == 1


def test_build_config_has_what_gnt_backup_import_reads():
    system = VirtualSystem(
        system_id="vm", name="vm1.example.com", vcpus=2, memory_mib=1024,
        nics=(Nic(mac="aa:00:00:11:22:33", mode="routed", link="lo", ip="192.0.2.5"),
              Nic(ganeti_network="net1"), Nic()),
        ganeti=GanetiSettings(os_name="noop", hypervisor="kvm", disk_template="file",
                              hypervisor_params=(("kernel_args", "ro 100%"),),
                              tags=("a", "b")))
    text = build_config(system, [ExportedDisk("disk0.raw", 300, "root")], "node1", 7)
    cfg = parse(text)
    assert cfg.get("export", "os") == "noop"
    assert cfg.get("export", "version") == "0"
    assert cfg.get("export", "compression") is None  # "none", read as unset
    assert cfg.get("instance", "name") == "vm1.example.com"
    assert cfg.get("instance", "disk0_size") == "300"
    assert cfg.get("instance", "disk0_dump") == "disk0.raw"
    assert cfg.get("instance", "disk0_name") == "root"
    assert cfg.get("instance", "disk_count") == "1"
    assert cfg.get("instance", "nic_count") == "3"
    assert cfg.get("instance", "nic0_mac") == "aa:00:00:11:22:33"
    assert cfg.get("instance", "nic0_ip") == "192.0.2.5"
    assert cfg.get("instance", "nic0_mode") == "routed"
    # with a network, mode and link must not be given
    assert cfg.get("instance", "nic1_network") == "net1"
    assert not cfg.has_option("instance", "nic1_mode")
    assert not cfg.has_option("instance", "nic1_link")
    # unknown mode/link: Ganeti's "none" (unset), never "auto"; MAC generated
    assert cfg.get("instance", "nic2_mac") == "auto"
    assert cfg.get("instance", "nic2_mode") is None
    assert not cfg.has_option("instance", "nic2_ip")
    assert cfg.get("instance", "tags").split() == ["a", "b"]
    assert cfg.get("backend", "maxmem") == "1024"
    assert cfg.get("backend", "vcpus") == "2"
    assert not cfg.has_option("backend", "memory")
    # a literal % survives Ganeti's interpolating parser
    assert cfg.get("hypervisor", "kernel_args") == "ro 100%"
    assert "auto" not in [cfg.get("instance", k) for k in ("maxmem", "vcpus")]


def test_no_os_is_written_as_none():
    system = VirtualSystem(system_id="x", name="x")
    cfg = parse(build_config(system, [ExportedDisk("d", 1)], "n"))
    assert cfg.get("export", "os") is None  # "none": raw disk import


def test_control_characters_refused():
    system = VirtualSystem(system_id="x", name="x",
                           ganeti=GanetiSettings(os_params=(("a", "b\nc = d"),)))
    with pytest.raises(ConfigError, match="control characters"):
        build_config(system, [], "n")


def test_zero_size_disk_refused():
    with pytest.raises(ConfigError, match="at least 1 MiB"):
        build_config(VirtualSystem(system_id="x", name="x"), [ExportedDisk("d", 0)], "n")


def test_round_trip_through_reader(tmp_path):
    system = VirtualSystem(
        system_id="vm", name="vm", vcpus=3, memory_mib=768,
        nics=(Nic(mac="aa:00:00:11:22:33", mode="bridged", link="br0", vlan="10"),),
        ganeti=GanetiSettings(os_name="debootstrap+default", hypervisor="kvm",
                              disk_template="plain", tags=("x",),
                              os_params=(("dhcp", "yes"),),
                              backend_params=(("auto_balance", "True"),)))
    path = tmp_path / "config.ini"
    path.write_text(build_config(system, [ExportedDisk("disk0.raw", 10, "d0")], "n"))
    export = read_export(str(path))
    read = export.system
    assert (read.name, read.vcpus, read.memory_mib) == ("vm", 3, 768)
    assert read.ganeti.os_name == "debootstrap+default"
    assert read.ganeti.tags == ("x",)
    assert dict(read.ganeti.os_params) == {"dhcp": "yes"}
    assert dict(read.ganeti.backend_params)["auto_balance"] == "True"
    assert read.nics[0].vlan == "10" and read.nics[0].link == "br0"
    assert export.disks == (ExportedDisk("disk0.raw", 10, "d0"),)


def test_old_layout_corpus_config():
    export = read_export(os.path.join(GANETI_CORPUS, "config.ini"))
    assert export.system.memory_mib == 512  # [backend] memory of old exports
    assert export.system.vcpus == 1
    assert export.disks[0].dump == "rawdisk.raw"
    assert export.disks[0].size_mib == 0  # unknown: the dump's size decides
    assert export.system.ganeti.os_name == "lenny-image"
    assert export.system.nics[0].ganeti_network == "test"
    assert dict(export.system.ganeti.backend_params)[constants.BE_MAXMEM] == "512"


@pytest.mark.parametrize("name, message", [
    ("unsafe_path.ini", "not a file name inside the export directory"),
    ("empty.ini", "name is missing"),
    ("wrong_config.ini", "not a Ganeti export configuration"),
])
def test_broken_corpus_configs(name, message):
    with pytest.raises(ConfigError, match=message):
        read_export(os.path.join(GANETI_CORPUS, name))


def test_missing_dump_is_reported():
    export = read_export(os.path.join(GANETI_CORPUS, "no_disk.ini"))
    path = ganeti_export.dump_path(export, export.disks[0])
    assert path == os.path.join(GANETI_CORPUS, "iamnothere.raw")
    with pytest.raises(DiskError, match="iamnothere.raw: cannot open disk dump"):
        openfile.open_regular(path, "disk dump", error=DiskError)


def test_dump_symlink_refused(tmp_path):
    (tmp_path / "secret").write_text("x")
    os.symlink(str(tmp_path / "secret"), str(tmp_path / "disk0"))
    (tmp_path / "config.ini").write_text(
        "[export]\nversion = 0\nos = noop\n[instance]\nname = a\n"
        "disk0_dump = disk0\ndisk0_size = 1\ndisk_count = 1\n")
    export = read_export(str(tmp_path / "config.ini"))
    with pytest.raises(DiskError, match="disk0: disk dump is a symbolic link: refused"):
        openfile.open_regular(ganeti_export.dump_path(export, export.disks[0]), "disk dump",
                              error=DiskError)


def test_find_config(tmp_path):
    export_dir = tmp_path / "export"
    (export_dir / "inst1").mkdir(parents=True)
    (export_dir / "inst1" / "config.ini").write_text("[export]\n")
    expected = str(export_dir / "inst1" / "config.ini")
    assert ganeti_export.find_config("inst1", str(export_dir)) == expected
    assert ganeti_export.find_config(str(export_dir / "inst1"), str(export_dir)) == expected
    assert ganeti_export.find_config(expected, str(export_dir)) == expected
    with pytest.raises(ConfigError, match="no export of instance nope in "):
        ganeti_export.find_config("nope", str(export_dir))
    with pytest.raises(ConfigError, match="no such Ganeti export"):
        ganeti_export.find_config(str(tmp_path / "nope"), str(export_dir))


def test_bare_name_is_an_instance_never_a_folder_here(tmp_path, monkeypatch):
    # `cd /tmp; gnt-ovf export inst1` writes ./inst1/: the next run must still
    # mean the instance's export, not that folder.
    export_dir = tmp_path / "export"
    (export_dir / "inst1").mkdir(parents=True)
    (export_dir / "inst1" / "config.ini").write_text("[export]\n")
    work = tmp_path / "work"
    (work / "inst1").mkdir(parents=True)
    (work / "inst1" / "inst1.ovf").write_text("<Envelope/>")
    (work / "other").mkdir()
    (work / "other" / "config.ini").write_text("[export]\n")
    (work / "config.ini").write_text("[export]\n")
    monkeypatch.chdir(work)
    expected = str(export_dir / "inst1" / "config.ini")
    assert ganeti_export.find_config("inst1", str(export_dir)) == expected
    with pytest.raises(ConfigError, match="no such Ganeti export"):
        ganeti_export.find_config("./inst1", str(export_dir))  # a path is a path
    assert ganeti_export.find_config("./other", str(export_dir)) == "./other/config.ini"
    assert ganeti_export.find_config("config.ini", str(export_dir)) == "config.ini"
    with pytest.raises(ConfigError, match="write ./other"):
        ganeti_export.find_config("other", str(export_dir))


def test_unreadable_export_dir_says_run_as_root(tmp_path):
    export_dir = tmp_path / "export"
    (export_dir / "inst1").mkdir(parents=True)
    (export_dir / "inst1" / "config.ini").write_text("[export]\n")
    os.chmod(export_dir, 0o700)
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         "-c", "import sys; sys.path.insert(0, %r)\n"
         "from ganeti_ovf.cluster import ganeti_export\n"
         "from ganeti_ovf.errors import ConfigError\n"
         "try:\n    ganeti_export.find_config('inst1', %r)\n"
         "except ConfigError as err:\n    print(err)\n" % (ROOT, str(export_dir))],
        capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "%s: permission denied: run gnt-ovf as root" % (
        export_dir / "inst1" / "config.ini"), result.stderr


def test_compressed_dumps_refused(tmp_path):
    (tmp_path / "config.ini").write_text(
        "[export]\nversion = 0\nos = noop\ncompression = gzip\n[instance]\nname = a\n"
        "disk0_dump = d\ndisk0_size = 1\ndisk_count = 1\n")
    with pytest.raises(ConfigError, match="compression = gzip"):
        read_export(str(tmp_path / "config.ini"))
