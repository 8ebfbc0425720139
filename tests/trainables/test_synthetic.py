"""trainables/synthetic.py: the synthetic tasks, read through prepare_data, have their stated prevalence."""

from __future__ import annotations

import pytest

from trainables.data import prepare_data
from trainables.errors import UserError


@pytest.mark.parametrize("task,labels,prevalence", [
    ("synthetic:rare", 1, 1 / 50), ("synthetic:screening", 5, 1 / 5), ("synthetic:treatment", 1, 1 / 3),
])
def test_synthetic_tasks_have_the_stated_prevalence(task, labels, prevalence):
    data = prepare_data(task)
    assert data.n_labels == labels
    for p in data.prevalence():
        assert p == pytest.approx(prevalence, rel=0.2)
    assert prepare_data(task).fingerprint == data.fingerprint
    assert prepare_data(task + "?seed=1").fingerprint != data.fingerprint


def test_unknown_synthetic_task_lists_known_ones():
    with pytest.raises(UserError, match="synthetic:rare, synthetic:screening, synthetic:treatment"):
        prepare_data("synthetic:common")
