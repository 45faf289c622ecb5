"""`gnt-ovf import` and `gnt-ovf info`: the import pipeline, stage by stage.

package (members in place) → manifest check → descriptor → plan (overrides,
Ganeti's checks) → disks (inspect, convert to raw in staging) → config.ini →
publish (atomic, no replace unless forced).  The direct import
(import_direct) shares the steps up to the disks' inspection, then has
Ganeti create the instance and converts each disk straight into the
instance's own disk (cluster/instance.py, disks/convert.py).  This module
only sequences the stages; each stage lives in its own module.
"""

import contextlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Set, TextIO

from ganeti import netutils

from ganeti_ovf.disks import convert, gzipstream
from ganeti_ovf.cluster import ganeti_export, instance, status
from ganeti_ovf.disks.target import Target
from ganeti_ovf import publish
from ganeti_ovf.progress import Progress
from ganeti_ovf.descriptor import versions
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DiskError, ManifestError, OptionError, PackageError
from ganeti_ovf.cluster.ganeti_export import ExportedDisk, size_to_mib
from ganeti_ovf.package.manifest import verify_bytes, verify_member
from ganeti_ovf.package.openfile import free_space
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
# `--system all`: every virtual system of the package.
ALL_SYSTEMS = "all"


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


def open_package(path: str, staging_dir: str, max_staged: Optional[int] = None) -> Package:
    """The package at `path` (Package.open); a gzip-compressed OVA is inflated
    into `staging_dir` by the fastest inflater there is (disks/gzipstream.py)."""
    return Package.open(path, staging_dir=staging_dir, max_staged=max_staged,
                        inflate=gzipstream.gunzip)


def read_package(package: Package, profile: Optional[str]) -> Appliance:
    """The package's descriptor, parsed for `profile`."""
    return parse_descriptor(package.descriptor_bytes(), profile=profile,
                            source=package.descriptor_name)


def declared_capacity(disk: Disk) -> Optional[int]:
    """The capacity `disk`'s image must keep to, or None: the package states
    none, and the image's own virtual size is used (within --max-disk-size)."""
    return disk.capacity if disk.capacity_declared else None


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
    manifest.require([package.descriptor_name] + [member.name for member in referenced])
    # The bytes that were parsed, not the file read again.
    verify_bytes(manifest.entry(package.descriptor_name), package.descriptor_bytes())
    return [(manifest.entry(member.name), member) for member in referenced]


def import_package(request: ImportRequest, feedback: Feedback,
                   progress_stream: Optional[TextIO] = None,
                   before_convert: Optional[Callable[[Plan], None]] = None) -> ImportResult:
    """Convert an OVF/OVA package into a Ganeti export directory; the
    conversion's progress is shown on `progress_stream` (see progress.py).
    `before_convert(plan)` runs once everything is checked, before the
    first disk byte is converted (the cluster's own checks of the job that
    will import it)."""
    output_dir = publish.output_directory(request.output_dir)
    for name in publish.clean_stale_staging(output_dir):
        logging.info("Removed staging left by an interrupted run: %s", name)

    # The provisional staging name becomes the instance name once it is known.
    with publish.Staging(output_dir, "import") as staging:
        checked = _open_checked(request, staging.scratch(), feedback)
        plan, members, digest_checks = checked.plan, checked.members, checked.digest_checks
        warnings = checked.warnings
        _check_free_space(output_dir, [m for ms in members.values() for m in ms])
        for warning in warnings:
            feedback("WARNING: %s" % warning)
        if before_convert is not None:
            before_convert(plan)

        name = plan.system.name
        staging.name = name
        staging.target = os.path.join(output_dir, name)
        with publish.name_lock(output_dir, name):
            if os.path.lexists(staging.target) and not request.force:
                raise PackageError("%s already exists (use --force to replace it)"
                                   % staging.target)
            line = Progress(progress_stream, [disk.capacity for disk in plan.system.disks])
            try:
                with _digests(digest_checks) as digests:
                    exported = _convert_verified(
                        plan.system, digests,
                        lambda index, disk: _convert_disk(index, disk, members, staging,
                                                          feedback, request.max_disk_size,
                                                          line.callback(index)),
                        checked.package)
            finally:
                line.close()
            config = ganeti_export.build_config(plan.system, exported,
                                                source=netutils.Hostname.GetSysName())
            with open(staging.file(ganeti_export.CONFIG_NAME), "w") as handle:
                handle.write(config)
            directory = staging.publish_directory(replace=request.force)
    return ImportResult(directory=directory, plan=plan, config_text=config,
                        warnings=tuple(warnings), disks=tuple(exported))


