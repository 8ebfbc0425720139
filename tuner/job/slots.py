"""Two Tune runs of one job sharing the runtime's trial slots fairly while both search.

A job's baseline arm searches beside the stack's, as a second Tune run in the same Ray runtime. Ray
hands a free slot to whichever run asks first, and a run keeps the workers it has (``reuse_actors``):
the first run to start took every slot and the other waited for its whole search, then started its
workers from cold: a 20,000-row job (bench_arms.py's `screening`) had both of its 2 slots idle for
4.8 s between the two searches (the trials' start and end times in their results). With each arm
capped at its share of the slots while both search (2 slots: one each), both arms' workers start at
once and neither waits for the other; when one arm's search ends, the other keeps its share unless it
has many trials left (``SlotShare.limit`` says why).

The share is found by a key (the job's experiment path) in this process's registry, not held by the
limiter: Tune pickles the limiter with the run's state, and a resumed job registers the share again.
A limiter whose share is not registered (a run alone, a restored run whose arms are not side by side)
is an ordinary ``ConcurrencyLimiter`` with its own limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

__all__ = ["SlotShare", "sharing_slots", "share_of", "SharedLimiter", "UNLIMITED"]

UNLIMITED = 10**6  # a limiter's own limit where the job sets none (``--concurrency``): Tune's pending trials decide


class SlotShare:
    """The slots of a runtime and the arms of a job searching side by side on them."""

    def __init__(self, slots: int, arms: Iterable[str]) -> None:
        self.slots = max(1, int(slots))
        self._arms = frozenset(arms)
        self._searching = set(self._arms)
        self._lock = threading.Lock()

    @property
    def searching(self) -> frozenset[str]:
        """The arms whose search has not ended."""
        with self._lock:
            return frozenset(self._searching)

    def done(self, arm: str) -> None:
        """The arm's search ended (or stopped)."""
        with self._lock:
            self._searching.discard(arm)

    def limit(self, arm: str, own: int, left: int) -> int:
        """How many trials ``arm`` may have at once, with ``left`` trials still to create: its share of
        the slots (at least one) while the other arms search; once they are done, its own limit if it
        has at least two trials left per slot, else still its share. A run that grows starts a worker
        while its first one trains; Tune hands the new trial to the first worker if that one frees up
        before the new one has started (~2.6 s here, `benchmarks/bench_workers.py`) and stops the new
        one, so with a few short trials left, growing cost more than it gave: a 20,000-row job took
        49.4 s (mean of 4) with the arms unshared, 49.7 s when the last arm always grew, 46.7 s when it
        never did."""
        with self._lock:
            if arm not in self._arms or len(self._arms) < 2:
                return own
            share = max(1, min(own, self.slots // len(self._arms)))
            alone = self._searching <= {arm}
            return own if alone and left >= 2 * self.slots else share


_SHARES: dict[str, SlotShare] = {}
_REGISTRY_LOCK = threading.Lock()


@contextmanager
def sharing_slots(key: str, *, slots: int, arms: Iterable[str]) -> Iterator[SlotShare]:
    """Registers a ``SlotShare`` under ``key`` for the block: the limiters made with that key share
    ``slots`` among ``arms`` until each arm's search is ``done``."""
    share = SlotShare(slots, arms)
    with _REGISTRY_LOCK:
        _SHARES[key] = share
    try:
        yield share
    finally:
        with _REGISTRY_LOCK:
            if _SHARES.get(key) is share:
                del _SHARES[key]


def share_of(key: str) -> SlotShare | None:
    """The share registered under ``key`` (``sharing_slots``), if any."""
    with _REGISTRY_LOCK:
        return _SHARES.get(key)


class SharedLimiter(ConcurrencyLimiter):
    """Tune's ``ConcurrencyLimiter`` whose limit is the arm's share of the slots while the job's other
    arm searches too (``sharing_slots`` under ``key``), else ``max_concurrent``."""

    def __init__(self, searcher: Searcher, *, max_concurrent: int, key: str, arm: str, trials: int) -> None:
        self.key, self.arm, self.trials, self.created = key, arm, int(trials), 0
        super().__init__(searcher, max_concurrent=max_concurrent)

    @property  # type: ignore[override]
    def max_concurrent(self) -> int:
        share = share_of(self.key)
        return self._own if share is None else share.limit(self.arm, self._own, self.trials - self.created)

    @max_concurrent.setter
    def max_concurrent(self, value: int) -> None:
        self._own = int(value)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        got = super().suggest(trial_id)
        if isinstance(got, dict):
            self.created += 1
        return got
