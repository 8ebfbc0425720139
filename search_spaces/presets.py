"""Scenario presets: complete trial configs stored as YAML, built in or the user's own.

A preset file is a trial config plus two optional blocks that the trial config itself ignores:
``scenario`` (name, description and, optionally, the ``metric`` its searches maximise) and
``search`` (ranges that replace the default ones, see ``search_spaces.spaces``). Users add presets
by passing a YAML path, or a folder of YAML files (``--presets DIR`` or ``LOSSTUNE_PRESETS``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainables.config import Config, load_yaml_mapping
from trainables.errors import UserError
from trainables.vocab import SELECTABLE

__all__ = ["Scenario", "BUILTIN_SCENARIOS", "available_scenarios", "load_scenario", "load_preset_file"]

BUILTIN_SCENARIOS = ("rare_disease_detection", "multi_disease_screening", "treatment_response_prediction", "baseline")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    config: Config
    search: dict[str, Any] = field(default_factory=dict)  # the preset's own range overrides
    source: str = ""
    metric: str | None = None  # what a search of this scenario maximises unless the job says (--metric)

    def to_yaml(self) -> str:
        doc: dict[str, Any] = {"scenario": {"name": self.name, "description": self.description,
                                            **({"metric": self.metric} if self.metric else {})}}
        doc.update(self.config.to_dict())
        if self.search:
            doc["search"] = self.search
        return yaml.safe_dump(doc, sort_keys=False)


def load_preset_file(path: str | Path) -> Scenario:
    p = Path(path)
    data = load_yaml_mapping(p)
    meta = data.get("scenario") or {}
    if not isinstance(meta, dict):
        raise UserError(f"{p}: 'scenario' must be a mapping with name and description")
    search = data.get("search") or {}
    if not isinstance(search, dict):
        raise UserError(f"{p}: 'search' must be a mapping of dotted config keys to ranges")
    metric = meta.get("metric")
    if metric is not None and metric not in SELECTABLE:
        raise UserError(f"{p}: scenario.metric must be one of {', '.join(SELECTABLE)}, got {metric!r}")
    return Scenario(name=str(meta.get("name") or p.stem), description=str(meta.get("description", "")),
                    config=Config.from_dict(data, source=str(p)), search=dict(search), source=str(p), metric=metric)


def _builtin(name: str) -> Scenario:
    ref = resources.files("search_spaces") / "presets" / f"{name}.yaml"
    with resources.as_file(ref) as p:
        scenario = load_preset_file(p)
    return dataclasses.replace(scenario, source="built-in")


def _preset_dirs(extra: list[str | Path] | tuple[str | Path, ...] = ()) -> list[Path]:
    dirs = [Path(d) for d in extra]
    env = os.environ.get("LOSSTUNE_PRESETS")
    if env:
        dirs += [Path(d) for d in env.split(os.pathsep) if d]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"presets folder '{d}' does not exist")
    return dirs


def available_scenarios(extra_dirs: list[str | Path] | tuple[str | Path, ...] = (), *,
                        broken: dict[str, str] | None = None) -> dict[str, Scenario]:
    """Built-in presets, then the user's (a user preset with a built-in name replaces it).

    A preset file that cannot be loaded is left out and its one-line reason put in ``broken``
    (path → reason), so that one bad file does not hide all the others; without ``broken`` it is
    an error."""
    out = {name: _builtin(name) for name in BUILTIN_SCENARIOS}
    for d in _preset_dirs(extra_dirs):
        for p in sorted(d.glob("*.y*ml")):
            try:
                s = load_preset_file(p)
            except UserError as exc:
                if broken is None:
                    raise
                broken[str(p)] = str(exc)
                continue
            out[s.name] = s
    return out


def load_scenario(name_or_path: str, *, extra_dirs: list[str | Path] | tuple[str | Path, ...] = ()) -> Scenario:
    """A scenario by name (built-in or from a presets folder) or from a preset YAML path."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return load_preset_file(name_or_path)
    if name_or_path in BUILTIN_SCENARIOS and not extra_dirs and not os.environ.get("LOSSTUNE_PRESETS"):
        return _builtin(name_or_path)
    broken: dict[str, str] = {}
    known = available_scenarios(extra_dirs, broken=broken)
    if name_or_path not in known:
        if broken:  # the one asked for may be in a file that does not load: say which
            path, reason = next(iter(broken.items()))
            raise UserError(f"unknown scenario '{name_or_path}'; {len(broken)} preset file(s) could not be loaded, "
                            f"first {reason}")
        raise UserError(f"unknown scenario '{name_or_path}'; known: {', '.join(known)} "
                        "(or auto, or a preset .yaml path)")
    return known[name_or_path]
