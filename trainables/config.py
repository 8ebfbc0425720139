"""The typed trial config: one source of truth from YAML to search space to trainer to MLflow.

Every value a trial depends on lives here and nowhere else; tracking settings (MLflow URI, Ray
address) and data settings (path, label columns, split) do not. A config is frozen and validated
on construction: an invalid value is a ``UserError`` that names the dotted key, what is allowed and
what was received.

    cfg = Config.load("scenario.yaml").with_overrides({"main_loss.gamma": 3})
    assert Config.from_yaml(cfg.to_yaml()) == cfg
"""

from __future__ import annotations

import copy
import math
import re
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from trainables.errors import UserError

__all__ = [
    "Config",
    "Interval",
    "ModelConfig",
    "FocalLossConfig",
    "BCELossConfig",
    "AsymmetricLossConfig",
    "LabelSmoothLossConfig",
    "CalibrationLossConfig",
    "AuxBCELossConfig",
    "NoAuxLossConfig",
    "TeacherConfig",
    "DistillConfig",
    "WeightingConfig",
    "ConsistencyConfig",
    "OptimConfig",
    "AugmentConfig",
    "RESERVED_TOP_LEVEL_KEYS",
    "field_interval",
    "field_choices",
    "field_is_int",
    "parse_overrides",
    "load_yaml_mapping",
]

# Top-level YAML keys that belong to other parts of the system and that a trial config ignores:
# `scenario` (a preset's name and description), `search` (ranges, read by the tuner) and
# `provenance` (written by `losstune export`).
RESERVED_TOP_LEVEL_KEYS = ("scenario", "search", "provenance")


@dataclass(frozen=True)
class Interval:
    """A numeric range, used both to validate a field and to bound its search range."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return "any finite number"

    def __call__(self, v: float) -> float:
        if not self.contains(v):
            raise ValueError(f"must be in {self.describe()}")
        return v


def _in(lo=None, hi=None, *, lo_open=False, hi_open=False) -> AfterValidator:
    return AfterValidator(Interval(lo, hi, lo_open, hi_open))


Prob = Annotated[float, _in(0, 1)]
NonNeg = Annotated[float, _in(0)]
Pos = Annotated[float, _in(0, lo_open=True)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# model.backbone: mlp (tables) | cnn | torchvision:NAME | timm:NAME | python:pkg.module:factory (images;
# trainables/backbones.py builds them). The form is checked here, without importing any of them.
_BACKBONE = re.compile(r"^(mlp|cnn|torchvision:[A-Za-z_][\w.]*|timm:[A-Za-z_][\w.\-]*"
                       r"|python:[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*)$")


class ModelConfig(_Section):
    """The network: a backbone shared by the main head and the aux head. ``mlp`` for tables (its
    ``hidden`` layers); for images a small built-in ``cnn``, any ``torchvision:NAME`` or
    ``timm:NAME`` classifier whose own head is replaced by losstune's two, or the user's own
    ``python:pkg.module:factory``. ``dropout`` is the MLP's, and before the heads of an image backbone."""

    backbone: str = "mlp"
    hidden: tuple[Annotated[int, _in(1, 65536)], ...] = Field(default=(128, 64), min_length=1)
    dropout: Annotated[float, _in(0, 1, hi_open=True)] = 0.1
    freeze_backbone: bool = False

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        if not _BACKBONE.match(v):
            raise ValueError("must be mlp, cnn, torchvision:NAME, timm:NAME or python:pkg.module:factory")
        return v


class AugmentConfig(_Section):
    """Augmentation of training images (tables ignore it), drawn per image on the device: a random
    resized crop keeping at least ``crop_scale`` of the area, a rotation of up to ``rotation``
    degrees, brightness and contrast changed by up to the given fractions; horizontal flips only
    with ``hflip`` (off: in chest X-rays the heart is on the left). ``enabled: false`` turns all off."""

    enabled: bool = True
    crop_scale: Annotated[float, _in(0.25, 1)] = 0.85
    rotation: Annotated[float, _in(0, 45)] = 10.0
    brightness: Annotated[float, _in(0, 1)] = 0.1
    contrast: Annotated[float, _in(0, 1)] = 0.1
    hflip: bool = False


