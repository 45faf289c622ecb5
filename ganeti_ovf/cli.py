"""The gnt-ovf command: a Ganeti client module (command table, options).

Shaped like ganeti/client/gnt_backup.py: one function per command taking
(opts, args) and returning an exit code, a `commands` table, and Main()
calling ganeti.cli.GenericMain.  It parses options and calls the pipeline
modules; it holds no conversion logic.  The library's OvfError family is
turned here into Ganeti's one-line "Failure: ..." and a non-zero exit.
"""

import dataclasses
import functools
import json
import logging
import optparse
import os
import signal
import sys
import time
from typing import Optional

from ganeti import cli, constants, errors, pathutils, utils
from ganeti.cli import ArgFile, ArgUnknown, ToStderr, ToStdout, cli_option

import ganeti_ovf
from ganeti_ovf import describe, exporter, importer, publish
from ganeti_ovf.cluster import ganeti_export, hardware_map, instance, jobs, status
from ganeti_ovf.errors import OptionError, OvfError, printable
from ganeti_ovf.plan import ImportOverrides

EXIT_FAILURE = constants.EXIT_FAILURE


# ------------------------------------------------------------------ options

NAME_OPT = cli_option("--name", dest="name", default=None, metavar="<name>",
                      help="Instance name (default: the package's virtual"
                      " system name)")
OUTPUT_DIR_OPT = cli_option("--output-dir", dest="output_dir", default=None,
                            metavar="<dir>",
                            help="Where to write the result (import: default"
                            " %s; export: default the current directory)"
                            % pathutils.EXPORT_DIR)
SYSTEM_OPT = cli_option("--system", dest="system", default=None, metavar="<id|name|all>",
                        action="append",
                        help="The virtual system to import from a package that"
                        " holds several; repeat it, or say 'all', to import"
                        " several in one run (one instance each, all or none)")
PROFILE_OPT = cli_option("--profile", dest="profile", default=None, metavar="<id>",
                         help="The DeploymentOptionSection profile to use"
                         " (default: the package's default)")
REQUIRE_MANIFEST_OPT = cli_option("--require-manifest", dest="require_manifest",
                                  default=False, action="store_true",
                                  help="Refuse a package without a manifest")
KEEP_HOST_PARAMS_OPT = cli_option("--keep-host-params", dest="keep_host_params",
                                  default=False, action="store_true",
                                  help="Apply all of the package's hypervisor and"
                                  " OS parameters, also those that configure the"
                                  " host (default: only guest-visible ones)")
TRUST_STORE_OPT = cli_option("--trust-store", dest="trust_store", default=None,
                             metavar="<path>",
                             help="CA certificates (PEM file or directory) that"
                             " package signatures must chain to (default: %s)"
                             % importer.DEFAULT_TRUST_STORE)
REQUIRE_SIGNATURE_OPT = cli_option("--require-signature", dest="require_signature",
                                   default=False, action="store_true",
                                   help="Refuse a package that is not signed by a"
                                   " certificate of the trust store")
MAX_DISK_SIZE_OPT = cli_option("--max-disk-size", dest="max_disk_size", default=None,
                               metavar="<size>",
                               help="Refuse disks larger than this (default: 16T)")
INFO_MAX_SIZE_OPT = cli_option("--max-disk-size", dest="max_disk_size", default=None,
                               metavar="<size>",
                               help="Refuse to decompress a gzip-compressed OVA to"
                               " more than this (default: 16T; never more than the"
                               " free space of $TMPDIR)")
OUTPUT_FORMAT_OPT = cli_option("--output", dest="output_format", default="text",
                               choices=["text", "json"], metavar="text|json",
                               help="Output format of info (default: text)")
VERIFY_OPT = cli_option("--verify", dest="verify", default=False, action="store_true",
                        help="Also check the manifest digests (reads every file)")
REPLACE_OPT = cli_option("-f", "--force", dest="force", action="store_true",
                         default=False, help="Replace an existing output (import"
                         " --submit-import: remove an instance left by an"
                         " interrupted import first)")

