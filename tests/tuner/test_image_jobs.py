"""Image jobs end to end (issue 20), on a real local Ray runtime and a real sqlite MLflow store: a
torchvision backbone with both arms, the user's own factory on scikit-learn's digits, a CheXNet-layout
checkpoint fine-tuned on two findings, and an image trial that `export` → `train` reproduces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from tests.tuner.conftest import run_cli

pytestmark = pytest.mark.slow


class TinyNet(nn.Module):
    """The user's own feature extractor: what `python:tests.tuner.test_image_jobs:tiny_net` builds."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, kernel_size=3, padding=1)
        self.out_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def tiny_net(in_channels: int) -> nn.Module:
    return TinyNet(in_channels)


IMAGES = "synthetic-images:rare?n=600&size=28&prevalence=0.1&difficulty=0.2"


def test_a_torchvision_backbone_job_with_both_arms(tmp_path, capsys, shared_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/img.db"
    rc, out, err = run_cli(["tune", "--data", IMAGES, "--set", "model.backbone=torchvision:resnet18",
                            "--num-trials", "2", "--max-epochs", "2", "--scheduler", "fifo", "--confirm-top", "1",
                            "--confirm-seeds", "2", "--experiment", "resnet", "--tracking-uri", uri], capsys)
    assert rc == 0, err[-3000:]
    assert "images 1x28x28" in out and "model torchvision:resnet18" in " ".join(out.split())
    assert re.search(r"Best here on test AUROC: .*\(difference [^)]*95% CI", " ".join(out.split()))
    assert "budgets: stack 2 trials" in out and "baseline 2 trials" in out
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("resnet").experiment_id
    runs = c.search_runs([exp], max_results=100)
    arms = {(r.data.tags.get("losstune.arm"), r.data.tags.get("losstune.phase")) for r in runs
            if r.data.tags.get("losstune.role") != "job"}
    assert arms == {("stack", "search"), ("baseline", "search"), ("stack", "confirm"), ("baseline", "confirm")}
    for r in runs:
        if r.data.tags.get("losstune.role") != "job":  # both arms, every trial, on the same backbone
            assert r.data.params["model.backbone"] == "torchvision:resnet18"
    [job] = [r for r in runs if r.data.tags.get("losstune.role") == "job"]
    profiles = [json.loads(i.dataset.profile) for i in job.inputs.dataset_inputs]
    assert {p["image_size"] for p in profiles} == {"28x28"} and {p["channels"] for p in profiles} == {1}
    assert sum(p["num_images"] for p in profiles) == 600 and "positives.finding" in profiles[0]
    page = (tmp_path / "losstune_results" / "resnet" / "report.html").read_text()
    assert "Example training images per label" in page


def test_the_users_own_factory_on_scikit_learns_digits(tmp_path, capsys, shared_ray, monkeypatch):
    """`python:pkg.module:factory` builds the backbone in every trial (the workers import it); the
    job says its verdict on a small real-image task (digit 3 against the rest, 1:9)."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["tune", "--data", "digits:3", "--set",
                            "model.backbone=python:tests.tuner.test_image_jobs:tiny_net", "--num-trials", "2",
                            "--max-epochs", "3", "--scheduler", "fifo", "--confirm-top", "0", "--experiment", "digits",
                            "--no-tracking"], capsys)
    assert rc == 0, err[-3000:]
    assert "images 1x8x8" in out and "model python:tests.tuner.test_image_jobs:tiny_net" in " ".join(out.split())
    assert re.search(r"\nBest here on test AUROC: ", out)
    assert re.search(r"the loss stack (raised|lowered|left) test AUROC .* relative to the plain baseline", out)


def _chexnet_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """What CheXNet's repository saves: torchvision's DenseNet-121 (random weights here) with a 14-way
    classifier (Linear + Sigmoid), every key under DataParallel's `module.` and the wrapper's `densenet121.`."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.densenet121(weights=None)
    net.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    state = {f"module.densenet121.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return state


def test_a_chexnet_checkpoint_starts_every_trial(tmp_path, capsys, shared_ray, monkeypatch):
    """Issue 20, acceptance 2: every trial's backbone before its first step equals the file's (its
    `init/backbone` fingerprint, against one computed here), and the job prints what loaded."""
    from trainables.backbones import imagenet_stats
    from trainables.config import Config
    from trainables.model import DualHeadModel, load_pretrained, load_pretrained_into, weights_fingerprint

    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "chexnet.pth.tar"
    state = _chexnet_checkpoint(ckpt)
    data = "synthetic-images:screening?labels=2&n=300&size=32&prevalence=0.25&difficulty=0.2"
    rc, out, err = run_cli(["tune", "--data", data, "--set", "model.backbone=torchvision:densenet121",
                            "--pretrained-ckpt", str(ckpt), "--num-trials", "2", "--max-epochs", "1",
                            "--scheduler", "fifo", "--no-baseline", "--confirm-top", "0", "--experiment", "chexnet",
                            "--no-tracking", "--min-positives", "3"], capsys)
    assert rc == 0, err[-3000:]
    classifier = [k for k in state if ".classifier." in k]
    assert len(classifier) == 2
    assert (f"pretrained weights {ckpt}: {len(state) - 2} tensors loaded into the backbone, 0 missing, "
            "0 unexpected, 2 dropped (its classifier)") in out
    # the backbone every trial must start from: the file's weights into the job's network, ImageNet's statistics
    cfg = Config().with_overrides({"model.backbone": "torchvision:densenet121"})
    model = DualHeadModel.from_config(cfg.model, input_shape=(1, 32, 32), n_labels=2, aux_head=False,
                                      image_stats=imagenet_stats(1))
    load_pretrained_into(model, load_pretrained(ckpt), spec=cfg.model.backbone, source="test")
    expected = weights_fingerprint(model.backbone.state_dict())
    trials = list((tmp_path / "losstune_results" / "chexnet").glob("train_trial_*"))
    assert len(trials) == 2
    for trial in trials:
        first = json.loads((trial / "result.json").read_text().splitlines()[0])
        assert first["epoch"] == 1 and first["init/backbone"] == expected, trial.name


def test_export_then_train_reproduces_an_image_trial(tmp_path, capsys, shared_ray, monkeypatch):
    """Issue 20, acceptance 4: the exported config trained again on the same images gives the trial's
    validation metrics to the last bit on CPU (augmentation draws included)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    rc, out, err = run_cli(["tune", "--data", IMAGES, "--num-trials", "2", "--max-epochs", "3", "--scheduler",
                            "fifo", "--no-baseline", "--confirm-top", "0", "--experiment", "again"], capsys)
    assert rc == 0, err[-3000:]
    rc, out, err = run_cli(["export", "--experiment", "again", "--out", "winner.yaml"], capsys)
    assert rc == 0, err
    prov = yaml.safe_load((tmp_path / "winner.yaml").read_text())["provenance"]
    assert yaml.safe_load((tmp_path / "winner.yaml").read_text())["model"]["backbone"] == "cnn"
    rc, out, err = run_cli(["train", "--config", "winner.yaml", "--data", IMAGES, "--out", "trained", "--quiet"],
                           capsys)
    assert rc == 0, err[-3000:]
    history = json.loads((tmp_path / "trained" / "metrics.json").read_text())["history"]
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # absolute: MLflow keeps one store per URI string
    for key in ("val/auroc", "val/auprc", "val/ece"):
        trial = {h.step: h.value for h in c.get_metric_history(prov["trial_run_id"], key)}
        assert trial and {e: history[e - 1][key] for e in trial} == pytest.approx(trial, abs=0, rel=0), key
    assert json.loads((tmp_path / "trained" / "preprocessor.json").read_text())["image_size"] == [28, 28]


def no_features(in_channels: int) -> nn.Module:
    """A factory whose module does not say how many features it gives (the bad-input catalogue's)."""
    return nn.Conv2d(in_channels, 4, kernel_size=3)
