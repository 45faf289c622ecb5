"""Stage 2, the descriptor: OVF XML to the neutral model, and back.

Pure: bytes in, frozen `model` dataclasses out (reader.py), and the reverse
(writer.py); no files, no subprocesses, no options.  Owns the hardened XML
parser (xmlsafe.py), namespace-tolerant tree access (xmltree.py), every
OVF-version difference in one table (versions.py), the virtual hardware
Items (hardware.py), DMTF allocation units (units.py), CIM OS ids
(osids.py) and the Ganeti section of Ganeti's own packages
(ganeti_section.py, writer_gnt.py).

May import: ganeti_ovf.errors, ganeti_ovf.model and modules of this stage.
"""
