"""Progress of long steps (M2 alpha scan, Monte Carlo draws, synthesis, phase-field steps).

One helper for every long loop: on rank 0 it draws a one-line bar when stderr is a
terminal, and otherwise logs ``label: k/n (p %), elapsed, ETA`` lines at most every
`interval_s` seconds (and at the end). Other ranks stay silent. The ETA is the linear
extrapolation ``elapsed (n - k) / k``.

    for k in progress(range(n_draws), "Monte Carlo draws"):
        ...
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s' or '1 h 02 min'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Counts `total` steps of one long loop and reports on rank 0 (see module docstring)."""

    def __init__(self, total: int, label: str, *, rank: int | None = None,
                 stream: TextIO | None = None, bar: bool | None = None,
                 interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None):
        if rank is None:
            from mpi4py import MPI

            rank = MPI.COMM_WORLD.rank
        self.total, self.label, self.done = max(int(total), 0), label, 0
        self.active = rank == 0
        self.stream = sys.stderr if stream is None else stream
        self.bar = (self.stream.isatty() if bar is None else bar) and self.active
        self.interval_s, self.clock = interval_s, clock
        self.log = logger if log is None else log
        self.start = self.clock()
        self._last = self.start

    def eta_s(self) -> float | None:
        """Seconds still to go, extrapolated from the mean time per step so far."""
        if self.done == 0:
            return None
        return (self.clock() - self.start) * (self.total - self.done) / self.done

    def line(self, info: str = "") -> str:
        """``label: k/n (p %), 12 s elapsed, ETA 30 s[, info]``."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta_s()
        text = (f"{self.label}: {self.done}/{self.total} ({pct:.0f} %), "
                f"{format_seconds(self.clock() - self.start)} elapsed"
                + (f", ETA {format_seconds(eta)}" if eta is not None and self.done < self.total
                   else ""))
        return text + (f", {info}" if info else "")

    def step(self, n: int = 1, info: str = "") -> None:
        """Count `n` finished steps; report if due (always after the last)."""
        self.done = min(self.done + n, self.total)
        if not self.active:
            return
        now, last = self.clock(), self.done >= self.total
        if self.bar:
            width = 30
            filled = int(width * self.done / self.total) if self.total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line(info)}"
                              + ("\n" if last else ""))
            self.stream.flush()
        elif last or now - self._last >= self.interval_s:
            self.log.info("%s", self.line(info))
            self._last = now


def progress(items: Iterable[T], label: str, total: int | None = None,
             **options) -> Iterator[T]:
    """Yield from `items`, counting one step after each (a `Progress` on rank 0)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    tracker = Progress(total, label, **options)
    for item in items:
        yield item
        tracker.step()
