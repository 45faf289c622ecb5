"""`make mutate`: a small mutation tester for the security-critical modules.

Owns making mutants and judging them.  Each mutant is one small change to one
module, found by walking its syntax tree: a comparison or boundary operator
swapped (< and <=, == and !=, in and not in, ...), an integer constant plus or
minus one, an `if`/`while`/conditional expression negated, a `not` dropped,
`and`/`or` swapped, `+`/`-` swapped, a `raise` or `return` statement removed.
The change is spliced into the source text at the node's position, so the
rest of the file stays byte for byte the same.

Mutants run in a private copy of the checkout (under /var/tmp), never in the
working tree: the copy's module is rewritten, the module's fast tests run with
`pytest -x` under a time limit, and the original bytes are put back in a
`finally` before the next mutant.  A mutant is killed when the tests fail or
time out, survives when they pass.  At the end the working tree is checked
unchanged with `git diff`.

To keep a run affordable on a shared machine, at most --max mutants per
module are run (default 40), chosen deterministically: mutants are ordered by
a hash of (module, source line text, change, occurrence), so the sample does
not move when unrelated lines are added, and the first ones are taken.
--max 0 runs every mutant; --seed S draws another deterministic sample (to
check that the standard one is not the only one the tests were written for).

Usage: /usr/bin/python3 tests/support/mutate.py [--max N] [--list] [MODULE ...]
"""

import argparse
import ast
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3"  # Ganeti's interpreter: the tests import Ganeti
DEFAULT_MAX = 40
MIN_TIMEOUT = 60  # seconds a mutant's tests may run, at least
TIMEOUT_FACTOR = 3  # ... or this many times the unmutated run

# Each module and the fast tests that guard it, the most targeted first
# (pytest -x stops at the first failure).  Never the cluster tests.
MODULES: Dict[str, Tuple[str, ...]] = {
    "ganeti_ovf/package/manifest.py": (
        "tests/package/test_manifest.py", "tests/package/test_package_pins.py",
        "tests/test_importer_pins.py"),
    "ganeti_ovf/package/signature.py": (
        "tests/package/test_signature_pins.py", "tests/package/test_signature.py"),
    "ganeti_ovf/package/reader.py": (
        "tests/package/test_package_reader.py", "tests/package/test_package_pins.py",
        "tests/test_importer_pins.py"),
    "ganeti_ovf/package/tarreader.py": (
        "tests/package/test_tarreader_pins.py", "tests/package/test_package_reader.py"),
    "ganeti_ovf/disks/formats.py": (
        "tests/disks/test_formats.py", "tests/disks/test_formats_pins.py"),
    "ganeti_ovf/disks/vmdkread.py": (
        "tests/disks/test_vmdkread.py", "tests/disks/test_vmdk_pins.py"),
    "ganeti_ovf/disks/vmdkflow.py": ("tests/disks/test_vmdkflow.py",),
    "ganeti_ovf/disks/vmdkstream.py": (
        "tests/disks/test_vmdkstream.py", "tests/disks/test_vmdk_pins.py",
        "tests/disks/test_vmdkread.py"),
    "ganeti_ovf/package/openfile.py": ("tests/package/test_openfile.py", "tests/test_races.py"),
    "ganeti_ovf/cluster/ganeti_export.py": (
        "tests/cluster/test_ganeti_export.py", "tests/cluster/test_ganeti_export_pins.py"),
    "ganeti_ovf/publish.py": (
        "tests/test_publish.py", "tests/test_publish_pins.py", "tests/test_output_dir.py"),
}

_COMPARE_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_BINOP_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add}
_BOOLOP_SWAPS = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass(frozen=True)
class Mutant:
    """One change: the source span it replaces and the text put there."""

    module: str
    line: int  # 1-based, of the span's start
    col: int
    end_line: int
    end_col: int
    replacement: str
    change: str  # what a reader sees in the report
    key: str  # stable identity for the deterministic sample

    def label(self) -> str:
        return "%s:%d: %s" % (self.module, self.line, self.change)


