"""qemu-img, and the only place the library runs a program.

Every command (qemu-img, and the streaming filters of run_filter, such as
igzip) runs with a reset environment
(LC_ALL=C, a fixed PATH), under coreutils `timeout` and util-linux `prlimit`
(address space, CPU time and, when writing, file size), with an explicit
format: qemu-img never probes.  Output is read as JSON only, capped, and
re-checked against what the caller expects.  A package member is read in
place through the descriptor the package opened (image_source: a raw
"window" driver over the OVA's byte range, no backing file ever).
qemu-img runs through ganeti.utils.RunCmd; a filter streams gigabytes
through pipes, which RunCmd would buffer whole, so run_filter starts it with
subprocess (no shell) under the same limits.
"""

import fcntl
import json
import os
import re
import subprocess
import tempfile
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from ganeti import errors as ganeti_errors
from ganeti import utils

from ganeti_ovf.disks import sparse
from ganeti_ovf.package.openfile import OpenedFile
from ganeti_ovf.errors import DiskError
from ganeti_ovf.model import Member

QEMU_IMG = "/usr/bin/qemu-img"
SETPRIV = "/usr/bin/setpriv"
PRLIMIT = "/usr/bin/prlimit"
TIMEOUT = "/usr/bin/timeout"
ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

MEMORY_LIMIT = 2 * 1024 ** 3  # bytes of address space for qemu-img
INFO_SECONDS = 30  # wall clock and CPU time for info, check, compare headers
OUTPUT_LIMIT = 1024 ** 2  # JSON larger than this is not an image we accept
KILL_GRACE = 10  # seconds between SIGTERM and SIGKILL
SECTOR = 512

# Formats this module may be asked to read, and to write on export.
READ_FORMATS = ("raw", "qcow2", "vmdk", "vpc", "vdi")
WRITE_FORMATS = ("raw", "qcow2", "vmdk")
# Guest sizes qemu derives as we do; vpc may use CHS geometry, raw rounds up.
SIZE_CHECKED_FORMATS = ("qcow2", "vmdk", "vdi")
# VMware: ESXi needs version 3 sparse headers (qemu writes them since 2.5.1)
# and a disk hardware version no older than the VM's; 11 is ESXi 6.0.
VMDK_HWVERSION = "11"
VMDK_ADAPTER = "lsilogic"

_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")

Progress = Callable[[float], None]


def _opt_value(value: str) -> str:
    # QEMU option syntax: a comma inside a value is written twice.
    return value.replace(",", ",,")


