"""The instance-export post hook: convert each new export in the background.

Ganeti runs hooks/ovf-export (installed as instance-export-post.d/
ganeti-ovf-export) on the master, the primary and the target node after a
successful `gnt-backup export`, synchronously, with only GANETI_* variables.
This module owns what happens then:

1. decide: act only on the export node, in the post phase of
   OP_BACKUP_EXPORT in local mode, when the configuration
   (/etc/ganeti/ovf-export.conf) enables it and the instance's tags match
   (the rules and the configuration: cluster/hook_config.py);
2. snapshot: hard-link the export's files into a private spool directory
   (same filesystem, outside the export directory), because the next
   `gnt-backup export` of the instance deletes and replaces them; where
   links are impossible the files are opened instead and copied later from
   the open descriptors;
3. detach: double fork into a new session, stdio on /dev/null, and return
   at once so the Ganeti job is not held up;
4. convert (the worker): wait for the instance's lock (one writer per
   instance; conversions queue), give up if a newer export of the instance
   is already queued or done ("superseded"), run exporter.export_package,
   publish `<instance>-<UTC time>[.ova]` in the output directory, remove the
   oldest beyond `keep`.  Every step is logged to
   /var/log/ganeti/ovf-export.log and recorded in cluster/status.py's files.
"""

import fcntl
import logging
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from ganeti import constants, netutils, pathutils, utils

from ganeti_ovf import exporter, publish
from ganeti_ovf.cluster import status
from ganeti_ovf.cluster.hook_config import (CONFIG_ENV, CONFIG_PATH, HookConfig, HookError,
                                            HookEvent, check_instance_name, config_skip_reason,
                                            is_this_node, load_config, skip_reason)
from ganeti_ovf.errors import OvfError, printable

LOG_FILE = os.path.join(pathutils.LOG_DIR, "ovf-export.log")
PROGRAM = "ganeti-ovf-export"
_STAMP = "%Y%m%dT%H%M%SZ"
_STAMP_RE = r"\d{8}T\d{6}Z"
_COPY_BLOCK = 1024 * 1024


# ------------------------------------------------------------ the conversion


@dataclass(frozen=True)
class Job:
    """One conversion: where its snapshot is and what to make of it."""

    record: status.Conversion
    config: HookConfig
    spool: str  # the private snapshot of the export directory
    pending: tuple = ()  # (file name, open fd): copied into spool by the worker
    status_dir: str = status.STATUS_DIR
    export_dir: str = pathutils.EXPORT_DIR


def new_record(instance: str, now: Optional[float] = None) -> status.Conversion:
    now = time.time() if now is None else now
    stamp = time.strftime(_STAMP, time.gmtime(now))
    return status.Conversion(conversion_id="%s-%s-%d" % (instance, stamp, os.getpid()),
                             instance=instance, state=status.QUEUED, created=now,
                             updated=now)


def snapshot(export_path: str, spool: str) -> tuple:
    """Hard-link the export's files into `spool`; return (name, fd) pairs of
    the files that could not be linked (opened instead, for the worker)."""
    os.makedirs(spool, mode=0o700)
    pending = []
    with os.scandir(export_path) as entries:
        files = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
    if "config.ini" not in files:
        raise HookError("%s: no config.ini in the export" % export_path)
    for name in files:
        source = os.path.join(export_path, name)
        try:
            os.link(source, os.path.join(spool, name), follow_symlinks=False)
        except OSError:
            # Another filesystem (EXDEV) or links refused: the open file
            # stays readable even after Ganeti deletes it.
            pending.append((name, os.open(source, os.O_RDONLY | os.O_NOFOLLOW)))
    return tuple(pending)


def _copy_fd(fd: int, dest: str) -> None:
    """Copy an open file, leaving holes where the source reads as zeros, with
    the source's permissions (the export's mode is derived from them)."""
    os.lseek(fd, 0, os.SEEK_SET)
    mode = stat.S_IMODE(os.fstat(fd).st_mode) & 0o666
    out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.fchmod(out_fd, mode | 0o600)
    with os.fdopen(out_fd, "wb") as out:
        while True:
            block = os.read(fd, _COPY_BLOCK)
            if not block:
                break
            if block.count(0) == len(block):
                out.seek(len(block), os.SEEK_CUR)
            else:
                out.write(block)
        out.truncate()


def output_name(record: status.Conversion, ova: bool) -> str:
    stamp = time.strftime(_STAMP, time.gmtime(record.created))
    return "%s-%s%s" % (record.instance, stamp, ".ova" if ova else "")


