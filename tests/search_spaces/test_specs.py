"""Structured parameter specs (issue 9): each searched key is a ParamSpec with an Optuna distribution,
a scale and a condition; the fixed values are data; ``to_dict``/``from_dict`` round-trip through JSON;
conditions decide which keys a sampled trial has; the log(1 - d) wrapper maps both ways."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search_spaces import (
    BUILTIN_SCENARIOS,
    Condition,
    Log1mFloat,
    ParamSpec,
    SearchSpace,
    SpaceSpec,
    load_scenario,
    scenario_space,
)
from tests.search_spaces.sampling import sample_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = [(name, False) for name in BUILTIN_SCENARIOS] + [("rare_disease_detection", True),
                                                          ("treatment_response_prediction", True)]
NARROWED = {"main_loss.gamma": [1.0, 2.0], "optim.lr": {"low": 2e-4, "high": 5e-4},
            "main_loss.alpha": {"choices": ["auto", None, 0.5]}, "optim.batch_size": [64, 512],
            "weighting.gradsim_every": {"low": 2, "high": 10, "scale": "linear"},
            "weighting.softadapt_beta": [0.05, 0.5]}


def _space(name: str, search_aux: bool = False, **kwargs) -> SearchSpace:
    return scenario_space(load_scenario(name), search_aux=search_aux, **kwargs)


def _samples(space: SearchSpace, n: int, seed: int) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample_config(space, trial))
        study.tell(trial, 0.0)
    return out


# ---------------------------------------------------------------- the specs
@pytest.mark.parametrize("name,search_aux", SPACES)
def test_every_searched_key_is_one_spec_with_an_optuna_distribution(name, search_aux):
    space = _space(name, search_aux)
    params = space.params()
    assert params and all(isinstance(p, ParamSpec) for p in params)
    names = [p.name for p in params]
    assert len(names) == len(set(names)) == len(space.describe()) - len(space.fixed)
    assert space.searched_keys() == names
    for p in params:
        assert type(p.optuna_distribution) in (FloatDistribution, IntDistribution, CategoricalDistribution)
        if p.scale == "log1m":
            assert isinstance(p.distribution, Log1mFloat)
        else:
            assert p.optuna_distribution is p.distribution  # no wrapper where Optuna's own distribution fits
        if p.condition is not None:  # a condition names a key that is searched before it, or a constant
            parent = p.condition.key
            assert parent not in names or names.index(parent) < names.index(p.name)


def test_the_rare_disease_space_as_specs():
    space = _space("rare_disease_detection")
    by = {p.name: p for p in space.params()}
    assert by["main_loss.gamma"].distribution == FloatDistribution(1.5, 4.5)
    assert by["main_loss.gamma"].scale == "linear" and by["main_loss.gamma"].condition is None
    assert by["optim.lr"].distribution == FloatDistribution(1e-4, 1e-2, log=True)
    assert by["optim.lr"].scale == "log"
    assert by["main_loss.alpha"].distribution == CategoricalDistribution(["auto", 0.1, 0.25, 0.5, 0.75, 0.9])
    assert by["main_loss.alpha"].scale is None and by["main_loss.alpha"].kind == "categorical"
    softadapt = by["weighting.softadapt_beta"]
    assert softadapt.distribution == FloatDistribution(0.01, 1.0, log=True)
    assert softadapt.condition == Condition(key="weighting.strategy", values=("softadapt",))
    every = by["weighting.gradsim_every"]
    assert every.distribution == IntDistribution(1, 20, log=True) and every.kind == "int"
    assert every.condition == by["weighting.gradsim_mode"].condition == Condition(key="weighting.strategy",
                                                                                    values=("gradsim",))
    decay = by["teacher.ema_decay"]  # preset 0.9999: 1 - d from 1e-5 to 3e-3
    assert decay.scale == "log1m" and (decay.low, decay.high) == pytest.approx((1.0 - 3e-3, 1.0 - 1e-5))
    assert decay.optuna_distribution == FloatDistribution(1.0 - decay.high, 1.0 - decay.low, log=True)
    # the display strings are what they were
    assert space.describe()["teacher.ema_decay"] == "[0.997, 0.99999] log1m"
    assert space.describe()["weighting.gradsim_every"] == "[1, 20] log when weighting.strategy in {gradsim}"
    assert space.describe()["main_loss.alpha"] == "{auto, 0.1, 0.25, 0.5, 0.75, 0.9}"
    assert space.fixed == {}


def test_search_aux_makes_each_aux_parameter_conditional_on_its_type():
    by = {p.name: p for p in _space("rare_disease_detection", search_aux=True).params()}
    assert by["aux_loss.type"].condition is None
    expected = {"aux_loss.gamma_neg": "asymmetric", "aux_loss.gamma_pos": "asymmetric",
                "aux_loss.clip": "asymmetric", "aux_loss.smoothing": "label_smooth",
                "aux_loss.kind": "calibration", "aux_loss.beta": "calibration"}
    for key, aux_type in expected.items():
        assert by[key].condition == Condition(key="aux_loss.type", values=(aux_type,))


def test_user_ranges_and_fixed_values_are_specs_and_data():
    space = _space("rare_disease_detection", ranges=NARROWED, fixed={"teacher.ema_decay": 0.999,
                                                                     "distill.temperature": 3.0})
    by = {p.name: p for p in space.params()}
    assert space.fixed == {"teacher.ema_decay": 0.999, "distill.temperature": 3.0}
    assert not set(space.fixed) & set(space.searched_keys())
    assert by["optim.batch_size"].distribution == IntDistribution(64, 512)
    # a narrowed range keeps its scale
    assert by["optim.lr"].distribution == FloatDistribution(2e-4, 5e-4, log=True)
    assert by["main_loss.alpha"].choices == ("auto", None, 0.5)
    # narrowing a conditional parameter keeps its condition
    softadapt = Condition(key="weighting.strategy", values=("softadapt",))
    assert by["weighting.softadapt_beta"].condition == softadapt
    assert by["weighting.gradsim_every"].distribution == IntDistribution(2, 10)
    assert by["weighting.gradsim_every"].condition == Condition(key="weighting.strategy", values=("gradsim",))


# ---------------------------------------------------------------- to_dict / from_dict
@pytest.mark.parametrize("name,search_aux", SPACES)
def test_to_dict_round_trips_through_json(name, search_aux):
    space = _space(name, search_aux)
    doc = json.loads(json.dumps(space.to_dict()))
    back = SpaceSpec.from_dict(doc)
    assert back == space.space_spec()
    assert back.searched_keys() == space.searched_keys() and back.fixed == space.fixed
    for p, q in zip(space.params(), back.params):
        assert ParamSpec.from_dict(json.loads(json.dumps(p.to_dict()))) == p == q
        assert q.describe() == p.describe() and q.spec() == p.spec()
        assert q.optuna_distribution == p.optuna_distribution


def test_the_round_trip_keeps_choice_types_fixed_values_and_the_log1m_bounds_exactly():
    ranges = {**NARROWED, "teacher.ema_decay": {"low": 0.99, "high": 0.9995},
              "weighting.strategy": {"choices": ["static", "softadapt"]}}
    fixed = {"distill.temperature": 3.0, "optim.max_epochs": 7}
    space = _space("rare_disease_detection", ranges=ranges, fixed=fixed)
    back = SpaceSpec.from_dict(json.loads(json.dumps(space.to_dict())))
    by = {p.name: p for p in back.params}
    alpha = by["main_loss.alpha"].choices
    assert alpha == ("auto", None, 0.5) and [type(c) for c in alpha] == [str, type(None), float]
    assert by["optim.batch_size"].low == 64 and isinstance(by["optim.batch_size"].low, int)
    assert (by["teacher.ema_decay"].low, by["teacher.ema_decay"].high) == (0.99, 0.9995)
    assert by["teacher.ema_decay"].distribution == Log1mFloat(low=0.99, high=0.9995)
    assert by["weighting.strategy"].choices == ("static", "softadapt")
    assert back.fixed == {"distill.temperature": 3.0, "optim.max_epochs": 7}
    assert isinstance(back.fixed["optim.max_epochs"], int)


def test_the_description_is_small_enough_for_an_mlflow_tag():
    # MLflow keeps a tag value up to 8000 characters (a param 6000): the widest built-in space fits
    text = json.dumps(_space("rare_disease_detection", search_aux=True).to_dict(), separators=(",", ":"))
    assert len(text) < 6000


@pytest.mark.parametrize("doc,pattern", [
    ({"format": 99, "params": [], "fixed": {}}, r"format 1 \(format 99\)"),
    ([], r"format 1"),
    ({"format": 1, "params": {}, "fixed": {}}, r"list 'params'"),
    ({"format": 1, "params": [{"name": "x"}], "fixed": {}}, r"a distribution is"),
    ({"format": 1, "params": [{"name": "x", "distribution": {"name": "FloatDistribution", "attributes": {
        "low": 2.0, "high": 1.0, "log": False, "step": None}}}]}, r"low <= high"),
    ({"format": 1, "params": [{"name": "x", "scale": "log", "distribution": {
        "name": "FloatDistribution", "attributes": {"low": 0.0, "high": 1.0, "log": False}}}]},
     r"scale 'log' does not match"),
    ({"format": 1, "params": [{"name": "x", "condition": {"key": "y"}, "distribution": {
        "name": "CategoricalDistribution", "attributes": {"choices": ["a"]}}}]}, r"a condition is"),
    ({"format": 1, "params": [{"name": "x", "distribution": {"name": "Log1mFloat",
                                                              "attributes": {"low": 0.9, "high": 1.0}}}]},
     r"0 < low < high < 1"),
])
def test_a_damaged_description_is_a_value_error(doc, pattern):
    with pytest.raises(ValueError, match=pattern):
        SpaceSpec.from_dict(doc)


# ---------------------------------------------------------------- conditions
@pytest.mark.parametrize("name,search_aux", SPACES)
def test_a_sampled_trial_has_a_conditional_key_exactly_when_its_condition_holds(name, search_aux):
    space = _space(name, search_aux)
    base = space.base.flat()
    for s in _samples(space, 60, seed=11):
        for p in space.params():
            if p.condition is None:
                assert p.name in s
            else:
                parent = s.get(p.condition.key, space.fixed.get(p.condition.key, base.get(p.condition.key)))
                assert (p.name in s) == p.condition.holds(parent), (p.name, parent)


def test_a_condition_on_a_fixed_parent_follows_the_fixed_value():
    space = _space("rare_disease_detection", fixed={"weighting.strategy": "softadapt"})
    for s in _samples(space, 10, seed=0):
        assert "weighting.softadapt_beta" in s and "weighting.gradsim_every" not in s


def test_a_condition_reads_config_values_and_their_mlflow_text():
    c = Condition(key="weighting.strategy", values=["softadapt", "gradsim"])
    assert c.values == ("softadapt", "gradsim")  # a list from JSON becomes a tuple
    assert c.holds("gradsim") and not c.holds("static") and not c.holds(None)
    assert c.holds_logged("softadapt") and not c.holds_logged("static") and not c.holds_logged(None)
    flag = Condition(key="teacher.enabled", values=(True,))
    assert flag.holds(True) and flag.holds_logged("True") and not flag.holds_logged("False")
    assert Condition.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.describe() == "when weighting.strategy in {softadapt, gradsim}"


# ---------------------------------------------------------------- the log(1 - d) wrapper
def test_the_log1m_wrapper_samples_log_one_minus_d_and_maps_back():
    w = Log1mFloat(low=0.99, high=0.9999)
    assert w.optuna == FloatDistribution(1.0 - 0.9999, 1.0 - 0.99, log=True)
    assert w.to_config(w.to_optuna(0.999)) == pytest.approx(0.999, abs=1e-15)
    spec = ParamSpec(name="teacher.ema_decay", distribution=w)
    assert spec.kind == "float" and spec.scale == "log1m" and spec.spec() == {"low": 0.99, "high": 0.9999,
                                                                               "scale": "log1m"}
    # the value Optuna records is the lag 1 - d; the config gets d
    assert spec.suggest(optuna.trial.FixedTrial({"teacher.ema_decay": 0.001})) == pytest.approx(0.999)
    assert spec.to_optuna(0.999) == pytest.approx(0.001) and spec.to_config(0.001) == pytest.approx(0.999)
    assert spec.project(0.99999) == 0.9999 and spec.project(0.5) == 0.99  # bounds in config coordinates
    # uniform in u = log(1 - d): the two decades [1e-4, 1e-3) and [1e-3, 1e-2) get the same share
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lags = []
    for _ in range(2000):
        trial = study.ask()
        lags.append(1.0 - spec.suggest(trial))
        study.tell(trial, 0.0)
    low_decade = sum(lag < 1e-3 for lag in lags) / len(lags)
    assert 0.45 < low_decade < 0.55


def test_specs_rebuild_an_optuna_study_from_recorded_configs():
    """What the job's plots do: trials from configs (config coordinates), with the spec's distributions."""
    space = _space("rare_disease_detection", search_aux=True)
    study = optuna.create_study(direction="maximize")
    for i, s in enumerate(_samples(space, 20, seed=5)):
        specs = [p for p in space.params() if p.name in s]
        study.add_trial(optuna.trial.create_trial(
            params={p.name: p.to_optuna(s[p.name]) for p in specs},
            distributions={p.name: p.optuna_distribution for p in specs}, value=float(i % 5)))
    recorded = study.trials[1].params
    assert all(math.isfinite(v) for v in recorded.values() if isinstance(v, float))
    assert len(study.trials) == 20
