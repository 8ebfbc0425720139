"""The dual-head classifier: a shared backbone (an MLP for tables, an image network for images), a
main head and an optional aux head.

An image backbone starts with its input normalisation (``ImageInput``: uint8 or [0, 1] images, then
per-channel mean and std as buffers), so a saved model carries it and ``predict`` needs nothing but
the images resized to the model's input. The statistics are the training split's, or ImageNet's when
pretrained torchvision/timm weights are loaded (those weights were trained on ImageNet-normalised
images)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainables.config import ModelConfig
from trainables.errors import UserError

__all__ = ["weights_fingerprint", "MLPBackbone", "ImageBackbone", "build_model_backbone", "MainPath", "DualHeadModel",
           "model_file_bytes", "read_checkpoint", "backbone_state", "load_backbone", "load_pretrained",
           "load_pretrained_into"]


class MLPBackbone(nn.Module):
    def __init__(self, *, in_features: int, hidden: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ImageBackbone(nn.Module):
    """Input normalisation, an image feature extractor (``trainables.backbones``) and dropout before
    the heads; ``out_features`` is the extractor's."""

    def __init__(self, features: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 dropout: float = 0.0) -> None:
        super().__init__()
        from trainables.backbones import ImageInput

        self.input = ImageInput(list(mean), list(std))
        self.features = features
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = int(features.out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.features(self.input(x)))


def build_model_backbone(cfg: ModelConfig, *, input_shape: Sequence[int],
                         image_stats: tuple[Sequence[float], Sequence[float]] | None = None) -> nn.Module:
    """The backbone ``cfg.backbone`` names, for inputs of ``input_shape`` ((F,) for a table, (C, H, W)
    for images). A table's backbone is the MLP; images need an image backbone (``cnn``, …)."""
    shape = tuple(int(v) for v in input_shape)
    if cfg.backbone == "mlp":
        if len(shape) != 1:
            raise UserError(f"model.backbone 'mlp' reads table features, but the data are images of shape "
                            f"{'x'.join(map(str, shape))}; use model.backbone=cnn, torchvision:NAME, timm:NAME or "
                            "python:pkg.module:factory")
        return MLPBackbone(in_features=shape[0], hidden=tuple(cfg.hidden), dropout=cfg.dropout)
    if len(shape) != 3:
        raise UserError(f"model.backbone '{cfg.backbone}' is an image network, but the data are a table of "
                        f"{shape[0]} features; use model.backbone=mlp")
    from trainables.backbones import build_backbone

    c, h, _ = shape
    mean, std = image_stats or ([0.5] * c, [0.25] * c)
    return ImageBackbone(build_backbone(cfg.backbone, in_channels=c, image_size=h), mean=mean, std=std,
                         dropout=cfg.dropout)


