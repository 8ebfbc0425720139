"""A job's arms and how their winners are confirmed.

A job tunes its loss stack and, beside it, a plain baseline arm (BCE, one head, no teacher) with
the same data, splits, network, epochs and scheduler. After both searches, each arm's top K configs
(by validation score) are trained again with up to S fresh training seeds on the same splits, as Ray
trials, in a race (``tuner.job.race``: every config gets seed 1, the better half the next seed, and so
on); the arm's winner is the config with the best *mean* validation score over its seeds among those
the race gave the most seeds, never the best seed (METHODS.md, "Seeds"). Its test metrics are reported
as mean ± sd over the seeds and its test probabilities averaged over the seeds for the paired
comparisons.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from search_spaces import SearchSpace
from trainables.compare import ScoreCache, bootstrap_draws, paired_differences, seed_summary
from trainables.config import Config
from trainables.data import PreparedData
from trainables.pareto import Objective, Selection, non_dominated, parse_select, rank
from trainables.reference import fit_reference_models
from trainables.tune_trainable import TrialInputs, train_trial
from trainables.vocab import ARM_KEY, Status
from tuner.cluster.storage import Storage
from tuner.core.summary import BASELINE, STACK
from tuner.job.interrupts import Interrupts
from tuner.job.launch import (
    RunSpec,
    fit_run,
    make_tuner,
    reporter,
    runs_at_once,
    scheduler,
    searcher,
    trial_numbers_callback,
)
from tuner.job.outcome import TrialRow, TuneOutcome, rows_from_grid
from tuner.job.plan import TuneJob, baseline_space, fixed_values
from tuner.job.race import CONFIRM_SEED, Race, Races
from tuner.job.sealed_search import SeedRace
from tuner.job.slots import SlotShare, share_of, sharing_slots
from tuner.job.winner import Winner, compare_with_references, evaluate_checkpoint
from tuner.record.records import JobRecords

if TYPE_CHECKING:
    from ray.tune import ResultGrid
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

__all__ = ["STACK", "BASELINE", "CONFIRM_SEED", "Confirmed", "top_configs", "mark_front", "confirmation_points",
           "confirm", "slot_key"]

CONFIRM_RUN = "confirm"  # the Tune run (a folder in the job's) of both arms' confirmation races
# The baseline arm's trainable has a name of its own: Ray registers a run's trainable by name, once per
# runtime, and the baseline's search runs beside the stack's (whose trainable is ``train_trial``).
BASELINE_TRAINABLE = "train_baseline"
BASELINE_AS_TRAINED = "baseline_as_trained"  # the lifts of probabilities before post-hoc calibration
FIRST_SEED = 1  # confirmation seeds are 1..S: never the search's own seed, whose luck chose the config
TEST_METRICS = ("auroc", "auprc", "ece", "ece_calibrated", "brier_calibrated")


def top_configs(rows: Sequence[TrialRow], k: int, objectives: Sequence[Objective] = (),
                selection: Selection | None = None) -> list[TrialRow]:
    """The ``k`` trials of a search that an arm confirms, among those that produced a model: the best
    validation scores; with several ``objectives``, the front members the ``selection`` rule ranks
    first (``trainables.pareto.rank``; empty when none meets its constraints)."""
    done = [r for r in _with_model(rows) if not math.isnan(r.objective)]
    if not objectives:
        return sorted(done, key=lambda r: -r.objective)[:k]
    order = rank([r.metrics for r in done], objectives, selection or Selection((), None))
    return [done[i] for i in order][:k]


def mark_front(rows: Sequence[TrialRow], objectives: Sequence[Objective]) -> None:
    """Sets ``pareto`` on the trials no other trial with a model dominates (their validation values at
    the epoch best for the first objective; a trial without a model is never on the front)."""
    done = _with_model(rows)
    values = np.array([[_value(r.metrics, o.metric) for o in objectives] for r in done], dtype=np.float64)
    front = non_dominated(values, objectives) if len(done) else np.zeros(0, dtype=bool)
    for r in rows:
        r.pareto = False
    for r, on in zip(done, front):
        r.pareto = bool(on)


def _with_model(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The trials that produced a model and kept its checkpoint."""
    return [r for r in rows if Status(r.status).produced_model and r.checkpoint]


