"""Optuna define-by-run search spaces around a scenario preset.

A ``SearchSpace`` is a callable ``space(trial) -> dict`` as Ray's ``OptunaSearch`` takes it. Every
suggested name is a dotted config path (``main_loss.gamma``), so a sampled dict applies to the
config with ``Config.with_overrides`` and no mapping table.

What is searched is data: one ``ParamSpec`` per dotted key (its Optuna distribution, its scale and
the ``Condition`` under which it exists) plus the fixed values. ``SearchSpace.to_dict()`` writes
that as JSON-ready data and ``SpaceSpec.from_dict`` / ``ParamSpec.from_dict`` read it back without
a config or a preset, so readers of a job's record (``losstune best``, the job's plots) use the
same specs as the sampler instead of parsing display strings or guessing ranges from values.

Ranges sit around the preset's values (see ``default_params``); users narrow, widen, add or fix
them from YAML (a preset's ``search`` block) or the CLI (``--search``, ``--fix``):

    search:
      main_loss.gamma: [1.0, 4.0]                     # a range; the default scale is kept
      optim.lr: {low: 1.0e-4, high: 3.0e-3, scale: log}
      main_loss.alpha: {choices: [auto, 0.25, 0.5]}
      teacher.ema_decay: 0.999                        # a single value fixes the parameter

The EMA decay is searched on log(1 - d) (``scale: log1m``, see ``Log1mFloat``): Optuna's own record
of that parameter holds 1 - d; the value returned to Ray, and so the trial config, is d.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from trainables.config import Config, field_choices, field_interval, field_is_int, parse_overrides
from trainables.errors import UserError

__all__ = ["Condition", "Log1mFloat", "ParamSpec", "SpaceSpec", "SearchSpace", "build_space",
           "default_params", "parse_search_spec", "AUX_TYPES", "SPACE_FORMAT"]

AUX_TYPES = ("asymmetric", "label_smooth", "calibration", "bce")
ALPHA_CHOICES = ("auto", 0.1, 0.25, 0.5, 0.75, 0.9)
SPACE_FORMAT = 1  # the version of ``SearchSpace.to_dict()``'s layout; readers refuse others
Scale = Literal["linear", "log", "log1m"]
Distribution = FloatDistribution | IntDistribution | CategoricalDistribution
_OPTUNA_KINDS = (FloatDistribution, IntDistribution, CategoricalDistribution)


@dataclass(frozen=True, kw_only=True)
class Condition:
    """A parameter exists only while the config key ``key`` takes one of ``values``
    (``weighting.softadapt_beta`` only when ``weighting.strategy`` is ``softadapt``)."""

    key: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))  # a list from JSON or a caller

    def holds(self, value: Any) -> bool:
        """Whether the parent's config value ``value`` makes the parameter exist."""
        return value in self.values

    def holds_logged(self, text: str | None) -> bool:
        """The same for the parent's value as MLflow keeps it: a param is ``str(value)``."""
        return text is not None and text in {str(v) for v in self.values}

    def describe(self) -> str:
        return f"when {self.key} in {{{', '.join(map(str, self.values))}}}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "values": list(self.values)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Condition:
        if not (isinstance(doc, Mapping) and isinstance(doc.get("key"), str)
                and isinstance(doc.get("values"), list)):
            raise ValueError(f"a condition is {{key: str, values: [...]}}, got {doc!r}")
        return cls(key=doc["key"], values=tuple(doc["values"]))


@dataclass(frozen=True, kw_only=True)
class Log1mFloat:
    """A float d in [low, high] inside (0, 1), searched uniformly in u = log(1 - d).

    For the EMA decay, whose useful values crowd towards 1: 0.99, 0.999 and 0.9999 lie equally far
    apart in u. Optuna has no such distribution, so this wraps one. Optuna samples the lag 1 - d from
    ``FloatDistribution(1 - high, 1 - low, log=True)`` — a log-scaled float is uniform in its
    logarithm, here u — and ``to_config`` maps the lag back to d. Optuna's record of the parameter
    (and so TPE's model of it) holds 1 - d; the trial config holds d.

    The bounds stay in config coordinates because 1 - (1 - d) is not always d in floating point:
    ranges then print, project a preset and validate exactly as the user gave them.
    """

    low: float
    high: float

    @property
    def optuna(self) -> FloatDistribution:
        """What Optuna is given, in its coordinates (the lag 1 - d on a log scale)."""
        return FloatDistribution(1.0 - self.high, 1.0 - self.low, log=True)

    @staticmethod
    def to_config(lag: float) -> float:
        return 1.0 - lag

    @staticmethod
    def to_optuna(decay: float) -> float:
        return 1.0 - decay

    def to_dict(self) -> dict[str, Any]:
        return {"name": "Log1mFloat", "attributes": {"low": self.low, "high": self.high}}