FORMAT_OPT = cli_option("--format", dest="disk_format", default="vmdk",
                        metavar="raw|qcow2|vmdk",
                        help="Disk format of the package (default: vmdk, the"
                        " streamOptimized variant VMware requires; cow means qcow2)")
COMPRESS_OPT = cli_option("--compress", dest="compress", default=False,
                          action="store_true",
                          help="Gzip each disk file (ovf:compression=gzip)")
COMPRESS_LEVEL_OPT = cli_option("--compress-level", dest="compress_level", default=None,
                                type="int", metavar="<0-9>",
                                help="Deflate level of --compress: 0 stores, 1-2 use"
                                " ISA-L (fastest), 3-9 libdeflate (smallest);"
                                " default: 1")
OVA_OPT = cli_option("--ova", dest="ova", default=False, action="store_true",
                     help="Write one OVA archive instead of an OVF folder")
EXTERNAL_OPT = cli_option("--external", dest="external", default=False,
                          action="store_true",
                          help="Leave out the Ganeti section (for other hypervisors)")
MANIFEST_OPT = cli_option("--manifest", dest="manifest", default="sha256",
                          choices=["sha1", "sha256", "sha512", "none"],
                          metavar="sha1|sha256|sha512|none",
                          help="Manifest digest (default: sha256; vSphere before"
                          " 6.5 refuses sha256, and COT refuses it in OVF 1.0)")
OVF_VERSION_OPT = cli_option("--ovf-version", dest="ovf_version", default="1.0",
                             choices=["1.0", "2.0"], metavar="1.0|2.0",
                             help="OVF version of the descriptor (default: 1.0)")
HARDWARE_FAMILY_OPT = cli_option("--hardware-family", dest="hardware_family",
                                 default="vmx-10", metavar="<type>",
                                 help="VirtualSystemType of the package"
                                 " (default: vmx-10)")
NIC_MODEL_OPT = cli_option("--nic-model", dest="nic_model", default=None,
                           metavar="<model>",
                           help="Network adapter model, the rasd:ResourceSubType"
                           " (default: from the instance's nic_type, else E1000)")
DISK_CONTROLLER_OPT = cli_option("--disk-controller", dest="disk_controller",
                                 default=None,
                                 choices=sorted(hardware_map.DISK_CONTROLLERS),
                                 metavar="|".join(sorted(hardware_map.DISK_CONTROLLERS)),
                                 help="Disk controller of the package (default: from"
                                 " the instance's disk_type, else lsilogic)")
SIGN_OPT = cli_option("--sign", dest="sign_key", default=None, metavar="<key.pem>",
                      help="Sign the manifest with this PEM private key (writes a"
                      " .cert in ovftool's format; needs --cert)")
CERT_OPT = cli_option("--cert", dest="sign_cert", default=None, metavar="<cert.pem>",
                      help="The PEM certificate (and chain) of the --sign key")
CHUNK_SIZE_OPT = cli_option("--chunk-size", dest="chunk_size", default=None,
                            metavar="<size>",
                            help="Split disk files into chunks of this size"
                            " (OVF folders only; e.g. 2G)")

SUBMIT_IMPORT_OPT = cli_option("--submit-import", dest="submit_import", default=False,
                               action="store_true",
                               help="Create the instance in the cluster and write its"
                               " disks directly, on its primary node (this node by"
                               " default); it is left stopped unless --start")
VIA_EXPORT_OPT = cli_option("--via-export", dest="via_export", default=False,
                            action="store_true",
                            help="With --submit-import: write an export directory"
                            " first, then submit the job gnt-backup import would"
                            " (needs --node or --iallocator; slower)")
START_OPT = cli_option("--start", dest="start", default=False, action="store_true",
                       help="With --submit-import: start the instance once imported")
REFRESH_OPT = cli_option("--refresh", dest="refresh", default=False, action="store_true",
                         help="With --node: export the instance again even if this"
                         " node already holds an export of it")
