"""Packaging metadata for ganeti-ovf (the Makefile's `install` is the primary path)."""

from setuptools import setup

setup(
    name="ganeti-ovf",
    version="0.1.0",
    description="Convert between OVF/OVA packages and Ganeti instance exports",
    license="BSD-2-Clause",
    packages=["ganeti_ovf", "ganeti_ovf.package", "ganeti_ovf.descriptor",
              "ganeti_ovf.disks", "ganeti_ovf.cluster"],
    scripts=["scripts/gnt-ovf"],
    data_files=[("share/man/man8", ["man/gnt-ovf.8"])],
    python_requires=">=3.9",
)
