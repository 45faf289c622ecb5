"""Shared test set-up: the checkout on sys.path, paths to shared data."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import ganeti_ovf  # noqa: E402,F401  (puts Ganeti's library on sys.path)

# Test helpers (fixture builders, the namespaced cluster) live in support/.
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))

SHARED = os.path.join(os.path.dirname(ROOT), "shared")
CORPUS = os.path.join(SHARED, "corpus")
SCHEMAS = os.path.join(SHARED, "schemas")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds the Debian package"
                            " (deselect with -m 'not slow')")


from nscluster import ganeti_cluster, ganeti_kvm_cluster  # noqa: E402,F401  (session fixtures for end-to-end tests)
