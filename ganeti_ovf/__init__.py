"""ganeti-ovf: convert between OVF/OVA packages and Ganeti instance exports.

Data flows one way through the neutral model (model.py), one stage per
subpackage:

    package/     the OVF folder or OVA: members read in place, manifest,
                 signature (and the OVA writer for export)
    descriptor/  the OVF XML <-> the model
    disks/       inspection, qemu-img, the VMDK reader and writer
    cluster/     Ganeti: config.ini of exports, jobs, hook configuration,
                 status

At the top, what sequences the stages or is shared by all of them: plan.py
(the model checked against Ganeti's rules), importer.py and exporter.py
(the two directions), describe.py (info), publish.py (staging and atomic
publication), progress.py (progress shown to the operator), hook.py (the
export hook's runner), cli.py (the command table), errors.py and model.py.
A stage never imports the modules above it.

Importing the package makes Ganeti's Python library importable: Debian installs
it under /usr/share/ganeti/default, which is not on sys.path (Ganeti's own
scripts find it because they live beside it).
"""

import os
import sys

__version__ = "0.1.0"

GANETI_LIBRARY_DIRS = ("/usr/share/ganeti/default", "/usr/share/ganeti/3.0")


def _add_ganeti_to_path() -> None:
    extra = os.environ.get("GANETI_OVF_GANETI_DIR")
    for directory in ((extra,) if extra else ()) + GANETI_LIBRARY_DIRS:
        if os.path.isfile(os.path.join(directory, "ganeti", "__init__.py")):
            if directory not in sys.path:
                sys.path.append(directory)
            return


_add_ganeti_to_path()
