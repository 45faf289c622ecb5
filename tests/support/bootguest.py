"""A tiny bootable guest, built at test time from Debian packages only.

The guest is a FAT disk image (mkfs.vfat, mtools, syslinux) holding Debian's
kernel (`apt-get download` of linux-image-amd64's dependency, unpacked with
dpkg-deb) and a busybox-static initramfs.  Its /init loads only the kernel
modules of the hardware the guest was "made on" (a VMware guest gets no
virtio), then reports on the serial console which drivers bound its disks
and NICs, and powers off:

    GUEST-DISK sda ata_piix      one line per disk: name, drivers up its path
    GUEST-NIC eth0 e1000         one line per NIC
    GUEST-NO-DISK                no disk appeared: a real guest would not boot
    GUEST-BOOTED <label>         the last line

Nothing is loop-mounted.  The kernel package is downloaded and unpacked once
into CACHE_DIR (reruns reuse it).  Building a guest takes about a second.
"""

import glob
import gzip
import io
import os
import shutil
import subprocess

CACHE_DIR = "/var/tmp/ganeti-ovf-guest"
BUSYBOX = "/bin/busybox"
IMAGE_MIB = 24
MARKER = "GUEST-BOOTED"

# Modules per piece of virtual hardware (Debian's kernel names); their
# dependencies come from modules.dep.
DRIVERS = {
    "ide": ("ata_piix",),
    "ahci": ("ahci",),
    "lsi": ("sym53c8xx",),
    "virtio-blk": ("virtio_pci", "virtio_blk"),
    "e1000": ("e1000",),
    "pcnet": ("pcnet32",),
    "virtio-net": ("virtio_pci", "virtio_net"),
    "disk": ("sd_mod",),  # SCSI/ATA disks need the sd upper driver
}

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
for module in $(cat /modules); do insmod /lib/modules/$module.ko 2>/dev/null; done
disks=""
for second in $(seq 1 40); do
    disks=$(ls /sys/block | grep -E '^(sd|hd|vd|nvme)')
    [ -n "$disks" ] && [ -n "$(ls /sys/class/net | grep -v '^lo$')" ] && break
    sleep 0.25
done
drivers() {
    path=$(readlink -f "$1")
    found=""
    while [ "$path" != "/sys/devices" ] && [ "$path" != "/" ]; do
        if [ -e "$path/driver" ]; then
            found="$found $(basename "$(readlink "$path/driver")")"
        fi
        path=$(dirname "$path")
    done
    echo $found
}
[ -z "$disks" ] && echo GUEST-NO-DISK
for disk in $disks; do echo "GUEST-DISK $disk $(drivers /sys/block/$disk/device)"; done
for nic in $(ls /sys/class/net); do
    [ -e /sys/class/net/$nic/device ] && echo "GUEST-NIC $nic $(drivers /sys/class/net/$nic/device)"
