"""Members of files the tests made: opened once, as a package would."""

import os

from ganeti_ovf.model import Member

_KEEP = []  # the descriptors stay open for the test session, as a package's would


def opened_member(name, path, offset, size):
    """A Member of `path`'s bytes [offset, offset + size), with its file open
    (descriptor -1 when it cannot be opened: reading it then fails)."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    else:
        _KEEP.append(fd)
        if len(_KEEP) > 512:
            os.close(_KEEP.pop(0))
    return Member(name, str(path), offset, size, fd)
