"""`losstune train`: one training run with held-out evaluation, written atomically to --out."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.config import Config, load_yaml_mapping
from trainables.data import PreparedData, preprocessing_doc
from trainables.errors import UserError
from trainables.metrics import Targets
from trainables.model import load_pretrained, model_file_bytes
from trainables.operating import choose_thresholds
from trainables.trainer import FitResult, fit, holdout_evaluation, resolve_device
from trainables.vocab import TARGET_METRICS, Status, targets_met
from tuner.core.outputs import check_out_dir, write_run_dir
from tuner.job.plan import baseline_config, for_data
from tuner.job.spec import DataSpec
from tuner.present.tables import metric, table

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["run_train"]


def _epoch_line(m: dict[str, Any], max_epochs: int, tag: str) -> str:
    if m.get("status") == Status.DIVERGED:
        return f"{tag}epoch {m['epoch']:>3}/{max_epochs}  DIVERGED: {m.get('reason', '')}"
    star = " *" if m.get("best/epoch") == m["epoch"] else ""
    return (f"{tag}epoch {m['epoch']:>3}/{max_epochs}  loss {m['train/loss']:.4f}  "
            f"val auroc {m['val/auroc']:.4f} auprc {m['val/auprc']:.4f} ece {m['val/ece']:.4f} "
            f"score {m['val/score']:.4f}{star}")


def _train_one(cfg: Config, data: PreparedData, *, targets: Targets, device: str, pretrained: dict[str, Tensor] | None,
               quiet: bool, tag: str = "") -> tuple[FitResult, dict[str, Any]]:
    def report(metrics: dict[str, Any], **_: object) -> None:
        if not quiet:
            print(_epoch_line(metrics, cfg.optim.max_epochs, tag), flush=True)

    result = fit(cfg, data, report=report, targets=targets, device=device, pretrained=pretrained)
    if result.model is None:
        raise UserError(f"{tag}training diverged before the first epoch finished: {result.reason}")
    held = holdout_evaluation(result.model, data)
    val_y = data.val.y.detach().cpu().numpy().reshape(len(data.val), -1)
    probs = held.val_probs.reshape(len(data.val), -1)
    # the decision thresholds chosen on validation, which the model file keeps for `predict` (trainables.operating)
    thresholds = {name: choose_thresholds(probs[:, k], val_y[:, k]) for k, name in enumerate(data.label_names)}
    holdout = {**held.metrics, "calibration": held.calibration.to_dict(), "thresholds": thresholds}
    return result, holdout


def _trial_threads(config_path: str | None) -> int | None:
    """torch's thread count in the trial an exported config came from (its ``provenance``)."""
    if not config_path:
        return None

    threads = (load_yaml_mapping(config_path).get("provenance") or {}).get("torch_threads")
    return int(threads) if isinstance(threads, int) and threads > 0 else None


