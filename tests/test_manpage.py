"""Tests of man/gnt-ovf.8: it renders cleanly and documents the interface.

The interface is read from the code, not listed here: every command of
ganeti_ovf.cli.commands and every option string of its option list must be
documented in that command's subsection, and every key of real `info
--output=json` documents must appear in the INFO JSON SCHEMA section.  So
adding an option or a JSON key without documenting it fails here.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, Iterator, List

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ganeti_ovf import cli
from ganeti_ovf.cluster import guest_params
from ganeti_ovf.package.signature import sign_manifest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANPAGE = os.path.join(ROOT, "man", "gnt-ovf.8")
CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "corpus")
PYTHON = "/usr/bin/python3"

# Characters man/groff may print for a hyphen or minus in UTF-8 output.
_HYPHENS = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2212\u00ad"), "-")
_OVERSTRIKE = re.compile(r".\x08")


def _render_env() -> Dict[str, str]:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MANPAGER="cat", PAGER="cat")
    # Formatting kept for a pipe would put overstrike sequences in the text.
    env.pop("MAN_KEEP_FORMATTING", None)
    return env


@pytest.fixture(scope="module")
def rendered() -> subprocess.CompletedProcess:
    return subprocess.run(["man", "-l", MANPAGE], capture_output=True, text=True,
                          env=_render_env(), check=False)


def normalise(text: str) -> str:
    """Rendered text with plain hyphens, no overstrike, hyphen breaks joined."""
    text = _OVERSTRIKE.sub("", text).translate(_HYPHENS)
    # A line broken after a hyphen ("--keep-" / "host-params") is one word.
    return re.sub(r"-\n[ \t]+", "-", text)


@pytest.fixture(scope="module")
def text(rendered) -> str:
    return normalise(rendered.stdout)


def sections(text: str) -> Dict[str, str]:
    """Top-level sections (unindented headings) and subsections (indented
    by three spaces) of the rendered page, by heading."""
    found: Dict[str, List[str]] = {}
    current: List[str] = []
    for line in text.splitlines():
        match = re.fullmatch(r"( {0}| {3})([A-Z][A-Z0-9 .]*[A-Z0-9])", line)
        if match:
            current = found.setdefault(match.group(2), [])
        current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def mentions(text: str, word: str) -> bool:
    """Whether `word` occurs as a whole token (not inside a longer option)."""
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(word), text) is not None


def option_strings() -> Iterator[tuple]:
    for command, entry in sorted(cli.commands.items()):
        for option in entry[2]:
            for string in option._short_opts + option._long_opts:
                yield command, string


# ------------------------------------------------------------------ rendering


def test_man_renders_without_warnings(rendered):
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stderr == ""
    assert "gnt-ovf" in normalise(rendered.stdout)


def test_groff_reports_no_warnings():
    result = subprocess.run(["groff", "-man", "-ww", "-z", MANPAGE], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    assert result.stderr == ""


def test_rendered_lines_fit_the_width(text):
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert too_long == []


def test_standard_sections_exist(text):
    found = sections(text)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "INFO JSON SCHEMA",
                 "CONFIG.INI", "SECURITY", "HOOK", "EXIT STATUS", "FILES", "EXAMPLES",
                 "SEE ALSO"):
        assert name in found, name


def test_see_also_names_related_pages(text):
    see_also = sections(text)["SEE ALSO"]
    for page in ("gnt-backup(8)", "gnt-instance(8)", "qemu-img(1)"):
        assert page in see_also


def test_exit_status_matches_the_command_layer(text):
    status = sections(text)["EXIT STATUS"]
    assert cli.EXIT_FAILURE == 1
    assert mentions(status, "0") and mentions(status, "1")


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_a_subsection(text, command):
    subsection = sections(text).get(command.upper())
    assert subsection is not None, "no %s subsection" % command.upper()
    assert mentions(subsection, command)


@pytest.mark.parametrize("command,option", list(option_strings()))
def test_every_option_is_documented_under_its_command(text, command, option):
    subsection = sections(text).get(command.upper(), "")
    assert mentions(subsection, option), \
        "%s %s is not documented in the %s subsection" % (command, option, command.upper())


def test_option_matching_is_strict():
    # The checks above must not accept an option hidden in a longer one.
    assert not mentions("--force", "-f")
    assert not mentions("--network", "--net")
    assert not mentions("--output-dir", "--output")
    assert mentions("[-f] [--output=json]", "-f")
    assert mentions("[-f] [--output=json]", "--output")


# ------------------------------------------------------------------ info JSON


def _info_json(package: str, *options: str) -> dict:
    result = subprocess.run([PYTHON, "-m", "ganeti_ovf", "info", "--output=json",
                             *options, package], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _keys(value) -> Iterator[str]:
    """Every object key of a JSON document, at any depth (not inside free-form
    parameter maps, whose keys come from the package)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            if key not in ("hypervisor_params", "os_params", "backend_params"):
                yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def _self_signed(directory: str) -> tuple:
    """A key and a self-signed CA certificate that may sign (PEM paths)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gnt-ovf manual test")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _signed_package(directory: str, cert_text: bytes = b"") -> str:
    """COT's VirtualBox descriptor and manifest with a .cert beside them
    (signed with a fresh key unless `cert_text` is given)."""
    os.makedirs(directory)
    for name in ("ubuntu.2.0.ovf", "ubuntu.2.0.mf"):
        shutil.copy(os.path.join(CORPUS, "cot", name), directory)
    if not cert_text:
        with open(os.path.join(directory, "ubuntu.2.0.mf"), "rb") as handle:
            manifest = handle.read()
        cert_text = sign_manifest("ubuntu.2.0.mf", manifest,
                                  *_self_signed(directory))
    with open(os.path.join(directory, "ubuntu.2.0.cert"), "wb") as handle:
        handle.write(cert_text)
    return os.path.join(directory, "ubuntu.2.0.ovf")


@pytest.fixture(scope="module")
def info_documents(tmp_path_factory) -> List[dict]:
    if not os.path.isdir(CORPUS):
        pytest.skip("the shared corpus is absent")
    work = str(tmp_path_factory.mktemp("signed"))
    signed = _signed_package(os.path.join(work, "good"))
    forged = _signed_package(os.path.join(work, "bad"), b"SHA256(ubuntu.2.0.mf)= 00\n")
    documents = [
        _info_json(os.path.join(CORPUS, "cot", "input.ovf")),
        _info_json(os.path.join(CORPUS, "cot", "input.ovf"), "--verify"),
        _info_json(os.path.join(CORPUS, "ganeti", "ganeti.ovf")),
        _info_json(signed, "--trust-store", os.path.join(work, "good", "cert.pem")),
        _info_json(forged),
    ]
    # The signed packages must really exercise the signature keys.
    assert documents[3]["signature"]["valid"] and documents[3]["signature"]["trusted"]
    assert documents[4]["signature"]["valid"] is False
    return documents


def test_info_documents_have_schema_version_1(info_documents):
    for document in info_documents:
        assert document["schema_version"] == 1


def test_every_top_level_info_key_is_in_the_page(text, info_documents):
    schema = sections(text)["INFO JSON SCHEMA"]
    for key in info_documents[0]:
        assert mentions(text, key), key
        assert mentions(schema, key), "%s is not in INFO JSON SCHEMA" % key


def test_every_nested_info_key_is_in_the_schema_section(text, info_documents):
    schema = sections(text)["INFO JSON SCHEMA"]
    keys = {key for document in info_documents for key in _keys(document)}
    missing = sorted(key for key in keys if not mentions(schema, key))
    assert missing == []


def test_security_section_names_the_relaxing_options(text):
    security = sections(text)["SECURITY"]
    for option in ("--keep-host-params", "--force", "--require-manifest", "--verify"):
        assert mentions(security, option), option
    for subject in ("never extracted", "DTD", "SHA256", "backing", "-f"):
        assert subject in security, subject


def test_security_lists_each_hypervisors_allow_list(text):
    # "for kvm acpi, ... and root_path;": the table, hypervisor by hypervisor.
    security = " ".join(sections(text)["SECURITY"].split())
    for hypervisor, table in guest_params.GUEST_VISIBLE.items():
        match = re.search(r"for %s ([^;.]*)" % re.escape(hypervisor), security)
        assert match, hypervisor
        listed = set(re.findall(r"[a-z_]+", match.group(1))) - {"and", "none"}
        assert listed == set(table), hypervisor


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


# ------------------------------------------------------------------ man -> help


def option_entries(subsection: str) -> Dict[str, str]:
    """The option entries of a command's subsection: each option string of a
    tag line (indented 7) -> the entry's text (tag and body)."""
    entries: Dict[str, str] = {}
    tag_options: List[str] = []
    body: List[str] = []

    def close() -> None:
        for option in tag_options:
            entries[option] = " ".join(body)

    for line in subsection.splitlines():
        if re.match(r" {7}-", line):
            close()
            tag_options = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line)
            body = [line.strip()]
        elif tag_options and (line.startswith(" " * 14) or not line.strip()):
            body.append(line.strip())
        else:
            close()
            tag_options, body = [], []
    close()
    return entries


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_documented_option_exists(text, command):
    # The other direction: the manual documents no option the command lacks.
    documented = option_entries(sections(text)[command.upper()])
    real = {string for cmd, string in option_strings() if cmd == command}
    assert documented, command
    assert sorted(set(documented) - real) == []


