"""The proof that imported guests boot: real boots on Ganeti KVM (QEMU TCG).

One tiny guest per source platform (tests/support/bootguest.py) whose
initramfs drives only the hardware it was "made on", wrapped as that
platform writes packages (tests/support/vendorpkg.py), goes through
`gnt-ovf import` (inside the KVM cluster, which gives the cluster's default
hypervisor, kvm) and `gnt-backup import` (the oVirt one through `gnt-ovf
import --submit-import`), and is started.  The guest's
report on the serial console says which drivers bound its disk and NIC.

The same VMware guest imported with the mapping overridden to the cluster's
defaults (virtio) must not find its disk: the test can fail.  All guests
are imported first and then started together, so their boots overlap.  The LSI Logic
guest, exported again by `gnt-ovf export --external` (no Ganeti section),
must declare the controller and NIC it ran with.
"""

import json
import os
import socket
import sys
import threading
import time

import pytest
from bootguest import build_guest, report
from nscluster import EXPORT_DIR, NODE
from packaging import run_gnt_ovf
from vendorpkg import build_ova

BOOT_TIMEOUT = 240
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# vendor -> (guest drivers, parameters import must set, disk driver, NIC driver)
CASES = {
    "vmware-ide": (("ide", "e1000"), {"disk_type": "ide", "nic_type": "e1000"},
                   "ata_piix", "e1000"),
    "vmware-lsilogic": (("lsi", "e1000"), {"disk_type": "scsi-hd",
                                           "scsi_controller_type": "lsi",
                                           "nic_type": "e1000"},
                        "sym53c8xx", "e1000"),
    # VirtualBox machines carry a PIIX4 IDE controller (for the CD) beside
    # the SATA one, so its guests drive both.
    "virtualbox-sata": (("ahci", "ide", "pcnet"), {"disk_type": "ide", "nic_type": "pcnet"},
                        "ata_piix", "pcnet32"),
    "ovirt-virtio": (("virtio-blk", "virtio-net"), {"disk_type": "paravirtual",
                                                    "nic_type": "paravirtual"},
                     "virtio_blk", "virtio_net"),
}
# Short instance names: the serial socket's path must fit a sockaddr_un.
SHORT = {"vmware-ide": "b-ide", "vmware-lsilogic": "b-lsi", "virtualbox-sata": "b-sata",
         "ovirt-virtio": "b-virtio", "off": "b-off"}
# Imported by gnt-ovf import --submit-import instead of gnt-backup import.
DIRECT = ("ovirt-virtio",)
DIRECT_ARGS = ("--submit-import", "-n", NODE, "--no-name-check", "--no-ip-check",
               "--ignore-ipolicy")
# Routed NICs need an address; each instance its own.
IPS = {name: "192.0.2.%d" % (80 + index) for index, name in enumerate(SHORT.values())}


class SerialConsole(threading.Thread):
    """Reads a KVM instance's serial socket from its creation until QEMU exits."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.text = ""
        self.deadline = time.monotonic() + BOOT_TIMEOUT

    def run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while time.monotonic() < self.deadline:
            try:
                sock.connect(self.path)
                break
            except OSError:
                time.sleep(0.05)
        else:
            return
        sock.settimeout(1)
        chunks = []
        while time.monotonic() < self.deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        sock.close()
        self.text = b"".join(chunks).decode("utf-8", "replace")


def _convert(cluster, vendor, name, guest, import_args=()):
    """Build the guest, wrap it as `vendor` does, gnt-ovf import it, then
    gnt-backup import it (or, for DIRECT vendors, let gnt-ovf submit the
    import job itself); gnt-ovf's output."""
    workdir = cluster.host_path("/srv/ganeti") + "/boot-" + name
    image = build_guest(os.path.join(workdir, "guest.raw"), guest, name)
    ova = build_ova(workdir, vendor, name, image)
    result = cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "import",
                          "--disk-template", "file", "--net", "0:ip=%s" % IPS[name],
                          *import_args, *(DIRECT_ARGS if vendor in DIRECT else ()),
                          cluster.inner_path(ova)],
                         checkout_on_path=True, cwd=CHECKOUT)
    if vendor not in DIRECT:
        cluster.import_instance(name, os.path.join(EXPORT_DIR, name), ip=None,
                                disk_template=None)
    return result.stdout


