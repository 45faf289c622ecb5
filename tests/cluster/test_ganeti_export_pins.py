"""Pins of ganeti_export.py's reading and writing rules that a mutation run
found untested: the config.ini size cap and Ganeti's disk and NIC counts
(from both sides), control characters, unset values, whole numbers, the
backend parameters an old export keeps in [instance], and each message.
"""

import os

import pytest
from ganeti import constants

from ganeti_ovf.cluster import ganeti_export
from ganeti_ovf.cluster.ganeti_export import ExportedDisk, build_config, read_export
from ganeti_ovf.errors import ConfigError
from ganeti_ovf.model import GanetiSettings, Nic, VirtualSystem

HEAD = "[export]\nversion = 0\nos = noop\n[instance]\nname = vm\n"


def config(tmp_path, text: str) -> str:
    path = tmp_path / "config.ini"
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def read(tmp_path, text: str):
    return read_export(config(tmp_path, text))


def refusal(tmp_path, text: str) -> str:
    path = config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_export(path)
    message = str(info.value)
    assert message.startswith(path + ": ") and "\n" not in message
    return message[len(path) + 2:]


def disks(count: int, counted: bool = True) -> str:
    lines = ["disk%d_size = %d\n" % (index, index + 1) for index in range(count)]
    return "".join(lines) + ("disk_count = %d\n" % count if counted else "")


# ------------------------------------------------------------------ size and counts


def test_config_size_cap(tmp_path):
    assert ganeti_export._MAX_CONFIG_SIZE == 1 << 20
    text = HEAD + disks(1)
    padded = text + "#" * ((1 << 20) - len(text) - 1) + "\n"
    assert len(padded) == 1 << 20
    assert read(tmp_path, padded).system.name == "vm"
    assert refusal(tmp_path, padded + "\n") == "larger than 1048576 bytes"


def test_disk_count_bound(tmp_path):
    assert constants.MAX_DISKS == 16
    export = read(tmp_path, HEAD + disks(16))
    assert [d.size_mib for d in export.disks] == list(range(1, 17))
    assert refusal(tmp_path, HEAD + disks(17)) == "disk_count 17 is more than Ganeti allows (16)"


def test_disks_counted_without_disk_count(tmp_path):
    export = read(tmp_path, HEAD + disks(3, counted=False))
    assert [d.size_mib for d in export.disks] == [1, 2, 3]
    assert len(read(tmp_path, HEAD + disks(16, counted=False)).disks) == 16
    assert refusal(tmp_path, HEAD + disks(17, counted=False)) == \
        "disk_count 17 is more than Ganeti allows (16)"
    assert read(tmp_path, HEAD).disks == ()


def test_disk_without_size_or_dump_refused(tmp_path):
    assert refusal(tmp_path, HEAD + "disk_count = 1\n") == \
        "disk0 has neither a size nor a dump file"
    export = read(tmp_path, HEAD + "disk_count = 1\ndisk0_size = 0\ndisk0_dump = d.raw\n")
    assert export.disks == (ExportedDisk("d.raw", 0, None),)


def test_nic_count_bound(tmp_path):
    nics = "".join("nic%d_mac = aa:00:00:00:00:%02x\n" % (i, i) for i in range(9))
    export = read(tmp_path, HEAD + nics)
    assert len(export.system.nics) == constants.MAX_NICS == 8
    assert export.system.nics[7].mac == "aa:00:00:00:00:07"
    gap = "nic0_mac = auto\nnic2_mac = aa:00:00:00:00:02\n"
    export = read(tmp_path, HEAD + gap)
    assert export.system.nics == (Nic(),)  # Ganeti stops at the first missing MAC


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("value", ["a\x1fb", "a\x7fb", "a\tb"])
def test_control_characters_in_values_refused(tmp_path, value):
    assert refusal(tmp_path, HEAD + "tags = %s\n" % value) == \
        "[instance] tags holds control characters"


