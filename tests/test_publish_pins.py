"""Pins of publish.py's rules that a mutation run found untested: the modes
of what is published and of private directories, the return values, the
no-replace rename's other failures and its fallback, what replacing removes
(never what a symlink points at), the staging names, descriptors released.
"""

import os

import pytest
from ganeti import errors, runtime

from ganeti_ovf import publish
from ganeti_ovf.errors import PublishError


@pytest.fixture
def no_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path) -> int:
    return os.lstat(str(path)).st_mode & 0o777


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ modes and results


def test_published_directory_modes_and_result(tmp_path, no_umask):
    out = tmp_path / "new" / "out"  # created on the way, 0755
    with publish.Staging(str(out), "inst") as staging:
        scratch = staging.scratch()
        assert os.path.isdir(scratch) and mode(scratch) == 0o700
        assert mode(staging.path) == 0o700
        assert staging.publish_directory() == str(out / "inst")
    assert mode(out) == 0o755
    assert mode(out / "inst") == 0o755
    assert os.listdir(str(out / "inst")) == []  # scratch is never published


def test_published_file_mode_and_result(tmp_path, no_umask):
    with publish.Staging(str(tmp_path), "vm.ova") as staging:
        with open(staging.file("vm.ova"), "w") as handle:
            handle.write("archive")
        os.chmod(staging.file("vm.ova"), 0o600)
        assert staging.publish_file("vm.ova") == str(tmp_path / "vm.ova")
    assert mode(tmp_path / "vm.ova") == 0o644
    assert (tmp_path / "vm.ova").read_text() == "archive"
    assert os.listdir(str(tmp_path)) == ["vm.ova"]


def test_published_with_a_narrower_mode(tmp_path, no_umask):
    with publish.Staging(str(tmp_path), "vm.ova") as staging:
        open(staging.file("vm.ova"), "w").close()
        staging.publish_file("vm.ova", mode=0o640)
    assert mode(tmp_path / "vm.ova") == 0o640
    with publish.Staging(str(tmp_path), "inst") as staging:
        staging.publish_directory(mode=0o600)
    assert mode(tmp_path / "inst") == 0o700


def stat_of(st_mode: int, st_gid: int = 0) -> os.stat_result:
    return os.stat_result((st_mode, 0, 0, 1, 0, st_gid, 0, 0, 0, 0))


@pytest.mark.parametrize("sources, gid, expected", [
    ([], 0, 0o644),  # no dump: what results always got
    ([0o644], 0, 0o644),
    ([0o777], 0, 0o644),  # never wider than 0644
    ([0o600], 0, 0o600),
    ([0o400], 0, 0o600),  # the owner (root) always reads and writes its result
    ([0o640], 0, 0o640),
    ([0o640], 5, 0o600),  # the dump's group is not the result's
    ([0o604], 0, 0o604),
    ([0o044], 0, 0o644),
    ([0o644, 0o640], 0, 0o640),  # every source must grant it
    ([0o644, 0o604], 0, 0o604),
    ([0o604, 0o640], 0, 0o600),
    ([0o020, 0o002], 0, 0o600),  # write bits give no read
])
def test_not_wider_mode(sources, gid, expected):
    assert publish.not_wider_mode([stat_of(0o100000 | m) for m in sources], gid) == expected


def test_not_wider_mode_compares_each_sources_group():
    sources = [stat_of(0o100640, 0), stat_of(0o100640, 7)]
    assert publish.not_wider_mode(sources, 0) == 0o600
    assert publish.not_wider_mode(sources[:1], 0) == 0o640


@pytest.mark.parametrize("file_mode, directory", [
    (0o644, 0o755), (0o640, 0o750), (0o600, 0o700), (0o604, 0o705), (0o400, 0o500)])
def test_directory_mode_follows_its_files(file_mode, directory):
    assert publish.directory_mode(file_mode) == directory


def test_new_files_group(tmp_path):
    with publish.Staging(str(tmp_path), "inst") as staging:
        assert staging.new_file_gid() == os.getegid()
        os.chown(staging.path, -1, 7)
        assert staging.new_file_gid() == os.getegid()  # not set-group-ID
        os.chmod(staging.path, 0o2700)
        assert staging.new_file_gid() == 7
        open(staging.file("x"), "w").close()
        assert os.stat(staging.file("x")).st_gid == 7


def test_published_file_replaces_only_when_asked(tmp_path):
    (tmp_path / "vm.ova").write_text("old")
    with publish.Staging(str(tmp_path), "vm.ova") as staging:
        (tmp_path / "x").write_text("")
        open(staging.file("vm.ova"), "w").close()
        with pytest.raises(PublishError, match="vm.ova already exists"):
            staging.publish_file("vm.ova")
        staging.publish_file("vm.ova", replace=True)
    assert (tmp_path / "vm.ova").read_text() == ""
    assert sorted(os.listdir(str(tmp_path))) == ["vm.ova", "x"]


