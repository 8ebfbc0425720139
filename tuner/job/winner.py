"""The winner on held-out data, and the exported scenario YAML with its provenance.

The winning trial's best weights (from its last checkpoint) are evaluated on the test split that no
trial ever saw; its calibration is fit on validation. Beside it, the reference models a statistician
would try first (logistic regression, gradient boosting; fit on the same training split) are
evaluated on the same test split, and the winner's lift over each comes with a paired, stratified
bootstrap interval (METHODS.md, "Comparing two models on one test set"). The exported YAML is a preset that
``losstune train --config`` and ``losstune tune --scenario`` accept; its ``provenance`` block
records where it came from and is ignored when loading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainables.compare import ScoreCache, bootstrap_draws, paired_differences
from trainables.config import Config
from trainables.data import PreparedData
from trainables.model import DualHeadModel, model_file_bytes, read_checkpoint
from trainables.operating import operating_points
from trainables.reference import ReferenceModel, evaluate, fit_reference_models
from trainables.trainer import CHECKPOINT_FILE, holdout_evaluation
from trainables.vocab import TARGET_METRICS, targets_met
from tuner import __version__
from tuner.cluster.storage import Storage

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Winner", "evaluate_winner", "evaluate_checkpoint", "winner_yaml", "targets_on", "make_provenance"]


@dataclass
class Winner:
    """A trial's model on the held-out splits: its metrics, calibration, the models it is compared with
    and the lifts over them, and the model file."""

    trial_id: str
    config: Config
    holdout: dict[str, Any]  # val/* and test/* metrics, temperature, ECE and Brier before and after calibration
    targets_test: dict[str, Any]
    model_bytes: bytes  # state dict + temperature + calibration, loadable with weights_only=True
    calibration: dict[str, Any] = field(default_factory=dict)  # Calibration.to_dict()
    references: dict[str, dict[str, float]] = field(default_factory=dict)  # name → test metrics
    lifts: dict[str, list[Any]] = field(default_factory=dict)  # name → [compare.Lift]: winner − reference
    test_probs: Any = field(default=None, repr=False)  # numpy [N, K]: calibrated, for paired comparisons
    test_raw_probs: Any = field(default=None, repr=False)  # numpy [N, K]: before calibration
    # per label: the thresholds chosen on validation and the test split's figures at each (trainables.operating)
    operating: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prevalence: dict[str, float] = field(default_factory=dict)  # per label: positives' share of the test split

    COMPARED = ("auroc", "auprc", "ece", "brier")  # lifts computed; the winner's side is calibrated


def targets_on(split: str, holdout: dict[str, Any], targets: dict[str, float | None]) -> dict[str, Any]:
    """``target.SPLIT_NAME_met`` flags (1/0) of the targets on ``split``'s metrics in ``holdout``."""
    met = targets_met({m: holdout.get(f"{split}/{m}") for m in TARGET_METRICS}, targets)
    return {f"target.{split}_{name}_met": int(ok) for name, ok in met.items()}


def evaluate_winner(checkpoint_dir: str, trial_id: str, data: PreparedData, targets: dict[str, float | None], *,
                    references: bool = True, n_resamples: int = 1000, seed: int = 0) -> Winner:
    """A trial's best weights (its checkpoint in ``checkpoint_dir``) on the validation and test splits,
    calibrated on validation; with ``references``, compared with the reference models."""
    ckpt = read_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
    cfg = Config.from_dict(ckpt["config"], source="winner checkpoint")
    model = DualHeadModel.from_config(cfg.model, input_shape=data.input_shape, n_labels=data.n_labels,
                                      aux_head=cfg.aux_loss.type != "none")
    model.load_state_dict(ckpt["best_model"] or ckpt["model"])
    held = holdout_evaluation(model, data)
    holdout, calibration = held.metrics, held.calibration.to_dict()
    val_y, test_y = data.val.y.detach().cpu().numpy(), data.test.y.detach().cpu().numpy()
    labels = list(data.label_names)
    points = operating_points(held.val_probs, val_y, held.test_probs, test_y, label_names=labels)
    thresholds = {label: {pt.rule: pt.threshold for pt in pts} for label, pts in points.items()}
    winner = Winner(trial_id=trial_id, config=cfg, holdout=holdout, targets_test=targets_on("test", holdout, targets),
                    model_bytes=model_file_bytes(model, temperature=holdout["temperature"], calibration=calibration,
                                                 feature_names=data.feature_names, label_names=data.label_names,
                                                 thresholds=thresholds),
                    calibration=calibration, test_probs=held.test_probs, test_raw_probs=held.test_raw_probs,
                    operating={label: [pt.to_dict() for pt in pts] for label, pts in points.items()},
                    prevalence={label: float(test_y.reshape(len(test_y), -1)[:, k].mean())
                                for k, label in enumerate(labels)})
    if references:
        draws = bootstrap_draws(data.test.y.detach().cpu().numpy(), n_resamples=n_resamples, seed=seed)
        compare_with_references(winner, held.test_probs, data, draws=draws, seed=seed)
    return winner