def several_systems(wanted: Sequence[str]) -> bool:
    """Whether --system asked for more than one virtual system."""
    return len(wanted) > 1 or ALL_SYSTEMS in wanted


def chosen_systems(appliance: Appliance, wanted: Sequence[str]) -> List[VirtualSystem]:
    """The systems --system names, in package order ("all": every one)."""
    if ALL_SYSTEMS in wanted:
        return list(appliance.systems)
    ids = {appliance.system(name).system_id for name in wanted}
    return [system for system in appliance.systems if system.system_id in ids]


def import_systems(request: ImportRequest, wanted: Sequence[str],
                   feedback: Feedback) -> List[ImportResult]:
    """Import several virtual systems of one package (a vApp) in one run.

    The single-system steps, once per package where they concern the
    package (opening, signature, manifest) and once per system otherwise.
    Every name is checked before anything is converted, every system is
    converted (and every digest checked) before anything is published, and
    if one publication fails the others are removed again: all or nothing.
    """
    if request.overrides.name:
        raise OptionError("--name names one instance; with several virtual systems each"
                          " is named after its system (import one at a time to rename)")
    output_dir = publish.output_directory(request.output_dir)
    for name in publish.clean_stale_staging(output_dir):
        logging.info("Removed staging left by an interrupted run: %s", name)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(publish.Staging(output_dir, "import"))
        package = open_package(request.package_path, first.scratch())
        stack.callback(package.close)
        warnings = list(package.warnings)
        appliance = read_package(package, request.profile)
        warnings.extend(appliance.warnings)
        plans = [make_plan(system, request.overrides)
                 for system in chosen_systems(appliance, wanted)]
        names = [plan.system.name for plan in plans]
        _check_distinct(names)
        for plan in plans:
            warnings.extend("%s: %s" % (plan.system.name, w) for w in plan.warnings)
            stack.enter_context(publish.name_lock(output_dir, plan.system.name))
        _check_absent(output_dir, names, request.force)

        check_signature(package, request.trust_store, request.require_signature, feedback)
        members = [{disk.disk_id: disk_members(package, disk)
                    for disk in plan.system.disks if not disk.blank} for plan in plans]
        every = [m for per_system in members for ms in per_system.values() for m in ms]
        unique = list({member.name: member for member in every}.values())
        checks = check_manifest(package, unique, request.require_manifest, feedback)
        for plan, per_system in zip(plans, members, strict=True):
            warnings.extend(_check_sizes(plan.system, per_system, request.max_disk_size))
        _check_free_space(output_dir, every)
        for warning in warnings:
            feedback("WARNING: %s" % warning)

        stagings = [first] + [stack.enter_context(publish.Staging(output_dir, name))
                              for name in names[1:]]
        results = []
        earlier: Set[str] = set()  # files of the systems converted so far
        for index, (plan, staging) in enumerate(zip(plans, stagings, strict=True)):
            staging.name = plan.system.name
            staging.target = os.path.join(output_dir, staging.name)
            # Each digest runs beside the first system that reads its file.
            own = {m.name for ms in members[index].values() for m in ms}
            first_read = own - earlier
            earlier |= own
            feedback("Virtual system %s" % plan.system.system_id)
            with _digests([check for check in checks
                           if check[1].name in first_read]) as digests:
                exported = _convert_verified(
                    plan.system, digests,
                    lambda number, disk, per_system=members[index], staging=staging:
                    _convert_disk(number, disk, per_system, staging, feedback,
                                  request.max_disk_size), package)
            config = ganeti_export.build_config(plan.system, exported,
                                                source=netutils.Hostname.GetSysName())
            with open(staging.file(ganeti_export.CONFIG_NAME), "w") as handle:
                handle.write(config)
            results.append(ImportResult(directory=staging.target, plan=plan,
                                        config_text=config, warnings=tuple(warnings),
                                        disks=tuple(exported)))
        _publish_all(stagings, request.force)
    return results


