"""`gnt-ovf info`: a package described from its descriptor alone.

Builds the stable JSON document documented in gnt-ovf(8) (schema version 1)
and its plain-text rendering.  Disk files need not be present; the manifest
is parsed when present, and digests are checked only when asked (--verify).
"""

import json
from typing import Any, Optional

from ganeti_ovf import importer
from ganeti_ovf import plan as plan_rules
from ganeti_ovf.cluster import hardware_map
from ganeti_ovf.errors import OvfError
from ganeti_ovf.package.manifest import verify_bytes, verify_member
from ganeti_ovf.model import Appliance, VirtualSystem
from ganeti_ovf.package.reader import Package

SCHEMA_VERSION = 1


def describe_package(package: Package, appliance: Appliance,
                     verify: bool = False, trust_store: Optional[str] = None) -> dict:
    """The info document for a package."""
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package": package.path,
        "kind": package.kind,
        "descriptor": package.descriptor_name,
        "ovf_version": appliance.ovf_version,
        "profile": appliance.profile,
        "profiles": [{"id": p.profile_id, "label": p.label, "default": p.default}
                     for p in appliance.profiles],
        "systems": [_system(system, package) for system in appliance.systems],
        "manifest": _manifest(package, appliance, verify),
        "signature": _signature(package, trust_store),
        "warnings": list(package.warnings) + list(appliance.warnings),
    }
    return document


def _system(system: VirtualSystem, package: Package) -> dict:
    ganeti = system.ganeti
    dropped = []
    if ganeti is not None:
        # Screened as import screens them: for the package's hypervisor, else
        # the cluster's default.
        hypervisor = ganeti.hypervisor or hardware_map.cluster_default_hypervisor()
        _, _, triples = plan_rules.package_params(ganeti, hypervisor)
        dropped = ["%s:%s" % (what, name) for what, name, _ in triples]
    return {
        "id": system.system_id,
        "name": system.name,
        "os": {"cim_id": system.os_id, "description": system.os_description,
               "ganeti_os": ganeti.os_name if ganeti else None},
        "vcpus": system.vcpus,
        "memory_mib": system.memory_mib,
        "hardware_family": system.hardware_family,
        "disks": [{
            "id": disk.disk_id,
            "capacity": disk.capacity,
            "blank": disk.blank,
            "file": disk.file.href if disk.file else None,
            "file_size": disk.file.size if disk.file else None,
            "present": _present(package, disk.file.href) if disk.file else None,
            "format": disk.format_uri,
            "compression": disk.file.compression if disk.file else None,
            "chunk_size": disk.file.chunk_size if disk.file else None,
            "name": disk.name,
            "controller": hardware_map.controller_info(disk.controller),
            "unit": disk.unit,
            "boot": disk.boot,
        } for disk in system.disks],
        "nics": [{"network": nic.network, "mac": nic.mac, "model": nic.model,
                  "mode": nic.mode, "link": nic.link} for nic in system.nics],
        "ganeti": None if ganeti is None else {
            "disk_template": ganeti.disk_template,
            "hypervisor": ganeti.hypervisor,
            "hypervisor_params": dict(ganeti.hypervisor_params),
            "os": ganeti.os_name,
            "os_params": dict(ganeti.os_params),
            "backend_params": dict(ganeti.backend_params),
            "tags": list(ganeti.tags),
        },
        "dropped_parameters": dropped,
        "vmware_os_type": system.vmware_os_type,
        "cores_per_socket": system.cores_per_socket,
        "firmware": system.firmware,
        "hardware_mapping": hardware_map.describe(system),
    }


def _present(package: Package, href: str) -> bool:
    return package.has(href) or package.has(href + ".000000000")


def _manifest(package: Package, appliance: Appliance, verify: bool) -> Optional[dict]:
    try:
        manifest = package.manifest()
    except OvfError as err:
        return {"present": True, "valid": False, "error": str(err)}
    if manifest is None:
        return None
    result: dict[str, Any] = {
        "present": True, "valid": True,
        "algorithms": sorted({entry.algorithm for entry in manifest.entries}),
        "entries": len(manifest.entries),
        "certificate": package.certificate_bytes() is not None,
    }
    if verify:
        try:
            members = []
            for system in appliance.systems:
                for disk in system.disks:
                    members.extend(importer.disk_members(package, disk))
            manifest.require([package.descriptor_name] + [member.name for member in members])
            verify_bytes(manifest.entry(package.descriptor_name), package.descriptor_bytes())
            for member in members:
                verify_member(manifest.entry(member.name), member)
            package.check_unchanged()
            result["verified"] = True
        except OvfError as err:
            result["verified"] = False
            result["error"] = str(err)
    return result