def run_train(*, config_path: str | None, data: DataSpec, overrides: Sequence[str], pretrained_ckpt: str | None,
              out: str | None, compare_baseline: bool, device: str, target_auroc: float | None,
              target_auprc: float | None, overwrite: bool, quiet: bool) -> int:
    # ---- everything the user gave is checked before any compute
    """``losstune train``: one config trained on the data's splits, with its validation history, the
    targets judged on the held-out test split and (``--baseline``) the plain model beside it."""
    cfg = Config.load(config_path) if config_path else Config()
    threads = _trial_threads(config_path)
    if overrides:
        cfg = cfg.with_overrides(list(overrides))
    try:
        targets = Targets(auroc=target_auroc, auprc=target_auprc)
    except ValueError as exc:
        raise UserError(str(exc).replace("target `", "--target-").replace("`", "")) from None
    resolve_device(device)
    out_dir = Path(out).expanduser() if out else Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    inputs = (data.source, data.image_root, config_path, pretrained_ckpt)
    check_out_dir(out_dir, overwrite=overwrite, inputs=inputs)
    data = data.prepare()
    cfg = for_data(cfg, data)  # images: the built-in cnn unless the config names an image backbone
    pretrained = None
    if pretrained_ckpt:
        load_pretrained(pretrained_ckpt)  # readable, a state dict, no NaN: checked before anything trains
        pretrained = pretrained_ckpt  # fit reads it again and names the file in what it says

    if threads:
        import torch

        torch.set_num_threads(threads)  # the trial's: the same float results as in the search

    s = data.summary()
    shape = "images " + "x".join(map(str, data.input_shape)) if data.is_image else f"features {s['features']}"
    print(f"data: {s['source']}  rows train/val/test {s['rows']['train']}/{s['rows']['val']}/{s['rows']['test']}  "
          f"{shape}  labels {', '.join(s['labels'])}  train prevalence "
          f"{', '.join(f'{p:.4f}' for p in s['prevalence_train'])}", flush=True)
    if not out:  # where the model goes, said before it trains
        print(f"no --out: the model will be written to {out_dir}/", flush=True)

    # ---- train the config (and the baseline arm on the same splits)
    result, holdout = _train_one(cfg, data, targets=targets, device=device, pretrained=pretrained, quiet=quiet)
    base_result = base_holdout = None
    if compare_baseline:
        base_cfg = baseline_config(cfg)
        if not quiet:
            print("baseline arm (BCE, single head, no teacher):", flush=True)
        base_result, base_holdout = _train_one(base_cfg, data, targets=targets, device=device, pretrained=pretrained,
                                               quiet=quiet, tag="  baseline ")

    # ---- the table a person reads
    print(f"\nstatus: {result.status}{' (' + result.reason + ')' if result.reason else ''}"
          f"; best epoch {result.best_epoch}"
          f" of {result.epochs}; temperature fit on validation T = {holdout['temperature']:.3f}")
    header = ["metric", "val", "test"]
    rows = [(m.upper(), [metric(holdout[f"val/{m}"]), metric(holdout[f"test/{m}"])]) for m in ("auroc", "auprc", "ece")]
    rows.append(("ECE after T-scaling", [metric(holdout["val/ece_scaled"]), metric(holdout["test/ece_scaled"])]))
    kinds = "/".join(sorted({x["kind"] for x in holdout["calibration"]["labels"]}))
    rows.append((f"ECE calibrated ({kinds})",
                 [metric(holdout["val/ece_calibrated"]), metric(holdout["test/ece_calibrated"])]))
    if base_holdout is not None:
        header += ["baseline test", "difference"]
        for row, m in zip(rows, ("auroc", "auprc", "ece", "ece_scaled", "ece_calibrated")):
            b = base_holdout[f"test/{m}"]
            row[1].extend([metric(b), f"{holdout[f'test/{m}'] - b:+.4f}"])
    print(table(header, [[name, *cells] for name, cells in rows], right=True))
    verdict = _target_verdict(targets, holdout)
    if verdict:
        print(verdict)

    # ---- write everything at once
    metrics = {
        "status": result.status, "reason": result.reason, "best_epoch": result.best_epoch, "epochs": result.epochs,
        "holdout": holdout, "targets": {**targets.to_dict(), **result.targets}, "history": result.history,
        "data": s,
    }
    if base_result is not None:
        metrics["baseline"] = {"status": base_result.status, "best_epoch": base_result.best_epoch,
                               "holdout": base_holdout}
    buf = model_file_bytes(result.model, temperature=holdout["temperature"], feature_names=data.feature_names,
                           label_names=data.label_names, calibration=holdout["calibration"],
                           thresholds=holdout["thresholds"])
    files: dict[str, bytes | str] = {
        "config.yaml": cfg.to_yaml(),
        "metrics.json": json.dumps(metrics, indent=2, default=float),
        "preprocessor.json": json.dumps(preprocessing_doc(data), indent=2),
        "model.pt": buf,
    }
    write_run_dir(out_dir, files, overwrite=overwrite, inputs=inputs)
    print(f"\nwrote {out_dir}/ (config.yaml, metrics.json, preprocessor.json, model.pt)")
    return 0


def _target_verdict(targets: Targets, holdout: dict[str, Any]) -> str:
    parts = []
    for split in ("val", "test"):
        met = targets_met({m: holdout[f"{split}/{m}"] for m in TARGET_METRICS}, targets.to_dict())
        parts += [f"{split} {name.upper()} {holdout[f'{split}/{name}']:.4f} {'meets' if ok else 'does NOT meet'} the "
                  f"target {getattr(targets, name):g}" for name, ok in met.items() if name != "all"]
    return "targets: " + "; ".join(parts) if parts else ""
