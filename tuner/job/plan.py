"""Planning a job: every check of a ``JobSpec`` against its data, its scenario and its checkpoint,
with no Ray and no training; and reading a planned (or interrupted) job back for ``--resume``.

A job folder holds the spec as the user gave it (``job.yaml``, runnable again with ``--job``) and
what planning resolved (``losstune_job.json``: the scenario ``auto`` chose, the preset config and
search ranges, fingerprints of the data and of its splits, the MLflow ids once the records are
open), so that ``--resume`` rebuilds exactly the same data and trainable; Ray restores the
searcher, the scheduler and the trials from its own experiment state.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from search_spaces import SearchSpace, detect_scenario, load_scenario, scenario_space
from trainables.config import Config
from trainables.data import PreparedData
from trainables.errors import UserError
from trainables.model import DualHeadModel, load_pretrained, load_pretrained_into
from trainables.vocab import SCORE
from tuner.cluster.storage import LOCAL_ROOT, Storage, is_uri
from tuner.core.layout import ARMS_FILE, JOB_FILE, RESULTS_FILE, TRIAL_NUMBERS_FILE
from tuner.core.seal import SIG_SUFFIX, check_file, check_tune_state, sealed_write, tune_runs
from tuner.core.summary import BASELINE, STACK
from tuner.job.race import race_trainings
from tuner.job.spec import SPEC_FILE, JobSpec

__all__ = ["TuneJob", "plan_job", "load_job", "open_job", "job_inputs", "read_job", "check_job_state",
           "baseline_space", "baseline_config", "fixed_values", "for_data", "trial_threads", "JOB_FILE", "ARMS_FILE",
           "SPEC_FILE"]

_STATE_FIELDS = ("experiment", "data_fingerprint", "split_fingerprint", "scenario", "detection", "base_config",
                 "search_space", "searched", "space_spec", "created", "tracking", "arms", "finished", "pretrained_load")


@dataclass
class TuneJob:
    """A planned job: its spec (``job.spec``, the one copy of every setting) and what planning
    resolved: the scenario, the base config, the search space and the arms."""

    experiment: str
    storage_path: str
    spec: JobSpec
    data_fingerprint: str
    split_fingerprint: str
    scenario: str  # what the spec's scenario resolved to (``auto`` → a preset name)
    detection: dict[str, Any] | None
    base_config: dict[str, Any]
    search_space: dict[str, str]  # dotted key → its range, for people (never parsed back)
    searched: list[str]  # the config keys the search varies (conditional ones included)
    space_spec: dict[str, Any]  # the search space, structured (SearchSpace.to_dict; SpaceSpec.from_dict reads it)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    tracking: dict[str, Any] = field(default_factory=dict)  # MLflow experiment and parent run, once opened
    # the other arms of the job, planned like the stack: {"baseline": {base_config, search_space, searched, space_spec}}
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    local_root: str = LOCAL_ROOT  # where the driver keeps the files of a job whose storage is a URI
    finished: str = ""  # when the job ended with a winner (ISO time); a finished job is not resumed
    # --pretrained-ckpt: tensors loaded into the backbone, missing, unexpected, dropped (its classifier)
    pretrained_load: dict[str, int] = field(default_factory=dict)
    # wall seconds the job's earlier runs spent (before an interruption): per part, and "total"
    spent_s: dict[str, float] = field(default_factory=dict)

    @cached_property
    def storage(self) -> Storage:
        """The experiment folder's storage, parsed once: one filesystem (an S3 or GCS client) per job."""
        return Storage.parse(self.storage_path)

    @property
    def path(self) -> Path:
        """The job's own files on the driver: the experiment folder itself, or its local twin when the
        experiment lives in object storage (``publish`` mirrors them there)."""
        return self.storage.local_folder(self.experiment, local_root=self.local_root)

    @property
    def location(self) -> str:
        """Where the experiment lives, as the user writes it (``--resume`` takes it)."""
        return self.storage.shown(self.experiment)

    # ---- what the spec's resources mean for a trial
    @property
    def resources(self) -> dict[str, float]:
        return {"cpu": self.spec.resources.cpus_per_trial, "gpu": self.spec.resources.gpus_per_trial}

    @property
    def threads(self) -> int:
        """torch's threads in each trial (and in `losstune train` of its winner)."""
        return trial_threads(self.spec.resources.cpus_per_trial)

    def trainings(self) -> dict[str, int]:
        """What the job trains, at most, per part: the stack's search, the baseline arm's, and the
        confirmation (each arm's top configs raced over fresh seeds, ``tuner.job.race``). ASHA may stop
        some early; a search with fewer finished configs than ``--confirm-top`` confirms fewer."""
        c = self.spec.compare
        arms = 1 + (BASELINE in self.arms)
        return {STACK: self.spec.num_trials, BASELINE: self.spec.baseline_trials if BASELINE in self.arms else 0,
                "confirm": race_trainings(c.confirm_top, c.confirm_seeds) * arms}

    def slots(self, cpus: float, gpus: float = 0.0) -> int:
        """How many trials run at once on a runtime with these resources (``--concurrency`` caps it)."""
        r = self.spec.resources
        fits = [int(cpus // r.cpus_per_trial) if r.cpus_per_trial > 0 else 10**6,
                int(gpus // r.gpus_per_trial) if r.gpus_per_trial > 0 else 10**6]
        return max(1, min([*fits, r.concurrency or 10**6]))

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        sealed_write(self.path / SPEC_FILE, self.spec.model_copy(update={"name": self.experiment}).to_yaml())
        state = {k: getattr(self, k) for k in (*_STATE_FIELDS, "spent_s")}
        sealed_write(self.path / JOB_FILE, json.dumps(state, indent=2))
        self.publish()

    def publish(self) -> None:
        """The driver's files of a job in object storage, copied into its experiment folder."""
        storage = self.storage
        if storage.remote and self.path.is_dir():
            storage.mirror(self.path, self.experiment)


def trial_threads(cpus_per_trial: float) -> int:
    """A trial's torch threads: its whole CPUs, at least one."""
    return max(1, int(cpus_per_trial))


def plan_job(spec: JobSpec, storage_path: str = LOCAL_ROOT) -> tuple[TuneJob, PreparedData, SearchSpace,
                                                                             dict | None]:
    """Check everything the spec says and build the job; no Ray, no training, nothing written."""
    spec.check()
    storage = Storage.parse(storage_path)  # its form, before the data is read
    data = spec.data.prepare()
    detection = None
    name = spec.scenario
    if name == "auto":
        detection = detect_scenario(data.train.y.numpy(), data.label_names).to_dict()
        name = detection["scenario"]
    scenario = load_scenario(name, extra_dirs=list(spec.presets_dirs))
    if spec.objectives:  # several: the first picks each trial's epoch, so it is the metric
        spec = spec.model_copy(update={"metric": spec.objective_list[0].metric})
    if spec.metric is None:  # the scenario's, else the combined score: the job's spec says which it used
        spec = spec.model_copy(update={"metric": scenario.metric or SCORE})
    spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"name": spec.scheduler_name})})
    if spec.set:
        scenario = dataclasses.replace(scenario, config=scenario.config.with_overrides(dict(spec.set)))
    scenario = dataclasses.replace(scenario, config=for_data(scenario.config, data))
    fixed = fixed_values(spec)
    space = scenario_space(scenario, search_aux=spec.search_aux, ranges=dict(spec.search), fixed=fixed)
    pretrained, pretrained_load = None, {}
    if spec.pretrained_ckpt:
        source = f"pretrained checkpoint '{spec.pretrained_ckpt}'"
        pretrained = load_pretrained(spec.pretrained_ckpt)
        pretrained_load = _check_pretrained_fits(space.base, data, pretrained, source)
    else:  # the network is built once here: a backbone that cannot be (a typo, a factory that fails) is one line
        _network(space.base, data)
    arms = {}
    if spec.baseline_trials:
        b = baseline_space(space.base, fixed)
        arms["baseline"] = {"base_config": b.base.to_dict(), "search_space": b.describe(),
                            "searched": b.searched_keys(), "space_spec": b.to_dict()}
    experiment = spec.name or time.strftime(f"losstune-{scenario.name}-%Y%m%d-%H%M%S")
    job = TuneJob(experiment=experiment, storage_path=storage.given, local_root=str(Path(LOCAL_ROOT).resolve()),
                  spec=spec, data_fingerprint=data.fingerprint, split_fingerprint=data.split_fingerprint,
                  scenario=scenario.name, detection=detection, base_config=space.base.to_dict(),
                  search_space=space.describe(), searched=space.searched_keys(), space_spec=space.to_dict(), arms=arms,
                  pretrained_load=pretrained_load)
    for taken, where in ((job.path.exists(), job.path), (storage.remote and storage.exists(experiment), job.location)):
        if taken:
            raise UserError(f"experiment '{experiment}' already exists at {where}; "
                            f"continue it with --resume {job.location} or choose another --experiment")
    return job, data, space, pretrained


