"""The trial config: YAML round trip, dotted overrides, and errors that name key, range and value."""

from __future__ import annotations

import pytest

from trainables.config import AuxBCELossConfig, BCELossConfig, Config, field_choices, field_interval
from trainables.errors import UserError

VARIANTS = [
    {},
    {"aux_loss.type": "label_smooth", "aux_loss.smoothing": 0.2, "main_loss.alpha": "auto"},
    {"aux_loss.type": "calibration", "aux_loss.kind": "brier", "aux_loss.beta": 0.3, "main_loss.alpha": None},
    {"main_loss.type": "bce", "aux_loss.type": "none", "teacher.enabled": False, "distill.weight": 0},
    {"weighting.strategy": "gradsim", "weighting.gradsim_mode": "gated", "teacher.ema_decay": 0.9999,
     "aux_loss.eps": 1e-8, "optim.lr": 3.7e-4, "model.hidden": [64, 32, 16]},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_yaml_round_trip_is_exact(overrides):
    cfg = Config().with_overrides(overrides)
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_load_file_and_reserved_blocks(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("main_loss:\n  type: focal\n  gamma: 3\nprovenance:\n  job: abc\nsearch:\n  main_loss.gamma: [1, 4]\n")
    cfg = Config.load(p)
    assert cfg.main_loss.gamma == 3.0 and cfg.aux_loss.type == "asymmetric"


def test_overrides_parse_yaml_values_and_switch_types():
    cfg = Config().with_overrides(["main_loss.gamma=3", "main_loss.alpha=null", "aux_loss.type=label_smooth",
                                   "aux_loss.smoothing=0.05", "model.hidden=[32, 16]"])
    assert cfg.main_loss.gamma == 3 and cfg.main_loss.alpha is None
    assert cfg.aux_loss.type == "label_smooth" and cfg.aux_loss.smoothing == 0.05
    assert cfg.model.hidden == (32, 16)
    assert cfg.flat()["aux_loss.smoothing"] == 0.05 and "aux_loss.gamma_neg" not in cfg.flat()


@pytest.mark.parametrize("overrides,expected", [
    ({"main_loss.alpha": 1.5}, r"main_loss\.alpha: must be a number in \[0, 1\].*got 1\.5"),
    ({"main_loss.alpha": -0.1}, r"main_loss\.alpha: .*got -0\.1"),
    ({"main_loss.gamma": -1}, r"main_loss\.gamma: must be in \[0, 10\]; got -1"),
    ({"teacher.ema_decay": 1.0}, r"teacher\.ema_decay: must be in \(0, 1\); got 1\.0"),
    ({"teacher.ema_decay": 0}, r"teacher\.ema_decay: must be in \(0, 1\); got 0"),
    ({"distill.temperature": 0}, r"distill\.temperature: must be in \(0, 100\]; got 0"),
    ({"distill.temperature": -2}, r"distill\.temperature: must be in \(0, 100\]; got -2"),
    ({"main_loss.gama": 3}, r"unknown config key 'main_loss\.gama' \(known keys here: alpha, cb_beta, gamma, type\)"),
    ({"optimiser.lr": 3}, r"unknown config key 'optimiser\.lr'"),
    ({"aux_loss.type": "fancy"}, r"aux_loss\.type: must be one of .*'asymmetric'.*got 'fancy'"),
    ({"weighting.strategy": "magic"},
     r"weighting\.strategy: must be 'static', 'softadapt', 'uncertainty' or 'gradsim'"),
    ({"aux_loss.type": "none"}, r"distill\.weight=0\.5 needs an aux head"),
    ({"teacher.enabled": False}, r"distill\.weight=0\.5 needs the EMA teacher"),
])
def test_invalid_values_name_key_range_and_value(overrides, expected):
    with pytest.raises(UserError, match=expected):
        Config().with_overrides(overrides)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("main_loss:\n  gamma: [1, 2\nseed: 3\n")
    with pytest.raises(UserError, match=r"bad\.yaml: malformed YAML at line \d+"):
        Config.load(p)


def test_yaml_that_is_not_a_mapping_and_missing_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a mapping"):
        Config.load(p)
    with pytest.raises(UserError, match="does not exist"):
        Config.load(tmp_path / "nope.yaml")


def test_set_without_equals_sign():
    with pytest.raises(UserError, match="KEY=VALUE"):
        Config().with_overrides(["main_loss.gamma"])


def test_field_intervals_and_choices_for_search_spaces():
    assert field_interval("main_loss.gamma").describe() == "[0, 10]"
    assert field_interval("teacher.ema_decay").describe() == "(0, 1)"
    assert field_interval("aux_loss.smoothing", section_type="label_smooth").describe() == "[0, 1)"
    assert field_choices("weighting.strategy") == ("static", "softadapt", "uncertainty", "gradsim")
    assert field_choices("teacher.warmup") == (False, True)


def test_bce_is_one_section_on_either_head_and_loads_as_before():
    assert AuxBCELossConfig is BCELossConfig
    cfg = Config.from_yaml("main_loss:\n  type: bce\naux_loss:\n  type: bce\n")
    assert type(cfg.main_loss) is type(cfg.aux_loss) is BCELossConfig
    assert cfg.to_dict()["aux_loss"] == {"type": "bce"} == cfg.to_dict()["main_loss"]
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(UserError, match=r"unknown config key 'aux_loss\.gamma'"):
        Config.from_yaml("aux_loss:\n  type: bce\n  gamma: 2\n")