def _distribution_to_dict(dist: Distribution | Log1mFloat) -> dict[str, Any]:
    # Optuna's own JSON layout ({"name": "FloatDistribution", "attributes": {...}}), which its storages
    # keep stable across versions; the log(1 - d) wrapper uses the same layout under its own name.
    return dist.to_dict() if isinstance(dist, Log1mFloat) else json.loads(distribution_to_json(dist))


def _distribution_from_dict(doc: Any) -> Distribution | Log1mFloat:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("attributes"), Mapping):
        raise ValueError(f"a distribution is {{name, attributes}} as Optuna writes it, got {doc!r}")
    try:
        if doc.get("name") == "Log1mFloat":
            low, high = float(doc["attributes"]["low"]), float(doc["attributes"]["high"])
            if not 0.0 < low < high < 1.0:
                raise ValueError(f"needs 0 < low < high < 1, got [{low}, {high}]")
            return Log1mFloat(low=low, high=high)
        dist = json_to_distribution(json.dumps(doc))
    except (KeyError, TypeError, ValueError) as exc:  # one error type for any damaged record
        raise ValueError(f"distribution {doc.get('name')!r}: {exc}") from None
    if not isinstance(dist, _OPTUNA_KINDS):
        raise ValueError(f"unsupported distribution {doc.get('name')!r}")
    return dist


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One searched config value: its dotted key (also Optuna's parameter name), its distribution
    and the condition under which it exists.

    ``distribution`` is the Optuna distribution that expresses the parameter (float, int or
    categorical); for the EMA decay's log(1 - d) scale it is a ``Log1mFloat``, which wraps the Optuna
    distribution that Optuna is really given (``optuna_distribution``). ``low``/``high``/``choices``,
    ``ends()``, ``project()`` and the display forms are always in config coordinates.
    """

    name: str
    distribution: Distribution | Log1mFloat
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.distribution, (*_OPTUNA_KINDS, Log1mFloat)):
            raise TypeError(f"{self.name}: unsupported distribution {type(self.distribution).__name__}")

    # ---------------------------------------------------------------- what it is
    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return "categorical"
        return "int" if isinstance(d, IntDistribution) else "float"

    @property
    def scale(self) -> Scale | None:
        """linear, log or log1m; None for a categorical parameter."""
        d = self.distribution
        if isinstance(d, Log1mFloat):
            return "log1m"
        if isinstance(d, CategoricalDistribution):
            return None
        return "log" if d.log else "linear"

    @property
    def low(self) -> float | int | None:
        return None if isinstance(self.distribution, CategoricalDistribution) else self.distribution.low

    @property
    def high(self) -> float | int | None:
        return None if isinstance(self.distribution, CategoricalDistribution) else self.distribution.high

    @property
    def choices(self) -> tuple[Any, ...] | None:
        d = self.distribution
        return tuple(d.choices) if isinstance(d, CategoricalDistribution) else None

    @property
    def optuna_distribution(self) -> BaseDistribution:
        """The distribution Optuna is given and records (for ``optuna.trial.create_trial``)."""
        d = self.distribution
        return d.optuna if isinstance(d, Log1mFloat) else d

    def ends(self) -> list[Any]:
        """The values a range's validity is checked at: every choice, or both bounds."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    # ---------------------------------------------------------------- sampling
    def suggest(self, trial: Any) -> Any:
        """Ask Optuna for a value; returns it in config coordinates.

        Goes through the public ``suggest_*`` methods (not ``trial._suggest``): Ray's OptunaSearch (and the
        tests' ``sample_config``) watch exactly those calls.
        """
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.name, list(d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, Log1mFloat):
            lag = d.optuna
            return d.to_config(trial.suggest_float(self.name, lag.low, lag.high, log=True))
        return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)

    def to_optuna(self, value: Any) -> Any:
        """A config value in Optuna's coordinates (what ``enqueue_trial`` and ``create_trial`` take)."""
        return self.distribution.to_optuna(value) if isinstance(self.distribution, Log1mFloat) else value

    def to_config(self, value: Any) -> Any:
        """An Optuna value (a trial's ``params``) in config coordinates."""
        return self.distribution.to_config(value) if isinstance(self.distribution, Log1mFloat) else value

    def project(self, value: Any) -> Any:
        """The nearest value inside this parameter's domain (a preset value outside a narrowed range)."""
        if self.choices is not None:
            return value if value in self.choices else self.choices[0]
        return min(max(value, self.low), self.high)

    # ---------------------------------------------------------------- forms
    def spec(self) -> Any:
        """The YAML form of this range (what a ``search`` block takes)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.scale != "linear":
            out["scale"] = self.scale
        return out

    def describe(self) -> str:
        """For people only: never parse it back (``to_dict`` is the structured form)."""
        if self.choices is not None:
            text = "{" + ", ".join(str(c) for c in self.choices) + "}"
        else:
            text = f"[{self.low:g}, {self.high:g}]" + ("" if self.scale == "linear" else f" {self.scale}")
        if self.condition is not None:
            text += " " + self.condition.describe()
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{name, distribution (Optuna's JSON layout), scale, condition}``."""
        return {"name": self.name, "distribution": _distribution_to_dict(self.distribution),
                "scale": self.scale,
                "condition": self.condition.to_dict() if self.condition is not None else None}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ParamSpec:
        """Reads ``to_dict()``'s output back (needs neither a config nor a ``SearchSpace``)."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("name"), str):
            raise ValueError(f"a parameter spec is {{name, distribution, scale, condition}}, got {doc!r}")
        cond = doc.get("condition")
        spec = cls(name=doc["name"], distribution=_distribution_from_dict(doc.get("distribution")),
                   condition=Condition.from_dict(cond) if cond is not None else None)
        # the scale follows from the distribution: a mismatch means a damaged record
        if "scale" in doc and doc["scale"] != spec.scale:
            raise ValueError(f"{spec.name}: scale {doc['scale']!r} does not match its distribution "
                             f"({spec.scale!r})")
        return spec


@dataclass(frozen=True, kw_only=True)
class SpaceSpec:
    """A search space as data: its parameter specs (in suggestion order) and its fixed values.

    Built by ``SearchSpace.space_spec()``, or from a record with ``SpaceSpec.from_dict`` — which is
    all that readers of a finished job need (no config, preset or Optuna study).
    """

    name: str
    params: tuple[ParamSpec, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "fixed", dict(self.fixed))

    def searched_keys(self) -> list[str]:
        """Every searched key, conditional ones included (a trial may leave those out); never a fixed one."""
        return [p.name for p in self.params]

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPACE_FORMAT, "name": self.name, "params": [p.to_dict() for p in self.params],
                "fixed": dict(self.fixed)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SpaceSpec:
        """Reads ``to_dict()``'s output (after a JSON round trip) back; ValueError when it is not one."""
        if not isinstance(doc, Mapping) or doc.get("format") != SPACE_FORMAT:
            found = doc.get("format") if isinstance(doc, Mapping) else type(doc).__name__
            raise ValueError(f"not a losstune search space description of format {SPACE_FORMAT} "
                             f"(format {found!r})")
        if not isinstance(doc.get("params"), list) or not isinstance(doc.get("fixed", {}), Mapping):
            raise ValueError("a search space description needs a list 'params' and a mapping 'fixed'")
        return cls(name=str(doc.get("name", "")), params=tuple(ParamSpec.from_dict(p) for p in doc["params"]),
                   fixed=doc.get("fixed", {}))


