"""PNG plots of a job, for the parent run: optimisation history, parameter importances (Optuna's
fANOVA), and the best-so-far validation AUROC/AUPRC against the target lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["job_plots"]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _history(rows: list[Any], metric: str, out: Path) -> Path:
    ordered = sorted((r for r in rows if _finite(r.objective)), key=lambda r: r.number)
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r.number for r in ordered]
    ys = [r.objective for r in ordered]
    best, best_so_far = -math.inf, []
    for y in ys:
        best = max(best, y)
        best_so_far.append(best)
    ax.scatter(xs, ys, label="trial", color="tab:blue")
    ax.step(xs, best_so_far, where="post", label="best so far", color="tab:red")
    ax.set(xlabel="trial (creation order; 0 = the preset)", ylabel=f"best {metric} over the trial's epochs",
           title="Optimisation history")
    ax.legend()
    fig.tight_layout()
    path = out / "optimization_history.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _importances(rows: list[Any], out: Path) -> Path | None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    done = [r for r in rows if _finite(r.objective) and r.config]
    if len(done) < 3:
        return None
    keys = [k for k in done[0].config if all(k in r.config for r in done)]
    dists = {}
    for k in keys:
        values = [r.config[k] for r in done]
        if all(_finite(v) for v in values) and len({float(v) for v in values}) > 1:
            dists[k] = FloatDistribution(min(map(float, values)), max(map(float, values)))
        elif len({str(v) for v in values}) > 1:
            dists[k] = CategoricalDistribution(sorted({str(v) for v in values}))
    if not dists:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in done:
        params = {k: (float(r.config[k]) if isinstance(d, FloatDistribution) else str(r.config[k])) for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=r.objective))
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0))
    except Exception:  # too few distinct trials for fANOVA
        return None
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="tab:green")
    ax.set(xlabel="importance (fANOVA, share of the objective's variance)", title="Parameter importances")
    fig.tight_layout()
    path = out / "param_importances.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _best_so_far(rows: list[Any], targets: dict[str, float | None], out: Path) -> Path:
    ordered = sorted(rows, key=lambda r: r.number)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color in (("auroc", "tab:blue"), ("auprc", "tab:orange")):
        best, xs, ys = -math.inf, [], []
        for r in ordered:
            v = r.metrics.get(f"val/{name}")
            if _finite(v):
                best = max(best, v)
            if math.isfinite(best):
                xs.append(r.number)
                ys.append(best)
        ax.step(xs, ys, where="post", color=color, label=f"best validation {name.upper()}")
        goal = targets.get(name)
        if goal is not None:
            ax.axhline(goal, color=color, linestyle="--", label=f"target {name.upper()} {goal:g}")
    ax.set(xlabel="trial (creation order)", ylabel="value", ylim=(0, 1.02), title="Best so far against the targets")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / "best_so_far.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def job_plots(rows: list[Any], *, metric: str, targets: dict[str, float | None], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [_history(rows, metric, out), _best_so_far(rows, targets, out)]
    imp = _importances(rows, out)
    return paths + ([imp] if imp else [])