class FocalLossConfig(_Section):
    """Sigmoid focal loss (Lin et al. 2017). ``alpha`` weights positives; null disables it.

    ``alpha: auto`` is 1 - prevalence of each label in the training split; ``class_balanced`` is
    Cui et al.'s effective-number weight with ``cb_beta``.
    """

    type: Literal["focal"] = "focal"
    alpha: float | Literal["auto", "class_balanced"] | None = 0.25
    gamma: Annotated[float, _in(0, 10)] = 2.0
    cb_beta: Annotated[float, _in(0, 1, hi_open=True)] = 0.999

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha(cls, v: Any) -> Any:
        ok = v is None or v in ("auto", "class_balanced")
        if not ok and not isinstance(v, bool) and isinstance(v, (int, float)):
            ok = Interval(0, 1).contains(v)
            v = float(v)
        if not ok:
            raise ValueError("must be a number in [0, 1], 'auto', 'class_balanced' or null")
        return v


class BCELossConfig(_Section):
    """Plain binary cross-entropy: the baseline's main loss, or a plain aux loss."""

    type: Literal["bce"] = "bce"


class AsymmetricLossConfig(_Section):
    """Asymmetric loss (Ridnik et al. 2021); the paper's setting is 4 / 0 / 0.05."""

    type: Literal["asymmetric"] = "asymmetric"
    gamma_neg: Annotated[float, _in(0, 10)] = 4.0
    gamma_pos: Annotated[float, _in(0, 10)] = 0.0
    clip: Annotated[float, _in(0, 0.5)] = 0.05
    eps: Annotated[float, _in(0, 0.01, lo_open=True)] = 1e-8
    detach_focusing: bool = False


class LabelSmoothLossConfig(_Section):
    """BCE against smoothed targets y(1 - s) + s/2."""

    type: Literal["label_smooth"] = "label_smooth"
    smoothing: Annotated[float, _in(0, 1, hi_open=True)] = 0.1


class CalibrationLossConfig(_Section):
    """BCE + beta * MDCA (Hebbalaguppe et al. 2022) or BCE + beta * Brier."""

    type: Literal["calibration"] = "calibration"
    kind: Literal["mdca", "brier"] = "mdca"
    beta: Annotated[float, _in(0, 100)] = 1.0


class NoAuxLossConfig(_Section):
    """No aux head: the single-head model (the baseline arm)."""

    type: Literal["none"] = "none"


AuxBCELossConfig = BCELossConfig  # the same section on either head; the old name stays importable

MainLoss = Annotated[FocalLossConfig | BCELossConfig, Field(discriminator="type")]
AuxLoss = Annotated[
    AsymmetricLossConfig | LabelSmoothLossConfig | CalibrationLossConfig | BCELossConfig | NoAuxLossConfig,
    Field(discriminator="type"),
]


class TeacherConfig(_Section):
    """EMA of the weights of the main path (backbone + main head), Tarvainen & Valpola 2017."""

    enabled: bool = True
    ema_decay: Annotated[float, _in(0, 1, lo_open=True, hi_open=True)] = 0.999
    # min(d, 1 - 1/(t + 1)) early on: with d = 0.9999 a teacher would otherwise barely move.
    warmup: bool = True


class DistillConfig(_Section):
    """Per-label binary KL from the teacher's main logits to the aux head, times T^2."""

    weight: Annotated[float, _in(0, 100)] = 0.5
    temperature: Annotated[float, _in(0, 100, lo_open=True)] = 2.0


