"""PNG plots of a job, for the parent run: optimisation history, parameter importances (Optuna's
fANOVA), and the best-so-far validation AUROC/AUPRC against the target lines.

The importances are computed over the search space's own parameter specs (``ParamSpec``: the
distributions the sampler used, in Optuna's coordinates), so a range is the range that was searched,
not the spread of the values a few trials happened to draw.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainables.calibration import reliability_curve
from tuner.core.settings import temporarily

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from search_spaces.spaces import ParamSpec

__all__ = ["job_plots", "reliability_plot", "arms_convergence_plot", "example_images_plot", "pareto_plot", "plots_in"]

# report.html's name of each plot → its file in the job's plots/ folder
PLOT_FILES = {"history": "optimization_history.png", "importances": "param_importances.png",
              "best_so_far": "best_so_far.png", "reliability": "reliability.png", "arms": "arms_best_so_far.png",
              "examples": "example_images.png", "front": "pareto_front.png"}


def plots_in(folder: Path) -> dict[str, Path]:
    """The job's plots that exist in ``folder``, by report.html's names (a report written again later,
    e.g. by ``losstune ablate``, shows the same pictures)."""
    return {key: folder / name for key, name in PLOT_FILES.items() if (folder / name).is_file()}


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)



def _save(fig: Figure, path: Path, *, dpi: int = 100) -> Path:
    """Write the figure as a PNG (its folder made when missing) and free it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

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
    return _save(fig, out / PLOT_FILES["history"], dpi=100)


def _trials_from_specs(done: list[Any],
                       params: Sequence[ParamSpec]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Each trial's searched values in Optuna's coordinates, with the distributions they were drawn from.

    A conditional parameter appears only in the trials where it existed; fANOVA then leaves it out
    (it ranks the parameters every trial has). A number is clipped into its range (1 - (1 - d) can
    land an ulp outside it); a value no distribution can hold (not one of the choices) is left out of
    its trial, which drops that parameter from the ranking rather than failing the plot.
    """
    specs = [p for p in params if any(p.name in r.config for r in done)]
    dists = {p.name: p.optuna_distribution for p in specs}
    per_trial = []
    for r in done:
        values = {}
        for p in specs:
            if p.name not in r.config:
                continue
            v, d = p.to_optuna(r.config[p.name]), dists[p.name]
            if p.kind == "categorical":
                try:
                    d.to_internal_repr(v)  # ValueError: not one of the choices
                except ValueError:
                    continue
            elif _finite(v):
                v = min(max(v, d.low), d.high)
                if p.kind == "int" and v != int(v):
                    continue
            else:
                continue
            values[p.name] = v
        per_trial.append(values)
    return dists, per_trial


def _trials_from_values(done: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Without specs (a caller that passes none): distributions guessed from the observed values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    keys = [k for k in done[0].config if all(k in r.config for r in done)]
    dists: dict[str, Any] = {}
    for k in keys:
        values = [r.config[k] for r in done]
        if all(_finite(v) for v in values) and len({float(v) for v in values}) > 1:
            dists[k] = FloatDistribution(min(map(float, values)), max(map(float, values)))
        elif len({str(v) for v in values}) > 1:
            dists[k] = CategoricalDistribution(sorted({str(v) for v in values}))
    per_trial = [{k: (float(r.config[k]) if isinstance(d, FloatDistribution) else str(r.config[k]))
                  for k, d in dists.items()} for r in done]
    return dists, per_trial


def _importances(rows: list[Any], out: Path, params: Sequence[ParamSpec] | None = None) -> Path | None:
    import optuna

    done = [r for r in rows if _finite(r.objective) and r.config]
    if len(done) < 3:
        return None
    dists, per_trial = _trials_from_specs(done, params) if params is not None else _trials_from_values(done)
    if not dists:
        return None
    with temporarily(optuna_level=logging.WARNING):  # no line per trial added to the study
        study = optuna.create_study(direction="maximize")
        for r, values in zip(done, per_trial):
            study.add_trial(optuna.trial.create_trial(params=values, distributions={k: dists[k] for k in values},
                                                      value=r.objective))
        try:
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0))
        except Exception:  # fANOVA on too few distinct trials, or no parameter every trial has: no plot
            return None
    if not imp:
        return None
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh(names, [imp[n] for n in names], color="tab:green")
    ax.set(xlabel="importance (fANOVA, share of the objective's variance)", title="Parameter importances")
    return _save(fig, out / PLOT_FILES["importances"], dpi=100)


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
    return _save(fig, out / PLOT_FILES["best_so_far"], dpi=100)


def job_plots(rows: list[Any], *, metric: str, targets: dict[str, float | None], out: Path,
              params: Sequence[ParamSpec] | None = None) -> list[Path]:
    """The job's PNGs in ``out``. ``rows``: objects with ``number``, ``objective``, ``metrics`` and
    ``config`` (searched values in config coordinates); ``params``: the search space's specs
    (``SearchSpace.params()`` or ``SpaceSpec.from_dict(...).params``). Without ``params`` the
    importances fall back to ranges guessed from the values seen."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [_history(rows, metric, out), _best_so_far(rows, targets, out)]
    imp = _importances(rows, out, params)
    return paths + ([imp] if imp else [])


def reliability_plot(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, out: Path, *,
                     label_names: Sequence[str] = ()) -> Path:
    """The winner's reliability diagram on the test split, before and after its calibration (the
    bins of the ECE: 15 equal-width bins of P(y = 1)); one panel per label. Each calibrated point is
    labelled with its bin's patient count: a point drawn from a handful of patients is noise."""
    import numpy as np

    y, raw, calibrated = (np.asarray(a, dtype=np.float64).reshape(len(y), -1) for a in (y, raw, calibrated))
    k = y.shape[1]
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4.2), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for probs, name, color in ((raw, "as trained", "tab:red"), (calibrated, "calibrated", "tab:green")):
            curve = reliability_curve(probs[:, j], y[:, j])
            keep = curve.count > 0
            ax.plot(curve.mean_predicted[keep], curve.observed[keep], marker="o", color=color, label=name)
            if name == "calibrated":
                for x, obs, n in zip(curve.mean_predicted[keep], curve.observed[keep], curve.count[keep]):
                    ax.annotate(f"n={n}", (x, obs), textcoords="offset points", xytext=(4, -10), fontsize=7,
                                color=color)
        title = label_names[j] if j < len(label_names) else f"label {j}"
        ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
               title=f"Reliability on test: {title}")
        ax.legend(loc="upper left")
    return _save(fig, out / PLOT_FILES["reliability"], dpi=100)


