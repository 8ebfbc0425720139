"""The confirmation's race over seeds (tuner/job/race.py), without Ray: what it hands out, round by
round, against races worked by hand and a plain re-statement of successive halving."""

from __future__ import annotations

import itertools
import math
import pickle
import random
import statistics

import pytest

from trainables.pareto import Objective, parse_select
from tuner.job.race import CONFIRM_SEED, FINISHED, Race, race_order, race_trainings


def _points(k: int, seeds: int) -> list[dict]:
    return [{"lr": 0.01 * (c + 1), CONFIRM_SEED: s + 1} for c in range(k) for s in range(seeds)]


def _run(race: Race, value, *, batch: int = 2) -> list[tuple[int, int]]:
    """Drives a race as Tune would with ``batch`` slots: ask for trials until it says wait or finished,
    complete the oldest running one, and so on. Returns (config, seed) in the order handed out;
    ``value(config, seed)`` is what the trial reaches (a dict of its last report)."""
    running: list[tuple[str, dict]] = []
    handed: list[tuple[int, int]] = []
    ids = (f"t{i}" for i in itertools.count())
    while True:
        while len(running) < batch:
            tid = next(ids)
            got = race.suggest(tid)
            if got is None or got == FINISHED:
                break
            running.append((tid, got))
            handed.append((int(got["lr"] / 0.01 + 0.5) - 1, got[CONFIRM_SEED]))
        if not running:
            assert race.suggest(next(ids)) == FINISHED
            return handed
        tid, point = running.pop(0)
        race.complete(tid, value(int(point["lr"] / 0.01 + 0.5) - 1, point[CONFIRM_SEED]))


@pytest.mark.parametrize(("k", "seeds", "expected"), [(1, 3, 3), (2, 2, 3), (3, 2, 5), (3, 3, 6), (4, 3, 7),
                                                       (5, 3, 10), (5, 4, 11), (8, 1, 8)])
def test_the_count_of_trainings_is_the_sum_of_the_halvings(k, seeds, expected):
    assert race_trainings(k, seeds) == expected  # by hand: 3 → 2 → 1; 5 → 3 → 2 → 1; ...


def test_a_race_worked_by_hand():
    # seed 1: c0 0.70, c1 0.75, c2 0.65 → c0 and c1 go on; seed 2: c0 0.72 (mean 0.71), c1 0.60 (mean 0.675)
    # → c0 alone gets seed 3
    values = {(0, 1): 0.70, (1, 1): 0.75, (2, 1): 0.65, (0, 2): 0.72, (1, 2): 0.60, (0, 3): 0.71}
    race = Race(points=_points(3, 3), seeds=3)
    handed = _run(race, lambda c, s: {"objective": values[(c, s)]})
    assert handed == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 3)]
    assert len(handed) == race_trainings(3, 3)


def test_a_round_waits_for_its_last_result_and_the_last_config_gets_its_seeds_at_once():
    race = Race(points=_points(2, 3), seeds=3)
    first = [race.suggest("a"), race.suggest("b")]
    assert [p[CONFIRM_SEED] for p in first] == [1, 1]
    assert race.suggest("c") is None  # seed 1 of both is not in yet
    race.complete("a", {"objective": 0.6})
    assert race.suggest("c") is None
    race.complete("b", {"objective": 0.8})
    rest = [race.suggest("c"), race.suggest("d")]  # b alone: seeds 2 and 3 at once, no round between
    assert [(p["lr"], p[CONFIRM_SEED]) for p in rest] == [(0.02, 2), (0.02, 3)]
    assert race.suggest("e") is None
    race.complete("c", {"objective": 0.7})
    race.complete("d", {"objective": 0.7})
    assert race.suggest("e") == FINISHED