def evaluate_checkpoint(storage: Storage, checkpoint: str, trial_id: str, data: PreparedData,
                        targets: dict[str, float | None]) -> Winner:
    """A trial's best weights on the held-out splits, its checkpoint fetched from the experiment's
    storage first when it lives in object storage (and the local copy removed after); no reference
    models (those are fitted once per job, for the winner)."""
    folder, fetched = storage.local_checkpoint(checkpoint)
    try:
        return evaluate_winner(folder, trial_id, data, targets, references=False)
    finally:
        if fetched is not None:
            fetched.cleanup()


def compare_with_references(winner: Winner, test_probs: np.ndarray, data: PreparedData, *, draws: np.ndarray,
                            seed: int, cache: ScoreCache | None = None,
                            models: dict[str, ReferenceModel] | None = None) -> None:
    """Reference models on the same test split (fit with ``seed``, unless ``models`` were already fit
    so), and the winner's lift over each, all with the job's one set of bootstrap ``draws``
    (``bootstrap_draws`` of the test labels); ``cache`` keeps the winner's scores on them for the job's
    other comparisons."""
    y = data.test.y.detach().cpu().numpy()
    cache = cache if cache is not None else ScoreCache()  # the winner is scored once for every reference
    for name, ref in (models if models is not None else fit_reference_models(data, seed=seed)).items():
        winner.references[name] = evaluate(ref, data, split="test")
        lifts = paired_differences(y, test_probs, ref.predict_proba(data.test.x.detach().cpu().numpy()),
                                   draws=draws, metrics=Winner.COMPARED, label_names=list(data.label_names),
                                   cache=cache)
        winner.lifts[name] = lifts  # macro, and per label for several labels


def comparison_metrics(winner: Winner) -> dict[str, float]:
    """The reference models and the lifts as MLflow metrics: ``reference/NAME/test/auroc``,
    ``lift/NAME/auroc`` with ``…_low`` and ``…_high`` (per label: ``lift/NAME/auroc.LABEL``)."""
    out: dict[str, float] = {}
    for name, metrics in winner.references.items():
        out.update({f"reference/{name}/test/{k}": float(v) for k, v in metrics.items()})
    for name, lifts in winner.lifts.items():
        for lift in lifts:
            key = f"lift/{name}/{lift.metric}" + ("" if lift.label == "macro" else f".{lift.label}")
            out.update({key: lift.estimate, f"{key}_low": lift.low, f"{key}_high": lift.high})
    return out


def winner_yaml(config: Config, *, scenario: str, provenance: dict[str, Any]) -> str:
    """A config as ``losstune train --config`` reads it, with the scenario and its provenance."""
    doc: dict[str, Any] = {"scenario": {"name": f"{scenario}-winner",
                                        "description": f"exported by losstune on {time.strftime('%Y-%m-%d')}"}}
    doc.update(config.to_dict())
    doc["provenance"] = provenance
    return yaml.safe_dump(doc, sort_keys=False)


def make_provenance(*, job: str, job_run_id: str, trial_id: str, trial_run_id: str, data: dict[str, Any],
                    validation: dict[str, Any], targets: dict[str, float | None], target_flags: dict[str, Any],
                    test: dict[str, Any] | None, threads: int | None = None) -> dict[str, Any]:
    """Where an exported config came from (the driver and `losstune export` both build it here).
    ``threads``: torch's threads in the trial, which `losstune train` then uses too."""

    out: dict[str, Any] = {"losstune_version": __version__, "job": job, "job_run_id": job_run_id,
                           "trial_id": trial_id, "trial_run_id": trial_run_id, "data": data,
                           "validation": validation, "targets": {**targets, **target_flags}}
    if threads:
        out["torch_threads"] = int(threads)
    if test:
        out["test"] = {k.removeprefix("test/"): v for k, v in test.items() if k.startswith("test/")}
        if "temperature" in test:
            out["test"]["temperature"] = test["temperature"]
        out["targets"].update(targets_on("test", test, targets))
    return out
