"""Package signatures: the .cert file that signs a manifest (ovftool format).

Owns reading, verifying and writing certificate files.  The file's first line
is `ALG(name.mf)= <hex signature of the manifest bytes>`, followed by one or
more PEM certificates; the first is the signer, the others may serve as
intermediates.  Verification checks the signature over the exact manifest
bytes with the signer's key (RSA PKCS#1 v1.5 or ECDSA), then builds a chain to
a certificate of the operator's trust store: the embedded certificates alone
are never trusted.  cryptography 38 has no chain verifier, so issuer matching,
signature checks, CA constraints and validity dates are done here, with a
depth bound.  A bad signature is an error; an untrusted one is reported in
SignatureInfo for the caller's policy to decide.
"""

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, List, Optional, Tuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from ganeti_ovf.errors import ManifestError
from ganeti_ovf.package.manifest import CANONICAL, LINE_PATTERN, hash_name_for

MAX_CHAIN_DEPTH = 8
MAX_STORE_FILE = 16 << 20
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----",
                        re.DOTALL)
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}


class SignatureError(ManifestError):
    """The certificate file is malformed or its signature does not verify."""


@dataclass(frozen=True)
class SignatureInfo:
    """What a valid signature says, and whether the operator trusts its signer."""

    signer: str  # subject of the signing certificate, RFC 4514
    issuer: str
    not_before: datetime  # naive UTC, as cryptography reports it
    not_after: datetime
    trusted: bool
    reason: str  # why it is (not) trusted
    algorithm: str  # "SHA256", ...


def parse_certificate_file(cert_bytes: bytes, source: str
                           ) -> Tuple[str, str, bytes, List[x509.Certificate]]:
    """(algorithm, manifest name, signature, certificates) of a .cert file."""
    first, _, rest = cert_bytes.lstrip().partition(b"\n")
    try:
        line = first.decode("ascii").rstrip("\r")
    except UnicodeDecodeError:
        raise SignatureError("%s: the first line is not ASCII" % source)
    match = LINE_PATTERN.match(line)
    if not match:
        raise SignatureError("%s: the first line is not ALG(name.mf)= signature" % source)
    spelled, name, signature_hex = match.groups()
    hash_name = hash_name_for(spelled)
    if hash_name is None:
        raise SignatureError("%s: unsupported digest algorithm %r" % (source, spelled))
    if len(signature_hex) % 2:
        raise SignatureError("%s: the signature has an odd number of hex digits" % source)
    certificates = _load_pem_certificates(rest, source)
    if not certificates:
        raise SignatureError("%s: holds no PEM certificate" % source)
    return CANONICAL[hash_name], name.strip(), bytes.fromhex(signature_hex), certificates


def verify_certificate(cert_bytes: bytes, manifest_name: str, manifest_bytes: bytes,
                       trust_store: Optional[str], source: str = "certificate",
                       now: Optional[datetime] = None) -> SignatureInfo:
    """Verify a .cert file's signature of `manifest_bytes` and its signer's chain.

    Raises SignatureError if the file is malformed, names another manifest or
    the signature does not match; returns SignatureInfo with trusted=False when
    the signer does not chain to `trust_store` (a PEM bundle or a directory of
    PEM files), or a certificate is outside its validity dates.
    """
    try:
        return _verify(cert_bytes, manifest_name, manifest_bytes, trust_store, source, now)
    except (ValueError, UnsupportedAlgorithm) as err:
        # cryptography parses certificate fields lazily: bad ones fail here.
        raise SignatureError("%s: malformed certificate: %s" % (source, err))


def _verify(cert_bytes: bytes, manifest_name: str, manifest_bytes: bytes,
            trust_store: Optional[str], source: str,
            now: Optional[datetime]) -> SignatureInfo:
    algorithm, name, signature, certificates = parse_certificate_file(cert_bytes, source)
    if name != os.path.basename(manifest_name):
        raise SignatureError("%s: signs %s, not the manifest %s" % (source, name,
                                                                     manifest_name))
    signer = certificates[0]
    digest = _HASHES[algorithm.lower()]()
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, manifest_bytes, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, manifest_bytes, ec.ECDSA(digest))
        else:
            raise SignatureError("%s: unsupported signer key type %s"
                                 % (source, type(key).__name__))
    except InvalidSignature:
        raise SignatureError("%s: the signature of %s does not match its contents (signer %s)"
                             % (source, name, signer.subject.rfc4514_string()))
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    if trust_store is None:
        trusted, reason = False, "no trust store was given"
    else:
        anchors = load_trust_store(trust_store)
        trusted, reason = _chain_to_anchor(signer, certificates[1:], anchors, now)
    return SignatureInfo(signer=signer.subject.rfc4514_string(),
                         issuer=signer.issuer.rfc4514_string(),
                         not_before=signer.not_valid_before,
                         not_after=signer.not_valid_after,
                         trusted=trusted, reason=reason, algorithm=algorithm)


def load_trust_store(path: str) -> List[x509.Certificate]:
    """Certificates of a PEM bundle file, or of every PEM file in a directory."""
    if os.path.isdir(path):
        files = [os.path.join(path, entry) for entry in sorted(os.listdir(path))]
        files = [name for name in files if os.path.isfile(name)]
    else:
        files = [path]
    anchors: List[x509.Certificate] = []
    for name in files:
        try:
            with open(name, "rb") as stream:
                data = stream.read(MAX_STORE_FILE + 1)
        except OSError as err:
            raise SignatureError("trust store %s: cannot read: %s" % (name, err.strerror))
        if len(data) > MAX_STORE_FILE:
            raise SignatureError("trust store %s: larger than %d bytes" % (name,
                                                                          MAX_STORE_FILE))
        anchors.extend(_load_pem_certificates(data, "trust store %s" % name))
    if not anchors:
        raise SignatureError("trust store %s: holds no PEM certificate" % path)
    return anchors


