"""Tests of installation: the Makefile's install/uninstall targets and the
Debian package built from debian/.

`make install` goes into a temporary DESTDIR, and the installed command is
run from there.  The .deb is built with dpkg-buildpackage from a copy of the
checkout (tracked and untracked files, as `git ls-files` lists them), since
dpkg-buildpackage writes its results beside the source tree.  The build is
marked `slow` so that `-m "not slow"` leaves it out; it runs by default.
"""

import hashlib
import os
import shutil
import stat
import subprocess
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"
PYLIB = os.path.join("usr", "lib", "python3", "dist-packages")
# The library's packages in the checkout: the top one and each stage's.
PACKAGES = sorted(os.path.relpath(directory, ROOT)
                  for directory, _dirs, names in os.walk(os.path.join(ROOT, "ganeti_ovf"))
                  if "__init__.py" in names)
HOOK_SOURCE = os.path.join("hooks", "ovf-export")
HOOK_CONF_SOURCE = os.path.join("hooks", "ovf-export.conf")
HOOK_TARGET = os.path.join("etc", "ganeti", "hooks", "instance-export-post.d",
                           "ganeti-ovf-export")
HOOK_CONF_TARGET = os.path.join("etc", "ganeti", "ovf-export.conf.example")
COMMANDS = ("import", "export", "info")
DEB_DEPENDS = ("python3", "ganeti (>= 3.0) | ganeti-3.0", "qemu-utils", "python3-lxml",
               "python3-pyparsing", "python3-cryptography", "util-linux")


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def expected_files() -> Dict[str, str]:
    """Installed path (relative to DESTDIR) -> source path, from the tree."""
    files = {os.path.join("usr", "sbin", "gnt-ovf"): os.path.join("scripts", "gnt-ovf"),
             os.path.join("usr", "share", "man", "man8", "gnt-ovf.8"):
                 os.path.join("man", "gnt-ovf.8")}
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py"):
                files[os.path.join(PYLIB, package, name)] = os.path.join(package, name)
    if os.path.isfile(os.path.join(ROOT, HOOK_SOURCE)):
        files[HOOK_TARGET] = HOOK_SOURCE
    if os.path.isfile(os.path.join(ROOT, HOOK_CONF_SOURCE)):
        files[HOOK_CONF_TARGET] = HOOK_CONF_SOURCE
    return files


def installed_files(destdir: str) -> List[str]:
    found = []
    for directory, _dirs, names in os.walk(destdir):
        for name in names:
            found.append(os.path.relpath(os.path.join(directory, name), destdir))
    return sorted(found)