EXPORT_NODE_OPT = cli_option("-n", "--node", dest="node", default=None, metavar="<node>",
                             help="Export the instance (gnt-backup export) to this"
                             " node, which must be the local one, before converting;"
                             " skipped if an export is already there")
EXPORT_NAME_OPT = cli_option("--name", dest="name", default=None, metavar="<name>",
                             help="Name of the package's virtual system and files"
                             " (default: the instance name in config.ini)")
# Ganeti's own SHUTDOWN_TIMEOUT_OPT says minutes, but the opcode takes seconds.
SHUTDOWN_TIMEOUT_OPT = cli_option("--shutdown-timeout", dest="shutdown_timeout",
                                  type="int", default=constants.DEFAULT_SHUTDOWN_TIMEOUT,
                                  metavar="<seconds>",
                                  help="With --node: seconds to wait for the instance"
                                  " to shut down before it is forced off (default: %d)"
                                  % constants.DEFAULT_SHUTDOWN_TIMEOUT)
NET_MAP_OPT = cli_option("--net-map", dest="net_map", default=[], action="append",
                         metavar="<source network>=<link>|network:<name>",
                         help="Put the NICs of the package's network on this link"
                         " (bridge) or Ganeti network; may be repeated (default:"
                         " the cluster's NIC parameters, with a warning)")
QUIET_OPT = cli_option("-q", "--quiet", dest="quiet", default=False, action="store_true",
                       help="Show no progress (default: bytes done, rate and time left,"
                       " redrawn on a terminal, a line every 5 seconds elsewhere)")
RESULT_OUTPUT_OPT = cli_option("--output", dest="output_format", default="text",
                               choices=["text", "json"], metavar="text|json",
                               help="Result format: text, or one JSON object for"
                               " scripts (default: text)")
STATUS_OUTPUT_OPT = cli_option("--output", dest="output_format", default="text",
                               choices=["text", "json"], metavar="text|json",
                               help="Output format (default: text)")

import_opts = [
    NAME_OPT, OUTPUT_DIR_OPT, RESULT_OUTPUT_OPT, QUIET_OPT, cli.BACKEND_OPT,
    cli.HYPERVISOR_OPT, cli.OS_OPT,
    cli.OSPARAMS_OPT, cli.DISK_TEMPLATE_OPT, cli.DISK_OPT, cli.NET_OPT,
    cli.NONICS_OPT, NET_MAP_OPT, cli.TAG_ADD_OPT, SYSTEM_OPT, PROFILE_OPT, REPLACE_OPT,
    REQUIRE_MANIFEST_OPT, TRUST_STORE_OPT, REQUIRE_SIGNATURE_OPT, MAX_DISK_SIZE_OPT,
    KEEP_HOST_PARAMS_OPT, cli.VERBOSE_OPT,
    # --submit-import and the job's options, as gnt-backup import spells them
    SUBMIT_IMPORT_OPT, VIA_EXPORT_OPT, START_OPT, cli.NODE_PLACEMENT_OPT,
    cli.SRC_NODE_OPT, cli.IALLOCATOR_OPT,
    cli.NONAMECHECK_OPT, cli.NOIPCHECK_OPT, cli.NOCONFLICTSCHECK_OPT,
    cli.IGNORE_IPOLICY_OPT, cli.IDENTIFY_DEFAULTS_OPT,
] + cli.SUBMIT_OPTS
info_opts = [OUTPUT_FORMAT_OPT, PROFILE_OPT, VERIFY_OPT, TRUST_STORE_OPT, INFO_MAX_SIZE_OPT]
export_opts = [
    FORMAT_OPT, COMPRESS_OPT, COMPRESS_LEVEL_OPT, OVA_OPT, EXTERNAL_OPT, MANIFEST_OPT,
    OVF_VERSION_OPT, OUTPUT_DIR_OPT, EXPORT_NAME_OPT, REPLACE_OPT, HARDWARE_FAMILY_OPT,
    NIC_MODEL_OPT, DISK_CONTROLLER_OPT, CHUNK_SIZE_OPT, SIGN_OPT, CERT_OPT, cli.VERBOSE_OPT,
    RESULT_OUTPUT_OPT, QUIET_OPT,
    # --node: the gnt-backup export job first, with its options
    EXPORT_NODE_OPT, REFRESH_OPT, cli.NOSHUTDOWN_OPT, SHUTDOWN_TIMEOUT_OPT,
    cli.LONG_SLEEP_OPT, cli.TRANSPORT_COMPRESSION_OPT,
]
status_opts = [STATUS_OUTPUT_OPT]