# What the baseline arm shares with the stack, so that only the loss stack differs between them: the
# network's shape, the batch size, the epochs and early stopping. Its own space searches the rest.
_SHARED_WITH_BASELINE = ("model.backbone", "model.hidden", "model.freeze_backbone", "optim.batch_size",
                         "optim.max_epochs", "optim.patience", "optim.backbone_lr_mult",
                         "optim.freeze_backbone_epochs", "augment.enabled", "augment.crop_scale", "augment.rotation",
                         "augment.brightness", "augment.contrast", "augment.hflip")


def for_data(cfg: Config, data: PreparedData) -> Config:
    """The config as the data need it: images get the built-in ``cnn`` when the config names the
    table's ``mlp`` (a preset, or no choice made); any other backbone is the user's choice and kept."""
    if data.is_image and cfg.model.backbone == "mlp":
        return cfg.with_overrides({"model.backbone": "cnn"}, source="image data")
    return cfg


def fixed_values(spec: JobSpec) -> dict[str, Any]:
    """The values the spec fixes (``--fix``, ``--max-epochs``)."""
    fixed = dict(spec.fix)
    if spec.max_epochs is not None:
        fixed["optim.max_epochs"] = spec.max_epochs
    return fixed


_PLAIN = ("main_loss.", "aux_loss.", "teacher.", "distill.", "consistency.", "weighting.")  # the preset decides these


