"""`gnt-ovf import` and `gnt-ovf info`: the import pipeline, stage by stage.

package (members in place) → manifest check → descriptor → plan (overrides,
Ganeti's checks) → disks (inspect, convert to raw in staging) → config.ini →
publish (atomic, no replace unless forced).  This module only sequences the
stages; each stage lives in its own module.
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional

from ganeti import netutils

from ganeti_ovf.disks import convert
from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf import publish
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DiskError, ManifestError, PackageError
from ganeti_ovf.cluster.ganeti_export import ExportedDisk, size_to_mib
from ganeti_ovf.package.manifest import verify_member
from ganeti_ovf.model import Appliance, Disk, VirtualSystem
from ganeti_ovf.package.reader import Package
from ganeti_ovf.plan import ImportOverrides, Plan, make_plan
from ganeti_ovf.package.signature import SignatureError, SignatureInfo, verify_certificate

Feedback = Callable[[str], None]
# The largest virtual disk imported unless --max-disk-size says otherwise.
DEFAULT_MAX_DISK_SIZE = 16 * 1024 ** 4
# The operator's CA certificates for package signatures (a PEM bundle or a
# directory of PEM files); --trust-store names another.
DEFAULT_TRUST_STORE = "/etc/ganeti/ovf-trust-store.pem"


@dataclass(frozen=True)
class ImportRequest:
    """Everything `gnt-ovf import` was asked to do."""

    package_path: str
    output_dir: str
    overrides: ImportOverrides
    system: Optional[str] = None  # --system ID|NAME
    profile: Optional[str] = None  # --profile
    force: bool = False
    require_manifest: bool = False
    trust_store: Optional[str] = None  # None: DEFAULT_TRUST_STORE if it exists
    require_signature: bool = False
    max_disk_size: int = DEFAULT_MAX_DISK_SIZE


@dataclass(frozen=True)
class ImportResult:
    directory: str
    plan: Plan
    config_text: str
    warnings: tuple
    disks: tuple = ()  # ExportedDisk: the dumps in `directory`, by index


def read_package(package: Package, profile: Optional[str]) -> Appliance:
    """The package's descriptor, parsed for `profile`."""
    return parse_descriptor(package.descriptor_bytes(), profile=profile,
                            source=package.descriptor_name)


def disk_members(package: Package, disk: Disk) -> list:
    """The members holding `disk`'s file, in order (several when chunked)."""
    ref = disk.file
    if ref is None:
        return []
    if ref.chunk_size:
        return package.chunks(ref.href)
    return [package.member(ref.href)]


def trust_store_path(given: Optional[str]) -> Optional[str]:
    """The trust store to use: the one given, else the default if present."""
    if given:
        if not os.path.exists(given):
            raise SignatureError("%s: no such trust store" % given)
        return given
    return DEFAULT_TRUST_STORE if os.path.exists(DEFAULT_TRUST_STORE) else None


def check_signature(package: Package, trust_store: Optional[str], require: bool,
                    feedback: Feedback) -> Optional[SignatureInfo]:
    """Verify the package's certificate (if any) over the exact manifest bytes.

    A signature that does not match is always fatal; an untrusted signer is
    fatal only when a signature is required.
    """
    cert = package.certificate_bytes()
    if cert is None:
        if require:
            raise SignatureError("%s: the package is not signed (required by"
                                 " --require-signature)" % package.descriptor_name)
        return None
    manifest_bytes = package.manifest_bytes()
    if manifest_bytes is None:
        raise SignatureError("%s: a certificate without a manifest to sign"
                             % package.certificate_name())
    info = verify_certificate(cert, package.manifest_name(), manifest_bytes,
                              trust_store_path(trust_store),
                              source=package.certificate_name())
    if info.trusted:
        feedback("Package signed by %s (trusted)" % info.signer)
    elif require:
        raise SignatureError("%s: signed by %s, which is not trusted: %s"
                             % (package.certificate_name(), info.signer, info.reason))
    else:
        feedback("WARNING: %s: signed by %s, which is not trusted: %s"
                 % (package.certificate_name(), info.signer, info.reason))
    return info


def check_manifest(package: Package, referenced: list, require: bool,
                   feedback: Feedback) -> list:
    """Check the manifest lists the descriptor and every referenced member,
    and verify the descriptor's digest now.

    Returns the (entry, member) digest checks still to run for the disk
    files: the caller runs them while the same bytes are converted (one read
    of a cold file, the other from the page cache) and publishes nothing
    unless they all pass.
    """
    manifest = package.manifest()
    if manifest is None:
        if require:
            raise ManifestError("%s: the package has no manifest (required by"
                                " --require-manifest)" % package.descriptor_name)
        feedback("WARNING: the package has no manifest: its files are not verified")
        return []
    descriptor = package.member(package.descriptor_name)
    manifest.require([descriptor.name] + [member.name for member in referenced])
    verify_member(manifest.entry(descriptor.name), descriptor)
    return [(manifest.entry(member.name), member) for member in referenced]