def _float(name: str, low: float, high: float, *, log: bool = False) -> ParamSpec:
    return ParamSpec(name=name, distribution=FloatDistribution(low, high, log=log))


def _categorical(name: str, choices: Sequence[Any], *, condition: Condition | None = None) -> ParamSpec:
    return ParamSpec(name=name, distribution=CategoricalDistribution(list(choices)), condition=condition)


def _clip(v: float, path: str, section_type: str | None = None) -> float:
    iv = field_interval(path, section_type=section_type)
    if iv is None:
        return v
    if iv.lo is not None:
        v = max(v, iv.lo)
    if iv.hi is not None:
        v = min(v, iv.hi)
    return v


def _aux_params(aux_type: str, base: Config) -> list[ParamSpec]:
    own = base.aux_loss if base.aux_loss.type == aux_type else None
    if aux_type == "asymmetric":
        gn = own.gamma_neg if own else 4.0
        gp = own.gamma_pos if own else 0.0
        return [_float("aux_loss.gamma_neg", max(0.0, gn - 2), gn + 2),
                _float("aux_loss.gamma_pos", 0.0, gp + 1),
                _float("aux_loss.clip", 0.0, 0.2)]
    if aux_type == "label_smooth":
        return [_float("aux_loss.smoothing", 0.0, 0.3)]
    if aux_type == "calibration":
        return [_categorical("aux_loss.kind", ("mdca", "brier")),
                _float("aux_loss.beta", 0.1, 10.0, log=True)]
    return []


