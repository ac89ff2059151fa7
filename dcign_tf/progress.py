"""The one progress reporter: a tqdm bar on a terminal; otherwise an INFO line every 10% of the work or every
30 s, with the rate (what a Kubernetes pod's log or a CI log can hold).

Standard library and absl only (tqdm when a bar is drawn): dataset worker processes import it.
"""

from __future__ import annotations

import sys
import time

from absl import logging

LOG_FRACTION_STEPS = 10  # A log line each time another tenth of the work is done...
LOG_SECONDS = 30.0  # ...or when this long has passed since the last line.


class Progress:
    """Counts `total` units of work called `unit` (singular, e.g. "group") of a job described by `what`.

    mode: "auto" (a bar when stderr is a terminal, else log lines), "bar", "log" or "none".
    initial: units already done before this run (a resumed job); the rate counts only this run's.
    """

    def __init__(self, total: int, what: str, unit: str = "item", *, mode: str = "auto", initial: int = 0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.total, self.what, self.unit = total, what, unit
        self.mode = mode if total > 0 else "none"
        self.done = self.initial = initial
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm  # Lazy: only a terminal draws a bar.

            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=what, smoothing=0.1, dynamic_ncols=True,
                            file=sys.stderr)

    @property
    def rate(self) -> float:
        """Units per second in this run."""
        return (self.done - self.initial) / max(time.monotonic() - self.start, 1e-9)

    def update(self, count: int = 1, **postfix) -> None:
        """Adds `count` done units; `postfix` (e.g. loss=...) is shown beside the bar or at the end of the line."""
        previous, self.done = self.done, self.done + count
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(count)
            return
        if self.mode != "log":
            return
        now = time.monotonic()
        tenths = self.done * LOG_FRACTION_STEPS // self.total > previous * LOG_FRACTION_STEPS // self.total
        if tenths or now - self.last_log >= LOG_SECONDS:
            self.last_log = now
            extra = "".join(f", {name} {value}" for name, value in postfix.items())
            logging.info("%s: %d/%d %ss (%.1f %ss/s%s)", self.what, self.done, self.total, self.unit, self.rate,
                         self.unit, extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
