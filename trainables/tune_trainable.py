"""The only Ray import in trainables/: a thin function trainable around ``fit``.

Ray hands it the sampled dict (dotted config keys); it applies them to the base config, resumes from
``tune.get_checkpoint()`` when Ray restores or retries the trial, and turns every epoch report into
``tune.report`` with a ``tune.Checkpoint``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.config import Config
from trainables.data import SharedData
from trainables.metrics import Targets
from trainables.trainer import fit
from trainables.vocab import ARM_KEY, SCORE

__all__ = ["TrialInputs", "stop_quietly", "train_trial", "train_variant"]


@dataclass
class TrialInputs:
    """Everything every trial reads; sent to the object store once with ``tune.with_parameters``."""

    data: SharedData
    base_config: dict[str, Any]
    targets: dict[str, float | None] = field(default_factory=dict)
    pretrained: dict[str, Any] | None = None  # backbone state dict, read by the driver
    select: str = SCORE
    # torch's intra-op threads in a trial: its CPU count, set explicitly (a worker reused from a 1-CPU
    # task keeps 1 otherwise), so `losstune train` can run the winner with the same count and get the
    # same float results (matrix products sum in another order on another thread count)
    threads: int = 1
    # several arms in one Tune run (the confirmation): a trial's ``arm`` key picks its base config here
    arm_base_configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _assigned_gpus() -> list[str]:
    try:
        return [str(g) for g in ray.get_gpu_ids()]
    except Exception:  # outside a Ray worker
        return []


def _quiet_when_stopped(unraisable: Any) -> None:
    if isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
        return
    sys.__unraisablehook__(unraisable)


def stop_quietly() -> None:
    """Ray stops a trial's worker (Ctrl-C, ``stop``, the end of a job) with SIGTERM, whose handler
    (ray/_private/worker.py, ``sigterm_handler``) raises SystemExit wherever the worker happens to be.
    Inside a weakref callback or a ``__del__`` Python cannot raise it and prints it as an "Exception
    ignored" traceback instead, which the driver forwards to the user's terminal. A worker being
    stopped is not an error; every other unraisable exception is still printed."""
    sys.unraisablehook = _quiet_when_stopped


def train_trial(config: dict[str, Any], inputs: TrialInputs) -> None:
    stop_quietly()
    for name in ("ray.train", "ray.tune"):  # not a log line per checkpoint in the driver's output
        logging.getLogger(name).setLevel(logging.WARNING)
    config = dict(config)
    arm = config.pop(ARM_KEY, None)
    base = inputs.arm_base_configs[arm] if arm is not None else inputs.base_config
    cfg = Config.from_dict(base).with_overrides(config, source="trial config")
    torch.set_num_threads(inputs.threads)
    data = inputs.data.to_prepared()
    gpus = _assigned_gpus()
    node_id = ray.get_runtime_context().get_node_id()  # which node ran it: spreading is visible per trial
    device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="losstune-trial-"))
    try:
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume_from = Path(checkpoint.to_directory(str(work / "restored")))

        def report(metrics: dict[str, Any], checkpoint: str | None = None) -> None:
            row = {**metrics, "trial/gpu_ids": ",".join(gpus), "trial/device": device, "trial/pid": os.getpid(),
                   "trial/node_id": node_id}
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)

        fit(cfg, data, report=report, checkpoint_dir=work / "checkpoint", resume_from=resume_from,
            targets=Targets(**inputs.targets), device=device, pretrained=inputs.pretrained, select=inputs.select)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def train_variant(config: dict[str, Any], inputs: TrialInputs, variants: dict[str, dict[str, Any]]) -> None:
    """A trial of an ablation: ``config`` names a variant (a whole config, in ``variants``) and a seed."""
    import dataclasses

    train_trial({"seed": int(config["seed"])},
                dataclasses.replace(inputs, base_config=variants[str(config["variant"])]))
