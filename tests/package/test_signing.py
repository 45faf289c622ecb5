"""Signed packages end to end: export --sign, import --require-signature."""

import os
import subprocess

import pytest
from packaging import run_gnt_ovf
from test_export import write_ganeti3_export


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a vendor key signed by it, and a stranger's self-signed key."""
    d = str(tmp_path_factory.mktemp("pki"))
    ext = os.path.join(d, "leaf.ext")
    with open(ext, "w") as handle:
        handle.write("keyUsage=critical,digitalSignature\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-subj", "/CN=Test CA", "-days", "2",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "vendor.key",
            "-out", "vendor.csr", "-subj", "/CN=Vendor", cwd=d)
    openssl("x509", "-req", "-in", "vendor.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "vendor.pem", "-days", "2", "-extfile", ext, cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", "stranger.key", "-out", "stranger.pem",
            "-subj", "/CN=Stranger", "-days", "2", cwd=d)
    return d


def export_signed(tmp_path, pki, key, cert, ova):
    write_ganeti3_export(str(tmp_path / "src"))
    source = str(tmp_path / "src")
    out = str(tmp_path / "out")
    args = ["export", "--output-dir", out, "--sign", os.path.join(pki, key),
            "--cert", os.path.join(pki, cert), "--format", "vmdk"]
    run_gnt_ovf(*(args + (["--ova"] if ova else []) + [source]), check=True)
    (name,) = os.listdir(out)
    path = os.path.join(out, name)
    return path if ova else os.path.join(path, name + ".ovf")


@pytest.mark.parametrize("ova", [True, False], ids=["ova", "folder"])
def test_signed_by_trusted_ca_imports(tmp_path, pki, ova):
    package = export_signed(tmp_path, pki, "vendor.key", "vendor.pem", ova)
    result = run_gnt_ovf("import", "--output-dir", tmp_path / "imp", "--trust-store",
                         os.path.join(pki, "ca.pem"), "--require-signature", package)
    assert result.returncode == 0, result.stderr
    info = run_gnt_ovf("info", "--trust-store", os.path.join(pki, "ca.pem"), package,
                       check=True).stdout
    assert "CN=Vendor" in info and "trusted" in info and "NOT TRUSTED" not in info


def test_stranger_refused_when_required(tmp_path, pki):
    package = export_signed(tmp_path, pki, "stranger.key", "stranger.pem", True)
    store = os.path.join(pki, "ca.pem")
    result = run_gnt_ovf("import", "--output-dir", tmp_path / "imp", "--trust-store",
                         store, "--require-signature", package)
    assert result.returncode == 1
    assert "not trusted" in result.stderr
    assert not os.path.exists(tmp_path / "imp") or os.listdir(tmp_path / "imp") == []
    # without --require-signature an untrusted signer only warns
    relaxed = run_gnt_ovf("import", "--output-dir", tmp_path / "imp2", "--trust-store",
                          store, package)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "WARNING" in relaxed.stderr and "not trusted" in relaxed.stderr


def test_tampered_manifest_refused(tmp_path, pki):
    package = export_signed(tmp_path, pki, "vendor.key", "vendor.pem", False)
    manifest = package[:-4] + ".mf"
    data = bytearray(open(manifest, "rb").read())
    data[-2] = ord("0") if data[-2] != ord("0") else ord("1")
    with open(manifest, "wb") as handle:
        handle.write(data)
    result = run_gnt_ovf("import", "--output-dir", tmp_path / "imp", "--trust-store",
                         os.path.join(pki, "ca.pem"), package)
    assert result.returncode == 1
    assert "signature" in result.stderr.lower()


def test_unsigned_refused_when_required(tmp_path, pki):
    write_ganeti3_export(str(tmp_path / "src"))
    source = str(tmp_path / "src")
    run_gnt_ovf("export", "--output-dir", tmp_path / "out", "--ova", source, check=True)
    (name,) = os.listdir(tmp_path / "out")
    result = run_gnt_ovf("import", "--output-dir", tmp_path / "imp", "--trust-store",
                         os.path.join(pki, "ca.pem"), "--require-signature",
                         tmp_path / "out" / name)
    assert result.returncode == 1 and "not signed" in result.stderr


def test_sign_needs_cert(tmp_path, pki):
    write_ganeti3_export(str(tmp_path / "src"))
    source = str(tmp_path / "src")
    result = run_gnt_ovf("export", "--output-dir", tmp_path / "out", "--sign",
                         os.path.join(pki, "vendor.key"), source)
    assert result.returncode == 1 and "--cert" in result.stderr
