"""Smooth, label-free backgrounds (``background='smooth'``): gradients, blobs, flat colours.

Monotonous backgrounds are the failure case of the paper's A.5: the OOD patches SSOD samples
from them carry no diversity. Kept as that benchmark; the default is ``natural.py``.
Nothing here depends on a class, so background regions carry no class information.
"""
import numpy as np

from .canvas import Size, pixel_grid, random_colour, value_noise


def linear_gradient(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Two random colours blended along a random direction."""
    h, w = size
    y, x = pixel_grid(h, w)
    theta = rng.uniform(0, 2 * np.pi)
    t = (np.cos(theta) * (x / w - 0.5) + np.sin(theta) * (y / h - 0.5)) * np.sqrt(2) + 0.5
    c0, c1 = random_colour(rng), random_colour(rng)
    return c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)


def radial_gradient(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A colour glowing out of a random point into another colour."""
    h, w = size
    y, x = pixel_grid(h, w)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    t = np.hypot(y - cy, x - cx) / (rng.uniform(0.5, 1.2) * max(h, w))
    c0, c1 = random_colour(rng), random_colour(rng)
    return c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)


def colour_field(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Low-frequency colour blobs: a coarse random colour grid smoothly upsampled."""
    field = value_noise(rng, size, cells=int(rng.integers(1, 4)), channels=3)
    lo, hi = random_colour(rng), random_colour(rng)
    return lo + field * (hi - lo) * rng.uniform(0.6, 1.6)


def gaussian_blobs(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A flat colour with a few soft Gaussian blobs of other colours."""
    h, w = size
    y, x = pixel_grid(h, w)
    img = np.broadcast_to(random_colour(rng), (h, w, 3)).astype(np.float32)
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(0.12, 0.35) * max(h, w)
        weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))[..., None]
        img = img + weight * (random_colour(rng) - img)
    return img


def flat(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A single flat colour."""
    return np.broadcast_to(random_colour(rng), size + (3,)).astype(np.float32)


BACKGROUND_KINDS = (linear_gradient, radial_gradient, colour_field, gaussian_blobs, flat)


def random_smooth_background(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A float32 (h, w, 3) background in [0, 255]: one of ``BACKGROUND_KINDS``, usually
    with mild pixel noise."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    img = kind(rng, size)
    if rng.random() < 0.7:
        img = img + rng.uniform(1, 8) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.float32)
