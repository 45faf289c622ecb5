"""The export hook's runner (ganeti_ovf/hook.py) and its status files
(cluster/status.py).

The configuration and decisions are in cluster/test_hook_config.py; the worker runs
synchronously on an export made by gnt-ovf import; the detached start runs
in a subprocess; and on the real cluster `gnt-backup export` must leave an
OVA that imports back into an instance with the same disk bytes, while a
conversion that cannot be written leaves a "failed" status and a log line.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
from nscluster import NODE, ROOT
from packaging import MIB, build_package, run_gnt_ovf, sha256_file

from ganeti_ovf import exporter, hook
from ganeti_ovf.cluster import hook_config, status
from ganeti_ovf.cluster.hook_config import HookConfig, HookError, HookEvent
from ganeti_ovf.progress import Progress

THIS = "node1.example.com"
EXPORT_ENV = {
    "GANETI_HOOKS_PHASE": "post", "GANETI_OP_CODE": "OP_BACKUP_EXPORT",
    "GANETI_INSTANCE_NAME": "inst1.example.com", "GANETI_EXPORT_NODE": THIS,
    "GANETI_EXPORT_MODE": "local", "GANETI_INSTANCE_TAGS": "web ovf-export",
}


def event(**changes):
    env = dict(EXPORT_ENV)
    env.update(changes)
    return HookEvent.from_env(env)


@pytest.mark.parametrize("changes", [
    {"GANETI_EXPORT_NODE": "node2.example.com"},
    {"GANETI_HOOKS_PHASE": "pre"},
    {"GANETI_OP_CODE": "OP_INSTANCE_CREATE"},
    {"GANETI_EXPORT_MODE": "remote"},
    {"GANETI_EXPORT_NODE": ""},
], ids=["other-node", "pre-phase", "other-opcode", "remote", "no-node"])
def test_no_op_outside_a_local_export_here(changes, tmp_path, monkeypatch):
    assert hook_config.skip_reason(event(**changes), THIS) is not None
    # main() returns before reading anything: not even a broken config.
    config = tmp_path / "ovf-export.conf"
    config.write_text("not an ini file")
    env = dict(EXPORT_ENV, **changes, GANETI_OVF_EXPORT_CONF=str(config))
    monkeypatch.setattr(status, "STATUS_DIR", str(tmp_path / "status"))
    elsewhere = "GANETI_EXPORT_NODE" in changes  # an export, to another node
    monkeypatch.setattr(hook, "setup_logging",
                        (lambda: None) if elsewhere else (lambda: pytest.fail("logging set up")))
    assert hook.main(env, this_node=THIS) == 0
    skip = status.read_skip(str(tmp_path / "status"))
    assert (skip is not None and "not to this node" in skip["reason"]) == elsewhere


def test_skips_are_logged_with_their_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(status, "STATUS_DIR", str(tmp_path / "status"))
    monkeypatch.setattr(hook, "setup_logging", lambda: None)
    caplog.set_level("INFO")
    # The hook also runs on the master and the primary: they say why not.
    other = dict(EXPORT_ENV, GANETI_EXPORT_NODE="node2.example.com")
    assert hook.main(other, this_node=THIS) == 0
    assert "Not converting the export of inst1.example.com: the export went to" \
        " 'node2.example.com', not to this node" in caplog.text
    # The configuration leaves it alone: not enabled, or the tag is missing.
    config = tmp_path / "ovf-export.conf"
    config.write_text("[ovf-export]\nenabled = no\n")
    assert hook.main(dict(EXPORT_ENV, GANETI_OVF_EXPORT_CONF=str(config)),
                     this_node=THIS) == 0
    assert status.read_skip(str(tmp_path / "status"))["reason"] == "the hook is not enabled"
    config.write_text("[ovf-export]\nenabled = yes\ntags = ovf-only\n")
    assert hook.main(dict(EXPORT_ENV, GANETI_OVF_EXPORT_CONF=str(config)),
                     this_node=THIS) == 0
    skip = status.read_skip(str(tmp_path / "status"))
    assert skip["instance"] == "inst1.example.com"
    assert skip["reason"] == "instance inst1.example.com has none of the tags ovf-only"
    assert status.skip_to_text(skip).startswith("Last skipped export: inst1.example.com at ")
    assert caplog.text.count("Not converting the export of") == 3
    assert status.list_conversions(str(tmp_path / "status")) == ([], [])


def test_hook_without_its_library_exits_quietly(tmp_path):
    # After `dpkg -r ganeti-ovf` the hook stays behind as a conffile: it must
    # not fail every later gnt-backup export.
    env = {"PATH": "/usr/bin:/bin", "GANETI_OVF_PYTHONPATH": str(tmp_path)}
    script = tmp_path / "ovf-export"
    # A copy of the hook that cannot see the checkout's library.
    script.write_text(open(os.path.join(ROOT, "hooks", "ovf-export")).read())
    result = subprocess.run(["/usr/bin/python3", "-I", str(script)], env=env,
                            capture_output=True, text=True, check=False, cwd=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_refused_config_fails_the_hook_with_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "ovf-export.conf"
    config.write_text("[ovf-export]\nenabled = yes\noutput_dir = /var/lib/ganeti/export/o\n")
    monkeypatch.setattr(hook, "setup_logging", lambda: None)
    env = dict(EXPORT_ENV, GANETI_OVF_EXPORT_CONF=str(config))
    assert hook.main(env, this_node=THIS) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside Ganeti's export directory" in err


# ------------------------------------------------------------ status files


def test_status_round_trip_and_listing(tmp_path):
    directory = str(tmp_path / "status")
    first = hook.new_record("a.example.com", now=1000.0)
    second = hook.new_record("b.example.com", now=2000.0).with_state(
        status.FAILED, error="disk full")
    status.write(directory, second)
    status.write(directory, first)
    (tmp_path / "status" / "junk.json").write_text("{")
    records, problems = status.list_conversions(directory)
    assert [r.conversion_id for r in records] == [first.conversion_id, second.conversion_id]
    assert records[0] == first
    assert len(problems) == 1 and "junk.json: not a conversion status" in problems[0]
    text = status.to_text(status.to_rows(records))
    assert "disk full" in text.splitlines()[2] and "failed" in text
    assert status.list_conversions(str(tmp_path / "absent")) == ([], [])


@pytest.mark.parametrize("fields", [
    {"created": "yesterday"}, {"updated": None}, {"pid": "1"}, {"pid": True},
    {"instance": 7}, {"error": ["x"]}, {"state": "done", "output": {"a": 1}},
], ids=["created-text", "updated-null", "pid-text", "pid-bool", "instance-number",
        "error-list", "output-object"])
def test_malformed_status_file_skipped_with_a_warning(tmp_path, fields):
    directory = tmp_path / "status"
    good = hook.new_record("a.example.com", now=1000.0)
    status.write(str(directory), good)
    bad = dict(dataclasses.asdict(hook.new_record("b.example.com", now=2000.0)), **fields)
    (directory / (bad["conversion_id"] + ".json")).write_text(json.dumps(bad))
    records, problems = status.list_conversions(str(directory))
    assert records == [good]
    (problem,) = problems
    assert "not a conversion status" in problem
    status.to_text(status.to_rows(records))  # and the listing still works
    # The command as a whole: a warning, the good record, exit 0.
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n"
         "from ganeti_ovf.cluster import status\n"
         "status.STATUS_DIR = %r\n"
         "from ganeti_ovf import cli\n"
         "sys.argv = ['gnt-ovf', 'status']\n"
         "sys.exit(cli.Main())" % (ROOT, str(directory))],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "WARNING: " in result.stderr and "a.example.com" in result.stdout


def test_prune_never_deletes_outside_the_status_directory(tmp_path):
    directory = tmp_path / "status"
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    for index in range(3):
        status.write(str(directory), hook.new_record("a", now=1000.0 + index).with_state(
            status.DONE, output="/x"))
    forged = dict(dataclasses.asdict(hook.new_record("a", now=10.0).with_state(
        status.DONE, output="/y")), conversion_id="../victim")
    (directory / "forged.json").write_text(json.dumps(forged))
    records, problems = status.list_conversions(str(directory))
    assert len(records) == 3
    assert "conversion id '../victim' does not name this file" in problems[0]
    status.prune(str(directory), "a", keep=0)
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(directory)) == ["forged.json"]


def test_dead_worker_reported_lost(tmp_path):
    child = subprocess.Popen(["true"])
    child.wait()
    record = hook.new_record("a.example.com").with_state(status.RUNNING, pid=child.pid,
                                                         pid_start="1")
    assert status.effective_state(record) == status.LOST
    alive = record.with_state(status.RUNNING, pid=os.getpid(),
                              pid_start=status.process_start(os.getpid()))
    assert status.effective_state(alive) == status.RUNNING
    assert status.effective_state(record.with_state(status.DONE)) == status.DONE


def test_prune_keeps_the_newest_finished(tmp_path):
    directory = str(tmp_path)
    for index in range(5):
        status.write(directory, hook.new_record("a", now=1000.0 + index).with_state(
            status.DONE, output="/x%d" % index))
    status.write(directory, hook.new_record("a", now=2000.0))  # queued: never pruned
    status.prune(directory, "a", keep=2)
    records, _problems = status.list_conversions(directory)
    assert [r.output for r in records] == ["/x3", "/x4", None]


# ------------------------------------------------------------ the worker


@pytest.fixture(scope="module")
def ganeti_export_dir(tmp_path_factory):
    """A Ganeti export (config.ini + raw dump) made by gnt-ovf import."""
    work = tmp_path_factory.mktemp("export")
    package, raws = build_package(str(work / "pkg"), disks=(("raw", 16 * MIB),))
    run_gnt_ovf("import", "--output-dir", work / "exports", "--os-type", "noop",
                "--name", "inst1.example.com", package, check=True)
    return str(work / "exports" / "inst1.example.com"), sha256_file(raws[0])


def make_job(tmp_path, export_path, now, **config):
    config.setdefault("output_dir", str(tmp_path / "ovf"))
    record = hook.new_record("inst1.example.com", now=now)
    spool = str(tmp_path / "spool" / record.conversion_id)
    os.makedirs(os.path.dirname(spool), exist_ok=True)
    pending = hook.snapshot(export_path, spool)
    job = hook.Job(record=record, config=HookConfig(enabled=True, **config), spool=spool,
                   pending=pending, status_dir=str(tmp_path / "status"),
                   export_dir=str(tmp_path / "no-export-dir"))
    status.write(job.status_dir, record)
    return job


def imported_digest(tmp_path, package):
    out = tmp_path / "reimport"
    run_gnt_ovf("import", "--output-dir", out, "--name", "back.example.com", package,
                check=True)
    return sha256_file(str(out / "back.example.com" / "disk0.raw"))


def test_worker_converts_a_snapshot_and_rotates(tmp_path, ganeti_export_dir):
    export_path, digest = ganeti_export_dir
    first = make_job(tmp_path, export_path, now=1_700_000_000.0)
    second = make_job(tmp_path, export_path, now=1_700_000_100.0)
    # The snapshot holds links, not the export: no bytes were copied.
    dump = os.path.join(second.spool, "disk0.raw")
    assert os.stat(dump).st_ino == os.stat(os.path.join(export_path, "disk0.raw")).st_ino
    assert second.pending == ()

    # The older export is superseded by the newer one, already queued.
    assert hook.run_job(first).state == status.SUPERSEDED
    assert not os.path.exists(first.spool)
    done = hook.run_job(second)
    assert done.state == status.DONE, done.error
    assert done.output == str(tmp_path / "ovf" / "inst1.example.com-20231114T221500Z.ova")
    assert not os.path.exists(second.spool)
    assert imported_digest(tmp_path, done.output) == digest

    third = make_job(tmp_path, export_path, now=1_700_000_200.0, keep=1)
    assert hook.run_job(third).state == status.DONE
    # keep = 1: the previous package is gone, nothing else is left behind.
    assert sorted(os.listdir(tmp_path / "ovf")) == ["inst1.example.com-20231114T221640Z.ova"]
    states = [r.state for r in status.list_conversions(first.status_dir)[0]]
    assert states == [status.SUPERSEDED, status.DONE, status.DONE]


def test_worker_ovf_folder_keep_all(tmp_path, ganeti_export_dir):
    export_path, digest = ganeti_export_dir
    for now in (1_700_000_000.0, 1_700_000_001.0):
        job = make_job(tmp_path, export_path, now=now, ova=False, disk_format="qcow2",
                       keep=0)
        assert hook.run_job(job).state == status.DONE
    names = sorted(os.listdir(tmp_path / "ovf"))
    assert names == ["inst1.example.com-20231114T221320Z",
                     "inst1.example.com-20231114T221321Z"]
    folder = tmp_path / "ovf" / names[1]
    assert sorted(os.listdir(folder)) == ["inst1.example.com-disk0.qcow2",
                                          "inst1.example.com.mf", "inst1.example.com.ovf"]
    assert imported_digest(tmp_path, str(folder / "inst1.example.com.ovf")) == digest


def copy_export(export_path, tmp_path):
    """A copy of the export that a test may change (the fixture is shared)."""
    copy = tmp_path / "export-copy"
    copy.mkdir()
    for name in os.listdir(export_path):
        with open(os.path.join(export_path, name), "rb") as src:
            (copy / name).write_bytes(src.read())
    return copy


def test_snapshot_survives_the_export_being_replaced(tmp_path, ganeti_export_dir):
    export_path, digest = ganeti_export_dir
    copy = copy_export(export_path, tmp_path)
    job = make_job(tmp_path, str(copy), now=1_700_000_000.0)
    for name in os.listdir(copy):  # what the next gnt-backup export does
        os.unlink(copy / name)
    done = hook.run_job(job)
    assert done.state == status.DONE
    assert imported_digest(tmp_path, done.output) == digest


@pytest.mark.parametrize("linked", [True, False], ids=["linked", "copied"])
@pytest.mark.parametrize("dump_mode, expected", [(0o600, 0o600), (0o644, 0o644)])
def test_published_package_as_private_as_the_dumps(tmp_path, ganeti_export_dir, monkeypatch,
                                                   linked, dump_mode, expected):
    """Ganeti writes an instance's dumps 0600: the OVA the hook publishes is
    0600 too (copied snapshots keep the dump's mode); readable dumps, 0644."""
    export_path, _digest = ganeti_export_dir
    copy = copy_export(export_path, tmp_path)
    os.chmod(str(copy / "disk0.raw"), dump_mode)

    def refuse(*_args, **_kwargs):
        raise OSError(18, "Invalid cross-device link")
    if not linked:
        monkeypatch.setattr(os, "link", refuse)
    job = make_job(tmp_path, str(copy), now=1_700_000_000.0)
    monkeypatch.undo()
    assert bool(job.pending) is not linked
    old = os.umask(0)
    try:
        done = hook.run_job(job)
    finally:
        os.umask(old)
    assert done.state == status.DONE, done.error
    assert os.stat(done.output).st_mode & 0o777 == expected


def test_export_replaced_while_its_snapshot_is_converted(tmp_path, ganeti_export_dir,
                                                        monkeypatch):
    """Ganeti's next export removes the files the snapshot links to while the
    worker reads them: only their ctime moves (root's own dumps), and the
    conversion completes with the snapshot's bytes."""
    export_path, digest = ganeti_export_dir
    copy = copy_export(export_path, tmp_path)
    job = make_job(tmp_path, str(copy), now=1_700_000_000.0)
    real = exporter._disk_producer

    def producer(*args, **kwargs):
        for name in os.listdir(copy):
            os.unlink(copy / name)
        return real(*args, **kwargs)
    monkeypatch.setattr(exporter, "_disk_producer", producer)
    done = hook.run_job(job)
    assert done.state == status.DONE, done.error
    assert imported_digest(tmp_path, done.output) == digest


def test_running_conversion_shows_its_progress_in_status(tmp_path, ganeti_export_dir,
                                                          monkeypatch):
    export_path, _digest = ganeti_export_dir
    monkeypatch.setattr(Progress, "LOG_INTERVAL", 0.0)
    written = []
    real_write = status.write

    def keep(directory, record):
        written.append(record)
        return real_write(directory, record)
    monkeypatch.setattr(status, "write", keep)
    job = make_job(tmp_path, export_path, now=1_700_000_000.0)
    done = hook.run_job(job)
    assert done.state == status.DONE and done.progress is None
    shown = [r for r in written if r.state == status.RUNNING and r.progress]
    assert shown and shown[-1].progress.startswith("Disks: 0.02 of 0.02 GiB (100 %), ")
    # What `gnt-ovf status` prints for a running conversion.
    table = status.to_text(status.to_rows([shown[0]]))
    assert shown[0].progress in table.splitlines()[1]


def test_unlinkable_files_copied_from_open_descriptors(tmp_path, ganeti_export_dir,
                                                      monkeypatch):
    export_path, digest = ganeti_export_dir

    def refuse(*_args, **_kwargs):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", refuse)
    job = make_job(tmp_path, export_path, now=1_700_000_000.0)
    monkeypatch.undo()
    assert sorted(name for name, _fd in job.pending) == ["config.ini", "disk0.raw"]
    done = hook.run_job(job)
    assert done.state == status.DONE, done.error
    assert imported_digest(tmp_path, done.output) == digest


def test_failure_recorded_with_reason(tmp_path, ganeti_export_dir, caplog):
    export_path, _digest = ganeti_export_dir
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output directory should be")
    job = make_job(tmp_path, export_path, now=1_700_000_000.0, output_dir=str(blocked))
    failed = hook.run_job(job)
    assert failed.state == status.FAILED
    assert str(blocked) in failed.error and "\n" not in failed.error
    assert status.list_conversions(job.status_dir)[0] == [failed]
    assert not os.path.exists(job.spool)
    assert any(job.record.conversion_id in r.getMessage() and "failed" in r.getMessage()
               for r in caplog.records)


def test_clean_spool_removes_only_dead_snapshots(tmp_path):
    spool, records = tmp_path / "spool", str(tmp_path / "status")
    child = subprocess.Popen(["true"])
    child.wait()
    me = dict(pid=os.getpid(), pid_start=status.process_start(os.getpid()))
    live = hook.new_record("live", now=1.0).with_state(status.RUNNING, **me)
    done = hook.new_record("done", now=2.0).with_state(status.DONE, **me)
    dead = hook.new_record("dead", now=3.0).with_state(status.RUNNING, pid=child.pid)
    for record in (live, done, dead):
        status.write(records, record)
    for name in (live.conversion_id, done.conversion_id, dead.conversion_id, "orphan"):
        (spool / name).mkdir(parents=True)
    removed = hook.clean_spool(str(spool), records)
    assert sorted(removed) == sorted([done.conversion_id, dead.conversion_id, "orphan"])
    assert os.listdir(spool) == [live.conversion_id]
    assert hook.clean_spool(str(tmp_path / "absent"), records) == []


def test_snapshot_without_config_refused(tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(HookError, match="no config.ini"):
        hook.snapshot(str(tmp_path / "export"), str(tmp_path / "spool"))


def test_detach_returns_at_once_and_closes_the_output(tmp_path):
    marker = tmp_path / "marker"
    code = ("import os, sys; sys.path.insert(0, %r)\n"
            "from ganeti_ovf import hook\n"
            "hook.LOG_FILE = %r\n"
            "hook.detach(lambda: open(%r, 'w').write('%%d %%d' %% (os.getsid(0), os.getppid())))\n"
            "print(os.getsid(0))\n" % (ROOT, str(tmp_path / "log"), str(marker)))
    # capture_output: run() returns only once every copy of the pipes is
    # closed, so the worker must not hold them.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker_sid, _parent = marker.read_text().split()
    assert worker_sid != result.stdout.strip()  # its own session


# ------------------------------------------------------------ on the cluster

HOOK_TAG = "ovf-hook-test"
CONF = "/etc/ganeti/ovf-export.conf"
OUTPUT = "/var/lib/ganeti/ovf-test"
STATUS = "/var/lib/ganeti/ovf-status"
LOG = "/var/log/ganeti/ovf-export.log"
# Ganeti clears the hook's environment: the wrapper names the checkout.
HOOK_WRAPPER = ("#!/bin/sh\nGANETI_OVF_PYTHONPATH=%s exec /usr/bin/python3 %s/hooks/ovf-export\n"
                % (ROOT, ROOT))


def write_conf(cluster, output_dir):
    with open(cluster.host_path(CONF), "w") as handle:
        handle.write("[ovf-export]\nenabled = yes\ntags = %s\nformat = vmdk\nova = yes\n"
                     "output_dir = %s\nkeep = 1\n" % (HOOK_TAG, output_dir))


@pytest.fixture
def hooked_cluster(ganeti_cluster):
    path = ganeti_cluster.install_hook("instance-export", "post", "ganeti-ovf-export",
                                       HOOK_WRAPPER)
    write_conf(ganeti_cluster, OUTPUT)
    try:
        yield ganeti_cluster
    finally:
        os.unlink(path)
        os.unlink(ganeti_cluster.host_path(CONF))


def wait_for_conversion(cluster, instance, timeout=60):
    """The instance's finished conversion record (polling the status files)."""
    deadline = time.monotonic() + timeout
    while True:
        records, _problems = status.list_conversions(cluster.host_path(STATUS))
        mine = [r for r in records if r.instance == instance]
        if mine and mine[-1].state in status.FINISHED:
            return mine[-1]
        if time.monotonic() > deadline:
            raise AssertionError("no finished conversion of %s: %s" % (instance, mine))
        time.sleep(0.2)


def test_export_hook_converts_on_the_cluster(hooked_cluster):
    cluster = hooked_cluster
    source, copy = "hooksrc1.example.com", "hookcopy1.example.com"
    cluster.add_instance(source, "192.0.2.70", disk_size="16M",
                         extra_args=["--tags", HOOK_TAG])
    cluster.write_disk(source, 0, {0: b"hook head" * 100, 15 * MIB: os.urandom(4096)})
    (source_disk,) = cluster.disk_paths(source)
    digest = sha256_file(source_disk)
    untagged = "hookuntagged1.example.com"
    cluster.add_instance(untagged, "192.0.2.72", disk_size="16M")

    cluster.export_instance(untagged)
    cluster.export_instance(source)

    record = wait_for_conversion(cluster, source)
    assert record.state == status.DONE, record.error
    assert os.path.dirname(record.output) == OUTPUT
    assert os.path.basename(record.output).startswith(source + "-")
    assert record.output.endswith(".ova")
    assert not [r for r in status.list_conversions(cluster.host_path(STATUS))[0]
                if r.instance == untagged]  # no tag, no conversion
    with open(cluster.host_path(LOG), encoding="utf-8") as handle:
        assert "Not converting the export of %s: instance %s has none of the tags %s" % (
            untagged, untagged, HOOK_TAG) in handle.read()
    shown = cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "status"],
                        checkout_on_path=True).stdout
    assert "Last skipped export: %s at " % untagged in shown
    listing = cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "status",
                           "--output=json", source], checkout_on_path=True).stdout
    assert [(row["state"], row["output"]) for row in json.loads(listing)] == [
        ("done", record.output)]
    assert os.listdir(cluster.host_path("/var/lib/ganeti/ovf-spool")) == []

    cluster.run(["/usr/bin/python3", "-m", "ganeti_ovf", "import", "--name", copy,
                 record.output], checkout_on_path=True)
    # The package keeps the source's MAC, which Ganeti reuses for an instance
    # named as in config.ini unless told to generate one.
    cluster.import_instance(copy, "/var/lib/ganeti/export/" + copy, None, extra_args=[
        "--net", "0:mac=generate,mode=routed,link=lo,ip=192.0.2.71"])
    (copy_disk,) = cluster.disk_paths(copy)
    assert sha256_file(copy_disk) == digest
    for name in (copy, source, untagged):
        cluster.remove_instance(name)


