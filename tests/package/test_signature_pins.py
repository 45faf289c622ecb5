"""Pins of signature.py's chain rules that a mutation run found untested.

Each test fails if one check of the chain verification is removed or its
bound moved: issuers are matched by name AND signature, every certificate of
the chain (trust anchors and intermediates included) must be inside its
validity dates (both ends inclusive), the chain depth and the trust store
size are bounded, and an RSA-PSS signature on a certificate is not trusted.
The identities come from test_signature.py.
"""

import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.x509.oid import SignatureAlgorithmOID
from test_signature import (DAY, MANIFEST, NOW, Identity, _name, make_identity, pem, signed,
                            store)

from ganeti_ovf.package.signature import (MAX_CHAIN_DEPTH, MAX_STORE_FILE, SignatureError,
                                          load_trust_store, verify_certificate)

SECOND = datetime.timedelta(seconds=1)


@pytest.fixture(scope="module")
def root():
    return make_identity("Root CA", ca=True, not_before=NOW - 60 * DAY,
                         not_after=NOW + 60 * DAY)


def verify(tmp_path: Path, cert_file: bytes, *anchors, now=None):
    return verify_certificate(cert_file, "vm.mf", MANIFEST, store(tmp_path, *anchors),
                              now=now)


# ------------------------------------------------------------------ issuer by name only


def test_anchor_name_without_its_signature_is_not_trusted(tmp_path, root):
    # An impostor CA bearing the trust anchor's name, with its own key.
    impostor = make_identity("Root CA", ca=True)
    leaf = make_identity("Forged Signer", impostor)
    info = verify(tmp_path, signed(tmp_path, leaf), root)
    assert not info.trusted
    assert info.reason == "no issuer CN=Root CA of CN=Forged Signer in the trust store"


def test_intermediate_name_without_its_signature_is_not_trusted(tmp_path, root):
    # The genuine intermediate is embedded, but the signer was issued by an
    # impostor of the same name.
    genuine = make_identity("Intermediate CA", root, ca=True)
    impostor = make_identity("Intermediate CA", ca=True)
    leaf = make_identity("Forged Signer", impostor)
    info = verify(tmp_path, signed(tmp_path, leaf, genuine), root)
    assert not info.trusted
    assert info.reason == "no issuer CN=Intermediate CA of CN=Forged Signer in the trust store"
    # The genuine leaf under the genuine intermediate is trusted (control).
    good = make_identity("Signer", genuine)
    assert verify(tmp_path, signed(tmp_path, good, genuine), root).trusted


def test_embedded_intermediate_claiming_the_anchor_is_not_trusted(tmp_path, root):
    # A CA whose certificate names the anchor as issuer, signed by an impostor.
    impostor = make_identity("Root CA", ca=True)
    forged = make_identity("Forged CA", impostor, ca=True)
    leaf = make_identity("Forged Signer", forged)
    info = verify(tmp_path, signed(tmp_path, leaf, forged), root)
    assert not info.trusted
    assert info.reason == "no issuer CN=Root CA of CN=Forged CA in the trust store"


# ------------------------------------------------------------------ validity dates


def test_expired_trust_anchor_refused(tmp_path):
    old_root = make_identity("Old Root", ca=True, not_before=NOW - 90 * DAY,
                             not_after=NOW - DAY)
    leaf = make_identity("Signer", old_root, not_before=NOW - 30 * DAY)  # valid today
    info = verify(tmp_path, signed(tmp_path, leaf), old_root)
    assert not info.trusted and info.reason.startswith("CN=Old Root expired on ")
    # Inside the anchor's dates the same chain is trusted.
    assert verify(tmp_path, signed(tmp_path, leaf), old_root, now=NOW - 2 * DAY).trusted


def test_trust_anchor_not_yet_valid_refused(tmp_path):
    new_root = make_identity("New Root", ca=True, not_before=NOW + DAY,
                             not_after=NOW + 90 * DAY)
    leaf = make_identity("Signer", new_root)
    info = verify(tmp_path, signed(tmp_path, leaf), new_root)
    assert not info.trusted and info.reason.startswith("CN=New Root is not valid before ")


