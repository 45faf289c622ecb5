"""The instance plan: a package's virtual system merged with the operator's
overrides and checked with Ganeti's own validators.

Pure: no files, no subprocesses.  Input is the descriptor's VirtualSystem and
an ImportOverrides (what the command line said); output is the VirtualSystem
that config.ini is written from, plus warnings.  Everything that reaches
Ganeti passes one of Ganeti's checks here: instance name (netutils.Hostname),
MACs (utils.NormalizeAndValidateMac), tags (objects.TaggableObject), disk
templates, hypervisors and NIC modes (constants), backend parameter types
(utils.ForceDictType).  Hypervisor and OS parameters written by a foreign
package are not trusted: only those the allow-lists of cluster/guest_params.py
accept are applied, unless the operator keeps them all (--keep-host-params);
the operator's own (-H, -O) are applied as given.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ganeti import constants, errors, netutils, objects, utils

from ganeti_ovf.cluster import guest_params, hardware_map
from ganeti_ovf.errors import OptionError, printable
from ganeti_ovf.model import Disk, GanetiSettings, Nic, Params, VirtualSystem

MIB = 1024 * 1024

# The OS of appliances that bring their own: its import script copies disks.
DEFAULT_OS = "noop"
_OS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


@dataclass(frozen=True)
class ImportOverrides:
    """What the operator said on the command line (None: not said)."""

    name: Optional[str] = None
    disk_template: Optional[str] = None
    hypervisor: Optional[str] = None
    hypervisor_params: dict = field(default_factory=dict)
    os_name: Optional[str] = None
    os_params: dict = field(default_factory=dict)
    backend_params: dict = field(default_factory=dict)
    blank_disks: dict = field(default_factory=dict)  # index -> size in bytes
    nics: dict = field(default_factory=dict)  # index -> {option: value}
    # --net-map: the package's network name -> a link ("br0") or a Ganeti
    # network ("network:NAME") for every NIC on it.
    net_map: dict = field(default_factory=dict)
    no_nics: bool = False
    tags: Optional[tuple] = None
    keep_host_params: bool = False
    # The cluster's default hypervisor (hardware_map.cluster_default_hypervisor):
    # the hardware mapping's target when neither the operator nor the package
    # names one.
    default_hypervisor: Optional[str] = None
    # Whether Ganeti will check that the name resolves (gnt-backup import
    # and instance creation do, unless told --no-name-check).
    name_check: bool = True
    # -f: -t diskless may drop the package's disks.
    force: bool = False


@dataclass(frozen=True)
class Plan:
    """The instance to write, and what was changed on the way."""

    system: VirtualSystem
    warnings: tuple = ()
    dropped_params: tuple = ()  # ("hypervisor"|"os", name) pairs
    hardware: tuple = ()  # hardware_map.Param set from the package's hardware


def _fail(message: str) -> OptionError:
    return OptionError(message)


def _ganeti_check(what: str, func, *args) -> Any:
    try:
        return func(*args)
    except (errors.OpPrereqError, errors.TagError, errors.TypeEnforcementError,
            errors.ParameterError) as err:
        detail = err.args[0] if err.args else str(err)
        raise _fail("%s: %s" % (what, detail))


def instance_name(name: Optional[str]) -> str:
    """A valid Ganeti instance name, or OptionError."""
    if not name:
        raise _fail("the virtual system has neither a Name nor an ovf:id; give --name")
    return _ganeti_check("instance name %r (use --name to choose another)" % name,
                         netutils.Hostname.GetNormalizedName, name)


def resolves(name: str) -> bool:
    """Whether `name` resolves as Ganeti's name check will try it."""
    try:
        netutils.GetHostname(name=name)
    except (errors.ResolverError, errors.OpPrereqError):  # Ganeti wraps the first
        return False
    return True


def disk_template(template: Optional[str]) -> Optional[str]:
    if template is not None and template not in constants.DISK_TEMPLATES:
        raise _fail("disk template %r is not one of %s"
                    % (template, ", ".join(sorted(constants.DISK_TEMPLATES))))
    return template


def hypervisor_name(name: Optional[str]) -> Optional[str]:
    if name is not None and name not in constants.HYPER_TYPES:
        raise _fail("hypervisor %r is not one of %s"
                    % (name, ", ".join(sorted(constants.HYPER_TYPES))))
    return name


def os_name(name: Optional[str]) -> Optional[str]:
    if name is not None and not _OS_NAME_RE.match(name):
        raise _fail("OS name %r is not a valid Ganeti OS name" % name)
    return name


