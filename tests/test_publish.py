"""Staging, locking and no-replace publishing."""

import fcntl
import os

import pytest

from ganeti_ovf import publish
from ganeti_ovf.errors import PublishError


def test_directory_published_atomically(tmp_path):
    with publish.Staging(str(tmp_path), "inst") as staging:
        assert os.path.basename(staging.path).startswith(publish.STAGING_PREFIX)
        assert os.stat(staging.path).st_mode & 0o777 == 0o700
        with open(staging.file("config.ini"), "w") as handle:
            handle.write("x")
        staging.scratch()
        assert not (tmp_path / "inst").exists()
        staging.publish_directory()
    assert sorted(os.listdir(tmp_path)) == ["inst"]
    assert os.listdir(tmp_path / "inst") == ["config.ini"]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with publish.Staging(str(tmp_path), "inst") as staging:
            open(staging.file("half"), "w").close()
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_existing_target_kept_unless_replaced(tmp_path):
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst" / "old").write_text("precious")
    with publish.Staging(str(tmp_path), "inst") as staging:
        with pytest.raises(PublishError, match="already exists"):
            staging.publish_directory()
    assert (tmp_path / "inst" / "old").read_text() == "precious"
    with publish.Staging(str(tmp_path), "inst") as staging:
        open(staging.file("new"), "w").close()
        staging.publish_directory(replace=True)
    assert os.listdir(tmp_path / "inst") == ["new"]
    assert sorted(os.listdir(tmp_path)) == ["inst"]


def test_rename_noreplace(tmp_path):
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(PublishError, match="exists"):
        publish.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_text() == "b"
    publish.rename_noreplace(str(tmp_path / "a"), str(tmp_path / "c"))
    assert (tmp_path / "c").read_text() == "a"


def test_stale_staging_cleaned_live_one_kept(tmp_path):
    stale = tmp_path / (publish.STAGING_PREFIX + "dead")
    stale.mkdir()
    (stale / "disk0.raw").write_text("partial")
    with publish.Staging(str(tmp_path), "live") as staging:
        removed = publish.clean_stale_staging(str(tmp_path))
        assert removed == [stale.name]
        assert os.path.isdir(staging.path)
    assert os.listdir(tmp_path) == []


def test_name_lock_is_exclusive(tmp_path):
    with publish.name_lock(str(tmp_path), "inst"):
        with pytest.raises(PublishError, match="another gnt-ovf run"):
            with publish.name_lock(str(tmp_path), "inst"):
                pass
    with publish.name_lock(str(tmp_path), "inst"):
        pass
    assert os.listdir(tmp_path) == []


def test_scratch_left_by_a_killed_run_is_removed_by_the_next(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    dead = tmp_path / (publish.SCRATCH_PREFIX + "dead")  # its run was SIGKILLed
    dead.mkdir(mode=0o700)
    (dead / ".qemu-img-x.log").write_text("(10.00/100%)")
    live = tmp_path / (publish.SCRATCH_PREFIX + "live")  # a run still at work
    live.mkdir(mode=0o700)
    holder = os.open(str(live), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    others = tmp_path / (publish.SCRATCH_PREFIX + "nobody")  # not ours to judge
    others.mkdir()
    (others / "file").write_text("theirs")
    os.chown(str(others), 65534, 65534)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "file").write_text("kept")
    link = tmp_path / (publish.SCRATCH_PREFIX + "link")  # never followed
    link.symlink_to(target)
    unrelated = tmp_path / "gnt-ovf-fuzz-1"
    unrelated.mkdir()
    try:
        with publish.scratch_dir() as scratch:
            assert os.path.basename(scratch).startswith(publish.SCRATCH_PREFIX)
            assert os.stat(scratch).st_mode & 0o777 == 0o700
            assert not dead.exists()
            assert sorted(os.listdir(tmp_path)) == sorted(
                [os.path.basename(scratch), live.name, others.name, link.name,
                 "elsewhere", unrelated.name])
        assert (target / "file").read_text() == "kept"
        assert (others / "file").read_text() == "theirs"
        assert live.is_dir() and unrelated.is_dir()
        assert not os.path.exists(scratch)
    finally:
        os.close(holder)


def test_scratch_removed_between_mkdtemp_and_flock_is_not_used(tmp_path, monkeypatch):
    # Another run took our new directory for abandoned (no lock yet) and
    # removed it, and somebody made another by that name: the name no
    # longer leads to the directory locked, so a new one is made instead.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    made = []
    mkdtemp, real_open = publish.tempfile.mkdtemp, os.open

    def recorded(**kwargs):
        made.append(mkdtemp(**kwargs))
        return made[-1]

    def open_then_swap(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if path == made[0] and len(made) == 1:
            os.rmdir(path)
            os.mkdir(path, 0o700)
            os.chown(path, 65534, 65534)  # taken by another user
        return fd

    monkeypatch.setattr(publish.tempfile, "mkdtemp", recorded)
    monkeypatch.setattr(os, "open", open_then_swap)
    with publish.scratch_dir() as scratch:
        assert scratch == made[1]
    monkeypatch.undo()
    assert os.path.isdir(made[0])  # the other directory is left alone
    assert not os.path.exists(made[1])
