"""The library's one error hierarchy, and package text made safe to print.

Every module raises a subclass of OvfError for bad input or a failed step; only
the command layer (cli.py) turns these into Ganeti's errors.  Messages are one
line and name the file, field or rule at fault.  Messages quote names and
values from packages, which may hold terminal escapes or bidirectional
overrides: `printable` escapes them before a message reaches a terminal or a
log.
"""

import re

# C0 and C1 controls (escape sequences, carriage return, newline) and the
# Unicode characters that reorder or hide text (bidi embeddings, overrides
# and isolates, marks, line and paragraph separators).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                         "\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every UNPRINTABLE character written as a Python escape
    (\\x1b, \\u202e): one line, shown as it is, on a terminal or in a log."""
    return UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape")
                           .decode("ascii"), text)


class OvfError(Exception):
    """Base class of every error the library raises on purpose."""


class PackageError(OvfError):
    """The OVF folder or OVA archive is unusable (members, names, tar layout)."""


class ManifestError(OvfError):
    """The manifest or certificate is malformed or does not match the files."""


class DescriptorError(OvfError):
    """The OVF descriptor (XML) is malformed or inconsistent."""


class DiskError(OvfError):
    """A disk image is refused, or qemu-img failed on it."""


class ConfigError(OvfError):
    """A Ganeti export's config.ini is missing, malformed or inconsistent."""


class OptionError(OvfError):
    """A command-line value is invalid."""


class PublishError(OvfError):
    """The output could not be staged or put in place."""
