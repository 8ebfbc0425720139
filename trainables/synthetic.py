"""Synthetic tabular tasks (``synthetic:NAME[?...]``): a seeded frame with a learnable signal,
missing values and a stated prevalence, for demos, tests and benchmarks without a data file."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from trainables.errors import UserError

__all__ = ["SYNTHETIC_TASKS", "synthetic_frame", "parse_options"]

SYNTHETIC_TASKS = {
    "rare": "binary, about 1:50 positives, numeric + categorical + missing values",
    "screening": "multi-label (5 labels), about 1:5 each",
    "treatment": "binary, about 1:3, where calibration matters",
}


def parse_options(spec: str, query: str, opts: dict[str, float]) -> None:
    """A synthetic task's ``?key=value&…`` options into ``opts`` (its defaults, which name the options
    there are): an unknown key, or a value that is no finite number, is one line naming it."""
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in opts:
            raise UserError(f"{spec}: unknown option '{key}'; options are {', '.join(opts)}")
        try:
            opts[key] = float(value)
        except ValueError:
            raise UserError(f"{spec}: option '{key}' must be a number, got '{value}'") from None
        if not math.isfinite(opts[key]):
            raise UserError(f"{spec}: option '{key}' must be a finite number, got '{value}'")


def synthetic_frame(spec: str) -> tuple[pd.DataFrame, list[str], str]:
    """``synthetic:NAME[?n=..&seed=..&prevalence=..&features=..&signal=..]`` → (frame, labels, canonical spec).

    The tasks have a learnable signal (a few strong features, one interaction, a categorical and a
    boolean effect) and missing values, so they exercise the whole preprocessing path.
    """
    name, _, query = spec.removeprefix("synthetic:").partition("?")
    if name not in SYNTHETIC_TASKS:
        raise UserError(f"unknown synthetic task '{name}'; "
                        f"known: {', '.join('synthetic:' + t for t in SYNTHETIC_TASKS)}")
    defaults = {"rare": (10000, 1 / 50, 16), "screening": (4000, 1 / 5, 16), "treatment": (4000, 1 / 3, 12)}[name]
    opts: dict[str, float] = {"n": defaults[0], "prevalence": defaults[1], "features": defaults[2], "seed": 0,
                              "signal": 1.0}
    parse_options(spec, query, opts)
    n, prev, n_feat, seed = int(opts["n"]), opts["prevalence"], int(opts["features"]), int(opts["seed"])
    strength = opts["signal"]
    if n < 100 or not 0 < prev < 0.5 or n_feat < 6 or not 0 < strength <= 10:
        raise UserError(f"{spec}: need n >= 100, 0 < prevalence < 0.5, features >= 6 and 0 < signal <= 10")
    rng = np.random.default_rng([seed, sorted(SYNTHETIC_TASKS).index(name)])
    x = rng.standard_normal((n, n_feat))
    site = rng.choice(np.array(["north", "south", "east", "west"]), size=n, p=[0.4, 0.3, 0.2, 0.1])
    smoker = rng.random(n) < 0.3
    site_effect = pd.Series(site).map({"north": 0.0, "south": 0.4, "east": -0.4, "west": 0.8}).to_numpy()

    def signal(w_scale: float, shift: int = 0) -> np.ndarray:
        w = np.zeros(n_feat)
        w_scale *= strength
        w[(np.arange(5) + shift) % n_feat] = np.array([1.2, -1.0, 0.8, 0.7, -0.6]) * w_scale
        return x @ w + 0.6 * w_scale * x[:, shift % n_feat] * x[:, (shift + 1) % n_feat] + site_effect + 0.7 * smoker

    if name == "screening":
        logits = np.stack([signal(1.4, shift=2 * k) for k in range(5)], axis=1)
        labels = [f"finding_{k}" for k in range(5)]
    else:
        logits = signal(1.6 if name == "rare" else 0.9)[:, None]
        labels = ["outcome"]
    y = np.empty_like(logits)
    for j in range(logits.shape[1]):
        b = _intercept_for(logits[:, j], prev)
        y[:, j] = rng.random(n) < 1 / (1 + np.exp(-(logits[:, j] + b)))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(n_feat)])
    for col in ("x2", "x5", "x9"):
        if col in frame:
            frame.loc[rng.random(n) < 0.08, col] = np.nan  # missing completely at random
    frame["site"] = site
    frame["smoker"] = np.where(smoker, "t", "f")
    frame.loc[rng.random(n) < 0.03, "smoker"] = None
    for j, lab in enumerate(labels):
        frame[lab] = y[:, j].astype(int)
    canonical = f"synthetic:{name}?n={n}&prevalence={prev:g}&features={n_feat}&seed={seed}&signal={strength:g}"
    return frame, labels, canonical


def _intercept_for(logit: np.ndarray, prevalence: float) -> float:
    """The intercept b with mean(sigmoid(logit + b)) = prevalence (bisection; the mean is monotone in b)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(logit + mid)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2 if math.isfinite(lo + hi) else 0.0
