"""Stage 3, the disks: image inspection, conversion, and the VMDK code.

Owns everything about disk image bytes: recognising a format from its
headers with checks declared as data (formats.py), the only place that runs
qemu-img (qemu.py), the import of one package disk into a sparse raw file
(convert.py), the project's streamOptimized VMDK reader and writer
(vmdkread.py, vmdkstream.py: measured faster than qemu-img, see README) and
the deflate back-ends they use (deflate.py; ISA-L's binding in isal.py).

May import: ganeti_ovf.errors, ganeti_ovf.model and modules of this stage.
Never the package, descriptor or cluster stages, nor the pipeline modules.
"""
