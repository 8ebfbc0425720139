"""Search spaces: 500 sampled configs validate; conditionals, fixed values and user ranges hold;
trial 0 is the preset in a real Optuna study driven the way the tuner drives it."""

from __future__ import annotations

import math

import optuna
import pytest

from search_spaces import BUILTIN_SCENARIOS, build_space, load_scenario, scenario_space
from tests.search_spaces.sampling import sample_config
from trainables.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = [(name, False) for name in BUILTIN_SCENARIOS] + [("rare_disease_detection", True),
                                                          ("treatment_response_prediction", True)]


def _samples(space, n, seed, sampler="random"):
    make = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    study = optuna.create_study(sampler=make(seed=seed), direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(sample_config(space, trial))
        study.tell(trial, float(len(out) % 7))
    return out


@pytest.mark.parametrize("name,search_aux", SPACES)
def test_500_sampled_configs_all_validate_and_conditionals_hold(name, search_aux):
    sc = load_scenario(name)
    space = scenario_space(sc, search_aux=search_aux)
    samples = []
    for seed, sampler in ((0, "random"), (1, "random"), (2, "random"), (3, "tpe"), (4, "tpe")):
        samples += _samples(space, 100, seed, sampler)
    assert len(samples) == 500
    for s in samples:
        cfg = sc.config.with_overrides(s)  # raises on any invalid value
        flat = cfg.flat()
        for key, value in s.items():
            assert flat[key] == value or (isinstance(value, float) and math.isclose(flat[key], value))
        strategy = s.get("weighting.strategy")
        if strategy is not None:
            assert ("weighting.softadapt_beta" in s) == (strategy == "softadapt")
            assert ("weighting.gradsim_every" in s) == (strategy == "gradsim")
            assert ("weighting.gradsim_mode" in s) == (strategy == "gradsim")
        if search_aux:
            aux = s["aux_loss.type"]
            assert ("aux_loss.gamma_neg" in s) == (aux == "asymmetric")
            assert ("aux_loss.smoothing" in s) == (aux == "label_smooth")
            assert ("aux_loss.kind" in s) == (aux == "calibration")
    if search_aux:
        assert {s["aux_loss.type"] for s in samples} == {"asymmetric", "label_smooth", "calibration", "bce"}


def test_ema_decay_is_searched_on_log_one_minus_decay():
    space = scenario_space(load_scenario("multi_disease_screening"))
    decays = [s["teacher.ema_decay"] for s in _samples(space, 400, 0)]
    assert all(0.97 <= d <= 0.9999 for d in decays)
    lags = [math.log10(1 - d) for d in decays]
    # uniform in log10(1 - d) over [-4, log10(0.03)]: each decade gets a fair share
    assert sum(-4 <= g < -3 for g in lags) > 0.25 * len(lags)
    assert sum(-3 <= g < -2 for g in lags) > 0.25 * len(lags)


def test_fixed_values_never_vary_and_narrowed_ranges_are_respected():
    sc = load_scenario("rare_disease_detection")
    space = scenario_space(sc, ranges={"main_loss.gamma": [1.0, 2.0], "optim.lr": {"low": 2e-4, "high": 5e-4},
                                       "main_loss.alpha": {"choices": ["auto", 0.5]},
                                       "optim.batch_size": [64, 512]},
                           fixed={"teacher.ema_decay": 0.999, "distill.temperature": 3.0})
    for s in _samples(space, 300, 7):
        cfg = space.base.with_overrides(s)
        assert cfg.teacher.ema_decay == 0.999 and cfg.distill.temperature == 3.0
        assert s["teacher.ema_decay"] == 0.999
        assert 1.0 <= s["main_loss.gamma"] <= 2.0 and 2e-4 <= s["optim.lr"] <= 5e-4
        assert s["main_loss.alpha"] in ("auto", 0.5)
        assert isinstance(s["optim.batch_size"], int) and 64 <= s["optim.batch_size"] <= 512
    assert space.describe()["optim.lr"] == "[0.0002, 0.0005] log"  # a narrowed range keeps its scale


def test_a_preset_search_block_is_used_and_a_scalar_fixes(tmp_path):
    text = load_scenario("baseline").to_yaml() + "search:\n  optim.lr: [0.001, 0.002]\n  model.dropout: 0.3\n"
    (tmp_path / "p.yaml").write_text(text)
    space = scenario_space(load_scenario(str(tmp_path / "p.yaml")))
    assert space.fixed == {"model.dropout": 0.3} and space.base.model.dropout == 0.3
    for s in _samples(space, 50, 0):
        assert 0.001 <= s["optim.lr"] <= 0.002 and s["model.dropout"] == 0.3


@pytest.mark.parametrize("ranges,fixed,pattern", [
    ({"main_loss.gamma": [4.0, 1.0]}, {}, r"search\.main_loss\.gamma: low must be below high, got \[4\.0, 1\.0\]"),
    ({"main_loss.gamma": [1.0, 1.0]}, {}, r"low must be below high"),
    ({"main_loss.gamma": [-1.0, 2.0]}, {},
     r"search\.main_loss\.gamma: \[-1\.0, 2\.0\] is outside what the config allows, \[0, 10\]"),
    ({"teacher.ema_decay": [0.9, 1.0]}, {}, r"outside what the config allows, \(0, 1\)"),
    ({"optim.lr": {"low": 0.0, "high": 0.1, "scale": "log"}}, {},
     r"outside what the config allows|log scale needs low > 0"),
    ({"main_loss.gama": [1, 2]}, {}, r"search\.main_loss\.gama: unknown config key"),
    ({"weighting.strategy": {"choices": ["static", "magic"]}}, {},
     r"choice 'magic' is not allowed \(allowed: static, softadapt"),
    ({"optim.lr": {"low": 1e-4, "high": 1e-2, "scale": "cubic"}}, {}, r"scale must be linear, log or log1m"),
    ({}, {"teacher.ema_decy": 0.99}, r"--fix: unknown config key 'teacher\.ema_decy'"),
    ({}, {"teacher.ema_decay": 1.5}, r"teacher\.ema_decay: must be in \(0, 1\); got 1\.5"),
])
def test_invalid_ranges_and_fixes_name_the_key_and_values(ranges, fixed, pattern):
    with pytest.raises(UserError, match=pattern):
        scenario_space(load_scenario("rare_disease_detection"), ranges=ranges, fixed=fixed)


def test_a_range_that_breaks_the_config_is_refused_up_front():
    with pytest.raises(UserError, match=r"search\.distill\.weight: .*needs the EMA teacher"):
        build_space(load_scenario("rare_disease_detection").config.with_overrides(
            {"teacher.enabled": False, "distill.weight": 0.0}), ranges={"distill.weight": [0.0, 0.5]})


# ---------------------------------------------------------------- warm start
def _ray_searcher(space, with_points):
    from ray.tune.search.optuna import OptunaSearch

    points = [space.warm_start_point()] if with_points else None
    return OptunaSearch(space=space, metric="val/score", mode="max", seed=0, points_to_evaluate=points)


@pytest.mark.parametrize("name,search_aux", SPACES)
def test_trial_0_runs_the_preset_in_rays_optuna_searcher(name, search_aux):
    sc = load_scenario(name)
    space = scenario_space(sc, search_aux=search_aux)
    searcher = _ray_searcher(space, with_points=True)
    first = searcher.suggest("trial_0")
    assert sc.config.with_overrides(first) == sc.config
    # Optuna's own record of trial 0 is the preset too, so TPE learns from what really ran
    study_trial = searcher._ot_study.trials[0]
    assert study_trial.params == pytest.approx(space.warm_start_point())
    second = searcher.suggest("trial_1")
    assert sc.config.with_overrides(second) != sc.config


def test_trial_0_is_the_preset_even_when_the_enqueued_point_is_lost():
    sc = load_scenario("rare_disease_detection")
    space = scenario_space(sc)
    first = _ray_searcher(space, with_points=False).suggest("trial_0")
    assert {k: first[k] for k in space.preset_values()} == space.preset_values()


def test_a_preset_outside_narrowed_ranges_runs_first_projected_into_them():
    sc = load_scenario("rare_disease_detection")  # gamma 3.0, alpha 0.1
    space = scenario_space(sc, ranges={"main_loss.gamma": [1.0, 2.0], "main_loss.alpha": {"choices": ["auto", 0.5]}})
    first = _ray_searcher(space, with_points=True).suggest("trial_0")
    assert sc.config.with_overrides(first) == sc.config.with_overrides({"main_loss.gamma": 2.0,
                                                                        "main_loss.alpha": "auto"})
