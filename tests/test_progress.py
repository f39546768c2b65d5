"""The progress helper: lines with ETA on rank 0, a bar on a terminal, silence elsewhere."""

from __future__ import annotations

import io
import logging

from chemomech.io.progress import Progress, format_seconds, progress


class Clock:
    """A fake clock set by the test."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_eta_is_the_linear_extrapolation_and_lines_are_throttled(caplog):
    clock = Clock()
    p = Progress(10, "draws", rank=0, bar=False, interval_s=5.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="chemomech.io.progress"):
        for _ in range(10):
            clock.t += 2.0
            p.step()
    lines = [r.getMessage() for r in caplog.records]
    # a line every 5 s of a 20 s loop (after 6, 12, 18 s) and one at the end
    assert len(lines) == 4
    assert lines[0] == "draws: 3/10 (30 %), 6 s elapsed, ETA 14 s"
    assert lines[-1] == "draws: 10/10 (100 %), 20 s elapsed"


def test_bar_on_a_terminal_and_silence_on_other_ranks(caplog):
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="chemomech.io.progress"):
        items = list(progress(range(4), "alpha scan", rank=0, bar=True, stream=stream))
        list(progress(range(4), "alpha scan", rank=1, bar=True, stream=io.StringIO()))
        list(progress(range(4), "alpha scan", rank=1, bar=False))
    assert items == [0, 1, 2, 3]
    out = stream.getvalue()
    assert out.count("\r") == 4 and out.endswith("\n")
    assert "[" + "#" * 30 + "] alpha scan: 4/4 (100 %)" in out
    assert not caplog.records  # the bar does not also log; rank 1 says nothing


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 185, 3725)] == ["4 s", "3 min 05 s", "1 h 02 min"]
