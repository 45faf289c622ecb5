"""`gnt-ovf info --output=json` over every real-world package of the corpus."""

import glob
import json
import os

import pytest
from conftest import CORPUS
from packaging import run_gnt_ovf

# The corpus README's error cases: a one-line error, never a traceback.
ERRORS = {
    "cot/ersatz_ovf_3.0.ovf": "envelope",
    "cot/invalid.ovf": "flash2",
    "ganeti/no_disk_in_ref.ovf": "file1",
    "ganeti/wrong_xml.ovf": "line",
    "ganeti/no_ovf.ova": ".ovf",
    "ganeti/wrong_ova.ova": "not",
    "ganeti/wrong_extension.ovd": "not an OVF descriptor",
}
PACKAGES = sorted(os.path.relpath(path, CORPUS) for pattern in ("*/*.ovf", "*/*.ova", "*/*.ovd")
                  for path in glob.glob(os.path.join(CORPUS, pattern)))


@pytest.mark.parametrize("name", PACKAGES)
def test_info(name):
    result = run_gnt_ovf("info", "--output=json", os.path.join(CORPUS, name))
    assert "Traceback" not in result.stderr
    if name in ERRORS:
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines()
                  if not line.startswith("WARNING: ")]
        assert len(errors) == 1 and errors[0].startswith("Failure: ")
        assert ERRORS[name] in errors[0]
        return
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    assert document["systems"], name
    for system in document["systems"]:
        for disk in system["disks"]:
            assert disk["capacity"] >= 0
            assert disk["blank"] == (disk["file"] is None)


def expect(name):
    result = run_gnt_ovf("info", "--output=json", os.path.join(CORPUS, name))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_values_of_known_packages():
    ubuntu = expect("cot/ubuntu.2.0.ovf")
    assert ubuntu["ovf_version"] == "2.x"
    system = ubuntu["systems"][0]
    assert system["disks"][0]["capacity"] == 8589934592
    assert system["nics"][0]["mac"] == "08:00:27:2a:fb:4e"
    assert ubuntu["manifest"]["algorithms"] == ["SHA256"]

    cot = expect("cot/input.ovf")
    assert [p["id"] for p in cot["profiles"] if p["default"]] == [cot["profile"]]
    assert len(cot["systems"][0]["disks"]) == 1  # the ISO is not a disk

    iosv = expect("cot/iosv.ovf")
    blank = [disk for disk in iosv["systems"][0]["disks"] if disk["blank"]]
    assert [disk["capacity"] for disk in blank] == [128 * 2**20]

    assert expect("cot/v0.9.ovf")["ovf_version"] == "0.9"
    ganeti = expect("ganeti/ganeti.ovf")["systems"][0]
    assert ganeti["ganeti"]["os"] == "lenny-image"
    assert ganeti["ganeti"]["hypervisor"] == "xen-pvm"