def import_package(request: ImportRequest, feedback: Feedback) -> ImportResult:
    """Convert an OVF/OVA package into a Ganeti export directory."""
    output_dir = publish.output_directory(request.output_dir)
    for name in publish.clean_stale_staging(output_dir):
        logging.info("Removed staging left by an interrupted run: %s", name)

    # The provisional staging name becomes the instance name once it is known.
    with publish.Staging(output_dir, "import") as staging:
        package = Package.open(request.package_path, staging_dir=staging.scratch())
        warnings = list(package.warnings)
        appliance = read_package(package, request.profile)
        warnings.extend(appliance.warnings)
        system = appliance.system(request.system)
        plan = make_plan(system, request.overrides)
        warnings.extend(plan.warnings)

        # Integrity first: nothing is converted from a package that fails it.
        check_signature(package, request.trust_store, request.require_signature, feedback)
        converted = [disk for disk in plan.system.disks if not disk.blank]
        members = {disk.disk_id: disk_members(package, disk) for disk in converted}
        digest_checks = check_manifest(
            package, [m for disk in converted for m in members[disk.disk_id]],
            request.require_manifest, feedback)
        warnings.extend(_check_sizes(plan.system, members, request.max_disk_size))
        _check_free_space(output_dir, [m for ms in members.values() for m in ms])
        for warning in warnings:
            feedback("WARNING: %s" % warning)

        name = plan.system.name
        staging.name = name
        staging.target = os.path.join(output_dir, name)
        with publish.name_lock(output_dir, name):
            if os.path.lexists(staging.target) and not request.force:
                raise PackageError("%s already exists (use --force to replace it)"
                                   % staging.target)
            exported = _convert_verified(plan.system, members, digest_checks, staging,
                                         feedback, request.max_disk_size)
            config = ganeti_export.build_config(plan.system, exported,
                                                source=netutils.Hostname.GetSysName())
            with open(staging.file(ganeti_export.CONFIG_NAME), "w") as handle:
                handle.write(config)
            directory = staging.publish_directory(replace=request.force)
    return ImportResult(directory=directory, plan=plan, config_text=config,
                        warnings=tuple(warnings), disks=tuple(exported))


def _check_sizes(system: VirtualSystem, members: dict, max_size: int) -> list:
    """Refuse disks over the maximum; warn where ovf:size is not the real size
    (it is never trusted for allocation)."""
    warnings = []
    for disk in system.disks:
        if disk.capacity > max_size:
            raise DiskError("disk %s: capacity %d bytes is over the maximum of %d"
                            " (--max-disk-size)" % (disk.disk_id, disk.capacity, max_size))
        ref = disk.file
        if ref is None or ref.size is None or disk.disk_id not in members:
            continue
        real = sum(member.size for member in members[disk.disk_id])
        if real != ref.size:
            warnings.append("%s: ovf:size says %d bytes, the file has %d"
                            % (ref.href, ref.size, real))
    return warnings


def _check_free_space(output_dir: str, members: list) -> None:
    """The stored bytes are a floor of what the raw disks will take."""
    try:
        stats = os.statvfs(output_dir)
    except OSError:
        return  # created later; the conversion itself reports a full disk
    free = stats.f_bavail * stats.f_frsize
    needed = sum(member.size for member in members)
    if needed > free:
        raise DiskError("%s: %d bytes free, the package's disks need at least %d"
                        % (output_dir, free, needed))


def _convert_verified(system: VirtualSystem, members: dict, digest_checks: list,
                      staging: publish.Staging, feedback: Feedback,
                      max_size: int) -> list:
    """Convert every disk while the disk files' digests are computed.

    Disks convert concurrently (each is a qemu-img process) up to the number
    of processors; the digests run in their own threads (hashlib releases
    the GIL).  Any failure, a digest mismatch included, fails the import
    before anything is published.
    """
    workers = max(1, min(len(system.disks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as hashers, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="disk") as converters:
        digests = [hashers.submit(verify_member, entry, member)
                   for entry, member in digest_checks]
        conversions = [converters.submit(_convert_disk, index, disk, members, staging,
                                         feedback, max_size)
                       for index, disk in enumerate(system.disks)]
        wait(digests + conversions)
    for future in digests + conversions:
        future.result()  # the first failure, digests first
    return [future.result() for future in conversions]


def _convert_disk(index: int, disk: Disk, members: dict, staging: publish.Staging,
                  feedback: Feedback, max_size: int) -> ExportedDisk:
    dump = "disk%d.raw" % index
    dest = staging.file(dump)
    if disk.blank:
        feedback("Creating blank disk %d (%d MiB)" % (index, size_to_mib(disk.capacity)))
        convert.create_blank(dest, disk.capacity)
        size = disk.capacity
    else:
        feedback("Converting disk %d (%s) to raw" % (index, disk.file.href))
        result = convert.import_disk(members[disk.disk_id], disk.file.compression,
                                   disk.capacity, dest, staging.scratch(),
                                   max_size=max_size)
        size = max(disk.capacity, result.virtual_size)
    return ExportedDisk(dump=dump, size_mib=size_to_mib(size), name=disk.name)
