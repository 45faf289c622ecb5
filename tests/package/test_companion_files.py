"""An OVF folder's manifest and certificate: a symlink, FIFO or device in
their place is refused, never taken for a package without them."""

import os

import pytest
from hostile import basic_folder, plant_secret

from ganeti_ovf.errors import PackageError
from ganeti_ovf.package.reader import Package


@pytest.mark.parametrize("companion", ["appliance.mf", "appliance.cert"])
@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
def test_companion_that_is_not_a_regular_file_refused(tmp_path, companion, kind):
    scene = plant_secret(str(tmp_path))
    ovf = basic_folder(scene)
    path = os.path.join(os.path.dirname(ovf), companion)
    real = path + ".real"
    if os.path.exists(path):
        os.rename(path, real)
    else:
        with open(real, "w") as handle:
            handle.write("x")
    if kind == "symlink":
        os.symlink(real, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
    package = Package.open(ovf, staging_dir=str(tmp_path / "staging"))
    getter = package.manifest if companion.endswith(".mf") else package.certificate_bytes
    with pytest.raises(PackageError) as err:
        getter()
    assert companion in str(err.value)
    assert "refused, only a regular file is read" in str(err.value) \
        or "symbolic link" in str(err.value)