def _check_distinct(names: List[str]) -> None:
    """Refuse two systems that would become one instance name."""
    seen: Set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise OptionError("two virtual systems would both be instance %s; import them"
                              " one at a time with --system and --name" % name)
        seen.add(name.lower())


def _check_absent(output_dir: str, names: List[str], force: bool) -> None:
    """Refuse to overwrite existing exports unless forced (names locked)."""
    existing = [name for name in names if os.path.lexists(os.path.join(output_dir, name))]
    if existing and not force:
        raise PackageError("%s: %s already exist%s (use --force to replace)"
                           % (output_dir, ", ".join(existing),
                              "s" if len(existing) == 1 else ""))


def _publish_all(stagings: List[publish.Staging], replace: bool) -> None:
    """Publish every staging directory, or none: a failure removes those
    already published (a result replaced with --force is not restored)."""
    published: List[str] = []
    try:
        for staging in stagings:
            published.append(staging.publish_directory(replace=replace))
    except BaseException:
        for directory in published:
            shutil.rmtree(directory, ignore_errors=True)
        raise


@dataclass(frozen=True)
class _Checked:
    """A package opened, planned and checked, ready to convert."""

    package: Package  # kept open: its members may live in its temporary files
    plan: Plan
    members: dict  # disk_id -> the members holding its file
    digest_checks: list  # still to run, beside the conversion
    warnings: list


def _open_checked(request: ImportRequest, scratch: str, feedback: Feedback) -> _Checked:
    """Open the package, plan the instance and check all that can be checked
    before converting: signature, manifest coverage, descriptor digest, sizes."""
    package = open_package(request.package_path, scratch)
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
    return _Checked(package=package, plan=plan, members=members,
                    digest_checks=digest_checks, warnings=warnings)


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
        free = free_space(output_dir, DiskError)
    except DiskError:
        return  # created later; the conversion itself reports a full disk
    needed = sum(member.size for member in members)
    if needed > free:
        raise DiskError("%s: %d bytes free, the package's disks need at least %d"
                        % (output_dir, free, needed))


