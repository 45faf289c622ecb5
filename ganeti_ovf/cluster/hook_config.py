"""The export hook's configuration, and when the hook acts at all.

Owns /etc/ganeti/ovf-export.conf (its [ovf-export] keys, their defaults and
checks) and the decisions taken before any work: what Ganeti told the hook
(HookEvent, from the GANETI_* variables), whether this node and this export
concern it (skip_reason) and whether the configuration selects the instance
(config_skip_reason).  The runner that then converts is ganeti_ovf.hook.
"""

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from ganeti import constants, pathutils

from ganeti_ovf.disks import deflate, gzipstream, qemu
from ganeti_ovf.errors import OvfError
from ganeti_ovf.package.manifest import CANONICAL

MANIFEST_ALGORITHMS = tuple(CANONICAL)  # hashlib names a manifest can use
CONFIG_PATH = os.path.join(pathutils.CONF_DIR, "ovf-export.conf")
CONFIG_ENV = "GANETI_OVF_EXPORT_CONF"  # another configuration (tests)
SECTION = "ovf-export"
DEFAULT_OUTPUT_DIR = os.path.join(pathutils.DATA_DIR, "ovf")
DEFAULT_SPOOL_DIR = os.path.join(pathutils.DATA_DIR, "ovf-spool")
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}
_KEYS = ("enabled", "tags", "format", "ova", "compress", "compress_level", "external",
         "manifest", "ovf_version", "output_dir", "spool_dir", "keep")
COMPRESS_LEVELS = range(deflate.MIN_LEVEL, deflate.MAX_LEVEL + 1)


class HookError(OvfError):
    """The hook's configuration or environment is unusable."""


@dataclass(frozen=True)
class HookConfig:
    """The [ovf-export] section of the configuration file."""

    enabled: bool = False
    tags: tuple = ()  # convert only instances with one of these; () = all
    disk_format: str = "vmdk"
    ova: bool = True
    compress: bool = False
    compress_level: int = gzipstream.DEFAULT_LEVEL  # as export --compress-level
    external: bool = False
    manifest_algorithm: Optional[str] = "sha256"
    ovf_version: str = "1.0"
    output_dir: str = DEFAULT_OUTPUT_DIR
    spool_dir: str = DEFAULT_SPOOL_DIR
    keep: int = 1  # newest outputs kept per instance; 0 = all


@dataclass(frozen=True)
class HookEvent:
    """What Ganeti told the hook through its GANETI_* variables."""

    phase: str
    op_code: str
    instance: str
    export_node: str
    export_mode: str
    tags: tuple

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "HookEvent":
        return cls(phase=env.get("GANETI_HOOKS_PHASE", ""),
                   op_code=env.get("GANETI_OP_CODE", ""),
                   instance=env.get("GANETI_INSTANCE_NAME", ""),
                   export_node=env.get("GANETI_EXPORT_NODE", ""),
                   export_mode=env.get("GANETI_EXPORT_MODE", ""),
                   tags=tuple(env.get("GANETI_INSTANCE_TAGS", "").split()))


# ------------------------------------------------------------ configuration


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def _boolean(source: str, key: str, value: str) -> bool:
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise HookError("%s: %s = %r is not yes or no" % (source, key, value))


