"""Scenario detection on the synthetic tasks and at the thresholds' edges."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import RARE_RATIO, detect_scenario
from trainables.data import prepare_data


@pytest.mark.parametrize("task,expected", [
    ("synthetic:rare", "rare_disease_detection"),
    ("synthetic:screening", "multi_disease_screening"),
    ("synthetic:treatment", "treatment_response_prediction"),
])
def test_detection_on_the_synthetic_tasks(task, expected):
    data = prepare_data(task)
    d = detect_scenario(data.train.y.numpy(), data.label_names)
    assert d.scenario == expected and d.reasons


def _binary(pos, neg):
    return np.array([1] * pos + [0] * neg)


def test_one_label_at_exactly_one_in_twenty_is_rare_and_just_above_is_not():
    assert RARE_RATIO == 20
    assert detect_scenario(_binary(10, 200)).scenario == "rare_disease_detection"  # 1:20
    assert detect_scenario(_binary(10, 199)).scenario == "treatment_response_prediction"  # 1:19.9
    d = detect_scenario(_binary(1, 500))
    assert d.scenario == "rare_disease_detection" and "1:500" in d.reasons[0]
    assert detect_scenario(_binary(50, 50)).scenario == "treatment_response_prediction"


def test_two_labels_are_screening_even_when_one_is_rare():
    y = np.stack([_binary(10, 990), np.roll(_binary(300, 700), 7)], axis=1)
    d = detect_scenario(y, ["rare_one", "common_one"])
    assert d.scenario == "multi_disease_screening" and d.n_labels == 2
    assert d.rarest_label == "rare_one" and d.rarest_ratio == pytest.approx(99.0)


def test_one_class_labels_are_refused():
    with pytest.raises(ValueError, match="positives and negatives"):
        detect_scenario(np.zeros(10))
