"""A job as one spec: everything that defines a tuning job, and nothing about where it runs or is
recorded (no Ray address, no tracking URI, no credentials, no storage path).

The CLI builds a ``JobSpec`` from its options (or reads one with ``--job job.yaml``, options given
on the command line overriding its fields); the job folder keeps it as ``job.yaml``, the MLflow job
run holds it flat (``spec.*`` params), and ``--resume`` reads it back. The same spec, seed and
data give the same trial configs.

    spec = JobSpec.from_options(data="patients.csv", label_cols=["outcome"], num_trials=40)
    print(spec.to_yaml())
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from trainables.config import load_yaml_mapping, parse_overrides
from trainables.data import PreparedData, prepare_data
from trainables.errors import UserError
from trainables.pareto import Objective, parse_objectives, parse_select
from trainables.vocab import OBJECTIVE_METRICS, SELECTABLE
from tuner.core.layout import SPEC_FILE

__all__ = ["JobSpec", "DataSpec", "SchedulerSpec", "ResourcesSpec", "TargetsSpec", "SPEC_FILE", "OPTION_FIELDS",
           "OptionValue"]

# numpy's (and so Optuna's) seeds are below 2**32; the baseline arm's sampler takes the job's seed + 1
MAX_SEED = 2**32 - 2
# What a command-line option of `tune`, `train` or `submit` holds (a repeatable one: a tuple of strings).
OptionValue = str | int | float | bool | tuple[str, ...] | list[str] | None
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Section):
    """Where a job's data comes from and how it is split and labelled (``data:`` in a job spec)."""

    source: str
    label_cols: list[str] = []
    val_frac: float = 0.2
    test_frac: float = 0.2
    split_seed: StrictInt = 0
    min_positives: StrictInt = 5
    drop_cols: list[str] = []
    group_col: str | None = None  # a patient id: no patient's rows (or images) in two splits
    # images: a table whose image_col holds paths under image_root, labels from label_cols or from one
    # column of findings (labels_from, joined by label_sep); image_size resizes every image
    image_col: str | None = None
    image_root: str | None = None
    labels_from: str | None = None
    label_sep: str = "|"
    image_size: StrictInt | None = None

    def prepare(self) -> PreparedData:
        """The one place a job's data is prepared from its spec (plan, resume and reports agree)."""
        return prepare_data(self.source, list(self.label_cols), val_frac=self.val_frac, test_frac=self.test_frac,
                            split_seed=self.split_seed, min_positives=self.min_positives,
                            drop_cols=list(self.drop_cols), group_col=self.group_col, image_col=self.image_col,
                            image_root=self.image_root, labels_from=self.labels_from, label_sep=self.label_sep,
                            image_size=self.image_size)


class SchedulerSpec(_Section):
    """Early stopping across trials: ASHA (grace period, reduction factor) or FIFO. None: ASHA with one
    objective, FIFO with several (ASHA ranks trials on one number: the README's "Several objectives")."""

    name: Literal["asha", "fifo"] | None = None
    grace_period: StrictInt = 3
    reduction_factor: float = 3.0


