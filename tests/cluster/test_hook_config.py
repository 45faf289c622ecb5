"""The export hook's configuration and decisions (ganeti_ovf/cluster/hook_config.py):
when the hook acts, and what /etc/ganeti/ovf-export.conf may say."""

import pytest
from test_hook import EXPORT_ENV, THIS

from ganeti_ovf.cluster import hook_config
from ganeti_ovf.cluster.hook_config import HookConfig, HookError, HookEvent


def event(**changes):
    env = dict(EXPORT_ENV)
    env.update(changes)
    return HookEvent.from_env(env)


def test_acts_on_the_export_node_after_an_export():
    assert hook_config.skip_reason(event(), THIS) is None
    assert hook_config.skip_reason(event(), "node1") is None  # short host name


def test_disabled_and_tag_filter():
    assert hook_config.config_skip_reason(event(), HookConfig()) == "the hook is not enabled"
    enabled = HookConfig(enabled=True)
    assert hook_config.config_skip_reason(event(), enabled) is None
    tagged = HookConfig(enabled=True, tags=("ovf-export", "other"))
    assert hook_config.config_skip_reason(event(), tagged) is None
    assert "none of the tags" in hook_config.config_skip_reason(
        event(GANETI_INSTANCE_TAGS="web"), tagged)
    assert hook_config.config_skip_reason(event(GANETI_INSTANCE_TAGS=""), tagged) is not None


def test_missing_config_means_disabled(tmp_path):
    assert hook_config.load_config(str(tmp_path / "absent")) == HookConfig()


def test_config_parsed():
    config = hook_config.parse_config(
        "[ovf-export]\nenabled = yes\ntags = a, b c\nformat = qcow2\nova = no\n"
        "compress = yes\ncompress_level = 6\nexternal = on\nmanifest = none\n"
        "ovf_version = 2.0\noutput_dir = /srv/ovf\nspool_dir = /var/lib/ganeti/spool\nkeep = 3\n",
        "test.conf", "/var/lib/ganeti/export")
    assert config == HookConfig(
        enabled=True, tags=("a", "b", "c"), disk_format="qcow2", ova=False,
        compress=True, compress_level=6, external=True, manifest_algorithm=None,
        ovf_version="2.0", output_dir="/srv/ovf", spool_dir="/var/lib/ganeti/spool", keep=3)
    assert HookConfig().compress_level == 1  # as export --compress-level


@pytest.mark.parametrize("text, message", [
    ("output_dir = /var/lib/ganeti/export/ovf", "output_dir = /var/lib/ganeti/export/ovf is"
     " inside Ganeti's export directory"),
    ("output_dir = /var/lib/ganeti/export", "inside Ganeti's export directory"),
    ("spool_dir = /var/lib/ganeti/export/x", "spool_dir = /var/lib/ganeti/export/x is inside"),
    ("output_dir = relative", "output_dir = 'relative' is not an absolute path"),
    ("ova = maybe", "ova = 'maybe' is not yes or no"),
    ("format = vdi", "format = 'vdi' is not one of"),
    ("manifest = md5", "manifest = 'md5' is not one of"),
    ("keep = -1", "keep = '-1' is not a number"),
    ("keep = many", "keep = 'many' is not a number"),
    ("colour = blue", "unknown key colour"),
    ("compress_level = 10", "compress_level = '10' is not a level from 0 to 9"),
    ("compress_level = fast", "compress_level = 'fast' is not a level"),
], ids=["output-in-export", "output-is-export", "spool-in-export", "relative", "bool",
        "format", "manifest", "keep-negative", "keep-text", "unknown", "level", "level-text"])
def test_bad_config_refused(text, message):
    with pytest.raises(HookError) as err:
        hook_config.parse_config("[ovf-export]\nenabled = yes\n" + text + "\n", "test.conf",
                                 "/var/lib/ganeti/export")
    assert str(err.value).startswith("test.conf: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_config_without_section_refused():
    with pytest.raises(HookError, match=r"no \[ovf-export\] section"):
        hook_config.parse_config("[other]\n", "test.conf")
