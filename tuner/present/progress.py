"""One live line while a job trains, instead of Ray's tables:

    stack 5/8 · baseline 0/8 · confirm 0/6 · best val AUROC 0.655 · 0:32 elapsed · ~1:10 left

On a terminal the line is redrawn in place; in a log (not a terminal) a line is written every
``every_s`` seconds and when a part finishes. The time left is rough: the wall time so far per
finished training, times the trainings left.

A job opens one :class:`Progress` (``with Progress(...)``) for its whole run; Tune's callbacks, which
Tune pickles with the job and hands back on ``--resume``, find it with :func:`current` and hold
nothing but the name of their part.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TextIO

from tuner.present.tables import WIDTH

__all__ = ["Progress", "current", "clock"]

_ACTIVE: list[Progress] = []  # the job's display while it runs (one per process)


def current() -> Progress | None:
    """The display of the job running in this process, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def clock(seconds: float) -> str:
    """0:32, 12:05, 1:02:03."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class _Part:
    total: int
    runs: dict[str, tuple[int, int]] = field(default_factory=dict)  # Tune run → (trials created, finished)

    @property
    def done(self) -> int:
        return sum(d for _, d in self.runs.values())

    @property
    def started(self) -> int:
        return sum(s for s, _ in self.runs.values())


@dataclass
class Progress:
    """The job's live line (the module says what it shows).

    Args:
        parts: each part's name and the trainings it will run at most, in the order they run
            (``{"stack": 8, "baseline": 8, "confirm": 12}``).
        stream: where the line goes (stderr: stdout keeps the summary).
        live: redraw in place (a terminal); None: when ``stream`` is a terminal.
        every_s: in a log, the seconds between two lines.
    """

    parts: dict[str, int]
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    live: bool | None = None
    every_s: float = 10.0
    _state: dict[str, _Part] = field(init=False, default_factory=dict)
    _best: float = field(init=False, default=math.nan)
    _started: float = field(init=False, default=0.0)
    _last_line: float = field(init=False, default=0.0)
    _shown: str = field(init=False, default="")
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._state = {name: _Part(total=n) for name, n in self.parts.items() if n > 0}
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        _ACTIVE.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._shown:
            self._write(self.line(), final=True)

    # ---- what Tune's callbacks tell it (the driver's thread)
    def trials(self, part: str, run: str, *, started: int, done: int) -> None:
        """A Tune run's trials so far, created and finished (restored ones included, on --resume); a
        part (the confirmation) may have several runs."""
        p = self._state.get(part)
        if p is None:
            return
        was = p.done
        p.runs[run] = (started, done)
        p.total = max(p.total, p.started)
        self._show(force=p.done >= p.total and was < p.done)

    def result(self, part: str, metrics: dict[str, object]) -> None:
        """One epoch of a trial: its validation AUROC counts for the best of the stack's search."""
        auroc = metrics.get("val/auroc")
        if part == "stack" and isinstance(auroc, (int, float)) and math.isfinite(auroc):
            self._best = auroc if math.isnan(self._best) else max(self._best, float(auroc))
        self._show()

    # ---- the line
    def left_s(self) -> float:
        """Rough seconds left: the wall time per finished training so far (which includes Tune's
        overhead and the trainings that ran side by side) times the trainings left; NaN before one
        has finished."""
        done = sum(p.done for p in self._state.values())
        if not done:
            return math.nan
        left = sum(max(0, p.total - p.done) for p in self._state.values())
        return (time.monotonic() - self._started) / done * left

    def line(self) -> str:
        parts = [f"{name} {p.done}/{p.total}" for name, p in self._state.items()]
        if not math.isnan(self._best):
            parts.append(f"best val AUROC {self._best:.3f}")
        parts.append(f"{clock(time.monotonic() - self._started)} elapsed")
        left = self.left_s()
        parts.append(f"~{clock(left)} left" if math.isfinite(left) else "time left: ?")
        return " · ".join(parts)[:WIDTH]

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.live and not force and now - self._last_line < self.every_s:
            return
        self._last_line = now
        self._write(self.line())

    def _write(self, text: str, *, final: bool = False) -> None:
        with self._lock:
            if self.live:
                self.stream.write("\r" + text.ljust(len(self._shown)) + ("\n" if final else ""))
            elif not final or text != self._shown:
                self.stream.write(text + "\n")
            self.stream.flush()
            self._shown = text
