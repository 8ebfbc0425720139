"""One job's outcome as data, said once.

``JobSummary`` is built once when a job ends (``tuner.job.finish.summarize``), from its trials, its
arms and its winner on the held-out test split. Every reader renders this same object: the printed
summary (``tuner.present.text``), the MLflow job run's description (``tuner.present.markdown``),
report.html (``tuner.present.html``) and ``losstune best`` (``tuner.cli.best``). It is written to the
job run as one JSON artifact (``summary.json``), which ``best`` reads back: no reader rebuilds the
outcome from metric names.

What became of the records themselves (delivered, kept, refused) is known only after they were sent:
``Delivery`` says it in the printed summary, never in the records.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from trainables.compare import Lift
from trainables.vocab import JobState, Status

__all__ = ["SUMMARY_FILE", "SUMMARY_FORMAT", "STACK", "BASELINE", "TrialLine", "ArmResult", "ArmBudget",
           "WinnerResult", "JobSummary", "Delivery"]

SUMMARY_FILE = "summary.json"  # the job run's artifact
SUMMARY_FORMAT = "losstune-summary-v1"
STACK, BASELINE = "stack", "baseline"


@dataclass(frozen=True)
class TrialLine:
    """A trial of the stack's search, as a person reads it."""

    number: int  # creation order, 0 = the preset
    trial_id: str
    status: str
    epochs: int
    best_epoch: int
    objective: float
    metrics: Mapping[str, Any]  # validation metrics at the best epoch
    all_met: int | None  # every target met on validation (1/0); None when no target was set
    config: Mapping[str, Any]  # its searched values
    pareto: bool = False  # several objectives: on the front (no trial with a model dominates it)


@dataclass(frozen=True)
class ArmResult:
    """An arm's confirmed winner on the test split: its deployed model (the config's seed best on
    validation: what is exported) and the seed mean ± sd of its config."""

    arm: str
    search_trials: int  # trials of the arm's search
    source_trial: str  # the search trial whose config won
    deployed_seed: int | None
    deployed_objective: float  # the deployed model's validation score
    deployed: Mapping[str, float]  # its test metrics: auroc, auprc, ece, ece_calibrated, brier_calibrated
    seeds: int
    val: tuple[float, float]  # validation score: mean, sd over the seeds
    test: Mapping[str, tuple[float, float]]  # metric → (mean, sd) over the seeds
    by_config: tuple[Mapping[str, Any], ...] = ()  # per confirmed config: source trial, seeds, val mean and sd
    met_on_means: bool | None = None  # several objectives: a config met --select's constraints on its seed means


@dataclass(frozen=True)
class ArmBudget:
    """What an arm's search spent (its confirmation is not search)."""

    trials: int
    cpu_s: float
    gpu_s: float

    def words(self) -> str:
        gpu = f", {self.gpu_s:.0f} GPU-s" if self.gpu_s else ""
        return f"{self.trials} trials, {self.cpu_s:.0f} CPU-s{gpu}"


@dataclass(frozen=True)
class WinnerResult:
    """The job's winner, the stack's deployed model, on held-out data, with the models it is compared
    with."""

    trial_id: str
    run_name: str  # its MLflow run's name: ``trial 3 (…)`` or ``stack confirmation 5 (…)``
    best_epoch: int
    val: Mapping[str, Any]  # its validation metrics at its best epoch
    holdout: Mapping[str, float]  # val/* and test/*, temperature, ECE and Brier before and after calibration
    calibration_kinds: tuple[str, ...]  # the calibrations fit, per label: platt, temperature (sorted, once each)
    targets_test: Mapping[str, int]  # target.test_NAME_met
    references: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # reference model → test metrics
    lifts: Mapping[str, tuple[Lift, ...]] = field(default_factory=dict)  # compared model → winner − it
    # per label: thresholds chosen on validation, the test split's figures at each (OperatingPoint.to_dict)
    operating: Mapping[str, tuple[Mapping[str, Any], ...]] = field(default_factory=dict)
    prevalence: Mapping[str, float] = field(default_factory=dict)  # per label: positives' share of the test split

    def macro(self, name: str, metric: str) -> Lift | None:
        return next((x for x in self.lifts.get(name, ()) if x.label == "macro" and x.metric == metric), None)


@dataclass(frozen=True)
class Delivery:
    """What became of the job's MLflow records: said in the printed summary, never in the records."""

    note: str = ""  # where the job's record is (the run's address)
    kept: int = 0  # records still in the job's spool
    refused: tuple[str, ...] = ()  # records the store will never take
    spool: str = ""
    uri_written: bool = True  # the job file holds the tracking URI (one with credentials never is)