def rotate(output_dir: str, instance: str, keep: int) -> list:
    """Remove `instance`'s outputs beyond the newest `keep`; return them."""
    if keep <= 0:
        return []
    pattern = re.compile(re.escape(instance) + "-(" + _STAMP_RE + r")(\.ova)?$")
    found = sorted((match.group(1), name) for name in os.listdir(output_dir)
                   for match in [pattern.match(name)] if match)
    removed = []
    for _stamp, name in found[:max(0, len(found) - keep)]:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        removed.append(path)
    return removed


def clean_spool(spool_dir: str, status_dir: str) -> list:
    """Remove snapshots whose conversion finished or died; return them."""
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    records = {record.conversion_id: record
               for record in status.list_conversions(status_dir)[0]}
    removed = []
    for name in names:
        record = records.get(name)
        if record is None or status.effective_state(record) in status.FINISHED + (
                status.LOST,):
            shutil.rmtree(os.path.join(spool_dir, name), ignore_errors=True)
            removed.append(name)
    return removed


def _superseded(job: Job) -> bool:
    """Whether a newer export of the instance is queued, running or done."""
    records, _problems = status.list_conversions(job.status_dir)
    return any(other.instance == job.record.instance
               and other.created > job.record.created
               and status.effective_state(other) in (status.QUEUED, status.RUNNING,
                                                     status.DONE)
               for other in records)


def _instance_lock(job: Job) -> int:
    """Block until this instance's conversions are ours alone; return the fd."""
    os.makedirs(job.status_dir, mode=0o755, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job.record.instance)
    fd = os.open(os.path.join(job.status_dir, ".lock-" + safe),
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


class _StatusProgress:
    """A stream for progress.Progress that puts each line in the running
    conversion's status record, where `gnt-ovf status` shows it."""

    def __init__(self, job: Job, record: status.Conversion) -> None:
        self.job, self.record = job, record

    def write(self, text: str) -> None:
        text = text.strip()
        if text:
            self.record = self.record.with_state(status.RUNNING, progress=text)
            try:
                status.write(self.job.status_dir, self.record)
            except status.StatusError as err:  # progress is never worth failing for
                logging.warning("%s", err)

    def flush(self) -> None:
        pass


def _convert(job: Job, progress_stream=None) -> str:
    config, record = job.config, job.record
    for name, fd in job.pending:
        _copy_fd(fd, os.path.join(job.spool, name))
        os.close(fd)
    final = output_name(record, config.ova)
    output_dir = publish.output_directory(config.output_dir)
    # Staging directories of killed workers (their flock is free).
    for stale in publish.clean_stale_staging(output_dir):
        logging.info("%s: removed stale staging %s", record.conversion_id, stale)
    with publish.Staging(output_dir, final) as staging:
        request = exporter.ExportRequest(
            source=job.spool, output_dir=staging.path, export_dir=job.export_dir,
            disk_format=config.disk_format, compress=config.compress,
            compress_level=config.compress_level, ova=config.ova,
            external=config.external, manifest_algorithm=config.manifest_algorithm,
            ovf_version=config.ovf_version)
        result = exporter.export_package(
            request, lambda message: logging.info("%s: %s", record.conversion_id,
                                                  printable(message)),
            progress_stream)
        if config.ova:  # as private as the instance's dumps (result.mode)
            return staging.publish_file(os.path.basename(result.path), mode=result.mode)
        publish.rename_noreplace(result.path, staging.target)
        return staging.target


def claim(job: Job) -> status.Conversion:
    """Record this process as the conversion's worker (for "lost")."""
    record = job.record.with_state(status.QUEUED, pid=os.getpid(),
                                   pid_start=status.process_start(os.getpid()))
    status.write(job.status_dir, record)
    return record


def run_job(job: Job) -> status.Conversion:
    """The worker: queue on the instance lock, convert, record the outcome."""
    record = job.record
    try:
        record = claim(job)
        lock = _instance_lock(job)
        try:
            if _superseded(job):
                logging.info("%s: superseded by a newer export of %s",
                             record.conversion_id, record.instance)
                record = record.with_state(status.SUPERSEDED,
                                           error="a newer export of the instance is queued")
                status.write(job.status_dir, record)
                return record
            record = record.with_state(status.RUNNING)
            status.write(job.status_dir, record)
            logging.info("%s: converting the export of %s", record.conversion_id,
                         record.instance)
            output = _convert(job, _StatusProgress(job, record))
            record = record.with_state(status.DONE, output=output, progress=None)
            status.write(job.status_dir, record)
            logging.info("%s: done: %s", record.conversion_id, output)
            for old in rotate(job.config.output_dir, record.instance, job.config.keep):
                logging.info("%s: removed older output %s", record.conversion_id, old)
            status.prune(job.status_dir, record.instance)
        finally:
            os.close(lock)
    except Exception as err:  # the worker has no caller: record every failure
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            reason = "%s%s" % (err.strerror, ": %s" % err.filename if err.filename else "")
        reason = printable(reason)
        logging.error("%s: conversion of %s failed: %s", record.conversion_id,
                      record.instance, reason,
                      exc_info=not isinstance(err, OvfError))
        record = record.with_state(status.FAILED, error=reason)
        try:
            status.write(job.status_dir, record)
        except status.StatusError as write_err:
            logging.error("%s", write_err)
    finally:
        for _name, fd in job.pending:
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(job.spool, ignore_errors=True)
    return record


# ------------------------------------------------------------ process


def setup_logging(log_file: Optional[str] = None) -> None:
    """Log in Ganeti's format to LOG_FILE; nowhere if it cannot be opened."""
    try:
        utils.SetupLogging(log_file or LOG_FILE, PROGRAM, syslog=constants.SYSLOG_NO)
    except EnvironmentError:
        logging.getLogger("").addHandler(logging.NullHandler())


def _close_logging() -> None:
    root = logging.getLogger("")
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)