def baseline_config(cfg: Config) -> Config:
    """``cfg`` made plain, for ``losstune train --baseline``: the ``baseline`` preset's losses, teacher
    and weighting (BCE, one head, no teacher, no distillation), ``cfg``'s network, schedule and seed.
    The preset is the one definition of the plain arm; the job's baseline arm searches from it too."""
    preset = load_scenario("baseline").config.flat()
    return cfg.with_overrides({k: v for k, v in preset.items() if k.startswith(_PLAIN)}, source="baseline")


def baseline_space(stack: Config, fixed: dict[str, Any]) -> SearchSpace:
    """The ``baseline`` preset's space (plain BCE, one head, no teacher) on the stack's network and
    schedule; the user's fixed optimiser and model values apply to it too."""
    flat = stack.flat()
    shared = {k: flat[k] for k in _SHARED_WITH_BASELINE if k in flat}
    preset = load_scenario("baseline")
    preset = dataclasses.replace(preset, config=preset.config.with_overrides(shared, source="the stack"))
    return scenario_space(preset, fixed={k: v for k, v in fixed.items() if k.startswith(("model.", "optim."))})


def _network(cfg: Config, data: PreparedData) -> DualHeadModel:
    return DualHeadModel.from_config(cfg.model, input_shape=data.input_shape, n_labels=data.n_labels, aux_head=False)


def _check_pretrained_fits(cfg: Config, data: PreparedData, state: dict, source: str) -> dict[str, Any]:
    """Load the weights into the job's backbone once, before any trial: what fits and what does not
    (an image checkpoint: how many tensors loaded, were missing, were unexpected or dropped)."""

    model = _network(cfg, data)
    report = load_pretrained_into(model, state, spec=cfg.model.backbone, source=source)
    if report is None:  # a table's MLP: every tensor, strictly
        return {"loaded": len(state), "missing": 0, "unexpected": 0, "dropped": 0}
    return {"loaded": report.loaded, "missing": len(report.missing), "unexpected": len(report.unexpected),
            "dropped": len(report.dropped)}


def find_job_folder(name_or_path: str, storage_path: str, *, fetch_into: Path | None = None,
                    folders: tuple[str, ...] = (), fetched: list[Path] | None = None) -> tuple[Path, str]:
    """A job's folder of its own files on this machine, and its storage path. The job is named by a
    path, a URI (``s3://bucket/prefix/NAME``) or a name under ``storage_path``; the files of a job in
    object storage that this machine never ran are fetched from its experiment folder first (into its
    local twin, or ``fetch_into`` for a command that only reads them), with their signatures and the
    files under ``folders`` (e.g. ``winner``); a folder made for them is added to ``fetched``."""
    if is_uri(name_or_path):
        storage_path, _, name_or_path = name_or_path.rstrip("/").rpartition("/")
    elif (Path(name_or_path) / JOB_FILE).is_file():
        return Path(name_or_path), str(Path(name_or_path).resolve().parent)
    storage = Storage.parse(storage_path)
    folder = storage.local_folder(name_or_path)
    if not (folder / JOB_FILE).is_file() and storage.remote and storage.exists(name_or_path, JOB_FILE):
        from tuner.record.spool import SPOOL_FILE, SPOOL_FILES_DIR

        folder = fetch_into or folder
        made = [f for f in [folder, *folder.parents] if not f.exists()]
        if fetched is not None and made:
            fetched.append(made[-1])  # the outermost folder the fetch creates
        names = [JOB_FILE, SPEC_FILE, ARMS_FILE, RESULTS_FILE, TRIAL_NUMBERS_FILE, SPOOL_FILE]
        storage.fetch(name_or_path, [*names, *(n + SIG_SUFFIX for n in names)], folder,
                      folders=[SPOOL_FILES_DIR, *folders])
    if not (folder / JOB_FILE).is_file():
        where = storage.shown(name_or_path)
        raise UserError(f"no losstune job '{name_or_path}' (looked for {JOB_FILE} in '{name_or_path}' and in "
                        f"'{where}'); list jobs with `ls {storage_path}`")
    return folder, storage.given


