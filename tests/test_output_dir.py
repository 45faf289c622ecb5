"""The output directory: root never works where another user can redirect it.

If another user can rename entries of the output directory (or of a
directory above it), they can swap gnt-ovf's staging directory for a link
while root writes there, and have root overwrite any file.  Such a
directory is refused, naming it; root's sticky directories (/tmp) are fine.
"""

import os

import pytest
from packaging import MIB, build_package, run_gnt_ovf

from ganeti_ovf import publish
from ganeti_ovf.errors import PublishError

NOBODY = 65534


@pytest.fixture
def package(tmp_path):
    path, _raws = build_package(str(tmp_path / "pkg"), disks=(("raw", MIB),))
    return path


def refusal(result) -> str:
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Failure: ")]
    return line


def test_directory_of_another_user_refused(tmp_path, package):
    attacker = tmp_path / "attacker"
    attacker.mkdir(mode=0o755)
    os.chown(attacker, NOBODY, NOBODY)
    line = refusal(run_gnt_ovf("import", "--output-dir", str(attacker), package))
    assert line == ("Failure: %s: refused as (part of) the output directory: it belongs to"
                    " uid %d, who could redirect what gnt-ovf writes there"
                    % (attacker, NOBODY))
    assert os.listdir(attacker) == []


def test_directory_below_another_users_refused(tmp_path, package):
    attacker = tmp_path / "attacker"
    (attacker / "safe-looking").mkdir(parents=True)
    os.chown(attacker, NOBODY, NOBODY)
    out = attacker / "safe-looking" / "out"
    line = refusal(run_gnt_ovf("import", "--output-dir", str(out), package))
    assert "%s: refused as (part of) the output directory: it belongs to uid" % attacker \
        in line
    assert not out.exists()


@pytest.mark.parametrize("mode, problem", [(0o777, "is writable by every user"),
                                           (0o775, "is writable by group %d" % NOBODY)])
def test_writable_directory_refused(tmp_path, package, mode, problem):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 0, NOBODY)
    os.chmod(shared, mode)
    line = refusal(run_gnt_ovf("import", "--output-dir", str(shared / "x"), package))
    assert "%s: refused as (part of) the output directory: it %s" % (shared, problem) in line


def test_sticky_root_directory_and_links_resolved(tmp_path, package):
    sticky = tmp_path / "tmp-like"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    out = sticky / "out"
    link = tmp_path / "link"
    os.symlink(str(out), str(link))
    assert publish.output_directory(str(link)) == str(out)
    run_gnt_ovf("import", "--output-dir", str(link), package, check=True)
    assert os.listdir(out) == ["appliance.example.com"]


def test_file_as_output_directory_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PublishError, match="is not a directory"):
        publish.output_directory(str(tmp_path / "file" / "out"))


def test_export_into_another_users_directory_refused(tmp_path):
    from test_export import write_ganeti3_export

    source = str(tmp_path / "inst1.example.com")
    write_ganeti3_export(source)
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    os.chown(attacker, NOBODY, NOBODY)
    line = refusal(run_gnt_ovf("export", "--ova", "--output-dir", str(attacker), source))
    assert "%s: refused as (part of) the output directory: it belongs to uid" % attacker \
        in line
    assert os.listdir(attacker) == []


def test_missing_parents_are_created_private_whatever_the_umask(tmp_path):
    target = tmp_path / "new" / "deeper" / "out"
    old = os.umask(0)
    try:
        with publish.Staging(str(target), "x"):
            pass
    finally:
        os.umask(old)
    for directory in (tmp_path / "new", tmp_path / "new" / "deeper", target):
        assert oct(os.stat(directory).st_mode & 0o777) == oct(0o755), directory