# ------------------------------------------------------------------ making mutants


def _docstrings(tree: ast.AST) -> set:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                             ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _message_nodes(tree: ast.AST) -> set:
    """Nodes inside raised expressions and f-strings: message text, not logic."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            inside.update(id(child) for child in ast.walk(node.exc))
        elif isinstance(node, ast.JoinedStr):
            inside.update(id(child) for child in ast.walk(node))
    return inside


def _annotations(tree: ast.AST) -> set:
    inside = set()
    for node in ast.walk(tree):
        hints = []
        if isinstance(node, ast.AnnAssign):
            hints.append(node.annotation)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            hints.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            hints.append(node.returns)
        for hint in hints:
            inside.update(id(child) for child in ast.walk(hint))
    return inside


def _equivalent(tree: ast.AST) -> set:
    """Statements whose removal cannot change behaviour, never mutated: a
    function's closing `return`/`return None` (it returns None anyway) and
    `raise NotImplementedError` (abstract methods no subclass leaves unset)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            last = node.body[-1]
            if isinstance(last, ast.Return) and (
                    last.value is None or (isinstance(last.value, ast.Constant)
                                           and last.value.value is None)):
                found.add(id(last))
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Name) \
                and node.exc.id == "NotImplementedError":
            found.add(id(node))
    return found


def _changes(node: ast.AST) -> Iterator[Tuple[ast.AST, str, str]]:
    """(node whose span is replaced, its replacement text, description)."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is None:
                continue
            ops = list(node.ops)
            ops[index] = swap()
            new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
            yield node, ast.unparse(new), "%s -> %s" % (_op_text(op), _op_text(swap()))
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAPS:
        swap = _BINOP_SWAPS[type(node.op)]()
        new = ast.BinOp(left=node.left, op=swap, right=node.right)
        yield node, ast.unparse(new), "%s -> %s" % (_op_text(node.op), _op_text(swap))
    elif isinstance(node, ast.BoolOp):
        swap = _BOOLOP_SWAPS[type(node.op)]()
        new = ast.BoolOp(op=swap, values=node.values)
        yield node, ast.unparse(new), "%s -> %s" % (_op_text(node.op), _op_text(swap))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield node, ast.unparse(node.operand), "dropped not: %s" % _short(node)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        for delta in (1, -1):
            yield node, repr(node.value + delta), "%d -> %d" % (node.value,
                                                                node.value + delta)
    elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
        test = node.test
        yield test, "not (%s)" % ast.unparse(test), "negated condition: %s" % _short(test)
    elif isinstance(node, ast.Raise):
        yield node, "pass", "removed raise: %s" % _short(node)
    elif isinstance(node, ast.Return):
        yield node, "pass", "removed return: %s" % _short(node)


def _op_text(op: ast.AST) -> str:
    return {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is",
            ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.And: "and",
            ast.Or: "or"}[type(op)]


def _short(node: ast.AST, limit: int = 60) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def make_mutants(module: str, source: str, seed: str = "") -> List[Mutant]:
    """Every mutant of `module` (a path relative to the checkout), in file order."""
    tree = ast.parse(source, module)
    skip = _docstrings(tree) | _message_nodes(tree) | _annotations(tree) | _equivalent(tree)
    lines = source.splitlines()
    mutants: List[Mutant] = []
    seen: Dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        for target, replacement, change in _changes(node):
            if isinstance(target, ast.expr) and replacement != "pass":
                replacement = "(%s)" % replacement
            base = "%s|%s|%s" % (module, lines[target.lineno - 1].strip(), change)
            seen[base] = seen.get(base, 0) + 1
            key = hashlib.sha256(("%s%s|%d" % (seed, base, seen[base])).encode()).hexdigest()
            mutants.append(Mutant(module, target.lineno, target.col_offset,
                                  target.end_lineno, target.end_col_offset,
                                  replacement, change, key))
    mutants.sort(key=lambda m: (m.line, m.col, m.change))
    return mutants


def apply(source: str, mutant: Mutant) -> str:
    """`source` with the mutant's span replaced (the rest left as it was)."""
    lines = source.splitlines(keepends=True)
    start = sum(len(line) for line in lines[:mutant.line - 1]) + \
        len(lines[mutant.line - 1].encode("utf-8")[:mutant.col].decode("utf-8"))
    end = sum(len(line) for line in lines[:mutant.end_line - 1]) + \
        len(lines[mutant.end_line - 1].encode("utf-8")[:mutant.end_col].decode("utf-8"))
    return source[:start] + mutant.replacement + source[end:]


