"""One vocabulary for what a trial reports and a job records: statuses, metric keys, target flags.

The trainer writes these words, the tuner, MLflow, the CSV and the summaries read them; each is
spelled here once. Report keys use ``/`` (``target/all_met``); MLflow keys of the same facts use
``.`` where MLflow would otherwise nest them in its UI (``target.all_met``): ``mlflow_key`` maps one
to the other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

__all__ = ["Status", "JobState", "trial_status", "SELECTABLE", "SCORE", "OBJECTIVE", "BEST_EPOCH", "TARGET_METRICS",
           "target_flag", "ALL_MET", "EPOCH_REACHED", "mlflow_key", "targets_met", "TARGET_PREFIX",
           "METRIC_MEANING", "OBJECTIVE_METRICS", "ARM_KEY"]


class Status(str, Enum):
    """How a trial (or a job) ended; the value is the one spelling used everywhere."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # ran every epoch
    EARLY_STOPPED = "early-stopped"  # the trainer's own early stopping (patience)
    STOPPED = "stopped"  # stopped from outside: ASHA, --stop-on-target, an interrupted job
    DIVERGED = "diverged"  # a loss turned NaN or infinite
    FAILED = "failed"  # the worker raised or died more often than --max-failures

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status of a trial that ended so."""
        return {Status.FAILED: "FAILED", Status.STOPPED: "KILLED", Status.RUNNING: "RUNNING",
                Status.PENDING: "RUNNING"}.get(self, "FINISHED")

    @property
    def produced_model(self) -> bool:
        return self not in (Status.DIVERGED, Status.FAILED, Status.PENDING)

    def __str__(self) -> str:
        return self.value


class JobState(str, Enum):
    """How a whole job ended (its exit status and its MLflow run status follow from it)."""

    FINISHED = "finished"
    STOPPED_ON_TARGET = "stopped on target"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: resumable, the held-out split untouched
    FAILED = "failed"  # no trial produced a model
    NO_SELECTION = "no model selected"  # several objectives: no front member meets --select

    @property
    def exit_code(self) -> int:
        return {JobState.INTERRUPTED: 130, JobState.FAILED: 1, JobState.NO_SELECTION: 1}.get(self, 0)

    @property
    def mlflow_status(self) -> str:
        return {JobState.INTERRUPTED: "KILLED", JobState.FAILED: "FAILED"}.get(self, "FINISHED")  # NO_SELECTION ran

    def __str__(self) -> str:
        return self.value


def trial_status(reported: Any, *, errored: bool = False) -> Status:
    """How a trial ended, from the status of its last report: a trial whose last report said
    ``running`` was stopped from outside (ASHA, --stop-on-target, an interrupted job)."""
    if errored:
        return Status.FAILED
    if reported in (None, "", Status.RUNNING.value, Status.PENDING.value):
        return Status.STOPPED
    if reported == "early_stopped":  # the trainer's spelling before the vocabulary
        return Status.EARLY_STOPPED
    try:
        return Status(str(reported))
    except ValueError:
        return Status.STOPPED


SCORE = "val/score"
# What a search may maximise. val/score_ece = val/score − val/ECE: ranking and calibration of the
# probabilities as trained (before post-hoc calibration), for scenarios whose probabilities drive a decision.
SELECTABLE = ("val/score", "val/auroc", "val/auprc", "val/score_ece")
# What each selectable metric is, in the words every summary and report uses beside it.
METRIC_MEANING = {"val/score": "(AUROC + AUPRC) / 2", "val/auroc": "AUROC", "val/auprc": "AUPRC",
                  "val/score_ece": "(AUROC + AUPRC) / 2 − ECE, so that calibration counts",
                  "val/ece": "expected calibration error (lower is better)"}
# What --objectives may name: every validation metric a trial reports at its best epoch (best/val/*).
OBJECTIVE_METRICS = ("val/auroc", "val/auprc", "val/ece", "val/score", "val/score_ece")
OBJECTIVE = "objective"  # the best value of the selected metric over a trial's epochs so far
BEST_EPOCH = "best/epoch"
# the trial config key naming a trial's arm when several arms share a Tune run (the confirmation)
ARM_KEY = "arm"
TARGET_METRICS = ("auroc", "auprc")
TARGET_PREFIX = "target/"
ALL_MET = "target/all_met"
EPOCH_REACHED = "target/epoch_reached"


def target_flag(metric: str) -> str:
    """``target/auroc_met``: 1 once the metric reached its target on validation."""
    return f"{TARGET_PREFIX}{metric}_met"


def mlflow_key(report_key: str) -> str:
    """The MLflow metric name of a report key: ``target/all_met`` → ``target.all_met``."""
    return report_key.replace(TARGET_PREFIX, "target.", 1) if report_key.startswith(TARGET_PREFIX) else report_key


def targets_met(values: Mapping[str, Any], targets: Mapping[str, float | None]) -> dict[str, bool]:
    """The one place that decides whether targets are met: ``{metric: value >= goal}`` for each
    metric with a goal, plus ``all``. ``values`` holds ``auroc``/``auprc`` (a NaN or missing value
    never meets a target). Empty when no target is set."""
    out: dict[str, bool] = {}
    for name in TARGET_METRICS:
        goal = targets.get(name)
        if goal is None:
            continue
        v = values.get(name)
        out[name] = isinstance(v, (int, float)) and not math.isnan(float(v)) and float(v) >= goal
    if out:
        out["all"] = all(out.values())
    return out
