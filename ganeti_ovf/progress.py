"""Progress of long work, for the operator watching it.

Disks report the share of their work done (percent); this module adds them
up into bytes done of the total, the rate and the time left, and shows
that: on a terminal one line redrawn in place (as qemu-img -p and
gnt-backup do), otherwise a line every LOG_INTERVAL seconds (a log or a
pipe), and nothing at all without a stream (--quiet, JSON output).
"""

import threading
import time
from typing import Callable, List, Optional, TextIO

Callback = Callable[[float], None]


def _eta(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return "%d:%02d:%02d" % (hours, rest // 60, rest % 60) if hours \
        else "%d:%02d" % (rest // 60, rest % 60)


class Progress:
    """The progress of several disks of known sizes, shown on `stream`."""

    TERMINAL_INTERVAL = 0.5  # seconds between redraws on a terminal
    LOG_INTERVAL = 5.0  # seconds between lines elsewhere

    def __init__(self, stream: Optional[TextIO], sizes: List[int], what: str = "Disks",
                 terminal: Optional[bool] = None) -> None:
        self.stream = stream
        self.what = what
        self.sizes = list(sizes)
        self.done = [0.0] * len(self.sizes)
        self.total = sum(self.sizes) or 1
        self.terminal = terminal if terminal is not None else bool(
            stream is not None and hasattr(stream, "isatty") and stream.isatty())
        self.interval = self.TERMINAL_INTERVAL if self.terminal else self.LOG_INTERVAL
        self.start = time.monotonic()
        # A log gets its first line only once the work has lasted an
        # interval: short runs say nothing.
        self.shown = 0.0 if self.terminal else self.start
        self.drawn = False
        self.lock = threading.Lock()

    def callback(self, index: int) -> Optional[Callback]:
        """progress(percent) for disk `index`; None when nothing is shown."""
        if self.stream is None:
            return None

        def progress(percent: float) -> None:
            with self.lock:
                self.done[index] = self.sizes[index] * max(0.0, min(percent, 100.0)) / 100
                now = time.monotonic()
                if now - self.shown >= self.interval:
                    self.shown = now
                    self._draw(now)
        return progress

    def text(self, now: float) -> str:
        done = sum(self.done)
        elapsed = max(now - self.start, 1e-3)
        rate = done / elapsed
        left = "ETA %s" % _eta((self.total - done) / rate) if rate > 0 else "ETA unknown"
        return "%s: %.2f of %.2f GiB (%d %%), %.0f MiB/s, %s" % (
            self.what, done / 1024 ** 3, self.total / 1024 ** 3, 100 * done // self.total,
            rate / 1024 ** 2, left)

    def _draw(self, now: float) -> None:
        if self.terminal:
            self.stream.write("\r%s  " % self.text(now))
        else:
            self.stream.write("%s\n" % self.text(now))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Show the final figures and end the redrawn line, so the next
        output starts on its own."""
        if self.stream is not None and self.drawn and self.terminal:
            with self.lock:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()
