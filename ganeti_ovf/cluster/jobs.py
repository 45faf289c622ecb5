"""Ganeti jobs around a conversion: import after, export before.

`gnt-ovf import --submit-import` converts the package into this node's
export directory and then submits what `gnt-backup import` would
(OpInstanceCreate in import mode), taking the instance's description from
the config.ini just written: only placement and checks come from options.
`gnt-ovf export INSTANCE --node NODE` first submits what `gnt-backup export`
would (OpBackupExport to NODE, which must be this node, where the converter
reads the export) unless an export is already there (--refresh forces one).
Jobs are sent through ganeti.cli (SubmitOrSend, SubmitOpCode), so --submit,
--print-jobid, --debug and the job's feedback behave as in gnt-backup.
"""

import os
import shlex
from typing import Callable

from ganeti import cli, constants, errors, netutils, opcodes, pathutils

from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf.errors import OptionError
from ganeti_ovf.model import VirtualSystem

Feedback = Callable[[str], None]

# (option dest, flag, default): options that only make sense with a job.
IMPORT_JOB_OPTIONS = (
    ("node", "--node", None), ("src_node", "--src-node", None),
    ("iallocator", "--iallocator", None), ("name_check", "--no-name-check", True),
    ("ip_check", "--no-ip-check", True), ("conflicts_check", "--no-conflicts-check", True),
    ("ignore_ipolicy", "--ignore-ipolicy", False),
    ("identify_defaults", "--identify-defaults", False),
    ("submit_only", "--submit", False), ("print_jobid", "--print-jobid", False),
)
EXPORT_JOB_OPTIONS = (
    ("refresh", "--refresh", False), ("shutdown", "--noshutdown", True),
    ("shutdown_timeout", "--shutdown-timeout", constants.DEFAULT_SHUTDOWN_TIMEOUT),
    ("long_sleep", "--long-sleep", False),
    ("transport_compression", "--transport-compression", constants.IEC_NONE),
)


def this_node() -> str:
    return netutils.Hostname.GetSysName()


def _given(opts, table) -> list:
    return [flag for dest, flag, default in table
            if getattr(opts, dest, default) != default]


# ------------------------------------------------------------------ import


def check_import_options(opts, output_dir: str,
                         export_dir: str = pathutils.EXPORT_DIR) -> None:
    """Refuse job options without --submit-import, and a job that cannot work.

    Runs before converting, so a mistake costs nothing.
    """
    if not opts.submit_import:
        given = _given(opts, IMPORT_JOB_OPTIONS)
        if given:
            raise OptionError("%s applies only with --submit-import" % given[0])
        return
    if not opts.node and not opts.iallocator:
        raise OptionError("--submit-import needs --node NODE[:SECONDARY] or"
                          " --iallocator NAME")
    # Ganeti's import reads the disks from its export directory only.
    if not ganeti_export.under_export_dir(output_dir, export_dir):
        raise OptionError("--submit-import: --output-dir %s is outside Ganeti's"
                          " export directory %s" % (output_dir, export_dir))


def import_opcode(system: VirtualSystem, directory: str,
                  opts) -> opcodes.OpInstanceCreate:
    """The job gnt-backup import would submit for `system`, converted into
    the export `directory`."""
    pnode, snode = cli.SplitNodeOption(opts.node) if opts.node else (None, None)
    settings = system.ganeti
    # Ganeti takes OS, disks, NICs, tags, hypervisor and backend parameters
    # from config.ini when the opcode leaves them empty, but not the disk
    # template (it would use the cluster's first), so that one is passed.
    return opcodes.OpInstanceCreate(
        mode=constants.INSTANCE_IMPORT, instance_name=system.name,
        src_node=opts.src_node or this_node(), src_path=directory,
        pnode=pnode, snode=snode, iallocator=opts.iallocator,
        disk_template=settings.disk_template if settings else None,
        disks=[], nics=[], hvparams={}, beparams={}, osparams={},
        name_check=opts.name_check, ip_check=opts.ip_check,
        conflicts_check=opts.conflicts_check, ignore_ipolicy=opts.ignore_ipolicy,
        identify_defaults=opts.identify_defaults, start=False,
        compress=constants.IEC_NONE, wait_for_sync=True)