@pytest.fixture(scope="module")
def booted(ganeti_kvm_cluster):
    """Every case imported, then all started at once (boots under TCG take
    10-40 s each and run side by side): name -> (report, gnt-ovf output,
    console text).  The instances stay (stopped) for the export check."""
    cluster = ganeti_kvm_cluster
    cases = [(vendor, SHORT[vendor], CASES[vendor][0], ()) for vendor in CASES]
    cases.append(("vmware-ide", SHORT["off"], CASES["vmware-ide"][0],
                  ["-H", "kvm:disk_type=paravirtual,nic_type=paravirtual"]))
    try:
        started = time.monotonic()
        outputs = {name: _convert(cluster, vendor, name, guest, args)
                   for vendor, name, guest, args in cases}
        imported = time.monotonic()
        consoles = {}
        for name in outputs:
            consoles[name] = SerialConsole(cluster.serial_socket(name))
            consoles[name].start()
            cluster.run(["gnt-instance", "start", name])
        for console in consoles.values():
            console.join(BOOT_TIMEOUT)
        # Shown by pytest -s or on failure: where the minutes go.
        print("boot tests: imports %.0f s, boots %.0f s"
              % (imported - started, time.monotonic() - imported), file=sys.stderr)
        yield {name: (report(consoles[name].text), outputs[name], consoles[name].text)
               for name in outputs}
    finally:
        for _vendor, name, _guest, _args in cases:
            _remove(cluster, name)


def _remove(cluster, name):
    cluster.run(["gnt-instance", "remove", "-f", "--shutdown-timeout=0", name], check=False)
    cluster.run(["gnt-backup", "remove", name], check=False)


@pytest.mark.parametrize("vendor", list(CASES))
def test_imported_guest_boots_with_its_drivers(booted, vendor):
    _guest, params, disk_driver, nic_driver = CASES[vendor]
    name = SHORT[vendor]
    seen, output, console = booted[name]
    for key, value in params.items():
        assert "Hardware: %s=%s (from " % (key, value) in output, output
    assert seen["booted"] == name, console[-2000:]
    (drivers,) = seen["disks"].values()
    assert disk_driver in drivers, seen
    assert nic_driver in seen["nics"]["eth0"], seen


def test_guest_without_the_mapping_finds_no_disk(booted):
    """The VMware IDE guest on the cluster's defaults (virtio) cannot boot."""
    seen, output, console = booted[SHORT["off"]]
    assert "Hardware: disk_type" not in output
    assert seen["booted"] == SHORT["off"], console[-2000:]
    assert seen["no_disk"] and not seen["disks"], seen


def test_exported_guest_declares_the_hardware_it_ran_with(booted, ganeti_kvm_cluster):
    """gnt-ovf export of the LSI Logic instance that ran, without the Ganeti
    section: the descriptor's hardware alone maps back to the same parameters."""
    cluster = ganeti_kvm_cluster
    name = SHORT["vmware-lsilogic"]
    assert booted[name][0]["booted"] == name
    cluster.run(["gnt-instance", "shutdown", "--timeout=0", name])
    cluster.export_instance(name)
    out_dir = "/srv/ganeti/boot-out"
    cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "export", "--ova", "--external",
                 "--output-dir", out_dir, "--name", name + "-out",
                 os.path.join(EXPORT_DIR, name)], checkout_on_path=True, cwd=CHECKOUT)
    ova = cluster.host_path(out_dir) + "/%s-out.ova" % name
    info = json.loads(run_gnt_ovf("info", "--output=json", ova, check=True).stdout)
    (system,) = info["systems"]
    assert system["disks"][0]["controller"]["subtype"] == "lsilogic"
    assert system["nics"][0]["model"] == "E1000"
    mapping = {p["name"]: p["value"] for p in system["hardware_mapping"]["parameters"]}
    assert mapping == {"disk_type": "scsi-hd", "scsi_controller_type": "lsi",
                       "nic_type": "e1000"}
