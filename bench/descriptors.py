"""`make bench` case: `gnt-ovf info` on large descriptors of each shape.

Issue 13: 20,000 Ganeti parameters, 20,000 VirtualSystems, many profiles or
80,000 attributes on one element made `info` run for minutes.  For each
shape of tests/support/bigdescriptor.py two descriptors of about 10 MB
(quick: 2 MB), each alone in an OVF folder:
  <shape>        as many repetitions as fill the size (most are refused by
                 a limit of the reader: the answer must still come quickly);
  <shape>@limit  the largest count the limits accept, its values padded up
                 to the size (read in full: the worst case that is parsed).
Three commands per round, interleaved:
  ours      gnt-ovf info --output=json DESCRIPTOR;
  baseline  gnt-ovf info --output=json of a small descriptor (start-up cost);
  floor     cat DESCRIPTOR > /dev/null.
The check is the answer: a description (exit 0) or a one-line refusal
(exit 1, "Failure: ..."); anything else fails.  Target: every answer within
TARGET_SECONDS.
"""

import os
import sys
from dataclasses import asdict
from typing import Callable, Dict, List

import workloads
from workloads import ROOT, Job

sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
import bigdescriptor  # noqa: E402

NAME = "descriptors"
NUMBER = 7
FULL = 10_000_000
QUICK = 2_000_000
TARGET_SECONDS = 10.0


def _write(directory: str, data: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "big.ovf")
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _answer(log: str, returncode: int) -> str:
    with open(log, "rb") as handle:
        lines = handle.read().decode("utf-8", "replace").splitlines()
    if returncode == 0:
        return "ok"
    failures = [line for line in lines if line.startswith("Failure: ")]
    if returncode == 1 and len(failures) == 1:
        return "refused: " + failures[0][len("Failure: "):][:120]
    return "FAIL: exit %d: %s" % (returncode, " | ".join(lines[-3:])[:200])


def cases(builder: workloads.Builder, quick: bool) -> List[tuple]:
    """(name, descriptor path) of every case, written once."""
    size = QUICK if quick else FULL
    found = []
    for shape in bigdescriptor.SHAPES:
        for name, count in ((shape, None), (shape + "@limit", bigdescriptor.largest(shape))):
            data = bigdescriptor.sized(shape, size, count)
            found.append((name, _write(builder.path("pkg", NAME, name), data)))
    return found


def measure(builder: workloads.Builder, quick: bool, rounds: int, logdir: str,
            run_job: Callable, summarise: Callable,
            say: Callable[[str], None]) -> List[Dict]:
    small = _write(builder.path("pkg", NAME, "small"), bigdescriptor.systems(1))
    baseline = Job(workloads.ours("info", "--output=json", small), [], cwd=workloads.OURS_ROOT)
    records = []
    for name, path in cases(builder, quick):
        jobs = {"ours": Job(workloads.ours("info", "--output=json", path), [],
                            cwd=workloads.OURS_ROOT),
                "baseline": baseline,
                "floor": Job(workloads.shell(["cat %s >/dev/null" % workloads.q(path)]), [])}
        runs: Dict[str, list] = {role: [] for role in jobs}
        answer = ""
        for index in range(rounds):
            for role, job in jobs.items():
                log = os.path.join(logdir, "%s-%s-%s-%d.log" % (NAME, name, role, index))
                result = run_job(job, log)
                runs[role].append(result)
                if role == "ours":
                    answer = _answer(log, result.returncode)
        size = os.path.getsize(path)
        say("  %s (%.1f MB): %.2f s, %s" % (name, size / 1e6, runs["ours"][-1].seconds, answer))
        record = {"name": "%s-%s" % (NAME, name), "number": NUMBER, "kind": "info",
                  "description": "gnt-ovf info of a %.1f MB descriptor, shape %s"
                  % (size / 1e6, name),
                  "notes": ["baseline: info of a small descriptor; floor: cat"],
                  "errors": [] if not answer.startswith("FAIL") else [answer],
                  "commands": {role: job.argv for role, job in jobs.items()},
                  "runs": {role: [asdict(r) for r in items] for role, items in runs.items()},
                  "checks": {"answer": "ok" if not answer.startswith("FAIL") else answer},
                  "answer": answer, "resident_inputs": None,
                  "output": {"ours": {"apparent": 0, "allocated": 0}},
                  "sources": {"virtual": size, "data": size}}
        if not record["errors"]:
            record["summary"] = summarise(runs)
        records.append(record)
    return records


def targets(records: List[Dict], target: Callable) -> None:
    """Each descriptor answered within TARGET_SECONDS (issue 13)."""
    for rec in records:
        if rec["name"].startswith(NAME + "-") and "summary" in rec:
            seconds = rec["summary"]["ours_s"]
            target("%s answered" % rec["name"], seconds, TARGET_SECONDS, "s",
                   seconds <= TARGET_SECONDS)


def wanted(only: List[str]) -> bool:
    """Whether run.py's --only selects this case (number 7 or part of its name)."""
    chosen = [item for value in only for item in value.split(",") if item]
    return not chosen or any(item == str(NUMBER) or item in NAME for item in chosen)
