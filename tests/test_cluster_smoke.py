"""Smoke test of the cluster harness (tests/support/nscluster.py).

One real Ganeti 3.0 round trip (add, write known bytes, export, import,
compare disks by sha256) on a cluster of its own, then a check that stop()
leaves no process, mount or file behind on the host.  The test uses its own
`Cluster` rather than the session fixture because it must stop it.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import socket
import subprocess

import pytest
from nscluster import EXPORT_DIR, PRIVATE_MOUNTS, Cluster

SOURCE = "inst1.example.com"
COPY = "inst2.example.com"
MIB = 1024 * 1024
# Known bytes at the start, in the middle and in the last MiB of a 256M disk.
PATTERN = {0: b"ganeti-ovf head" * 64, 100 * MIB + 7: os.urandom(4096),
           255 * MIB: b"\xa5" * MIB}

ENV_DUMP = "/var/log/ganeti/export-post.env"
HOOK = f"#!/bin/sh\nenv > {ENV_DUMP}\n"


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def host_view() -> dict[str, object]:
    """What a leaking cluster would change on the host."""
    with open("/etc/hosts", encoding="utf-8") as hosts:
        hosts_text = hosts.read()
    # /run itself is left out: other host processes may change it.
    listings = {path: sorted(os.listdir(path)) if os.path.isdir(path)
                else None for path in PRIVATE_MOUNTS
                if path not in ("/etc/hosts", "/run")}
    return {"hostname": socket.gethostname(), "hosts": hosts_text,
            "listings": listings, "run-ganeti": os.path.exists("/run/ganeti")}


def mounts_mentioning(text: str) -> list[str]:
    table = subprocess.run(["findmnt", "--raw", "--noheadings",
                            "--output", "TARGET,SOURCE"],
                           capture_output=True, text=True, check=True).stdout
    return [line for line in table.splitlines() if text in line]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(entry))
        except OSError:  # the process exited while we looked
            pass
    return [pid for pid in found if pid != os.getpid()]


def test_export_import_round_trip_then_clean_stop() -> None:
    before = host_view()
    cluster = Cluster()
    cluster.start()
    state_dir = cluster.state_dir
    assert state_dir is not None
    try:
        assert cluster.run(["hostname"]).stdout.strip() == "node1.example.com"
        cluster.add_instance(SOURCE, "192.0.2.50")
        cluster.write_disk(SOURCE, 0, PATTERN)
        (source_disk,) = cluster.disk_paths(SOURCE)
        source_digest = sha256_file(source_disk)
        with open(source_disk, "rb") as disk:
            for offset, data in PATTERN.items():
                disk.seek(offset)
                assert disk.read(len(data)) == data
        cluster.install_hook("instance-export", "post", "50-env", HOOK)

        export_dir = cluster.export_instance(SOURCE)

        assert export_dir == cluster.host_path(f"{EXPORT_DIR}/{SOURCE}")
        config = configparser.ConfigParser(interpolation=None)
        assert config.read(os.path.join(export_dir, "config.ini"))
        assert config["export"]["os"] == "noop"
        assert config["instance"]["name"] == SOURCE
        assert config["instance"]["disk_count"] == "1"
        dump = os.path.join(export_dir, config["instance"]["disk0_dump"])
        assert sorted(os.listdir(export_dir)) == sorted(
            ["config.ini", config["instance"]["disk0_dump"]])
        # compression = none: the dump is the raw disk image.
        assert sha256_file(dump) == source_digest

        with open(cluster.host_path(ENV_DUMP), encoding="utf-8") as env:
            hook_env = dict(line.split("=", 1) for line in env.read()
                            .splitlines() if "=" in line)
        assert hook_env["GANETI_HOOKS_PHASE"] == "post"
        assert hook_env["GANETI_OP_CODE"] == "OP_BACKUP_EXPORT"
        assert hook_env["GANETI_INSTANCE_NAME"] == SOURCE
        assert "PYTHONPATH" not in hook_env

        cluster.import_instance(COPY, cluster.inner_path(export_dir),
                                "192.0.2.51")

        (copy_disk,) = cluster.disk_paths(COPY)
        assert sha256_file(copy_disk) == source_digest
        info = cluster.instance_info(COPY)
        assert info["nic.ips"] == ["192.0.2.51"]
        assert info["nic.modes"] == ["routed"]
        assert info["disk.sizes"] == ["256"]
        assert info["nic.macs"] != cluster.instance_info(SOURCE)["nic.macs"]
        cluster.remove_instance(COPY)
        assert not os.path.exists(copy_disk)
    finally:
        pid_ns = cluster.pid_ns
        cluster.stop()

    assert pid_ns is not None and not cluster.namespace_pids()
    assert processes_mentioning(state_dir) == []
    assert mounts_mentioning(state_dir) == []
    assert not os.path.exists(state_dir)
    assert host_view() == before


def test_path_mapping() -> None:
    cluster = Cluster()
    cluster.state_dir = "/var/tmp/state"  # mapping only: nothing started
    export = "/var/lib/ganeti/export/x/config.ini"
    assert cluster.host_path(export) == (
        "/var/tmp/state/var-lib-ganeti/export/x/config.ini")
    assert cluster.inner_path(cluster.host_path(export)) == export
    assert cluster.host_path("/etc/hosts") == "/var/tmp/state/hosts"
    with pytest.raises(ValueError):
        cluster.host_path("/var/lib/ganetix")
    with pytest.raises(ValueError):
        cluster.inner_path("/var/tmp/other")
