"""``report.html``: one self-contained page per finished job (plots embedded as PNG), written into
the job's folder and attached to its MLflow job run.

It says what a reader must know before trusting the winner: whether the targets were met, both
arms and the reference models side by side on the held-out test split with their intervals, the
lift in words, how calibrated the probabilities are, how the search went, how much the seeds
moved, and the command that runs the job again.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.compare import lift_sentence, signed
from trainables.vocab import METRIC_MEANING
from tuner.core.layout import REPORT_FILE, SPEC_FILE
from tuner.core.outputs import atomic_write
from tuner.core.summary import JobSummary
from tuner.present.text import front_lines, searched_values
from tuner.present.verdict import COMPARED_NAMES, bottom_line, budget_sentence, convergence_notes, race_sentence

__all__ = ["REPORT_FILE", "SECTIONS", "OPTIONAL", "write_report"]

# in the order they appear
SECTIONS = ("bottom_line", "verdict", "front", "arms", "references", "operating", "calibration", "search", "seeds",
            "ablation", "glossary", "reproduce", "summary")
OPTIONAL = ("front", "ablation")  # a job of several objectives; once `losstune ablate` has run
IMPORTANCE_MIN_TRIALS = 20  # below it, fANOVA's importances are a hint (the report says so)

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}.bad{color:#b00020;font-weight:600}.good{color:#05662b;font-weight:600}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}img{max-width:100%;border:1px solid #eee}"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _num(v: object, sd: object = None) -> str:
    if not isinstance(v, (int, float)) or math.isnan(v):
        return "–"
    return f"{v:.4f}" + ("" if sd is None or not isinstance(sd, float) or math.isnan(sd) else f" ± {sd:.4f}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def write_report(s: JobSummary, *, plots: dict[str, Path], summary: str, out: Path,
                 ablation: Mapping[str, Any] | None = None) -> Path:
    """Write ``out`` (atomically) for a finished job: one section per question a reader asks, in the
    order of ``SECTIONS``.

    Args:
        s: the job's summary.
        plots: name → PNG (``reliability``, ``history``, ``importances``, ``best_so_far``, ``arms``,
            ``examples``).
        summary: the text the command line printed.
        out: the report's path.
        ablation: ``ablation.json`` of the job, once ``losstune ablate`` has run (its table and the
            design note's claims against it).
    """
    first = bottom_line(s)
    command = f"losstune tune --job {s.location}/{SPEC_FILE} --experiment {s.experiment}-again"
    parts = [f"<h1>losstune job {_e(s.experiment)}</h1>",
             f"<p>scenario {_e(s.scenario)}; data {_e(s.data_given)}; "
             f"{len(s.rows)} trials in the stack's search; state {_e(s.state)}</p>",
             _section("bottom_line", "Bottom line", f'<p class="bottom-line"><strong>{_e(first)}</strong></p>'
                      if first else "<p>No winner: nothing was compared.</p>"),
             _section("verdict", "Targets", _targets(s)),
             *([_section("front", "Several objectives: the Pareto front", _front(s, plots))] if s.objectives else []),
             _section("arms", "The loss stack against a tuned plain model",
                      _arms(s, plots) or "<p>No arm produced a model.</p>"),
             _section("references", "Reference models (same training and test split)",
                      _references(s) or "<p>No reference models.</p>"),
             _section("operating", "At a decision threshold (test split)", _operating(s) or "<p>No winner.</p>"),
             _section("calibration", "Calibration", _calibration(s, plots) or "<p>No winner.</p>"),
             _section("search", "The search", _search(s, plots) or "<p>No plots.</p>"),
             _section("seeds", "Seed-to-seed spread of the confirmed configs",
                      _seeds(s) or "<p>No confirmation (--confirm-top 0): one seed per config.</p>"),
             *([_section("ablation", "What each technique contributes (losstune ablate)", _ablation(ablation))]
               if ablation else []),
             _section("glossary", "What the figures mean", _GLOSSARY),
             _section("reproduce", "Run it again",
                      f"<pre>{_e(command)}</pre><p>The same spec and seed give the same trial configs; "
                      "the data must have the same fingerprint "
                      f"({_e(s.data_fingerprint[:16])}…).</p>"),
             _section("summary", "Summary as printed", f"<pre>{_e(summary)}</pre>")]
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>losstune "
            f"{_e(s.experiment)}</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write(out, page)
    return out


def _targets(s: JobSummary) -> str:
    w = s.winner
    goals = {k: v for k, v in s.targets.items() if v is not None}
    if not goals or w is None:
        return "<p>No target was set (--target-auroc, --target-auprc).</p>"
    rows = [[name.upper(), f"{goal:g}", _num(w.holdout.get(f"val/{name}")), _num(w.holdout.get(f"test/{name}")),
             "met" if w.targets_test.get(f"target.test_{name}_met") else "NOT met"] for name, goal in goals.items()]
    met = all(r[-1] == "met" for r in rows)
    return (f'<p class="{"good" if met else "bad"}">The targets were {"" if met else "NOT "}met on the '
            "held-out test split.</p>" + _table(["metric", "target", "winner validation", "winner test", ""], rows))


def _arms(s: JobSummary, plots: dict[str, Path]) -> str:
    w = s.winner
    arms = ""
    if s.arms:
        rows = []
        for arm, f in s.arms.items():
            seed = f", seed {f.deployed_seed}" if f.deployed_seed is not None else ""
            rows.append([f"{arm}: deployed model{seed}", f.source_trial, "1", _num(f.deployed_objective),
                         *(_num(f.deployed[m]) for m in ("auroc", "auprc", "ece_calibrated", "brier_calibrated"))])
            if f.seeds > 1:
                rows.append([f"{arm}: seed mean ± sd", f.source_trial, str(f.seeds), _num(*f.val),
                             *(_num(*f.test[m]) for m in ("auroc", "auprc", "ece_calibrated", "brier_calibrated"))])
        arms = ("<p>Each arm's deployed model (its winning config's seed with the best validation score: what is "
                "exported and what every comparison uses) on the test split, and the seed mean ± sd of that config: "
                "how much retraining moves it. The validation score is "
                f"{_e(s.metric)} = {_e(METRIC_MEANING.get(s.metric, s.metric))}"
                + (f"; the test split's prevalence is {_num(next(iter(w.prevalence.values())))}, the AUPRC of a model "
                   "that guesses" if w is not None and len(w.prevalence) == 1 else "") + ".</p>"
                + _table(["arm", "config of trial", "seeds", "validation score", "test AUROC", "test AUPRC",
                          "test ECE (calibrated)", "test Brier (calibrated)"], rows))
    if w is not None and "baseline" in w.lifts:
        arms += "<ul>" + "".join(f"<li>{_e(lift_sentence(x))}</li>" for x in w.lifts["baseline"]
                                 if x.label == "macro") + "</ul>"
    elif not s.baseline_planned:
        arms += ('<p class="bad">This job ran without a baseline arm (--no-baseline): it cannot say whether the '
                 "loss stack beats a plain model.</p>")
    budgets = budget_sentence(s)
    if budgets:  # in red when the arms searched with different budgets
        arms += f'<p class="{"bad" if "less search" in budgets else "budgets"}">{_e(budgets)}</p>'
    arms += "".join(f'<p class="bad">{_e(note)}</p>' for note in convergence_notes(s))
    if "arms" in plots:
        arms += _img(plots["arms"], "each arm's best validation score so far, by trial")
    return arms


def _references(s: JobSummary) -> str:
    w = s.winner
    if w is None or not w.references:
        return ""
    refs = _table(["model", "test AUROC", "test AUPRC", "test ECE", "test Brier"],
                  [[COMPARED_NAMES.get(n, n), _num(m.get("auroc")), _num(m.get("auprc")), _num(m.get("ece")),
                    _num(m.get("brier"))] for n, m in w.references.items()])
    return refs + "<ul>" + "".join(
        f"<li>{_e(lift_sentence(x, model_a='the loss stack', model_b=COMPARED_NAMES.get(n, n)))}</li>"
        for n in w.references for x in w.lifts.get(n, []) if x.label == "macro") + "</ul>"


def _calibration(s: JobSummary, plots: dict[str, Path]) -> str:
    w = s.winner
    if w is None:
        return ""
    h = w.holdout
    kinds = ", ".join(w.calibration_kinds) or "none"
    cal = (f"<p>Calibration fit on validation, per label ({_e(kinds)}: Platt scaling or temperature, whichever "
           "has the lower validation NLL); the saved model applies it.</p>"
           + _table(["on test", "as trained", "calibrated"],
                    [["ECE", _num(h.get("test/ece")), _num(h.get("test/ece_calibrated"))],
                     ["Brier", _num(h.get("test/brier")), _num(h.get("test/brier_calibrated"))]]))
    if "reliability" in plots:
        cal += _img(plots["reliability"], "reliability diagram")
    return cal


def _operating(s: JobSummary) -> str:
    w = s.winner
    if w is None or not w.operating:
        return ""
    out = ("<p>Each threshold was chosen on the validation split and applied unchanged to the test split; a "
           "patient is flagged when the model's calibrated probability is at least the threshold. "
           "<em>Validation-chosen</em> maximises sensitivity + specificity − 1 (Youden); the model file keeps it, "
           "and <code>losstune predict</code> decides with it. The others are the highest thresholds that found "
           "80% and 90% of the positives on validation.</p>")
    words = {"youden": "validation-chosen (Youden)", "sensitivity_0.80": "sensitivity ≥ 0.80 on validation",
             "sensitivity_0.90": "sensitivity ≥ 0.90 on validation"}
    for label, points in w.operating.items():
        prevalence = w.prevalence.get(label)
        n = sum(int(points[0][k]) for k in ("tp", "fp", "tn", "fn")) if points else 0
        out += (f"<h3>{_e(label)}: prevalence {_num(prevalence)} on test ({n} patients)</h3>"
                + _table(["threshold rule", "threshold", "sensitivity", "specificity", "PPV", "NPV",
                          "alerts per 100", "TP / FP / TN / FN"],
                         [[words.get(p["rule"], p["rule"]), f"{p['threshold']:.3f}", _num(p["sensitivity"]),
                           _num(p["specificity"]), _num(p["ppv"]), _num(p["npv"]), f"{p['alerts_per_100']:.1f}",
                           f"{p['tp']} / {p['fp']} / {p['tn']} / {p['fn']}"] for p in points]))
    return out


def _ablation(ab: Mapping[str, Any]) -> str:
    rows = ab.get("rows", [])

    def pm(r: Mapping[str, Any], m: str) -> str:
        return _num(r.get(f"test_{m}_mean"), r.get(f"test_{m}_sd"))

    def lift(r: Mapping[str, Any], m: str) -> str:
        x = r.get(f"contribution_{m}")
        return "" if not x else f"{signed(x['estimate'])} ({signed(x['low'])} to {signed(x['high'])})"

    return ("<p>The winner retrained with each technique switched off in turn, over seeds "
            f"{_e(', '.join(map(str, ab.get('seeds', []))))}, on the job's splits; contribution = winner − variant "
            "on the test split (paired bootstrap, 95% CI).</p>"
            + _table(["switched off", "test AUROC", "test AUPRC", "test ECE", "contribution to AUROC",
                      "contribution to AUPRC"],
                     [[r["variant"], pm(r, "auroc"), pm(r, "auprc"), pm(r, "ece"), lift(r, "auroc"), lift(r, "auprc")]
                      for r in rows])
            + (f"<pre>{_e(ab['claims'])}</pre>" if ab.get("claims") else ""))


_GLOSSARY = "<dl>" + "".join(f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in (
    ("AUROC", "The chance that a random positive patient scores above a random negative one: 0.5 is a coin, "
              "1 is perfect. It barely moves when positives are rare."),
    ("AUPRC", "Average precision over all thresholds. A model that guesses scores the prevalence (the share of "
              "positives), so read it against the prevalence shown beside it."),
    ("ECE", "Expected calibration error: over 15 bins of the predicted probability, the patient-weighted gap "
            "between the predicted probability and the observed frequency. 0 means a predicted 30% happens 30% of "
            "the time."),
    ("Brier", "The mean squared difference between the predicted probability and the outcome (0/1): lower is "
              "better; it mixes ranking and calibration."),
    ("Platt scaling, temperature", "Calibrations fit on the validation split after training: Platt scaling "
     "refits a slope and an intercept of the logit, temperature only divides it. The one with the lower "
     "validation NLL is kept per label."),
    ("NLL", "Negative log-likelihood of the outcomes under the predicted probabilities: what calibration minimises."),
    ("Sensitivity, specificity", "The share of positives flagged; the share of negatives not flagged."),
    ("PPV, NPV", "Of the flagged patients, the share that are positive; of the others, the share that are "
                 "negative. Both depend on the prevalence."),
    ("Alerts per 100 patients", "How many of 100 patients like the test split's the model would flag."),
    ("Parameter importance (fANOVA)", "How much of the variation of the score across trials each searched value "
     "explains; with fewer than about 20 trials it is a hint, not a finding."),
    ("Seed mean ± sd", "The same config trained with different seeds: how much of a difference retraining alone "
                       "makes."))) + "</dl>"


def _search(s: JobSummary, plots: dict[str, Path]) -> str:
    values = searched_values(s)
    search = f"<h3>Searched values of the best trials</h3><pre>{_e(values)}</pre>" if values else ""
    for k in ("history", "importances", "best_so_far"):
        if k not in plots:
            continue
        search += _img(plots[k], k.replace("_", " "))
        if k == "importances" and len(s.rows) < IMPORTANCE_MIN_TRIALS:  # said under the chart it is about
            search += (f'<p class="bad">The parameter importances come from {len(s.rows)} trials: below about '
                       f"{IMPORTANCE_MIN_TRIALS} they are unreliable (fANOVA fits a forest to the trials); read "
                       "them as a hint.</p>")
    if "examples" in plots:  # an image job: what the network saw
        search += "<h3>Example training images per label</h3>" + _img(plots["examples"], "example training images")
    return search


def _front(s: JobSummary, plots: dict[str, Path]) -> str:
    """The front as a table (the selected member first), the rule, and the scatter of every trial."""
    text = "\n".join(front_lines(s))
    body = (f"<p>{len(s.front)} of {s.done} trials are on the front of {_e(', '.join(s.objectives))}: no other "
            "trial is at least as good on every objective and better on one. Any member can be exported "
            "(<code>losstune export --trial ID</code>); the rule chose the one marked &gt;.</p>"
            f"<pre>{_e(text)}</pre>")
    if "front" in plots:
        body += _img(plots["front"], "the trials and their Pareto front in each pair of objectives")
    return body


def _seeds(s: JobSummary) -> str:
    race = race_sentence(s)
    return (f"<p>{_e(race[0].upper() + race[1:])}.</p>" if race else "") + "".join(f"<h3>{_e(arm)}</h3>" + _table(
        ["config of trial", "seeds", "validation score mean", "sd"],
        [[c["source_trial"], str(c["seeds"]), _num(c["val_mean"]), _num(c["val_sd"])] for c in f.by_config])
        for arm, f in s.arms.items() if f.by_config)