def make(target: str, destdir: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "-s", "-C", ROOT, target, "DESTDIR=%s" % destdir,
                             "PREFIX=/usr"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def destdir(tmp_path) -> str:
    path = str(tmp_path / "root")
    make("install", path)
    return path


# ------------------------------------------------------------------ make install


def test_install_under_usr_local_is_found_by_debians_python(tmp_path):
    destdir = str(tmp_path / "root")
    result = subprocess.run(["make", "-s", "-C", ROOT, "install", "DESTDIR=%s" % destdir,
                             "PREFIX=/usr/local"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    search_path = subprocess.run([PYTHON, "-c", "import sys; print('\\n'.join(sys.path))"],
                                 capture_output=True, text=True, check=True).stdout.split()
    library = [d for d in search_path if d.startswith("/usr/local/")
               and os.path.isfile(os.path.join(destdir + d, "ganeti_ovf", "cli.py"))]
    assert library, search_path
    assert os.path.isfile(os.path.join(destdir, "usr/local/sbin/gnt-ovf"))


def test_install_refuses_a_prefix_python_does_not_search(tmp_path):
    destdir = str(tmp_path / "root")
    result = subprocess.run(["make", "-s", "-C", ROOT, "install", "DESTDIR=%s" % destdir,
                             "PREFIX=/opt/ganeti-ovf"], capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0
    assert "does not search a library directory under PREFIX=/opt/ganeti-ovf" \
        in result.stderr
    assert not os.path.exists(destdir)


def test_install_puts_exactly_the_expected_files(destdir):
    assert installed_files(destdir) == sorted(expected_files())


def test_installed_files_are_the_sources(destdir):
    for installed, source in expected_files().items():
        assert sha256(os.path.join(destdir, installed)) == \
            sha256(os.path.join(ROOT, source)), installed


def test_installed_modes(destdir):
    for installed in expected_files():
        mode = stat.S_IMODE(os.stat(os.path.join(destdir, installed)).st_mode)
        executable = installed.endswith("gnt-ovf") or installed == HOOK_TARGET
        assert mode == (0o755 if executable else 0o644), installed


def test_installed_tree_holds_every_stage_package(destdir):
    # A stage added later cannot be forgotten by the Makefile.
    assert len(PACKAGES) >= 5
    for package in PACKAGES:
        assert os.path.isfile(os.path.join(destdir, PYLIB, package, "__init__.py")), package


def _installed_env(destdir: str) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.path.join(destdir, PYLIB), LC_ALL="C.UTF-8")
    env.pop("PYTHONHOME", None)
    return env


def test_installed_command_runs_from_the_installed_modules(destdir, tmp_path):
    env = _installed_env(destdir)
    # Run away from the checkout, so that only PYTHONPATH can supply the modules.
    where = subprocess.run([PYTHON, "-c", "import ganeti_ovf; print(ganeti_ovf.__file__)"],
                           cwd=str(tmp_path), env=env, capture_output=True, text=True,
                           check=True)
    assert where.stdout.strip() == os.path.join(destdir, PYLIB, "ganeti_ovf", "__init__.py")

    result = subprocess.run([os.path.join(destdir, "usr", "sbin", "gnt-ovf"), "--help"],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "gnt-ovf" in result.stdout
    for command in COMMANDS:
        assert any(line.split()[:1] == [command] for line in result.stdout.splitlines()), \
            command


def test_installed_man_page_renders(destdir):
    result = subprocess.run(["man", "-l", os.path.join(destdir, "usr", "share", "man",
                                                       "man8", "gnt-ovf.8")],
                            env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stderr == ""
    assert "IMPORT" in result.stdout


def test_uninstall_removes_what_install_put(destdir):
    make("uninstall", destdir)
    assert installed_files(destdir) == []
    assert not os.path.exists(os.path.join(destdir, PYLIB, "ganeti_ovf"))


def test_install_twice_is_harmless(destdir):
    make("install", destdir)
    assert installed_files(destdir) == sorted(expected_files())


# ------------------------------------------------------------------ Debian package


def checkout_files() -> List[str]:
    """Tracked and untracked (not ignored) files of the checkout that exist."""
    result = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True)
    names = [name.decode() for name in result.stdout.split(b"\0") if name]
    return sorted(name for name in set(names) if os.path.isfile(os.path.join(ROOT, name)))


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> str:
    work = str(tmp_path_factory.mktemp("deb"))
    source = os.path.join(work, "ganeti-ovf")
    for name in checkout_files():
        target = os.path.join(source, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), target)
    env = dict(os.environ, LC_ALL="C.UTF-8")
    for variable in ("DEB_BUILD_OPTIONS", "DEB_BUILD_PROFILES", "MAKEFLAGS", "DESTDIR"):
        env.pop(variable, None)
    result = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=source, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    debs = [name for name in os.listdir(work) if name.endswith(".deb")]
    assert debs == ["ganeti-ovf_0.1.0_all.deb"]
    return os.path.join(work, debs[0])


def _deb_paths(deb: str) -> List[str]:
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    # "mode owner size date time ./path": the path is the sixth field.
    return [line.split(None, 5)[5].lstrip(".") for line in listing.splitlines()]


def _deb_field(deb: str, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, field], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.slow
def test_deb_holds_the_command_modules_and_manual(deb):
    paths = set(_deb_paths(deb))
    assert "/usr/sbin/gnt-ovf" in paths
    assert "/usr/share/man/man8/gnt-ovf.8.gz" in paths
    assert "/usr/share/doc/ganeti-ovf/copyright" in paths
    for installed in expected_files():
        if installed.startswith((PYLIB, "etc")):
            assert "/" + installed in paths, installed


@pytest.mark.slow
def test_deb_marks_files_in_etc_as_conffiles(deb, tmp_path):
    control = str(tmp_path / "control")
    subprocess.run(["dpkg-deb", "-e", deb, control], check=True)
    conffiles_path = os.path.join(control, "conffiles")
    conffiles = []
    if os.path.exists(conffiles_path):
        with open(conffiles_path) as handle:
            conffiles = handle.read().split()
    etc = sorted("/" + path for path in expected_files() if path.startswith("etc"))
    assert sorted(conffiles) == etc


@pytest.mark.slow
def test_deb_ships_no_byte_code_or_build_leftovers(deb):
    for path in _deb_paths(deb):
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
        assert "/debian/" not in path and "/tests/" not in path, path


@pytest.mark.slow
def test_deb_control_fields(deb):
    assert _deb_field(deb, "Package") == "ganeti-ovf"
    assert _deb_field(deb, "Version") == "0.1.0"
    assert _deb_field(deb, "Architecture") == "all"
    depends = [item.strip() for item in _deb_field(deb, "Depends").split(",")]
    for dependency in DEB_DEPENDS:
        assert dependency in depends, dependency
    recommends = [item.strip() for item in _deb_field(deb, "Recommends").split(",")]
    assert recommends == ["ganeti-os-noop", "pigz", "libdeflate0", "libisal2", "isal"]


@pytest.mark.slow
def test_deb_command_is_executable(deb):
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    line = next(line for line in listing.splitlines() if line.endswith("./usr/sbin/gnt-ovf"))
    assert line.startswith("-rwxr-xr-x root/root")


@pytest.mark.slow
def test_deb_version_matches_the_package(deb):
    import ganeti_ovf

    assert _deb_field(deb, "Version") == ganeti_ovf.__version__
