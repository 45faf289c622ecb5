"""Tests of signature.py: signing manifests and verifying .cert files against a trust store.

Keys and certificates are made at test time: a root CA, an intermediate CA,
leaves under each, a self-signed stranger and an expired leaf.
"""

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ganeti_ovf.errors import ManifestError
from ganeti_ovf.package.signature import (
    SignatureError,
    load_trust_store,
    parse_certificate_file,
    sign_manifest,
    verify_certificate,
)

MANIFEST = b"SHA256(vm.ovf)= " + b"ab" * 32 + b"\nSHA256(disk.vmdk)= " + b"cd" * 32 + b"\n"
NOW = datetime.datetime.utcnow()
DAY = datetime.timedelta(days=1)


@dataclass
class Identity:
    key: object
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_identity(common_name: str, issuer: Optional[Identity] = None, ca: bool = False,
                  key: object = None, not_before: datetime.datetime = NOW - DAY,
                  not_after: datetime.datetime = NOW + 30 * DAY,
                  path_length: Optional[int] = None, basic_constraints: bool = True,
                  key_usage: Optional[x509.KeyUsage] = None) -> Identity:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(_name(common_name))
               .issuer_name(issuer.cert.subject if issuer else _name(common_name))
               .public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before)
               .not_valid_after(not_after))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length),
                                        critical=True)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    signing_key = issuer.key if issuer else key
    algorithm = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Identity(key, builder.sign(signing_key, algorithm))  # type: ignore[arg-type]


def usage(digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=False, encipher_only=False,
                         decipher_only=False)


@pytest.fixture(scope="module")
def pki() -> dict:
    root = make_identity("Root CA", ca=True, key=rsa.generate_private_key(65537, 2048),
                         not_before=NOW - 60 * DAY)
    intermediate = make_identity("Intermediate CA", root, ca=True, path_length=0)
    return {
        "root": root,
        "intermediate": intermediate,
        "leaf": make_identity("Signer", root),
        "rsa_leaf": make_identity("RSA Signer", root,
                                  key=rsa.generate_private_key(65537, 2048)),
        "deep_leaf": make_identity("Deep Signer", intermediate),
        "stranger": make_identity("Stranger", ca=True),
        "expired": make_identity("Old Signer", root, not_before=NOW - 30 * DAY,
                                 not_after=NOW - DAY),
        "future": make_identity("Future Signer", root, not_before=NOW + DAY),
    }


def pem(*identities: Identity) -> bytes:
    return b"".join(i.cert.public_bytes(serialization.Encoding.PEM) for i in identities)


