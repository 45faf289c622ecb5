"""Stage 4, Ganeti: what the cluster reads and does around a conversion.

Owns the config.ini of Ganeti export directories, read for export and
written for import (ganeti_export.py); the Ganeti jobs submitted through
luxi (jobs.py); the export hook's configuration and its decisions
(hook_config.py); the hook's status files (status.py); and which
hypervisor and OS parameters a package may set (guest_params.py), beside
what its hardware maps to (hardware_map.py).  Named
`cluster` so that it never shadows Ganeti's own `ganeti` package.

May import: Ganeti's library, ganeti_ovf.errors, ganeti_ovf.model, and the
constants of earlier stages (formats, manifest algorithms).  Never the
pipeline modules above it (importer, exporter, hook, cli).
"""