def _value(metrics: dict[str, Any], metric: str) -> float:
    v = metrics.get(metric)
    return float(v) if isinstance(v, (int, float)) else math.nan


def confirmation_points(top: Sequence[TrialRow], seeds: int, base_flat: dict[str, Any]) -> list[dict[str, Any]]:
    """One full point (every searched key, so nothing is sampled) per config and seed."""
    keys = sorted({k for r in top for k in r.config})
    points = []
    for r in top:
        values = {k: r.config.get(k, base_flat.get(k)) for k in keys}  # a key a config lacks: the base value
        points += [{**values, CONFIRM_SEED: FIRST_SEED + s} for s in range(seeds)]
    return points


def _key(config: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k != CONFIRM_SEED))


@dataclass
class Confirmed:
    """An arm's confirmed winner: the config with the best mean validation score over its seeds."""

    arm: str
    source_trial: str  # the search trial whose config it is
    config: dict[str, Any]  # its searched values
    seeds: list[int]
    val: tuple[float, float]  # validation score: mean, sd over seeds
    test: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric → (mean, sd) over seeds
    best_seed_row: TrialRow | None = None  # the deployed model: the seed with the best validation score
    deployed: dict[str, float] = field(default_factory=dict)  # its test metrics (TEST_METRICS)
    rows: list[TrialRow] = field(default_factory=list)  # every confirmation trial of the arm
    by_config: list[dict[str, Any]] = field(default_factory=list)  # per config: source trial, val mean/sd
    met_on_means: bool | None = None  # several objectives: a config met --select's constraints on its seed means

    @property
    def deployed_seed(self) -> int | None:
        row = self.best_seed_row
        return int(row.config[CONFIRM_SEED]) if row is not None and CONFIRM_SEED in row.config else None

    def to_dict(self) -> dict[str, Any]:
        return {"arm": self.arm, "source_trial": self.source_trial, "config": self.config, "seeds": self.seeds,
                "val_mean": self.val[0], "val_sd": self.val[1],
                **{f"test_{k}_mean": m for k, (m, _) in self.test.items()},
                **{f"test_{k}_sd": s for k, (_, s) in self.test.items()},
                **{f"deployed_test_{k}": v for k, v in self.deployed.items()},
                "deployed_trial": self.best_seed_row.trial_id if self.best_seed_row else None,
                "deployed_seed": self.deployed_seed, "configs": self.by_config, "met_on_means": self.met_on_means}



