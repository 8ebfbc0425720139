"""Scenario presets, automatic scenario detection and Optuna define-by-run search spaces.

Never imports Ray or MLflow: a space is a plain callable ``space(trial) -> dict`` that Ray's
``OptunaSearch`` (or a plain Optuna study) drives. Its parameters are data (``ParamSpec``: an Optuna
distribution and a condition per dotted key; ``SpaceSpec`` with the fixed values), which
``SearchSpace.to_dict()`` / ``SpaceSpec.from_dict`` carry through a job's record.
"""

from __future__ import annotations

from search_spaces.detect import RARE_RATIO, Detection, detect_scenario
from search_spaces.presets import BUILTIN_SCENARIOS, Scenario, available_scenarios, load_scenario
from search_spaces.spaces import (
    Condition,
    Log1mFloat,
    ParamSpec,
    SearchSpace,
    SpaceSpec,
    build_space,
)

__all__ = ["BUILTIN_SCENARIOS", "Scenario", "available_scenarios", "load_scenario", "Detection", "detect_scenario",
           "RARE_RATIO", "Condition", "Log1mFloat", "ParamSpec", "SpaceSpec", "SearchSpace", "build_space",
           "scenario_space"]


def scenario_space(scenario: Scenario, *, search_aux: bool = False, ranges: dict | None = None,
                   fixed: dict | None = None, warm_start: bool = True) -> SearchSpace:
    """The define-by-run space of a scenario: its preset's ranges, then the preset's own ``search``
    block, then the user's ``ranges`` and ``fixed`` values."""
    merged = {**scenario.search, **(ranges or {})}
    return build_space(scenario.config, name=scenario.name, search_aux=search_aux, ranges=merged, fixed=fixed,
                       warm_start=warm_start)
