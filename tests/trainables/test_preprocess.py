"""trainables/preprocess.py: the preprocessing fit on the training rows only, label spellings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainables.preprocess import Preprocessor, parse_labels


def test_preprocessing_is_fit_on_the_training_split_only():
    train = pd.DataFrame({"v": [1.0, 2.0, np.nan, 3.0], "c": ["x", "y", "x", None]})
    other = pd.DataFrame({"v": [1000.0, np.nan], "c": ["z", "y"]})
    pre = Preprocessor.fit(train)
    col = next(c for c in pre.columns if c["name"] == "v")
    assert col["median"] == 2.0  # the extreme 1000 in the other split never enters
    out = pre.transform(other)
    names = pre.feature_names
    assert names == ["v", "v__missing", "c=x", "c=y", "c__missing"]
    filled = (2.0 - col["mean"]) / col["std"]
    assert out[1, 0] == pytest.approx(filled) and out[1, 1] == 1.0
    assert out[0, 2] == 0 and out[0, 3] == 0  # unseen category 'z' → all zeros
    assert Preprocessor.from_dict(pre.to_dict()).transform(other).tolist() == out.tolist()


@pytest.mark.parametrize("values,expected", [
    (["yes", "no", "Yes", "NO"], [1, 0, 1, 0]),
    (["true", "false", "TRUE", "False"], [1, 0, 1, 0]),
    ([1, 0, 1, 0], [1, 0, 1, 0]),
    ([1.0, 0.0, 0.0, 1.0], [1, 0, 0, 1]),
    ([True, False, False, True], [1, 0, 0, 1]),
])
def test_label_spellings(values, expected):
    assert parse_labels(pd.Series(values), name="y", source="t").tolist() == expected