@dataclass(frozen=True)
class JobSummary:
    """Everything a reader of a job's outcome is told."""

    experiment: str
    scenario: str
    detection: tuple[str, ...] | None  # why ``auto`` chose the scenario; None when it was given
    metric: str
    num_trials: int
    state: str  # a JobState's value
    wall_s: float
    folder: str  # the job's own files on the driver
    location: str  # where the experiment lives, as the user writes it
    remote: bool  # the experiment lives in object storage
    data_given: str  # the data as the job's spec names it, credentials removed
    data_source: str  # the data as it was read (options spelled out), credentials removed
    data_rows: tuple[int, int, int]  # training, validation, test
    data_fingerprint: str
    targets: Mapping[str, float | None]
    time_budget_s: float | None
    search_keys: tuple[str, ...]  # the searched keys, in the search space's order
    rows: tuple[TrialLine, ...]  # the stack's search, best first
    baseline_planned: bool  # the job has a baseline arm
    stopped_on_target: tuple[str, int] | None = None  # (trial id, epoch)
    winner: WinnerResult | None = None
    arms: Mapping[str, ArmResult] = field(default_factory=dict)  # arm → its confirmed winner
    budgets: Mapping[str, ArmBudget] = field(default_factory=dict)  # arm → its search's budget
    curves: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # arm → best validation score so far
    spent: Mapping[str, float] = field(default_factory=dict)  # budget.*, as recorded
    parts: bool = False  # the job ran more than the stack's search (a baseline arm or confirmations)
    report: bool = False  # report.html was written
    objectives: tuple[str, ...] = ()  # several objectives ("val/auroc:max", …); empty: one, the metric
    select: str = ""  # the rule that chose a model from the front ('' : the knee)
    selected: tuple[str, ...] = ()  # the front members the rule ranks, in order (the first is the selection)

    # ---- what follows from the above
    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    @property
    def done(self) -> int:
        """Trials that ran (the search's pending ones left out)."""
        return sum(r.status != Status.PENDING for r in self.rows)

    @property
    def met(self) -> int:
        """Trials that reached every target on validation."""
        return sum(r.all_met == 1 for r in self.rows)

    @property
    def front(self) -> tuple[TrialLine, ...]:
        """The stack's trials on the front (several objectives), in the order the rule ranks them first."""
        order = {tid: i for i, tid in enumerate(self.selected)}
        return tuple(sorted((r for r in self.rows if r.pareto), key=lambda r: order.get(r.trial_id, len(order))))

    @property
    def has_targets(self) -> bool:
        return any(v is not None for v in self.targets.values())

    def resume_command(self) -> str:
        return f"losstune tune --resume {shlex.quote(self.location)}"

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        if self.winner is not None:
            doc["winner"]["lifts"] = {k: [x.to_dict() for x in v] for k, v in self.winner.lifts.items()}
        return {"format": SUMMARY_FORMAT, **_finite(doc)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> JobSummary:
        """The summary as ``to_dict`` wrote it; a document of another format raises ValueError."""
        if not isinstance(doc, Mapping) or doc.get("format") != SUMMARY_FORMAT:
            raise ValueError(f"not a losstune job summary ({SUMMARY_FORMAT})")
        try:
            d = {k: v for k, v in _nan(doc).items() if k != "format"}
            w = d.get("winner")
            winner = None if w is None else WinnerResult(**{
                **w, "calibration_kinds": tuple(w["calibration_kinds"]),
                "lifts": {k: tuple(Lift(**x) for x in v) for k, v in w["lifts"].items()},
                "operating": {k: tuple(v) for k, v in w.get("operating", {}).items()}})
            return cls(**{
                **d, "detection": None if d["detection"] is None else tuple(d["detection"]),
                "data_rows": tuple(d["data_rows"]), "rows": tuple(TrialLine(**r) for r in d["rows"]),
                "search_keys": tuple(d["search_keys"]),
                "objectives": tuple(d.get("objectives", ())), "selected": tuple(d.get("selected", ())),
                "stopped_on_target": None if d["stopped_on_target"] is None else tuple(d["stopped_on_target"]),
                "winner": winner,
                "arms": {k: ArmResult(**{**a, "val": tuple(a["val"]), "by_config": tuple(a["by_config"]),
                                          "test": {m: tuple(v) for m, v in a["test"].items()}})
                         for k, a in d["arms"].items()},
                "budgets": {k: ArmBudget(**b) for k, b in d["budgets"].items()},
                "curves": {k: tuple(v) for k, v in d["curves"].items()}})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a damaged losstune job summary ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str) -> JobSummary:
        return cls.from_dict(json.loads(text))


# JSON has no NaN: a missing value (the sd of one seed, a trial that never reported) is written as
# {"nan": true} and read back as NaN, so that a round trip renders the same text.
_NAN = {"nan": True}


def _finite(v: object) -> object:
    if isinstance(v, float) and math.isnan(v):
        return dict(_NAN)
    if isinstance(v, float) and math.isinf(v):
        return {"inf": 1 if v > 0 else -1}
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _nan(v: object) -> object:
    if v == _NAN:
        return math.nan
    if isinstance(v, Mapping):
        if set(v) == {"inf"}:
            return math.inf * v["inf"]
        return {k: _nan(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan(x) for x in v]
    return v
