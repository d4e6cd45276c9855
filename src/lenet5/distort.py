"""Random planar affine distortions of whole batches, as in the paper's section III-C.

LeCun et al. (1998) grew the training set with 540,000 distorted copies made of "randomly
picked combinations" of horizontal and vertical translation, scaling, squeezing (compress
horizontally while elongating vertically, or the reverse) and horizontal shearing. The ranges
are not given; ours are in `DistortConfig`, chosen so that a distorted digit stays inside the
32x32 field and plainly the same digit (see `lenet5 distortions` for a picture).

Instead of storing ten copies per image, each sample gets a fresh draw every time it is seen,
which gives the same variety with no extra memory. One draw is one 2x3 matrix per sample; the
whole batch is resampled at once with `affine_grid` and `grid_sample` (bilinear, background
outside the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistortConfig:
    """Ranges of the uniform draws; each value v means the interval [-v, v].

    translate: pixels, horizontally and vertically (independently).
    scale: relative change of size in both directions (0.1 means 0.9x to 1.1x).
    squeeze: relative change of width, with the height changed the opposite way
        (width * (1 + q), height / (1 + q)), so the area is unchanged.
    shear: horizontal shear factor (x += shear * y).
    """

    translate: float = 2.0
    scale: float = 0.10
    squeeze: float = 0.15
    shear: float = 0.25

    def __post_init__(self) -> None:
        for name in ("translate", "scale", "squeeze", "shear"):
            if getattr(self, name) < 0:
                raise ValueError(f"distortion range {name} must be >= 0")
        if self.scale >= 1 or self.squeeze >= 1:
            raise ValueError("scale and squeeze must be below 1 (a size change of 100%)")


NONE = DistortConfig(translate=0.0, scale=0.0, squeeze=0.0, shear=0.0)


def draw(
    n: int, config: DistortConfig, side: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n random affine maps as [n, 2, 3] matrices in affine_grid's normalised coordinates.

    The matrix maps *output* coordinates to the *input* coordinates sampled, so it is the
    inverse of the distortion drawn.
    """

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * bound

    tx, ty = uniform(config.translate), uniform(config.translate)
    scale = 1 + uniform(config.scale)
    squeeze = 1 + uniform(config.squeeze)
    shear = uniform(config.shear)
    sx, sy = scale * squeeze, scale / squeeze  # n, n
    # Forward map: p' = [[sx, shear * sy], [0, sy]] p + t; invert the 2x2 part.
    det = sx * sy
    inverse = torch.stack(
        [
            torch.stack([sy / det, -shear * sy / det], dim=1),
            torch.stack([torch.zeros(n, dtype=det.dtype), sx / det], dim=1),
        ],
        dim=1,
    )  # n x 2 x 2
    shift = torch.stack([tx, ty], dim=1) * (2 / side)  # pixels to [-1, 1] units, n x 2
    offset = -(inverse @ shift.unsqueeze(2))  # n x 2 x 1
    return torch.cat([inverse, offset], dim=2).float()  # n x 2 x 3


def distort(
    images: torch.Tensor, config: DistortConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A fresh random distortion of each image: uint8 [B, H, W] -> uint8 [B, H, W]."""
    if images.dtype != torch.uint8 or images.dim() != 3:
        shape = tuple(images.shape)
        raise ValueError(f"expected uint8 images [B, H, W], got {images.dtype} {shape}")
    n, height, width = images.shape
    if height != width:
        raise ValueError(f"expected square images, got {height}x{width}")
    return warp(images, draw(n, config, width, generator).to(images.device))


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample uint8 [B, H, W] images through affine_grid matrices theta [B, 2, 3]."""
    pixels = images.unsqueeze(1).float()  # B x 1 x H x W
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)  # B x H x W x 2
    warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)  # B x H x W