@pytest.mark.parametrize("value", ["a b", "a~b", "\u00e9\u00e8"])
def test_printable_values_read(tmp_path, value):
    assert read(tmp_path, HEAD + "disk_template = %s\n" % value).system.ganeti.disk_template \
        == value


@pytest.mark.parametrize("field", ["a\x1fb", "a\x7fb", "a\nb"])
def test_control_characters_never_written(field):
    system = VirtualSystem(system_id="vm", name="vm", ganeti=GanetiSettings(tags=(field,)))
    with pytest.raises(ConfigError, match=r"\[instance\] tags: control characters are not"
                                          r" allowed in config.ini"):
        build_config(system, [], "node", 1)


@pytest.mark.parametrize("value", ["a b", "a~b", "\u00e9"])
def test_printable_values_written(value):
    system = VirtualSystem(system_id="vm", name="vm", ganeti=GanetiSettings(tags=(value,)))
    assert "tags = %s\n" % value in build_config(system, [], "node", 1)


@pytest.mark.parametrize("value", ["", "none", "None"])
def test_unset_values(tmp_path, value):
    export = read(tmp_path, "[export]\nversion = 0\nos = %s\n[instance]\nname = vm\n" % value)
    assert export.system.ganeti.os_name is None


def test_percent_must_be_doubled(tmp_path):
    assert refusal(tmp_path, HEAD + "tags = 100%\n") == "[instance] tags: a % must be written %%"
    assert read(tmp_path, HEAD + "tags = 100%%\n").system.ganeti.tags == ("100%",)


@pytest.mark.parametrize("value", ["12x", "-1", "\u0661\u0662", "1.5"])
def test_whole_numbers_only(tmp_path, value):
    assert refusal(tmp_path, HEAD + "disk_count = %s\n" % value) == \
        "[instance] disk_count = %r is not a whole number" % value


@pytest.mark.parametrize("section", ["export", "instance"])
def test_sections_required(tmp_path, section):
    text = HEAD.replace("[%s]" % section, "[other]")
    assert refusal(tmp_path, text) == "no [%s] section: not a Ganeti export" % section


def test_parse_error_reported_on_one_line(tmp_path):
    path = config(tmp_path, HEAD + "garbage line\n")
    with pytest.raises(ConfigError) as info:
        read_export(path)
    assert str(info.value) == ("%s: not a Ganeti export configuration: Source contains"
                               " parsing errors: %r" % (path, path))


def test_not_utf8_refused(tmp_path):
    path = tmp_path / "config.ini"
    path.write_bytes(HEAD.encode() + b"tags = \xff\n")
    with pytest.raises(ConfigError, match="not a Ganeti export configuration: 'utf-8' codec"):
        read_export(str(path))


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_export(str(tmp_path))
    assert str(info.value) == ("%s: not a regular file (a FIFO, socket or device is"
                               " refused)" % tmp_path)
    with pytest.raises(ConfigError) as info:
        read_export(str(tmp_path / "missing.ini"))
    assert str(info.value) == "%s: cannot read: No such file or directory" % (
        tmp_path / "missing.ini")


def test_config_symlink_refused_not_followed(tmp_path):
    secret = config(tmp_path, HEAD)
    os.symlink(secret, str(tmp_path / "link.ini"))
    with pytest.raises(ConfigError) as info:
        read_export(str(tmp_path / "link.ini"))
    assert str(info.value) == ("%s: cannot read: Too many levels of symbolic links (a"
                               " symbolic link is refused)" % (tmp_path / "link.ini"))


def test_config_fifo_refused_without_blocking(tmp_path):
    # Opening a FIFO for reading waits for a writer: O_NONBLOCK, then fstat.
    os.mkfifo(str(tmp_path / "config.ini"))
    directory = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ConfigError, match="config.ini: not a regular file"):
            read_export(str(tmp_path / "config.ini"), dir_fd=directory)
    finally:
        os.close(directory)


