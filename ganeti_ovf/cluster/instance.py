"""The instance a direct import creates, through Ganeti's jobs (luxi).

`gnt-ovf import --submit-import` (without --via-export) creates the
instance with OpInstanceCreate in create mode (no_install, not started, no
wait for a resync of empty disks), tagged MARKER while the import runs, and
activates its disks in the same job (OpInstanceActivateDisks gives each
disk's file or device path on the primary node), which importer.py then
writes; it finishes with OpInstanceDeactivateDisks and the marker's removal,
then, if asked, OpInstanceStartup (a start that fails leaves the instance
imported).  A failure before that removes the instance (OpInstanceRemove).
An instance still tagged MARKER with no live import behind it was left by a
killed run: it is never started by us, `gnt-ovf status` lists it and the
next import of its name refuses (or removes it with --force).

What Ganeti 3.0 guarantees about a new disk's content, per template
(ganeti/storage): file and sharedfile disks are FileStorage, created with
O_EXCL and truncate(), i.e. new sparse files that read as zeros; plain
(lvcreate), drbd, blockdev, rbd, ext and gluster promise nothing, unless
the cluster wipes new disks (prealloc_wipe_disks), which writes zeros over
every disk of every template before the create job returns.
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from ganeti import cli, constants, errors, opcodes

from ganeti_ovf.cluster import status
from ganeti_ovf.cluster.jobs import this_node
from ganeti_ovf.errors import OptionError, OvfError
from ganeti_ovf.model import VirtualSystem

MARKER = "ganeti-ovf:importing"
ZEROED_TEMPLATES = frozenset([constants.DT_FILE, constants.DT_SHARED_FILE])
Feedback = Callable[[str], None]


class DirectImportError(OvfError):
    """A direct import failed (the message says what became of the instance)."""

    created: Optional[str] = None  # an instance made on the way, to remove


@dataclass(frozen=True)
class Created:
    """The instance as Ganeti made it."""

    name: str
    primary: str
    disk_template: str
    zeroed: bool  # its new disks read as zeros


def first_line(err: BaseException) -> str:
    """A Ganeti error's message on one line."""
    if isinstance(err, errors.GenericError) and err.args:
        text = str(err.args[0])
    else:
        text = str(err) or type(err).__name__
    return (text.strip().splitlines() or [type(err).__name__])[0]


def _on_other_node(node: str) -> OptionError:
    return OptionError("the primary node is %s, not this node (%s): the disks are"
                       " written where they live, so run gnt-ovf on %s, or add"
                       " --via-export" % (node, this_node(), node))


def nics(system: VirtualSystem) -> List[dict]:
    """The NICs as OpInstanceCreate takes them (unset: the cluster's default)."""
    result = []
    for nic in system.nics:
        params = {constants.INIC_MAC: nic.mac or constants.VALUE_AUTO,
                  constants.INIC_IP: nic.ip, constants.INIC_NAME: nic.name,
                  constants.INIC_VLAN: nic.vlan}
        if nic.ganeti_network:
            params[constants.INIC_NETWORK] = nic.ganeti_network
        else:
            params.update({constants.INIC_MODE: nic.mode, constants.INIC_LINK: nic.link})
        result.append({key: value for key, value in params.items() if value is not None})
    return result


def create_opcode(system: VirtualSystem, sizes_mib: Sequence[int], opts,
                  pnode: Optional[str], snode: Optional[str]) -> opcodes.OpInstanceCreate:
    """The create-mode job for `system` with disks of `sizes_mib`."""
    settings = system.ganeti
    disks = [{constants.IDISK_SIZE: size} for size in sizes_mib]
    for params, disk in zip(disks, system.disks, strict=True):
        if disk.name:
            params[constants.IDISK_NAME] = disk.name
    return opcodes.OpInstanceCreate(
        mode=constants.INSTANCE_CREATE, instance_name=system.name,
        pnode=pnode, snode=snode, iallocator=opts.iallocator,
        disk_template=settings.disk_template, disks=disks, nics=nics(system),
        hypervisor=settings.hypervisor, hvparams=dict(settings.hypervisor_params),
        beparams=dict(settings.backend_params), osparams=dict(settings.os_params),
        osparams_private=dict(settings.os_private_params) or None,
        os_type=settings.os_name, no_install=True, start=False, wait_for_sync=False,
        tags=list(settings.tags) + [MARKER],
        name_check=opts.name_check, ip_check=opts.ip_check,
        conflicts_check=opts.conflicts_check, ignore_ipolicy=opts.ignore_ipolicy,
        identify_defaults=opts.identify_defaults)