class ResourcesSpec(_Section):
    """What each trial reserves (CPUs, GPU fraction), how many run at once, and how often a failed
    trial is retried."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: StrictInt | None = None
    max_failures: StrictInt = 2


class CompareSpec(_Section):
    """What a job compares its loss stack with: a tuned plain baseline arm, and the top configs of
    each arm re-trained with several seeds before a winner is named."""

    baseline_trials: StrictInt | None = None  # None: as many as the stack's (num_trials); 0: no baseline arm
    confirm_top: StrictInt = 3  # configs per arm re-trained with confirm_seeds seeds; 0: no confirmation
    confirm_seeds: StrictInt = 3


class TargetsSpec(_Section):
    """The AUROC/AUPRC a job must reach (none by default) and whether reaching them ends it."""

    auroc: float | None = None
    auprc: float | None = None
    stop_on_target: bool = False

    def goals(self) -> dict[str, float | None]:
        return {"auroc": self.auroc, "auprc": self.auprc}


class JobSpec(_Section):
    """Everything that defines a job. ``name`` is the job's (and by default its MLflow
    experiment's) name; None means one is made from the scenario and the time."""

    name: str | None = None
    data: DataSpec
    scenario: str = "auto"
    presets_dirs: list[str] = []
    search_aux: bool = False
    search: dict[str, Any] = {}  # dotted key → range, as --search and a preset's search: block take
    fix: dict[str, Any] = {}  # dotted key → value
    set: dict[str, Any] = Field(default_factory=dict)  # changes to the preset before the ranges are built
    num_trials: StrictInt = 20
    max_epochs: StrictInt | None = None
    time_budget_s: float | None = None
    # None: the scenario's (a preset may name one, e.g. treatment_response_prediction: val/score_ece),
    # else val/score; planning writes the resolved one into the job's spec
    metric: Literal["val/score", "val/auroc", "val/auprc", "val/score_ece"] | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    targets: TargetsSpec = TargetsSpec()
    compare: CompareSpec = CompareSpec()
    seed: StrictInt = 0
    # Optuna's: TPE, random search, Gaussian process; NSGA-II (several objectives only)
    sampler: Literal["tpe", "random", "gp", "nsga2"] = "tpe"
    # several objectives (trainables.pareto): ["val/auroc:max", "val/ece:min"]; empty: one, the metric
    objectives: list[str] = []
    select: str = ""  # how one model is chosen from the front (trainables.pareto.parse_select); '': the knee
    pretrained_ckpt: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_options(cls, **options: OptionValue) -> JobSpec:
        """From the CLI's flat option names (``num_trials=40``, ``target_auroc=0.9``, ``search=["k=[1,2]"]``)."""
        return cls.from_dict(_options_doc(options), source="the command line")

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, source: str) -> JobSpec:
        try:
            spec = cls.model_validate(doc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{source}: job spec field '{where}': {err['msg']} (got {err.get('input')!r})") from None
        spec.check()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> JobSpec:
        return cls.from_dict(load_yaml_mapping(path), source=str(path))

    @classmethod
    def from_command_line(cls, options: dict[str, OptionValue], given: dict[str, OptionValue], *, job_file: str | None,
                          demo: bool, demo_images: bool = False) -> JobSpec:
        """What `tune` and `submit` build from their options: a saved spec (``--job``) with the
        ``given`` options over it, else every option (``given`` ones explicitly set); ``--demo`` fills
        in the synthetic rare-disease job wherever the user gave nothing, ``--demo-images`` an image job."""
        demo_options = DEMO_IMAGE_OPTIONS if demo_images else DEMO_OPTIONS if demo else {}
        given = {**demo_options, **given}
        if job_file:
            return cls.load(job_file).with_options(**given).absolute()
        if not given.get("data"):
            raise UserError("--data is required (a table, feature arrays or synthetic:rare); "
                            "or run --demo, or --job FILE")
        return cls.from_options(**{**options, **given}).absolute()

    def absolute(self) -> JobSpec:
        """Local paths (data, checkpoint, preset file, presets folders) made absolute, so that a job
        resumed, ablated or rerun from another folder reads the same files."""
        scenario = self.scenario
        if scenario.endswith((".yaml", ".yml")) or "/" in scenario:
            scenario = _absolute(scenario)
        root = self.data.image_root
        return self.model_copy(update={
            "data": self.data.model_copy(update={"source": _absolute(self.data.source),
                                                 "image_root": _absolute(root) if root else None}),
            "scenario": scenario,
            "pretrained_ckpt": _absolute(self.pretrained_ckpt) if self.pretrained_ckpt else None,
            "presets_dirs": [_absolute(d) for d in self.presets_dirs]})

    def with_options(self, **options: OptionValue) -> JobSpec:
        """This spec with the fields that command-line options name replaced (flat option names)."""
        return JobSpec.from_dict(_merge(self.model_dump(mode="json"), _options_doc(options)), source="the command line")

    # ------------------------------------------------------------------ checks, in the CLI's words
    def check(self) -> None:
        r, s, t = self.resources, self.scheduler, self.targets
        for option, value in (("--time-budget", self.time_budget_s), ("--cpus-per-trial", r.cpus_per_trial),
                              ("--gpus-per-trial", r.gpus_per_trial), ("--reduction-factor", s.reduction_factor),
                              ("--val-frac", self.data.val_frac), ("--test-frac", self.data.test_frac),
                              ("--target-auroc", t.auroc), ("--target-auprc", t.auprc)):
            if value is not None and not math.isfinite(value):
                raise UserError(f"{option} must be a finite number, got {value}")
        if not 0 <= self.seed <= MAX_SEED:  # (--split-seed: prepare_data, which train shares)
            raise UserError(f"--seed must be in [0, {MAX_SEED}] (numpy's seeds; the baseline arm's sampler takes "
                            f"the seed + 1), got {self.seed}")
        if self.num_trials < 1:
            raise UserError(f"--num-trials must be at least 1, got {self.num_trials}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise UserError(f"--max-epochs must be at least 1, got {self.max_epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise UserError(f"--time-budget must be positive, got {self.time_budget_s:g} s")
        if self.metric is not None and self.metric not in SELECTABLE:
            raise UserError(f"--metric must be one of {', '.join(SELECTABLE)}, got '{self.metric}'")
        if s.grace_period < 1 or s.reduction_factor <= 1:
            raise UserError(f"--grace-period must be >= 1 and --reduction-factor > 1, got {s.grace_period} and "
                            f"{s.reduction_factor}")
        if r.concurrency is not None and r.concurrency < 1:
            raise UserError(f"--concurrency must be at least 1, got {r.concurrency}")
        if r.cpus_per_trial < 0 or r.gpus_per_trial < 0:
            raise UserError("--cpus-per-trial and --gpus-per-trial cannot be negative")
        if r.max_failures < 0:
            raise UserError(f"--max-failures cannot be negative, got {r.max_failures}")
        if self.name is not None and not _NAME.match(self.name):
            raise UserError(f"--experiment '{self.name}' must be letters, digits, '.', '_' or '-' (it names a folder)")
        for name, v in t.goals().items():
            if v is not None and not 0 < v <= 1:
                raise UserError(f"--target-{name} must be in (0, 1], got {v}")
        if t.stop_on_target and t.auroc is None and t.auprc is None:
            raise UserError("--stop-on-target needs --target-auroc and/or --target-auprc")
        self._check_objectives()
        c = self.compare
        if c.baseline_trials is not None and c.baseline_trials < 0:
            raise UserError(f"--baseline-trials must be 0 (no baseline arm) or more, got {c.baseline_trials}")
        if c.confirm_top < 0:
            raise UserError(f"--confirm-top must be 0 (no confirmation) or more, got {c.confirm_top}")
        if c.confirm_top and c.confirm_seeds < 2:
            raise UserError(f"--confirm-seeds must be at least 2 (a spread needs two seeds), got {c.confirm_seeds}")

    def _check_objectives(self) -> None:
        several = bool(self.objectives)  # how many: parse_objectives says below
        if self.sampler == "nsga2" and not several:
            raise UserError("--sampler nsga2 searches several objectives: give --objectives too "
                            "(e.g. --objectives val/auroc:max,val/ece:min)")
        if self.select and not several:
            raise UserError("--select chooses a model from the front of several objectives: give --objectives too")
        if self.sampler == "gp" and several:
            raise UserError("--sampler gp searches one objective; with --objectives use tpe (default), nsga2 or random")
        if not self.objectives:
            return
        try:
            objectives = parse_objectives(",".join(self.objectives), allowed=OBJECTIVE_METRICS)
            selection = parse_select(self.select)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        first = objectives[0]
        if first.metric not in SELECTABLE or first.direction != "max":
            raise UserError(f"the first of --objectives is what picks each trial's epoch: one of "
                            f"{', '.join(m + ':max' for m in SELECTABLE)}, got '{first}'")
        if self.metric is not None and self.metric != first.metric:
            raise UserError(f"--metric {self.metric} and --objectives starting with {first.metric} disagree: the "
                            "first objective is the metric; drop --metric")
        named = {o.metric for o in objectives}
        optimised = [selection.optimise[1]] if selection.optimise else []
        for metric in [m for m, _, _ in selection.constraints] + optimised:
            if metric not in named:
                raise UserError(f"--select names {metric}, which is not one of the objectives "
                                f"({', '.join(sorted(named))})")

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives, parsed (checked already); empty with one objective."""
        return parse_objectives(",".join(self.objectives)) if self.objectives else []

    @property
    def scheduler_name(self) -> str:
        """The scheduler that runs: as asked, else ASHA with one objective and FIFO with several."""
        return self.scheduler.name or ("fifo" if self.objectives else "asha")

    @property
    def baseline_trials(self) -> int:
        """Trials of the plain baseline arm: as asked, else as many as the stack's search has, so that
        the comparison is between two arms searched alike (METHODS.md, "Budgets")."""
        n = self.compare.baseline_trials
        return self.num_trials if n is None else n

    # ------------------------------------------------------------------ views
    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys → leaf values, as the MLflow job run holds them (``spec.targets.auroc``)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, node: object) -> None:
            if (isinstance(node, dict) and node and prefix.count(".") < 2
                    and not prefix.endswith(("search", "fix", "set"))):
                for k, v in node.items():
                    walk(f"{prefix}.{k}", v)
            else:
                out[prefix] = node

        for k, v in self.model_dump(mode="json").items():
            walk(k, v)
        return out


# --demo-images: an image job end to end in a few minutes on 2 cores: synthetic 32-px images where a faint
# shape marks the rare positives (1:33; difficulty 0.7 keeps it from being trivial: a cnn trained 6 epochs
# reaches test AUROC ~0.9), the built-in cnn, both arms, each winner confirmed with 2 seeds
DEMO_IMAGE_OPTIONS: dict[str, Any] = {"data": "synthetic-images:rare?n=3000&size=32&prevalence=0.03&difficulty=0.7",
                                      "num_trials": 6, "max_epochs": 6, "confirm_top": 1, "confirm_seeds": 2}

# --demo: 8 trials on a synthetic 1:50 task with the design note's targets and the question every job
# answers: a plain baseline arm with the same 8 trials, each arm's winner confirmed with 2 seeds
DEMO_OPTIONS: dict[str, Any] = {"data": "synthetic:rare?n=40000", "num_trials": 8, "max_epochs": 15,
                                "target_auroc": 0.90, "target_auprc": 0.50, "confirm_top": 1, "confirm_seeds": 2}

# CLI option name → path in the spec
OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "experiment": ("name",), "data": ("data", "source"), "label_cols": ("data", "label_cols"),
    "val_frac": ("data", "val_frac"), "test_frac": ("data", "test_frac"), "split_seed": ("data", "split_seed"),
    "min_positives": ("data", "min_positives"), "drop_cols": ("data", "drop_cols"),
    "group_col": ("data", "group_col"), "image_col": ("data", "image_col"), "image_root": ("data", "image_root"),
    "labels_from": ("data", "labels_from"), "label_sep": ("data", "label_sep"), "image_size": ("data", "image_size"),
    "scenario": ("scenario",), "presets_dirs": ("presets_dirs",), "search_aux": ("search_aux",),
    "search": ("search",), "fix": ("fix",), "overrides": ("set",),
    "num_trials": ("num_trials",), "max_epochs": ("max_epochs",), "time_budget_s": ("time_budget_s",),
    "metric": ("metric",), "scheduler": ("scheduler", "name"), "grace_period": ("scheduler", "grace_period"),
    "reduction_factor": ("scheduler", "reduction_factor"), "concurrency": ("resources", "concurrency"),
    "cpus_per_trial": ("resources", "cpus_per_trial"), "gpus_per_trial": ("resources", "gpus_per_trial"),
    "max_failures": ("resources", "max_failures"), "target_auroc": ("targets", "auroc"),
    "target_auprc": ("targets", "auprc"), "stop_on_target": ("targets", "stop_on_target"), "seed": ("seed",),
    "pretrained_ckpt": ("pretrained_ckpt",), "sampler": ("sampler",), "baseline_trials": ("compare", "baseline_trials"),
    "confirm_top": ("compare", "confirm_top"), "confirm_seeds": ("compare", "confirm_seeds"),
    "no_baseline": ("compare", "baseline_trials"),  # the flag: 0 trials
    "objectives": ("objectives",), "select": ("select",),
}


def _options_doc(options: dict[str, OptionValue]) -> dict[str, Any]:
    """Flat CLI options → the nested document of a spec (only the options given)."""

    unknown = sorted(set(options) - set(OPTION_FIELDS))
    if unknown:
        raise TypeError(f"unknown job options: {', '.join(unknown)}")
    if options.get("no_baseline") and options.get("baseline_trials") not in (None, 0):
        raise UserError(f"--no-baseline and --baseline-trials {options['baseline_trials']} contradict each other; "
                        "pass one of them")
    doc: dict[str, Any] = {}
    for opt, value in sorted(options.items(), key=lambda kv: kv[0] == "no_baseline"):  # the flag last: it wins
        if opt == "no_baseline":
            if not value:
                continue
            value = 0
        if opt in ("objectives", "select") and value is None:  # not given: the field's default
            continue
        if opt == "objectives" and isinstance(value, str):  # --objectives val/auroc:max,val/ece:min
            value = [p.strip() for p in value.split(",") if p.strip()]
        if opt in ("search", "fix", "overrides") and not isinstance(value, dict):
            value = parse_overrides(list(value), option=f"--{'set' if opt == 'overrides' else opt}")
        path = OPTION_FIELDS[opt]
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = list(value) if isinstance(value, tuple) else value
    return doc


def _absolute(path: str) -> str:
    if "://" in path or re.match(r"^[a-z][a-z-]*:", path):  # a URI, or a task (synthetic:, digits:, …)
        return path
    return str(Path(path).expanduser().absolute())


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
