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
from pathlib import Path

from trainables.compare import lift_sentence
from tuner.core.layout import REPORT_FILE, SPEC_FILE
from tuner.core.outputs import atomic_write
from tuner.core.summary import JobSummary
from tuner.present.verdict import COMPARED_NAMES, bottom_line, budget_sentence, convergence_notes

__all__ = ["REPORT_FILE", "SECTIONS", "write_report"]

SECTIONS = ("bottom_line", "verdict", "arms", "references", "calibration", "search", "seeds", "reproduce",
            "summary")

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


def write_report(s: JobSummary, *, plots: dict[str, Path], summary: str, out: Path) -> Path:
    """Write ``out`` (atomically) for a finished job: one section per question a reader asks, in the
    order of ``SECTIONS``.

    Args:
        s: the job's summary.
        plots: name → PNG (``reliability``, ``history``, ``importances``, ``best_so_far``, ``arms``,
            ``examples``).
        summary: the text the command line printed.
        out: the report's path.
    """
    first = bottom_line(s)
    command = f"losstune tune --job {s.location}/{SPEC_FILE} --experiment {s.experiment}-again"
    parts = [f"<h1>losstune job {_e(s.experiment)}</h1>",
             f"<p>scenario {_e(s.scenario)}; data {_e(s.data_given)}; "
             f"{len(s.rows)} trials in the stack's search; state {_e(s.state)}</p>",
             _section("bottom_line", "Bottom line", f'<p class="bottom-line"><strong>{_e(first)}</strong></p>'
                      if first else "<p>No winner: nothing was compared.</p>"),
             _section("verdict", "Targets", _targets(s)),
             _section("arms", "The loss stack against a tuned plain model",
                      _arms(s, plots) or "<p>No arm produced a model.</p>"),
             _section("references", "Reference models (same training and test split)",
                      _references(s) or "<p>No reference models.</p>"),
             _section("calibration", "Calibration", _calibration(s, plots) or "<p>No winner.</p>"),
             _section("search", "The search", _search(plots) or "<p>No plots.</p>"),
             _section("seeds", "Seed-to-seed spread of the confirmed configs",
                      _seeds(s) or "<p>No confirmation (--confirm-top 0): one seed per config.</p>"),
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
                "how much retraining moves it.</p>"
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


def _search(plots: dict[str, Path]) -> str:
    search = "".join(_img(plots[k], k.replace("_", " ")) for k in ("history", "importances", "best_so_far")
                     if k in plots)
    if "examples" in plots:  # an image job: what the network saw
        search += "<h3>Example training images per label</h3>" + _img(plots["examples"], "example training images")
    return search


def _seeds(s: JobSummary) -> str:
    return "".join(f"<h3>{_e(arm)}</h3>" + _table(
        ["config of trial", "seeds", "validation score mean", "sd"],
        [[c["source_trial"], str(c["seeds"]), _num(c["val_mean"]), _num(c["val_sd"])] for c in f.by_config])
        for arm, f in s.arms.items() if f.by_config)