def _signature(package: Package, trust_store: Optional[str]) -> Optional[dict]:
    if package.certificate_name() is None:
        return None
    try:
        info = importer.check_signature(package, trust_store, False, lambda _m: None)
    except OvfError as err:
        return {"valid": False, "error": str(err)}
    return {"valid": True, "signer": info.signer, "issuer": info.issuer,
            "not_before": info.not_before.isoformat() + "Z",
            "not_after": info.not_after.isoformat() + "Z",
            "trusted": info.trusted, "reason": info.reason, "algorithm": info.algorithm}


def to_json(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


MIB = 1024 ** 2
_UNITS = (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", MIB), ("KiB", 1024))


def human_size(size: int) -> str:
    """A size as people read it: "4 GiB", "1.5 TiB", "512 MiB", "700 bytes"."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            text = ("%.2f" % value).rstrip("0").rstrip(".")
            return "%s %s" % (text, unit)
    return "%d bytes" % size


def _known(value) -> str:
    return "unknown" if value is None else str(value)


def to_text(document: dict) -> str:
    """The human rendering of an info document."""
    lines = ["Package: %s (%s, OVF %s)" % (document["package"], document["kind"],
                                          document["ovf_version"])]
    if document["profiles"]:
        lines.append("Profiles: %s (using %s)" % (
            ", ".join(p["id"] + (" [default]" if p["default"] else "")
                      for p in document["profiles"]), document["profile"]))
    manifest = document["manifest"]
    if manifest is None:
        lines.append("Manifest: none")
    elif not manifest["valid"]:
        lines.append("Manifest: invalid: %s" % manifest["error"])
    else:
        state = ""
        if "verified" in manifest:
            state = ", digests verified" if manifest["verified"] else \
                ", VERIFICATION FAILED: %s" % manifest["error"]
        lines.append("Manifest: %d entries (%s)%s%s" % (
            manifest["entries"], ", ".join(manifest["algorithms"]),
            ", signed" if manifest["certificate"] else "", state))
    signature = document["signature"]
    if signature is not None:
        if not signature["valid"]:
            lines.append("Signature: INVALID: %s" % signature["error"])
        else:
            lines.append("Signature: %s by %s (issuer %s, valid %s to %s)%s" % (
                signature["algorithm"], signature["signer"], signature["issuer"],
                signature["not_before"], signature["not_after"],
                ", trusted" if signature["trusted"] else
                ", NOT TRUSTED: %s" % signature["reason"]))
    for system in document["systems"]:
        lines.append("Virtual system %s%s" % (
            system["id"], " (%s)" % system["name"] if system["name"] != system["id"] else ""))
        os_info = system["os"]
        lines.append("  OS: %s" % (", ".join(str(v) for v in (
            os_info["ganeti_os"], os_info["description"],
            "CIM %s" % os_info["cim_id"] if os_info["cim_id"] is not None else None)
            if v) or "unknown"))
        lines.append("  vCPUs: %s, memory: %s" % (
            _known(system["vcpus"]),
            human_size(system["memory_mib"] * MIB) if system["memory_mib"] else "unknown"))
        for index, disk in enumerate(system["disks"]):
            source = "blank" if disk["blank"] else "%s%s%s%s" % (
                disk["file"], ", gzip" if disk["compression"] == "gzip" else "",
                ", chunked" if disk["chunk_size"] else "",
                ", MISSING from the package" if disk["present"] is False else "")
            lines.append("  disk/%d: %s, %s (%s)" % (
                index, disk["id"], human_size(disk["capacity"]), source))
        for index, nic in enumerate(system["nics"]):
            lines.append("  nic/%d: network %s, MAC %s, model %s" % (
                index, _known(nic["network"]), _known(nic["mac"]), _known(nic["model"])))
        if system["ganeti"]:
            ganeti = system["ganeti"]
            lines.append("  Ganeti: OS %s, template %s, hypervisor %s, tags %s" % (
                ganeti["os"] or "unset", ganeti["disk_template"] or "unset",
                ganeti["hypervisor"] or "unset", " ".join(ganeti["tags"]) or "none"))
        lines.extend(hardware_map.describe_text(system["hardware_mapping"]))
        if system["dropped_parameters"]:
            lines.append("  Not applied on import: %s" % ", ".join(system["dropped_parameters"]))
    if len(document["systems"]) > 1:
        lines.append("Import one virtual system with: gnt-ovf import --system ID|NAME;"
                     " all %d (one instance each) with: gnt-ovf import --system all"
                     % len(document["systems"]))
    for warning in document["warnings"]:
        lines.append("Warning: %s" % warning)
    return "\n".join(lines)

