"""A Ganeti export's config.ini, both ways: model → text and file → model.

Ganeti 3.0's `gnt-backup export` writes, and `gnt-backup import` reads:
  [export]    version, timestamp, source, os, compression
  [instance]  name, maxmem, minmem, memory, vcpus, disk_template, hypervisor,
              tags, nicN_{mac,ip,network,name,mode,link,vlan}, nic_count,
              diskN_{ivname,dump,size,name}, disk_count
  [hypervisor], [backend], [os], [os_private]
Import reads `[export] os` unconditionally, disks by diskN_size, NICs until
the first missing nicN_mac, and nicN_mode/nicN_link unless nicN_network is
set (their absence is an error there, so "none", which Ganeti's parser reads
as unset, stands for "cluster default").  Files are written and read with
Ganeti's own objects.SerializableConfigParser.
"""

import configparser
import errno
import os
import stat
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ganeti import constants, objects

from ganeti_ovf.errors import ConfigError
from ganeti_ovf.model import Disk, GanetiSettings, Nic, Params, VirtualSystem

MIB = 1024 * 1024
CONFIG_NAME = "config.ini"
# Ganeti reads this literal as "not set" (constants.VALUE_NONE).
UNSET = constants.VALUE_NONE
_MAX_CONFIG_SIZE = 1024 * 1024


