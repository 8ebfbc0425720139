"""Augmentation of a batch of training images, per image, on the batch's device.

The images live in memory as uint8 [N, C, H, W] (on the device with the rest of the data), and a
batch is an index slice of them, as for tables. Each image of a batch gets its own random resized
crop, rotation, optional horizontal flip (one affine transform, one ``grid_sample`` for the whole
batch) and brightness and contrast change; the draws come from the augmenter's own generator, whose
state a checkpoint keeps, so that a resumed run sees the same images an uninterrupted one would.
This replaces ``torchvision.transforms.v2`` applied image by image in DataLoader workers: with the
data already decoded in memory, per-image Python calls cost more than the batched tensor ops, and
on a GPU the work stays there.

    aug = ImageAugment(AugmentConfig(), device=torch.device("cpu"), seed=0)
    x = aug(batch_uint8)   # float32 in [0, 1], same shape
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.config import AugmentConfig

__all__ = ["ImageAugment", "to_unit"]

_RATIO = (3 / 4, 4 / 3)  # the random crop's aspect ratios, as torchvision's RandomResizedCrop


def to_unit(x: Tensor) -> Tensor:
    """uint8 images as float32 in [0, 1]; float images as they are."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class ImageAugment:
    """Random per-image augmentation of a batch (``AugmentConfig``); returns float32 in [0, 1]."""

    def __init__(self, cfg: AugmentConfig, *, device: torch.device, seed: int) -> None:
        self.cfg = cfg
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    @property
    def active(self) -> bool:
        c = self.cfg
        return c.enabled and (c.crop_scale < 1 or c.rotation > 0 or c.brightness > 0 or c.contrast > 0 or c.hflip)

    def _uniform(self, n: int, lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=self.generator, device=self.device) * (hi - lo) + lo

    def __call__(self, x: Tensor) -> Tensor:
        x = to_unit(x)
        if not self.active:
            return x
        c, b = self.cfg, x.shape[0]
        # The geometry: the output pixel at (u, v) in [-1, 1]² samples the input at A (u, v) + t, with A a
        # rotation scaled to the crop and t the crop's centre inside the image.
        area = self._uniform(b, c.crop_scale, 1.0)
        log_ratio = self._uniform(b, math.log(_RATIO[0]), math.log(_RATIO[1]))
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = self._uniform(b, -1.0, 1.0) * (1 - w)
        ty = self._uniform(b, -1.0, 1.0) * (1 - h)
        angle = self._uniform(b, -c.rotation, c.rotation) * (math.pi / 180)
        flip = torch.where(self._uniform(b, 0, 1) < 0.5, -1.0, 1.0) if c.hflip else torch.ones(b, device=self.device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([w * cos * flip, -w * sin, tx], dim=1),
                             torch.stack([h * sin * flip, h * cos, ty], dim=1)], dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        # Intensity: brightness scales, contrast stretches around each image's own mean.
        if c.brightness > 0:
            x = x * self._uniform(b, 1 - c.brightness, 1 + c.brightness).view(b, 1, 1, 1)
        if c.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * self._uniform(b, 1 - c.contrast, 1 + c.contrast).view(b, 1, 1, 1) + mean
        return x.clamp_(0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
