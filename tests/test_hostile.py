"""gnt-ovf import against hostile packages (tests/support/hostile.py): every one is
refused with one clear line, touches nothing outside the output directory,
leaves nothing in it, and never lets the planted host secret out.  Good
controls and signed packages must import with identical guest bytes."""

import gzip
import hashlib
import os
import re
from typing import Optional

import pytest
from hostile import (CASES, CONTROLS, MIB, NAME, Scene, basic_folder, descriptor_name,
                     guest_data, gzip_no_capacity, make_ca, make_leaf, ova, plant_secret,
                     sign_package)
from packaging import read_config, run_gnt_ovf, run_gnt_ovf_on_small_fs, sha256_file

COMMANDS_LOG = "/var/log/ganeti/commands.log"


# ------------------------------------------------------------------ helpers


def tree_state(root: str, skip: str) -> dict:
    """Every entry under `root` but `skip`: kind, mode, mtime and content digest."""
    state = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(directory, d) != skip]
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if os.path.islink(path):
                content = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                content = sha256_file(path)
            else:
                content = "dir"
            state[os.path.relpath(path, root)] = (info.st_mode, info.st_mtime_ns, content)
    return state


def log_offset() -> int:
    try:
        return os.path.getsize(COMMANDS_LOG)
    except OSError:
        return 0


def log_since(offset: int) -> bytes:
    try:
        with open(COMMANDS_LOG, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return b""


def output_files(out: str):
    for directory, _, files in os.walk(out):
        for name in files:
            yield os.path.join(directory, name)


def file_contains(path: str, needle: bytes) -> bool:
    with open(path, "rb") as handle:
        tail = b""
        while True:
            block = handle.read(1 << 20)
            if not block:
                return False
            if needle in tail + block:
                return True
            tail = block[-len(needle):]


class Run:
    """One gnt-ovf import of a scene's package, with what it must not disturb."""

    def __init__(self, scene: Scene, package: str, *args: str,
                 small_fs: Optional[int] = None) -> None:
        """`small_fs`: the output directory is a tmpfs of that many bytes
        (gone once the run ends; `left` says what the run left in it)."""
        self.scene = scene
        before = tree_state(scene.root, scene.out)
        offset = log_offset()
        command = ("import", "--output-dir", scene.out) + args + (package,)
        self.left: Optional[list] = None
        if small_fs is None:
            self.result = run_gnt_ovf(*command)
        else:
            os.makedirs(scene.out)
            self.result, self.left = run_gnt_ovf_on_small_fs(scene.out, small_fs, *command)
        self.log = log_since(offset)
        self.touched = tree_state(scene.root, scene.out) != before

    def failure(self) -> str:
        """The one error line: exit code 1, no traceback, only warnings besides."""
        result = self.result
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines()
                 if line.strip() and not line.startswith("WARNING: ")]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("Failure: "), result.stderr
        return lines[0]

    def assert_clean(self, leftovers=()) -> None:
        """Nothing outside the output changed; the secret went nowhere."""
        assert not self.touched, "files outside the output directory changed"
        token = self.scene.token
        assert token not in self.result.stdout and token not in self.result.stderr
        assert token.encode() not in self.log
        for path in output_files(self.scene.out):
            assert not file_contains(path, token.encode()), path
        if self.left is not None:
            assert sorted(self.left) == sorted(leftovers)
        elif os.path.isdir(self.scene.out):
            assert sorted(os.listdir(self.scene.out)) == sorted(leftovers)


def expected_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_imported(scene: Scene, name: str = NAME, disks=None) -> dict:
    directory = os.path.join(scene.out, name)
    assert sorted(os.listdir(scene.out)) == [name]
    cfg = read_config(directory)
    for index, data in enumerate(disks or ()):
        dump = os.path.join(directory, cfg.get("instance", "disk%d_dump" % index))
        assert os.path.getsize(dump) == len(data)
        assert sha256_file(dump) == expected_digest(data)
    return cfg


@pytest.fixture
def scene(tmp_path) -> Scene:
    return plant_secret(str(tmp_path))


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_package_refused(scene, case):
    package = case.build(scene)
    run = Run(scene, package, *case.args)
    line = run.failure()
    assert case.rule in line, line
    run.assert_clean()


def test_failed_conversion_leaves_no_lock_file(scene):
    # A disk refused during conversion fails while the per-name lock is held.
    case = next(c for c in CASES if c.name == "qcow2_backing_absolute")
    run = Run(scene, case.build(scene))
    assert case.rule in run.failure()
    assert os.listdir(scene.out) == []


def test_gzip_without_capacity_bounded_by_free_space(scene):
    # No ovf:capacity and the default --max-disk-size of 16 TiB: the output
    # filesystem's free space bounds the inflation, checked before each
    # write, so the filesystem is never filled.
    package = gzip_no_capacity(scene, gzip.compress(guest_data(32 * MIB), 1))
    run = Run(scene, package, small_fs=16 * MIB)
    line = run.failure()
    assert "expands beyond the free space of %s/" % scene.out in line, line
    run.assert_clean()


def test_case_names_are_unique():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


def test_every_case_names_its_rule():
    # An empty rule is in every message: such a case would pass on any failure.
    assert [case.name for case in CASES if not case.rule.strip()] == []


# ------------------------------------------------------------------ controls


