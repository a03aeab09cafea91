"""Progress lines a person can read: done/total, rate and ETA (augment's model tasks, fine-tuning).

Logged on the ``toolformer.progress`` logger (shown at INFO by the commands that run long), so
the same line reaches a terminal, a file and a cluster worker's log. :func:`progress_text`
formats one line; :class:`Throttle` decides when the next one is due.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("toolformer.progress")


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``2 h 07 min`` (seconds under a minute, minutes under a day...)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def rate_text(done: float, elapsed: float, unit: str) -> str:
    """``0.74 units/s``, or ``12 s/unit`` when one takes longer than a second."""
    if done <= 0 or elapsed <= 0:
        return f"0 {unit}s/s"
    per_s = done / elapsed
    if per_s >= 1:
        return f"{per_s:.1f} {unit}s/s"
    if per_s >= 0.1:
        return f"{per_s:.2f} {unit}s/s"
    return f"{elapsed / done:.0f} s/{unit}"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left at the mean rate so far; None before anything is done."""
    if done <= 0 or elapsed <= 0:
        return None
    return max(0.0, total - done) * elapsed / done


def progress_text(
    what: str,
    done: int,
    elapsed: float,
    total: int | None = None,
    *,
    final: bool = True,
    unit: str = "unit",
    so_far: str = "",
    extra: str = "",
    since: int = 0,
) -> str:
    """One progress line.

    ``total`` with ``final`` (the total is known): ``what: 63/120 units (52%), 1 min 25 s, 0.74
    units/s, ETA 1 min 17 s``. ``total`` without ``final`` (only a count so far, e.g. units
    routed so far while documents are still read): ``63 units done of 65 routed so far`` (with
    ``so_far="routed"``) and no ETA. No ``total``: done, time and rate only. ``extra`` goes after
    the count. ``since``: what was done before the clock started (a resumed run), counted in
    ``done`` but not in the rate.
    """
    plural = lambda n: unit if n == 1 else f"{unit}s"
    if total is not None and final:
        share = f" ({100 * done / total:.0f}%)" if total else ""
        count = f"{done}/{total} {plural(total)}{share}"
    elif total is not None:
        count = f"{done} {plural(done)} done of {total} {so_far} so far".replace("  ", " ")
    else:
        count = f"{done} {plural(done)}"
    parts = [f"{what}: {count}{extra}", duration(elapsed), rate_text(done - since, elapsed, unit)]
    if total is not None and final:
        left = eta_seconds(done - since, total - since, elapsed)
        parts.append("ETA " + ("unknown" if left is None else duration(left)))
    elif total is not None:
        parts.append("no ETA until the total is known")
    return ", ".join(parts)


class Throttle:
    """``due()`` is true at most every ``every_s`` seconds (and on the first call when ``first``)."""

    def __init__(self, every_s: float, first: bool = False, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.started = clock()
        self.last = None if first else self.started

    def elapsed(self) -> float:
        return self.clock() - self.started

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if force or self.last is None or now - self.last >= self.every_s:
            self.last = now
            return True
        return False