def sample(mutants: Sequence[Mutant], limit: int) -> List[Mutant]:
    """At most `limit` mutants (all when 0), chosen by their stable key."""
    if not limit or len(mutants) <= limit:
        return list(mutants)
    chosen = set(m.key for m in sorted(mutants, key=lambda m: m.key)[:limit])
    return [m for m in mutants if m.key in chosen]


# ------------------------------------------------------------------ running them


def copy_checkout(target: str) -> None:
    """The checkout's files (tracked and new, not ignored) copied to `target`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = os.path.join(ROOT, name)
        if not os.path.isfile(source) or "__pycache__" in name:
            continue
        dest = os.path.join(target, name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(source, dest)


def run_tests(copy: str, tests: Sequence[str], timeout: Optional[float],
              output=subprocess.DEVNULL) -> Tuple[str, float]:
    """("passed" | "failed" | "timeout", seconds) of pytest -x over `tests` in `copy`."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    try:
        # A new session: a timeout kills the tests' own children too.
        # A private --basetemp: other pytest runs on the machine prune theirs.
        basetemp = os.path.join(os.path.dirname(copy), "pytest-tmp")
        process = subprocess.Popen(
            [PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "--basetemp", basetemp] + list(tests),
            cwd=copy, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            return "timeout", time.monotonic() - started
        except BaseException:  # interrupted: the tests go too
            os.killpg(process.pid, 9)
            process.wait()
            raise
    finally:
        elapsed = time.monotonic() - started
    return ("passed" if code == 0 else "failed"), elapsed


@dataclass
class Score:
    module: str
    total: int = 0  # mutants the module has
    killed: int = 0
    timeouts: int = 0
    survivors: Tuple[Mutant, ...] = ()

    @property
    def run(self) -> int:
        return self.killed + self.timeouts + len(self.survivors)


def mutate_module(copy: str, module: str, limit: int, seed: str, log,
                  only: str = "") -> Score:
    path = os.path.join(copy, module)
    with open(path, encoding="utf-8") as handle:
        original = handle.read()
    mutants = make_mutants(module, original, seed)
    chosen = sample(mutants, limit)
    if only:
        chosen = [m for m in mutants if only in m.label()]
    tests = [t for t in MODULES[module] if os.path.exists(os.path.join(copy, t))]
    with tempfile.TemporaryFile() as output:
        status, baseline = run_tests(copy, tests, None, output)
        if status != "passed":
            output.seek(0)
            tail = output.read().decode("utf-8", "replace").splitlines()[-20:]
            raise SystemExit("%s: its tests fail before any mutation: %s\n%s"
                             % (module, " ".join(tests), "\n".join(tail)))
    timeout = max(MIN_TIMEOUT, TIMEOUT_FACTOR * baseline)
    log("%s: %d mutants, running %d (tests %.0fs unmutated: %s)"
        % (module, len(mutants), len(chosen), baseline, " ".join(tests)))
    score = Score(module, total=len(mutants))
    survivors = []
    for number, mutant in enumerate(chosen, start=1):
        mutated = apply(original, mutant)
        try:
            compile(mutated, module, "exec")
        except SyntaxError as err:
            raise SystemExit("%s: mutant does not compile (%s): a bug in mutate.py"
                             % (mutant.label(), err))
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(mutated)
            status, seconds = run_tests(copy, tests, timeout)
        finally:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(original)
        if status == "failed":
            score.killed += 1
        elif status == "timeout":
            score.timeouts += 1
        else:
            survivors.append(mutant)
        log("  [%d/%d] %-8s %4.0fs  %s" % (number, len(chosen), status.replace(
            "passed", "SURVIVED").replace("failed", "killed"), seconds, mutant.label()))
    score.survivors = tuple(survivors)
    with open(path, encoding="utf-8") as handle:
        if handle.read() != original:
            raise SystemExit("%s: the copy was not restored" % module)
    return score


def report(scores: Sequence[Score], log) -> float:
    log("")
    log("%-38s %7s %6s %7s %8s %6s" % ("module", "mutants", "run", "killed", "survived",
                                        "score"))
    run = killed = 0
    for score in scores:
        dead = score.killed + score.timeouts
        run += score.run
        killed += dead
        log("%-38s %7d %6d %7d %8d %5.1f%%" % (score.module, score.total, score.run, dead,
                                               len(score.survivors),
                                               100.0 * dead / max(1, score.run)))
    overall = 100.0 * killed / max(1, run)
    log("%-38s %7s %6d %7d %8d %5.1f%%" % ("overall", "", run, killed, run - killed, overall))
    survivors = [m for score in scores for m in score.survivors]
    if survivors:
        log("")
        log("Surviving mutants:")
        for mutant in survivors:
            log("  " + mutant.label())
    return overall


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all of %s)"
                        % ", ".join(sorted(MODULES)))
    parser.add_argument("--max", type=int, default=DEFAULT_MAX,
                        help="mutants run per module, 0 for all (default %d)" % DEFAULT_MAX)
    parser.add_argument("--seed", default="",
                        help="another deterministic sample (default: the standard one)")
    parser.add_argument("--list", action="store_true", help="list the chosen mutants only")
    parser.add_argument("--only", default="", metavar="TEXT",
                        help="run only the mutants whose label (file:line: change)"
                        " contains TEXT, sampled or not")
    parser.add_argument("--fail-under", type=float, default=90.0,
                        help="exit 1 when the overall score is lower (default 90)")
    args = parser.parse_args(argv)
    modules = args.modules or list(MODULES)
    for module in modules:
        if module not in MODULES:
            parser.error("%s is not one of the mutated modules" % module)

    def log(text: str) -> None:
        print(text, flush=True)

    if args.list:
        for module in modules:
            with open(os.path.join(ROOT, module), encoding="utf-8") as handle:
                mutants = make_mutants(module, handle.read(), args.seed)
            for mutant in sample(mutants, args.max):
                log(mutant.label())
        return 0
    # A plain kill still runs the finally blocks (restore, remove the copy).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    before = _tree_diff(modules)
    scratch = tempfile.mkdtemp(prefix="ganeti-ovf-mutate-", dir="/var/tmp")
    # Some tests run the checkout as an unprivileged user: it must be readable.
    os.chmod(scratch, 0o755)
    try:
        # Tests find the shared corpus beside the checkout (../shared).
        os.symlink(os.path.join(os.path.dirname(ROOT), "shared"),
                   os.path.join(scratch, "shared"))
        copy = os.path.join(scratch, "checkout")
        copy_checkout(copy)
        scores = [mutate_module(copy, module, args.max, args.seed, log, args.only)
                  for module in modules]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # Mutants are only ever written in the copy: the working tree's modules
    # must show the same `git diff` as before the run.
    if _tree_diff(modules) != before:
        print("ERROR: the working tree's modules changed during the run:\n"
              + _tree_diff(modules), file=sys.stderr)
        return 2
    overall = report(scores, log)
    return 0 if overall >= args.fail_under else 1


def _tree_diff(modules: Sequence[str]) -> str:
    return subprocess.run(["git", "diff", "--"] + list(modules), cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


if __name__ == "__main__":
    sys.exit(main())
