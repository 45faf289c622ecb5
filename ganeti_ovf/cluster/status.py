"""Status of the export hook's background conversions, and of direct
imports: one JSON file each.

The hook (hook.py) writes `<status dir>/<conversion id>.json` when it queues
a conversion and rewrites it (atomically: temporary file, rename) as the
worker moves through queued → running → done | failed | superseded.
`gnt-ovf status` reads them back.  A queued or running record whose worker
process is gone (killed, node rebooted) is reported as "lost".  A direct
import keeps one record, `import-<instance>`, running while it works; an
instance the cluster still tags as being imported with no live import
behind it is listed as "interrupted" (cluster/instance.py).
"""

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from ganeti import pathutils

from ganeti_ovf.errors import OvfError

STATUS_DIR = os.path.join(pathutils.DATA_DIR, "ovf-status")
SUFFIX = ".json"
QUEUED, RUNNING, DONE, FAILED, SUPERSEDED, LOST, INTERRUPTED = (
    "queued", "running", "done", "failed", "superseded", "lost", "interrupted")
IMPORT_PREFIX = "import-"
STATES = (QUEUED, RUNNING, DONE, FAILED, SUPERSEDED)
FINISHED = (DONE, FAILED, SUPERSEDED)
# Finished records kept per instance; older ones are pruned by the hook.
KEEP_FINISHED = 20
_MAX_RECORD = 64 * 1024


# What each field of a record file must hold (None: not yet known).
_FIELD_TYPES = {
    "conversion_id": str, "instance": str, "state": str,
    "created": (int, float), "updated": (int, float),
    "pid": (int, type(None)), "pid_start": (str, type(None)),
    "output": (str, type(None)), "error": (str, type(None)),
    "progress": (str, type(None)),
}


class StatusError(OvfError):
    """A status file cannot be written or read."""


@dataclass(frozen=True)
class Conversion:
    """One conversion started by the export hook."""

    conversion_id: str
    instance: str
    state: str
    created: float
    updated: float
    pid: Optional[int] = None
    pid_start: Optional[str] = None  # the worker's /proc start time: pid reuse
    output: Optional[str] = None
    error: Optional[str] = None
    progress: Optional[str] = None  # while running: bytes done, rate, time left

    def with_state(self, state: str, **changes) -> "Conversion":
        return dataclasses.replace(self, state=state, updated=time.time(), **changes)


def process_start(pid: int) -> Optional[str]:
    """The start time of `pid` (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = data.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def write(status_dir: str, record: Conversion) -> str:
    """Write (or replace) the record's file atomically; return its path."""
    if record.state not in STATES:
        raise StatusError("%s: unknown state %r" % (record.conversion_id, record.state))
    path = os.path.join(status_dir, record.conversion_id + SUFFIX)
    try:
        _replace(status_dir, path, dataclasses.asdict(record))
    except OSError as err:
        raise StatusError("%s: cannot write status: %s" % (path, err.strerror))
    return path


