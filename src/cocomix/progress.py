"""Progress of long commands on stderr (extract-concepts, describe-concepts, steer-eval, eval): one line rewritten in
place on a terminal, whole lines at a slower pace in a log file (a `\\r` line would become one endless line).

No paper equation.
"""

from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressLine:
    """`update(done)` reports `label: done/total unit (rate/s, or seconds per unit below 1/s; eta)` at most
    every `interval` seconds on a terminal, every `log_interval` seconds otherwise, and always at the end;
    `close()` ends the terminal line."""

    def __init__(self, label: str, total: int, unit: str = "windows", start: int = 0, enabled: bool = True,
                 interval: float = 1.0, log_interval: float = 30.0) -> None:
        self.label, self.total, self.unit, self.start, self.enabled = label, total, unit, start, enabled
        self.tty = sys.stderr.isatty()
        self.interval = interval if self.tty else log_interval
        self.t0 = self.last = time.perf_counter()
        self.open, self.width = False, 0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.interval and done < self.total):
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        pace = f"{rate:.1f}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.1f} s per {self.unit.removesuffix('s')}"
        text = f"{self.label}: {done}/{self.total} {self.unit} ({pace}, eta {format_duration(eta)})"
        if self.tty:  # (padded over what a longer line before it left: "eta 3m10s)" after "eta 0m33s)")
            print(f"\r{text.ljust(self.width)}", end="", file=sys.stderr, flush=True)
            self.open, self.width = True, len(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open, self.width = False, 0
