"""Real-world package shapes end to end (issue 12): packages with a disks/
folder, whole vApps with `--system all`, and what `info` says about them.
Disks are compared by sha256, config.ini by value."""

import gzip
import json
import os

import pytest
import realworld
from packaging import MIB, read_config, run_gnt_ovf, sha256_file

from ganeti_ovf import importer
from ganeti_ovf.errors import OvfError
from ganeti_ovf.plan import ImportOverrides


def failure(result):
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: ")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Failure: ") and "Traceback" not in result.stderr
    return lines[0]


def disk_digests(directory):
    config = read_config(directory)
    count = int(config.get("instance", "disk_count"))
    return [sha256_file(os.path.join(directory, config.get("instance", "disk%d_dump" % i)),
                        int(config.get("instance", "disk%d_size" % i)) * MIB)
            for i in range(count)]


@pytest.mark.parametrize("ova", [False, True], ids=["folder", "ova"])
def test_ovftool_package_with_a_disks_folder(tmp_path, ova):
    path, sources = realworld.package(str(tmp_path), realworld.ovftool_descriptor(),
                                      realworld.OVFTOOL_DISKS, ova=ova)
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out, path)
    assert result.returncode == 0, result.stderr
    directory = os.path.join(out, "ttylinux.example.com")
    assert disk_digests(directory) == [sha256_file(sources[href])
                                       for href, _ in realworld.OVFTOOL_DISKS]
    assert os.listdir(out) == ["ttylinux.example.com"]

    info = json.loads(run_gnt_ovf("info", "--output=json", "--verify", path,
                                  check=True).stdout)
    disks = info["systems"][0]["disks"]
    assert [(d["file"], d["capacity"], d["present"]) for d in disks] == [
        ("disks/disk1.vmdk", 24 * MIB, True), ("disks/sun..vhw-disk2.img", 8 * MIB, True)]
    assert info["manifest"]["verified"] is True


def test_info_on_a_vcenter_appliance_descriptor(tmp_path):
    path = tmp_path / "vcsa.ovf"
    path.write_bytes(realworld.vcenter_appliance())
    for profile in ("tiny", "small"):
        info = json.loads(run_gnt_ovf("info", "--output=json", "--profile", profile,
                                      str(path), check=True).stdout)
        assert info["schema_version"] == 1
        disks = info["systems"][0]["disks"]
        assert [d["capacity"] for d in disks] == realworld.vcenter_capacities(profile)
        assert sum(1 for d in disks if d["blank"]) == 12


@pytest.fixture
def vapp(tmp_path):
    path, sources = realworld.package(str(tmp_path), realworld.vapp(), realworld.vapp_disks(),
                                      name="shop")
    return path, sources, str(tmp_path / "out")


def test_info_says_how_to_import_a_vapp(vapp):
    path, _, _ = vapp
    text = run_gnt_ovf("info", path, check=True).stdout
    assert "Virtual system web (web.example.com)" in text
    assert "Virtual system db (db.example.com)\n  OS: unknown\n" in text
    assert "--system all" in text and "--system ID|NAME" in text
    document = json.loads(run_gnt_ovf("info", "--output=json", path, check=True).stdout)
    assert [s["id"] for s in document["systems"]] == ["web", "db"]
    single = run_gnt_ovf("import", "--output-dir", vapp[2], path)
    assert "choose one with --system, or import all with --system all" in failure(single)


@pytest.mark.parametrize("systems", [["all"], ["db", "web.example.com"]],
                         ids=["all", "each-named"])
