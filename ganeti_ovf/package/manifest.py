"""The OVF manifest (.mf): parsing it, and checking members against it.

Owns the manifest syntax (`ALG(name)= hexdigest`, one file per line) and the
digest checks.  Parsing is lenient about spacing, case and line endings but
never skips a line it does not understand: a manifest is a security boundary.
Digests are of the STORED bytes of each file (the compressed bytes of a gzip
file, each chunk file on its own), so checks run over `Member` byte ranges.
The caller decides which files must be listed (`Manifest.require`) and when
to verify; `ManifestEntry.new_hasher` lets it hash while it reads for other
purposes.
"""

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from ganeti_ovf.errors import ManifestError
from ganeti_ovf.model import Member

READ_SIZE = 1 << 20

# Spellings seen in the wild (upper-cased, dashes removed) -> hashlib name.
ALGORITHMS: Dict[str, str] = {
    "SHA1": "sha1",
    "SHA256": "sha256",
    "SHA2256": "sha256",
    "SHA512": "sha512",
    "SHA2512": "sha512",
}
# Canonical manifest spelling of each hashlib name, as writers emit it.
CANONICAL = {"sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512"}

# ALG(name)= hex; the name is everything up to the last ")" before "=",
# so names that contain parentheses still parse.
LINE_PATTERN = re.compile(r"\s*([A-Za-z0-9-]+)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*\Z", re.DOTALL)


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a manifest: the digest of one file's stored bytes."""

    algorithm: str  # canonical: "SHA1", "SHA256", "SHA512"
    name: str
    digest_hex: str  # lower case
    source: str = ""  # the manifest, for messages

    def new_hasher(self) -> "hashlib._Hash":
        """A fresh hashlib object of this entry's algorithm."""
        return hashlib.new(self.algorithm.lower())

    def check(self, hexdigest: str) -> None:
        """Raise ManifestError unless `hexdigest` is the digest the manifest lists."""
        if hexdigest.lower() != self.digest_hex:
            raise ManifestError("%s: %s digest mismatch (manifest says %s, file has %s)"
                                % (self.name, self.algorithm, self.digest_hex,
                                   hexdigest.lower()))


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: entries in file order, names unique."""

    source: str
    entries: Tuple[ManifestEntry, ...]

    def names(self) -> Tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    def entry(self, name: str) -> Optional[ManifestEntry]:
        """The entry for `name`, or None if the manifest does not list it."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None

    def require(self, names: Iterable[str]) -> None:
        """Raise ManifestError naming every file of `names` the manifest omits."""
        listed = set(self.names())
        missing = [name for name in names if name not in listed]
        if missing:
            raise ManifestError("%s: no digest for %s" % (self.source, ", ".join(missing)))


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Parse manifest bytes; `source` names the manifest in messages.

    Raises ManifestError for any line that is neither blank nor an entry, an
    unsupported algorithm, a digest of the wrong length, or a name listed twice.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte order mark, as some Windows tools write
    entries = []
    seen = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError("%s: line %d is not UTF-8" % (source, number))
        if not line.strip():
            continue
        match = LINE_PATTERN.match(line)
        if not match or "\0" in line:
            raise ManifestError("%s: line %d is not of the form ALG(name)= digest: %r"
                                % (source, number, _shorten(line)))
        spelled, name, digest = match.groups()
        hash_name = hash_name_for(spelled)
        if hash_name is None:
            raise ManifestError("%s: line %d: unsupported digest algorithm %r"
                                % (source, number, _shorten(spelled)))
        name = name.strip()
        expected = hashlib.new(hash_name).digest_size * 2
        if len(digest) != expected:
            raise ManifestError("%s: line %d: %s digest of %s has %d hex digits, not %d"
                                % (source, number, CANONICAL[hash_name], name,
                                   len(digest), expected))
        if name in seen:
            raise ManifestError("%s: line %d: %s is listed twice" % (source, number, name))
        seen.add(name)
        entries.append(ManifestEntry(CANONICAL[hash_name], name, digest.lower(), source))
    if not entries:
        raise ManifestError("%s: the manifest lists no files" % source)
    return Manifest(source, tuple(entries))


def hash_name_for(algorithm: str) -> Optional[str]:
    """hashlib's name for a manifest algorithm spelling ("SHA2-256" -> "sha256"), or None."""
    return ALGORITHMS.get(algorithm.upper().replace("-", ""))


def format_manifest(entries: Iterable[Tuple[str, str, str]]) -> bytes:
    """Manifest bytes for (algorithm, name, hexdigest) triples, as ovftool writes them."""
    lines = []
    for algorithm, name, digest in entries:
        hash_name = hash_name_for(algorithm)
        if hash_name is None:
            raise ManifestError("unsupported digest algorithm %r" % algorithm)
        lines.append("%s(%s)= %s\n" % (CANONICAL[hash_name], name, digest.lower()))
    return "".join(lines).encode("utf-8")


def _hasher(algorithm: str) -> "hashlib._Hash":
    hash_name = hash_name_for(algorithm)
    if hash_name is None:
        raise ManifestError("unsupported digest algorithm %r" % algorithm)
    return hashlib.new(hash_name)


def hash_member(member: Member, algorithm: str) -> str:
    """Hex digest of a member's byte range, read in 1 MiB pieces through the
    descriptor the package opened (never its path)."""
    hasher = _hasher(algorithm)
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    position, left = member.offset, member.size
    try:
        while left > 0:
            count = os.preadv(member.fd, [view[:min(left, READ_SIZE)]], position)
            if not count:
                raise ManifestError("%s: file ends %d bytes early (in %s)"
                                    % (member.name, left, member.path))
            hasher.update(view[:count])
            position += count
            left -= count
    except OSError as err:
        raise ManifestError("%s: cannot read %s: %s" % (member.name, member.path,
                                                       err.strerror))
    return hasher.hexdigest()


def verify_member(entry: ManifestEntry, member: Member) -> None:
    """Raise ManifestError unless the member's stored bytes have the listed digest."""
    entry.check(hash_member(member, entry.algorithm))


def verify_bytes(entry: ManifestEntry, data: bytes) -> None:
    """Raise ManifestError unless `data` (a file already read, such as the
    descriptor that was parsed) has the listed digest."""
    hasher = _hasher(entry.algorithm)
    hasher.update(data)
    entry.check(hasher.hexdigest())


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