def test_expired_trust_anchor_pinned_as_signer_refused(tmp_path):
    old = make_identity("Old Pinned", ca=True, not_before=NOW - 90 * DAY,
                        not_after=NOW - DAY)
    info = verify(tmp_path, signed(tmp_path, old), old)
    assert not info.trusted and info.reason.startswith("CN=Old Pinned expired on ")


def test_expired_intermediate_refused(tmp_path, root):
    old = make_identity("Old Intermediate", root, ca=True, not_before=NOW - 30 * DAY,
                        not_after=NOW - DAY)
    leaf = make_identity("Deep Signer", old, not_before=NOW - 30 * DAY)
    info = verify(tmp_path, signed(tmp_path, leaf, old), root)
    assert not info.trusted and info.reason.startswith("CN=Old Intermediate expired on ")
    assert verify(tmp_path, signed(tmp_path, leaf, old), root, now=NOW - 2 * DAY).trusted


def test_intermediate_not_yet_valid_refused(tmp_path, root):
    new = make_identity("New Intermediate", root, ca=True, not_before=NOW + DAY)
    leaf = make_identity("Deep Signer", new)
    info = verify(tmp_path, signed(tmp_path, leaf, new), root)
    assert not info.trusted
    assert info.reason.startswith("CN=New Intermediate is not valid before ")


def test_validity_dates_are_inclusive(tmp_path, root):
    start = (NOW - 5 * DAY).replace(microsecond=0)
    end = (NOW + 5 * DAY).replace(microsecond=0)
    leaf = make_identity("Dated Signer", root, not_before=start, not_after=end)
    cert_file = signed(tmp_path, leaf)
    assert verify(tmp_path, cert_file, root, now=start).trusted
    assert verify(tmp_path, cert_file, root, now=end).trusted
    early = verify(tmp_path, cert_file, root, now=start - SECOND)
    assert not early.trusted and "CN=Dated Signer is not valid before" in early.reason
    late = verify(tmp_path, cert_file, root, now=end + SECOND)
    assert not late.trusted and "CN=Dated Signer expired on" in late.reason


def test_anchor_validity_dates_are_inclusive(tmp_path):
    end = (NOW + 5 * DAY).replace(microsecond=0)
    anchor = make_identity("Short Root", ca=True, not_before=NOW - 5 * DAY, not_after=end)
    leaf = make_identity("Signer", anchor, not_after=NOW + 9 * DAY)
    cert_file = signed(tmp_path, leaf)
    assert verify(tmp_path, cert_file, anchor, now=end).trusted
    late = verify(tmp_path, cert_file, anchor, now=end + SECOND)
    assert not late.trusted and late.reason.startswith("CN=Short Root expired on ")


# ------------------------------------------------------------------ CA constraints


def _key_usage(**granted) -> x509.KeyUsage:
    flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                           "data_encipherment", "key_agreement", "key_cert_sign",
                           "crl_sign", "encipher_only", "decipher_only"), False)
    flags.update(granted)
    return x509.KeyUsage(**flags)


@pytest.mark.parametrize("granted", ["digital_signature", "content_commitment"])
def test_either_signing_key_usage_may_sign(tmp_path, root, granted):
    leaf = make_identity("Usage Signer", root, key_usage=_key_usage(**{granted: True}))
    info = verify(tmp_path, signed(tmp_path, leaf), root)
    assert info.trusted, info.reason


def test_path_length_allows_as_many_cas_below_as_it_says(tmp_path, root):
    intermediate = make_identity("Intermediate CA", root, ca=True, path_length=1)
    sub_ca = make_identity("Sub CA", intermediate, ca=True, path_length=0)
    leaf = make_identity("Sub Signer", sub_ca)
    info = verify(tmp_path, signed(tmp_path, leaf, sub_ca, intermediate), root)
    assert info.trusted, info.reason
    below = make_identity("Below CA", sub_ca, ca=True)
    too_deep = make_identity("Too Deep", below)
    info = verify(tmp_path, signed(tmp_path, too_deep, below, sub_ca, intermediate), root)
    assert not info.trusted


