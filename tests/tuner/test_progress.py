"""The job's live line: each part's trainings over its runs, the best validation AUROC of the stack's
search only, a rough time left from the wall time per finished training, a line every few seconds in a
log and one redrawn line on a terminal."""

from __future__ import annotations

import io

import pytest

import tuner.present.progress as progress
from tuner.present.progress import Progress, clock, current


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    t = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", t)
    return t


def test_a_log_gets_a_line_every_few_seconds_and_at_each_parts_end(fake_time):
    out = io.StringIO()
    with Progress(parts={"stack": 4, "baseline": 4, "confirm": 4}, stream=out, live=False, every_s=10) as shown:
        assert current() is shown
        shown.trials("stack", "job", started=2, done=0)  # the first event: a line at once
        fake_time.now += 3
        shown.result("stack", {"val/auroc": 0.71})
        shown.result("baseline", {"val/auroc": 0.99})  # not the stack's search: not its best
        fake_time.now += 3
        shown.trials("stack", "job", started=4, done=2)  # 6 s after the last line: none
        fake_time.now += 4
        shown.trials("stack", "job", started=4, done=4)  # the part is done: a line
        fake_time.now += 10
        shown.trials("confirm", "confirm-stack", started=2, done=2)
        shown.trials("confirm", "confirm-baseline", started=2, done=1)  # a part of several runs adds them
    assert current() is None
    lines = out.getvalue().splitlines()
    assert lines[0] == "stack 0/4 · baseline 0/4 · confirm 0/4 · 0:00 elapsed · time left: ?"
    # 4 of 12 trainings done in 10 s: 8 left at 2.5 s each
    assert lines[1] == "stack 4/4 · baseline 0/4 · confirm 0/4 · best val AUROC 0.710 · 0:10 elapsed · ~0:20 left"
    assert lines[-1].startswith("stack 4/4 · baseline 0/4 · confirm 3/4 · best val AUROC 0.710 · 0:20 elapsed")
    assert len(lines) == 4


def test_a_terminal_gets_one_line_redrawn_in_place(fake_time):
    out = io.StringIO()
    with Progress(parts={"stack": 2}, stream=out, live=True) as shown:
        shown.trials("stack", "job", started=2, done=1)
        shown.trials("stack", "job", started=2, done=2)
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert text.rsplit("\r", 1)[1].startswith("stack 2/2")


@pytest.mark.parametrize("seconds,shown", [(0, "0:00"), (32.4, "0:32"), (725, "12:05"), (3723, "1:02:03"),
                                           (float("nan"), "?")])
def test_clock(seconds, shown):
    assert clock(seconds) == shown