def parse_config(text: str, source: str,
                 export_dir: str = pathutils.EXPORT_DIR) -> HookConfig:
    """The configuration in `text`; HookError naming the key at fault."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=source)
    except configparser.Error as err:
        raise HookError("%s: %s" % (source, str(err).splitlines()[0]))
    if not parser.has_section(SECTION):
        raise HookError("%s: no [%s] section" % (source, SECTION))
    values = dict(parser.items(SECTION))
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise HookError("%s: unknown key %s in [%s]" % (source, unknown[0], SECTION))
    config = HookConfig()
    changes: dict = {}
    for key in ("enabled", "ova", "compress", "external"):
        if key in values:
            changes[key] = _boolean(source, key, values[key])
    if "tags" in values:
        changes["tags"] = tuple(tag for tag in re.split(r"[\s,]+", values["tags"]) if tag)
    if "format" in values:
        fmt = values["format"].strip()
        if fmt not in qemu.WRITE_FORMATS:
            raise HookError("%s: format = %r is not one of %s"
                            % (source, fmt, ", ".join(qemu.WRITE_FORMATS)))
        changes["disk_format"] = fmt
    if "manifest" in values:
        algorithm = values["manifest"].strip().lower()
        if algorithm not in MANIFEST_ALGORITHMS + ("none",):
            raise HookError("%s: manifest = %r is not one of %s, none"
                            % (source, algorithm, ", ".join(MANIFEST_ALGORITHMS)))
        changes["manifest_algorithm"] = None if algorithm == "none" else algorithm
    if "ovf_version" in values:
        changes["ovf_version"] = values["ovf_version"].strip()
    if "compress_level" in values:
        value = values["compress_level"].strip()
        if not value.isdigit() or int(value) not in COMPRESS_LEVELS:
            raise HookError("%s: compress_level = %r is not a level from 0 to 9"
                            % (source, values["compress_level"]))
        changes["compress_level"] = int(value)
    if "keep" in values:
        try:
            changes["keep"] = int(values["keep"])
        except ValueError:
            changes["keep"] = -1
        if changes["keep"] < 0:
            raise HookError("%s: keep = %r is not a number >= 0" % (source, values["keep"]))
    for key in ("output_dir", "spool_dir"):
        if key in values:
            changes[key] = values[key].strip()
    config = dataclasses.replace(config, **changes)
    for key in ("output_dir", "spool_dir"):
        path = getattr(config, key)
        if not os.path.isabs(path):
            raise HookError("%s: %s = %r is not an absolute path" % (source, key, path))
        # Ganeti owns the export directory: gnt-backup list would show our
        # files as exports and the next export would delete them.
        if _inside(path, export_dir):
            raise HookError("%s: %s = %s is inside Ganeti's export directory %s"
                            % (source, key, path, export_dir))
    return config


def load_config(path: str, export_dir: str = pathutils.EXPORT_DIR) -> HookConfig:
    """The configuration file; a missing file means disabled."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return HookConfig()
    except (OSError, UnicodeDecodeError) as err:
        raise HookError("%s: cannot read: %s" % (path, getattr(err, "strerror", err)))
    return parse_config(text, path, export_dir)


# ------------------------------------------------------------ decisions


def is_this_node(node: str, this_node: str) -> bool:
    """Whether Ganeti's node name `node` is this host (FQDN or short name)."""
    node, this_node = node.lower().rstrip("."), this_node.lower().rstrip(".")
    return bool(node) and (node == this_node or node.split(".")[0] == this_node)


def skip_reason(event: HookEvent, this_node: str) -> Optional[str]:
    """Why this hook run has nothing to do, before reading the configuration."""
    if event.phase != constants.HOOKS_PHASE_POST:
        return "phase %r is not post" % event.phase
    if event.op_code != "OP_BACKUP_EXPORT":
        return "opcode %r is not OP_BACKUP_EXPORT" % event.op_code
    if event.export_mode != constants.EXPORT_MODE_LOCAL:
        return "export mode %r is not local" % event.export_mode
    if not is_this_node(event.export_node, this_node):
        return "the export went to %r, not to this node" % event.export_node
    return None


def config_skip_reason(event: HookEvent, config: HookConfig) -> Optional[str]:
    """Why the configuration excludes this export (None: convert it)."""
    if not config.enabled:
        return "the hook is not enabled"
    if config.tags and not set(config.tags) & set(event.tags):
        return "instance %s has none of the tags %s" % (event.instance,
                                                        ",".join(config.tags))
    return None


def check_instance_name(name: str) -> str:
    if not name or "/" in name or name.startswith(".") or "\0" in name:
        raise HookError("GANETI_INSTANCE_NAME %r is not a usable instance name" % name)
    return name