def size_to_mib(size: int) -> int:
    """Bytes to whole MiB, rounded up and never 0."""
    return max(1, -(-size // MIB))


@dataclass(frozen=True)
class ExportedDisk:
    """One disk of a Ganeti export: its dump file and size."""

    dump: Optional[str]  # file name inside the export directory
    size_mib: int  # 0: unknown (old exports), the dump's length decides
    name: Optional[str] = None


@dataclass(frozen=True)
class GanetiExport:
    """A Ganeti export read from disk (the export direction's input)."""

    directory: str
    system: VirtualSystem
    disks: Tuple[ExportedDisk, ...]
    source_node: Optional[str] = None


# ---------------------------------------------------------------- writing


def _check_value(field: str, value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError("%s: control characters are not allowed in config.ini"
                          % field)
    return value


def build_config(system: VirtualSystem, disks: Sequence[ExportedDisk],
                 source: str, timestamp: Optional[int] = None) -> str:
    """The config.ini text that `gnt-backup import` takes for `system`."""
    settings = system.ganeti or GanetiSettings()
    parser = objects.SerializableConfigParser()

    def put(section: str, key: str, value: Optional[str]) -> None:
        if value is None:
            return
        field = "[%s] %s" % (section, key)
        _check_value(field, key)
        # Ganeti reads config.ini with interpolation: a literal % is %%.
        parser.set(section, key, _check_value(field, value).replace("%", "%%"))

    exp, ins = constants.INISECT_EXP, constants.INISECT_INS
    for section in (exp, ins, constants.INISECT_HYP, constants.INISECT_BEP,
                    constants.INISECT_OSP, constants.INISECT_OSP_PRIVATE):
        parser.add_section(section)

    put(exp, "version", str(constants.EXPORT_VERSION))
    put(exp, "timestamp", "%d" % (timestamp if timestamp is not None else time.time()))
    put(exp, "source", source)
    put(exp, "os", settings.os_name or UNSET)
    put(exp, "compression", constants.IEC_NONE)

    backend = dict(settings.backend_params)
    if system.vcpus is not None:
        backend.setdefault(constants.BE_VCPUS, str(system.vcpus))
    if system.memory_mib is not None:
        backend.setdefault(constants.BE_MAXMEM, str(system.memory_mib))
        backend.setdefault(constants.BE_MINMEM, backend[constants.BE_MAXMEM])
    if constants.BE_MEMORY in backend:  # the old name: Ganeti 3.0 wants max/min
        memory = backend.pop(constants.BE_MEMORY)
        backend.setdefault(constants.BE_MAXMEM, memory)
        backend.setdefault(constants.BE_MINMEM, memory)

    put(ins, "name", system.name)
    put(ins, "maxmem", backend.get(constants.BE_MAXMEM))
    put(ins, "minmem", backend.get(constants.BE_MINMEM))
    put(ins, "memory", backend.get(constants.BE_MAXMEM))
    put(ins, "vcpus", backend.get(constants.BE_VCPUS))
    put(ins, "disk_template", settings.disk_template)
    put(ins, "hypervisor", settings.hypervisor)
    put(ins, "tags", " ".join(settings.tags))

    for index, nic in enumerate(system.nics):
        _put_nic(put, index, nic)
    put(ins, "nic_count", "%d" % len(system.nics))

    for index, disk in enumerate(disks):
        if disk.size_mib < 1:
            raise ConfigError("disk %d: a size of at least 1 MiB is needed" % index)
        put(ins, "disk%d_ivname" % index, "disk/%d" % index)
        put(ins, "disk%d_dump" % index, disk.dump)
        put(ins, "disk%d_size" % index, "%d" % disk.size_mib)
        put(ins, "disk%d_name" % index, disk.name)
    put(ins, "disk_count", "%d" % len(disks))

    for key, value in settings.hypervisor_params:
        put(constants.INISECT_HYP, key, value)
    for key, value in sorted(backend.items()):
        put(constants.INISECT_BEP, key, value)
    for key, value in settings.os_params:
        put(constants.INISECT_OSP, key, value)
    for key, value in settings.os_private_params:
        put(constants.INISECT_OSP_PRIVATE, key, value)
    return parser.Dumps()


def _put_nic(put, index: int, nic: Nic) -> None:
    ins = constants.INISECT_INS
    prefix = "nic%d_" % index
    # A NIC is only read while nicN_mac exists; "auto" lets Ganeti generate one.
    put(ins, prefix + "mac", nic.mac or constants.VALUE_AUTO)
    put(ins, prefix + "ip", nic.ip)
    put(ins, prefix + "name", nic.name)
    if nic.ganeti_network:
        # With a network, mode and link come from the node group's netparams
        # and must not be given.
        put(ins, prefix + "network", nic.ganeti_network)
    else:
        put(ins, prefix + "mode", nic.mode or UNSET)
        put(ins, prefix + "link", nic.link or UNSET)
    put(ins, prefix + "vlan", nic.vlan)


# ---------------------------------------------------------------- reading


def is_path(source: str) -> bool:
    """Whether export's SOURCE names a path rather than an instance: it has
    a directory part, starts with a dot, or is a config.ini.  A bare name is
    always an instance, even when the current directory holds a folder of
    that name (the OVF folder an earlier export wrote there)."""
    return os.sep in source or source.startswith(".") or source == CONFIG_NAME


def find_config(source: str, export_dir: str) -> str:
    """The config.ini that SOURCE names: the file or its directory (a path),
    or an instance's export in Ganeti's export directory (a bare name)."""
    if is_path(source):
        path = os.path.join(source, CONFIG_NAME) if os.path.isdir(source) else source
        if not os.path.isfile(path):
            raise ConfigError("%s: no such Ganeti export (not a config.ini or an export"
                              " directory holding one)" % source)
        return path
    instance_dir = os.path.join(export_dir, source)
    path = os.path.join(instance_dir, CONFIG_NAME)
    try:
        os.stat(path)
    except PermissionError:
        raise ConfigError("%s: permission denied: run gnt-ovf as root" % path)
    except OSError:
        raise ConfigError("%s: no export of instance %s in %s (make one with gnt-backup"
                          " export or gnt-ovf export -n NODE; for a directory here,"
                          " write ./%s)" % (source, source, export_dir, source))
    if not os.path.isfile(path):
        raise ConfigError("%s: not a regular file" % path)
    return path


def read_export(config_path: str, dir_fd: Optional[int] = None) -> GanetiExport:
    """Read a Ganeti export (3.0 or older layout) into the model; with
    `dir_fd`, config.ini is the base name of `config_path` in that open
    directory (the one its dumps are then opened from)."""
    raw = _read_config(config_path, dir_fd)
    try:
        text = raw.decode("utf-8")
        parser = objects.SerializableConfigParser()
        parser.read_string(text, source=config_path)
    except (UnicodeDecodeError, configparser.Error) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError("%s: not a Ganeti export configuration: %s"
                          % (config_path, first))
    return _ExportReader(config_path, parser).read()


def _read_config(path: str, dir_fd: Optional[int]) -> bytes:
    """The bytes of config.ini, opened once: no link followed, no waiting on
    a FIFO, a regular file only, at most _MAX_CONFIG_SIZE bytes."""
    name = path if dir_fd is None else os.path.basename(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError("%s: not a regular file (a FIFO, socket or device is"
                                  " refused)" % path)
            with open(fd, "rb", closefd=False) as handle:
                raw = handle.read(_MAX_CONFIG_SIZE + 1)
        finally:
            os.close(fd)
    except OSError as err:
        raise ConfigError("%s: cannot read: %s%s" % (
            path, err.strerror, " (a symbolic link is refused)"
            if err.errno == errno.ELOOP else "")) from None
    if len(raw) > _MAX_CONFIG_SIZE:
        raise ConfigError("%s: larger than %d bytes" % (path, _MAX_CONFIG_SIZE))
    return raw


class _ExportReader:
    """Turns a parsed config.ini into a GanetiExport, naming bad fields."""

    def __init__(self, path: str, parser: configparser.ConfigParser) -> None:
        self.path = path
        self.parser = parser
        self.directory = os.path.dirname(os.path.abspath(path))

    def fail(self, message: str) -> ConfigError:
        return ConfigError("%s: %s" % (self.path, message))

    def get(self, section: str, key: str) -> Optional[str]:
        if not self.parser.has_option(section, key):
            return None
        value = self.raw(section, key)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise self.fail("[%s] %s holds control characters" % (section, key))
        if value.lower() == UNSET or value == "":
            return None
        return value

    def raw(self, section: str, key: str) -> str:
        try:
            return configparser.ConfigParser.get(self.parser, section, key)
        except configparser.InterpolationError:
            raise self.fail("[%s] %s: a %% must be written %%%%" % (section, key))

    def integer(self, section: str, key: str) -> Optional[int]:
        value = self.get(section, key)
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()):
            raise self.fail("[%s] %s = %r is not a whole number" % (section, key, value))
        return int(value)

    def params(self, section: str) -> Params:
        if not self.parser.has_section(section):
            return ()
        return tuple((key, self.raw(section, key))
                     for key in self.parser.options(section))

    def read(self) -> GanetiExport:
        exp, ins = constants.INISECT_EXP, constants.INISECT_INS
        for section in (exp, ins):
            if not self.parser.has_section(section):
                raise self.fail("no [%s] section: not a Ganeti export" % section)
        name = self.get(ins, "name")
        if not name:
            raise self.fail("[instance] name is missing")
        compression = self.get(exp, "compression")
        if compression is not None and compression != constants.IEC_NONE:
            # gnt-backup export --transport-compression leaves the dumps
            # compressed; they are not disk images until decompressed.
            raise self.fail("[export] compression = %s: compressed disk dumps are not"
                            " supported; export again without --transport-compression"
                            % compression)

        backend = dict(self.params(constants.INISECT_BEP))
        if constants.BE_MEMORY in backend:  # the layout before Ganeti 2.6
            memory = backend.pop(constants.BE_MEMORY)
            backend.setdefault(constants.BE_MAXMEM, memory)
            backend.setdefault(constants.BE_MINMEM, memory)
        for key in (constants.BE_MAXMEM, constants.BE_MINMEM, constants.BE_VCPUS):
            if key not in backend and self.get(ins, key) is not None:
                backend[key] = self.get(ins, key)
        if constants.BE_MAXMEM not in backend and self.get(ins, "memory"):
            backend[constants.BE_MAXMEM] = self.get(ins, "memory")
        vcpus = self._backend_int(backend, constants.BE_VCPUS)
        memory = self._backend_int(backend, constants.BE_MAXMEM)

        disks = self._disks()
        settings = GanetiSettings(
            version=self.get(exp, "version"),
            disk_template=self.get(ins, "disk_template"),
            hypervisor=self.get(ins, "hypervisor"),
            hypervisor_params=self.params(constants.INISECT_HYP),
            os_name=self.get(exp, "os"),
            os_params=self.params(constants.INISECT_OSP),
            os_private_params=self.params(constants.INISECT_OSP_PRIVATE),
            backend_params=tuple(sorted(backend.items())),
            tags=tuple((self.get(ins, "tags") or "").split()),
        )
        system = VirtualSystem(
            system_id=name, name=name, vcpus=vcpus, memory_mib=memory,
            disks=tuple(Disk(disk_id="disk%d" % index,
                             capacity=disk.size_mib * MIB, name=disk.name)
                        for index, disk in enumerate(disks)),
            nics=self._nics(), ganeti=settings)
        return GanetiExport(directory=self.directory, system=system,
                            disks=tuple(disks), source_node=self.get(exp, "source"))

    def _backend_int(self, backend: dict, key: str) -> Optional[int]:
        value = backend.get(key)
        if value is None or value.lower() in (UNSET, constants.VALUE_AUTO):
            return None
        if not (value.isascii() and value.isdigit()):
            raise self.fail("[backend] %s = %r is not a whole number" % (key, value))
        return int(value)

    def _disks(self) -> List[ExportedDisk]:
        ins = constants.INISECT_INS
        count = self.integer(ins, "disk_count")
        if count is None:
            count = 0
            while self.parser.has_option(ins, "disk%d_size" % count):
                count += 1
        if count > constants.MAX_DISKS:
            raise self.fail("disk_count %d is more than Ganeti allows (%d)"
                            % (count, constants.MAX_DISKS))
        disks = []
        for index in range(count):
            # Old exports may say 0: the dump file's length decides then.
            size = self.integer(ins, "disk%d_size" % index) or 0
            dump = self.get(ins, "disk%d_dump" % index)
            if dump is not None:
                self._check_dump(index, dump)
            elif not size:
                raise self.fail("disk%d has neither a size nor a dump file" % index)
            disks.append(ExportedDisk(dump=dump, size_mib=size,
                                      name=self.get(ins, "disk%d_name" % index)))
        return disks

    def _check_dump(self, index: int, dump: str) -> None:
        # Dumps are resolved inside the export directory only: a bare name.
        if (dump in (".", "..") or "/" in dump or "\\" in dump or "\0" in dump):
            raise self.fail("disk%d_dump %r is not a file name inside the export"
                            " directory" % (index, dump))

    def _nics(self) -> Tuple[Nic, ...]:
        ins = constants.INISECT_INS
        nics = []
        for index in range(constants.MAX_NICS):
            prefix = "nic%d_" % index
            if not self.parser.has_option(ins, prefix + "mac"):
                break
            mac = self.get(ins, prefix + "mac")
            if mac and mac.lower() in (constants.VALUE_AUTO, constants.VALUE_GENERATE):
                mac = None
            nics.append(Nic(mac=mac, ip=self.get(ins, prefix + "ip"),
                            mode=self.get(ins, prefix + "mode"),
                            link=self.get(ins, prefix + "link"),
                            ganeti_network=self.get(ins, prefix + "network"),
                            vlan=self.get(ins, prefix + "vlan"),
                            name=self.get(ins, prefix + "name")))
        return tuple(nics)


def dump_path(export: GanetiExport, disk: ExportedDisk) -> str:
    """The path of `disk`'s dump file, a bare name inside the export
    directory (read_export checked it).  Not opened here: the exporter opens
    it once (package/openfile.py), refusing a link or anything but a file."""
    if disk.dump is None:
        raise ConfigError("%s: a disk has no dump file" % export.directory)
    return os.path.join(export.directory, disk.dump)


def under_export_dir(path: str, export_dir: str) -> bool:
    """Whether `path` is inside Ganeti's export directory."""
    path = os.path.realpath(path)
    export_dir = os.path.realpath(export_dir)
    return os.path.commonpath([path, export_dir]) == export_dir