def mac_address(mac: Optional[str], what: str) -> Optional[str]:
    if mac is None or mac.lower() in (constants.VALUE_AUTO, constants.VALUE_GENERATE):
        return None
    return _ganeti_check(what, utils.NormalizeAndValidateMac, mac)


def tags(values) -> tuple:
    for tag in values:
        _ganeti_check("tag %r" % tag, objects.TaggableObject.ValidateTag, tag)
    return tuple(values)


def _params(values: dict, what: str) -> Params:
    result = []
    for key, value in values.items():
        if not isinstance(key, str) or not _PARAM_NAME_RE.match(key):
            raise _fail("%s parameter name %r is not valid" % (what, key))
        if isinstance(value, bool):
            value = str(value)
        if value is None:
            continue
        result.append((key, str(value)))
    return tuple(result)


def backend_params(values: dict) -> dict:
    """Backend parameters typed as Ganeti types them, back as strings."""
    checked = dict(values)
    for key in checked:
        if key not in constants.BES_PARAMETER_COMPAT:
            raise _fail("unknown backend parameter %r (known: %s)"
                        % (key, ", ".join(sorted(constants.BES_PARAMETER_COMPAT))))
    _ganeti_check("backend parameters", utils.ForceDictType, checked,
                  constants.BES_PARAMETER_COMPAT)
    if constants.BE_MEMORY in checked:
        memory = checked.pop(constants.BE_MEMORY)
        checked.setdefault(constants.BE_MAXMEM, memory)
        checked.setdefault(constants.BE_MINMEM, memory)
    return {key: str(value) for key, value in checked.items()}


def package_params(settings: GanetiSettings, hypervisor: Optional[str],
                   keep: bool = False) -> tuple:
    """The package's hypervisor and OS parameters that are applied, and the
    dropped ones as ("hypervisor"|"os", name, rule) triples.

    `hypervisor` is the one whose allow-list applies: the instance's.  With
    `keep` (--keep-host-params), the operator trusts the package: all apply.
    """
    if keep:
        return settings.hypervisor_params, settings.os_params, []
    hv_params, hv_dropped = guest_params.screen_hypervisor(hypervisor,
                                                           settings.hypervisor_params)
    os_params, os_dropped = guest_params.screen_os(settings.os_params)
    dropped = [("hypervisor", name, rule) for name, rule in hv_dropped]
    dropped += [("os", name, rule) for name, rule in os_dropped]
    return hv_params, os_params, dropped


MAX_NAMED = 20  # dropped parameters named per warning


def dropped_warnings(dropped: list) -> list:
    """One warning per rule, naming the parameters it drops (escaped: the
    names come from the package)."""
    by_rule: dict = {}
    for what, name, rule in dropped:
        by_rule.setdefault(rule, []).append("%s:%s" % (what, printable(name)))
    warnings = []
    for rule, names in by_rule.items():
        more = " and %d more" % (len(names) - MAX_NAMED) if len(names) > MAX_NAMED else ""
        warnings.append("parameters from the package not applied (%s;"
                        " --keep-host-params applies them): %s%s"
                        % (rule, ", ".join(names[:MAX_NAMED]), more))
    return warnings


def _merge(base: Params, overrides: dict, what: str) -> Params:
    merged = dict(base)
    merged.update(dict(_params(overrides, what)))
    return tuple(merged.items())


def nic_settings(index: int, options: dict, base: Nic, label: Optional[str] = None) -> Nic:
    """Apply one --net N:... option to a NIC, with Ganeti's checks (of the
    package's own values too: `label` names where they come from)."""
    label = label or "--net %d" % index
    options = dict(options)
    unknown = set(options) - set(constants.INIC_PARAMS)
    if unknown:
        raise _fail("%s: unknown option(s) %s" % (label, ", ".join(sorted(unknown))))
    _ganeti_check(label, utils.ForceDictType, options,
                  constants.INIC_PARAMS_TYPES)
    mode = options.get(constants.INIC_MODE, base.mode)
    if mode is not None and mode not in constants.NIC_VALID_MODES:
        raise _fail("%s: mode %r is not one of %s"
                    % (label, mode, ", ".join(sorted(constants.NIC_VALID_MODES))))
    ip = options.get(constants.INIC_IP, base.ip)
    if ip is not None and ip.lower() not in (constants.VALUE_NONE, constants.NIC_IP_POOL) \
            and not netutils.IPAddress.IsValid(ip):
        raise _fail("%s: invalid IP address %r" % (label, ip))
    network = options.get(constants.INIC_NETWORK, base.ganeti_network)
    link = options.get(constants.INIC_LINK, base.link)
    if network and (constants.INIC_MODE in options or constants.INIC_LINK in options):
        raise _fail("%s: a network and a mode or link cannot be given together"
                    % label)
    if network:
        mode, link = None, None
    mac = mac_address(options.get(constants.INIC_MAC, base.mac), "%s mac" % label)
    return dataclasses.replace(base, mode=mode, link=link, ip=ip, ganeti_network=network,
                               mac=mac, vlan=options.get(constants.INIC_VLAN, base.vlan),
                               name=options.get(constants.INIC_NAME, base.name))