def test_config_read_from_the_directory_descriptor(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config(tmp_path / "a", HEAD)
    (tmp_path / "b" / "config.ini").write_text("not a config")
    directory = os.open(str(tmp_path / "a"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        # The path names b's file; the descriptor's directory is the one read.
        export = read_export(str(tmp_path / "b" / "config.ini"), dir_fd=directory)
    finally:
        os.close(directory)
    assert export.system.name == "vm"


# ------------------------------------------------------------------ backend parameters


def test_instance_section_values_fill_the_backend(tmp_path):
    system = read(tmp_path, HEAD + "vcpus = 2\nmaxmem = 300\n").system
    assert (system.vcpus, system.memory_mib) == (2, 300)
    system = read(tmp_path, HEAD + "vcpus = 2\nmaxmem = 300\n"
                  "[backend]\nvcpus = 4\nmaxmem = 600\n").system
    assert (system.vcpus, system.memory_mib) == (4, 600)


def test_old_instance_memory(tmp_path):
    assert read(tmp_path, HEAD + "memory = 512\n").system.memory_mib == 512
    system = read(tmp_path, HEAD + "memory = 512\n[backend]\nmaxmem = 1024\n").system
    assert system.memory_mib == 1024
    system = read(tmp_path, HEAD + "memory = 512\nmaxmem = 768\n").system
    assert system.memory_mib == 768


@pytest.mark.parametrize("value, expected", [("auto", None), ("none", None), ("3", 3)])
def test_backend_numbers(tmp_path, value, expected):
    assert read(tmp_path, HEAD + "[backend]\nvcpus = %s\n" % value).system.vcpus == expected


@pytest.mark.parametrize("value", ["3x", "\u0663"])
def test_backend_whole_numbers_only(tmp_path, value):
    assert refusal(tmp_path, HEAD + "[backend]\nvcpus = %s\n" % value) == \
        "[backend] vcpus = %r is not a whole number" % value


# ------------------------------------------------------------------ finding the file


def test_export_directory_without_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        ganeti_export.find_config(str(tmp_path), "/nonexistent")
    assert str(info.value) == ("%s: no such Ganeti export (not a config.ini or an export"
                               " directory holding one)" % tmp_path)
    with pytest.raises(ConfigError, match="inst: no export of instance inst in "):
        ganeti_export.find_config("inst", str(tmp_path))
    (tmp_path / "inst" / "config.ini").mkdir(parents=True)
    with pytest.raises(ConfigError, match="config.ini: not a regular file"):
        ganeti_export.find_config("inst", str(tmp_path))


def test_dump_path_names_a_file_of_the_export_directory(tmp_path):
    export = read(tmp_path, HEAD + "disk_count = 1\ndisk0_size = 1\ndisk0_dump = d.raw\n")
    assert ganeti_export.dump_path(export, export.disks[0]) == str(tmp_path / "d.raw")
    blank = ExportedDisk(None, 1)
    with pytest.raises(ConfigError, match="a disk has no dump file"):
        ganeti_export.dump_path(export, blank)


@pytest.mark.parametrize("value, expected", [("auto", None), ("Generate", None),
                                             ("aa:00:00:00:00:01", "aa:00:00:00:00:01")])
def test_nic_mac_generated_or_kept(tmp_path, value, expected):
    assert read(tmp_path, HEAD + "nic0_mac = %s\n" % value).system.nics[0].mac == expected


def test_under_export_dir(tmp_path):
    export_dir = tmp_path / "export"
    (export_dir / "inst").mkdir(parents=True)
    os.symlink(str(tmp_path), str(export_dir / "escape"))
    assert ganeti_export.under_export_dir(str(export_dir / "inst"), str(export_dir))
    assert ganeti_export.under_export_dir(str(export_dir), str(export_dir))
    assert not ganeti_export.under_export_dir(str(tmp_path / "other"), str(export_dir))
    assert not ganeti_export.under_export_dir(str(export_dir / "escape" / "x"),
                                              str(export_dir))