@pytest.mark.parametrize("control", CONTROLS, ids=[c.name for c in CONTROLS])
def test_good_control_imports(scene, control):
    package, disks = control.build(scene)
    run = Run(scene, package, *control.args)
    assert run.result.returncode == 0, run.result.stderr
    assert "Traceback" not in run.result.stderr
    for text in control.expected:
        assert text in run.result.stderr
    run.assert_clean(leftovers=[NAME])
    assert_imported(scene, disks=disks)


def test_host_params_not_applied(scene):
    control = next(c for c in CONTROLS if c.name == "host_params_dropped")
    package, _ = control.build(scene)
    run_gnt_ovf("import", "--output-dir", scene.out, package, check=True)
    cfg = assert_imported(scene)
    with open(os.path.join(scene.out, NAME, "config.ini")) as handle:
        text = handle.read()
    for word in ("kvm_extra", "kernel_path", "script_dir", scene.secret):
        assert word not in text
    assert cfg.get("hypervisor", "acpi") == "True"


def test_invalid_package_name_overridden_by_option(scene):
    package = descriptor_name(scene, "bad name!")
    run = Run(scene, package, "--name", "good.example.com")
    assert run.result.returncode == 0, run.result.stderr
    run.assert_clean(leftovers=["good.example.com"])
    assert_imported(scene, "good.example.com", disks=[guest_data()])


def test_control_name_refused_even_with_option(scene):
    # --name replaces the name, but a control character elsewhere in the
    # descriptor is still refused: it is a property of the package.
    package = descriptor_name(scene, "evil\u0085name")
    run = Run(scene, package, "--name", "good.example.com")
    assert "control characters" in run.failure()
    run.assert_clean()


# ------------------------------------------------------------------ signatures


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    ca = make_ca(str(base / "ca"), "Test Root CA")
    other = make_ca(str(base / "other"), "Other CA")
    return {"ca": ca, "leaf": make_leaf(str(base / "leaf"), ca, "Package Signer"),
            "stranger": make_leaf(str(base / "stranger"), other, "Stranger")}


def signed_ova(scene: Scene, leaf) -> str:
    basic_folder(scene)
    sign_package(scene.path("appliance.mf"), scene.path("appliance.cert"), leaf)
    return ova(scene)


def test_signed_package_trusted(scene, pki):
    package = signed_ova(scene, pki["leaf"])
    run = Run(scene, package, "--trust-store", pki["ca"].cert, "--require-signature")
    assert run.result.returncode == 0, run.result.stderr
    run.assert_clean(leftovers=[NAME])
    assert_imported(scene, disks=[guest_data()])


def test_signed_folder_trusted(scene, pki):
    basic_folder(scene)
    sign_package(scene.path("appliance.mf"), scene.path("appliance.cert"), pki["leaf"])
    run = Run(scene, scene.path("appliance.ovf"), "--trust-store", pki["ca"].cert,
              "--require-signature")
    assert run.result.returncode == 0, run.result.stderr
    assert_imported(scene, disks=[guest_data()])


def test_signed_manifest_changed_refused(scene, pki):
    basic_folder(scene)
    mf = scene.path("appliance.mf")
    sign_package(mf, scene.path("appliance.cert"), pki["leaf"])
    with open(mf, "rb") as handle:
        text = handle.read()
    # Upper-case one digest digit: the digests still verify, the signature cannot.
    position = re.search(rb"= [0-9]*[a-f]", text).end() - 1
    with open(mf, "wb") as handle:
        handle.write(text[:position] + text[position:position + 1].upper()
                     + text[position + 1:])
    run = Run(scene, ova(scene), "--trust-store", pki["ca"].cert, "--require-signature")
    assert "signature" in run.failure()
    run.assert_clean()


def test_signed_manifest_changed_refused_without_requirement(scene, pki):
    basic_folder(scene)
    mf = scene.path("appliance.mf")
    sign_package(mf, scene.path("appliance.cert"), pki["leaf"])
    with open(mf, "ab") as handle:
        handle.write(b"\n")
    run = Run(scene, ova(scene), "--trust-store", pki["ca"].cert)
    assert "signature" in run.failure()
    run.assert_clean()


def test_signer_outside_trust_store_refused(scene, pki):
    package = signed_ova(scene, pki["stranger"])
    run = Run(scene, package, "--trust-store", pki["ca"].cert, "--require-signature")
    line = run.failure()
    assert "not trusted" in line and "Stranger" in line, line
    run.assert_clean()


def test_unsigned_refused_when_signature_required(scene, pki):
    basic_folder(scene)
    run = Run(scene, ova(scene), "--trust-store", pki["ca"].cert, "--require-signature")
    assert "signature" in run.failure()
    run.assert_clean()


def test_untrusted_signature_only_warns(scene, pki):
    package = signed_ova(scene, pki["stranger"])
    run = Run(scene, package, "--trust-store", pki["ca"].cert)
    assert run.result.returncode == 0, run.result.stderr
    warnings = [line for line in run.result.stderr.splitlines() if "not trusted" in line]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: "), run.result.stderr
    assert_imported(scene, disks=[guest_data()])


def test_missing_trust_store_refused(scene, pki):
    package = signed_ova(scene, pki["leaf"])
    run = Run(scene, package, "--trust-store", os.path.join(scene.root, "nope.pem"),
              "--require-signature")
    assert "trust store" in run.failure()
    run.assert_clean()