def test_a_failed_trial_counts_as_the_worst_and_ties_keep_the_searchs_order():
    race = Race(points=_points(3, 2), seeds=2)
    handed = _run(race, lambda c, s: {"objective": 0.8} if c == 0 else ({} if c == 1 else {"objective": 0.8}))
    assert handed[3:] == [(0, 2), (2, 2)]  # c1 has no score; c0 and c2 tie, both go on (keep 2 of 3)
    race = Race(points=_points(2, 2), seeds=2)
    assert _run(race, lambda c, s: {"objective": 0.5})[2:] == [(0, 2)]  # a tie of two: the earlier config
    race = Race(points=_points(2, 2), seeds=2)
    ids = iter("abcd")
    a, b = next(ids), next(ids)
    race.suggest(a), race.suggest(b)
    race.complete(a, {"objective": 0.9}, error=True)  # errored: whatever it reported last does not count
    race.complete(b, {"objective": 0.1})
    assert race.suggest("c")["lr"] == 0.02


def _halving(means_by_round, k: int, seeds: int) -> list[tuple[int, int]]:
    """Successive halving over seeds, restated: all configs seed 1; after each round, the ceil(n/2) best
    by mean so far (the earlier config on a tie) get the next seed."""
    alive, handed = list(range(k)), []
    for s in range(1, seeds + 1):
        handed += [(c, s) for c in alive]
        means = {c: statistics.mean(means_by_round[(c, t)] for t in range(1, s + 1)) for c in alive}
        alive = sorted(sorted(alive, key=lambda c: (-means[c], c))[:math.ceil(len(alive) / 2)])
    return handed


@pytest.mark.parametrize("seed", range(20))
def test_random_races_hand_out_what_successive_halving_says(seed):
    rng = random.Random(seed)
    k, seeds = rng.randint(1, 6), rng.randint(1, 4)
    values = {(c, s): round(rng.uniform(0.5, 0.9), 3) for c in range(k) for s in range(1, seeds + 1)}
    handed = _run(Race(points=_points(k, seeds), seeds=seeds), lambda c, s: {"objective": values[(c, s)]},
                  batch=rng.randint(1, 4))
    assert sorted(handed) == sorted(_halving(values, k, seeds))
    assert len(handed) == race_trainings(k, seeds)


def test_with_several_objectives_the_rule_orders_the_configs():
    objectives = [Objective("val/auroc", "max"), Objective("val/ece", "min")]
    # seed 1: c0 (0.90, 0.20), c1 (0.85, 0.05), c2 (0.80, 0.10: dominated by c1), c3 fails
    reached = {0: (0.90, 0.20), 1: (0.85, 0.05), 2: (0.80, 0.10)}

    def value(c, s):
        return {} if c == 3 else {"objective": 0.0, "best/val/auroc": reached[c][0], "best/val/ece": reached[c][1]}

    # "min val/ece": c1 first, then c0 (also on the front); c2 and c3 are out
    race = Race(points=_points(4, 2), seeds=2, objectives=objectives, selection=parse_select("min val/ece"))
    assert _run(race, value)[4:] == [(0, 2), (1, 2)]
    # a constraint only c0 meets: c0, then the others in the search's order (c1)
    race = Race(points=_points(4, 2), seeds=2, objectives=objectives, selection=parse_select("val/auroc>=0.88"))
    assert _run(race, value)[4:] == [(0, 2), (1, 2)]
    values = [{"val/auroc": 0.80, "val/ece": 0.10}, {"val/auroc": math.nan, "val/ece": 0.01},
              {"val/auroc": 0.85, "val/ece": 0.05}]
    assert race_order(values, objectives, parse_select("")) == [2, 0, 1]  # c1 has no AUROC: last


