"""A strict tar header reader: where each regular member's bytes lie in an OVA.

Owns the tar layout and nothing else.  It reads headers with pread, verifies
their checksums and records (name, offset, size) of every regular file; it
never extracts, never creates files and never follows links.  Python's tarfile
is deliberately not used: it accepts far more than an OVA needs (and its
extraction filters have had bypasses); here anything that is not a plain file
or a directory is refused, and every size is checked against the file.

Understood formats: ustar (POSIX.1-1988, with its name prefix), pax extended
headers (POSIX.1-2001 'x' and 'g', honouring `path` and `size`), GNU long
names ('L', 'K') and GNU base-256 numbers.  Header layout (offsets in bytes):
name 0-100, mode 100, uid 108, gid 116, size 124-136, mtime 136, chksum
148-156, typeflag 156, linkname 157-257, magic 257-263, version 263-265,
uname 265, gname 297, devmajor 329, devminor 337, prefix 345-500 (ustar only).
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple

from ganeti_ovf.errors import PackageError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_MEMBERS = 10000
MAX_PAX_HEADER = 1 << 20  # bytes of one pax extended header
MAX_LONG_NAME = 4096  # bytes of a GNU long name, and of any member name

_REGULAR = (b"0", b"\0", b"7")  # '7' is a contiguous file: a plain file for us
_DIRECTORY = b"5"
_PAX_LOCAL = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONG_NAME = b"L"
_GNU_LONG_LINK = b"K"
_REFUSED_TYPES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"S": "a GNU sparse file",
    b"M": "a GNU multi-volume continuation",
    b"V": "a GNU volume label",
    b"N": "an old GNU long-name record",
    b"D": "a GNU dump directory",
}
_USTAR_MAGIC = b"ustar\0"
_GNU_MAGIC = b"ustar "
_V7_MAGIC = bytes(6)
_OCTAL_DIGITS = frozenset(b"01234567")


@dataclass(frozen=True)
class TarMember:
    """A regular file of the archive: its normalised name and data range."""

    name: str
    offset: int
    size: int


def member_name_problem(name: str) -> Optional[str]:
    """Why `name` is not an acceptable package member name, or None.

    Shared with the OVF folder layer: a member name is a relative path of
    plain components that cannot leave the package.
    """
    if not name:
        return "empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_LONG_NAME:
        return "name longer than %d bytes" % MAX_LONG_NAME
    if name.startswith("/"):
        return "absolute path"
    if "\\" in name:
        return "backslash in name"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in name):
        return "control character in name"
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        return "name is not valid UTF-8"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return "path component %r" % part
    return None


def is_tar_header(block: bytes) -> bool:
    """Whether `block` is a whole tar header with a valid checksum and magic."""
    if len(block) != BLOCK or block == ZERO_BLOCK:
        return False
    try:
        _check_block(block, "")
    except PackageError:
        return False
    return True


def read_tar(path: str, source: Optional[str] = None,
             max_members: int = MAX_MEMBERS) -> Tuple[TarMember, ...]:
    """The regular members of the tar file at `path` (never a symlink)."""
    label = source or path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise PackageError("%s: cannot open: %s" % (label, err.strerror))
    try:
        return scan_tar(fd, label, max_members)
    finally:
        os.close(fd)


def scan_tar(fd: int, source: str, max_members: int = MAX_MEMBERS) -> Tuple[TarMember, ...]:
    """The regular members of the tar open on `fd`, in archive order.

    Directories are checked for safe names and otherwise ignored; every other
    non-regular type is refused.  `source` names the archive in messages.
    """
    try:
        length = os.fstat(fd).st_size
    except OSError as err:
        raise PackageError("%s: cannot stat: %s" % (source, err.strerror))
    state = _ScanState(source, max_members)
    pos = 0
    while True:
        block = _pread_exact(fd, pos, BLOCK, source, "tar header")
        if block == ZERO_BLOCK:
            state.finish(pos)
            break
        header = _parse_header(block, source, pos)
        data_offset = pos + BLOCK
        size = state.data_size(header)
        if data_offset + size > length:
            raise PackageError("%s: truncated archive: the data of the entry at offset %d "
                               "(%d bytes) ends past the end of the file"
                               % (source, pos, size))
        if header.typeflag in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONG_NAME, _GNU_LONG_LINK):
            cap = MAX_PAX_HEADER if header.typeflag in (_PAX_LOCAL, _PAX_GLOBAL) \
                else MAX_LONG_NAME
            if size > cap:
                raise PackageError("%s: extended header at offset %d is %d bytes, more than "
                                   "the %d allowed" % (source, pos, size, cap))
            data = _pread_exact(fd, data_offset, size, source, "extended header")
            state.extension(header, data, pos)
        else:
            state.member(header, data_offset, size, pos)
        pos = data_offset + _round_up(size)
    return tuple(state.members)


@dataclass(frozen=True)
class _Header:
    name: str
    typeflag: bytes
    size: int


class _ScanState:
    """What the headers seen so far imply: pending extended headers, names."""

    def __init__(self, source: str, max_members: int) -> None:
        self.source = source
        self.max_members = max_members
        self.members: List[TarMember] = []
        self.files: Set[str] = set()
        self.directories: Set[str] = set()
        self.entries = 0
        self.headers = 0
        self.pax: Optional[Dict[str, str]] = None
        self.long_name: Optional[str] = None
        self.long_link = False

    def _error(self, pos: int, message: str) -> PackageError:
        return PackageError("%s: entry at offset %d: %s" % (self.source, pos, message))

    def data_size(self, header: _Header) -> int:
        """Bytes of data after `header`: a pending pax `size` wins for members."""
        self.headers += 1
        # Every member is preceded by at most three extension headers, plus globals.
        if self.headers > 4 * self.max_members:
            raise PackageError("%s: more than %d tar headers" % (self.source,
                                                                 4 * self.max_members))
        if header.typeflag in (_PAX_LOCAL, _PAX_GLOBAL, _GNU_LONG_NAME, _GNU_LONG_LINK):
            return header.size
        if self.pax is not None and "size" in self.pax:
            return _parse_decimal(self.pax["size"], self.source, "pax size")
        return header.size

    def extension(self, header: _Header, data: bytes, pos: int) -> None:
        if header.typeflag == _PAX_GLOBAL:
            records = _parse_pax(data, self.source, pos)
            for key in records:
                if key in ("path", "size", "linkpath") or key.startswith("GNU.sparse."):
                    raise self._error(pos, "global pax header sets %r" % key)
        elif header.typeflag == _PAX_LOCAL:
            if self.pax is not None:
                raise self._error(pos, "two pax extended headers in a row")
            records = _parse_pax(data, self.source, pos)
            for key in records:
                if key.startswith("GNU.sparse."):
                    raise self._error(pos, "sparse member (pax %r) refused" % key)
            self.pax = records
        elif header.typeflag == _GNU_LONG_NAME:
            if self.long_name is not None:
                raise self._error(pos, "two GNU long names in a row")
            self.long_name = _decode_name(data.split(b"\0", 1)[0], self.source, pos)
        else:
            if self.long_link:
                raise self._error(pos, "two GNU long link names in a row")
            self.long_link = True  # only links use it, and links are refused

    def member(self, header: _Header, offset: int, size: int, pos: int) -> None:
        name = header.name
        if self.long_name is not None:
            if self.pax is not None and "path" in self.pax:
                raise self._error(pos, "both a GNU long name and a pax path")
            name = self.long_name
        if self.pax is not None and "path" in self.pax:
            name = self.pax["path"]
        self.pax, self.long_name, self.long_link = None, None, False
        kind = header.typeflag
        if kind in _REFUSED_TYPES:
            raise self._error(pos, "%r is %s (only regular files are allowed)"
                              % (name, _REFUSED_TYPES[kind]))
        if kind == b"\0" and name.endswith("/"):
            kind = _DIRECTORY  # pre-POSIX archives mark directories this way
        if kind not in _REGULAR and kind != _DIRECTORY:
            raise self._error(pos, "%r has unsupported entry type %r"
                              % (name, kind.decode("latin-1")))
        self.entries += 1
        if self.entries > self.max_members:
            raise PackageError("%s: more than %d members" % (self.source, self.max_members))
        while name.startswith("./"):
            name = name[2:]
        if kind == _DIRECTORY:
            name = name.rstrip("/")
            if name in ("", "."):
                return  # the archive's root
        problem = member_name_problem(name)
        if problem:
            raise self._error(pos, "unsafe member name %r: %s" % (name, problem))
        if name in self.files or (kind in _REGULAR and name in self.directories):
            raise self._error(pos, "duplicate member name %r" % name)
        if kind == _DIRECTORY:
            self.directories.add(name)
            return
        self.files.add(name)
        self.members.append(TarMember(name, offset, size))

    def finish(self, pos: int) -> None:
        if self.pax is not None or self.long_name is not None or self.long_link:
            raise self._error(pos, "extended header not followed by a member")


def _pread_exact(fd: int, pos: int, count: int, source: str, what: str) -> bytes:
    chunks = []
    wanted = count
    while wanted > 0:
        try:
            chunk = os.pread(fd, wanted, pos + count - wanted)
        except OSError as err:
            raise PackageError("%s: cannot read: %s" % (source, err.strerror))
        if not chunk:
            raise PackageError("%s: truncated archive: %s at offset %d ends past the end "
                               "of the file" % (source, what, pos))
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


def _round_up(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _parse_header(block: bytes, source: str, pos: int) -> _Header:
    where = "%s: tar header at offset %d" % (source, pos)
    magic = _check_block(block, where)
    name_bytes = block[0:100].split(b"\0", 1)[0]
    if magic == _USTAR_MAGIC:
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name_bytes = prefix + b"/" + name_bytes
    size = _parse_number(block[124:136], where, "size")
    return _Header(_decode_name(name_bytes, source, pos), block[156:157], size)


def _check_block(block: bytes, where: str) -> bytes:
    """Verify a header's checksum and magic; return the magic."""
    try:
        stored = _parse_octal(block[148:156], where, "checksum")
    except PackageError:
        stored = -1
    # The checksum field itself is summed as eight spaces.
    others = block[:148] + block[156:]
    unsigned = sum(others) + 8 * 0x20
    # Some old writers summed signed chars; both are accepted, as tar does.
    signed = unsigned - 256 * sum(1 for b in others if b >= 0x80)
    if stored not in (unsigned, signed):
        raise PackageError("%s: bad header checksum (not a tar archive, or corrupt)" % where)
    magic = block[257:263]
    if magic not in (_USTAR_MAGIC, _GNU_MAGIC, _V7_MAGIC):
        raise PackageError("%s: unknown header magic %r" % (where, magic))
    return magic


