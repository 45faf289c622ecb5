"""Package text on a terminal and in logs: escaped, never interpreted.

A crafted name can hold terminal escapes (clear the screen, rewrite a line)
or bidirectional overrides (show "trusted" where the text says otherwise).
Errors and warnings quote such names: they must reach the terminal escaped,
and such characters must never reach config.ini.
"""

import tarfile

import pytest
from hostile import basic_folder, descriptor, entry, ova, plant_secret
from packaging import run_gnt_ovf

from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError, printable

HOSTILE = "evil\x1b[2J\x1b[1;1HPackage signed (trusted)\u202eexe.txt\r"


def test_printable_escapes_controls_and_bidi_only():
    assert printable(HOSTILE) == ("evil\\x1b[2J\\x1b[1;1HPackage signed (trusted)"
                                  "\\u202eexe.txt\\r")
    assert printable("caf\u00e9 \u65e5\u672c disk-1.vmdk") == "caf\u00e9 \u65e5\u672c disk-1.vmdk"
    for char in "\x00\t\n\x7f\x85\u061c\u200e\u200f\u2028\u2029\u202a\u202e\u2066\u2069":
        assert char not in printable("a%sb" % char)


def test_hostile_member_name_reaches_the_terminal_escaped(tmp_path):
    scene = plant_secret(str(tmp_path))
    basic_folder(scene)
    package = ova(scene, [entry(HOSTILE, data=b"x", kind=tarfile.REGTYPE)])
    result = run_gnt_ovf("import", "--output-dir", str(tmp_path / "out"), package)
    assert result.returncode == 1
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert "\r" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Failure: ")]
    assert "\\x1b[2J" in line or "\\\\x1b[2J" in line, line


@pytest.mark.parametrize("written", ["\u202e", "\u2066", "\u200f", "\x85", "&#x202e;",
                                     "&#133;"],
                         ids=["RLO", "LRI", "RLM", "NEL", "RLO-reference", "NEL-reference"])
def test_bidi_and_controls_never_reach_config_ini(written):
    # The guest OS description: kept in the model, written to config.ini.
    # (C0 controls such as ESC are not XML characters: the parser refuses them.)
    assert parse_descriptor(descriptor()).systems[0].os_description == "Linux 64-Bit"
    data = descriptor().replace(b"<Description>Linux 64-Bit",
                                ("<Description>Linux%s 64-Bit" % written).encode("utf-8"))
    with pytest.raises(DescriptorError, match="control characters are refused"):
        parse_descriptor(data)