# ------------------------------------------------------------------ helpers


def _library_errors(func):
    """Turn the library's errors into Ganeti's one-line failure."""
    @functools.wraps(func)
    def wrapper(opts, args):
        try:
            return func(opts, args)
        except OvfError as err:
            logging.debug("Command failed", exc_info=True)
            ToStderr("Failure: %s", printable(str(err)))
            return EXIT_FAILURE
        except OSError as err:
            if opts.debug:
                raise
            logging.debug("Command failed", exc_info=True)
            ToStderr("Failure: %s%s", printable(str(err.strerror or err)),
                     ": %s" % printable(str(err.filename)) if err.filename else "")
            return EXIT_FAILURE
        except KeyboardInterrupt as err:
            # Every context manager and `finally` has run: staging and locks
            # are gone.  The exit status is the shell's for a killed command.
            signum = getattr(err, "signum", signal.SIGINT)
            ToStderr("Failure: interrupted by %s; nothing was written",
                     signal.Signals(signum).name)
            return 128 + signum
        except (errors.GenericError, errors.JobSubmittedException):
            raise
        except Exception as err:  # never a traceback for the operator
            if opts.debug:
                raise
            logging.exception("Unexpected error")
            ToStderr("Failure: unexpected error (run with --debug for details):"
                     " %s: %s", type(err).__name__, printable(str(err)))
            return EXIT_FAILURE
    return wrapper