done
echo "%(marker)s %(label)s"
sync
poweroff -f
"""

SYSLINUX_CFG = """DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0 quiet loglevel=3 panic=-1
"""


def _run(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def kernel_tree() -> str:
    """The unpacked Debian kernel package (cached); returns its root."""
    root = os.path.join(CACHE_DIR, "kernel")
    if os.path.exists(os.path.join(root, ".complete")):
        return root
    os.makedirs(CACHE_DIR, exist_ok=True)
    debs = glob.glob(os.path.join(CACHE_DIR, "linux-image-*.deb"))
    if not debs:
        # linux-image-amd64 only depends on the versioned package: fetch that.
        depends = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
        names = [line.split(":", 1)[1].strip() for line in depends.splitlines()
                 if line.strip().startswith("Depends:")]
        _run(["apt-get", "download", names[0]], cwd=CACHE_DIR)
        debs = glob.glob(os.path.join(CACHE_DIR, "linux-image-*.deb"))
    shutil.rmtree(root, ignore_errors=True)
    _run(["dpkg-deb", "-x", sorted(debs)[-1], root])
    open(os.path.join(root, ".complete"), "w").close()
    return root


def _modules_dir(root: str) -> str:
    return glob.glob(os.path.join(root, "lib/modules/*"))[0]


def _depends(path: str) -> list:
    """A module's dependencies, from its .modinfo "depends=" string (the
    package ships no modules.dep: depmod makes it at installation)."""
    with open(path, "rb") as handle:
        data = handle.read()
    start = data.find(b"\0depends=")
    if start < 0:
        return []
    value = data[start + 9:data.index(b"\0", start + 1)].decode()
    return [name for name in value.split(",") if name]


def module_files(root: str, names) -> list:
    """Paths of modules `names` and their dependencies, each after what it needs."""
    paths = {}
    for directory, _, files in os.walk(_modules_dir(root)):
        for name in files:
            if name.endswith(".ko"):
                paths[name[:-3].replace("-", "_")] = os.path.join(directory, name)
    ordered = []

    def visit(name):
        path = paths[name.replace("-", "_")]
        for need in _depends(path):
            visit(need)
        if path not in ordered:
            ordered.append(path)
    for name in names:
        visit(name)
    return ordered


def _cpio(entries) -> bytes:
    """A newc cpio archive of (name, mode, data) entries."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(list(entries) + [("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def build_initramfs(root: str, hardware, label: str) -> bytes:
    modules = [name for part in list(hardware) + ["disk"] for name in DRIVERS[part]]
    files = module_files(root, modules)
    entries = [(directory, 0o40755, b"") for directory in
               ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    with open(BUSYBOX, "rb") as handle:
        entries.append(("bin/busybox", 0o100755, handle.read()))
    entries.append(("init", 0o100755,
                    (INIT % {"marker": MARKER, "label": label}).encode()))
    names = []
    for path in files:
        name = os.path.basename(path)[:-3]
        names.append(name)
        with open(path, "rb") as handle:
            entries.append(("lib/modules/%s.ko" % name, 0o100644, handle.read()))
    entries.append(("modules", 0o100644, (" ".join(names) + "\n").encode()))
    return gzip.compress(_cpio(entries), compresslevel=6, mtime=0)


def build_guest(path: str, hardware, label: str) -> str:
    """Write a bootable raw disk image to `path`: a guest whose initramfs
    drives only `hardware` (keys of DRIVERS).  Returns `path`."""
    root = kernel_tree()
    work = path + ".d"
    os.makedirs(work, exist_ok=True)
    kernel = glob.glob(os.path.join(root, "boot/vmlinuz-*"))[0]
    with open(os.path.join(work, "initrd.gz"), "wb") as handle:
        handle.write(build_initramfs(root, hardware, label))
    with open(os.path.join(work, "syslinux.cfg"), "w") as handle:
        handle.write(SYSLINUX_CFG)
    if os.path.exists(path):
        os.unlink(path)
    _run(["mkfs.vfat", "-C", "-n", "GUEST", path, str(IMAGE_MIB * 1024)])
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    _run(["mcopy", "-i", path, kernel, "::/vmlinuz"], env=env)
    for name in ("initrd.gz", "syslinux.cfg"):
        _run(["mcopy", "-i", path, os.path.join(work, name), "::/" + name], env=env)
    _run(["syslinux", "--install", path])
    shutil.rmtree(work)
    return path


def report(console: str) -> dict:
    """What the guest said: {"booted", "disks": {name: drivers}, "nics": ...}."""
    result = {"booted": None, "disks": {}, "nics": {}, "no_disk": False}
    for line in console.replace("\r", "").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == MARKER and len(words) > 1:
            result["booted"] = words[1]
        elif words[0] == "GUEST-DISK" and len(words) > 1:
            result["disks"][words[1]] = words[2:]
        elif words[0] == "GUEST-NIC" and len(words) > 1:
            result["nics"][words[1]] = words[2:]
        elif words[0] == "GUEST-NO-DISK":
            result["no_disk"] = True
    return result
