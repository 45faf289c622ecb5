"""An independent reader of what gnt-ovf export writes: the Common OVF Tool.

COT is installed from PyPI into a throw-away venv, cached between runs under
/var/tmp (keyed by COT's version) and built on first use, so a fresh machine
(CI reaches PyPI) gets it too.  `cot info --verbose` must then read our OVAs
without an error and report the CPUs, memory, disks and NICs we exported.

COT 2.2.1 checks a manifest with SHA1 for OVF 1.x and SHA256 for 2.x,
whatever the manifest says; so the OVF 1.0 package is written with
--manifest sha1 and the OVF 2.0 one with the default sha256, and every
digest is then checked by COT too.
"""

import os
import re
import shutil
import subprocess

import pytest
from packaging import MIB, run_gnt_ovf
from test_export import write_ganeti3_export

COT_VERSION = "2.2.1"
VENV = "/var/tmp/ganeti-ovf-test-cot-venv"
STAMP = os.path.join(VENV, "ganeti-ovf-cot-version")
COT = os.path.join(VENV, "bin", "cot")


def _cached() -> bool:
    try:
        with open(STAMP) as handle:
            return handle.read().strip() == COT_VERSION and os.access(COT, os.X_OK)
    except OSError:
        return False


@pytest.fixture(scope="module")
def cot():
    """The path of COT's command, installing it first if needed."""
    if not _cached():
        shutil.rmtree(VENV, ignore_errors=True)
        steps = [["/usr/bin/python3", "-m", "venv", VENV],
                 [os.path.join(VENV, "bin", "python"), "-m", "pip", "install", "-q",
                  "--disable-pip-version-check", "cot==%s" % COT_VERSION]]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                shutil.rmtree(VENV, ignore_errors=True)
                pytest.fail("cannot install COT %s (PyPI package `cot`) into %s: %s"
                            % (COT_VERSION, VENV, (result.stderr or result.stdout)[-2000:]))
        # Written last: an interrupted install is rebuilt next time.
        with open(STAMP, "w") as handle:
            handle.write(COT_VERSION + "\n")
    return COT


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("cot") / "inst1.example.com")
    write_ganeti3_export(directory, disks_mib=(10, 3), nics=2, vcpus=2, memory=256)
    return directory


@pytest.mark.parametrize("args", [
    ["--manifest", "sha1"],
    ["--ovf-version", "2.0"],
    ["--manifest", "sha1", "--external", "--format", "vmdk", "--compress"],
], ids=["ovf1", "ovf2", "ovf1-external-gzip"])
def test_cot_reads_our_ova(tmp_path, cot, instance, args):
    out = str(tmp_path / "out")
    run_gnt_ovf("export", "--ova", "--output-dir", out, *args, instance, check=True)
    ova = os.path.join(out, "inst1.example.com.ova")
    result = subprocess.run([cot, "info", "--verbose", ova], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # COT logs digest, size and reference problems as ERROR and goes on.
    assert "ERROR" not in result.stderr and "ERROR" not in result.stdout, result.stderr
    text = result.stdout

    # "None (default)   2   256 MiB   2   0  2 /   13 MiB"
    profile = re.search(r"None \(default\)\s+(\d+)\s+(\d+) MiB\s+(\d+)\s+(\d+)"
                        r"\s+(\d+) /\s+(\d+) MiB", text)
    assert profile, text
    cpus, memory, nics, _serials, disks, capacity = map(int, profile.groups())
    assert (cpus, memory, nics, disks) == (2, 256, 2, 2)
    assert capacity * MIB == 13 * MIB

    suffix = ".vmdk.gz" if "--compress" in args else ".vmdk"
    for index, size in enumerate((10, 3)):
        row = re.search(r"inst1\.example\.com-disk%d%s\s+\S+ \S+\s+(\d+) MiB harddisk"
                        % (index, re.escape(suffix)), text)
        assert row and int(row.group(1)) == size, text
    assert re.findall(r"Network adapter (\d) : (\S+)", text) == [("1", "lo"), ("2", "lo")]
    assert "E1000" in text