# Signals that end a run the way Ctrl-C does: with the clean-up of every
# staging directory and lock on the way out.
CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised as Ctrl-C's exception so that the same
    clean-up runs whichever signal ended the command."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_children() -> None:
    """Ask our child processes (qemu-img under its timeout) to stop, so the
    threads waiting for them return and the clean-up is not held up."""
    pid = os.getpid()
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return
    for task in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, task), encoding="ascii") as handle:
                children = [int(child) for child in handle.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except OSError:
                pass


def _interrupted(signum: int, _frame) -> None:
    # Once only: a second signal must not cut the clean-up short.
    for each in CLEANUP_SIGNALS:
        signal.signal(each, signal.SIG_IGN)
    _stop_children()
    raise Interrupted(signum)


def _feedback(opts, warnings: Optional[list] = None):
    """Progress and warnings on standard error; warnings also kept in
    `warnings` for the JSON result."""
    def feedback(message: str) -> None:
        message = printable(message)
        if message.startswith("WARNING:"):
            ToStderr("%s", message)
            if warnings is not None:
                warnings.append(message[len("WARNING:"):].strip())
        elif getattr(opts, "verbose", False):
            ToStderr("%s", message)
        logging.info("%s", message)
    return feedback


def _progress_stream(opts):
    """Where long work shows its progress: standard error, unless --quiet."""
    return None if getattr(opts, "quiet", False) else sys.stderr


def _printable_lines(text: str) -> str:
    """Multi-line text for a terminal: each line escaped (see printable)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _result_json(command: str, started: float, warnings: list, **fields) -> str:
    """The one result object of `import`/`export --output=json`."""
    return json.dumps(dict(fields, schema_version=1, command=command, warnings=warnings,
                           seconds=round(time.monotonic() - started, 3)),
                      indent=2, sort_keys=True)


def _indexed(values, option: str) -> dict:
    """ganeti.cli's identkeyval list ("N", {...}) as {N: {...}}."""
    result = {}
    for index, params in values:
        if not (index.isascii() and index.isdigit()):
            raise OptionError("%s %s: the index must be a number" % (option, index))
        if not isinstance(params, dict):
            raise OptionError("%s %s: expected N:option=value,..." % (option, index))
        if int(index) in result:
            raise OptionError("%s %s given twice" % (option, index))
        result[int(index)] = params
    return result


def _size_option(value, option: str, default: int) -> int:
    """A Ganeti size ("500G", "2T"; MiB without a unit) in bytes."""
    if value is None:
        return default
    try:
        return utils.ParseUnit(value) * 1024 * 1024
    except errors.UnitParseError as err:
        raise OptionError("%s %s: %s" % (option, value, err))


def _blank_disks(values) -> dict:
    sizes = {}
    for index, params in _indexed(values, "--disk").items():
        unknown = set(params) - {constants.IDISK_SIZE, constants.IDISK_NAME}
        if unknown or constants.IDISK_SIZE not in params:
            raise OptionError("--disk %d: only size=VALUE (and name=) are accepted here"
                              % index)
        try:
            size_mib = utils.ParseUnit(params[constants.IDISK_SIZE])
        except errors.UnitParseError as err:
            raise OptionError("--disk %d: %s" % (index, err))
        if size_mib < 1:
            raise OptionError("--disk %d: size must be at least 1 MiB" % index)
        sizes[index] = size_mib * 1024 * 1024
    return sizes


def _net_map(values: list) -> dict:
    """--net-map NAME=TARGET options as {NAME: TARGET}."""
    mapping = {}
    for value in values:
        source, sep, target = value.rpartition("=")
        if not sep or not source or not target:
            raise OptionError("--net-map %s: expected SOURCE-NETWORK=LINK or"
                              " SOURCE-NETWORK=network:NAME" % value)
        if source in mapping:
            raise OptionError("--net-map %s given twice" % source)
        mapping[source] = target
    return mapping


def _overrides(opts) -> ImportOverrides:
    hypervisor, hv_params = None, {}
    if opts.hypervisor:
        hypervisor, hv_params = opts.hypervisor
        if not isinstance(hv_params, dict):
            raise OptionError("-H: expected hypervisor[:option=value,...]")
    tags = None
    if opts.tags is not None:
        tags = tuple(tag for tag in opts.tags.split(",") if tag)
    return ImportOverrides(
        name=opts.name, disk_template=opts.disk_template, hypervisor=hypervisor,
        hypervisor_params=hv_params, os_name=opts.os, os_params=opts.osparams,
        backend_params=opts.beparams, blank_disks=_blank_disks(opts.disks),
        nics=_indexed(opts.nics, "--net"), no_nics=opts.no_nics, tags=tags,
        net_map=_net_map(opts.net_map),
        keep_host_params=opts.keep_host_params, name_check=opts.name_check,
        force=opts.force,
        default_hypervisor=hardware_map.cluster_default_hypervisor())


# ------------------------------------------------------------------ commands


@_library_errors
def ImportPackage(opts, args):
    """Convert an OVF/OVA package into a Ganeti export directory.

    @param opts: the command line options selected by the user
    @type args: list
    @param args: the package (.ovf or .ova)
    @rtype: int
    @return: the desired exit code

    """
    output_dir = opts.output_dir or pathutils.EXPORT_DIR
    jobs.check_import_options(opts, output_dir)
    started, warnings = time.monotonic(), []
    feedback = _feedback(opts, warnings)
    as_json = opts.output_format == "json"
    request = importer.ImportRequest(
        package_path=args[0], output_dir=output_dir, overrides=_overrides(opts),
        system=opts.system[0] if opts.system else None, profile=opts.profile,
        force=opts.force,
        require_manifest=opts.require_manifest, trust_store=opts.trust_store,
        require_signature=opts.require_signature,
        max_disk_size=_size_option(opts.max_disk_size, "--max-disk-size",
                                   importer.DEFAULT_MAX_DISK_SIZE))
    if importer.several_systems(opts.system or []):
        if opts.submit_import and not opts.via_export:
            raise OptionError("--submit-import with several virtual systems imports each"
                              " through an export directory: add --via-export")
        return _import_systems(opts, request, started, warnings, feedback)
    if opts.submit_import and not opts.via_export:
        direct = importer.import_direct(
            request, instance.InstanceJobs(opts, feedback), opts.start, feedback,
            progress_stream=_progress_stream(opts))
        if as_json:
            ToStdout("%s", _result_json(
                "import", started, warnings, instance=direct.name, node=direct.node,
                directory=None, submitted=True, running=opts.start, next_step=None,
                disks=[], hardware=_hardware_fields(direct.plan)))
        else:
            _hardware_lines(direct.plan)
            ToStdout("Instance %s imported on %s in %.1f s (%s)", direct.name, direct.node,
                     direct.seconds, "started" if opts.start else "stopped")
        return 0
    check = None
    if opts.submit_import:  # with --via-export: the job's checks come first
        check = lambda plan: instance.check_create(plan.system, opts, feedback)  # noqa: E731
    result = importer.import_package(request, feedback, _progress_stream(opts), check)
    name = result.plan.system.name
    if not as_json:
        _written(result)
    next_step = None
    if opts.submit_import:
        jobs.submit_import(result.plan.system, result.directory, opts)
    else:
        next_step = _next_step(result, feedback)
    if as_json:
        ToStdout("%s", _result_json("import", started, warnings,
                                    submitted=bool(opts.submit_import),
                                    **_import_fields(result, next_step)))
    elif opts.submit_import:
        ToStdout("Instance %s imported", name)
    elif next_step:
        ToStdout("Import it with: %s", next_step)
    return 0


def _import_systems(opts, request, started: float, warnings: list, feedback) -> int:
    """import --system all (or several --system): one export directory per
    virtual system, published together; with --submit-import --via-export
    one import job each."""
    as_json = opts.output_format == "json"
    results = importer.import_systems(request, opts.system, feedback)
    if not as_json:
        for result in results:
            _written(result)
    steps = {}
    if not opts.submit_import:
        for result in results:
            steps[result.directory] = _next_step(result, feedback)
            if steps[result.directory] and not as_json:
                ToStdout("Import it with: %s", steps[result.directory])
    else:
        submitted = []
        for result in results:
            try:
                jobs.submit_import(result.plan.system, result.directory, opts)
                if not as_json:
                    ToStdout("Instance %s imported", result.plan.system.name)
            except errors.JobSubmittedException as job:  # --submit: collect every id
                submitted.append(str(job.args[0]))
        if submitted:
            raise errors.JobSubmittedException(", ".join(submitted))
    if as_json:
        ToStdout("%s", _result_json(
            "import", started, warnings, submitted=bool(opts.submit_import),
            systems=[_import_fields(result, steps.get(result.directory))
                     for result in results]))
    return 0


def _hardware_lines(plan) -> None:
    """The hypervisor parameters chosen from the package's virtual hardware."""
    for param in plan.hardware:
        ToStdout("Hardware: %s", printable(hardware_map.line(param)))


def _hardware_fields(plan) -> list:
    return [{"name": param.name, "value": param.value, "source": param.source,
             "why": param.why} for param in plan.hardware]


def _written(result) -> None:
    """What the import wrote, and the hardware parameters it chose."""
    _hardware_lines(result.plan)
    ToStdout("Instance %s written to %s", result.plan.system.name, result.directory)


def _import_fields(result, next_step: Optional[str]) -> dict:
    """One imported system in the JSON result."""
    return {"instance": result.plan.system.name, "directory": result.directory,
            "next_step": next_step,
            "hardware": _hardware_fields(result.plan),
            "disks": [{"index": index, "path": os.path.join(result.directory, disk.dump),
                       "size_mib": disk.size_mib}
                      for index, disk in enumerate(result.disks)]}


def _next_step(result, feedback) -> Optional[str]:
    """The gnt-backup import command that imports what `result` wrote, or
    None, with a warning saying why, when Ganeti cannot import it there."""
    if ganeti_export.under_export_dir(result.directory, pathutils.EXPORT_DIR):
        return jobs.backup_import_command(result.plan.system, result.directory)
    feedback("WARNING: %s is outside Ganeti's export directory %s:"
             " gnt-backup import would create the instance with empty disks."
             " Move it there first (mv %s %s/) and import with"
             " gnt-backup import --src-dir %s/%s"
             % (result.directory, pathutils.EXPORT_DIR, result.directory,
                pathutils.EXPORT_DIR, pathutils.EXPORT_DIR, result.plan.system.name))
    return None


@_library_errors
def ShowPackageInfo(opts, args):
    """Describe a package without converting anything.

    @param opts: the command line options selected by the user
    @type args: list
    @param args: the package (.ovf or .ova)
    @rtype: int
    @return: the desired exit code

    """
    max_staged = _size_option(opts.max_disk_size, "--max-disk-size",
                              importer.DEFAULT_MAX_DISK_SIZE)
    with publish.scratch_dir() as scratch:
        package = importer.open_package(args[0], scratch, max_staged)
        appliance = importer.read_package(package, opts.profile)
        document = describe.describe_package(package, appliance, verify=opts.verify,
                                             trust_store=opts.trust_store)
    if opts.output_format == "json":
        ToStdout("%s", describe.to_json(document))
    else:
        ToStdout("%s", _printable_lines(describe.to_text(document)))
    problem = _verification_problem(document) if opts.verify else None
    if problem is not None:
        ToStderr("Failure: %s: %s", printable(args[0]), printable(problem))
        return EXIT_FAILURE
    return 0


def _verification_problem(document: dict):
    """Why `info --verify` must fail: a manifest that does not parse or whose
    digests do not match, or a signature that does not verify."""
    manifest, signature = document["manifest"], document["signature"]
    if manifest is not None and not manifest["valid"]:
        return "manifest refused: %s" % manifest["error"]
    if manifest is not None and manifest.get("verified") is False:
        return "verification failed: %s" % manifest["error"]
    if signature is not None and not signature["valid"]:
        return "signature refused: %s" % signature["error"]
    return None


@_library_errors
def ExportPackage(opts, args):
    """Convert a Ganeti export into an OVF package or an OVA.

    @param opts: the command line options selected by the user
    @type args: list
    @param args: the export's config.ini, its directory, or an instance name
    @rtype: int
    @return: the desired exit code

    """
    started, warnings = time.monotonic(), []
    feedback = _feedback(opts, warnings)
    source = args[0]
    jobs.check_export_options(opts, source)
    request = exporter.ExportRequest(
        source=source, output_dir=opts.output_dir or ".",
        export_dir=pathutils.EXPORT_DIR,
        disk_format=exporter.normalise_format(opts.disk_format, feedback),
        name=opts.name, compress=opts.compress, ova=opts.ova, external=opts.external,
        compress_level=exporter.compress_level(opts.compress, opts.compress_level),
        manifest_algorithm=None if opts.manifest == "none" else opts.manifest,
        ovf_version=opts.ovf_version, hardware_family=opts.hardware_family,
        nic_model=opts.nic_model, disk_controller=opts.disk_controller,
        chunk_size=exporter.parse_chunk_size(opts.chunk_size),
        sign_key=opts.sign_key, sign_cert=opts.sign_cert,
        force=opts.force)
    if opts.node:
        instance = jobs.export_first(
            opts, source, feedback,
            check=lambda instance: exporter.check_target(request, instance))
        request = dataclasses.replace(request, source=instance)
    result = exporter.export_package(request, feedback, _progress_stream(opts))
    if opts.output_format == "json":
        system = result.appliance.systems[0]
        ToStdout("%s", _result_json(
            "export", started, warnings, instance=system.name, path=result.path,
            kind="ova" if opts.ova else "ovf",
            disks=[{"index": index, "file": disk.file.href if disk.file else None,
                    "capacity": disk.capacity} for index, disk in enumerate(system.disks)]))
    else:
        ToStdout("Package written to %s", result.path)
    return 0


@_library_errors
def ShowStatus(opts, args):
    """List the export hook's conversions and the direct imports (all, or those
    of the instances given), with instances left by an interrupted import.

    @param opts: the command line options selected by the user
    @type args: list
    @param args: instance names to show (none: all)
    @rtype: int
    @return: the desired exit code

    """
    records, problems = status.list_conversions(status.STATUS_DIR)
    rows = status.to_rows(records)
    try:
        leftovers = instance.InstanceJobs(opts, _feedback(opts)).leftovers()
    except (errors.GenericError, OSError) as err:
        leftovers = []
        problems.append("cannot ask the cluster for interrupted imports: %s"
                        % instance.first_line(err))
    rows = status.with_leftovers(rows, leftovers)
    if args:
        rows = [row for row in rows if row["instance"] in args]
    for problem in problems:
        ToStderr("WARNING: %s", printable(problem))
    if opts.output_format == "json":
        ToStdout("%s", json.dumps(rows, indent=2, sort_keys=True))
    else:
        ToStdout("%s", _printable_lines(status.to_text(rows)))
        skip = status.read_skip(status.STATUS_DIR)
        if skip is not None and (not args or skip["instance"] in args):
            ToStdout("%s", printable(status.skip_to_text(skip)))
    return 0


commands = {
    "import": (
        ImportPackage, [ArgFile(min=1, max=1)], import_opts,
        "[options...] <package.ovf|package.ova>",
        "Converts an OVF/OVA package into a Ganeti export, or into an"
        " instance (--submit-import)"),
    "export": (
        ExportPackage, [ArgUnknown(min=1, max=1)], export_opts,
        "[options...] <config.ini|export directory|instance name>"
        " | --node <node> [--refresh] [options...] <instance name>",
        "Converts a Ganeti export (made first with --node) into an OVF"
        " package or OVA"),
    "info": (
        ShowPackageInfo, [ArgFile(min=1, max=1)], info_opts,
        "[--output=json] <package.ovf|package.ova>",
        "Describes an OVF/OVA package without converting it"),
    "status": (
        ShowStatus, [ArgUnknown()], status_opts, "[--output=json] [instance...]",
        "Lists the conversions started by the export hook and their state"),
}
aliases = {"list": "status"}


def hoist_positionals(argv: list, table: dict) -> list:
    """Let options follow the package name, as the design document's
    examples do: GenericMain stops option parsing at the first argument."""
    if len(argv) < 3 or argv[1] not in table:
        return argv
    parser = optparse.OptionParser(option_list=table[argv[1]][2] + cli.COMMON_OPTS,
                                   add_help_option=False)
    options, positionals = [], []
    rest = list(argv[2:])
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positionals.extend(rest)
            break
        if arg.startswith("--"):
            try:
                option = parser._long_opt[parser._match_long_opt(arg.split("=", 1)[0])]
            except (optparse.BadOptionError, KeyError):
                return argv  # let GenericMain report it
            options.append(arg)
            if option.takes_value() and "=" not in arg and rest:
                options.append(rest.pop(0))
        elif arg.startswith("-") and len(arg) > 1:
            option = parser._short_opt.get(arg[:2])
            if option is None:
                return argv
            options.append(arg)
            if option.takes_value() and len(arg) == 2 and rest:
                options.append(rest.pop(0))
        else:
            positionals.append(arg)
    return argv[:2] + options + (["--"] + positionals if positionals else [])


def Main():
    for each in CLEANUP_SIGNALS:
        signal.signal(each, _interrupted)
    if sys.argv[1:] == ["--version"]:
        # GenericMain's --version names only Ganeti's release.
        ToStdout("gnt-ovf %s (Ganeti %s)", ganeti_ovf.__version__,
                 constants.RELEASE_VERSION)
        return 0
    sys.argv = hoist_positionals(sys.argv, commands)
    return cli.GenericMain(commands, aliases=aliases)

