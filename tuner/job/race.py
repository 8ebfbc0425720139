"""The confirmation as a race over seeds: successive halving, one seed per round.

An arm's confirmation retrains its top K configs of the search with fresh training seeds. Training all
of them S times each (K × S trainings) spends most of that on configs that are clearly behind after a
seed or two. The race: every config gets seed 1; then, round after round, the better half of the
configs still in the race (rounded up: 3 → 2 → 1) gets the next seed, until the configs left have S
seeds. "Better" is the mean validation score over the seeds a config has (a trial that failed counts
as the worst); with several objectives, the ``--select`` rule's order of the configs' seed means
(``trainables.pareto.rank``: the front members meeting its constraints, the rule's first first), then
the others in the order the search ranked them. Once one config is left, its remaining seeds are given
at once. K = 3, S = 3: 3 + 2 + 1 = 6 trainings instead of 9; K = 3, S = 2: 5 instead of 6.

The winner is the config with the best mean over its seeds among the configs the race gave the most
seeds (the finalists), so that a config dropped after one lucky seed cannot beat the survivors'
means; ``tuner.job.arms.confirm`` applies it, and the summary says how many seeds each config got.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trainables.pareto import Objective, Selection, rank
from trainables.vocab import ARM_KEY

__all__ = ["CONFIRM_SEED", "FINISHED", "race_trainings", "race_order", "Race", "Races"]

CONFIRM_SEED = "seed"  # the config key a confirmation trial varies beside the searched values
FINISHED = "FINISHED"  # what ``Race.suggest`` returns once the race is over (Tune's ``Searcher.FINISHED``)


def race_trainings(configs: int, seeds: int) -> int:
    """How many trainings a race of ``configs`` configs over ``seeds`` seeds runs, when none fails."""
    total, alive = 0, configs
    for _ in range(seeds):
        total += alive
        alive = math.ceil(alive / 2)
    return total


def race_order(values: Sequence[dict[str, float]], objectives: Sequence[Objective] = (),
               selection: Selection | None = None) -> list[int]:
    """The configs of a round, best first, from their seed means (``values[i]``: the mean ``objective``
    and, with several objectives, each objective's mean). NaN (no model) is the worst; ties keep the
    earlier config (the one the search ranked higher)."""
    if not objectives:
        def key(i: int) -> tuple[bool, float, int]:
            v = values[i].get("objective", math.nan)
            return (math.isnan(v), -v if not math.isnan(v) else 0.0, i)

        return sorted(range(len(values)), key=key)
    finite = [i for i, v in enumerate(values) if not any(math.isnan(v.get(o.metric, math.nan)) for o in objectives)]
    ranked = [finite[j] for j in rank([values[i] for i in finite], objectives, selection or Selection((), None))]
    return ranked + [i for i in range(len(values)) if i not in ranked]


class Race:
    """The state of one arm's race over seeds (module doc): which trial got which config and seed, and
    what each reached. ``tuner.job.sealed_search.SeedRace`` hands it to Tune as a searcher.

    Args:
        points: one full point per config and seed, config after config, each config's seeds in a row
            (``tuner.job.arms.confirmation_points``); the race hands out the same points, fewer of them.
        seeds: S, the seeds per config (the points hold K × S).
        objectives, selection: several objectives: the rule that orders configs (else the ``objective``).
    """

    def __init__(self, *, points: Sequence[dict[str, Any]], seeds: int, objectives: Sequence[Objective] = (),
                 selection: Selection | None = None) -> None:
        if seeds < 1 or not points or len(points) % seeds:
            raise ValueError(f"points: K x seeds points expected, got {len(points)} for seeds={seeds}")
        self.points = [dict(p) for p in points]
        self.seeds = seeds
        self.objectives = tuple(objectives)
        self.selection = selection
        self.alive = list(range(len(points) // seeds))  # config indices still in the race
        self.round = 0  # seeds handed to each live config so far
        self.queue: list[tuple[int, int]] = []  # (config, seed index) not yet handed out
        self.issued: dict[str, tuple[int, int]] = {}  # trial id → (config, seed index)
        self.results: dict[tuple[int, int], dict[str, float]] = {}  # what each finished training reached
        self._next_round()

    # ---- the race
    @staticmethod
    def keep(alive: int) -> int:
        """How many of ``alive`` configs go on to the next seed: the better half, rounded up."""
        return math.ceil(alive / 2)

    def _next_round(self) -> None:
        if self.round:
            keep = self.keep(len(self.alive))
            order = race_order([self._mean(c) for c in self.alive], self.objectives, self.selection)
            self.alive = sorted(self.alive[i] for i in order[:keep])
        if len(self.alive) == 1:  # nothing left to decide: the last config's seeds at once
            self.queue = [(self.alive[0], s) for s in range(self.round, self.seeds)]
            self.round = self.seeds
        else:
            self.queue = [(c, self.round) for c in self.alive]
            self.round += 1

    def _mean(self, config: int) -> dict[str, float]:
        got = [self.results.get((config, s), {}) for s in range(self.round)]
        keys = ["objective", *(o.metric for o in self.objectives)]
        return {k: _mean([g.get(k, math.nan) for g in got]) for k in keys}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The point of a new trial; None while a round waits for its last results; ``FINISHED``."""
        if not self.queue:
            if any(key not in self.results for key in self.issued.values()):
                return None  # the round is not over: Tune asks again
            if self.round >= self.seeds:
                return FINISHED
            self._next_round()
        config, seed = self.queue.pop(0)
        self.issued[trial_id] = (config, seed)
        return dict(self.points[config * self.seeds + seed])

    def complete(self, trial_id: str, result: dict[str, Any] | None, *, error: bool = False) -> None:
        """A trial ended: what it reached (its last report: ``objective``, ``best/val/…``)."""
        key = self.issued.get(trial_id)
        if key is None:
            return
        result = {} if error or result is None else result
        self.results[key] = {"objective": _number(result.get("objective")),
                             **{o.metric: _number(result.get(f"best/{o.metric}")) for o in self.objectives}}


class Races:
    """The arms' races in one Tune run (``Races({"stack": race, "baseline": race})``): a new trial goes to
    the first arm whose race has one to hand out, so that one arm's trials fill the slots another's
    round leaves idle while it waits for its last result. Each point carries its arm (``ARM_KEY``)."""

    def __init__(self, races: dict[str, Race]) -> None:
        self.races = dict(races)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """As ``Race.suggest``, over the arms; ``FINISHED`` once every race is."""
        finished = 0
        for arm, race in self.races.items():
            got = race.suggest(trial_id)
            if isinstance(got, dict):
                return {**got, ARM_KEY: arm}
            finished += got == FINISHED
        return FINISHED if finished == len(self.races) else None

    def complete(self, trial_id: str, result: dict[str, Any] | None, *, error: bool = False) -> None:
        for race in self.races.values():
            race.complete(trial_id, result, error=error)


def _number(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _mean(values: Sequence[float]) -> float:
    """The mean of a config's seeds so far; a failed seed makes the config the worst."""
    return math.nan if not values or any(math.isnan(v) for v in values) else sum(values) / len(values)
