"""Test helpers: build real OVF packages at test time and run gnt-ovf.

Disk images come from qemu-img; descriptors from the project's writer (so
they are valid OVF 1.0) or from text; OVAs from Python's tarfile.
"""

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile

from conftest import ROOT

from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.writer import write_descriptor
from ganeti_ovf.model import Appliance, Disk, FileRef, Nic, VirtualSystem

MIB = 1024 * 1024


def run_gnt_ovf(*args, check=False, env=None):
    """Run `python3 -m ganeti_ovf ARGS` from the checkout."""
    result = subprocess.run([sys.executable, "-m", "ganeti_ovf"] + [str(a) for a in args],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError("gnt-ovf %s failed (%d): %s%s" % (
            " ".join(map(str, args)), result.returncode, result.stdout, result.stderr))
    return result


# Mount a fresh tmpfs of $3 bytes on $1 (in the private mount namespace of
# unshare, so it vanishes with the command), run the rest, and list what the
# command left in the tmpfs into the file $2 (outside it).
_SMALL_FS_SCRIPT = ('mp=$1; left=$2; size=$3; shift 3; '
                    'mount -t tmpfs -o "size=$size,mode=0755" gnt-ovf-test "$mp" || exit 99; '
                    '"$@"; rc=$?; ls -A "$mp" > "$left"; exit $rc')


def run_gnt_ovf_on_small_fs(mountpoint, size, *args, env=None):
    """Run gnt-ovf ARGS while `mountpoint` (an existing empty directory) is a
    tmpfs of `size` bytes: a real full filesystem, not a mock.  Returns the
    result and the names the command left in that filesystem."""
    left = str(mountpoint) + ".left"
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SMALL_FS_SCRIPT,
         "sh", str(mountpoint), left, str(size), sys.executable, "-m", "ganeti_ovf"]
        + [str(a) for a in args], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode != 99, result.stderr
    with open(left) as handle:
        names = handle.read().split()
    os.unlink(left)
    return result, names


def sha256_file(path, length=None):
    digest = hashlib.sha256()
    left = length
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(MIB if left is None else min(MIB, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    if left:
        digest.update(b"\0" * left)  # a shorter file reads as zeros to its length
    return digest.hexdigest()


def make_raw(path, size, seed=1):
    """A sparse raw image with recognisable data at a few offsets."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index, offset in enumerate((0, size // 3, size - 2 * MIB)):
            if offset < 0:
                continue
            handle.seek(offset)
            handle.write(hashlib.sha512(b"%d-%d" % (seed, index)).digest() * 4096)
    return path


def convert(raw, dest, fmt, options=None):
    args = ["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt]
    if options:
        args += ["-o", options]
    subprocess.run(args + [raw, dest], check=True)
    return dest


FORMAT_OPTIONS = {
    "vmdk": ("vmdk", "subformat=streamOptimized"),
    "vmdk-sparse": ("vmdk", "subformat=monolithicSparse"),
    "qcow2": ("qcow2", None),
    "raw": ("raw", None),
    "vpc": ("vpc", None),
    "vdi": ("vdi", None),
}


def build_package(workdir, name="appliance", disks=(("vmdk", 64 * MIB),), nics=1,
                  ova=False, gzip_disks=False, chunk_size=None, manifest="sha256",
                  system_name="appliance.example.com", blank=()):
    """Build an OVF folder or OVA in `workdir`; return (package path, raw images).

    `blank` are the sizes of blank disks (no file) after the others."""
    os.makedirs(workdir, exist_ok=True)
    files, model_disks, raws, members = [], [], [], []
    for index, (kind, size) in enumerate(disks):
        fmt, options = FORMAT_OPTIONS[kind]
        raw = make_raw(os.path.join(workdir, "src%d.raw" % index), size, seed=index)
        raws.append(raw)
        href = "%s-disk%d.%s" % (name, index, "img" if fmt == "raw" else fmt)
        image = os.path.join(workdir, href)
        if fmt == "raw":
            with open(raw, "rb") as src, open(image, "wb") as dst:
                dst.write(src.read())
        else:
            convert(raw, image, fmt, options)
        compression = "identity"
        if gzip_disks:
            with open(image, "rb") as src, gzip.open(image + ".gz", "wb") as dst:
                dst.write(src.read())
            os.unlink(image)
            href, image, compression = href + ".gz", image + ".gz", "gzip"
        stored = os.path.getsize(image)
        if chunk_size:
            with open(image, "rb") as src:
                number = 0
                while True:
                    piece = src.read(chunk_size)
                    if not piece and number:
                        break
                    chunk = "%s.%09d" % (href, number)
                    with open(os.path.join(workdir, chunk), "wb") as dst:
                        dst.write(piece)
                    members.append(chunk)
                    number += 1
                    if len(piece) < chunk_size:
                        break
            os.unlink(image)
        else:
            members.append(href)
        ref = FileRef("file%d" % index, href, stored, compression, chunk_size)
        files.append(ref)
        model_disks.append(Disk("vmdisk%d" % index, size, ref,
                                versions.FORMAT_URIS[fmt][0]))
    model_disks += [Disk("blank%d" % index, size) for index, size in enumerate(blank)]
    system = VirtualSystem(
        system_id=name, name=system_name, vcpus=2, memory_mib=512,
        disks=tuple(model_disks),
        nics=tuple(Nic(network="VM Network", mac="aa:00:00:00:00:%02x" % (i + 1))
                   for i in range(nics)))
    descriptor = write_descriptor(Appliance("1.x", (system,), tuple(files)), external=True)
    ovf_name = name + ".ovf"
    with open(os.path.join(workdir, ovf_name), "wb") as handle:
        handle.write(descriptor)
    order = [ovf_name]
    if manifest:
        lines = []
        for item in [ovf_name] + members:
            with open(os.path.join(workdir, item), "rb") as handle:
                digest = hashlib.new(manifest, handle.read()).hexdigest()
            lines.append("%s(%s)= %s\n" % (manifest.upper(), item, digest))
        with open(os.path.join(workdir, name + ".mf"), "w") as handle:
            handle.writelines(lines)
        order.append(name + ".mf")
    order += members
    if not ova:
        return os.path.join(workdir, ovf_name), raws
    path = os.path.join(workdir, name + ".ova")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for item in order:
            archive.add(os.path.join(workdir, item), arcname=item)
    return path, raws


def read_config(directory):
    from ganeti import objects
    with open(os.path.join(directory, "config.ini")) as handle:
        return objects.SerializableConfigParser.Loads(handle.read())


def allocated(path):
    return os.stat(path).st_blocks * 512
