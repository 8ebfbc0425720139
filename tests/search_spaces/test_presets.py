"""Built-in presets are complete configs that round-trip; user presets load; bad presets fail clearly."""

from __future__ import annotations

import pytest

from search_spaces import BUILTIN_SCENARIOS, available_scenarios, load_scenario
from search_spaces.presets import load_preset_file
from trainables.config import Config
from trainables.errors import UserError

EXPECTED = {
    "rare_disease_detection": {"main_loss.alpha": 0.1, "main_loss.gamma": 3.0, "aux_loss.type": "asymmetric",
                               "aux_loss.gamma_neg": 4.0, "aux_loss.gamma_pos": 1.0, "aux_loss.clip": 0.05,
                               "distill.weight": 0.3, "teacher.ema_decay": 0.9999},
    "multi_disease_screening": {"main_loss.alpha": 0.25, "main_loss.gamma": 2.0, "aux_loss.type": "label_smooth",
                                "distill.weight": 0.2, "teacher.ema_decay": 0.999},
    "treatment_response_prediction": {"main_loss.alpha": 0.3, "main_loss.gamma": 1.5, "aux_loss.type": "calibration",
                                      "distill.weight": 0.1, "teacher.ema_decay": 0.995},
    "baseline": {"main_loss.type": "bce", "aux_loss.type": "none", "teacher.enabled": False, "distill.weight": 0.0},
}


@pytest.mark.parametrize("name", BUILTIN_SCENARIOS)
def test_builtin_presets_hold_their_settings_and_round_trip(name):
    sc = load_scenario(name)
    flat = sc.config.flat()
    for key, value in EXPECTED[name].items():
        assert flat[key] == value, key
    assert Config.from_yaml(sc.config.to_yaml()) == sc.config
    assert Config.from_yaml(sc.to_yaml()) == sc.config  # the preset file form too (scenario block ignored)


def test_user_presets_from_a_file_and_a_folder(tmp_path, monkeypatch):
    (tmp_path / "icu.yaml").write_text(load_scenario("rare_disease_detection").to_yaml()
                                       .replace("name: rare_disease_detection", "name: icu_sepsis"))
    sc = load_scenario(str(tmp_path / "icu.yaml"))
    assert sc.name == "icu_sepsis" and sc.config == load_scenario("rare_disease_detection").config
    assert "icu_sepsis" in available_scenarios([tmp_path])
    monkeypatch.setenv("LOSSTUNE_PRESETS", str(tmp_path))
    assert load_scenario("icu_sepsis").source.endswith("icu.yaml")


def test_unknown_scenario_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown scenario 'sepsis'; known: rare_disease_detection, "
                                        "multi_disease_screening, treatment_response_prediction, baseline"):
        load_scenario("sepsis")


def test_malformed_and_invalid_preset_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("scenario: {name: x\nmain_loss: {gamma: 2}\n")
    with pytest.raises(UserError, match=r"bad\.yaml: malformed YAML at line"):
        load_preset_file(tmp_path / "bad.yaml")
    (tmp_path / "wrong.yaml").write_text("main_loss: {gamma: -3}\n")
    with pytest.raises(UserError, match=r"wrong\.yaml: main_loss\.gamma: must be in \[0, 10\]; got -3"):
        load_preset_file(tmp_path / "wrong.yaml")


def test_a_preset_may_name_the_metric_its_searches_maximise(tmp_path):
    from search_spaces import load_scenario
    from search_spaces.presets import load_preset_file
    from trainables.errors import UserError

    assert load_scenario("treatment_response_prediction").metric == "val/score_ece"
    assert load_scenario("rare_disease_detection").metric is None  # the job's default, val/score
    text = tmp_path / "x.yaml"
    text.write_text("scenario: {name: x, description: y, metric: val/accuracy}\n")
    with pytest.raises(UserError, match=r"scenario\.metric must be one of .*val/score_ece, got 'val/accuracy'"):
        load_preset_file(text)
