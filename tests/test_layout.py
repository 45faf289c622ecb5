"""The folder tells the pipeline: stages never import the modules above them.

Each stage subpackage (package/, descriptor/, disks/, cluster/) may import
Ganeti, errors.py, model.py and stage modules; the pipeline modules at the
top (importer, exporter, describe, plan, publish, hook, cli) sequence the
stages and must never be imported by one.  A stage may also take constants
from an earlier stage (cluster/ from disks/ and package/), never from a
later one.
"""

import ast
import os

import pytest
from conftest import ROOT

LIBRARY = os.path.join(ROOT, "ganeti_ovf")
STAGES = ("package", "descriptor", "disks", "cluster")  # in pipeline order
SHARED = ("errors", "model")


def stage_modules():
    for stage in STAGES:
        for name in sorted(os.listdir(os.path.join(LIBRARY, stage))):
            if name.endswith(".py"):
                yield stage, os.path.join(stage, name)


def imported(path):
    with open(os.path.join(LIBRARY, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module \
                and node.module.startswith("ganeti_ovf"):
            parts = node.module.split(".")[1:]
            if parts:
                yield parts
            else:
                yield from ([alias.name] for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ganeti_ovf."):
                    yield alias.name.split(".")[1:]


@pytest.mark.parametrize("stage, path", list(stage_modules()),
                         ids=[path for _stage, path in stage_modules()])
def test_stage_imports_run_one_way(stage, path):
    for parts in imported(path):
        target = parts[0]
        if target in SHARED:
            continue
        assert target in STAGES, "%s imports the pipeline module %s" % (path, target)
        assert STAGES.index(target) <= STAGES.index(stage), \
            "%s imports the later stage %s" % (path, target)


def test_every_stage_says_what_it_owns_and_may_import():
    for stage in STAGES:
        with open(os.path.join(LIBRARY, stage, "__init__.py"), encoding="utf-8") as handle:
            doc = ast.get_docstring(ast.parse(handle.read()))
        assert doc and "May import" in doc, stage


def test_top_level_holds_only_the_sequencing_and_shared_modules():
    top = sorted(name[:-3] for name in os.listdir(LIBRARY) if name.endswith(".py"))
    assert top == sorted(["__init__", "__main__", "cli", "describe", "errors", "exporter",
                          "hook", "importer", "model", "plan", "progress", "publish"])
