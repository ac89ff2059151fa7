"""The one progress reporter: a tqdm bar on a terminal; otherwise an INFO line every 10% of the work or every
30 s (or every `log_every` units), with the rate and the ETA (what a Kubernetes pod's log or a CI log can hold).
The training loop's reporter (dcign_tf.callbacks.Progress) is this one, fed the global step.

Standard library and absl only (tqdm when a bar is drawn): dataset worker processes import it.
"""

from __future__ import annotations

import math
import sys
import time

from absl import logging

LOG_FRACTION_STEPS = 10  # A log line each time another tenth of the work is done...
LOG_SECONDS = 30.0  # ...or when this long has passed since the last line.


class Progress:
    """Counts `total` units of work called `unit` (singular, e.g. "group") of a job described by `what`.

    mode: "auto" (a bar when stderr is a terminal, else log lines), "bar", "log" or "none".
    initial: units already done before this run (a resumed job); the rate counts only this run's.
    log_every: when positive, a log line each time a multiple of it is reached (and at the end) instead.
    """

    def __init__(self, total: int, what: str, unit: str = "item", *, mode: str = "auto", initial: int = 0,
                 log_every: int = 0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.total, self.what, self.unit, self.log_every = total, what, unit, log_every
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
        if self.log_every > 0:
            due = count > 0 and (self.done // self.log_every > previous // self.log_every or self.done >= self.total)
        else:
            due = (self.done * LOG_FRACTION_STEPS // self.total > previous * LOG_FRACTION_STEPS // self.total
                   or now - self.last_log >= LOG_SECONDS)
        if due:
            self.last_log = now
            rate = self.rate
            eta = format_duration((self.total - self.done) / rate if rate > 0 else float("nan"))
            extra = "".join(f", {name} {value}" for name, value in postfix.items())
            logging.info("%s: %d/%d %ss (%.2f %ss/s, ETA %s%s)", self.what, self.done, self.total, self.unit, rate,
                         self.unit, eta, extra)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_duration(seconds: float) -> str:
    """1234.5 -> '20:34'; NaN -> '?'."""
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
