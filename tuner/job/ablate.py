"""`losstune ablate --job JOB`: what each technique of the stack's winner contributes.

Starting from the finished job's winner, each technique it uses is switched off in turn (the aux
head, distillation, consistency, the EMA teacher, adaptive loss weighting → static weights, focal
loss → BCE), and all of them at once ("plain focal loss"; "plain BCE" when the winner uses BCE).
The winner itself and every variant are trained with the same S seeds on the same splits, as Ray
trials; each variant's seed-averaged test probabilities are compared with the winner's by the
paired, stratified bootstrap (METHODS.md). A technique "contributes" what the winner loses when it
is switched off. Then the design note's promises are set against what this job measured.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables.compare import bootstrap_draws, paired_differences, seed_summary, signed
from trainables.config import Config
from trainables.data import PreparedData, SharedData
from trainables.errors import UserError
from trainables.tune_trainable import TrialInputs, train_variant
from tuner.cluster.runtime import connect
from tuner.core.layout import ABLATION_FILE
from tuner.core.seal import check_file
from tuner.core.summary import SUMMARY_FILE, JobSummary
from tuner.job.launch import RunSpec, fit_run, make_tuner, quiet_tune
from tuner.job.outcome import rows_from_grid
from tuner.job.plan import ARMS_FILE, TuneJob, job_inputs, open_job
from tuner.job.winner import evaluate_checkpoint
from tuner.present.html import REPORT_FILE, write_report
from tuner.present.plots import plots_in
from tuner.present.progress import Progress
from tuner.present.tables import fit_width, table
from tuner.present.text import render_summary

__all__ = ["variants", "Ablation", "run_ablation", "claims", "ABLATION_FILE"]

FULL = "winner (everything on)"


def variants(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The winner's techniques, each switched off (only those it uses), as config overrides."""
    out: dict[str, dict[str, Any]] = {}
    aux = flat.get("aux_loss.type", "none") != "none"
    if aux:
        out["aux head"] = {"aux_loss.type": "none", "distill.weight": 0.0, "consistency.weight": 0.0,
                           "weighting.strategy": "static"}
    if float(flat.get("distill.weight", 0.0)) > 0:
        out["distillation"] = {"distill.weight": 0.0}
    if float(flat.get("consistency.weight", 0.0)) > 0:
        out["consistency"] = {"consistency.weight": 0.0}
    if flat.get("teacher.enabled"):
        out["EMA teacher"] = {"teacher.enabled": False, "distill.weight": 0.0}
    if aux and flat.get("weighting.strategy", "static") != "static":
        out["adaptive weighting"] = {"weighting.strategy": "static"}
    if flat.get("main_loss.type") == "focal":
        out["focal loss"] = {"main_loss.type": "bce"}
    everything = {"aux_loss.type": "none", "distill.weight": 0.0, "consistency.weight": 0.0,
                  "weighting.strategy": "static", "teacher.enabled": False}
    if len(out) > 1 or (out and "focal loss" not in out):
        name = "everything but focal loss" if flat.get("main_loss.type") == "focal" else "everything"
        out[name] = everything
    return out


@dataclass
class Ablation:
    """One row per variant: test metrics (mean ± sd over seeds) and the winner's lift over it."""

    job: str
    seeds: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "seeds": self.seeds, "rows": self.rows}

    def text(self) -> str:
        def pm(row: dict[str, Any], m: str) -> str:
            mean, sd = row[f"test_{m}_mean"], row[f"test_{m}_sd"]
            return f"{mean:.4f}" + ("" if math.isnan(sd) else f" ± {sd:.4f}")

        def lift(row: dict[str, Any], m: str) -> str:
            x = row.get(f"contribution_{m}")
            return "" if x is None else f"{signed(x['estimate'])} ({signed(x['low'])}, {signed(x['high'])})"

        metrics = table(["switched off", "test AUROC", "test AUPRC", "test ECE"],
                        [[r["variant"], pm(r, "auroc"), pm(r, "auprc"), pm(r, "ece")] for r in self.rows])
        lifts = table(["switched off", "contribution to AUROC", "contribution to AUPRC"],
                      [[r["variant"], lift(r, "auroc"), lift(r, "auprc")] for r in self.rows[1:]])
        return "\n".join(fit_width([
            f"ablation of job {self.job} (test split; mean ± sd over seeds {', '.join(map(str, self.seeds))}):",
            metrics, "contribution = winner − variant, paired bootstrap, estimate (95% CI):", lifts]))


