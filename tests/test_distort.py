"""distort.py: shapes, value ranges, reproducibility, the identity, and known single maps."""

from __future__ import annotations

import pytest
import torch

from lenet5.distort import NONE, DistortConfig, distort, draw, warp


def digits(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 32, 32, dtype=torch.uint8)
    images[:, 8:24, 12:20] = torch.randint(0, 256, (n, 16, 8), generator=g, dtype=torch.uint8)
    return images


def test_shapes_dtype_and_value_range():
    images = digits()
    out = distort(images, DistortConfig(), torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    # Bilinear resampling never leaves the range of its inputs.
    assert out.max() <= images.max()


def test_reproducible_under_a_seed_and_varied_per_sample():
    images = digits()
    a = distort(images, DistortConfig(), torch.Generator().manual_seed(3))
    b = distort(images, DistortConfig(), torch.Generator().manual_seed(3))
    c = distort(images, DistortConfig(), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    theta = draw(8, DistortConfig(), 32, torch.Generator().manual_seed(3))
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 8


def test_identity_draw_changes_nothing():
    images = digits()
    assert torch.equal(distort(images, NONE, torch.Generator().manual_seed(0)), images)
    theta = draw(4, NONE, 32)
    assert torch.allclose(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(4, 2, 3))


def test_translation_by_one_pixel_shifts_the_image():
    """draw() converts pixels to normalised units; a one-pixel map moves content one pixel."""
    images = digits(2)
    config = DistortConfig(translate=1.0, scale=0, squeeze=0, shear=0)
    theta = draw(500, config, 32, torch.Generator().manual_seed(0))
    shift_px = -theta[:, :, 2] * 32 / 2  # back to pixels, n x 2
    assert 0.95 < shift_px.abs().max() <= 1.0 + 1e-6
    one_right = torch.tensor([[1.0, 0, -2 / 32], [0, 1, 0]]).expand(2, 2, 3)
    moved = warp(images, one_right)
    assert torch.equal(moved[:, :, 1:], images[:, :, :-1])
    assert moved[:, :, 0].sum() == 0


def test_squeeze_preserves_area_and_scale_changes_it():
    theta = draw(100, DistortConfig(translate=0, scale=0, squeeze=0.3, shear=0), 32)
    det = torch.linalg.det(theta[:, :, :2].double())
    assert torch.allclose(det, torch.ones_like(det), atol=1e-6)
    theta = draw(100, DistortConfig(translate=0, scale=0.3, squeeze=0, shear=0), 32)
    det = torch.linalg.det(theta[:, :, :2].double())
    assert det.min() < 0.9 and det.max() > 1.1


def test_bad_ranges_and_inputs_rejected():
    with pytest.raises(ValueError):
        DistortConfig(scale=-0.1)
    with pytest.raises(ValueError):
        DistortConfig(squeeze=1.5)
    with pytest.raises(ValueError, match="uint8"):
        distort(torch.zeros(2, 32, 32), DistortConfig())
