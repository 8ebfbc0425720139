"""Tune's search algorithms, signing the run's state inside Tune's own save (``tuner.core.seal``).

Tune 2.60 saves a run's state into a staging folder in one go: the experiment state
(``experiment_state-SESSION.json``), then the search algorithm's files (this class's
``save_to_dir``, the last to write), then the callbacks' (none of losstune's callbacks keeps state,
so there is no such file); then the folder is copied to the experiment folder. Signing at the end of
``save_to_dir`` puts every state file and its signature into the same copy. Tune pickles these
classes by name into ``tuner.pkl``, so a restored run keeps signing. Each save also keeps
losstune's own files out of the copy (``_sign_session`` says why).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from ray.tune.search import BasicVariantGenerator, Searcher, SearchGenerator

from tuner.core.seal import SIG_SUFFIX, is_ray_state, sign_tune_state
from tuner.job import kept_checkpoints
from tuner.job.race import FINISHED, Race, Races

__all__ = ["SealedSearch", "SealedVariants", "SeedRace"]


def _sign_session(dirpath: str, session_str: str) -> None:
    # A restored run's staging folder also received copies of losstune's own top-level JSON files
    # (Tune copies down every *.json and *.pkl of the experiment folder when it restores, and up the
    # whole staging folder at each save): copied up again, those restore-time copies would replace
    # what losstune wrote since (the trial numbers, the job file). The staging folder keeps Ray's
    # state only; the experiment folder keeps losstune's files.
    for name in os.listdir(dirpath):
        path = os.path.join(dirpath, name)
        if os.path.isfile(path) and not is_ray_state(name) and not name.endswith(SIG_SUFFIX):
            os.remove(path)
    # Tune copies the staging folder up in a thread of its own, which may still be listing it: a
    # signature's half-written file must not appear (and vanish) there, or that copy fails
    sign_tune_state(dirpath, names=[n for n in os.listdir(dirpath) if session_str in n],
                    tmp_dir=Path(dirpath).parent)
    kept_checkpoints.on_save(dirpath, session_str)


class SealedSearch(SearchGenerator):
    """A searcher (Optuna, through Tune's ``SearchGenerator``) whose saved state is signed."""

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        _sign_session(dirpath, session_str)


class SealedVariants(BasicVariantGenerator):
    """Given points (a confirmation, an ablation's grid) whose saved state is signed."""

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        _sign_session(dirpath, session_str)


class SeedRace(Searcher):
    """A confirmation's race over seeds (``tuner.job.race``: one arm's, or the arms' side by side) as a
    Tune searcher. Its state is saved with the run's (signed by ``SealedSearch``, verified before a
    restore reads it)."""

    def __init__(self, race: Race | Races) -> None:
        super().__init__(metric="objective", mode="max")
        self.race = race

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        got = self.race.suggest(trial_id)
        return Searcher.FINISHED if got == FINISHED else got

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.race.complete(trial_id, result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.race, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            # launch.make_tuner runs check_tune_state on the run folder (searcher-state-*.pkl included, HMAC
            # against this machine's key) before Tuner.restore; test_job_state plants one and it is refused
            self.race = pickle.load(f)  # verified: check_tune_state's HMAC in make_tuner, before Tuner.restore
