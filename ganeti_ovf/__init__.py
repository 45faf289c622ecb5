"""ganeti-ovf: convert between OVF/OVA packages and Ganeti instance exports.

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