def default_params(base: Config, *, search_aux: bool = False) -> list[ParamSpec]:
    """The default ranges around a preset (``search_aux``: also choose the aux loss)."""
    ps: list[ParamSpec] = []
    if base.main_loss.type == "focal":
        alpha = base.main_loss.alpha
        alphas = ALPHA_CHOICES + (() if alpha in ALPHA_CHOICES else (alpha,))
        ps.append(_categorical("main_loss.alpha", alphas))
        g = base.main_loss.gamma
        ps.append(_float("main_loss.gamma", max(0.0, g - 1.5), _clip(g + 1.5, "main_loss.gamma")))
    if base.aux_loss.type != "none":
        if search_aux:
            ps.append(_categorical("aux_loss.type", AUX_TYPES))
            for t in AUX_TYPES:
                chosen = Condition(key="aux_loss.type", values=(t,))
                ps += [replace(p, condition=chosen) for p in _aux_params(t, base)]
        else:
            ps += _aux_params(base.aux_loss.type, base)
        if base.teacher.enabled:
            lag = 1.0 - base.teacher.ema_decay  # search 1 - d over a decade below to ~1.5 decades above
            decay = Log1mFloat(low=1.0 - min(0.1, lag * 30), high=1.0 - max(1e-5, lag / 10))
            ps.append(ParamSpec(name="teacher.ema_decay", distribution=decay))
            ps.append(_float("distill.weight", 0.0, 1.0))
            ps.append(_float("distill.temperature", 1.0, 4.0))
        ps.append(_float("consistency.weight", 0.0, 1.0))
        ps.append(_float("consistency.threshold", 0.7, 0.98))
        ps.append(_categorical("weighting.strategy", ("static", "softadapt", "uncertainty", "gradsim")))
        softadapt = Condition(key="weighting.strategy", values=("softadapt",))
        gradsim = Condition(key="weighting.strategy", values=("gradsim",))
        ps.append(replace(_float("weighting.softadapt_beta", 0.01, 1.0, log=True), condition=softadapt))
        ps.append(_categorical("weighting.gradsim_mode", ("weighted", "gated"), condition=gradsim))
        ps.append(ParamSpec(name="weighting.gradsim_every", distribution=IntDistribution(1, 20, log=True),
                            condition=gradsim))
    else:  # the baseline arm is tuned too: a fair comparison tunes both arms
        ps.append(_float("optim.weight_decay", 1e-6, 1e-2, log=True))
        ps.append(_float("model.dropout", 0.0, 0.5))
    ps.append(_float("optim.lr", 1e-4, 1e-2, log=True))
    return ps