class WeightingConfig(_Section):
    """How the main and aux losses are weighted (distillation and consistency keep their own).

    static: main + aux_weight * aux. softadapt: weights from loss slopes (Heydari et al. 2019),
    recomputed every ``softadapt_every`` steps from ``softadapt_window`` block means. uncertainty:
    learnable log-variances (Kendall et al. 2018), clamped to +-uncertainty_clamp. gradsim: the
    aux gradient on the shared backbone scaled by max(0, cos) (weighted) or 1[cos > 0] (gated),
    the cosine recomputed every ``gradsim_every`` steps (Du et al. 2018): 10 by default, because
    recomputing it every step moved no synthetic task's test AUROC by 0.001 and took 16-27% more
    time a fit (``benchmarks/bench_trainer.py --gradsim-every``); a search tries 1 to 20.
    """

    strategy: Literal["static", "softadapt", "uncertainty", "gradsim"] = "static"
    aux_weight: Annotated[float, _in(0, 100)] = 1.0
    softadapt_beta: Annotated[float, _in(-100, 100)] = 0.1
    softadapt_variant: Literal["original", "loss_weighted", "normalized"] = "loss_weighted"
    softadapt_every: Annotated[int, _in(1, 100000)] = 10
    softadapt_window: Annotated[int, _in(2, 64)] = 5
    uncertainty_clamp: Annotated[float, _in(0, 20, lo_open=True)] = 6.0
    gradsim_mode: Literal["weighted", "gated"] = "weighted"
    gradsim_every: Annotated[int, _in(1, 100000)] = 10


class ConsistencyConfig(_Section):
    """FixMatch-style confidence-masked consistency from the main head to the aux head."""

    weight: Annotated[float, _in(0, 100)] = 0.0
    threshold: Annotated[float, _in(0.5, 1, hi_open=True)] = 0.9


class OptimConfig(_Section):
    """AdamW and the epoch loop; ``patience`` 0 turns early stopping off; ``compile`` compiles the step."""

    lr: Annotated[float, _in(0, 1, lo_open=True)] = 1e-3
    weight_decay: Annotated[float, _in(0, 1)] = 1e-4
    batch_size: Annotated[int, _in(1, 1_000_000)] = 256
    max_epochs: Annotated[int, _in(1, 100_000)] = 30
    patience: Annotated[int, _in(0, 100_000)] = 5
    # torch.compile the forward pass and losses (opt-in: 4-11 s of compiling per trial measured on a
    # CPU, and no faster there; benchmarks/bench_trainer.py --compile measures it)
    compile: bool = False
    # fine-tuning a pretrained backbone: its learning rate is lr × backbone_lr_mult, and for the first
    # freeze_backbone_epochs epochs it is not trained at all (the new heads settle first)
    backbone_lr_mult: Annotated[float, _in(0, 10, lo_open=True)] = 1.0
    freeze_backbone_epochs: Annotated[int, _in(0, 100_000)] = 0