def arms_convergence_plot(curves: dict[str, list[float]], metric: str, out: Path) -> Path:
    """Each arm's best validation score after each of its trials (trials in creation order): a curve
    still rising at its end says that arm's search was not done, and the comparison may move."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, curve in curves.items():
        xs = [i for i, v in enumerate(curve) if _finite(v)]
        ax.step(xs, [curve[i] for i in xs], where="post", marker="o", markersize=3,
                label=f"{arm} ({len(curve)} trials)")
    ax.set(xlabel="trial of the arm's search (creation order; 0 = its preset)",
           ylabel=f"best {metric} so far (validation)", title="Each arm's search: best so far")
    ax.legend()
    return _save(fig, out / PLOT_FILES["arms"], dpi=100)


def pareto_plot(rows: Sequence[Any], objectives: Sequence[str], out: Path, *, selected: str | None = None,
                baseline: Mapping[str, float] | None = None, baseline_rows: Sequence[Any] = ()) -> Path:
    """Every trial of the stack's search in each pair of objectives (validation, at the trial's best
    epoch), the front drawn through its members (``pareto``), the selected member and the baseline
    arm's deployed model (its validation values) marked; the baseline arm's trials in grey.

    Args:
        rows: the stack's trials (``metrics``, ``pareto``, ``trial_id``); objectives: ``METRIC:DIR``.
    """
    specs = [o.rsplit(":", 1) for o in objectives]
    pairs = [(i, j) for i in range(len(specs)) for j in range(i + 1, len(specs))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)

    def xy(r: Any, i: int, j: int) -> tuple[float, float] | None:
        a, b = r.metrics.get(specs[i][0]), r.metrics.get(specs[j][0])
        return (float(a), float(b)) if _finite(a) and _finite(b) else None

    for ax, (i, j) in zip(axes[0], pairs):
        base = [p for p in (xy(r, i, j) for r in baseline_rows) if p]
        if base:
            ax.scatter(*zip(*base), s=14, color="0.75", label="baseline arm's trials")
        points = [p for p in (xy(r, i, j) for r in rows) if p]
        if points:
            ax.scatter(*zip(*points), s=18, color="tab:blue", label="stack's trials")
        front = sorted(p for p in (xy(r, i, j) for r in rows if r.pareto) if p)
        if front:
            ax.plot(*zip(*front), color="tab:red", marker="o", markersize=6, linewidth=1,
                    label="Pareto front (all objectives)")
        chosen = next((xy(r, i, j) for r in rows if r.trial_id == selected), None)
        if chosen:
            ax.scatter(*chosen, s=160, facecolors="none", edgecolors="black", linewidths=2, label="selected")
        if baseline and _finite(baseline.get(specs[i][0])) and _finite(baseline.get(specs[j][0])):
            ax.scatter(baseline[specs[i][0]], baseline[specs[j][0]], s=120, marker="X", color="tab:orange",
                       label="baseline arm's winner")
        ax.set(xlabel=f"{specs[i][0]} ({'higher' if specs[i][1] == 'max' else 'lower'} is better)",
               ylabel=f"{specs[j][0]} ({'higher' if specs[j][1] == 'max' else 'lower'} is better)")
        ax.legend(fontsize=7)
    fig.suptitle("Trials on validation, each at its epoch best for " + specs[0][0])
    return _save(fig, out / PLOT_FILES["front"], dpi=90)


def example_images_plot(images: np.ndarray, labels: np.ndarray, label_names: Sequence[str], out: Path, *,
                        per_row: int = 6, seed: int = 0) -> Path:
    """A few training images per label, positives above negatives: what the network sees (size,
    contrast, the finding), so that a reader can tell a broken input from a hard task."""
    import numpy as np

    x = np.asarray(images)
    y = np.asarray(labels).reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    rows = []
    for j, name in enumerate(label_names[:8]):  # a screening task's first labels
        for positive in (True, False):
            pool = np.flatnonzero((y[:, j] > 0.5) == positive)
            picked = rng.choice(pool, size=min(per_row, len(pool)), replace=False) if len(pool) else []
            rows.append((f"{name}: {'positive' if positive else 'negative'}", list(picked)))
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.4 * per_row, 1.5 * len(rows)), squeeze=False)
    for r, (title, picked) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(picked):
                img = x[picked[c]].transpose(1, 2, 0)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(title, fontsize=8, loc="left")
    return _save(fig, out / PLOT_FILES["examples"], dpi=80)