def run_ablation(job_name: str, *, storage_path: str, seeds: int, address: str | None, verbose: int = 0,
                 n_resamples: int = 1000) -> Ablation:
    """``losstune ablate``: the finished job's winner retrained with each technique switched off in
    turn, over ``seeds`` seeds, on the same splits; each variant's test metrics (mean ± sd) and the
    winner's paired lift over it, written to the job folder (``ablation.json``).

    Returns:
        The ablation's rows.
    """
    if seeds < 2:
        raise UserError(f"--seeds must be at least 2 (a spread needs two seeds), got {seeds}")
    job = open_job(job_name, storage_path=storage_path)
    winner_file = job.path / "winner" / "config.yaml"
    if not winner_file.is_file():  # before its data is read: that is not what is wrong
        raise UserError(f"job '{job.experiment}' has no winner to ablate (no {winner_file}): it is unfinished "
                        f"(continue it with `losstune tune --resume {job.location}`) or it failed")
    check_file(winner_file)
    data, pretrained = job_inputs(job)
    winner = Config.load(winner_file)
    flat = winner.flat()
    offs = variants(flat)
    if not offs:
        raise UserError(f"the winner of job '{job.experiment}' uses none of the stack's techniques: nothing to ablate")
    # every variant a whole config, checked now (a clear error, not a failed trial later)
    configs = {FULL: winner.to_dict(), **{v: winner.with_overrides(over, source=f"ablation '{v}'").to_dict()
                                          for v, over in offs.items()}}
    with quiet_tune(verbose=verbose):
        return _ablate(job, data, pretrained, winner, configs, seeds=seeds, address=address, verbose=verbose,
                       n_resamples=n_resamples)


def _ablate(job: TuneJob, data: PreparedData, pretrained: dict | None, winner: Config, configs: dict[str, Any], *,
            seeds: int, address: str | None, verbose: int, n_resamples: int) -> Ablation:
    from ray import tune

    runtime = connect(address, log_to_driver=verbose > 0)
    try:
        goals = job.spec.targets.goals()
        inputs = TrialInputs(data=SharedData.from_prepared(data), base_config=winner.to_dict(), targets=goals,
                             pretrained=pretrained, select=job.spec.metric)
        fn = tune.with_parameters(tune.with_resources(train_variant, job.resources), inputs=inputs, variants=configs)
        storage = job.storage
        name = "ablation"
        run = RunSpec(parts=(job.experiment, name), num_samples=1, concurrency=job.spec.resources.concurrency,
                      param_space={"variant": tune.grid_search(list(configs)),
                                   "seed": tune.grid_search(list(range(1, seeds + 1)))},
                      max_failures=job.spec.resources.max_failures, verbose=verbose, checkpoints_kept=1)
        with Progress(parts={name: len(configs) * seeds}) if not verbose \
                else nullcontext():
            grid = fit_run(make_tuner(fn, storage, run), storage, run)
        rows = rows_from_grid(grid, job, ["variant", "seed"], folder=job.path / name)
        per_variant: dict[str, list[Any]] = {v: [] for v in configs}
        for r in rows:
            if r.checkpoint and r.config.get("variant") in per_variant:
                per_variant[r.config["variant"]].append(r)
        y = data.test.y.detach().cpu().numpy()
        draws = bootstrap_draws(y, n_resamples=n_resamples, seed=job.spec.seed)
        result = Ablation(job=job.experiment, seeds=list(range(1, seeds + 1)))
        probs: dict[str, Any] = {}
        for v, trials in per_variant.items():
            evaluated = [evaluate_checkpoint(storage, r.checkpoint, r.trial_id, data, goals) for r in trials]
            if not evaluated:
                result.rows.append({"variant": v, "trials": 0, **{f"test_{m}_{s}": math.nan for m in
                                                                   ("auroc", "auprc", "ece") for s in ("mean", "sd")}})
                continue
            row: dict[str, Any] = {"variant": v, "trials": len(evaluated)}
            for m in ("auroc", "auprc", "ece"):
                row[f"test_{m}_mean"], row[f"test_{m}_sd"] = seed_summary([w.holdout[f"test/{m}"] for w in evaluated])
            probs[v] = np.mean([w.test_probs for w in evaluated], axis=0)
            if v != FULL and FULL in probs:
                for lift in paired_differences(y, probs[FULL], probs[v], draws=draws, metrics=("auroc", "auprc", "ece"),
                                               label_names=list(data.label_names)):
                    if lift.label == "macro":
                        row[f"contribution_{lift.metric}"] = lift.to_dict()
            result.rows.append(row)
        from tuner.core.outputs import atomic_write

        atomic_write(job.path / ABLATION_FILE, json.dumps(result.to_dict(), indent=1, default=float))
        rewrite_report(job, result)
        job.publish()
        return result
    finally:
        runtime.shutdown()