def test_failed_conversion_leaves_status_and_log(hooked_cluster):
    cluster = hooked_cluster
    source = "hookfail1.example.com"
    blocked = "/var/lib/ganeti/ovf-blocked"
    with open(cluster.host_path(blocked), "w") as handle:
        handle.write("a file where the output directory should be\n")
    write_conf(cluster, blocked)
    cluster.add_instance(source, "192.0.2.73", disk_size="16M",
                         extra_args=["--tags", HOOK_TAG])

    # The export job succeeds whatever the conversion does.
    export = cluster.export_instance(source)
    assert os.path.isfile(os.path.join(export, "config.ini"))

    record = wait_for_conversion(cluster, source)
    assert record.state == status.FAILED
    assert blocked in record.error
    with open(cluster.host_path(LOG)) as handle:
        lines = [line for line in handle if record.conversion_id in line]
    assert any("ganeti-ovf-export" in line and "ERROR" in line and blocked in line
               for line in lines), lines
    cluster.remove_instance(source)


def test_hook_left_after_package_removal_is_quiet_on_the_cluster(ganeti_cluster):
    # `dpkg -r ganeti-ovf` keeps the hook (a conffile) but removes the library:
    # a later gnt-backup export must still succeed, with no hook warning.
    cluster = ganeti_cluster
    orphan = ("#!/bin/sh\nGANETI_OVF_PYTHONPATH=/nonexistent exec /usr/bin/python3 %s/hooks/"
              "ovf-export\n" % ROOT)
    path = cluster.install_hook("instance-export", "post", "ganeti-ovf-export", orphan)
    source = "hookorphan1.example.com"
    try:
        cluster.add_instance(source, "192.0.2.74", disk_size="16M")
        result = cluster.run(["gnt-backup", "export", "-n", NODE,
                              "--long-sleep", source])
        assert "ovf" not in (result.stdout + result.stderr).lower(), result.stderr
        assert os.path.isfile(cluster.host_path("/var/lib/ganeti/export/%s/config.ini"
                                                % source))
    finally:
        os.unlink(path)
        cluster.remove_instance(source)
        cluster.run(["gnt-backup", "remove", source], check=False)