def open_job(name_or_path: str, *, storage_path: str = LOCAL_ROOT) -> TuneJob:
    """A job as saved in its folder, every file of it verified (``tuner.core.seal``): nothing of it is
    unpickled, and its data is not read, before that."""
    fetched: list[Path] = []
    folder, storage = find_job_folder(name_or_path, storage_path, fetched=fetched)
    try:
        job = read_job(folder, storage_path=storage)
        check_job_state(job)
    except UserError:
        for f in fetched:  # copied from object storage just now, for a job that is refused: not kept
            shutil.rmtree(f, ignore_errors=True)
        raise
    return job


def job_inputs(job: TuneJob) -> tuple[PreparedData, dict | None]:
    """A saved job's data (which must still match what it was planned on) and pretrained weights."""
    data = job.spec.data.prepare()
    if (data.fingerprint, data.split_fingerprint) != (job.data_fingerprint, job.split_fingerprint):
        raise UserError(f"the data of job '{job.experiment}' changed since it started ({job.spec.data.source}); "
                        "a resumed job must see the same data and splits")
    pretrained = load_pretrained(job.spec.pretrained_ckpt) if job.spec.pretrained_ckpt else None
    return data, pretrained


def load_job(name_or_path: str, *, storage_path: str = LOCAL_ROOT) -> tuple[TuneJob, PreparedData, dict | None]:
    """A job to resume: its spec, its data (which must still match) and its pretrained weights."""
    job = open_job(name_or_path, storage_path=storage_path)
    return (job, *job_inputs(job))


def check_job_state(job: TuneJob) -> None:
    """Every Tune run of the job (its search, arms, confirmations, ablation) holds only state signed
    with this machine's key: checked before Ray unpickles any of it."""
    storage = job.storage
    root = storage.ray_path(job.experiment)
    for run in tune_runs(root, fs=storage.fs):
        check_tune_state(run, fs=storage.fs, shown=storage.shown(job.experiment) + run[len(root):])


def read_job(folder: Path, *, storage_path: str | None = None) -> TuneJob:
    """The job as saved in its folder; a file that does not verify (``tuner.core.seal``) or is damaged is
    one line naming it (never a traceback)."""
    path = folder / JOB_FILE
    for name in (JOB_FILE, SPEC_FILE):
        if (folder / name).is_file():
            check_file(folder / name)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read job file '{path}': {exc}") from None
    except ValueError as exc:
        raise UserError(f"job file '{path}' is damaged (not valid JSON: {exc}); it cannot be resumed") from None
    if not isinstance(doc, dict):
        raise UserError(f"job file '{path}' is damaged (a JSON {type(doc).__name__}, not an object); "
                        "it cannot be resumed")
    wrong = [k for k in ("base_config", "search_space", "arms", "pretrained_load") if not isinstance(doc.get(k), dict)]
    wrong += [] if isinstance(doc.get("finished"), str) else ["finished"]
    wrong += [] if isinstance(doc.get("searched", []), list) else ["searched"]
    missing = [k for k in _STATE_FIELDS if k not in doc]
    if wrong or missing:
        raise UserError(f"job file '{path}' is damaged ({', '.join(wrong or missing)} missing or of the wrong type); "
                        "it cannot be resumed")
    if not (folder / SPEC_FILE).is_file():
        raise UserError(f"job folder '{folder}' has no {SPEC_FILE} (a job from an older losstune?); "
                        "it cannot be resumed")
    spec = JobSpec.load(folder / SPEC_FILE)
    state = {k: doc[k] for k in _STATE_FIELDS}
    spent = doc.get("spent_s", {})  # a job file written before losstune kept it: nothing spent on record
    if not isinstance(spent, dict) or not all(isinstance(v, (int, float)) for v in spent.values()):
        raise UserError(f"job file '{path}' is damaged (spent_s of the wrong type); it cannot be resumed")
    state["spent_s"] = {str(k): float(v) for k, v in spent.items()}
    state["experiment"] = folder.name
    local_root = str(folder.parent.resolve())
    return TuneJob(storage_path=storage_path or local_root, local_root=local_root, spec=spec, **state)