def make_plan(system: VirtualSystem, overrides: ImportOverrides) -> Plan:
    """Merge `system` with `overrides` into the instance to write."""
    warnings: list = []
    package = system.ganeti or GanetiSettings()

    # Not the id the reader made up for a system with neither a name nor an
    # ovf:id ("system1"): such a package names no instance.
    name = instance_name(overrides.name or system.name)
    if overrides.name_check and not resolves(name):
        warnings.append("instance name %s does not resolve (DNS or /etc/hosts): Ganeti"
                        " will refuse it unless imported with --no-name-check; or choose"
                        " a name that resolves with --name" % name)
    template = disk_template(overrides.disk_template or package.disk_template)
    if template == constants.DT_DISKLESS and system.disks and not overrides.force:
        raise _fail("-t diskless would drop the package's %d disk%s: use -f to import"
                    " without them" % (len(system.disks), "s" if len(system.disks) > 1
                                       else ""))

    hv_name = hypervisor_name(overrides.hypervisor or package.hypervisor)
    if overrides.hypervisor and package.hypervisor and \
            overrides.hypervisor != package.hypervisor:
        # the package's parameters belong to another hypervisor
        package = dataclasses.replace(package, hypervisor_params=())
    hv_params, os_params, dropped = package_params(
        package, hv_name or overrides.default_hypervisor, overrides.keep_host_params)
    hv_params = _merge(hv_params, overrides.hypervisor_params, "hypervisor")
    hv_name, hv_params, hardware = _map_hardware(system, hv_name, hv_params,
                                                 overrides.default_hypervisor, warnings)

    os_params = _merge(os_params, overrides.os_params, "OS")
    chosen_os = os_name(overrides.os_name or package.os_name)

    backend = dict(package.backend_params)
    if system.vcpus is not None:
        backend[constants.BE_VCPUS] = str(system.vcpus)
    if system.memory_mib is not None:
        backend[constants.BE_MAXMEM] = str(system.memory_mib)
        backend.setdefault(constants.BE_MINMEM, str(system.memory_mib))
    if overrides.backend_params:
        if constants.BE_MEMORY in overrides.backend_params:
            backend.pop(constants.BE_MAXMEM, None)
            backend.pop(constants.BE_MINMEM, None)
        backend.update(overrides.backend_params)
    backend = backend_params(backend)
    vcpus = int(backend[constants.BE_VCPUS]) if constants.BE_VCPUS in backend else None
    memory = int(backend[constants.BE_MAXMEM]) if constants.BE_MAXMEM in backend else None

    chosen_tags = tags(overrides.tags if overrides.tags is not None else package.tags)

    disks = _plan_disks(system, overrides, template)
    nics = _plan_nics(system, overrides, warnings)

    warnings.extend(dropped_warnings(dropped))
    if chosen_os is None:
        # Ganeti 3.0 imports no disk data at all for an instance without an
        # OS (it only runs OS import scripts), so an OS is always named.
        chosen_os = DEFAULT_OS
        warnings.append("the package names no Ganeti OS: using %r (Debian package"
                        " ganeti-os-noop, whose import script copies the disks as"
                        " they are); choose another with --os-type" % DEFAULT_OS)

    settings = GanetiSettings(
        version=package.version, disk_template=template, hypervisor=hv_name,
        hypervisor_params=hv_params, os_name=chosen_os, os_params=os_params,
        os_private_params=(), backend_params=tuple(sorted(backend.items())),
        tags=chosen_tags)
    planned = dataclasses.replace(system, name=name, vcpus=vcpus, memory_mib=memory,
                                  disks=disks, nics=nics, ganeti=settings)
    return Plan(system=planned, warnings=tuple(warnings),
                dropped_params=tuple((what, name) for what, name, _ in dropped),
                hardware=hardware)


