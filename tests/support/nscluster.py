"""A real single-node Ganeti 3.0 cluster in Linux namespaces, for end-to-end tests.

This module owns the test harness: `Cluster` (start, run commands inside,
map paths, stop) with instance helpers, and the session-scoped pytest fixture
`ganeti_cluster`.  The namespace set-up itself is `tests/support/nscluster_inner.sh`.

How it works
------------
`start()` prepares a host state directory (``/var/tmp/ganeti-ovf-cluster-*``)
and launches ``unshare --mount --uts --net --pid --fork --mount-proc
--kill-child tests/support/nscluster_inner.sh STATE``.  The inner script becomes pid 1
of the new pid namespace, bind-mounts the private directories listed in
`PRIVATE_MOUNTS`, sets the host name, puts /32 addresses on ``lo`` and waits.
`run()` executes commands through ``nsenter --target PID --mount --uts --net
--pid`` with a clean environment.  `start()` then runs ``gnt-cluster init``
(fake hypervisor, file and diskless templates, master netdev ``lo``), which
starts the daemons through daemon-util and start-stop-daemon.

Path mapping: every directory Ganeti writes to is a host directory seen
through a bind mount, so `host_path()` turns a path inside the cluster into
the host path of the same file, e.g. ``cluster.host_path(
"/var/lib/ganeti/export/x")`` -> ``STATE/var-lib-ganeti/export/x``, and
`inner_path()` does the reverse.

Teardown: `stop()` SIGKILLs the namespace's pid 1; the kernel then kills
every process of the pid namespace (all Ganeti daemons) before that pid 1 is
reaped, and the mount namespace and its mounts vanish with the last process.
The state directory is removed afterwards.  If the test process dies without
calling `stop()`, ``unshare`` gets SIGKILL (parent-death signal) and
``--kill-child`` passes it on to the namespace's pid 1; the next `start()`
deletes state directories whose owner process is gone.

Departures from the recipe and why
----------------------------------
* ``/run`` and ``/srv`` are replaced whole rather than ``/run/ganeti`` and
  ``/srv/ganeti``: neither exists on the host, and creating mount points
  would leak.  A private ``/run`` also hides ``/run/systemd/system``, so
  daemon-util uses start-stop-daemon instead of the host's systemctl.
* The addresses are /32 on ``lo``: a /24 makes the cluster IP look taken.
* The cluster's default NIC parameters are ``mode=routed,link=lo``: no
  bridge can exist here, and with the stock default (bridged) any NIC given
  without a mode fails with "Missing bridges lo".
* Helpers pass ``--ignore-ipolicy``: the default instance policy wants disks
  of at least 1024 MiB.  ``gnt-backup import`` with an absolute
  ``--src-dir`` also needs ``--src-node``; ``-t`` is optional (config.ini's
  disk_template is used); without ``--net`` the export's NICs, MAC
  included, are reused, which fails while the source instance still exists.
* Export and import each take about 11 s for a 256 MiB disk and 6 s for
  16 MiB (import-export daemon start-up plus the transfer): use small disks
  where the content does not matter.
* Hook scripts (``/etc/ganeti/hooks/<hpath>-<phase>.d/NAME``) run only when
  NAME matches ``^[a-zA-Z0-9_-]+$`` (no dots) and is executable; they get a
  scrubbed environment (GANETI_* variables, ``PATH=/sbin:/bin:/usr/sbin:
  /usr/bin``, no PYTHONPATH).
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import shutil
import signal
import sys
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
INNER_SCRIPT = os.path.join(HERE, "nscluster_inner.sh")

NODE = "node1.example.com"
NODE_IP = "192.0.2.1"
CLUSTER_NAME = "cluster.example.com"
CLUSTER_IP = "192.0.2.100"
FILE_STORAGE_DIR = "/srv/ganeti/file-storage"
SHARED_FILE_STORAGE_DIR = "/srv/ganeti/shared-file-storage"
EXPORT_DIR = "/var/lib/ganeti/export"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STATE_PREFIX = "ganeti-ovf-cluster-"

#: Inside path -> name of its host directory (or file) in the state dir.
PRIVATE_MOUNTS = {
    "/run": "run",
    "/srv": "srv",
    "/var/lib/ganeti": "var-lib-ganeti",
    "/var/log/ganeti": "var-log-ganeti",
    "/etc/ganeti": "etc-ganeti",
    "/etc/hosts": "hosts",
}

INIT_COMMAND = [
    "gnt-cluster", "init", "--enabled-hypervisors=fake",
    "--enabled-disk-templates=file,sharedfile,diskless", "--master-netdev=lo",
    "--nic-parameters=mode=routed,link=lo", "--no-ssh-init", "--no-etc-hosts",
    f"--file-storage-dir={FILE_STORAGE_DIR}",
    f"--shared-file-storage-dir={SHARED_FILE_STORAGE_DIR}", CLUSTER_NAME,
]

#: The KVM variant (fixture `ganeti_kvm_cluster`): instances really boot,
#: under QEMU's software emulation (TCG; /dev/kvm exists here but guests die
#: under it, and /usr/bin/kvm forces it), from their disks (no kernel_path),
#: with the serial console on a unix socket (Cluster.serial_socket) and QEMU
#: exiting when the guest powers off or reboots.
KVM_PARAMETERS = ("kvm:kvm_path=/usr/bin/qemu-system-x86_64,kvm_flag=disabled,"
                  "kernel_path=,initrd_path=,serial_console=true,vnc_bind_address=,"
                  "reboot_behavior=exit")
KVM_INIT_COMMAND = [arg for arg in INIT_COMMAND[:-1]
                    if not arg.startswith("--enabled-hypervisors=")] + [
    "--enabled-hypervisors=kvm", "-H", KVM_PARAMETERS, CLUSTER_NAME]
KVM_CTRL_DIR = "/run/ganeti/kvm-hypervisor/ctrl"  # /var/run is a link to /run

#: `instance_info` fields, in `gnt-instance list -o` syntax.
_INFO_FIELDS = ("name", "os", "disk_template", "be/vcpus", "be/maxmem",
                "be/minmem", "disk.sizes", "nic.macs", "nic.ips",
                "nic.modes", "nic.links", "tags")
_LIST_FIELDS = {"disk.sizes", "nic.macs", "nic.ips", "nic.modes",
                "nic.links", "tags"}
_INT_FIELDS = {"be/vcpus", "be/maxmem", "be/minmem"}

_PR_SET_PDEATHSIG = 1


class ClusterError(Exception):
    """The namespace or the cluster could not be set up."""


class ClusterCommandError(subprocess.CalledProcessError):
    """A command run inside the cluster failed; str() includes its output."""

    def __str__(self) -> str:
        return (f"{super().__str__()}\nstdout:\n{self.stdout}"
                f"\nstderr:\n{self.stderr}")


def _remove_orphans(base_dir: str) -> None:
    """Delete state directories left by test processes that were killed.

    Their namespaces died with them (parent-death signal), but nothing was
    left alive to delete the files.
    """
    for entry in os.listdir(base_dir):
        if not entry.startswith(STATE_PREFIX):
            continue
        path = os.path.join(base_dir, entry)
        try:
            with open(os.path.join(path, "owner"), encoding="ascii") as handle:
                owner = int(handle.read())
        except (OSError, ValueError):  # not ours, or still being set up
            continue
        if not os.path.exists(f"/proc/{owner}"):
            shutil.rmtree(path, ignore_errors=True)


# One process at a time may run clusters on this host (they share host
# paths): the first Cluster started in a process takes this lock, the last
# one stopped releases it; another test run waits here meanwhile.
HOST_LOCK = "/var/tmp/ganeti-ovf-cluster.lock"
_host_lock = {"fd": None, "users": 0}


def _acquire_host_lock() -> None:
    if _host_lock["users"] == 0:
        fd = os.open(HOST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("cluster harness: waiting for another test run's cluster"
                  " (%s)" % HOST_LOCK, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _host_lock["fd"] = fd
    _host_lock["users"] += 1


def _release_host_lock() -> None:
    _host_lock["users"] -= 1
    if _host_lock["users"] == 0:
        os.close(_host_lock["fd"])  # closing the descriptor drops the flock
        _host_lock["fd"] = None


def _die_with_parent() -> None:
    """Runs in the forked child: SIGKILL it if the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Cluster:
    """One throw-away Ganeti node+cluster; see the module docstring."""

    def __init__(self, base_dir: str = "/var/tmp",
                 init_command: Sequence[str] = tuple(INIT_COMMAND)) -> None:
        self.base_dir = base_dir
        self.init_command = list(init_command)
        self.state_dir: str | None = None
        self.init_pid: int | None = None  # host pid of the namespace's pid 1
        self.pid_ns: int | None = None    # inode of that pid namespace
        self._unshare: subprocess.Popen[bytes] | None = None
        self._locked = False

    # Lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Create the namespaces and run `gnt-cluster init` inside them."""
        if os.geteuid() != 0:
            raise ClusterError("cluster harness: must run as root")
        _acquire_host_lock()
        self._locked = True
        _remove_orphans(self.base_dir)
        self.state_dir = tempfile.mkdtemp(prefix=STATE_PREFIX,
                                          dir=self.base_dir)
        atexit.register(self.stop)
        try:
            self._prepare_state()
            self._launch(timeout)
            self.run(self.init_command, timeout=120)
        except BaseException:
            self.stop()
            raise

    def _prepare_state(self) -> None:
        state = self._state()
        self._write("owner", f"{os.getpid()}\n")
        for sub in ("run/lock", "run/ganeti", "var-lib-ganeti",
                    "var-log-ganeti", "srv/ganeti/file-storage",
                    "srv/ganeti/shared-file-storage"):
            os.makedirs(os.path.join(state, sub))
        os.chmod(os.path.join(state, "run/lock"), 0o1777)
        os.symlink("/dev/shm", os.path.join(state, "run/shm"))
        # symlinks=True keeps /etc/ganeti/{lib,share}, which Ganeti needs.
        etc = os.path.join(state, "etc-ganeti")
        shutil.copytree("/etc/ganeti", etc, symlinks=True)
        os.makedirs(os.path.join(etc, "hooks"), exist_ok=True)
        self._write("etc-ganeti/file-storage-paths",
                    FILE_STORAGE_DIR + "\n" + SHARED_FILE_STORAGE_DIR + "\n")
        self._write("hosts", f"127.0.0.1 localhost\n{NODE_IP} {NODE}\n"
                             f"{CLUSTER_IP} {CLUSTER_NAME}\n")
        self._write("hostname", NODE + "\n")
        self._write("addresses", NODE_IP + "\n")
        self._write("mounts", "".join(f"{name} {inner}\n" for inner, name
                                      in PRIVATE_MOUNTS.items()))

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self._state(), rel), "w",
                  encoding="ascii") as handle:
            handle.write(text)

    def _launch(self, timeout: float) -> None:
        state = self._state()
        log_path = os.path.join(state, "inner.log")
        with open(log_path, "wb") as log:
            self._unshare = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--net", "--pid", "--fork",
                 "--mount-proc", "--kill-child", "--propagation", "private",
                 INNER_SCRIPT, state],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent, start_new_session=True)
        ready = os.path.join(state, "ready")
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if self._unshare.poll() is not None or time.monotonic() > deadline:
                with open(log_path, encoding="utf-8", errors="replace") as log:
                    detail = log.read().strip().replace("\n", " | ")
                raise ClusterError(f"{INNER_SCRIPT}: namespace set-up failed:"
                                   f" {detail or 'no output'}")
            time.sleep(0.02)
        children = f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children"
        with open(children, encoding="ascii") as handle:
            self.init_pid = int(handle.read().split()[0])
        self.pid_ns = os.stat(f"/proc/{self.init_pid}/ns/pid").st_ino

    def _state(self) -> str:
        if self.state_dir is None:
            raise ClusterError("cluster harness: cluster not started")
        return self.state_dir

    def stop(self) -> None:
        """Kill everything in the namespaces and delete the state directory.

        Safe to call more than once and after a failed start().
        """
        atexit.unregister(self.stop)
        if self._unshare is not None:
            if self.init_pid is not None:
                try:
                    os.kill(self.init_pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                self._unshare.kill()
            # unshare returns once its child, the namespace's pid 1, is
            # reaped, and the kernel reaps that one only after every other
            # process of the namespace is gone.
            self._unshare.wait(timeout=60)
            self._unshare = None
        self.init_pid = None
        if self.state_dir is not None:
            # Host view: no bind mounts here, so this deletes only our files.
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
        if self._locked:
            self._locked = False
            _release_host_lock()

    def namespace_pids(self) -> list[int]:
        """Host pids of the processes still in this cluster's pid namespace."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ino = os.stat(f"/proc/{entry}/ns/pid").st_ino
            except OSError:  # the process exited while we looked
                continue
            if ino == self.pid_ns:
                pids.append(int(entry))
        return pids

    # Commands and paths

    def run(self, cmd: Sequence[str] | str, check: bool = True,
            timeout: float = 300, checkout_on_path: bool = False,
            env: Mapping[str, str] | None = None, cwd: str = "/",
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (argv, or a string for /bin/sh -c) inside the cluster.

        The environment is only PATH, HOME, LC_ALL, `env`, and PYTHONPATH
        set to the checkout if `checkout_on_path`.  On timeout only the
        nsenter side is killed; stop() cleans up the rest.
        """
        if self.init_pid is None:
            raise ClusterError("cluster harness: run() before start()")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        variables = {"PATH": PATH, "HOME": "/root", "LC_ALL": "C.UTF-8"}
        if checkout_on_path:
            variables["PYTHONPATH"] = ROOT
        variables.update(env or {})
        full = (["nsenter", f"--target={self.init_pid}", "--mount", "--uts",
                 "--net", "--pid", f"--wd={cwd}", "env", "-i"]
                + [f"{key}={value}" for key, value in variables.items()]
                + argv)
        result = subprocess.run(full, capture_output=True, text=True,
                                timeout=timeout, input=input,
                                stdin=None if input is not None
                                else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ClusterCommandError(result.returncode, argv, result.stdout,
                                      result.stderr)
        return subprocess.CompletedProcess(argv, result.returncode,
                                           result.stdout, result.stderr)

    def host_path(self, inner: str) -> str:
        """Host path of `inner`, a path under one of PRIVATE_MOUNTS."""
        state = self._state()
        inner = os.path.normpath(inner)
        for prefix, name in PRIVATE_MOUNTS.items():
            if inner == prefix or inner.startswith(prefix + "/"):
                return os.path.join(state, name) + inner[len(prefix):]
        raise ValueError(f"{inner}: not under a private cluster directory")

    def inner_path(self, host: str) -> str:
        """Path inside the cluster of `host`, a file under the state dir."""
        state = self._state()
        host = os.path.normpath(host)
        for prefix, name in PRIVATE_MOUNTS.items():
            base = os.path.join(state, name)
            if host == base or host.startswith(base + "/"):
                return prefix + host[len(base):]
        raise ValueError(f"{host}: not under the cluster state directory")

    # Instance helpers (file disks, routed NIC on lo, noop OS)

    def add_instance(self, name: str, ip: str, disk_size: str = "256M",
                     extra_args: Sequence[str] = ()) -> None:
        """Create a running instance with one file disk."""
        self.run(["gnt-instance", "add", "-t", "file",
                  "--disk", f"0:size={disk_size}", "--ignore-ipolicy",
                  "-o", "noop", "--net", f"0:mode=routed,link=lo,ip={ip}",
                  "--no-name-check", "--no-ip-check", "-n", NODE,
                  *extra_args, name])

    def export_instance(self, name: str,
                        extra_args: Sequence[str] = ()) -> str:
        """`gnt-backup export` to this node; the host path of the export."""
        self.run(["gnt-backup", "export", "--long-sleep", "-n", NODE,
                  *extra_args, name])
        return self.host_path(f"{EXPORT_DIR}/{name}")

    def import_instance(self, name: str, src_dir: str, ip: str | None,
                        extra_args: Sequence[str] = (),
                        disk_template: str | None = "file") -> None:
        """`gnt-backup import` from `src_dir`, a path inside the cluster.

        With `ip` None no ``--net`` is given and Ganeti reuses the export's
        NICs, MAC included (it fails if that MAC is in use); with an `ip`
        the NIC gets a new MAC.  `disk_template` None uses config.ini's.
        """
        args = ["gnt-backup", "import", "-n", NODE, "--src-node", NODE,
                "--src-dir", src_dir, "--no-name-check", "--no-ip-check",
                "--ignore-ipolicy"]
        if disk_template is not None:
            args += ["-t", disk_template]
        if ip is not None:
            args += ["--net", f"0:mode=routed,link=lo,ip={ip}"]
        self.run([*args, *extra_args, name])

    def remove_instance(self, name: str) -> None:
        self.run(["gnt-instance", "remove", "-f", name])

    def remove_export(self, name: str) -> None:
        self.run(["gnt-backup", "remove", name])

    def instance_info(self, name: str) -> dict[str, object]:
        """Fields of `_INFO_FIELDS` for `name`; list fields become lists.

        Keys are the field names (``be/vcpus``, ``nic.ips``, ...); ints
        for the backend parameters; ``-`` (unset) becomes None in lists.
        """
        out = self.run(["gnt-instance", "list", "--no-headers",
                        "--separator=|", "-o", ",".join(_INFO_FIELDS),
                        name]).stdout.rstrip("\n")
        values = out.split("|")
        if len(values) != len(_INFO_FIELDS):
            raise ClusterError(f"gnt-instance list: unexpected line {out!r}")
        info: dict[str, object] = {}
        for field, value in zip(_INFO_FIELDS, values, strict=True):
            if field in _LIST_FIELDS:
                info[field] = [None if item == "-" else item
                               for item in value.split(",") if item]
            elif field in _INT_FIELDS:
                info[field] = int(value)
            else:
                info[field] = value
        return info

    def disk_paths(self, name: str, storage_dir: str = FILE_STORAGE_DIR) -> list[str]:
        """Host paths of the instance's file disks, by disk index.

        Ganeti 3.0 names them FILE_STORAGE_DIR/<instance>/<uuid>.file.disk<N>
        (SHARED_FILE_STORAGE_DIR for sharedfile).
        """
        directory = self.host_path(f"{storage_dir}/{name}")
        found = {}
        for entry in os.listdir(directory):
            stem, sep, index = entry.rpartition("file.disk")  # or sharedfile.disk
            if sep and stem and index.isdigit():
                found[int(index)] = os.path.join(directory, entry)
        return [found[index] for index in sorted(found)]

    def write_disk(self, name: str, index: int,
                   data_at_offsets: Mapping[int, bytes]) -> None:
        """Write each bytes value at its byte offset into disk `index`."""
        with open(self.disk_paths(name)[index], "r+b") as disk:
            for offset, data in data_at_offsets.items():
                disk.seek(offset)
                disk.write(data)
            disk.flush()
            os.fsync(disk.fileno())

    def serial_socket(self, name: str) -> str:
        """Host path of a KVM instance's serial console socket."""
        return self.host_path(f"{KVM_CTRL_DIR}/{name}.serial")

    def install_hook(self, hooks_path: str, phase: str, name: str,
                     text: str) -> str:
        """Install an executable hook script; returns its host path.

        `hooks_path` is the opcode's HPATH (e.g. ``instance-export``),
        `phase` ``pre`` or ``post``; Ganeti skips names with dots.
        """
        directory = self.host_path(
            f"/etc/ganeti/hooks/{hooks_path}-{phase}.d")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o755)
        return path


@pytest.fixture(scope="session")
def ganeti_kvm_cluster() -> Iterator[Cluster]:
    """The KVM variant, for boot tests; it may run beside `ganeti_cluster`
    (both are this process's: the host lock counts its users)."""
    cluster = Cluster(init_command=KVM_INIT_COMMAND)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def ganeti_cluster() -> Iterator[Cluster]:
    """One cluster for the whole session; tests use unique instance names."""
    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