class Config(_Section):
    """One trial: everything that decides what a training run computes."""

    model: ModelConfig = ModelConfig()
    main_loss: MainLoss = FocalLossConfig()
    aux_loss: AuxLoss = AsymmetricLossConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    weighting: WeightingConfig = WeightingConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: Annotated[int, _in(0, 2**31 - 1)] = 0

    @model_validator(mode="before")
    @classmethod
    def _default_types(cls, data: Any) -> Any:
        # `main_loss: {gamma: 3}` means the default loss type with gamma 3.
        if isinstance(data, dict):
            for section in ("main_loss", "aux_loss"):
                body = data.get(section)
                if isinstance(body, dict) and "type" not in body:
                    data = {**data, section: {"type": cls.model_fields[section].default.type, **body}}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Config:
        if self.aux_loss.type == "none":
            if self.distill.weight > 0:
                raise ValueError(
                    f"distill.weight={self.distill.weight:g} needs an aux head but aux_loss.type is 'none'; "
                    "set distill.weight=0 or choose an aux loss"
                )
            if self.consistency.weight > 0:
                raise ValueError(
                    f"consistency.weight={self.consistency.weight:g} needs an aux head but aux_loss.type is "
                    "'none'; set consistency.weight=0 or choose an aux loss"
                )
            if self.weighting.strategy != "static":
                raise ValueError(
                    f"weighting.strategy='{self.weighting.strategy}' balances two heads but aux_loss.type is "
                    "'none'; use weighting.strategy=static or choose an aux loss"
                )
        if self.distill.weight > 0 and not self.teacher.enabled:
            raise ValueError(
                f"distill.weight={self.distill.weight:g} needs the EMA teacher but teacher.enabled is false; "
                "set teacher.enabled=true or distill.weight=0"
            )
        return self

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, source: str = "config") -> Config:
        """Validate a nested mapping; ``source`` (a file path) prefixes every error message."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise UserError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
        body = {k: v for k, v in data.items() if k not in RESERVED_TOP_LEVEL_KEYS}
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise UserError(f"{source}: {_explain(exc)}") from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "config") -> Config:
        return cls.from_dict(_safe_load(text, source), source=source)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(load_yaml_mapping(path), source=str(path))

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → leaf values (``main_loss.gamma``), the names search spaces and MLflow use."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = node

        walk("", self.to_dict())
        return out

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str], *, source: str = "--set") -> Config:
        """A new config with values set at dotted paths; ``KEY=VALUE`` strings are parsed as YAML.

        Setting ``X.type`` to another type replaces section X with that type's defaults first, so
        ``{"aux_loss.type": "label_smooth", "aux_loss.smoothing": 0.2}`` works in one call.
        """
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        data = copy.deepcopy(self.to_dict())
        # Type switches first, so the other keys of that section land on the new type.
        for path, value in sorted(overrides.items(), key=lambda kv: not kv[0].endswith(".type")):
            *parents, leaf = path.split(".")
            node = data
            for i, part in enumerate(parents):
                child = node.get(part) if isinstance(node, dict) else None
                if not isinstance(child, dict):
                    where = ".".join(parents[: i + 1])
                    raise UserError(f"{source}: unknown config key '{path}' ('{where}' is not a section)")
                node = child
            if leaf == "type" and node.get("type") != value:
                node.clear()
            node[leaf] = value
        return Config.from_dict(data, source=source)


def parse_overrides(items: Iterable[str], *, option: str = "--set") -> dict[str, Any]:
    """``["main_loss.gamma=3", "aux_loss.type=none"]`` → ``{"main_loss.gamma": 3, ...}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{option} expects KEY=VALUE such as main_loss.gamma=3, got '{item}'")
        out[key] = _safe_load(raw, f"{option} {key}") if raw.strip() else None
    return out


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is a one-line ``UserError``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist; pass the path of a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file '{p}': {exc}") from None
    data = _safe_load(text, str(p))
    if data is None:
        # Allowed (the defaults), but never silent: an empty file is more often a mistake than a choice.
        print(f"losstune: note: config file '{p}' is empty; using the default config", file=sys.stderr, flush=True)
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: the YAML must be a mapping of sections (model, main_loss, ...), "
                        f"got {type(data).__name__}")
    return data