def _simple_default(option):
    if isinstance(option.default, bool) or option.default in (None, "", [], {}):
        return None
    if isinstance(option.default, (str, int)):
        return str(option.default)
    return None


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_documented_defaults_match_the_code(text, command):
    entries = option_entries(sections(text)[command.upper()])
    checked = 0
    for option in cli.commands[command][2]:
        default = _simple_default(option)
        long_opt = option._long_opts[0] if option._long_opts else None
        if default is None or long_opt not in entries:
            continue
        entry = entries[long_opt]
        assert re.search(r"Default: %s\b" % re.escape(default), entry), (long_opt, entry)
        # The --help text states the same default, where it states one.
        match = re.search(r"\(default: ([^;)]*)", option.help or "")
        if match:
            assert match.group(1).split()[0].rstrip(",.") == default, (long_opt, option.help)
        checked += 1
    assert checked or command in ("info", "status", "import")


def test_shutdown_timeout_is_seconds_everywhere(text):
    option = [o for o in cli.export_opts if "--shutdown-timeout" in o._long_opts][0]
    entry = option_entries(sections(text)["EXPORT"])["--shutdown-timeout"]
    assert "seconds" in option.help and "minutes" not in option.help
    assert "seconds" in entry and "minutes" not in entry


def test_export_name_help_describes_the_export_default():
    option = [o for o in cli.export_opts if "--name" in o._long_opts][0]
    assert "(default: the instance name in config.ini)" in option.help


def test_version_names_the_tool_and_ganeti():
    import ganeti_ovf
    from ganeti import constants

    result = subprocess.run([PYTHON, "-m", "ganeti_ovf", "--version"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "gnt-ovf %s (Ganeti %s)\n" % (ganeti_ovf.__version__,
                                                         constants.RELEASE_VERSION)
