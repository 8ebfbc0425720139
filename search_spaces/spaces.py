"""Optuna define-by-run search spaces around a scenario preset.

A ``SearchSpace`` is a callable ``space(trial) -> dict`` as Ray's ``OptunaSearch`` takes it. Every
suggested name is a dotted config path (``main_loss.gamma``), so a sampled dict applies to the
config with ``Config.with_overrides`` and no mapping table.

Ranges sit around the preset's values (see ``default_params``); users narrow, widen, add or fix
them from YAML (a preset's ``search`` block) or the CLI (``--search``, ``--fix``):

    search:
      main_loss.gamma: [1.0, 4.0]                     # a range; the default scale is kept
      optim.lr: {low: 1.0e-4, high: 3.0e-3, scale: log}
      main_loss.alpha: {choices: [auto, 0.25, 0.5]}
      teacher.ema_decay: 0.999                        # a single value fixes the parameter

The EMA decay is searched on log(1 - d) (``scale: log1m``): Optuna's own record of that parameter
holds 1 - d; the value returned to Ray, and so the trial config, is d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from trainables.config import Config, field_choices, field_interval, field_is_int, parse_overrides
from trainables.errors import UserError

__all__ = ["Param", "SearchSpace", "build_space", "default_params", "parse_search_spec", "sample_config",
           "AUX_TYPES"]

AUX_TYPES = ("asymmetric", "label_smooth", "calibration", "bce")
ALPHA_CHOICES = ("auto", 0.1, 0.25, 0.5, 0.75, 0.9)
Scale = Literal["linear", "log", "log1m"]


@dataclass(frozen=True)
class Param:
    """One searched config value. ``when = (path, values)``: searched only when ``path`` takes one of ``values``."""

    path: str
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    scale: Scale = "linear"
    choices: tuple[Any, ...] | None = None
    when: tuple[str, tuple[Any, ...]] | None = None

    def suggest(self, trial: Any) -> Any:
        """Ask Optuna for a value; returns it in config coordinates."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.scale == "log")
        if self.scale == "log1m":
            return 1.0 - trial.suggest_float(self.path, 1.0 - self.high, 1.0 - self.low, log=True)
        return trial.suggest_float(self.path, self.low, self.high, log=self.scale == "log")

    def project(self, value: Any) -> Any:
        """The nearest value inside this parameter's domain (a preset value outside a narrowed range)."""
        if self.kind == "categorical":
            return value if value in self.choices else self.choices[0]
        return min(max(value, self.low), self.high)

    def to_optuna(self, value: Any) -> Any:
        return 1.0 - value if self.scale == "log1m" else value

    def spec(self) -> Any:
        """The YAML form of this range (what a ``search`` block takes)."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.scale != "linear":
            out["scale"] = self.scale
        return out

    def describe(self) -> str:
        if self.kind == "categorical":
            text = "{" + ", ".join(str(c) for c in self.choices) + "}"
        else:
            text = f"[{self.low:g}, {self.high:g}]" + ("" if self.scale == "linear" else f" {self.scale}")
        if self.when:
            text += f" when {self.when[0]} in {{{', '.join(map(str, self.when[1]))}}}"
        return text


def _clip(v: float, path: str, section_type: str | None = None) -> float:
    iv = field_interval(path, section_type=section_type)
    if iv is None:
        return v
    if iv.lo is not None:
        v = max(v, iv.lo)
    if iv.hi is not None:
        v = min(v, iv.hi)
    return v


def _aux_params(aux_type: str, base: Config) -> list[Param]:
    own = base.aux_loss if base.aux_loss.type == aux_type else None
    if aux_type == "asymmetric":
        gn = own.gamma_neg if own else 4.0
        gp = own.gamma_pos if own else 0.0
        return [Param("aux_loss.gamma_neg", "float", max(0.0, gn - 2), gn + 2),
                Param("aux_loss.gamma_pos", "float", 0.0, gp + 1),
                Param("aux_loss.clip", "float", 0.0, 0.2)]
    if aux_type == "label_smooth":
        return [Param("aux_loss.smoothing", "float", 0.0, 0.3)]
    if aux_type == "calibration":
        return [Param("aux_loss.kind", "categorical", choices=("mdca", "brier")),
                Param("aux_loss.beta", "float", 0.1, 10.0, scale="log")]
    return []


def default_params(base: Config, *, search_aux: bool = False) -> list[Param]:
    """The default ranges around a preset (``search_aux``: also choose the aux loss)."""
    ps: list[Param] = []
    if base.main_loss.type == "focal":
        alpha = base.main_loss.alpha
        ps.append(Param("main_loss.alpha", "categorical",
                        choices=ALPHA_CHOICES + (() if alpha in ALPHA_CHOICES else (alpha,))))
        g = base.main_loss.gamma
        ps.append(Param("main_loss.gamma", "float", max(0.0, g - 1.5), _clip(g + 1.5, "main_loss.gamma")))
    if base.aux_loss.type != "none":
        if search_aux:
            ps.append(Param("aux_loss.type", "categorical", choices=AUX_TYPES))
            for t in AUX_TYPES:
                ps += [replace(p, when=("aux_loss.type", (t,))) for p in _aux_params(t, base)]
        else:
            ps += _aux_params(base.aux_loss.type, base)
        if base.teacher.enabled:
            lag = 1.0 - base.teacher.ema_decay  # search 1 - d over a decade below to ~1.5 decades above
            ps.append(Param("teacher.ema_decay", "float", 1.0 - min(0.1, lag * 30), 1.0 - max(1e-5, lag / 10),
                            scale="log1m"))
            ps.append(Param("distill.weight", "float", 0.0, 1.0))
            ps.append(Param("distill.temperature", "float", 1.0, 4.0))
        ps.append(Param("consistency.weight", "float", 0.0, 1.0))
        ps.append(Param("consistency.threshold", "float", 0.7, 0.98))
        ps.append(Param("weighting.strategy", "categorical", choices=("static", "softadapt", "uncertainty", "gradsim")))
        ps.append(Param("weighting.softadapt_beta", "float", 0.01, 1.0, scale="log",
                        when=("weighting.strategy", ("softadapt",))))
        ps.append(Param("weighting.gradsim_mode", "categorical", choices=("weighted", "gated"),
                        when=("weighting.strategy", ("gradsim",))))
        ps.append(Param("weighting.gradsim_every", "int", 1, 20, scale="log", when=("weighting.strategy", ("gradsim",))))
    else:  # the baseline arm is tuned too: a fair comparison tunes both arms
        ps.append(Param("optim.weight_decay", "float", 1e-6, 1e-2, scale="log"))
        ps.append(Param("model.dropout", "float", 0.0, 0.5))
    ps.append(Param("optim.lr", "float", 1e-4, 1e-2, scale="log"))
    return ps


class SearchSpace:
    """``space(trial) -> dict``: suggests every active parameter; returns the constants Ray adds.

    The constants are the fixed values, the log1m parameters in config coordinates, and for the
    first trial of a study (``warm_start``) the preset's own values, so trial 0 runs the preset
    (projected into any range the user narrowed past it). Enqueue ``warm_start_point()`` too, so
    that Optuna's record of trial 0 holds what really ran.
    """

    def __init__(self, *, name: str, base: Config, params: list[Param], fixed: Mapping[str, Any],
                 warm_start: bool = True) -> None:
        self.name, self.base, self.params = name, base, list(params)
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
                constants[p.path] = values[p.path]
        if warm:
            constants.update(self.preset_values())
        return constants

    def active(self, values: dict[str, Any], *, trial: Any = None, follow_base: bool = False) -> list[Param]:
        """Walk the parameters in order; a conditional one is active when its parent's value matches.

        With a ``trial`` each active parameter is suggested; without one it takes the base value.
        """
        out = []
        for p in self.params:
            if p.when is not None:
                parent = self.fixed.get(p.when[0], self._base_flat.get(p.when[0]))
                if not follow_base:
                    parent = values.get(p.when[0], parent)
                if parent not in p.when[1]:
                    continue
            values[p.path] = p.suggest(trial) if trial is not None else self._base_flat.get(p.path)
            out.append(p)
        return out

    def preset_values(self) -> dict[str, Any]:
        """The base config's values of the parameters active under its own choices, each projected
        into its range (so they are the preset's exactly unless the user narrowed a range past it)."""
        values: dict[str, Any] = {}
        return {p.path: p.project(values[p.path]) for p in self.active(values)}

    def warm_start_point(self) -> dict[str, Any]:
        """The preset in Optuna's coordinates, for ``study.enqueue_trial`` / ``points_to_evaluate``."""
        values = self.preset_values()
        return {p.path: p.to_optuna(values[p.path]) for p in self.params if p.path in values}

    def describe(self) -> dict[str, str]:
        out = {p.path: p.describe() for p in self.params}
        out.update({k: f"fixed {v!r}" for k, v in self.fixed.items()})
        return out

    def specs(self) -> dict[str, Any]:
        return {p.path: p.spec() for p in self.params}


def sample_config(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """What Ray's OptunaSearch hands a trial: the captured suggestions updated with the constants."""
    captured: dict[str, Any] = {}

    class Captor:
        number = getattr(trial, "number", None)

        def __getattr__(self, name: str) -> Any:
            method = getattr(trial, name)
            if not name.startswith("suggest_"):
                return method

            def capture(param_name: str, *args: Any, **kwargs: Any) -> Any:
                captured[param_name] = method(param_name, *args, **kwargs)
                return captured[param_name]

            return capture

    constants = space(Captor())
    return {**captured, **constants}


# --------------------------------------------------------------------------- user ranges
def parse_search_spec(path: str, spec: Any, *, existing: Param | None, source: str = "search") -> Param | Any:
    """A ``search`` entry → a Param, or the bare value when the entry fixes the parameter."""
    where = f"{source}.{path}"
    section_type = None
    if existing is not None and existing.when is not None and existing.when[0].endswith(".type"):
        section_type = existing.when[1][0]
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
            raise UserError(f"{where}: unknown range key(s) {', '.join(sorted(unknown))}; use low, high, scale or choices")
        if "choices" in spec:
            spec = list(spec["choices"])
        else:
            scale = spec.get("scale", "log" if spec.get("log") else (existing.scale if existing else "linear"))
            return _range_param(path, spec.get("low"), spec.get("high"), scale, existing, interval, choices, where, is_int)
    values = list(spec)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if choices is None and path != "main_loss.alpha" and not (numeric and len(values) == 2):
        raise UserError(f"{where}: give a range [low, high] or {{low, high, scale}}, got {spec!r}")
    if numeric and len(values) == 2 and choices is None and not (existing and existing.kind == "categorical"):
        scale = existing.scale if existing else "linear"
        return _range_param(path, values[0], values[1], scale, existing, interval, choices, where, is_int)
    if not values:
        raise UserError(f"{where}: choices must not be empty")
    for v in values:
        ok = v in choices if choices is not None else (v in ("auto", "class_balanced", None) or
                                                       (isinstance(v, (int, float)) and 0 <= v <= 1))
        if not ok:
            allowed = ", ".join(map(str, choices)) if choices else "numbers in [0, 1], auto, class_balanced, null"
            raise UserError(f"{where}: choice {v!r} is not allowed (allowed: {allowed})")
    return Param(path, "categorical", choices=tuple(values), when=existing.when if existing else None)


def _range_param(path: str, low: Any, high: Any, scale: str, existing: Param | None, interval: Any, choices: Any,
                 where: str, is_int: bool) -> Param:
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
        return Param(path, "int", int(low), int(high), scale=scale, when=existing.when if existing else None)
    return Param(path, "float", float(low), float(high), scale=scale, when=existing.when if existing else None)


def build_space(base: Config, *, name: str = "custom", search_aux: bool = False,
                ranges: Mapping[str, Any] | None = None, fixed: Mapping[str, Any] | None = None,
                warm_start: bool = True, source: str = "search") -> SearchSpace:
    """The space around ``base``: default ranges, then ``ranges`` (a search block), then ``fixed``.

    Every fixed value is applied to the base config (and so validated); every range is checked
    against what the config allows. Errors name the dotted key and the values.
    """
    fixed = dict(fixed or {})
    params = {p.path: p for p in default_params(base, search_aux=search_aux)}
    for path, spec in (ranges or {}).items():
        parsed = parse_search_spec(str(path), spec, existing=params.get(str(path)), source=source)
        if isinstance(parsed, Param):
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
    for p in space.params:
        ends = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
        for v in ends:
            override = {p.path: v}
            if p.when is not None:
                override[p.when[0]] = p.when[1][0]
            try:
                space.base.with_overrides(override, source="search")
            except UserError as exc:
                raise UserError(f"search.{p.path}: {p.describe()} leaves the config invalid at {v!r}: "
                                f"{str(exc).removeprefix('search: ')}") from None