@contextlib.contextmanager
def _digests(digest_checks: list) -> Iterator[list]:
    """The disk files' digest checks, running in their own threads (hashlib
    releases the GIL) from now on: their futures.  Leaving early drops those
    not started."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="digest") as hashers:
        futures = [hashers.submit(verify_member, entry, member)
                   for entry, member in digest_checks]
        try:
            yield futures
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _convert_verified(system: VirtualSystem, digests: list,
                      convert_one: Callable[[int, Disk], object],
                      package: Package) -> list:
    """convert_one(index, disk) for every disk while the `digests` run; its
    results, by disk.

    Disks convert concurrently (each is a qemu-img process or the VMDK
    reader's threads) up to the number of processors.  Any failure, a digest
    mismatch included, fails the whole before anything is trusted; so does a
    package file rewritten in place meanwhile (the digests and the disk may
    then have read different bytes).
    """
    workers = max(1, min(len(system.disks), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="disk") as converters:
        conversions = [converters.submit(convert_one, index, disk)
                       for index, disk in enumerate(system.disks)]
        wait(digests + conversions)
    for future in digests + conversions:
        future.result()  # the first failure, digests first
    package.check_unchanged()
    return [future.result() for future in conversions]


def _convert_disk(index: int, disk: Disk, members: dict, staging: publish.Staging,
                  feedback: Feedback, max_size: int,
                  progress: Optional[Callable[[float], None]] = None) -> ExportedDisk:
    dump = "disk%d.raw" % index
    dest = staging.file(dump)
    if disk.blank:
        feedback("Creating blank disk %d (%d MiB)" % (index, size_to_mib(disk.capacity)))
        convert.create_blank(dest, disk.capacity)
        size = disk.capacity
        if progress is not None:
            progress(100.0)
    else:
        feedback("Converting disk %d (%s) to raw" % (index, disk.file.href))
        result = convert.import_disk(members[disk.disk_id], disk.file.compression,
                                     declared_capacity(disk), dest, staging.scratch(),
                                     progress=progress, max_size=max_size,
                                     declared_format=versions.format_for_uri(
                                         disk.format_uri))
        size = max(disk.capacity, result.virtual_size)
    return ExportedDisk(dump=dump, size_mib=size_to_mib(size), name=disk.name)


# ------------------------------------------------------------------ direct


@dataclass(frozen=True)
class DirectResult:
    name: str
    node: str
    seconds: float
    plan: Plan


def _elapsed(start: float) -> float:
    return time.monotonic() - start


def import_direct(request: ImportRequest, jobs: instance.InstanceJobs, start: bool,
                  feedback: Feedback, progress_stream: Optional[TextIO] = None,
                  status_dir: str = status.STATUS_DIR) -> DirectResult:
    """Create the package's instance through Ganeti and write its disks once.

    The instance carries instance.MARKER until every disk is written and
    every digest has passed; any failure removes it and raises
    DirectImportError saying so.  The digests start before the instance is
    created: they run while Ganeti works, and leave the package in the page
    cache for the conversion.
    """
    began = time.monotonic()
    with publish.scratch_dir() as scratch:
        checked = _open_checked(request, scratch, feedback)
        system = checked.plan.system
        for warning in checked.warnings:
            feedback("WARNING: %s" % warning)
        jobs.clear_name(system.name, request.force)
        pnode, snode = jobs.placement()
        prepared: dict = {}
        try:
            with _digests(checked.digest_checks) as digests:
                for disk in system.disks:
                    if not disk.blank:
                        prepared[disk.disk_id] = convert.prepare(
                            checked.members[disk.disk_id], disk.file.compression,
                            declared_capacity(disk), scratch,
                            max_size=request.max_disk_size,
                            declared_format=versions.format_for_uri(disk.format_uri))
                created = _create_and_write(system, prepared, digests, jobs, pnode, snode,
                                            scratch, progress_stream, feedback, status_dir,
                                            checked.package)
        except BaseException as err:
            status.record_import(system.name, status.FAILED, status_dir,
                                 error=instance.first_line(err))
            raise
        finally:
            for disk in prepared.values():
                convert.release(disk)
    status.record_import(created.name, status.DONE, status_dir, output=created.name)
    if start:
        jobs.start(created.name)
    return DirectResult(name=created.name, node=created.primary,
                        seconds=_elapsed(began), plan=checked.plan)


def _create_and_write(system: VirtualSystem, prepared: dict, digests: list,
                      jobs: instance.InstanceJobs, pnode: Optional[str],
                      snode: Optional[str], scratch: str,
                      progress_stream: Optional[TextIO], feedback: Feedback,
                      status_dir: str, package: Package) -> instance.Created:
    """Create the instance, write every disk, check the digests, finish;
    remove the instance on any failure."""
    sizes = [max(disk.capacity, prepared[disk.disk_id].virtual_size
                 if disk.disk_id in prepared else 0) for disk in system.disks]
    feedback("Creating instance %s" % system.name)
    status.record_import(system.name, status.RUNNING, status_dir)
    try:
        created, paths = jobs.create(system, [size_to_mib(size) for size in sizes],
                                     pnode, snode)
    except instance.DirectImportError as err:
        if err.created is None:
            raise
        _abandon(jobs, err.created, err)
    try:
        jobs.check_local(created)
        line = Progress(progress_stream, sizes)
        try:
            _convert_verified(system, digests,
                              lambda index, disk: _write_disk(
                                  disk, prepared.get(disk.disk_id), paths[index],
                                  created.zeroed, scratch, line.callback(index)),
                              package)
        finally:
            line.close()
        jobs.finish(created.name)
    except BaseException as err:
        _abandon(jobs, created.name, err)
    return created


def _write_disk(disk: Disk, prepared: Optional[convert.PreparedDisk], path: str,
                zeroed: bool, scratch: str, progress) -> None:
    with Target(path, known_zero=zeroed) as target:
        if prepared is None:
            convert.fill_blank(target)
        else:
            convert.write_into(prepared, target, scratch, progress)
    if progress is not None:
        progress(100.0)


def _abandon(jobs: instance.InstanceJobs, name: str, err: BaseException) -> None:
    """Remove the half-created instance; raise DirectImportError saying so."""
    reason = instance.first_line(err)
    problem = jobs.remove(name)
    if problem is None:
        message = "%s; instance %s removed" % (reason, name)
    else:
        message = ("%s; instance %s could not be removed (%s): remove it with"
                   " gnt-instance remove %s" % (reason, name, problem, name))
    raise instance.DirectImportError(message) from err