def readable_in_place(member: Member) -> bool:
    """Whether qemu can read `member` without copying it out first.

    qemu's raw window needs a size in whole sectors; a tar pads members to
    512 bytes, so the padding may be included when the file holds it.
    """
    try:
        length = os.fstat(member.fd).st_size
    except OSError:
        return False
    if member.offset == 0 and member.size == length:
        return True
    rounded = -(-member.size // SECTOR) * SECTOR
    return member.offset >= 0 and member.offset + rounded <= length


def image_source(member: Member, fmt: str) -> str:
    """The qemu-img filename that opens `member` as `fmt`, read in place.

    A json: specification: the protocol node is the package's open
    descriptor (/proc/self/fd/N, inherited by qemu-img through pass_fds),
    inside a raw window for an OVA member, and "backing": null, so that no
    image, even one rewritten after it was inspected, can make qemu open a
    backing file of its choosing.  An explicit driver: qemu never probes.
    """
    if fmt not in READ_FORMATS:
        raise DiskError("%s: format %r is not one qemu-img may read here" % (member.name, fmt))
    if not readable_in_place(member):
        raise DiskError("%s: byte range %d+%d of %s cannot be read in place"
                        % (member.name, member.offset, member.size, member.path))
    node: Dict[str, Any] = {"driver": "file", "filename": "/proc/self/fd/%d" % member.fd}
    if not (member.offset == 0 and member.size == os.fstat(member.fd).st_size):
        node = {"driver": "raw", "offset": member.offset,
                "size": -(-member.size // SECTOR) * SECTOR, "file": node}
    return "json:" + json.dumps({"driver": fmt, "backing": None, "file": node},
                                sort_keys=True)


def _limits(seconds: int, fsize: Optional[int], program: str = QEMU_IMG) -> List[str]:
    # Both timeout and qemu-img die with their parent (setpriv --pdeathsig):
    # a killed gnt-ovf leaves no qemu-img writing into its staging.
    cmd = [SETPRIV, "--pdeathsig=KILL", "--",
           TIMEOUT, "--kill-after=%d" % KILL_GRACE, str(seconds),
           SETPRIV, "--pdeathsig=KILL", "--",
           PRLIMIT, "--as=%d" % MEMORY_LIMIT, "--cpu=%d" % seconds]
    if fsize is not None:
        cmd.append("--fsize=%d" % max(fsize, SECTOR))
    return cmd + ["--", program]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text)
             if line.strip() and not _PROGRESS.fullmatch(line.strip())]
    return lines[-1] if lines else "no message"


def _fail_reason(what: str, result: Any, seconds: int) -> DiskError:
    if result.exit_code in (124, 137):  # timeout's codes for TERM and KILL
        return DiskError("%s: qemu-img ran out of its %d s" % (what, seconds))
    return DiskError("%s: qemu-img failed (%s): %s"
                     % (what, result.fail_reason, _last_line(result.output)))


def _run(args: List[str], what: str, seconds: int = INFO_SECONDS,
         fsize: Optional[int] = None, inherit: Sequence[int] = ()) -> Any:
    """Run qemu-img with `args` under limits, passing it the descriptors
    `inherit`; its RunResult if it succeeded."""
    try:
        # coreutils timeout (_limits) enforces the time limit: RunCmd's own
        # timeout would poll in 1 s sleeps once the child closes its pipes.
        result = utils.RunCmd(_limits(seconds, fsize) + args, env=ENV, reset_env=True,
                              noclose_fds=list(inherit) or None)
    except (ganeti_errors.GenericError, OSError) as err:
        raise DiskError("%s: cannot run qemu-img: %s" % (what, err)) from None
    if result.failed:
        raise _fail_reason(what, result, seconds)
    return result


def _run_logged(args: List[str], what: str, seconds: int, fsize: Optional[int],
                log_dir: str, progress: Optional[Progress],
                inherit: Sequence[int] = ()) -> None:
    """Run a long qemu-img command, feeding its -p percentages to `progress`;
    the descriptors `inherit` stay open in it (named /proc/self/fd/N).

    RunCmd only returns output at the end, so it writes to a log file from a
    worker thread while this thread reads the file's newest percentage.
    """
    fd, log = tempfile.mkstemp(prefix=".qemu-img-", suffix=".log", dir=log_dir)
    os.close(fd)
    outcome: Dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = utils.RunCmd(_limits(seconds, fsize) + args, env=ENV,
                                             reset_env=True, output=log,
                                             noclose_fds=list(inherit) or None)
        except (ganeti_errors.GenericError, OSError) as err:
            outcome["error"] = err

    try:
        worker = threading.Thread(target=work, name="qemu-img", daemon=True)
        worker.start()
        last = -1.0
        while worker.is_alive():
            worker.join(0.1)
            if progress is not None:
                last = _report(log, last, progress)
        if "error" in outcome:
            raise DiskError("%s: cannot run qemu-img: %s" % (what, outcome["error"]))
        result = outcome["result"]
        if result.failed:
            with open(log, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
                result.stdout = handle.read().decode("utf-8", "replace")
            raise _fail_reason(what, result, seconds)
        if progress is not None and last < 100.0:
            progress(100.0)
    finally:
        os.unlink(log)


def _report(log: str, last: float, progress: Progress) -> float:
    with open(log, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 256))
        found = _PROGRESS.findall(handle.read().decode("ascii", "replace"))
    if found and float(found[-1]) > last:
        last = float(found[-1])
        progress(last)
    return last


def _json(result: Any, what: str) -> Dict[str, Any]:
    if len(result.stdout) > OUTPUT_LIMIT:
        raise DiskError("%s: qemu-img output exceeds %d bytes" % (what, OUTPUT_LIMIT))
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise DiskError("%s: qemu-img did not print JSON" % what) from None
    if not isinstance(data, dict):
        raise DiskError("%s: qemu-img printed JSON that is not an object" % what)
    return data


def info(member: Member, fmt: str, expected_size: Optional[int] = None) -> Dict[str, Any]:
    """`qemu-img info` of `member` opened as `fmt`, re-checked.

    Raises DiskError if qemu-img fails, or reports another format, a backing
    file, an external data file, encryption, or (for qcow2 and vmdk) a virtual
    size other than `expected_size`.
    """
    what = member.name
    data = _json(_run(["info", "--output=json", image_source(member, fmt)], what,
                      inherit=[member.fd]), what)
    problems = []
    if data.get("format") != fmt:
        problems.append("format is %r, not %r" % (data.get("format"), fmt))
    if "backing-filename" in data or "full-backing-filename" in data:
        problems.append("backing file set")
    specific = data.get("format-specific")
    specific = specific.get("data") if isinstance(specific, dict) else None
    if not isinstance(specific, dict):
        specific = {}
    if "data-file" in specific:
        problems.append("external data file set")
    if data.get("encrypted") or "encrypt" in specific:
        problems.append("encrypted")
    if fmt == "vmdk" and len(specific.get("extents", ())) != 1:
        problems.append("not exactly one extent")
    size = data.get("virtual-size")
    if not isinstance(size, int) or size < 0:
        problems.append("no virtual size")
    elif expected_size is not None and fmt in SIZE_CHECKED_FORMATS \
            and size != expected_size:
        problems.append("virtual size %d differs from the header's %d"
                        % (size, expected_size))
    if problems:
        raise DiskError("%s: refused %s image (qemu-img info): %s"
                        % (what, fmt, "; ".join(problems)))
    return data


CHECK_SECONDS = 120  # qemu-img check reads every L2 table and refcount block
CHECK_FORMATS = ("qcow2", "vmdk")
_CHECK_OK = (0, 2, 3)  # clean, corruptions found, leaks only: JSON printed


def check_member(member: Member, fmt: str) -> Dict[str, Any]:
    """`qemu-img check` of a package's image, read in place.

    qemu reads qcow2 clusters and sparse VMDK grains that lie past the end of
    a truncated file as zeros, so a cut image would convert "successfully"
    into a damaged disk; check finds them.  Leaked clusters harm no reader
    and are accepted.
    Raises DiskError for corruptions, check errors or a failed check.
    """
    what = member.name
    if fmt not in CHECK_FORMATS:
        raise DiskError("%s: qemu-img check of %r images is not done here" % (what, fmt))
    args = _limits(CHECK_SECONDS, None) + ["check", "--output=json",
                                           image_source(member, fmt)]
    try:
        result = utils.RunCmd(args, env=ENV, reset_env=True, noclose_fds=[member.fd])
    except (ganeti_errors.GenericError, OSError) as err:
        raise DiskError("%s: cannot run qemu-img: %s" % (what, err)) from None
    if result.exit_code not in _CHECK_OK:
        found = [line.strip() for line in result.stderr.splitlines()
                 if line.startswith("ERROR")]
        if result.exit_code == 1 and found:
            raise DiskError("%s: refused %s image (qemu-img check): %s (truncated or"
                            " damaged)" % (what, fmt, found[0]))
        raise _fail_reason(what, result, CHECK_SECONDS)
    data = _json(result, what)
    bad = ["%s %s" % (data[key], key) for key in ("corruptions", "check-errors")
           if isinstance(data.get(key), int) and data[key]]
    if bad or result.exit_code == 2:
        raise DiskError("%s: refused %s image (qemu-img check): %s (truncated or damaged)"
                        % (what, fmt, ", ".join(bad) or "corruptions"))
    return data


def _convert_seconds(stored: int, virtual: int) -> int:
    # Generous: 10 minutes plus 8 MiB/s of stored data and 256 MiB/s of
    # guest size (holes are skipped, not written).
    return 600 + stored // (8 * 1024 ** 2) + virtual // (256 * 1024 ** 2)


def _claim(dest: str) -> None:
    # Create the target ourselves, exclusively and private; qemu-img then
    # re-creates it in place (ftruncate), keeping the mode.
    try:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise DiskError("%s: cannot create: %s" % (dest, err.strerror)) from None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def convert_to_raw(member: Member, fmt: str, dest: str,
                   progress: Optional[Progress] = None,
                   virtual_size: Optional[int] = None) -> None:
    """Write `member` (read as `fmt`) to the new sparse raw file `dest`.

    `dest` must not exist.  Zero runs of 4 KiB are left as holes; writes may
    complete out of order (-W).  Raises DiskError, leaving no `dest` behind.
    """
    dest = os.path.abspath(dest)  # RunCmd runs programs in "/"
    if virtual_size is None:
        virtual_size = info(member, fmt)["virtual-size"]
    seconds = _convert_seconds(member.size, virtual_size)
    limit = -(-virtual_size // SECTOR) * SECTOR
    _claim(dest)
    try:
        _run_logged(["convert", "-p", "-W", "-S", "4k", image_source(member, fmt),
                     "-O", "raw", dest],
                    member.name, seconds, limit, os.path.dirname(dest), progress,
                    inherit=[member.fd])
    except BaseException:
        _remove(dest)
        raise


def convert_into(member: Member, fmt: str, dest: str, dest_size: int,
                 target_is_zero: bool, log_dir: str,
                 progress: Optional[Progress] = None,
                 virtual_size: Optional[int] = None) -> None:
    """Write `member` (read as `fmt`) into the existing raw disk `dest`
    (a file or block device of `dest_size` bytes), never creating it (-n).

    `target_is_zero` lets qemu-img skip zeros (the disk reads as zeros
    already); otherwise it writes them (as write-zeroes requests).  Bytes of
    `dest` past the image's virtual size are left as they are.
    """
    if virtual_size is None:
        virtual_size = info(member, fmt)["virtual-size"]
    args = ["convert", "-p", "-W", "-n", image_source(member, fmt), "-O", "raw"]
    if target_is_zero:
        args.append("--target-is-zero")
    _run_logged(args + [os.path.abspath(dest)], member.name,
                _convert_seconds(member.size, virtual_size), dest_size, log_dir,
                progress, inherit=[member.fd])


def convert_from_raw(src: sparse.Source, fmt: str, dest: str, compress: bool = False,
                     progress: Optional[Progress] = None,
                     hwversion: str = VMDK_HWVERSION,
                     adapter: str = VMDK_ADAPTER) -> None:
    """Write the raw disk `src` to the new file `dest` as raw, qcow2 or vmdk.

    `src` is an OpenedFile (or a path, opened once: package/openfile.py):
    qemu-img inherits its descriptor and reads it as /proc/self/fd/N, so it
    reads the file that was checked even if the path now names another.
    vmdk is streamOptimized (what VMware imports) with `adapter` and
    `hwversion` in its descriptor; `compress` asks qcow2 for compressed
    clusters.  Raises DiskError, leaving no `dest` behind.
    """
    if fmt not in WRITE_FORMATS:
        raise DiskError("%s: cannot write disk format %r" % (dest, fmt))
    with sparse.opened(src) as raw:
        _convert_from_raw(raw, fmt, os.path.abspath(dest),  # RunCmd runs in "/"
                          compress, progress, hwversion, adapter)


def _convert_from_raw(src: OpenedFile, fmt: str, dest: str, compress: bool,
                      progress: Optional[Progress], hwversion: str, adapter: str) -> None:
    stored = src.size
    # The raw driver has no backing file: the image names no other file.
    args = ["convert", "-p", "-W", "-S", "4k", "--image-opts",
            "driver=raw,file.driver=file,file.filename=%s" % src.proc_path, "-O", fmt]
    if fmt == "qcow2" and compress:
        args.append("-c")
    if fmt == "vmdk":
        args += ["-o", "subformat=streamOptimized,adapter_type=%s,hwversion=%s"
                 % (_opt_value(adapter), _opt_value(hwversion))]
    # Compressing formats are slow (about 66 MB/s for streamOptimized).
    seconds = 600 + stored // (4 * 1024 ** 2)
    # The output never exceeds the input by more than its metadata.
    limit = stored + stored // 8 + 64 * 1024 ** 2
    _claim(dest)
    try:
        _run_logged(args + [dest], src.path, seconds, limit, os.path.dirname(dest),
                    progress, inherit=[src.fd])
    except BaseException:
        _remove(dest)
        raise


def check(path: str, fmt: str) -> Dict[str, Any]:
    """`qemu-img check` of a qcow2 or vmdk file; DiskError if it finds errors."""
    if fmt not in ("qcow2", "vmdk"):
        raise DiskError("%s: qemu-img check does not support %r" % (path, fmt))
    result = _run(["check", "-f", fmt, "--output=json", os.path.abspath(path)], path)
    data = _json(result, path)
    bad = {key: data.get(key) for key in ("check-errors", "corruptions", "leaks")
           if data.get(key)}
    if bad:
        raise DiskError("%s: qemu-img check found %s" % (
            path, ", ".join("%s %s" % (value, key) for key, value in bad.items())))
    return data


def compare(a: str, fmt_a: str, b: str, fmt_b: str) -> bool:
    """Whether two images hold the same guest data (qemu-img compare)."""
    seconds = INFO_SECONDS * 10
    args = _limits(seconds, None) + ["compare", "-q", "-f", fmt_a, "-F", fmt_b,
                                     os.path.abspath(a), os.path.abspath(b)]
    try:
        result = utils.RunCmd(args, env=ENV, reset_env=True)
    except (ganeti_errors.GenericError, OSError) as err:
        raise DiskError("%s: cannot run qemu-img: %s" % (a, err)) from None
    if result.exit_code in (0, 1):  # identical, different
        return result.exit_code == 0
    raise _fail_reason("%s vs %s" % (a, b), result, seconds)


# ------------------------------------------------------------ streaming filters

class FilterError(DiskError):
    """A filter program failed (its exit status), as opposed to its reader."""


# Output handed on in blocks of this size.  Not 1 MiB: glibc's malloc maps
# and unmaps each block of that size (its dynamic mmap threshold), which
# cost igzip's output 1-2 s of system time per GiB (gzipstream measured).
FILTER_BLOCK = 256 * 1024
FILTER_STDERR = 64 * 1024  # bytes of a filter's messages kept (fsize caps the file)
_PIPE_SIZE = 1024 ** 2
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not named by Python 3.11's fcntl


def run_filter(program: str, args: List[str], feed: Union[int, Iterable[bytes]],
               output: Callable[[bytes], None], what: str, seconds: int) -> None:
    """Run `program args` as a filter: `feed`'s blocks to its standard input
    (from a thread; or `feed` is an open file descriptor it reads itself),
    its standard output to `output` in FILTER_BLOCK blocks.

    No shell; a reset environment; the limits of qemu-img (time, address
    space, pdeathsig) and a file-size limit that caps its messages (it
    writes no file).  An exception from `output` or `feed` kills the filter
    and propagates.  Raises DiskError when the filter fails or times out.
    """
    with tempfile.TemporaryFile(prefix=".filter-") as messages:
        try:
            proc = subprocess.Popen(_limits(seconds, FILTER_STDERR, program) + args,
                                    stdin=feed if isinstance(feed, int) else subprocess.PIPE,
                                    stdout=subprocess.PIPE,
                                    stderr=messages, env=ENV, cwd="/", close_fds=True)
        except OSError as err:
            raise DiskError("%s: cannot run %s: %s" % (what, program, err.strerror)) from None
        for pipe in (proc.stdin, proc.stdout):
            try:
                if pipe is not None:
                    fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
            except OSError:
                pass  # a smaller pipe only costs more system calls
        failure: List[BaseException] = []

        def pump() -> None:
            if proc.stdin is None:
                return  # it reads the file itself
            try:
                for block in feed:
                    proc.stdin.write(block)
            except BrokenPipeError:
                pass  # the filter stopped reading: its exit status says why
            except BaseException as err:  # noqa: B902 (re-raised by the caller)
                failure.append(err)
                proc.kill()
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass

        feeder = threading.Thread(target=pump, name="filter-feed", daemon=True)
        feeder.start()
        try:
            while True:
                block = proc.stdout.read(FILTER_BLOCK)
                if not block:
                    break
                output(block)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            code = proc.wait()
            feeder.join()
        if failure:
            raise failure[0]
        if code:
            messages.seek(0)
            text = messages.read(FILTER_STDERR).decode("utf-8", "replace")
            if code in (124, 137):
                raise FilterError("%s: %s ran out of its %d s" % (what, program, seconds))
            raise FilterError("%s: %s failed (exit %d): %s"
                            % (what, os.path.basename(program), code,
                               _printable(_last_line(text))))


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]