def test_system_all_imports_every_system(vapp, systems):
    path, sources, out = vapp
    args = [arg for system in systems for arg in ("--system", system)]
    result = run_gnt_ovf("import", "--output-dir", out, *args, path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["db.example.com", "web.example.com"]
    for system_id, name, href, size in realworld.VAPP_SYSTEMS:
        directory = os.path.join(out, name)
        assert disk_digests(directory) == [sha256_file(sources[href])]
        config = read_config(directory)
        assert config.get("instance", "name") == name
        assert config.get("instance", "disk0_size") == str(size // MIB)
        assert config.get("backend", "maxmem") == ("512" if system_id == "web" else "1024")
        assert "Instance %s written to %s" % (name, directory) in result.stdout
    # The manifest was verified once, for both systems.
    assert result.stderr.count("ovf:size '-1'") == 1


def test_system_all_json_result(vapp):
    path, sources, out = vapp
    result = run_gnt_ovf("import", "--output=json", "--output-dir", out, "--system", "all",
                         path, check=True)
    doc = json.loads(result.stdout)
    assert (doc["command"], doc["submitted"]) == ("import", False)
    by_name = {system["instance"]: system for system in doc["systems"]}
    assert sorted(by_name) == ["db.example.com", "web.example.com"]
    for _system_id, name, href, _size in realworld.VAPP_SYSTEMS:
        (disk,) = by_name[name]["disks"]
        assert disk["path"] == os.path.join(out, name, "disk0.raw")
        assert sha256_file(disk["path"]) == sha256_file(sources[href])
        assert by_name[name]["next_step"] is None  # outside Ganeti's export directory
    assert [w for w in doc["warnings"] if "outside Ganeti's export directory" in w]


def test_clashing_names_leave_nothing(tmp_path):
    path, _ = realworld.package(str(tmp_path), realworld.vapp(
        names=("shop.example.com", "SHOP.example.com")), realworld.vapp_disks(), name="shop")
    out = str(tmp_path / "out")
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "all", path))
    assert "both be instance" in message and "shop.example.com" in message.lower()
    assert not os.path.exists(out) or os.listdir(out) == []


def test_an_existing_export_is_named_up_front(vapp):
    path, _, out = vapp
    os.makedirs(os.path.join(out, "db.example.com"))
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "all", path))
    assert "db.example.com already exists" in message and "--force" in message
    assert os.listdir(out) == ["db.example.com"]
    assert os.listdir(os.path.join(out, "db.example.com")) == []


def test_a_failing_second_system_leaves_nothing(tmp_path):
    path, _ = realworld.package(str(tmp_path), realworld.vapp(), realworld.vapp_disks(),
                                name="shop")
    folder = os.path.dirname(path)
    with open(os.path.join(folder, "db-disk1.vmdk"), "wb") as handle:
        handle.write(gzip.compress(b"not a disk" * 1000))  # refused by the inspector
    realworld.write_manifest(folder, "shop.mf", ["shop.ovf", "web-disk1.vmdk",
                                                 "db-disk1.vmdk"])
    out = str(tmp_path / "out")
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "all", path))
    assert "db-disk1.vmdk" in message and "gzip" in message
    assert os.listdir(out) == []


def test_a_wrong_digest_of_the_second_system_leaves_nothing(vapp):
    path, _, out = vapp
    with open(os.path.join(os.path.dirname(path), "db-disk1.vmdk"), "r+b") as handle:
        handle.seek(-600, os.SEEK_END)
        handle.write(b"x")
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "all", path))
    assert "db-disk1.vmdk" in message
    assert os.listdir(out) == []


def test_a_failed_publication_takes_back_the_others(vapp):
    """The second export directory appears while the disks convert: its
    publication fails, and the first one, already published, is removed."""
    path, _, out = vapp
    planted = os.path.join(out, "db.example.com")

    def feedback(message):
        if message == "Virtual system db":
            os.makedirs(planted)

    request = importer.ImportRequest(package_path=path, output_dir=out,
                                     overrides=ImportOverrides())
    with pytest.raises(OvfError, match="db.example.com already exists"):
        importer.import_systems(request, ["all"], feedback)
    assert os.listdir(out) == ["db.example.com"]
    assert os.listdir(planted) == []


def test_name_is_refused_with_several_systems(vapp):
    path, _, out = vapp
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "all",
                                  "--name", "x.example.com", path))
    assert "--name" in message
    message = failure(run_gnt_ovf("import", "--output-dir", out, "--system", "web",
                                  "--system", "nope", path))
    assert "no virtual system 'nope'" in message
    assert not os.path.exists(out) or os.listdir(out) == []
