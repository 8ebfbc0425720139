"""The define-by-run function suggests exactly what it suggested before the parameters became
Optuna distributions (issue 9): same values, same Optuna records, same distributions, for seeded
random and TPE samplers.

``data/suggestions_before_issue_9.json`` was recorded with the code as it was before that change
(``python -m tests.search_spaces.test_suggestions_unchanged --record``). Recording it again with
newer code would make this test compare the code with itself: do it only when a change of
suggestions is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from search_spaces import load_scenario, scenario_space
from tests.search_spaces.sampling import sample_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIXTURE = Path(__file__).with_name("data") / "suggestions_before_issue_9.json"
N = 12
CASES: dict[str, dict[str, Any]] = {
    "baseline": {"name": "baseline"},
    "multi_disease_screening": {"name": "multi_disease_screening"},
    "rare_disease_detection+aux": {"name": "rare_disease_detection", "search_aux": True},
    "treatment_response_prediction+aux": {"name": "treatment_response_prediction", "search_aux": True},
    "rare_disease_detection+ranges": {
        "name": "rare_disease_detection",
        "ranges": {"main_loss.gamma": [1.0, 2.0], "optim.lr": {"low": 2e-4, "high": 5e-4},
                   "main_loss.alpha": {"choices": ["auto", 0.5]}, "optim.batch_size": [64, 512],
                   "weighting.gradsim_every": {"low": 2, "high": 10, "scale": "linear"},
                   "teacher.ema_decay": {"low": 0.99, "high": 0.9995}},
        "fixed": {"distill.temperature": 3.0}},
}


def _space(case: dict[str, Any]) -> Any:
    kwargs = dict(case)
    return scenario_space(load_scenario(kwargs.pop("name")), **kwargs)


def _sampler(kind: str) -> optuna.samplers.BaseSampler:
    # TPE takes over after 4 random trials, so most of the TPE run is really TPE's
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=3, n_startup_trials=4)
    return optuna.samplers.RandomSampler(seed=0)


def suggestions(case: dict[str, Any], kind: str) -> dict[str, Any]:
    """The first ``N`` trials as Ray's OptunaSearch would hand them out (trial 0 is the preset),
    where Optuna's own record of each differs, and every distribution Optuna was given."""
    space = _space(case)
    study = optuna.create_study(sampler=_sampler(kind), direction="maximize")
    trials, distributions = [], {}
    for i in range(N):
        trial = study.ask()
        config = sample_config(space, trial)
        # Optuna's record only where it differs from the config (log1m values, the preset's trial 0)
        trials.append({"config": config, "optuna": {k: v for k, v in trial.params.items()
                                                    if k not in config or config[k] != v}})
        distributions.update({k: optuna.distributions.distribution_to_json(d)
                              for k, d in trial.distributions.items()})
        study.tell(trial, float((i * 37) % 11))  # any fixed objective: TPE's choices depend on it
    return {"trials": trials, "distributions": distributions}


def _record() -> dict[str, Any]:
    return {key: {kind: suggestions(case, kind) for kind in ("random", "tpe")} for key, case in CASES.items()}


def _compact(doc: dict[str, Any]) -> str:
    """JSON with one line per trial and per distribution: small, and a changed value shows in a diff."""
    def dump(v: Any) -> str:
        return json.dumps(v, sort_keys=True)

    out = ["{"]
    for i, (key, kinds) in enumerate(doc.items()):
        out.append(f" {dump(key)}: {{")
        for j, (kind, rec) in enumerate(kinds.items()):
            dists = ",\n".join(f"    {dump(k)}: {dump(v)}" for k, v in sorted(rec["distributions"].items()))
            trials = ",\n".join(f"    {dump(t)}" for t in rec["trials"])
            out.append(f"  {dump(kind)}: {{\n   \"distributions\": {{\n{dists}\n   }},\n"
                       f"   \"trials\": [\n{trials}\n   ]\n  }}" + ("," if j < len(kinds) - 1 else ""))
        out.append(" }" + ("," if i < len(doc) - 1 else ""))
    return "\n".join(out) + "\n}\n"


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-12 relative: TPE's float64 exp and log (its Parzen estimators) round in the
    last bits differently from one CPU to another (numpy takes a vector path of its own where AVX-512
    is there); on a machine kind without AVX-512 the recorded values came out a few ulp apart (at most
    2e-15 relative, no choice or integer changed). A changed suggestion is many orders larger; names,
    choices and integers stay exact."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_the_first_suggestions_of_a_seeded_sampler_are_unchanged(key, kind):
    before = json.loads(FIXTURE.read_text(encoding="utf-8"))[key][kind]
    now = json.loads(json.dumps(suggestions(CASES[key], kind)))  # the same JSON round trip as the record
    assert now["distributions"] == before["distributions"]
    for i, (a, b) in enumerate(zip(now["trials"], before["trials"])):
        assert _same(a, b), f"trial {i}: {a} != {b}"
    assert len(now["trials"]) == len(before["trials"]) == N


def test_a_changed_suggestion_is_not_within_the_float_tolerance():
    assert _same({"lr": 1e-3, "gamma": 2}, {"lr": 1e-3 * (1 + 2e-15), "gamma": 2})
    assert not _same({"lr": 1e-3}, {"lr": 1.0000001e-3})
    assert not _same({"gamma": 2}, {"gamma": 2.0}) and not _same({"type": "focal"}, {"type": "bce"})


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    FIXTURE.parent.mkdir(exist_ok=True)
    doc = _record()
    FIXTURE.write_text(_compact(doc), encoding="utf-8")
    print(f"wrote {FIXTURE}")