class _SafeLoader(yaml.SafeLoader):
    """safe_load plus YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-4` as a string."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _safe_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}: malformed YAML{where}: {problem}") from None


# ---------------------------------------------------------------------- introspection
def _section_for(path: str) -> tuple[type[BaseModel], str]:
    """The model class that holds the dotted ``path``'s leaf, for the config's current type choice."""
    *parents, leaf = path.split(".")
    cls: type[BaseModel] = Config
    for part in parents:
        if part not in cls.model_fields:
            raise KeyError(path)
        ann = cls.model_fields[part].annotation
        members = [a for a in _union_members(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not members:
            raise KeyError(path)
        # For a union section, the member that has the leaf (its default type first).
        default = cls.model_fields[part].default
        members.sort(key=lambda m: not isinstance(default, m))
        cls = next((m for m in members if leaf in m.model_fields), members[0])
    if leaf not in cls.model_fields:
        raise KeyError(path)
    return cls, leaf


def _union_members(ann: Any) -> tuple[Any, ...]:
    if get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (Union, types.UnionType):
        return tuple(m for a in get_args(ann) for m in _union_members(a))
    return (ann,)


def field_interval(path: str, *, section_type: str | None = None) -> Interval | None:
    """The validation interval of a numeric field at a dotted path (None when it has none).

    ``section_type`` picks the union member (``aux_loss.gamma_neg`` with "asymmetric").
    """
    cls, leaf = _member_for(path, section_type)
    info = cls.model_fields[leaf]
    for meta in list(info.metadata) + [m for a in get_args(info.annotation) for m in getattr(a, "__metadata__", ())]:
        if isinstance(meta, AfterValidator) and isinstance(meta.func, Interval):
            return meta.func
    if leaf == "alpha":
        return Interval(0, 1)
    return None


def field_choices(path: str, *, section_type: str | None = None) -> tuple[Any, ...] | None:
    """The allowed values of a Literal or bool field at a dotted path (None when not categorical)."""
    cls, leaf = _member_for(path, section_type)
    ann = cls.model_fields[leaf].annotation
    if ann is bool:
        return (False, True)
    if get_origin(ann) is Literal:
        return get_args(ann)
    return None


def field_is_int(path: str, *, section_type: str | None = None) -> bool:
    """Whether the field at a dotted path holds an integer (``optim.batch_size``)."""
    cls, leaf = _member_for(path, section_type)
    ann = cls.model_fields[leaf].annotation
    return ann is int or (get_origin(ann) is Annotated and get_args(ann)[0] is int)


def _member_for(path: str, section_type: str | None) -> tuple[type[BaseModel], str]:
    if section_type is None:
        return _section_for(path)
    *parents, leaf = path.split(".")
    section = parents[0] if parents else ""
    ann = Config.model_fields[section].annotation if section in Config.model_fields else None
    for m in _union_members(ann):
        if isinstance(m, type) and issubclass(m, BaseModel) and m.model_fields["type"].default == section_type:
            if leaf in m.model_fields:
                return m, leaf
    raise KeyError(path)


def _explain(exc: ValidationError) -> str:
    """Pydantic's errors as ``key: what is allowed; got VALUE`` (at most three, joined by '; ')."""
    parts = []
    for err in exc.errors(include_url=False):
        path, known = _readable_loc(err.get("loc", ()))
        kind = err.get("type", "")
        msg = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        got = err.get("input")
        if kind == "extra_forbidden":
            hint = f" (known keys here: {', '.join(known)})" if known else ""
            parts.append(f"unknown config key '{path}'{hint}")
            continue
        if kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            parts.append(f"{path}.type: must be one of {ctx.get('expected_tags', '')}; got {ctx.get('tag')!r}")
            continue
        if kind == "union_tag_not_found":
            parts.append(f"{path}: needs a 'type' key")
            continue
        msg = msg.replace("Input should be", "must be")
        if not path:  # model-level (cross-field) checks already name their keys
            parts.append(msg)
            continue
        parts.append(f"{path}: {msg}; got {got!r}")
    more = len(parts) - 3
    text = "; ".join(parts[:3])
    return text + (f" (and {more} more)" if more > 0 else "")


def _readable_loc(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Drop union tags from a pydantic location; also list the keys the last section accepts."""
    names: list[str] = []
    cls: Any = Config
    owner: Any = None
    for item in loc:
        if isinstance(cls, tuple):  # a union of sections: this item is the tag that picks one
            match = [m for m in cls if m.model_fields["type"].default == item]
            if match:
                cls = match[0]
                continue
            cls = None
        names.append(str(item))
        owner = cls
        fields = cls.model_fields if isinstance(cls, type) and issubclass(cls, BaseModel) else {}
        if item not in fields:
            cls = None
            continue
        members = [m for m in _union_members(fields[item].annotation)
                   if isinstance(m, type) and issubclass(m, BaseModel)]
        cls = members[0] if len(members) == 1 else (tuple(members) or None)
    known = sorted(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
    return ".".join(names), known
