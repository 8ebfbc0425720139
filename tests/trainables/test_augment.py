"""Augmentation of training images, per image of a batch (trainables/augment.py), checked against
what each transform must do: the identity leaves the images alone, a flip is a flip, intensities stay
within the configured bounds, the draws are the generator's (a saved state replays them)."""

from __future__ import annotations

import pytest
import torch

from trainables import augment
from trainables.augment import ImageAugment, to_unit
from trainables.config import AugmentConfig

CPU = torch.device("cpu")


def _images(n: int = 6, c: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_nothing_configured_is_the_images_in_unit_range():
    x = _images()
    off = AugmentConfig(crop_scale=1.0, rotation=0.0, brightness=0.0, contrast=0.0, hflip=False)
    assert torch.equal(ImageAugment(off, device=CPU, seed=0)(x), x.float() / 255)
    assert torch.equal(ImageAugment(AugmentConfig(enabled=False), device=CPU, seed=0)(x), x.float() / 255)


def test_the_geometry_at_its_identity_samples_every_pixel_where_it_was(monkeypatch):
    """With the crop's area and ratio pinned to 1 and no rotation, the affine grid is the identity:
    bilinear sampling at pixel centres returns each pixel (float rounding only)."""
    monkeypatch.setattr(augment, "_RATIO", (1.0, 1.0))
    x = _images(c=3)
    # active (a rotation of at most 1e-12 degrees), but an identity transform
    aug = ImageAugment(AugmentConfig(crop_scale=1.0, rotation=1e-12, brightness=0.0, contrast=0.0), device=CPU, seed=1)
    assert torch.allclose(aug(x), x.float() / 255, atol=1e-5)


def test_a_flip_is_the_image_mirrored_or_left_alone(monkeypatch):
    monkeypatch.setattr(augment, "_RATIO", (1.0, 1.0))
    x = _images(n=32)
    y = ImageAugment(AugmentConfig(crop_scale=1.0, rotation=0.0, brightness=0.0, contrast=0.0, hflip=True),
                     device=CPU, seed=2)(x)
    unit = x.float() / 255
    flipped = [torch.allclose(y[i], unit[i].flip(-1), atol=1e-5) for i in range(len(x))]
    kept = [torch.allclose(y[i], unit[i], atol=1e-5) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and 4 < sum(flipped) < 28  # each image one way, about half


def test_brightness_stays_within_its_bounds():
    x = torch.full((64, 1, 8, 8), 100, dtype=torch.uint8)
    y = ImageAugment(AugmentConfig(crop_scale=1.0, rotation=0.0, brightness=0.2, contrast=0.0), device=CPU, seed=3)(x)
    factors = y.mean(dim=(1, 2, 3)) / (100 / 255)
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6 and factors.std() > 0.05
    assert y.min() >= 0 and y.max() <= 1


def test_the_same_generator_state_draws_the_same_augmentation():
    x = _images(n=8)
    a = ImageAugment(AugmentConfig(), device=CPU, seed=7)
    a(x)
    saved = a.state_dict()
    first = a(x)
    b = ImageAugment(AugmentConfig(), device=CPU, seed=99)
    b.load_state_dict(saved)
    assert torch.equal(b(x), first)
    assert not torch.equal(ImageAugment(AugmentConfig(), device=CPU, seed=8)(x), ImageAugment(
        AugmentConfig(), device=CPU, seed=7)(x))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_to_unit(dtype):
    x = torch.tensor([0, 51, 255], dtype=dtype)
    assert torch.equal(to_unit(x), x.float() / 255 if dtype == torch.uint8 else x.float())
