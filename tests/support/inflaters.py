"""How gzip is inflated in a test: disks/gzipstream.py's tool table with
the programs not chosen pointed at missing paths, as on a machine without
them (no tool at all: zlib)."""

from ganeti_ovf.disks import gzipstream

# The ways gunzip() takes on a foreign stream: its answer, and the tools left.
PATHS = {"igzip": ("igzip",), "pigz": ("pigz",), "zlib": ()}


def choose_tools(monkeypatch, *names: str) -> None:
    """Leave only the tools `names` (among igzip, pigz) installed."""
    table = [(name, path if name in names else "/nonexistent/" + name, args)
             for name, path, args in gzipstream.TOOLS]
    monkeypatch.setattr(gzipstream, "TOOLS", table)
