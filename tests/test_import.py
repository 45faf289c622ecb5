"""gnt-ovf import end to end (command line), on packages built at test time
and on the real-world corpus: disk bytes by sha256, config.ini by value."""

import json
import os
import subprocess

import pytest
from conftest import CORPUS
from packaging import (MIB, allocated, build_package, read_config, run_gnt_ovf,
                       sha256_file)


def failure_lines(result):
    """The error lines of stderr (warnings are lines of their own)."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING: ")]
    assert all(line.startswith("Failure: ") for line in lines), result.stderr
    return lines


def imported(out, name="appliance.example.com"):
    directory = os.path.join(out, name)
    return directory, read_config(directory)


@pytest.mark.parametrize("kind", ["vmdk", "vmdk-sparse", "qcow2", "raw", "vpc", "vdi"])
@pytest.mark.parametrize("ova", [False, True], ids=["folder", "ova"])
def test_formats_import_with_identical_content(tmp_path, kind, ova):
    package, raws = build_package(str(tmp_path / "pkg"), disks=((kind, 24 * MIB),), ova=ova)
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out, "--os-type", "noop", package)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    directory, cfg = imported(out)
    # VHD rounds its size up to a disk geometry: never truncated, never less
    expected_mib = 25 if kind == "vpc" else 24
    assert cfg.get("instance", "disk0_size") == str(expected_mib)
    dump = os.path.join(directory, cfg.get("instance", "disk0_dump"))
    assert sha256_file(dump, 24 * MIB) == sha256_file(raws[0])
    assert cfg.get("export", "os") == "noop"
    assert cfg.get("backend", "vcpus") == "2"
    assert cfg.get("backend", "maxmem") == "512"
    assert cfg.get("instance", "nic0_mac") == "aa:00:00:00:00:01"
    assert sorted(os.listdir(out)) == ["appliance.example.com"]


def test_gzip_chunked_multi_disk(tmp_path):
    package, raws = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 16 * MIB),
                                                                ("qcow2", 8 * MIB)),
                                  gzip_disks=True, chunk_size=MIB, ova=True, nics=2)
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, package, check=True)
    directory, cfg = imported(out)
    assert cfg.get("instance", "disk_count") == "2"
    assert cfg.get("instance", "nic_count") == "2"
    for index, raw in enumerate(raws):
        dump = os.path.join(directory, cfg.get("instance", "disk%d_dump" % index))
        size = int(cfg.get("instance", "disk%d_size" % index)) * MIB
        assert sha256_file(dump, size) == sha256_file(raw)


def test_sparse_output(tmp_path):
    package, raws = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 1024 * MIB),))
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, package, check=True)
    directory, cfg = imported(out)
    dump = os.path.join(directory, cfg.get("instance", "disk0_dump"))
    assert os.path.getsize(dump) == 1024 * MIB
    assert allocated(dump) < 64 * MIB


def test_design_document_example(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"))
    out = str(tmp_path / "out")
    run_gnt_ovf("import", package, "--output-dir", out, "--disk-template=diskless",
                "--os-type=lenny-image", "--backend=vcpus=1,memory=512,auto_balance",
                "-H", "xen-pvm", "--net=0:mode=bridged,link=xen-br0", "--name=xen.i1",
                check=True)
    directory, cfg = imported(out, "xen.i1")
    assert cfg.get("instance", "disk_template") == "diskless"
    assert cfg.get("instance", "disk_count") == "0"
    assert os.listdir(directory) == ["config.ini"]
    assert cfg.get("export", "os") == "lenny-image"
    assert cfg.get("instance", "hypervisor") == "xen-pvm"
    assert cfg.get("backend", "auto_balance") == "True"
    assert cfg.get("backend", "vcpus") == "1"
    assert cfg.get("backend", "maxmem") == "512"
    assert cfg.get("instance", "nic0_mode") == "bridged"
    assert cfg.get("instance", "nic0_link") == "xen-br0"


def test_blank_disks_tags_and_no_nics(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"))
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, "--disk", "0:size=12M", "--disk", "1:size=1G",
                "--no-nics", "--tags", "web,prod", package, check=True)
    directory, cfg = imported(out)
    assert cfg.get("instance", "disk0_size") == "12"
    assert cfg.get("instance", "disk1_size") == "1024"
    assert cfg.get("instance", "nic_count") == "0"
    assert cfg.get("instance", "tags").split() == ["web", "prod"]
    assert allocated(os.path.join(directory, "disk1.raw")) == 0


def test_existing_output_refused_then_forced(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"))
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, package, check=True)
    marker = os.path.join(out, "appliance.example.com", "config.ini")
    before = open(marker).read()
    again = run_gnt_ovf("import", "--output-dir", out, "--os-type", "lenny-image", package)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert open(marker).read() == before
    run_gnt_ovf("import", "--output-dir", out, "--os-type", "lenny-image", "--force",
                package, check=True)
    assert "os = lenny-image" in open(marker).read()
    assert sorted(os.listdir(out)) == ["appliance.example.com"]


def test_bad_digest_refused_nothing_written(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"))
    disk = os.path.join(str(tmp_path / "pkg"), "appliance-disk0.vmdk")
    with open(disk, "r+b") as handle:
        handle.seek(os.path.getsize(disk) - 1000)
        handle.write(b"X")
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out, package)
    assert result.returncode == 1
    assert "digest mismatch" in result.stderr
    assert len(failure_lines(result)) == 1
    assert os.listdir(out) == []


def test_require_manifest(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"), manifest=None)
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out, "--require-manifest", package)
    assert result.returncode == 1 and "no manifest" in result.stderr
    assert os.listdir(out) == []


def test_output_outside_export_dir_warns(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"))
    result = run_gnt_ovf("import", "--output-dir", str(tmp_path / "out"), package, check=True)
    assert "outside Ganeti's export directory" in result.stderr
    assert "gnt-backup import" in result.stderr


# ---------------------------------------------------------------- corpus


def qemu_convert_sha(image, fmt, tmp_path):
    raw = str(tmp_path / "reference.raw")
    subprocess.run(["qemu-img", "convert", "-q", "-f", fmt, "-O", "raw", image, raw],
                   check=True)
    return sha256_file(raw), os.path.getsize(raw)


def test_corpus_virtualbox_ovf20(tmp_path):
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, os.path.join(CORPUS, "cot", "ubuntu.2.0.ovf"),
                check=True)
    directory, cfg = imported(out, "ubuntu")
    assert cfg.get("instance", "disk_count") == "1"
    assert cfg.get("instance", "disk0_size") == "8192"
    dump = os.path.join(directory, cfg.get("instance", "disk0_dump"))
    expected, size = qemu_convert_sha(
        os.path.join(CORPUS, "cot", "ubuntu.2.0-disk1.vmdk"), "vmdk", tmp_path)
    assert size == 8192 * MIB
    assert sha256_file(dump) == expected
    assert allocated(dump) < 16 * MIB
    assert cfg.get("instance", "nic0_mac") == "08:00:27:2a:fb:4e"
    # no Ganeti OS in the package: noop, whose import script copies the disk
    assert cfg.get("export", "os") == "noop"


def test_corpus_ganeti_ova(tmp_path):
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, os.path.join(CORPUS, "ganeti", "ova.ova"),
                check=True)
    (name,) = os.listdir(out)
    cfg = read_config(os.path.join(out, name))
    assert int(cfg.get("instance", "disk_count")) == 1
    assert int(cfg.get("instance", "disk0_size")) >= 1


def test_corpus_cot_input(tmp_path):
    out = str(tmp_path / "out")
    run_gnt_ovf("import", "--output-dir", out, os.path.join(CORPUS, "cot", "input.ovf"),
                check=True)
    (name,) = os.listdir(out)
    directory = os.path.join(out, name)
    cfg = read_config(directory)
    assert cfg.get("instance", "disk_count") == "1"  # the ISO is not a disk
    expected, size = qemu_convert_sha(os.path.join(CORPUS, "cot", "input.vmdk"), "vmdk",
                                      tmp_path)
    dump = os.path.join(directory, cfg.get("instance", "disk0_dump"))
    assert sha256_file(dump, size) == expected


def test_corpus_wrong_manifest_refused(tmp_path):
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out,
                         os.path.join(CORPUS, "ganeti", "wrong_manifest.ovf"))
    assert result.returncode == 1
    assert len(failure_lines(result)) == 1
    assert "Traceback" not in result.stderr
    assert not os.path.exists(out) or os.listdir(out) == []


# ---------------------------------------------------------------- info


def info_json(path):
    result = run_gnt_ovf("info", "--output=json", path)
    return result, (json.loads(result.stdout) if result.returncode == 0 else None)


def test_info_describes_without_disks(tmp_path):
    result, doc = info_json(os.path.join(CORPUS, "virt-v2v", "test-i-ova-two-disks.ovf"))
    assert result.returncode == 0, result.stderr
    system = doc["systems"][0]
    assert len(system["disks"]) == 2
    assert all(disk["present"] is False for disk in system["disks"])
    assert doc["schema_version"] == 1


def test_info_of_built_package(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"), ova=True, nics=2)
    result, doc = info_json(package)
    assert result.returncode == 0, result.stderr
    assert doc["kind"] == "ova"
    system = doc["systems"][0]
    assert (system["vcpus"], system["memory_mib"]) == (2, 512)
    assert [nic["mac"] for nic in system["nics"]] == ["aa:00:00:00:00:01",
                                                      "aa:00:00:00:00:02"]
    assert system["disks"][0]["capacity"] == 64 * MIB
    assert doc["manifest"]["algorithms"] == ["SHA256"]
    text = run_gnt_ovf("info", "--verify", package, check=True).stdout
    assert "digests verified" in text


def test_info_verify_fails_loudly_on_a_digest_mismatch(tmp_path):
    workdir = str(tmp_path / "pkg")
    package, _ = build_package(workdir, disks=(("raw", 4 * MIB),))
    disk = os.path.join(workdir, "appliance-disk0.img")
    with open(disk, "r+b") as handle:
        handle.seek(MIB)
        handle.write(b"tampered")
    plain = run_gnt_ovf("info", package)
    assert plain.returncode == 0, plain.stderr  # without --verify, no digest is read
    result = run_gnt_ovf("info", "--verify", package)
    assert result.returncode == 1
    assert "VERIFICATION FAILED" in result.stdout  # the description is still shown
    lines = failure_lines(result)
    assert len(lines) == 1
    assert lines[0].startswith("Failure: %s: verification failed: appliance-disk0.img:"
                               " SHA256 digest mismatch" % package), lines
    as_json = run_gnt_ovf("info", "--verify", "--output=json", package)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["manifest"]["verified"] is False


def test_max_disk_size(tmp_path):
    package, _ = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 64 * MIB),))
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", out, "--max-disk-size", "32M", package)
    assert result.returncode == 1
    assert "--max-disk-size" in failure_lines(result)[0]
    assert os.listdir(out) == []
    run_gnt_ovf("import", "--output-dir", out, "--max-disk-size", "64M", package, check=True)


def test_wrong_ovf_size_warns(tmp_path):
    package, raws = build_package(str(tmp_path / "pkg"))
    with open(package, "rb") as handle:
        text = handle.read()
    import re
    text = re.sub(rb'ovf:size="\d+"', b'ovf:size="12345"', text)
    with open(package, "wb") as handle:
        handle.write(text)
    os.unlink(os.path.join(str(tmp_path / "pkg"), "appliance.mf"))
    result = run_gnt_ovf("import", "--output-dir", str(tmp_path / "out"), package, check=True)
    assert "ovf:size says 12345 bytes" in result.stderr
    directory, cfg = imported(str(tmp_path / "out"))
    assert sha256_file(os.path.join(directory, "disk0.raw")) == sha256_file(raws[0])


def test_import_json_result_for_scripts(tmp_path):
    package, raws = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 8 * MIB),
                                                                ("raw", 4 * MIB)))
    out = str(tmp_path / "out")
    result = run_gnt_ovf("import", "--output=json", "--output-dir", out, package,
                         check=True)
    doc = json.loads(result.stdout)  # stdout is the object and nothing else
    directory = os.path.join(out, "appliance.example.com")
    assert (doc["schema_version"], doc["command"], doc["instance"], doc["directory"],
            doc["submitted"]) == (1, "import", "appliance.example.com", directory, False)
    assert [(d["index"], d["path"], d["size_mib"]) for d in doc["disks"]] == [
        (0, os.path.join(directory, "disk0.raw"), 8),
        (1, os.path.join(directory, "disk1.raw"), 4)]
    for disk, raw in zip(doc["disks"], raws, strict=True):
        assert sha256_file(disk["path"]) == sha256_file(raw)
    assert doc["next_step"] is None  # not importable from there: the warning says why
    assert [w for w in doc["warnings"]
            if w.startswith("%s is outside Ganeti's export directory" % directory)]
    assert [w for w in doc["warnings"] if w.startswith("the package names no Ganeti OS")]
    assert isinstance(doc["seconds"], float) and doc["seconds"] >= 0
