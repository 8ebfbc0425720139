"""The winner on held-out data, and the exported scenario YAML with its provenance.

The winning trial's best weights (from its last checkpoint) are evaluated on the test split that no
trial ever saw; a temperature is fit on validation. The exported YAML is a preset that
``losstune train --config`` and ``losstune tune --scenario`` accept; its ``provenance`` block
records where it came from and is ignored when loading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainables.config import Config
from trainables.data import PreparedData
from trainables.model import DualHeadModel, model_file_bytes, read_checkpoint
from trainables.trainer import CHECKPOINT_FILE, evaluate_holdout
from trainables.vocab import TARGET_METRICS, targets_met

__all__ = ["Winner", "evaluate_winner", "winner_yaml", "targets_on", "make_provenance"]


@dataclass
class Winner:
    trial_id: str
    config: Config
    holdout: dict[str, Any]  # val/* and test/* metrics, temperature, ECE before and after scaling
    targets_test: dict[str, Any]
    model_bytes: bytes  # state dict + temperature, loadable with weights_only=True


def targets_on(split: str, holdout: dict[str, Any], targets: dict[str, float | None]) -> dict[str, Any]:
    met = targets_met({m: holdout.get(f"{split}/{m}") for m in TARGET_METRICS}, targets)
    return {f"target.{split}_{name}_met": int(ok) for name, ok in met.items()}


def evaluate_winner(checkpoint_dir: str, trial_id: str, data: PreparedData, targets: dict[str, float | None]) -> Winner:
    ckpt = read_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE)
    cfg = Config.from_dict(ckpt["config"], source="winner checkpoint")
    model = DualHeadModel.from_config(cfg.model, in_features=data.n_features, n_labels=data.n_labels,
                                      aux_head=cfg.aux_loss.type != "none")
    model.load_state_dict(ckpt["best_model"] or ckpt["model"])
    holdout = evaluate_holdout(model, data)
    return Winner(trial_id=trial_id, config=cfg, holdout=holdout, targets_test=targets_on("test", holdout, targets),
                  model_bytes=model_file_bytes(model, temperature=holdout["temperature"],
                                               feature_names=data.feature_names, label_names=data.label_names))


def winner_yaml(config: Config, *, scenario: str, provenance: dict[str, Any]) -> str:
    doc: dict[str, Any] = {"scenario": {"name": f"{scenario}-winner",
                                        "description": f"exported by losstune on {time.strftime('%Y-%m-%d')}"}}
    doc.update(config.to_dict())
    doc["provenance"] = provenance
    return yaml.safe_dump(doc, sort_keys=False)


def make_provenance(*, job: str, job_run_id: str, trial_id: str, trial_run_id: str, data: dict[str, Any],
                    validation: dict[str, Any], targets: dict[str, float | None], target_flags: dict[str, Any],
                    test: dict[str, Any] | None) -> dict[str, Any]:
    """Where an exported config came from (the driver and `losstune export` both build it here)."""
    from tuner import __version__

    out: dict[str, Any] = {"losstune_version": __version__, "job": job, "job_run_id": job_run_id,
                           "trial_id": trial_id, "trial_run_id": trial_run_id, "data": data,
                           "validation": validation, "targets": {**targets, **target_flags}}
    if test:
        out["test"] = {k.removeprefix("test/"): v for k, v in test.items() if k.startswith("test/")}
        if "temperature" in test:
            out["test"]["temperature"] = test["temperature"]
        out["targets"].update(targets_on("test", test, targets))
    return out