def _replace(status_dir: str, path: str, fields: dict) -> None:
    """Write `fields` as JSON to `path` in `status_dir`, atomically
    (temporary file, fsync, rename): readers never see half a file."""
    data = json.dumps(fields, sort_keys=True).encode("utf-8")
    os.makedirs(status_dir, mode=0o755, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=status_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.rename(temp, path)
    except BaseException:
        if os.path.lexists(temp):
            os.unlink(temp)
        raise


def read(path: str) -> Conversion:
    """One record; StatusError if the file is not one of ours."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_RECORD + 1)
    except OSError as err:
        raise StatusError("%s: cannot read: %s" % (path, err.strerror))
    try:
        if len(raw) > _MAX_RECORD:
            raise ValueError("too large")
        fields = json.loads(raw.decode("utf-8"))
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        record = Conversion(**fields)
        for name, kinds in _FIELD_TYPES.items():
            if not isinstance(getattr(record, name), kinds) \
                    or isinstance(getattr(record, name), bool):
                raise ValueError("%s is not of the expected type" % name)
    except (ValueError, TypeError) as err:
        raise StatusError("%s: not a conversion status: %s" % (path, err))
    if record.state not in STATES:
        raise StatusError("%s: unknown state %r" % (path, record.state))
    # The id names the file: a record that names another file (a path, a
    # "..") would make pruning delete outside the status directory.
    if record.conversion_id + SUFFIX != os.path.basename(path) \
            or os.sep in record.conversion_id:
        raise StatusError("%s: its conversion id %r does not name this file"
                          % (path, record.conversion_id))
    return record


def list_conversions(status_dir: str = STATUS_DIR) -> tuple:
    """(records oldest first, unreadable files as error lines)."""
    try:
        names = sorted(os.listdir(status_dir))
    except FileNotFoundError:
        return [], []
    except OSError as err:
        raise StatusError("%s: cannot list: %s" % (status_dir, err.strerror))
    records, problems = [], []
    for name in names:
        if name.startswith(".") or not name.endswith(SUFFIX):
            continue
        try:
            records.append(read(os.path.join(status_dir, name)))
        except StatusError as err:
            problems.append(str(err))
    records.sort(key=lambda record: (record.created, record.conversion_id))
    return records, problems


def effective_state(record: Conversion) -> str:
    """The record's state, or "lost" if its worker died before finishing."""
    if record.state in FINISHED or record.pid is None:
        return record.state
    start = process_start(record.pid)
    if start is None or (record.pid_start is not None and start != record.pid_start):
        return LOST
    return record.state


def prune(status_dir: str, instance: str, keep: int = KEEP_FINISHED) -> None:
    """Remove the oldest finished records of `instance` beyond `keep`."""
    records, _problems = list_conversions(status_dir)
    finished = [r for r in records if r.instance == instance and r.state in FINISHED]
    for record in finished[:max(0, len(finished) - keep)]:
        try:
            os.unlink(os.path.join(status_dir, record.conversion_id + SUFFIX))
        except FileNotFoundError:
            pass


def record_import(instance: str, state: str, status_dir: str = STATUS_DIR,
                  output: Optional[str] = None, error: Optional[str] = None) -> None:
    """Write the direct import's record of `instance` (this process's)."""
    pid = os.getpid()
    now = time.time()
    write(status_dir, Conversion(
        conversion_id=IMPORT_PREFIX + instance, instance=instance, state=state,
        created=now, updated=now, pid=pid, pid_start=process_start(pid),
        output=output, error=error))


def import_running(instance: str, status_dir: str = STATUS_DIR) -> Optional[int]:
    """The pid of a live direct import of `instance` on this node, if any."""
    path = os.path.join(status_dir, IMPORT_PREFIX + instance + SUFFIX)
    if not os.path.exists(path):
        return None
    record = read(path)
    return record.pid if effective_state(record) == RUNNING else None


def with_leftovers(rows: list, leftovers: list) -> list:
    """`rows` plus the instances left tagged by an interrupted import."""
    by_id = {row["conversion_id"]: row for row in rows}
    for instance in leftovers:
        row = by_id.get(IMPORT_PREFIX + instance)
        if row is not None and row["state"] == RUNNING:
            continue
        reason = ("left by an interrupted import: gnt-instance remove %s, or"
                  " gnt-ovf import --force" % instance)
        if row is None:
            row = {"conversion_id": IMPORT_PREFIX + instance, "instance": instance,
                   "created": None, "updated": None, "pid": None, "pid_start": None,
                   "output": None}
            rows.append(row)
        row.update(state=INTERRUPTED, error=reason)
    return rows


def _when(timestamp: Optional[float]) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def to_rows(records: list) -> list:
    """Records as plain dicts (the JSON output), with the effective state."""
    rows = []
    for record in records:
        row = dataclasses.asdict(record)
        row["state"] = effective_state(record)
        rows.append(row)
    return rows


def to_text(rows: list) -> str:
    """A table: id, instance, state, last update, then output or reason."""
    if not rows:
        return "No conversions."
    table = [("Conversion", "Instance", "State", "Updated", "Output/Reason")]
    for row in rows:
        detail = row["output"] if row["state"] == DONE else (
            row["error"] or (row.get("progress") or "" if row["state"] == RUNNING else ""))
        table.append((row["conversion_id"], row["instance"], row["state"],
                      _when(row["updated"]), detail))
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    lines = []
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line[:4], widths, strict=True)]
        lines.append("  ".join(cells + [line[4]]).rstrip())
    return "\n".join(lines)


# The last export the hook left alone, and why: hidden from list_conversions
# by its leading dot, shown by `gnt-ovf status`.
SKIP_FILE = ".last-skip.json"


def write_skip(status_dir: str, instance: str, reason: str,
               now: Optional[float] = None) -> None:
    """Record why the hook did not convert `instance`'s export (best effort:
    a hook that has nothing to do must never fail because of this)."""
    try:
        _replace(status_dir, os.path.join(status_dir, SKIP_FILE),
                 {"instance": instance, "reason": reason,
                  "time": time.time() if now is None else now})
    except OSError:
        pass


def read_skip(status_dir: str = STATUS_DIR) -> Optional[dict]:
    """The last skip record, or None (absent or unreadable)."""
    try:
        fd = os.open(os.path.join(status_dir, SKIP_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            skip = json.loads(handle.read(_MAX_RECORD).decode("utf-8"))
        if not (isinstance(skip, dict) and isinstance(skip.get("instance"), str)
                and isinstance(skip.get("reason"), str)
                and isinstance(skip.get("time"), (int, float))):
            return None
    except (OSError, ValueError):
        return None
    return {"instance": skip["instance"], "reason": skip["reason"], "time": skip["time"]}


def skip_to_text(skip: dict) -> str:
    return "Last skipped export: %s at %s: %s" % (skip["instance"], _when(skip["time"]),
                                                  skip["reason"])