def sign_manifest(manifest_name: str, manifest_bytes: bytes, key_pem_path: str,
                  cert_pem_path: str, algorithm: str = "SHA256") -> bytes:
    """The .cert file content signing `manifest_bytes` (ovftool format).

    `cert_pem_path` holds the signer's certificate first, then optionally its
    intermediates; they are embedded in that order.  Raises SignatureError for
    an unusable key or certificate, or a key that does not match.
    """
    hash_name = hash_name_for(algorithm)
    if hash_name is None:
        raise SignatureError("unsupported digest algorithm %r" % algorithm)
    try:
        with open(key_pem_path, "rb") as stream:
            key_data = stream.read(MAX_STORE_FILE)
        with open(cert_pem_path, "rb") as stream:
            cert_data = stream.read(MAX_STORE_FILE)
    except OSError as err:
        raise SignatureError("%s: cannot read: %s" % (err.filename, err.strerror))
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise SignatureError("%s: the private key is encrypted; give an unencrypted key"
                             % key_pem_path)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise SignatureError("%s: not a usable PEM private key: %s" % (key_pem_path, err))
    certificates = _load_pem_certificates(cert_data, cert_pem_path)
    if not certificates:
        raise SignatureError("%s: holds no PEM certificate" % cert_pem_path)
    if _public_der(certificates[0].public_key()) != _public_der(key.public_key()):
        raise SignatureError("%s: the first certificate does not match the key %s"
                             % (cert_pem_path, key_pem_path))
    digest = _HASHES[hash_name]()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(manifest_bytes, padding.PKCS1v15(), digest)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(manifest_bytes, ec.ECDSA(digest))
    else:
        raise SignatureError("%s: unsupported key type %s (use RSA or ECDSA)"
                             % (key_pem_path, type(key).__name__))
    lines = ["%s(%s)= %s\n" % (CANONICAL[hash_name], os.path.basename(manifest_name),
                               signature.hex())]
    lines.extend(cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
                 for cert in certificates)
    return "".join(lines).encode("ascii")


def _load_pem_certificates(data: bytes, source: str) -> List[x509.Certificate]:
    certificates = []
    for block in _PEM_BLOCK.findall(data):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as err:
            raise SignatureError("%s: malformed PEM certificate: %s" % (source, err))
    return certificates


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _chain_to_anchor(signer: x509.Certificate, intermediates: List[x509.Certificate],
                     anchors: List[x509.Certificate], now: datetime) -> Tuple[bool, str]:
    """Whether `signer` chains to one of `anchors`, and why (not)."""
    usage = _extension(signer, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        return False, "the signer %s may not sign (key usage)" % _name(signer)
    chain = [signer]
    for _ in range(MAX_CHAIN_DEPTH):
        current = chain[-1]
        problem = _validity_problem(current, now)
        if problem:
            return False, problem
        if current in anchors:
            return True, "%s is in the trust store" % _name(current)
        anchor = _find_issuer(current, anchors, chain)
        if anchor is not None:
            problem = _validity_problem(anchor, now)
            if problem:
                return False, problem
            return True, "chains to %s from the trust store" % _name(anchor)
        issuer = _find_issuer(current, intermediates, chain)
        if issuer is None:
            return False, "no issuer %s of %s in the trust store" % (
                current.issuer.rfc4514_string(), _name(current))
        chain.append(issuer)
    return False, "the certificate chain is longer than %d" % MAX_CHAIN_DEPTH


def _find_issuer(cert: x509.Certificate, candidates: List[x509.Certificate],
                 chain: List[x509.Certificate]) -> Optional[x509.Certificate]:
    """A candidate that issued `cert` and may issue certificates at this depth."""
    below = len(chain) - 1  # intermediate CAs already under the candidate
    for candidate in candidates:
        if candidate.subject != cert.issuer or candidate in chain:
            continue
        constraints = _extension(candidate, x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            continue
        if constraints.path_length is not None and below > constraints.path_length:
            continue
        usage = _extension(candidate, x509.KeyUsage)
        if usage is not None and not usage.key_cert_sign:
            continue
        if _issued_by(cert, candidate):
            return candidate
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer`'s key verifies `cert`'s signature."""
    key = issuer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            # cryptography 38 does not expose RSA-PSS parameters: such
            # certificates cannot be checked here, so they are not trusted.
            if cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes,
                       ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _validity_problem(cert: x509.Certificate, now: datetime) -> Optional[str]:
    if now < cert.not_valid_before:
        return "%s is not valid before %s" % (_name(cert), cert.not_valid_before)
    if now > cert.not_valid_after:
        return "%s expired on %s" % (_name(cert), cert.not_valid_after)
    return None


def _extension(cert: x509.Certificate, kind: type) -> Any:
    """The value of an extension of `cert`, None if absent; malformed ones fail closed."""
    try:
        extension = cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None
    except ValueError as err:
        raise SignatureError("certificate %s: malformed extensions: %s" % (_name(cert), err))
    return extension.value
