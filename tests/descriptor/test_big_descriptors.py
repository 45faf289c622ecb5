"""Large descriptors (tests/support/bigdescriptor.py): each shape is read
correctly up to the reader's limits and refused, naming the limit, beyond.

Speed is measured by `make bench` (bench/descriptors.py), never here; what is
checked here is that the reader looks at each element a bounded number of
times, whatever the shape (a search of the whole tree per virtual system
made 20,000 systems take minutes).
"""

import bigdescriptor as big
import pytest
from lxml import etree

from test_descriptor_reader import parse, refused

from ganeti_ovf.descriptor import ganeti_section, reader, xmlsafe, xmltree

# Calls of xmltree.kind per element of the tree: each lookup helper asks it
# once per element it passes; the reader walks each part of the tree a few
# times (about 10 at most today), never once per virtual system or item.
KIND_CALLS_PER_ELEMENT = 16


# ------------------------------------------------------------- at the limits


def test_ganeti_parameters_up_to_the_limit():
    count = big.largest("ganeti-params")
    settings = parse(big.ganeti_params(count, pad=10)).systems[0].ganeti
    for params, first in ((settings.hypervisor_params, 0), (settings.os_params, 1),
                          (settings.backend_params, 2)):
        assert len(params) == ganeti_section.MAX_PARAMETERS
        assert params[0] == ("p%d" % first, "v%d" % first + "x" * 10)
        assert params[-1][0] == "p%d" % (count - 3 + first)


def test_ganeti_parameters_beyond_the_limit():
    refused(big.ganeti_params(big.largest("ganeti-params") + 1),
            "Ganeti section Hypervisor: more than %d parameters" % ganeti_section.MAX_PARAMETERS)


def test_virtual_systems_up_to_the_limit():
    systems = parse(big.systems(reader.MAX_SYSTEMS)).systems
    assert [s.system_id for s in systems] == ["vm%d" % i for i in range(reader.MAX_SYSTEMS)]
    assert [s.vcpus for s in systems] == [big.vcpus(i) for i in range(reader.MAX_SYSTEMS)]


def test_virtual_systems_beyond_the_limit():
    refused(big.systems(reader.MAX_SYSTEMS + 1), "more than %d VirtualSystems"
            % reader.MAX_SYSTEMS)


def test_profiles_up_to_the_limit():
    data = big.profiles(reader.MAX_PROFILES)
    appliance = parse(data)
    assert [p.profile_id for p in appliance.profiles] == \
        ["c%d" % i for i in range(reader.MAX_PROFILES)]
    assert appliance.profile == "c0"
    assert appliance.systems[0].vcpus == big.vcpus(0)
    last = "c%d" % (reader.MAX_PROFILES - 1)
    system = parse(data, profile=last).systems[0]
    # The memory item lists every profile; each profile has its own CPU item.
    assert (system.vcpus, system.memory_mib) == (big.vcpus(reader.MAX_PROFILES - 1), 512)


def test_profiles_beyond_the_limit():
    refused(big.profiles(reader.MAX_PROFILES + 1),
            "more than %d deployment profiles (Configuration)" % reader.MAX_PROFILES)


def test_attributes_up_to_the_limit():
    data = big.attributes(xmlsafe.MAX_ATTRIBUTES, pad=20)
    assert parse(data).systems[0].memory_mib == 512
    info = etree.fromstring(data).find(".//{%s}Info" % big.OVF1)
    assert len(info.attrib) == xmlsafe.MAX_ATTRIBUTES


def test_attributes_beyond_the_limit():
    # Refused before libxml2 parses the tag: it compares every attribute
    # with every earlier one (80,000 took minutes).
    refused(big.attributes(80_000), "line 2: element 'Info' has more than %d attributes"
            % xmlsafe.MAX_ATTRIBUTES)


@pytest.mark.parametrize("attribute", ["a%d='v'", "xmlns:n%d='urn:n'", "b%d = \"v\""])
def test_attribute_limit_counts_every_form(attribute):
    attrs = " ".join(attribute % i for i in range(xmlsafe.MAX_ATTRIBUTES + 1))
    data = big.attributes(0).replace(b"<Info>", b"<Info\n %s>" % attrs.encode())
    refused(data, "element 'Info' has more than %d attributes (namespace declarations"
            " included)" % xmlsafe.MAX_ATTRIBUTES)


def test_attribute_limit_ignores_text_that_looks_like_attributes():
    text = ' k="v"' * (4 * xmlsafe.MAX_ATTRIBUTES)
    data = big.attributes(0).replace(b"<Info>a VM", b"<Info>" + text.encode())
    assert parse(data).systems[0].vcpus == 1


def test_many_items():
    count = 3000
    system_warnings = parse(big.items(count)).warnings
    # Serial ports are one warning together; each unknown item one warning.
    assert "not imported: %d serial ports" % (count // 3) in system_warnings[-1]
    unknown = [w for w in system_warnings if "of unsupported ResourceType 1 skipped" in w]
    assert len(unknown) == count // 3
    assert "Item x2 of unsupported ResourceType 1" in unknown[0]


def test_files_and_disks_up_to_the_limit():
    appliance = parse(big.disks(reader.MAX_FILES))
    assert len(appliance.files) == reader.MAX_FILES
    assert appliance.files[7].href == "disk7.vmdk"
    (disk,) = appliance.systems[0].disks
    assert (disk.disk_id, disk.capacity, disk.file.file_id) == ("d0", 1, "f0")
    unused = [w for w in appliance.warnings if "is used by no hardware item" in w]
    assert len(unused) == reader.MAX_FILES - 1


def test_files_beyond_the_limit():
    refused(big.disks(reader.MAX_FILES + 1),
            "more than %d References/File entries" % reader.MAX_FILES)


def test_blank_disks_beyond_the_limit():
    blank = "".join('<Disk ovf:diskId="b%d" ovf:capacity="1"/>' % i
                    for i in range(reader.MAX_FILES + 1))
    data = big.disks(1).replace(b"</DiskSection>", blank.encode() + b"</DiskSection>")
    refused(data, "more than %d DiskSection/Disk entries" % reader.MAX_FILES)


def test_deep_nesting_many_times():
    appliance = parse(big.nesting(2000, pad=3))
    assert (appliance.systems[0].vcpus, appliance.warnings) == (1, ())


def test_namespaces_up_to_the_limit():
    data = big.namespaces(big.largest("namespaces"))
    assert parse(data).systems[0].memory_mib == 512
    assert data.count(b"xmlns") == xmlsafe.MAX_NAMESPACE_DECLARATIONS


def test_namespaces_beyond_the_limit():
    refused(big.namespaces(big.largest("namespaces") + 1),
            "more than %d namespace declarations" % xmlsafe.MAX_NAMESPACE_DECLARATIONS)


# ------------------------------------------------------------- linearity


@pytest.mark.parametrize("shape", sorted(big.SHAPES))
def test_each_element_is_looked_at_a_bounded_number_of_times(shape, monkeypatch):
    data = big.SHAPES[shape](min(big.largest(shape), 2000))
    elements = sum(1 for _ in etree.fromstring(data).iter())
    calls = []
    kind = xmltree.kind

    def counting(element):
        calls.append(None)
        return kind(element)

    monkeypatch.setattr(xmltree, "kind", counting)
    parse(data)
    assert len(calls) <= KIND_CALLS_PER_ELEMENT * elements, (len(calls), elements)