def _map_hardware(system: VirtualSystem, hv_name: Optional[str], hv_params: Params,
                  default: Optional[str], warnings: list) -> tuple:
    """Add the hypervisor parameters the package's hardware asks for, where
    neither the operator (-H) nor the package's Ganeti section gave them.

    Returns (hypervisor, parameters, the hardware_map.Params applied).  The
    hypervisor becomes explicit when parameters are set for the cluster's
    default, so config.ini's parameters and hypervisor agree.
    """
    target = hv_name or default
    mapping = hardware_map.import_mapping(system, target or hardware_map.KVM)
    warnings.extend(mapping.notes)
    if target is None:
        if mapping.params:
            warnings.append("the hypervisor is unknown, so the package's hardware is"
                            " not mapped (%s): name it with -H kvm or -H xen-hvm"
                            % ", ".join("%s=%s" % (p.name, p.value) for p in mapping.params))
        return hv_name, hv_params, ()
    given = dict(hv_params)
    applied = []
    for group in mapping.groups:
        if any(param.name in given for param in group):
            continue  # the operator's or the package's own value wins, whole
        applied.extend(group)
    if not applied:
        return hv_name, hv_params, ()
    return (target, hv_params + tuple((p.name, p.value) for p in applied), tuple(applied))


def _plan_disks(system: VirtualSystem, overrides: ImportOverrides,
                template: Optional[str]) -> tuple:
    if template == constants.DT_DISKLESS:
        return ()  # the design: diskless ignores all disk information
    if overrides.blank_disks:
        indexes = sorted(overrides.blank_disks)
        if indexes != list(range(len(indexes))):
            raise _fail("--disk indexes must start at 0 and have no gaps")
        return tuple(Disk(disk_id="disk%d" % index, capacity=overrides.blank_disks[index])
                     for index in indexes)
    for disk in system.disks:
        if disk.capacity <= 0 and disk.file is None:
            raise _fail("disk %s has no capacity and no file" % disk.disk_id)
    if len(system.disks) > constants.MAX_DISKS:
        raise _fail("the package has %d disks; Ganeti allows %d"
                    % (len(system.disks), constants.MAX_DISKS))
    return system.disks


NET_MAP_NETWORK = "network:"  # --net-map NAME=network:NET names a Ganeti network


def _plan_nics(system: VirtualSystem, overrides: ImportOverrides, warnings: list) -> tuple:
    if overrides.no_nics:
        if overrides.nics:
            raise _fail("--no-nics and --net cannot be used together")
        return ()
    nics = list(system.nics)
    if overrides.nics:
        top = max(overrides.nics) + 1
        if top > constants.MAX_NICS:
            raise _fail("--net index %d is over Ganeti's limit of %d NICs"
                        % (top - 1, constants.MAX_NICS))
        while len(nics) < top:
            nics.append(Nic())
    unknown = sorted(set(overrides.net_map) - {nic.network for nic in nics})
    if unknown:
        raise _fail("--net-map %s: the package has no such network (it has: %s)"
                    % (unknown[0], ", ".join(sorted({str(nic.network) for nic in nics
                                                      if nic.network})) or "none"))
    planned, unmapped = [], set()
    for index, nic in enumerate(nics):
        if index in overrides.nics:
            nic = nic_settings(index, overrides.nics[index], nic)
        elif nic.network in overrides.net_map:
            target = overrides.net_map[nic.network]
            option = {constants.INIC_NETWORK: target[len(NET_MAP_NETWORK):]} \
                if target.startswith(NET_MAP_NETWORK) else {constants.INIC_LINK: target}
            nic = nic_settings(index, option, nic, "--net-map %s" % nic.network)
        else:
            # The package's own values pass Ganeti's checks as the options do.
            nic = nic_settings(index, {}, nic, "the package's NIC %d" % index)
            if nic.network and not (nic.link or nic.ganeti_network):
                unmapped.add(nic.network)
        planned.append(nic)
    if unmapped:
        warnings.append("source network%s %s not mapped (--net-map 'NAME=LINK' or"
                        " 'NAME=network:NET'): %s the cluster's default NIC mode and link"
                        % ("s" if len(unmapped) > 1 else "",
                           ", ".join(repr(name) for name in sorted(unmapped)),
                           "their NICs get" if len(unmapped) > 1 else "its NICs get"))
    if len(planned) > constants.MAX_NICS:
        raise _fail("the package has %d NICs; Ganeti allows %d"
                    % (len(planned), constants.MAX_NICS))
    return tuple(planned)