def check_create(system: VirtualSystem, opts, feedback: Feedback) -> None:
    """Ask Ganeti to check, without doing it, the instance creation that an
    import through an export directory will submit once the disks are
    converted: node, OS, disk template, networks, MACs in use, the name
    and the space the disks need, before any disk byte is read."""
    pnode, snode = cli.SplitNodeOption(opts.node) if opts.node else (None, None)
    op = create_opcode(system, [max(1, -(-disk.capacity // 2 ** 20)) for disk in system.disks],
                       opts, pnode, snode)
    op.dry_run = True
    feedback("Checking the import with the cluster (a dry run)")
    try:
        # Without opts: --submit and --print-jobid are for the import job.
        cli.SubmitOpCode(op, feedback_fn=lambda message: None)
    except errors.GenericError as err:
        raise OptionError("the cluster would refuse to import %s: %s"
                          % (system.name, first_line(err)))


class InstanceJobs:
    """Ganeti's side of one direct import, through one luxi client."""

    def __init__(self, opts, feedback: Feedback, client=None) -> None:
        self.opts = opts
        self.feedback = feedback
        self.client = client or cli.GetClient()

    def run(self, *ops) -> list:
        """Submit `ops` as one job and wait for it; the opcodes' results."""
        return self._wait(self._submit(ops))

    def _submit(self, ops) -> int:
        cli.SetGenericOpcodeOpts(list(ops), self.opts)
        return cli.SendJob(list(ops), cl=self.client)

    def _wait(self, job_id: int) -> list:
        return cli.PollJob(job_id, cl=self.client,
                           feedback_fn=lambda message: self.feedback(str(message[2])))

    def _instance(self, name: str, fields: list) -> Optional[list]:
        try:
            found = self.client.QueryInstances([name], fields, False)
        except errors.OpPrereqError:
            return None
        return found[0] if found and found[0] and found[0][0] else None

    def placement(self) -> tuple:
        """(primary, secondary) for the opcode; refuses another primary.

        By default this node; with --iallocator the allocator decides and
        created() checks its choice.
        """
        if self.opts.iallocator:
            return None, None
        if not self.opts.node:
            return this_node(), None
        pnode, snode = cli.SplitNodeOption(self.opts.node)
        found = self.client.QueryNodes([pnode], ["name"], False)
        if not found or not found[0] or not found[0][0]:
            raise OptionError("node %r is not known to the cluster" % pnode)
        if found[0][0].lower() != this_node().lower():
            raise _on_other_node(found[0][0])
        return found[0][0], snode

    def clear_name(self, name: str, force: bool) -> None:
        """Refuse an existing instance `name`, unless it is a leftover of a
        killed import and `force` says to remove it."""
        found = self._instance(name, ["name", "tags"])
        if found is None:
            return
        if MARKER not in (found[1] or []):
            raise OptionError("instance %s already exists" % found[0])
        pid = status.import_running(found[0])
        if pid is not None:
            raise OptionError("instance %s is being imported right now (gnt-ovf, pid %d)"
                              % (found[0], pid))
        if not force:
            raise OptionError("instance %s is left over from an interrupted import (tag"
                              " %s): remove it with gnt-instance remove %s, or import"
                              " again with --force" % (found[0], MARKER, found[0]))
        self.feedback("Removing %s, left over from an interrupted import" % found[0])
        self.run(opcodes.OpInstanceRemove(instance_name=found[0], ignore_failures=True,
                                          shutdown_timeout=0))

    def create(self, system: VirtualSystem, sizes_mib: Sequence[int],
               pnode: Optional[str], snode: Optional[str]) -> Tuple[Created, List[str]]:
        """Create the instance (tagged MARKER) and activate its disks, in one
        job (one wait less); what Ganeti made and the disks' paths.

        Raises DirectImportError with `created` set when the instance exists
        but its disks could not be activated (the caller removes it).
        """
        job_id = self._submit([create_opcode(system, sizes_mib, self.opts, pnode, snode),
                               opcodes.OpInstanceActivateDisks(instance_name=system.name)])
        try:
            _nodes, disks = self._wait(job_id)
        except errors.GenericError as err:
            # Only this job's own creation may be undone, never a namesake.
            ((states,),) = self.client.QueryJobs([job_id], ["opstatus"])
            failure = DirectImportError("instance %s not created: %s"
                                        % (system.name, first_line(err)))
            if states and states[0] == constants.OP_STATUS_SUCCESS:
                failure = DirectImportError("instance %s: disks not activated: %s"
                                            % (system.name, first_line(err)))
                failure.created = system.name
            raise failure from None
        found = self._instance(system.name, ["name", "pnode", "disk_template"])
        if found is None:
            failure = DirectImportError("instance %s: created, but the cluster does not"
                                        " list it" % system.name)
            failure.created = system.name
            raise failure
        wiped = self.client.QueryClusterInfo().get("prealloc_wipe_disks", False)
        created = Created(name=found[0], primary=found[1], disk_template=found[2],
                          zeroed=found[2] in ZEROED_TEMPLATES or bool(wiped))
        paths = []
        for node, iv_name, path in disks:
            if not path:
                raise DirectImportError("instance %s: disk %s on %s has no local path"
                                        % (created.name, iv_name, node))
            paths.append(path)
        return created, paths

    def check_local(self, created: Created) -> None:
        if created.primary.lower() != this_node().lower():
            raise _on_other_node(created.primary)

    def finish(self, name: str) -> None:
        """Deactivate the disks and drop the marker: the import is complete."""
        self.run(opcodes.OpInstanceDeactivateDisks(instance_name=name),
                 opcodes.OpTagsDel(kind=constants.TAG_INSTANCE, name=name, tags=[MARKER]))

    def start(self, name: str) -> None:
        """Start the imported instance; a failure leaves it imported, stopped."""
        try:
            self.run(opcodes.OpInstanceStartup(instance_name=name))
        except errors.GenericError as err:
            raise DirectImportError("instance %s imported, but not started: %s"
                                    % (name, first_line(err))) from None

    def remove(self, name: str) -> Optional[str]:
        """Remove the half-created instance; None, or why it could not be."""
        try:
            self.run(opcodes.OpInstanceRemove(instance_name=name, ignore_failures=True,
                                              shutdown_timeout=0))
        except (errors.GenericError, OSError) as err:
            return first_line(err)
        return None

    def leftovers(self) -> list:
        """Names of the instances that carry MARKER."""
        rows = self.client.QueryInstances([], ["name", "tags"], False)
        return sorted(row[0] for row in rows if row and MARKER in (row[1] or []))