def test_replacing_a_symlink_removes_the_link_not_its_target(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("precious")
    os.symlink(str(elsewhere), str(out / "inst"))
    with publish.Staging(str(out), "inst") as staging:
        staging.publish_directory(replace=True)
    assert not os.path.islink(str(out / "inst"))
    assert (elsewhere / "keep").read_text() == "precious"
    assert os.listdir(str(out)) == ["inst"]


def test_descriptors_released(tmp_path):
    before = open_descriptors()
    with publish.Staging(str(tmp_path), "inst"):
        assert open_descriptors() == before + 1  # the staging lock
    assert open_descriptors() == before
    with publish.Staging(str(tmp_path), "inst") as staging:
        staging.publish_directory()
    assert open_descriptors() == before


# ------------------------------------------------------------------ failures


def test_output_directory_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PublishError) as info:
        publish.Staging(str(tmp_path / "file" / "out"), "inst").__enter__()
    assert str(info.value) == "%s: cannot create output directory: Not a directory" % (
        tmp_path / "file" / "out")


def test_staging_that_cannot_be_created():
    # /proc exists but no directory can be made in it.
    with pytest.raises(PublishError, match="^/proc: cannot create staging directory: No such"):
        publish.Staging("/proc", "inst").__enter__()


def test_lock_that_cannot_be_created(tmp_path):
    with pytest.raises(PublishError, match="cannot create lock: No such file or directory"):
        with publish.name_lock(str(tmp_path / "missing"), "inst"):
            pass


def test_lock_file_is_private(tmp_path, no_umask):
    with publish.name_lock(str(tmp_path), "inst"):
        assert mode(tmp_path / (publish.LOCK_PREFIX + "inst")) == 0o600


def test_rename_reports_other_failures(tmp_path):
    with pytest.raises(PublishError) as info:
        publish.rename_noreplace(str(tmp_path / "missing"), str(tmp_path / "target"))
    assert str(info.value) == "%s: cannot put in place: No such file or directory" % (
        tmp_path / "target")


def test_rename_with_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").write_text("a")
    publish.rename_noreplace("a", "b")
    assert (tmp_path / "b").read_text() == "a"
    with pytest.raises(PublishError, match="File exists"):
        publish.rename_noreplace("b", "b")


def test_rename_fallback_without_renameat2(tmp_path, monkeypatch):
    # Filesystems or C libraries without RENAME_NOREPLACE: check, then rename.
    monkeypatch.setattr(publish, "_renameat2", None)
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(PublishError) as info:
        publish.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert str(info.value) == "%s: cannot put in place: File exists" % (tmp_path / "b")
    publish.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert (tmp_path / "c").read_text() == "a" and (tmp_path / "b").read_text() == "b"


def test_clean_stale_staging_of_a_missing_directory(tmp_path):
    assert publish.clean_stale_staging(str(tmp_path / "missing")) == []


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name, safe", [
    ("a/b c", "a_b_c"),
    ("\u00e9t\u00e9-_.x", "\u00e9t\u00e9-_.x"),
    ("n" * 100, "n" * 64),
])
def test_staging_names(tmp_path, name, safe):
    with publish.Staging(str(tmp_path), name) as staging:
        base = os.path.basename(staging.path)
        assert base.startswith(publish.STAGING_PREFIX + safe + ".")
        assert "/" not in base[len(publish.STAGING_PREFIX):]
        assert len(base) == len(publish.STAGING_PREFIX) + len(safe) + 1 + 8


# ------------------------------------------------------------------ output directory owners


def owned(path, uid: int, gid: int, mode: int) -> str:
    os.mkdir(str(path))
    os.chown(str(path), uid, gid)
    os.chmod(str(path), mode)
    return str(path)


def test_output_directory_of_a_system_user_refused(tmp_path):
    path = owned(tmp_path / "out", 1, 0, 0o755)  # uid 1: daemon, not Ganeti's
    with pytest.raises(PublishError, match="out: refused as \\(part of\\) the output"
                                           " directory: it belongs to uid 1,"):
        publish.output_directory(path)


def test_output_directory_writable_by_root_group_accepted(tmp_path):
    path = owned(tmp_path / "out", 0, 0, 0o775)
    assert publish.output_directory(path) == path


def test_output_directory_groups_of_ganeti(tmp_path):
    # Ganeti's daemon groups are trusted; its admin group (people allowed to
    # run gnt-* commands, not root) is not.
    ents = runtime.GetEnts()
    path = owned(tmp_path / "daemons", 0, ents.daemons_gid, 0o775)
    assert publish.output_directory(path) == path
    path = owned(tmp_path / "admin", 0, ents.admin_gid, 0o775)
    with pytest.raises(PublishError, match="admin: .* it is writable by group %d,"
                                           % ents.admin_gid):
        publish.output_directory(path)


def test_root_is_trusted_whoever_runs_gnt_ovf(monkeypatch):
    """Root (user and group) always, the user running gnt-ovf too, even where
    Ganeti's daemon users are not set up."""
    def no_ganeti_users():
        raise errors.GenericError("no Ganeti users here")
    monkeypatch.setattr(runtime, "GetEnts", no_ganeti_users)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert publish._trusted_ids() == ({0, 1000}, {0})


def test_scratch_directory_is_private_and_removed(tmp_path, monkeypatch, no_umask):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with publish.scratch_dir() as scratch:
        assert os.path.dirname(scratch) == str(tmp_path)
        assert os.stat(scratch).st_mode & 0o777 == 0o700
    assert os.listdir(str(tmp_path)) == []