def _parse_number(field: bytes, where: str, what: str) -> int:
    """A numeric header field: octal ASCII, or GNU base-256 (high bit set)."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise PackageError("%s: negative %s" % (where, what))
        value = field[0] & 0x3F
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    return _parse_octal(field, where, what)


def _parse_octal(field: bytes, where: str, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if not set(text) <= _OCTAL_DIGITS:
        raise PackageError("%s: %s field %r is not an octal number" % (where, what, field))
    return int(text, 8)


def _parse_decimal(text: str, source: str, what: str) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 20:
        raise PackageError("%s: %s %r is not a decimal number" % (source, what, text))
    return int(text)


def _decode_name(raw: bytes, source: str, pos: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError("%s: entry at offset %d: member name %r is not UTF-8"
                           % (source, pos, raw))


def _parse_pax(data: bytes, source: str, pos: int) -> Dict[str, str]:
    """Records of a pax header: "LEN KEY=VALUE\\n", LEN counting the whole record."""
    records: Dict[str, str] = {}
    where = "%s: pax header at offset %d" % (source, pos)
    index = 0
    while index < len(data):
        space = data.find(b" ", index, index + 12)
        digits = data[index:space] if space > index else b""
        if not digits.isdigit() or digits.startswith(b"0"):
            raise PackageError("%s: malformed record at byte %d" % (where, index))
        end = index + int(digits)
        if end > len(data) or end <= space + 2 or data[end - 1:end] != b"\n":
            raise PackageError("%s: record at byte %d has a wrong length" % (where, index))
        key_bytes, equals, value_bytes = data[space + 1:end - 1].partition(b"=")
        if not equals or not key_bytes:
            raise PackageError("%s: record at byte %d has no KEY=VALUE" % (where, index))
        try:
            key = key_bytes.decode("utf-8")
            value = value_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise PackageError("%s: record at byte %d is not UTF-8" % (where, index))
        if key in records:
            raise PackageError("%s: duplicate record %r" % (where, key))
        records[key] = value
        index = end
    return records