def _chain(root, length):
    """`length` CAs below `root`, each issuing the next; the last one first."""
    cas = []
    issuer = root
    for index in range(length):
        issuer = make_identity("CA %d" % index, issuer, ca=True)
        cas.append(issuer)
    return list(reversed(cas))


def test_chain_depth_bound(tmp_path, root):
    longest = _chain(root, MAX_CHAIN_DEPTH - 1)
    leaf = make_identity("Deep Signer", longest[0])
    info = verify(tmp_path, signed(tmp_path, leaf, *longest), root)
    assert info.trusted, info.reason
    too_long = _chain(root, MAX_CHAIN_DEPTH)
    leaf = make_identity("Deeper Signer", too_long[0])
    info = verify(tmp_path, signed(tmp_path, leaf, *too_long), root)
    assert not info.trusted
    assert info.reason == "the certificate chain is longer than 8"
    assert MAX_CHAIN_DEPTH == 8


# ------------------------------------------------------------------ trust store size


def test_trust_store_size_bound(tmp_path, root):
    certificate = pem(root)
    path = tmp_path / "bundle.pem"
    path.write_bytes(certificate + b"#" * (MAX_STORE_FILE - len(certificate)))
    assert len(load_trust_store(str(path))) == 1
    path.write_bytes(certificate + b"#" * (MAX_STORE_FILE + 1 - len(certificate)))
    with pytest.raises(SignatureError) as info:
        load_trust_store(str(path))
    assert str(info.value) == "trust store %s: larger than 16777216 bytes" % path
    assert MAX_STORE_FILE == 16 << 20


def test_trust_store_directory_checks_each_file(tmp_path, root):
    directory = tmp_path / "store.d"
    directory.mkdir()
    (directory / "a.pem").write_bytes(pem(root))
    (directory / "sub").mkdir()  # not a file: ignored
    assert len(load_trust_store(str(directory))) == 1
    (directory / "b.pem").write_bytes(b"#" * (MAX_STORE_FILE + 1))
    with pytest.raises(SignatureError, match="b.pem: larger than 16777216 bytes"):
        load_trust_store(str(directory))


def test_issuer_key_type_that_cannot_be_checked_is_never_trusted(tmp_path):
    # DSA keys are not verified here: an issuer with one vouches for nothing,
    # not even for a certificate it really signed.
    key = dsa.generate_private_key(2048)
    root_cert = (x509.CertificateBuilder().subject_name(_name("DSA Root"))
                 .issuer_name(_name("DSA Root")).public_key(key.public_key())
                 .serial_number(x509.random_serial_number())
                 .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                 .sign(key, hashes.SHA256()))
    dsa_root = Identity(key, root_cert)
    leaf = make_identity("DSA-issued Signer", dsa_root)
    info = verify(tmp_path, signed(tmp_path, leaf), dsa_root)
    assert not info.trusted
    assert info.reason == "no issuer CN=DSA Root of CN=DSA-issued Signer in the trust store"


def test_rsa_pss_signed_certificate_is_never_trusted(tmp_path):
    # cryptography 38 cannot read RSA-PSS parameters: a certificate its
    # issuer signed with RSA-PSS is not trusted, though openssl verifies it.
    root = make_identity("Root CA", ca=True, key=rsa.generate_private_key(65537, 2048))
    leaf_key = rsa.generate_private_key(65537, 2048)
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name("PSS Signer"))
           .sign(leaf_key, hashes.SHA256()))
    (tmp_path / "leaf.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "root.key").write_bytes(root.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    subprocess.run(["openssl", "x509", "-req", "-in", "leaf.csr", "-CA", "root.pem",
                    "-CAkey", "root.key", "-set_serial", "7", "-days", "2", "-sha256",
                    "-sigopt", "rsa_padding_mode:pss", "-out", "leaf.pem"],
                   cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "leaf.pem"],
                   cwd=tmp_path, check=True, capture_output=True)
    cert = x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes())
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    info = verify(tmp_path, signed(tmp_path, Identity(leaf_key, cert)), root)
    assert not info.trusted
    assert info.reason == "no issuer CN=Root CA of CN=PSS Signer in the trust store"