def test_a_race_saved_mid_way_goes_on_where_it_stopped():
    values = {(c, s): 0.5 + 0.01 * ((7 * c + 3 * s) % 11) for c in range(5) for s in range(1, 4)}

    def value(c, s):
        return {"objective": values[(c, s)]}

    whole = _run(Race(points=_points(5, 3), seeds=3), value, batch=1)
    race = Race(points=_points(5, 3), seeds=3)
    handed = []
    for i in range(6):  # six trials in, one still running when the job stops
        point = race.suggest(f"t{i}")
        handed.append(point)
        if i < 5:
            race.complete(f"t{i}", value(int(point["lr"] / 0.01 + 0.5) - 1, point[CONFIRM_SEED]))
    race = pickle.loads(pickle.dumps(race))
    race.complete("t5", value(int(handed[5]["lr"] / 0.01 + 0.5) - 1, handed[5][CONFIRM_SEED]))
    rest = _run(race, value, batch=1)
    done = [(int(p["lr"] / 0.01 + 0.5) - 1, p[CONFIRM_SEED]) for p in handed]
    assert done + rest == whole


def test_two_arms_races_share_the_slots_each_round_leaves_idle():
    from tuner.job.race import Races

    stack = {(0, 1): 0.8, (1, 1): 0.7, (0, 2): 0.8, (0, 3): 0.8}
    base = {(0, 1): 0.6, (1, 1): 0.65, (1, 2): 0.6, (1, 3): 0.6}
    races = Races({"stack": Race(points=_points(2, 3), seeds=3), "baseline": Race(points=_points(2, 3), seeds=3)})
    got = [races.suggest(t) for t in ("a", "b", "c", "d")]
    assert [(p["arm"], p[CONFIRM_SEED]) for p in got] == [("stack", 1), ("stack", 1), ("baseline", 1), ("baseline", 1)]
    assert races.suggest("e") is None  # both arms wait for their seed-1 results
    races.complete("a", {"objective": stack[(0, 1)]})
    races.complete("b", {"objective": stack[(1, 1)]})
    nxt = races.suggest("e")  # the stack's round is over while the baseline's is not: its next seed goes out
    assert (nxt["arm"], nxt["lr"], nxt[CONFIRM_SEED]) == ("stack", 0.01, 2)
    for t, v in (("c", base[(0, 1)]), ("d", base[(1, 1)])):
        races.complete(t, {"objective": v})
    rest = [races.suggest(t) for t in ("f", "g", "h", "i")]
    assert [(p["arm"], p["lr"], p[CONFIRM_SEED]) for p in rest[:3]] == [
        ("stack", 0.01, 3), ("baseline", 0.02, 2), ("baseline", 0.02, 3)]
    assert rest[3] is None  # everything handed out; the last results are not in
    for t in ("e", "f", "g", "h"):
        races.complete(t, {"objective": 0.5})
    assert races.suggest("j") == FINISHED


def test_a_confirmation_run_keeps_as_many_trials_ready_as_the_runtime_has_slots(monkeypatch):
    """Ray 2.60 lets a run with a searcher and no concurrency limit hold one pending trial, which
    with short trials kept a job on one worker; a job's runs hold as many as it has slots, and a
    user's own TUNE_MAX_PENDING_TRIALS_PG wins. Asked of Ray's own function, as its controller does."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials

    from tuner.job.launch import RunSpec, _search_alg, pending_trials
    from tuner.job.sealed_search import SeedRace

    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    points = [{"seed": s} for s in range(4)]
    alg = _search_alg(RunSpec(parts=("job", "confirm"), num_samples=4, searcher=SeedRace(Race(points=points, seeds=2))))
    assert _get_max_pending_trials(alg) == 1  # Ray's default: the run trains one trial at a time
    with pending_trials(3):
        assert _get_max_pending_trials(alg) == 3
    assert _get_max_pending_trials(alg) == 1  # restored after the job
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "5")
    with pending_trials(3):
        assert _get_max_pending_trials(alg) == 5
    limited = _search_alg(RunSpec(parts=("job",), num_samples=4, concurrency=2,
                                  searcher=SeedRace(Race(points=points, seeds=2))))
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG")
    assert _get_max_pending_trials(limited) == 2  # --concurrency: Ray reads the limit itself
