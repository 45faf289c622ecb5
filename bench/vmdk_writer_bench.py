#!/usr/bin/python3
"""Compare ganeti_ovf.vmdkstream with qemu-img writing streamOptimized VMDK.

A standalone speed comparison, not a test.  It builds a sparse "MIX" raw
image (per 8 MiB: 4 MiB hole, 2 MiB random bytes, 2 MiB text-like data, so
half holes, a quarter incompressible, a quarter compressible), then times
`qemu-img convert -O vmdk -o subformat=streamOptimized` and our writer with
each compressor backend, interleaved over a few rounds.  Each run is a child
process timed from outside, its output fsync'ed, its peak RSS read with
/usr/bin/time.  Both outputs are checked with `qemu-img compare`.

Usage: /usr/bin/python3 bench/vmdk_writer_bench.py [--size-mib 1024]
       [--rounds 3] [--threads 0] [--dir /var/tmp]
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
PYTHON = "/usr/bin/python3"
TIME = "/usr/bin/time"  # Debian package time


def text_block(size: int, seed: int) -> bytes:
    """Pseudo-English text: random words from a fixed vocabulary."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 9)))
                  for _ in range(3000)]
    words = rng.choices(vocabulary, k=size // 4)
    return " ".join(words).encode()[:size].ljust(size, b"\n")


def make_mix(path: str, size_mib: int) -> None:
    text = text_block(8 * MIB, 1)
    rng = random.Random(2)
    with open(path, "wb") as out:
        out.truncate(size_mib * MIB)
        for chunk in range(0, size_mib, 8):
            base = chunk * MIB
            out.seek(base + 4 * MIB)  # first 4 MiB of each 8 stay a hole
            out.write(rng.randbytes(2 * MIB))
            start = (chunk % 3) * MIB
            out.write(text[start:start + 2 * MIB])
        out.flush()
        os.fsync(out.fileno())


def run_timed(argv: List[str], work: str) -> Tuple[float, int]:
    """Run argv; return (seconds, peak RSS in KiB).

    The peak comes from /usr/bin/time: a child forked straight from this
    (larger) process would report our RSS, which Linux carries over fork
    and exec into the child's maximum.
    """
    report = os.path.join(work, "rss")
    start = time.monotonic()
    result = subprocess.run([TIME, "-f", "%M", "-o", report] + argv)
    elapsed = time.monotonic() - start
    if result.returncode:
        sys.exit(f"failed ({result.returncode}): {' '.join(argv)}")
    with open(report) as handle:
        return elapsed, int(handle.read().split()[-1])


def child_writer(source: str, target: str, threads: int, backend: str) -> None:
    sys.path.insert(0, ROOT)
    from ganeti_ovf.disks import vmdkstream
    with open(target, "wb") as out:
        vmdkstream.write_stream_optimized(source, out, threads=threads,
                                          backend=backend)
        out.flush()
        os.fsync(out.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        source, target, threads, backend = args.child
        child_writer(source, target, int(threads), backend)
        return

    sys.path.insert(0, ROOT)
    from ganeti_ovf.disks import deflate
    backends = ["zlib"] + (["libdeflate"] if deflate.best_backend()
                           == "libdeflate" else [])
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        source = os.path.join(work, "mix.raw")
        make_mix(source, args.size_mib)
        commands: Dict[str, List[str]] = {
            "qemu-img": ["qemu-img", "convert", "-f", "raw", "-O", "vmdk",
                         "-o", "subformat=streamOptimized", source,
                         os.path.join(work, "qemu.vmdk")]}
        for backend in backends:
            commands[f"vmdkstream/{backend}"] = [
                PYTHON, os.path.abspath(__file__), "--child", source,
                os.path.join(work, f"{backend}.vmdk"), str(args.threads),
                backend]
        times: Dict[str, List[float]] = {name: [] for name in commands}
        rss: Dict[str, int] = {}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                subprocess.run(["sync"], check=True)
                elapsed, peak = run_timed(argv, work)
                times[name].append(elapsed)
                rss[name] = max(rss.get(name, 0), peak)
        for name, argv in commands.items():
            output = argv[-1] if name == "qemu-img" else argv[-3]
            subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F",
                            "vmdk", source, output], check=True)
        base = statistics.median(times["qemu-img"])
        size = args.size_mib * MIB
        print(f"MIX {args.size_mib} MiB, {args.rounds} round(s),"
              f" {os.cpu_count()} CPUs, median wall time:")
        for name, argv in commands.items():
            output = argv[-1] if name == "qemu-img" else argv[-3]
            median = statistics.median(times[name])
            print(f"  {name:22s} {median:7.2f} s {size / median / 1e6:7.0f}"
                  f" MB/s  x{base / median:4.1f}  out"
                  f" {os.path.getsize(output) / MIB:6.1f} MiB"
                  f"  peak RSS {rss[name] / 1024:5.1f} MiB")


if __name__ == "__main__":
    main()
