"""Progress of long work (ganeti_ovf/progress.py), and as a terminal shows it.

On a terminal one line is redrawn in place with bytes done of the total, the
rate and the time left; elsewhere a line every few seconds, none for short
runs; nothing with --quiet.  The terminal case runs gnt-ovf on a real
pseudo-terminal.
"""

import io
import os
import pty
import subprocess
import sys

from conftest import ROOT
from packaging import MIB, build_package

from ganeti_ovf.progress import Progress


def test_terminal_line_redrawn_with_rate_and_time_left():
    stream = io.StringIO()
    line = Progress(stream, [3 * 1024 ** 3, 1024 ** 3], terminal=True)
    line.interval = 0
    line.callback(0)(50.0)
    line.callback(1)(100.0)
    line.close()
    shown = stream.getvalue()
    assert shown.startswith("\rDisks: 1.50 of 4.00 GiB (37 %), ")
    assert "\rDisks: 2.50 of 4.00 GiB (62 %), " in shown
    assert " MiB/s, ETA " in shown and shown.endswith("\n")


def test_log_lines_only_after_an_interval_and_none_without_a_stream():
    assert Progress(None, [MIB]).callback(0) is None
    stream = io.StringIO()
    line = Progress(stream, [MIB], terminal=False)
    line.callback(0)(50.0)  # a short run says nothing
    assert stream.getvalue() == ""
    line.interval = 0
    line.callback(0)(100.0)
    line.close()
    (text,) = stream.getvalue().splitlines()
    assert text.startswith("Disks: 0.00 of 0.00 GiB (100 %), ") and "\r" not in text


def run_on_a_terminal(*args):
    """gnt-ovf with standard error on a pseudo-terminal: (exit, what it showed)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ganeti_ovf", *args], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return process.wait(), shown.decode("utf-8", "replace")


def test_import_and_export_show_progress_on_a_terminal(tmp_path):
    package, _raws = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 32 * MIB),
                                                                ("raw", 8 * MIB)))
    code, shown = run_on_a_terminal("import", "--output-dir", str(tmp_path / "out"), package)
    assert code == 0, shown
    assert "\rDisks: " in shown and " of 0.04 GiB (" in shown and ", ETA " in shown
    assert "(100 %)" in shown
    code, shown = run_on_a_terminal("export", "--ova", "--output-dir", str(tmp_path / "pkg2"),
                                    str(tmp_path / "out" / "appliance.example.com"))
    assert code == 0, shown
    assert "\rDisks: " in shown and "(100 %)" in shown


def test_quiet_shows_no_progress(tmp_path):
    package, _raws = build_package(str(tmp_path / "pkg"), disks=(("vmdk", 8 * MIB),))
    code, shown = run_on_a_terminal("import", "--quiet", "--output-dir",
                                    str(tmp_path / "out"), package)
    assert code == 0, shown
    assert "Disks:" not in shown