class MainPath(nn.Module):
    """Backbone + main head as one module: what the EMA teacher averages and what predicts."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class DualHeadModel(nn.Module):
    """Logits of shape [B, K] from both heads; ``aux_head`` is None for the single-head baseline."""

    def __init__(self, *, in_features: int = 0, n_labels: int, hidden: tuple[int, ...] = (128, 64),
                 dropout: float = 0.1, aux_head: bool = True, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone or MLPBackbone(in_features=in_features, hidden=hidden, dropout=dropout)
        self.main_head = nn.Linear(self.backbone.out_features, n_labels)
        self.aux_head = nn.Linear(self.backbone.out_features, n_labels) if aux_head else None

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, n_labels: int, aux_head: bool, in_features: int | None = None,
                    input_shape: Sequence[int] | None = None,
                    image_stats: tuple[Sequence[float], Sequence[float]] | None = None) -> DualHeadModel:
        """The model ``cfg`` describes for inputs of ``input_shape`` (or a table of ``in_features``)."""
        shape = tuple(input_shape) if input_shape is not None else (int(in_features or 0),)
        return cls(n_labels=n_labels, aux_head=aux_head,
                   backbone=build_model_backbone(cfg, input_shape=shape, image_stats=image_stats))

    @property
    def is_image(self) -> bool:
        return isinstance(self.backbone, ImageBackbone)

    def main_path(self) -> MainPath:
        return MainPath(self.backbone, self.main_head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        feats = self.backbone(x)
        return self.main_head(feats), (self.aux_head(feats) if self.aux_head is not None else None)


def model_file_bytes(model: DualHeadModel, *, temperature: float, feature_names: list[str],
                     label_names: list[str], calibration: dict[str, Any] | None = None,
                     thresholds: dict[str, dict[str, float]] | None = None) -> bytes:
    """A trained model as losstune writes it (``model.pt``): a plain state dict plus the post-hoc
    temperature, the per-label calibration (``Calibration.to_dict``: plain JSON types), the decision
    thresholds chosen on validation (label → rule → threshold on the calibrated probability:
    ``trainables.operating``) and the feature and label names, loadable with weights_only=True."""
    buf = io.BytesIO()
    torch.save({"format": "losstune-model-v1", "model": model.state_dict(), "temperature": float(temperature),
                "calibration": calibration, "feature_names": list(feature_names), "label_names": list(label_names),
                "thresholds": {k: {r: float(t) for r, t in v.items()} for k, v in (thresholds or {}).items()}},
               buf)
    return buf.getvalue()


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True; every failure is a one-line ``UserError``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint '{p}' does not exist; pass the path of a .pt file saved with torch.save")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # garbage bytes, not a refused class
            raise UserError(f"checkpoint '{p}' cannot be read by torch.load (not a torch file?)") from None
        raise UserError(
            f"checkpoint '{p}' holds pickled objects or code that weights_only=True refuses to load; "
            "re-save it as a plain state_dict (torch.save(model.state_dict(), path))"
        ) from None
    except Exception as exc:  # zip/format errors from torch, truncated files
        raise UserError(f"checkpoint '{p}' cannot be read by torch.load ({type(exc).__name__}): "
                        "is it a torch file?") from None
    if not isinstance(obj, Mapping):
        raise UserError(f"checkpoint '{p}' holds a {type(obj).__name__}, not a state_dict mapping")
    return dict(obj)


def backbone_state(obj: Mapping, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the backbone weights in a checkpoint: a bare backbone state_dict, ``{"backbone": ...}``,
    a full model state_dict (``backbone.*`` keys), or losstune's own ``{"model": ...}`` files."""
    if any(isinstance(k, str) and k.startswith("backbone.") for k in obj):
        # Through the checks below too: a whole model's NaN weights are refused like a bare backbone's.
        inner = {k.removeprefix("backbone."): v for k, v in obj.items() if k.startswith("backbone.")}
        return backbone_state(inner, source=source)
    for key in ("backbone", "model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return backbone_state(obj[key], source=source)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise UserError(f"{source}: no tensors found; expected a backbone state_dict or a model state_dict")
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise UserError(f"{source} holds NaN or infinite weights ({', '.join(map(str, broken[:5]))}); it cannot be a "
                        "starting point: re-export it from a run that trained without diverging")
    return tensors


def load_pretrained(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The backbone weights of a pretrained checkpoint file (or of a state dict already read).

    The one way ``train``, ``tune`` and ``fit`` read ``--pretrained_ckpt``: ``read_checkpoint`` then
    ``backbone_state``, every failure a one-line ``UserError`` that names the file.
    """
    if isinstance(source, Mapping):
        return backbone_state(source, source="pretrained weights")
    return backbone_state(read_checkpoint(source), source=f"pretrained checkpoint '{source}'")


def load_backbone(backbone: nn.Module, state: Mapping[str, Tensor], *, source: str = "checkpoint") -> None:
    """Load pretrained backbone weights; any mismatch is an error that lists the keys involved."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(own[k].shape)} in the model"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(wrong))
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected))
        raise UserError(
            f"{source} does not fit the backbone ({'; '.join(parts)}); check model.hidden and the data's "
            "feature columns against the ones the checkpoint was trained with"
        )
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def load_pretrained_into(model: DualHeadModel, state: Mapping[str, Tensor], *, spec: str, source: str) -> Any:
    """Pretrained weights into the model's backbone: a table's MLP strictly (every key, every shape),
    an image network as its checkpoint family allows (prefixes, the classifier dropped, an RGB first
    convolution adapted; ``trainables.backbones.load_backbone_weights``), returning what was loaded."""
    if isinstance(model.backbone, ImageBackbone):
        if any(k.startswith("input.") for k in state):  # a losstune image model's own backbone: all of it
            load_backbone(model.backbone, state, source=source)
            return None
        from trainables.backbones import load_backbone_weights

        return load_backbone_weights(model.backbone.features, state, spec=spec, source=source)
    load_backbone(model.backbone, state, source=source)
    return None


def weights_fingerprint(state: Mapping[str, Tensor]) -> str:
    """A short hash of a state dict's tensors (as float32, in key order): equal fingerprints mean
    equal weights. A trial reports its backbone's before its first step, so that a test (or a
    person) can check the pretrained weights reached it."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