def confirm(arm: str, top: Sequence[TrialRow], points: Sequence[dict[str, Any]], rows: Sequence[TrialRow],
            evaluate: Callable[[TrialRow], Winner], objectives: Sequence[Objective] = (),
            selection: Selection | None = None) -> Confirmed | None:
    """Pick the arm's winner from its confirmation trials (``rows``, run from ``points``, which
    ``confirmation_points`` made from ``top``): of the configs the race gave the most seeds (its
    finalists; every config when all got the same), the one with the best mean validation score, and
    of its seeds the one with the best validation score as the deployed model. Each of its seeds is
    evaluated on the test split (``evaluate(row) -> holdout metrics``) for the seed mean ± sd.

    With several ``objectives`` the ``selection`` rule chooses among the finalists' seed means (their
    front, then the rule), and among the chosen config's seeds; when no finalist meets its constraints
    on its seed means, the finalist the search ranked first stays, and ``met_on_means`` says so."""
    per_config = len(points) // len(top) if top else 1
    keys = {_key(p): n // per_config for n, p in enumerate(points)}
    given: dict[int, int] = {}  # per config: the seeds the race gave it (a failed one too)
    for r in rows:
        i = keys.get(_key(r.config))
        if i is not None:
            given[i] = given.get(i, 0) + 1
    groups: dict[int, list[TrialRow]] = {}
    for r in _with_model(rows):
        i = keys.get(_key(r.config))
        if i is not None:
            groups.setdefault(i, []).append(r)
    if not groups:
        return None
    by_config = []
    order = sorted(groups)
    most = max(given[i] for i in order)
    finalists = [i for i in order if given[i] == most] or order  # a config dropped by the race never wins
    means = [{o.metric: seed_summary([_value(r.metrics, o.metric) for r in groups[i]]) for o in objectives}
             for i in order]
    for i, m in zip(order, means):
        mean, sd = seed_summary([r.objective for r in groups[i]])
        by_config.append({"source_trial": top[i].trial_id, "val_mean": mean, "val_sd": sd, "seeds": len(groups[i]),
                          "seeds_given": given[i], "finalist": i in finalists,
                          **({"objectives": {k: list(v) for k, v in m.items()}} if objectives else {})})
    met_on_means = None
    if objectives:
        rule = selection or Selection((), None)
        final_means = [m for i, m in zip(order, means) if i in finalists]
        ranked = rank([{k: v[0] for k, v in m.items()} for m in final_means], objectives, rule)
        met_on_means = bool(ranked)
        best = finalists[ranked[0]] if ranked else finalists[0]
        chosen = groups[best]
        seeds = rank([r.metrics for r in chosen], objectives, rule) or \
            rank([r.metrics for r in chosen], objectives, Selection((), rule.optimise))
        deployed = chosen[seeds[0]] if seeds else max(chosen, key=lambda r: r.objective)
    else:
        best = max(finalists, key=lambda i: seed_summary([r.objective for r in groups[i]])[0])
        chosen = groups[best]
        deployed = max(chosen, key=lambda r: r.objective)
    results = {r.trial_id: evaluate(r) for r in chosen}
    return Confirmed(arm=arm, source_trial=top[best].trial_id, config=dict(top[best].config),
                     seeds=sorted(int(r.config[CONFIRM_SEED]) for r in chosen),
                     val=seed_summary([r.objective for r in chosen]),
                     test={m: seed_summary([float(h[f"test/{m}"]) for h in results.values()]) for m in TEST_METRICS},
                     best_seed_row=deployed,
                     deployed={m: float(results[deployed.trial_id][f"test/{m}"]) for m in TEST_METRICS},
                     rows=list(rows), by_config=by_config, met_on_means=met_on_means)


def slot_key(job: TuneJob) -> str:
    """The key under which a job's arms share the slots while both search (``tuner.job.slots``)."""
    return str(job.storage.ray_path(job.experiment))


def baseline_started_by_older_losstune(storage: Storage, experiment: str) -> bool:
    """Whether a job's baseline arm was started by a losstune that ran it after the stack's search,
    with the stack's trainable name (its trial folders say so): Tune restores a run only with the
    trainable name it began with, and two runs with one name cannot run at once (Ray registers a
    trainable by name), so such a run is finished after the stack's search, as it began."""
    from pyarrow import fs as pafs

    try:
        infos = (storage.fs or pafs.LocalFileSystem()).get_file_info(
            pafs.FileSelector(storage.ray_path(experiment, BASELINE), allow_not_found=True))
    except (OSError, ValueError):  # unreadable now: restoring the run will say why
        return False
    return any(i.type == pafs.FileType.Directory and i.base_name.startswith("train_trial_") for i in infos)


class ArmRunner:
    """Runs a job's other arms in the same Ray runtime and under the same MLflow parent (child runs
    tagged ``losstune.arm``): the baseline arm's search beside the stack's (``beside_the_stack``),
    then both arms' confirmation races in one run, each a Tune experiment inside the job's
    experiment folder (``baseline``, ``confirm``) that ``--resume`` restores or starts; then
    evaluates every arm's winner on the test split."""

    def __init__(self, job: TuneJob, data: PreparedData, inputs: TrialInputs, *, trainable: Callable | None,
                 records: JobRecords | None, verbose: int, interrupts: Interrupts, slots: int = 1) -> None:
        self.job, self.data, self.inputs, self.trainable = job, data, inputs, trainable
        self.records, self.verbose, self.interrupts, self.slots = records, verbose, interrupts, slots
        self._references: dict[str, Any] = {}  # beside the last arm's search: models, draws, scores; or the error
        self._fitting: threading.Thread | None = None
        self.points: dict[str, list[dict[str, Any]]] = {}
        self.top: dict[str, list[TrialRow]] = {}
        self._baseline: dict[str, Any] | None = None  # the baseline arm's search, once run: its grid and wall time
        self._older: bool | None = None  # its run was begun by an older losstune (``_started_by_older_losstune``)

    # ---- searches
    @contextmanager
    def beside_the_stack(self) -> Iterator[None]:
        """The baseline arm's search, in a thread of its own while the stack's search runs in the main
        thread (the block): two Tune runs in one Ray runtime, so that one arm's trials take the slots
        the other's leave idle (its workers starting, its last trials alone) instead of waiting for
        it. The block's end waits for the baseline's search; a block that raises stops it first (as a
        Ctrl-C does, its state saved for ``--resume``), and so does ``stop_beside`` (the stack's search
        produced no model: the job fails, its baseline is not needed).

        A job whose ``--select`` rule has constraints runs its baseline after the stack's search, as
        before: such a rule may select no model, and then the job spends nothing on a baseline."""
        if BASELINE not in self.job.arms or self.interrupts.received or self._started_by_older_losstune() \
                or (self.job.spec.objectives and parse_select(self.job.spec.select).constraints) \
                or not runs_at_once():  # (this Ray could not stop it on Ctrl-C, or register it safely)
            yield
            return
        done: dict[str, Any] = {}

        def search(share: SlotShare) -> None:
            try:
                started = time.time()
                done["grid"] = self._baseline_search()
                done["wall"] = time.time() - started
            except BaseException as exc:  # handed to the main thread
                done["error"] = exc
            finally:
                share.done(BASELINE)
                if "error" not in done and not self.interrupts.received:
                    self._references_beside(share)

        with sharing_slots(slot_key(self.job), slots=self.slots, arms=(STACK, BASELINE)) as share:
            thread = threading.Thread(target=search, args=(share,), name="losstune-baseline-search", daemon=True)
            thread.start()
            try:
                yield
            except BaseException:
                self.interrupts.stop_threads()
                thread.join(timeout=10)  # a second Ctrl-C ends the job at once: Tune's last saved state resumes it
                raise
            thread.join()
        if "error" in done:
            raise done["error"]
        self._baseline = done

    def stack_searched(self) -> None:
        """The stack's search ended: the baseline's search, if it runs beside, may take its slots."""
        share = share_of(slot_key(self.job))  # registered while the baseline's search runs beside
        if share is not None:
            share.done(STACK)
            if not self.interrupts.received:
                self._references_beside(share)

    def _references_beside(self, share: SlotShare) -> None:
        """Fits the reference models in a thread when one arm's search has ended and the other's still
        runs: that arm keeps its share of the slots (``tuner.job.slots``), so a core is free until the
        confirmation starts, and the job's evaluation then finds them fit. A job's evaluation took
        about 3.5 s less (importing scikit-learn and fitting both models; 20,000 rows, 5 labels), and
        scoring them on the bootstrap draws there too saves more; fitting them in a thread while every
        slot trains or beside the evaluation's own scoring did not pay (README)."""
        if self._fitting is not None or not share.searching:
            return

        def fit() -> None:
            try:
                seed, test = self.job.spec.seed, self.data.test
                models = fit_reference_models(self.data, seed=seed)
                # and their scores on the job's bootstrap draws: their comparisons then score the winner only
                y = test.y.detach().cpu().numpy()
                draws, scored = bootstrap_draws(y, seed=seed), ScoreCache()
                for model in models.values():
                    scored.add(y, model.predict_proba(test.x.detach().cpu().numpy()), draws=draws,
                               metrics=Winner.COMPARED)
                self._references.update(models=models, draws=draws, scored=scored)
            except Exception as exc:  # raised where the models are used, as when fit there
                self._references["error"] = exc

        self._fitting = threading.Thread(target=fit, name="losstune-reference-models", daemon=True)
        self._fitting.start()

    def _fit_references(self) -> dict[str, Any] | None:
        """The reference models fit beside the last search, the job's draws and their scores on them;
        None when they were not (then they are fit when compared)."""
        if self._fitting is None:
            return None
        self._fitting.join()
        if "error" in self._references:
            raise self._references["error"]
        return self._references

    def stop_beside(self) -> None:
        """Stops the baseline's search running beside the stack's (its state saved)."""
        self.interrupts.stop_threads()

    def _baseline_search(self) -> ResultGrid:
        job = self.job
        arm = job.arms[BASELINE]
        space = baseline_space(Config.from_dict(job.base_config), fixed_values(job.spec))
        return self._fit(BASELINE, arm["base_config"], arm["searched"], num_samples=job.spec.baseline_trials,
                         searcher=self._optuna(space),
                         trainable_name=None if self._started_by_older_losstune() else BASELINE_TRAINABLE,
                         share=(slot_key(job), BASELINE))

    def _started_by_older_losstune(self) -> bool:
        if self._older is None:  # one listing of the baseline's folder (on object storage, a request)
            self._older = baseline_started_by_older_losstune(self.job.storage, self.job.experiment)
        return self._older

    def run(self, outcome: TuneOutcome) -> None:
        job, spec = self.job, self.job.spec
        if BASELINE in job.arms and self._baseline is None and not self.interrupts.received:
            started = time.time()  # not run beside the stack's search (a run an older losstune began)
            self._baseline = {"grid": self._baseline_search(), "wall": time.time() - started}
        if self._baseline is not None:  # its trials, an interrupted search's too
            arm = job.arms[BASELINE]
            outcome.wall_by_part[BASELINE] = self._baseline["wall"]
            outcome.arm_rows[BASELINE] = rows_from_grid(self._baseline["grid"], job, arm["searched"],
                                                        folder=job.path / BASELINE)
        k, seeds = spec.compare.confirm_top, spec.compare.confirm_seeds
        if not k:
            return
        baseline_config = job.arms.get(BASELINE, {}).get("base_config")
        objectives = spec.objective_list
        races: dict[str, Race] = {}
        bases: dict[str, dict[str, Any]] = {}
        for arm, rows, base in ((STACK, outcome.rows, job.base_config),
                                (BASELINE, outcome.arm_rows.get(BASELINE), baseline_config)):
            if self.interrupts.received or not rows:
                continue
            top = self.top_of(arm, rows, k)
            if not top:
                continue
            points = confirmation_points(top, seeds, Config.from_dict(base).flat())
            self.top[arm], self.points[arm], bases[arm] = top, points, base
            races[arm] = Race(points=points, seeds=seeds, objectives=objectives,
                              selection=parse_select(spec.select) if objectives else None)
        if not races or self.interrupts.received:
            return
        # one Tune run for the arms' races: one arm's trials fill the slots the other's round leaves idle
        searched = sorted({key for points in self.points.values() for key in points[0]})
        started = time.time()
        grid = self._fit(CONFIRM_RUN, job.base_config, searched, num_samples=sum(len(p) for p in self.points.values()),
                         searcher=SeedRace(Races(races)), arm_base_configs=bases)
        outcome.wall_by_part["confirm"] = time.time() - started
        results = list(grid)
        for arm in races:
            mine = [r for r in results if (r.config or {}).get(ARM_KEY) == arm]
            outcome.confirm_rows[arm] = rows_from_grid(mine, job, searched, folder=job.path / CONFIRM_RUN)

    def top_of(self, arm: str, rows: Sequence[TrialRow], k: int) -> list[TrialRow]:
        """The ``k`` configs of an arm's search to confirm (``top_configs``). With several objectives the
        baseline arm, which needs a winner to be compared with, drops the rule's constraints when none of
        its front members meets them; the stack's selection never does (the job then selects no model)."""
        objectives = self.job.spec.objective_list
        if not objectives:
            return top_configs(rows, k)
        rule = parse_select(self.job.spec.select)
        top = top_configs(rows, k, objectives, rule)
        if not top and arm != STACK:
            top = top_configs(rows, k, objectives, Selection((), rule.optimise))
        return top

    def _optuna(self, space: SearchSpace) -> OptunaSearch:
        # not the stack's seed: the arms must not walk the same sequence of configs
        return searcher(self.job, space, self.job.spec.seed + 1)

    def _fit(self, name: str, base_config: dict[str, Any], searched: list[str], *, num_samples: int,
             searcher: Searcher, arm_base_configs: dict[str, dict[str, Any]] | None = None,
             trainable_name: str | None = None, share: tuple[str, str] | None = None) -> ResultGrid:
        """A search (the job's scheduler) or the confirmation (``CONFIRM_RUN``: the arms' races of given
        points, each trial's ``arm`` key picking its base config from ``arm_base_configs``, every
        trial trained to the end). A resumed job restores the run where it stopped. ``trainable_name``:
        the name Ray registers the trainable under, when it is not the trainable's own; ``share``: the
        (key, arm) of the slots it shares with the stack's search (``tuner.job.slots``)."""
        import dataclasses

        from ray import tune

        job = self.job
        inputs = dataclasses.replace(self.inputs, base_config=base_config, arm_base_configs=arm_base_configs or {})
        fn = tune.with_parameters(tune.with_resources(self.trainable or train_trial, job.resources), inputs=inputs)
        if trainable_name:
            fn.__name__ = trainable_name
        callbacks = [trial_numbers_callback(job.path / name)]
        confirming = name == CONFIRM_RUN
        if self.records is not None:
            from tuner.record.callback import TrialSpooler

            callbacks.append(TrialSpooler(
                base_config=base_config, spool_path=str(self.records.spool_path), arm_base_configs=arm_base_configs,
                tags={"losstune.arm": name, "losstune.phase": "confirm" if confirming else "search"}))
        res = job.spec.resources
        run = RunSpec(parts=(job.experiment, name), num_samples=num_samples, searcher=searcher,
                      scheduler=None if confirming else scheduler(job), concurrency=res.concurrency,
                      max_failures=res.max_failures, reporter=reporter(searched, job.spec.metric), verbose=self.verbose,
                      callbacks=callbacks, share=share)
        return fit_run(make_tuner(fn, job.storage, run), job.storage, run)

    # ---- the test split
    def evaluate(self, outcome: TuneOutcome) -> None:
        """Each arm's winner on the test split. The stack's deployed model is the job's winner;
        every comparison with an interval — against the baseline arm's deployed model and the
        reference models, with the same bootstrap draws — is between deployed models (METHODS.md,
        "One winner"); the seed mean ± sd of each arm's config is reported beside them."""

        seen: dict[str, Any] = {}

        def on_test(row: TrialRow) -> Winner:
            if row.trial_id not in seen:
                seen[row.trial_id] = evaluate_checkpoint(self.job.storage, row.checkpoint, row.trial_id, self.data,
                                                         self.job.spec.targets.goals())
            return seen[row.trial_id]

        for arm, rows in ((STACK, outcome.rows), (BASELINE, outcome.arm_rows.get(BASELINE))):
            final = None
            if outcome.confirm_rows.get(arm) and self.top.get(arm):
                final = confirm(arm, self.top[arm], self.points[arm], outcome.confirm_rows[arm],
                                lambda r: on_test(r).holdout, self.job.spec.objective_list,
                                parse_select(self.job.spec.select))
            if final is None and rows and self.top_of(arm, rows, 1):  # no confirmation: the search's choice, one seed
                best = self.top_of(arm, rows, 1)[0]
                h = on_test(best).holdout
                final = Confirmed(arm=arm, source_trial=best.trial_id, config=dict(best.config),
                                  seeds=[int(self.job.base_config.get("seed", 0))], val=(best.objective, math.nan),
                                  test={m: (float(h[f"test/{m}"]), math.nan) for m in TEST_METRICS},
                                  best_seed_row=best, deployed={m: float(h[f"test/{m}"]) for m in TEST_METRICS})
            if final is not None:
                outcome.confirmed[arm] = final
        stack = outcome.confirmed.get(STACK)
        if stack is None:
            return
        winner = on_test(stack.best_seed_row)
        # one set of bootstrap draws for every comparison of the job: the same resampled test sets
        y = self.data.test.y.detach().cpu().numpy()
        names, refs = list(self.data.label_names), self._fit_references()
        draws = refs["draws"] if refs else bootstrap_draws(y, seed=self.job.spec.seed)
        scored = refs["scored"] if refs else ScoreCache()  # each model's scores on the draws, computed once
        compare_with_references(winner, winner.test_probs, self.data, draws=draws, seed=self.job.spec.seed,
                                cache=scored, models=refs["models"] if refs else None)
        if BASELINE in outcome.confirmed:
            base = on_test(outcome.confirmed[BASELINE].best_seed_row)
            winner.lifts[BASELINE] = paired_differences(y, winner.test_probs, base.test_probs, draws=draws,
                                                        metrics=Winner.COMPARED, label_names=names, cache=scored)
            if winner.test_raw_probs is not None and base.test_raw_probs is not None:  # calibration as trained
                winner.lifts[BASELINE_AS_TRAINED] = paired_differences(y, winner.test_raw_probs, base.test_raw_probs,
                                                                       draws=draws, metrics=("ece",),
                                                                       label_names=names, cache=scored)
        outcome.winner = winner
