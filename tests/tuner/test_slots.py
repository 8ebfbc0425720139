"""Two arms' Tune runs sharing a runtime's slots while both search (tuner/job/slots.py): each arm's
share, what an arm left alone may take, and the limiter Tune drives and pickles."""

from __future__ import annotations

import pickle

import pytest
from ray.tune.search import Searcher

from tuner.job.slots import UNLIMITED, SharedLimiter, SlotShare, share_of, sharing_slots


@pytest.mark.parametrize(("slots", "own", "done", "left", "expected"), [
    (2, UNLIMITED, (), 10, {"stack": 1, "baseline": 1}),  # both search: one slot each
    (4, UNLIMITED, (), 10, {"stack": 2, "baseline": 2}),
    (5, UNLIMITED, (), 10, {"stack": 2, "baseline": 2}),  # whole slots: the odd one is left to Tune
    (1, UNLIMITED, (), 10, {"stack": 1, "baseline": 1}),  # never none: both wait for the one slot
    (4, 1, (), 10, {"stack": 1, "baseline": 1}),  # --concurrency below the share wins
    (2, UNLIMITED, ("baseline",), 4, {"stack": UNLIMITED}),  # alone with 2 trials per slot left: its own limit
    (2, UNLIMITED, ("baseline",), 3, {"stack": 1}),  # alone with a few left: a new worker would not pay
    (2, 3, ("stack",), 8, {"baseline": 3}),
])
def test_each_arm_gets_its_share_while_both_search(slots, own, done, left, expected):
    share = SlotShare(slots, ("stack", "baseline"))
    for arm in done:
        share.done(arm)
    assert {arm: share.limit(arm, own, left) for arm in expected} == expected
    assert share.limit("confirm", own, left) == own  # an arm the share does not know: its own limit
    assert SlotShare(2, ("stack",)).limit("stack", own, left) == own  # one arm alone shares nothing


class _Counting(Searcher):
    """Hands out numbered configs."""

    def __init__(self) -> None:
        super().__init__(metric="objective", mode="max")
        self.n = 0

    def suggest(self, trial_id: str) -> dict:
        self.n += 1
        return {"i": self.n}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


def _limiter(key: str, arm: str, trials: int = 8, own: int = UNLIMITED) -> SharedLimiter:
    limiter = SharedLimiter(_Counting(), max_concurrent=own, key=key, arm=arm, trials=trials)
    limiter.set_search_properties("objective", "max", {})
    return limiter


def test_the_limiter_holds_an_arm_to_its_share_until_the_other_arm_is_done():
    stack = _limiter("job-a", "stack")
    with sharing_slots("job-a", slots=2, arms=("stack", "baseline")) as share:
        assert share_of("job-a") is share
        assert stack.suggest("t1") == {"i": 1}
        assert stack.suggest("t2") is None  # one trial live: its share of two slots
        stack.on_trial_complete("t1", {"objective": 0.5})
        assert stack.suggest("t3") == {"i": 2}
        share.done("baseline")  # 6 of its 8 trials left, 3 per slot: it may take both slots now
        assert stack.suggest("t4") == {"i": 3}
    assert share_of("job-a") is None  # the block's end unregisters it
    other = _limiter("job-b", "stack")  # no share under its key: Tune's pending trials decide
    assert [other.suggest(f"t{i}") for i in range(3)] == [{"i": 1}, {"i": 2}, {"i": 3}]


def test_an_arm_alone_with_few_trials_left_keeps_its_share():
    stack = _limiter("job-c", "stack", trials=4)
    with sharing_slots("job-c", slots=2, arms=("stack", "baseline")) as share:
        assert stack.suggest("t1") == {"i": 1}
        share.done("baseline")  # 3 left: fewer than two per slot
        assert stack.suggest("t2") is None
        stack.on_trial_complete("t1", {"objective": 0.5})
        assert stack.suggest("t3") == {"i": 2}


def test_the_limiter_pickles_without_its_share_and_finds_it_again_by_key():
    """Tune saves a run's searcher with the run's state (its __dict__, and the limiter in tuner.pkl): the
    share, which holds a lock, is not in it; a resumed job registers a new share under the same key."""
    stack = _limiter("job-d", "stack", own=5)
    with sharing_slots("job-d", slots=2, arms=("stack", "baseline")):
        stack.suggest("t1")
        state = stack.get_state()
        copy = pickle.loads(pickle.dumps(stack))
    assert state["created"] == 1 and state["_own"] == 5 and "max_concurrent" not in state
    assert copy.max_concurrent == 5  # no share registered now: its own limit
    with sharing_slots("job-d", slots=2, arms=("stack", "baseline")):
        assert copy.max_concurrent == 1
        restored = _limiter("job-d", "stack", own=2)
        restored.set_state(state)
        assert restored.created == 1 and restored.max_concurrent == 1
    assert restored.max_concurrent == 5
