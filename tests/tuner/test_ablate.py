"""`losstune ablate`: each technique of a job's winner switched off in turn, trained with the same
seeds, and its contribution on the test split with a paired bootstrap interval."""

from __future__ import annotations

import json

import pytest

from tests.tuner.conftest import run_cli
from tuner.job.ablate import FULL, variants


def test_variants_switch_off_only_what_the_winner_uses_and_stay_valid_configs():
    from trainables.config import Config

    full = Config().with_overrides({"main_loss.type": "focal", "aux_loss.type": "asymmetric", "teacher.enabled": True,
                                    "distill.weight": 0.5, "consistency.weight": 0.3,
                                    "weighting.strategy": "softadapt"})
    got = variants(full.flat())
    assert list(got) == ["aux head", "distillation", "consistency", "EMA teacher", "adaptive weighting", "focal loss",
                         "everything but focal loss"]
    for over in got.values():
        full.with_overrides(over)  # every variant is a config the trainer accepts
    plain = Config().with_overrides({"main_loss.type": "bce", "aux_loss.type": "none", "teacher.enabled": False,
                                     "distill.weight": 0.0, "consistency.weight": 0.0, "weighting.strategy": "static"})
    assert variants(plain.flat()) == {}


@pytest.mark.slow
def test_ablate_gives_one_row_per_technique_with_intervals(small_job, tmp_path, capsys):
    from tuner.job.plan import plan_job
    from tuner.job.run import run_job

    spec, storage = small_job(num_trials=2, max_epochs=2, scheduler="fifo", scenario="rare_disease_detection",
                              fix=["teacher.enabled=true", "distill.weight=0.5", "consistency.weight=0.0",
                                   "weighting.strategy=static", "aux_loss.type=asymmetric"])
    job, data, space, pretrained = plan_job(spec, storage)
    assert run_job(job, data, space, pretrained, address=None, verbose=0).winner is not None
    rc, out, err = run_cli(["ablate", "--job", "job", "--storage-path", storage, "--seeds", "2"], capsys)
    assert rc == 0, err
    saved = json.loads((job.path / "ablation.json").read_text())
    names = [r["variant"] for r in saved["rows"]]
    assert names == [FULL, "aux head", "distillation", "EMA teacher", "focal loss", "everything but focal loss"]
    for r in saved["rows"]:
        assert r["trials"] == 2  # every variant with both seeds
        if r["variant"] != FULL:
            c = r["contribution_auroc"]
            assert c["low"] <= c["estimate"] <= c["high"] and c["n_resamples"] == 1000
    assert "contribution to AUROC" in out and "claims of the design note" in out
    assert "+20% AUC over plain focal loss" in out
    # the job's report now has the ablation's table and the claims beside everything else
    report = (job.path / "report.html").read_text()
    assert 'id="ablation"' in report and "+20% AUC over plain focal loss" in report and 'id="operating"' in report