class SearchSpace:
    """``space(trial) -> dict``: suggests every active parameter; returns the constants Ray adds.

    The constants are the fixed values, the log1m parameters in config coordinates, and for the
    first trial of a study (``warm_start``) the preset's own values, so trial 0 runs the preset
    (projected into any range the user narrowed past it). Enqueue ``warm_start_point()`` too, so
    that Optuna's record of trial 0 holds what really ran.
    """

    def __init__(self, *, name: str, base: Config, params: Sequence[ParamSpec], fixed: Mapping[str, Any],
                 warm_start: bool = True) -> None:
        self.name, self.base, self._params = name, base, tuple(params)
        self.fixed, self.warm_start = dict(fixed), warm_start
        self._base_flat = base.flat()

    def __call__(self, trial: Any) -> dict[str, Any]:
        warm = self.warm_start and getattr(trial, "number", None) == 0
        values: dict[str, Any] = {}
        constants = dict(self.fixed)
        # On the warm-start trial the preset's own choices decide which conditional parameters
        # exist, and the preset's values win over whatever the sampler proposed.
        for p in self.active(values, trial=trial, follow_base=warm):
            if p.scale == "log1m":
                constants[p.name] = values[p.name]
        if warm:
            constants.update(self.preset_values())
        return constants

    # ---------------------------------------------------------------- the structured form
    def params(self) -> list[ParamSpec]:
        """The parameter specs in suggestion order (conditional ones after their parent)."""
        return list(self._params)

    def searched_keys(self) -> list[str]:
        """The dotted keys that are searched, conditional ones included; never a fixed one."""
        return [p.name for p in self._params]

    def space_spec(self) -> SpaceSpec:
        return SpaceSpec(name=self.name, params=self._params, fixed=self.fixed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (``json.dumps`` takes it); ``SpaceSpec.from_dict`` reads it back."""
        return self.space_spec().to_dict()

    # ---------------------------------------------------------------- sampling
    def active(self, values: dict[str, Any], *, trial: Any = None,
               follow_base: bool = False) -> list[ParamSpec]:
        """Walk the parameters in order; a conditional one is active when its parent's value matches.

        With a ``trial`` each active parameter is suggested; without one it takes the base value.
        """
        out = []
        for p in self._params:
            if p.condition is not None:
                parent = self.fixed.get(p.condition.key, self._base_flat.get(p.condition.key))
                if not follow_base:
                    parent = values.get(p.condition.key, parent)
                if not p.condition.holds(parent):
                    continue
            values[p.name] = p.suggest(trial) if trial is not None else self._base_flat.get(p.name)
            out.append(p)
        return out

    def preset_values(self) -> dict[str, Any]:
        """The base config's values of the parameters active under its own choices, each projected
        into its range (so they are the preset's exactly unless the user narrowed a range past it)."""
        values: dict[str, Any] = {}
        return {p.name: p.project(values[p.name]) for p in self.active(values)}

    def to_optuna(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Config values of searched keys in Optuna's coordinates (``study.enqueue_trial`` takes them);
        keys that are not searched are left out."""
        return {p.name: p.to_optuna(values[p.name]) for p in self._params if p.name in values}

    def warm_start_point(self) -> dict[str, Any]:
        """The preset in Optuna's coordinates, for ``study.enqueue_trial`` / ``points_to_evaluate``."""
        return self.to_optuna(self.preset_values())

    # ---------------------------------------------------------------- for people and YAML
    def describe(self) -> dict[str, str]:
        """Display strings, one per key (fixed ones say so). Never parse them: use ``to_dict``."""
        out = {p.name: p.describe() for p in self._params}
        out.update({k: f"fixed {v!r}" for k, v in self.fixed.items()})
        return out

    def specs(self) -> dict[str, Any]:
        """The ranges as a preset's ``search`` block writes them."""
        return {p.name: p.spec() for p in self._params}


# --------------------------------------------------------------------------- user ranges
def parse_search_spec(path: str, spec: Any, *, existing: ParamSpec | None,
                      source: str = "search") -> ParamSpec | Any:
    """A ``search`` entry → a ParamSpec, or the bare value when the entry fixes the parameter."""
    where = f"{source}.{path}"
    condition = existing.condition if existing is not None else None
    section_type = None
    if condition is not None and condition.key.endswith(".type"):
        section_type = condition.values[0]  # the aux type this parameter belongs to
    try:
        choices = field_choices(path, section_type=section_type)
        interval = field_interval(path, section_type=section_type)
        is_int = field_is_int(path, section_type=section_type)
    except KeyError:
        raise UserError(f"{where}: unknown config key; searchable keys are the dotted keys of the config "
                        "(see `losstune scenarios show NAME`)") from None
    if isinstance(spec, str) and spec.strip().startswith(("[", "{")):
        spec = parse_overrides([f"{path}={spec}"], option=source)[path]
    if not isinstance(spec, (list, tuple, dict)):
        return spec  # a single value fixes the parameter
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "scale", "log", "choices"}
        if unknown:
            raise UserError(f"{where}: unknown range key(s) {', '.join(sorted(unknown))}; "
                            "use low, high, scale or choices")
        if "choices" in spec:
            spec = list(spec["choices"])
        else:
            kept = existing.scale if existing is not None and existing.scale is not None else "linear"
            scale = spec.get("scale", "log" if spec.get("log") else kept)
            return _range_param(path, spec.get("low"), spec.get("high"), scale, condition, interval, choices,
                                where, is_int)
    values = list(spec)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if choices is None and path != "main_loss.alpha" and not (numeric and len(values) == 2):
        raise UserError(f"{where}: give a range [low, high] or {{low, high, scale}}, got {spec!r}")
    if numeric and len(values) == 2 and choices is None and not (existing and existing.kind == "categorical"):
        scale = existing.scale if existing is not None and existing.scale is not None else "linear"
        return _range_param(path, values[0], values[1], scale, condition, interval, choices, where, is_int)
    if not values:
        raise UserError(f"{where}: choices must not be empty")
    for v in values:
        ok = v in choices if choices is not None else (v in ("auto", "class_balanced", None) or
                                                       (isinstance(v, (int, float)) and 0 <= v <= 1))
        if not ok:
            allowed = ", ".join(map(str, choices)) if choices else "numbers in [0, 1], auto, class_balanced, null"
            raise UserError(f"{where}: choice {v!r} is not allowed (allowed: {allowed})")
    return _categorical(path, values, condition=condition)


def _range_param(path: str, low: Any, high: Any, scale: str, condition: Condition | None, interval: Any,
                 choices: Any, where: str, is_int: bool) -> ParamSpec:
    if choices is not None:
        raise UserError(f"{where}: is categorical; give {{choices: [...]}} from {', '.join(map(str, choices))}")
    if interval is None:
        raise UserError(f"{where}: cannot be searched as a range")
    if scale not in ("linear", "log", "log1m"):
        raise UserError(f"{where}: scale must be linear, log or log1m, got {scale!r}")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {name} must be a number, got {v!r}")
    if low >= high:
        raise UserError(f"{where}: low must be below high, got [{low}, {high}]")
    if not (interval.contains(low) and interval.contains(high)):
        raise UserError(f"{where}: [{low}, {high}] is outside what the config allows, {interval.describe()}")
    if scale == "log" and low <= 0:
        raise UserError(f"{where}: a log scale needs low > 0, got {low}")
    if scale == "log1m" and high >= 1:
        raise UserError(f"{where}: a log1m scale needs high < 1, got {high}")
    if is_int:
        if low != int(low) or high != int(high) or scale == "log1m":
            raise UserError(f"{where}: takes whole numbers on a linear or log scale, got [{low}, {high}] {scale}")
        dist: Distribution | Log1mFloat = IntDistribution(int(low), int(high), log=scale == "log")
    elif scale == "log1m":
        dist = Log1mFloat(low=float(low), high=float(high))
    else:
        dist = FloatDistribution(float(low), float(high), log=scale == "log")
    return ParamSpec(name=path, distribution=dist, condition=condition)


def build_space(base: Config, *, name: str = "custom", search_aux: bool = False,
                ranges: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None,
                warm_start: bool = True, source: str = "search") -> SearchSpace:
    """The space around ``base``: default ranges, then ``ranges`` (a search block), then ``fixed``.

    Every fixed value is applied to the base config (and so validated); every range is checked
    against what the config allows. Errors name the dotted key and the values.
    """
    fixed = dict(fixed or {})
    params = {p.name: p for p in default_params(base, search_aux=search_aux)}
    for path, spec in (ranges or {}).items():
        parsed = parse_search_spec(str(path), spec, existing=params.get(str(path)), source=source)
        if isinstance(parsed, ParamSpec):
            params[str(path)] = parsed
        else:
            fixed.setdefault(str(path), parsed)
    if fixed:
        base = base.with_overrides(fixed, source="--fix")
        for path in fixed:
            params.pop(path, None)
    space = SearchSpace(name=name, base=base, params=list(params.values()), fixed=fixed, warm_start=warm_start)
    _check_extremes(space)
    return space


def _check_extremes(space: SearchSpace) -> None:
    """Each range's ends must give a valid config (catches e.g. distillation without a teacher)."""
    for p in space.params():
        for v in p.ends():
            override = {p.name: v}
            if p.condition is not None:
                override[p.condition.key] = p.condition.values[0]
            try:
                space.base.with_overrides(override, source="search")
            except UserError as exc:
                raise UserError(f"search.{p.name}: {p.describe()} leaves the config invalid at {v!r}: "
                                f"{str(exc).removeprefix('search: ')}") from None