def rewrite_report(job: TuneJob, ablation: Ablation) -> None:
    """The job's report.html written again from its summary and plots, with the ablation's table and the
    design note's claims; a job finished before losstune kept its summary keeps its report as it is."""
    path = job.path / SUMMARY_FILE
    if not path.is_file():
        return
    check_file(path)
    s = JobSummary.from_json(path.read_text(encoding="utf-8"))
    write_report(s, plots=plots_in(job.path / "plots"), summary=render_summary(s), out=job.path / REPORT_FILE,
                 ablation={**ablation.to_dict(), "claims": claims(job.path, ablation)})


def claims(job_folder: Path, ablation: Ablation) -> str:
    """The design note's promises next to what this job measured on its own data."""

    arms = {}
    if (job_folder / ARMS_FILE).is_file():
        from tuner.core.seal import check_file

        check_file(job_folder / ARMS_FILE)
        arms = json.loads((job_folder / ARMS_FILE).read_text())
    stack, base = arms.get("stack", {}), arms.get("baseline", {})
    by = {r["variant"]: r for r in ablation.rows}

    def got(d: dict[str, Any], k: str) -> float:
        return float(d.get(k, math.nan))

    rows = []
    rows.append(["AUC 0.73 → 0.90+", f"baseline {got(base, 'test_auroc_mean'):.3f} → stack "
                 f"{got(stack, 'test_auroc_mean'):.3f} (test AUROC)"])
    rows.append(["AUPRC 0.29 → 0.50+", f"baseline {got(base, 'test_auprc_mean'):.3f} → stack "
                 f"{got(stack, 'test_auprc_mean'):.3f} (test AUPRC)"])
    e0, e1 = got(base, "test_ece_mean"), got(stack, "test_ece_mean")
    rows.append(["40% lower calibration error", f"test ECE as trained {e0:.3f} → {e1:.3f} "
                 f"({(e1 - e0) / e0:+.0%})" if e0 > 0 else "no baseline arm"])
    s0, s1 = got(base, "val_sd"), got(stack, "val_sd")
    rows.append(["60% better training stability", f"seed-to-seed sd of the validation score {s0:.4f} → {s1:.4f} "
                 f"({(s1 - s0) / s0:+.0%})" if s0 > 0 else "no seed spread measured"])
    plain = by.get("everything but focal loss")
    if plain and "contribution_auroc" in plain:
        c = plain["contribution_auroc"]
        rows.append(["+20% AUC over plain focal loss", f"{signed(c['estimate'])} AUROC (95% CI {signed(c['low'])} "
                                                       f"to {signed(c['high'])})"])
    static = by.get("adaptive weighting")
    if static and "contribution_auroc" in static:
        c = static["contribution_auroc"]
        rows.append(["+10% over static loss weights", f"{signed(c['estimate'])} AUROC (95% CI {signed(c['low'])} "
                                                      f"to {signed(c['high'])})"])
    return "claims of the design note against this job's measurements:\n" + table(["promise", "measured here"], rows)
