"""The library's one error hierarchy.

Every module raises a subclass of OvfError for bad input or a failed step; only
the command layer (cli.py) turns these into Ganeti's errors.  Messages are one
line and name the file, field or rule at fault.
"""


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