def backup_import_command(system: VirtualSystem, directory: str) -> str:
    """The gnt-backup import command, ready to paste, that imports the export
    `directory` on this node: the package's disk template, or the cluster's
    default one when the package names none (asked of the master; left out
    if the master cannot be reached, and Ganeti then picks that default)."""
    node = this_node()
    template = system.ganeti.disk_template if system.ganeti else None
    if template is None:
        try:
            template = cli.GetClient().QueryClusterInfo()["enabled_disk_templates"][0]
        except (errors.GenericError, OSError, KeyError, IndexError, TypeError):
            template = None
    words = ["gnt-backup", "import", "-n", node, "--src-node", node, "--src-dir", directory]
    if template:
        words += ["-t", template]
    return " ".join(shlex.quote(word) for word in words + [system.name])


def submit_import(system: VirtualSystem, directory: str, opts) -> object:
    """Submit the import job; wait for it unless --submit (then raises
    ganeti's JobSubmittedException, which GenericMain prints)."""
    return cli.SubmitOrSend(import_opcode(system, directory, opts), opts)


# ------------------------------------------------------------------ export


def check_export_options(opts, source: str) -> None:
    """Refuse export-job options without --node, and a SOURCE that is not
    an instance name with --node."""
    if not opts.node:
        given = _given(opts, EXPORT_JOB_OPTIONS)
        if given:
            raise OptionError("%s applies only with --node" % given[0])
        return
    if not source or ganeti_export.is_path(source):
        raise OptionError("with --node, %r must be an instance name" % source)


def _one_name(found: list, what: str, given: str) -> str:
    if len(found) != 1 or not found[0] or not found[0][0]:
        raise OptionError("%s %r is not known to the cluster" % (what, given))
    return found[0][0]


def export_first(opts, source: str, feedback: Feedback,
                 export_dir: str = pathutils.EXPORT_DIR, client=None,
                 check: Callable[[str], None] = lambda _instance: None) -> str:
    """Make sure this node holds a current export of instance `source`.

    Submits OpBackupExport to --node (this node) and waits for it, unless
    an export exists and --refresh is not given.  `check` gets the
    instance's full name before any job.  Returns that name, which names
    its export directory.
    """
    client = client or cli.GetClient()
    node = _one_name(client.QueryNodes([opts.node], ["name"], False), "node", opts.node)
    here = this_node()
    if node.lower() != here.lower():
        raise OptionError("--node %s: the export must go to this node (%s), where it is"
                          " converted; run gnt-ovf there" % (node, here))
    instance = _one_name(client.QueryInstances([source], ["name"], False),
                         "instance", source)
    check(instance)  # everything the conversion will refuse, before the job
    config = os.path.join(export_dir, instance, ganeti_export.CONFIG_NAME)
    if os.path.isfile(config) and not opts.refresh:
        feedback("Using the existing export of %s (--refresh makes a new one)" % instance)
        return instance
    feedback("Exporting %s to %s" % (instance, node))
    op = opcodes.OpBackupExport(
        instance_name=instance, target_node=node, mode=constants.EXPORT_MODE_LOCAL,
        shutdown=opts.shutdown, shutdown_timeout=opts.shutdown_timeout,
        long_sleep=opts.long_sleep, compress=opts.transport_compression,
        remove_instance=False)
    cli.SubmitOpCode(op, cl=client, opts=opts)
    if not os.path.isfile(config):
        raise OptionError("%s: the export job succeeded but left no config.ini here"
                          % os.path.dirname(config))
    return instance