def detach(work: Callable[[], object], keep_fds: tuple = (),
           ready: Optional[Callable[[], object]] = None) -> None:
    """Run `work` in a grandchild in its own session.

    Returns once the grandchild has run `ready` (or died), which is quick.
    """
    _close_logging()  # the grandchild opens its own log file
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)
        # EOF: the grandchild closed its end after `ready`, or is gone.
        while os.read(read_end, 1):
            pass
        os.close(read_end)
        return
    code = 1
    try:
        os.close(read_end)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Ganeti reads the hook's output until every copy of the pipe is
        # closed: keep nothing the hook inherited.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep_fds and fd != write_end:
                try:
                    os.close(fd)
                except OSError:
                    pass
        setup_logging()
        if ready is not None:
            ready()
        os.close(write_end)
        work()
        code = 0
    finally:
        os._exit(code)


def _log_skip(event: HookEvent, reason: str) -> None:
    """One log line saying why this export is not converted; `gnt-ovf status`
    shows the last one."""
    logging.info("Not converting the export of %s: %s", event.instance, reason)
    status.write_skip(status.STATUS_DIR, event.instance, reason)


def main(env: Optional[Mapping[str, str]] = None,
         this_node: Optional[str] = None) -> int:
    """The hook: decide, snapshot, detach the worker; 0 unless misconfigured."""
    env = os.environ if env is None else env
    event = HookEvent.from_env(env)
    node = this_node or netutils.Hostname.GetSysName()
    reason = skip_reason(event, node)
    if reason is not None:
        # Ganeti runs the hook on the master, the primary and the target
        # node: say why on the nodes that are not the target.  Any other
        # reason (phase, opcode, mode) is not an export at all: stay silent.
        if event.op_code == "OP_BACKUP_EXPORT" and not is_this_node(event.export_node, node) \
                and event.phase == constants.HOOKS_PHASE_POST:
            setup_logging()
            _log_skip(event, reason)
        return 0
    config_path = env.get(CONFIG_ENV) or CONFIG_PATH
    setup_logging()
    try:
        config = load_config(config_path)
        reason = config_skip_reason(event, config)
        if reason is not None:
            _log_skip(event, reason)
            return 0
        instance = check_instance_name(event.instance)
        # The record comes first and names this process: a spool directory
        # without a live record is garbage (clean_spool).
        record = new_record(instance).with_state(
            status.QUEUED, pid=os.getpid(), pid_start=status.process_start(os.getpid()))
        status.write(status.STATUS_DIR, record)
        for removed in clean_spool(config.spool_dir, status.STATUS_DIR):
            logging.info("Removed the snapshot of a dead conversion: %s", removed)
        spool = os.path.join(config.spool_dir, record.conversion_id)
        os.makedirs(config.spool_dir, mode=0o700, exist_ok=True)
        try:
            pending = snapshot(os.path.join(pathutils.EXPORT_DIR, instance), spool)
        except (OvfError, OSError) as err:
            shutil.rmtree(spool, ignore_errors=True)
            status.write(status.STATUS_DIR, record.with_state(
                status.FAILED, error="cannot snapshot the export: %s" % err))
            raise
    except (OvfError, OSError) as err:
        message = "ganeti-ovf export hook: %s" % printable(str(err))
        logging.error("%s", message)
        sys.stderr.write(message + "\n")  # Ganeti shows it in the job's warning
        return 1
    logging.info("%s: queued the conversion of %s's export (%s)", record.conversion_id,
                 instance, "copied" if pending else "hard-linked")
    job = Job(record=record, config=config, spool=spool, pending=pending)
    # The hook returns only once the worker has put its own pid in the
    # record, so the record never names a dead process while work remains.
    detach(lambda: run_job(job), keep_fds=tuple(fd for _name, fd in pending),
           ready=lambda: claim(job))
    return 0
