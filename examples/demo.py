"""`make demo`: build the small appliance shipped in examples/demo-appliance
as an OVA, import it with gnt-ovf, and show the result.

Runs with Debian's /usr/bin/python3 from the checkout; writes only to a
temporary directory, which it removes.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GNT_OVF = [sys.executable, "-m", "ganeti_ovf"]


def run(args, **kwargs):
    shown = ["gnt-ovf"] + args[3:] if args[:3] == GNT_OVF else args
    print("$ " + " ".join(shown))
    return subprocess.run(args, check=True, cwd=ROOT, **kwargs)


def build_appliance(workdir: str) -> str:
    raw = os.path.join(workdir, "disk.raw")
    with open(raw, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
        handle.write(b"ganeti-ovf demo boot sector".ljust(512, b"\0"))
        handle.seek(32 * 1024 * 1024)
        handle.write(os.urandom(1024 * 1024))
    vmdk = os.path.join(workdir, "demo-disk1.vmdk")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", raw, vmdk], check=True)
    descriptor = os.path.join(HERE, "demo-appliance", "demo.ovf")
    shutil.copy(descriptor, os.path.join(workdir, "demo.ovf"))
    lines = []
    for name in ("demo.ovf", "demo-disk1.vmdk"):
        with open(os.path.join(workdir, name), "rb") as handle:
            lines.append("SHA256(%s)= %s\n" % (name, hashlib.sha256(handle.read()).hexdigest()))
    with open(os.path.join(workdir, "demo.mf"), "w") as handle:
        handle.writelines(lines)
    ova = os.path.join(workdir, "demo.ova")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name in ("demo.ovf", "demo.mf", "demo-disk1.vmdk"):
            archive.add(os.path.join(workdir, name), arcname=name)
    return ova


def main() -> int:
    workdir = tempfile.mkdtemp(prefix="gnt-ovf-demo-")
    try:
        ova = build_appliance(workdir)
        run(GNT_OVF + ["info", ova])
        output = os.path.join(workdir, "export")
        run(GNT_OVF + ["import", "--output-dir", output, "--os-type", "noop", ova])
        config = os.path.join(output, "demo.example.com", "config.ini")
        print("\n--- %s" % config)
        with open(config) as handle:
            print(handle.read())
        run(GNT_OVF + ["info", "--output=json", ova])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
