"""`make bench` case: the direct import into an instance, on a namespaced cluster.

An OVA holding one streamOptimized VMDK of 4 GiB virtual with 1 GiB of data
(quick: 256 MiB with 64 MiB) becomes a stopped instance (file template) of
a single-node Ganeti cluster started in namespaces (tests/support/nscluster.py),
three ways, interleaved per round:
  ours      gnt-ovf import --submit-import (the direct path);
  baseline  one bare `qemu-img convert` of the VMDK, in place, to a raw file
            on the same file system, then sync;
  floor     gnt-ovf import --submit-import --via-export (the two-step path:
            an export directory, then Ganeti's import job copies every byte).
Between runs (untimed) the instance and export are removed.  The record has
run.py's shape (run.py's summarise(), with rss_ours the largest process of
the tree, here the gnt-ovf process), so run.py prints it in its table;
targets(): ours <= 1.5x
the qemu-img convert, >= 8x faster than the two-step path, peak RSS of the
process tree <= 64 MiB.  The instance's disk is checked by sha256 against
the source.
"""

import os
import sys
from dataclasses import asdict
from typing import Callable, Dict, List

import workloads
from workloads import GIB, MIB, ROOT, DiskData, Job

sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from nscluster import FILE_STORAGE_DIR, NODE, PATH, Cluster  # noqa: E402

NAME = "direct-import"
INSTANCE = "bench-direct.example.com"
FULL = DiskData(4 * GIB, 512 * MIB, 512 * MIB, 16)
QUICK = DiskData(256 * MIB, 32 * MIB, 32 * MIB, 4)
OPTIONS = ["--submit-import", "--name", INSTANCE, "--disk-template", "file",
           "--net", "0:ip=192.0.2.200", "--no-name-check", "--no-ip-check",
           "--ignore-ipolicy"]


def inside(cluster: Cluster, argv: List[str]) -> List[str]:
    """`argv` run inside the cluster's namespaces (as Cluster.run does)."""
    return ["nsenter", "--target=%d" % cluster.init_pid, "--mount", "--uts", "--net",
            "--pid", "--wd=%s" % ROOT, "env", "-i", "PATH=" + PATH, "HOME=/root",
            "LC_ALL=C.UTF-8", "PYTHONPATH=" + ROOT] + argv


def _clean(cluster: Cluster) -> None:
    cluster.run(["gnt-instance", "remove", "-f", INSTANCE], check=False)
    cluster.run(["gnt-backup", "remove", INSTANCE], check=False)


def _check(cluster: Cluster, source: workloads.Source) -> Dict[str, str]:
    (disk,) = cluster.disk_paths(INSTANCE)
    got = workloads.sha256_file(disk, source.virtual)
    state = cluster.run(["gnt-instance", "list", "--no-headers", "-o", "oper_state",
                         INSTANCE]).stdout.strip()
    return {"disk0 sha256": "ok" if got == source.sha256 else
            "FAIL: %s != source %s" % (got[:16], source.sha256[:16]),
            "stopped": "ok" if state == "N" else "FAIL: oper_state %s" % state}


def measure(builder: workloads.Builder, quick: bool, rounds: int, logdir: str,
            run_job: Callable, summarise: Callable, say: Callable[[str], None]) -> Dict:
    data = QUICK if quick else FULL
    directory = builder.path("pkg", NAME)
    os.makedirs(directory, exist_ok=True)
    os.makedirs(builder.path("src"), exist_ok=True)
    source = workloads.write_source(builder.path("src", NAME + ".raw"), data, seed=10)
    vmdk = builder.path("src", NAME + ".vmdk")
    if os.path.exists(vmdk):
        os.unlink(vmdk)
    workloads._stream_vmdks([source], [vmdk])
    package = workloads.build_package(directory, "bench-direct", [source], [vmdk], ova=True)
    raw = builder.path("out", NAME, "qemu-img.raw")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    convert = ("qemu-img convert --image-opts %s -O raw %s && sync %s"
               % (workloads.q(workloads.member_opts(package.members[0])),
                  workloads.q(raw), workloads.q(raw)))
    cluster = Cluster()
    cluster.start()
    try:
        jobs = {"ours": Job(inside(cluster, workloads.ours("import", *OPTIONS,
                                                           package.path)), []),
                "baseline": Job(workloads.shell([convert]), [raw]),
                "floor": Job(inside(cluster, workloads.ours(
                    "import", *OPTIONS, "--via-export", "-n", NODE, package.path)), [])}
        runs: Dict[str, list] = {role: [] for role in jobs}
        errors: List[str] = []
        checks: Dict[str, str] = {}
        allocated = 0
        for index in range(rounds):
            for role, job in jobs.items():
                _clean(cluster)
                log = os.path.join(logdir, "%s-%s-%d.log" % (NAME, role, index))
                result = run_job(job, log)
                runs[role].append(result)
                if result.returncode:
                    errors.append("%s failed (%d): %s" % (role, result.returncode,
                                                          workloads_tail(log)))
                elif role == "ours" and index == rounds - 1:
                    checks = _check(cluster, source)
                    allocated = sum(os.stat(path).st_blocks * 512
                                    for path in cluster.disk_paths(INSTANCE))
            say("  round %d/%d: direct %.2f s, qemu-img %.2f s, two-step %.2f s"
                % (index + 1, rounds, *(runs[role][-1].seconds for role in jobs)))
            if errors:
                break
        _clean(cluster)
    finally:
        cluster.stop()
    record = {"name": NAME, "number": 6, "kind": "import", "errors": errors,
              "description": "OVA, streamOptimized VMDK of %d MiB, %d MiB data -> stopped"
              " instance (file template)" % (data.virtual // MIB,
                                             (data.random + data.text) // MIB),
              "notes": ["baseline: one in-place qemu-img convert to raw; floor: the"
                        " two-step path (--via-export)", "cluster: " + FILE_STORAGE_DIR],
              "commands": {role: job.argv for role, job in jobs.items()},
              "runs": {role: [asdict(r) for r in items] for role, items in runs.items()},
              "checks": checks, "resident_inputs": None}
    if errors:
        return record
    record["output"] = {"ours": {"apparent": data.virtual, "allocated": allocated}}
    record["sources"] = {"virtual": data.virtual, "data": data.random + data.text}
    record["summary"] = summarise(runs)
    # run.py's "ours" is time's child, here nsenter: take the largest process.
    record["summary"]["rss_ours"] = max(r.rss_max_process for r in runs["ours"])
    return record


def workloads_tail(path: str, lines: int = 5) -> str:
    with open(path, "rb") as handle:
        return b"\n".join(handle.read().splitlines()[-lines:]).decode("utf-8", "replace")


def targets(records: List[Dict], target: Callable) -> None:
    """Add the direct import's acceptance targets through target(...)."""
    for rec in records:
        if rec["name"] != NAME or "summary" not in rec:
            continue
        ratio, speedup = rec["summary"]["ratio"], 1 / rec["summary"]["ratio_floor"]
        target("direct import <= 1.5x one qemu-img convert", ratio, 1.5, "x", ratio <= 1.5)
        target("direct import >= 8x faster than the two-step path (--via-export)",
               speedup, 8, "x", speedup >= 8)


def wanted(only: List[str]) -> bool:
    """Whether run.py's --only selects this case (number 6 or part of its name)."""
    chosen = [item for value in only for item in value.split(",") if item]
    return not chosen or any(item == "6" or item in NAME for item in chosen)