def write_identity(tmp_path: Path, identity: Identity, *chain: Identity) -> List[str]:
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(identity.key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cert_path = tmp_path / "cert.pem"
    cert_path.write_bytes(pem(identity, *chain))
    return [str(key_path), str(cert_path)]


def store(tmp_path: Path, *identities: Identity) -> str:
    path = tmp_path / "store.pem"
    path.write_bytes(pem(*identities))
    return str(path)


def signed(tmp_path: Path, identity: Identity, *chain: Identity,
           algorithm: str = "SHA256") -> bytes:
    key_path, cert_path = write_identity(tmp_path, identity, *chain)
    return sign_manifest("vm.mf", MANIFEST, key_path, cert_path, algorithm)


@pytest.mark.parametrize("signer, algorithm", [
    ("leaf", "SHA256"), ("rsa_leaf", "SHA256"), ("rsa_leaf", "SHA1"), ("leaf", "SHA512"),
])
def test_sign_and_verify_trusted(tmp_path: Path, pki: dict, signer: str,
                                 algorithm: str) -> None:
    cert_file = signed(tmp_path, pki[signer], algorithm=algorithm)
    first_line = cert_file.split(b"\n", 1)[0]
    assert first_line.startswith(algorithm.encode() + b"(vm.mf)= ")
    info = verify_certificate(cert_file, "vm.mf", MANIFEST, store(tmp_path, pki["root"]))
    assert info.trusted, info.reason
    assert info.signer == pki[signer].cert.subject.rfc4514_string()
    assert info.issuer == "CN=Root CA" and info.algorithm == algorithm
    assert info.reason == "chains to CN=Root CA from the trust store"
    assert info.not_before <= NOW <= info.not_after


def test_flipped_manifest_byte_fails(tmp_path: Path, pki: dict) -> None:
    cert_file = signed(tmp_path, pki["leaf"])
    tampered = bytearray(MANIFEST)
    tampered[20] ^= 0x01
    with pytest.raises(SignatureError) as info:
        verify_certificate(cert_file, "vm.mf", bytes(tampered), store(tmp_path, pki["root"]),
                           source="p.ova:vm.cert")
    assert str(info.value) == ("p.ova:vm.cert: the signature of vm.mf does not match its "
                               "contents (signer CN=Signer)")
    assert isinstance(info.value, ManifestError)


def test_flipped_signature_fails(tmp_path: Path, pki: dict) -> None:
    cert_file = bytearray(signed(tmp_path, pki["rsa_leaf"]))
    position = cert_file.index(b"= ") + 5
    cert_file[position:position + 1] = b"0" if cert_file[position:position + 1] != b"0" else b"1"
    with pytest.raises(SignatureError, match="does not match"):
        verify_certificate(bytes(cert_file), "vm.mf", MANIFEST, store(tmp_path, pki["root"]))


def test_stranger_untrusted(tmp_path: Path, pki: dict) -> None:
    cert_file = signed(tmp_path, pki["stranger"])
    info = verify_certificate(cert_file, "vm.mf", MANIFEST, store(tmp_path, pki["root"]))
    assert not info.trusted
    assert info.reason == "no issuer CN=Stranger of CN=Stranger in the trust store"
    # Embedding the root beside a stranger's certificate proves nothing.
    cert_file = signed(tmp_path, pki["stranger"], pki["root"])
    info = verify_certificate(cert_file, "vm.mf", MANIFEST, store(tmp_path, pki["intermediate"]))
    assert not info.trusted


def test_pinned_self_signed_signer(tmp_path: Path, pki: dict) -> None:
    cert_file = signed(tmp_path, pki["stranger"])
    info = verify_certificate(cert_file, "vm.mf", MANIFEST,
                              store(tmp_path, pki["root"], pki["stranger"]))
    assert info.trusted and info.reason == "CN=Stranger is in the trust store"


def test_no_trust_store(tmp_path: Path, pki: dict) -> None:
    info = verify_certificate(signed(tmp_path, pki["leaf"]), "vm.mf", MANIFEST, None)
    assert not info.trusted and info.reason == "no trust store was given"


def test_expired_and_not_yet_valid(tmp_path: Path, pki: dict) -> None:
    trust = store(tmp_path, pki["root"])
    info = verify_certificate(signed(tmp_path, pki["expired"]), "vm.mf", MANIFEST, trust)
    assert not info.trusted and "CN=Old Signer expired on" in info.reason
    info = verify_certificate(signed(tmp_path, pki["future"]), "vm.mf", MANIFEST, trust)
    assert not info.trusted and "CN=Future Signer is not valid before" in info.reason
    # The same certificate checked at a time inside its validity is trusted.
    info = verify_certificate(signed(tmp_path, pki["expired"]), "vm.mf", MANIFEST, trust,
                              now=NOW - 10 * DAY)
    assert info.trusted


def test_intermediate_chain(tmp_path: Path, pki: dict) -> None:
    trust = store(tmp_path, pki["root"])
    cert_file = signed(tmp_path, pki["deep_leaf"], pki["intermediate"])
    info = verify_certificate(cert_file, "vm.mf", MANIFEST, trust)
    assert info.trusted and info.issuer == "CN=Intermediate CA"
    missing = signed(tmp_path, pki["deep_leaf"])
    info = verify_certificate(missing, "vm.mf", MANIFEST, trust)
    assert not info.trusted and "no issuer CN=Intermediate CA" in info.reason
    # A trust store directory with the intermediate alone is enough.
    directory = tmp_path / "store.d"
    directory.mkdir()
    (directory / "intermediate.pem").write_bytes(pem(pki["intermediate"]))
    (directory / "README").write_text("not a certificate\n")
    info = verify_certificate(missing, "vm.mf", MANIFEST, str(directory))
    assert info.trusted
    assert len(load_trust_store(str(directory))) == 1


def test_path_length_enforced(tmp_path: Path, pki: dict) -> None:
    # The intermediate has pathlen 0: a CA below it must not be accepted.
    sub_ca = make_identity("Sub CA", pki["intermediate"], ca=True)
    leaf = make_identity("Sub Signer", sub_ca)
    cert_file = signed(tmp_path, leaf, sub_ca, pki["intermediate"])
    info = verify_certificate(cert_file, "vm.mf", MANIFEST, store(tmp_path, pki["root"]))
    assert not info.trusted


def test_issuer_must_be_a_ca(tmp_path: Path, pki: dict) -> None:
    # A leaf (CA:FALSE) trying to act as an issuer.
    fake = make_identity("Fake", pki["leaf"])
    cert_file = signed(tmp_path, fake, pki["leaf"])
    assert not verify_certificate(cert_file, "vm.mf", MANIFEST,
                                  store(tmp_path, pki["root"])).trusted
    no_constraints = make_identity("Bare CA", pki["root"], basic_constraints=False)
    leaf = make_identity("Bare Signer", no_constraints)
    cert_file = signed(tmp_path, leaf, no_constraints)
    assert not verify_certificate(cert_file, "vm.mf", MANIFEST,
                                  store(tmp_path, pki["root"])).trusted


def test_key_usage(tmp_path: Path, pki: dict) -> None:
    no_sign = make_identity("Cert-only", pki["root"], key_usage=usage(key_cert_sign=True))
    info = verify_certificate(signed(tmp_path, no_sign), "vm.mf", MANIFEST,
                              store(tmp_path, pki["root"]))
    assert not info.trusted and "may not sign (key usage)" in info.reason
    ca_without_cert_sign = make_identity("Weak CA", pki["root"], ca=True,
                                         key_usage=usage(digital_signature=True))
    leaf = make_identity("Weak Signer", ca_without_cert_sign,
                         key_usage=usage(digital_signature=True))
    info = verify_certificate(signed(tmp_path, leaf, ca_without_cert_sign), "vm.mf", MANIFEST,
                              store(tmp_path, pki["root"]))
    assert not info.trusted


def test_ed25519_root_chain(tmp_path: Path) -> None:
    root = make_identity("Ed Root", ca=True, key=ed25519.Ed25519PrivateKey.generate())
    leaf = make_identity("Ed-issued Signer", root)
    info = verify_certificate(signed(tmp_path, leaf), "vm.mf", MANIFEST, store(tmp_path, root))
    assert info.trusted


def test_certificate_for_another_manifest(tmp_path: Path, pki: dict) -> None:
    cert_file = signed(tmp_path, pki["leaf"])
    with pytest.raises(SignatureError, match="signs vm.mf, not the manifest other.mf"):
        verify_certificate(cert_file, "other.mf", MANIFEST, None)


@pytest.mark.parametrize("data, message", [
    (b"", "the first line is not ALG(name.mf)= signature"),
    (b"garbage\n", "the first line is not ALG(name.mf)= signature"),
    (b"MD5(vm.mf)= 00\n", "unsupported digest algorithm 'MD5'"),
    (b"SHA256(vm.mf)= 000\n", "odd number of hex digits"),
    (b"SHA256(vm.mf)= 00\n", "holds no PEM certificate"),
    (b"SHA256(vm.mf)= 00\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
     "malformed PEM certificate"),
    (b"\xff\xfe\n", "the first line is not ASCII"),
])
def test_malformed_certificate_files(data: bytes, message: str) -> None:
    with pytest.raises(SignatureError) as info:
        verify_certificate(data, "vm.mf", MANIFEST, None, source="vm.cert")
    assert str(info.value).startswith("vm.cert: ") and message in str(info.value)


def test_parse_certificate_file(tmp_path: Path, pki: dict) -> None:
    algorithm, name, signature, certificates = parse_certificate_file(
        signed(tmp_path, pki["deep_leaf"], pki["intermediate"]), "c")
    assert (algorithm, name) == ("SHA256", "vm.mf") and signature
    assert [c.subject.rfc4514_string() for c in certificates] == ["CN=Deep Signer",
                                                                  "CN=Intermediate CA"]


def test_sign_manifest_errors(tmp_path: Path, pki: dict) -> None:
    key_path, _ = write_identity(tmp_path, pki["leaf"])
    other = tmp_path / "other.pem"
    other.write_bytes(pem(pki["stranger"]))
    with pytest.raises(SignatureError, match="does not match the key"):
        sign_manifest("vm.mf", MANIFEST, key_path, str(other))
    with pytest.raises(SignatureError, match="unsupported digest algorithm 'MD5'"):
        sign_manifest("vm.mf", MANIFEST, key_path, str(other), "MD5")
    with pytest.raises(SignatureError, match="cannot read"):
        sign_manifest("vm.mf", MANIFEST, str(tmp_path / "none"), str(other))
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(pki["leaf"].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(SignatureError, match="the private key is encrypted"):
        sign_manifest("vm.mf", MANIFEST, str(encrypted), str(other))
    with pytest.raises(SignatureError, match="not a usable PEM private key"):
        sign_manifest("vm.mf", MANIFEST, str(other), str(other))
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(SignatureError, match="holds no PEM certificate"):
        sign_manifest("vm.mf", MANIFEST, key_path, str(empty))
    ed = make_identity("Ed", ca=True, key=ed25519.Ed25519PrivateKey.generate())
    (tmp_path / "ed").mkdir()
    ed_key, ed_cert = write_identity(tmp_path / "ed", ed)
    with pytest.raises(SignatureError, match="unsupported key type"):
        sign_manifest("vm.mf", MANIFEST, ed_key, ed_cert)


def test_empty_trust_store(tmp_path: Path, pki: dict) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"nothing here\n")
    with pytest.raises(SignatureError, match="holds no PEM certificate"):
        verify_certificate(signed(tmp_path, pki["leaf"]), "vm.mf", MANIFEST, str(empty))
    with pytest.raises(SignatureError, match="cannot read"):
        load_trust_store(str(tmp_path / "missing.pem"))
