"""Stage 1, the package: the files of an OVF folder or an OVA tar, and back.

Owns how a package's members are found and read in place (reader.py: the
folder or the OVA, tarreader.py: the tar format, bounded and never
extracted), what the manifest says of them (manifest.py), who signed the
manifest (signature.py), and, for export, writing members into an OVA
(ova_writer.py).  Members are handed on as `model.Member` byte ranges.

May import: ganeti_ovf.errors, ganeti_ovf.model and modules of this stage.
Never the later stages or the pipeline modules (importer, exporter, ...).
"""
