"""Vectorised drawing helpers shared by the generators: coordinate grids, smooth
upsampling of coarse random grids (value noise), colours and float -> uint8."""
import colorsys
from functools import lru_cache
from typing import Tuple, Union

import numpy as np

Size = Tuple[int, int]


def to_size(img_size: Union[int, Tuple[int, int]]) -> Size:
    """Normalise an int or (height, width) to a (height, width) tuple of positive ints."""
    h, w = (img_size, img_size) if isinstance(img_size, (int, np.integer)) else tuple(img_size)
    if int(h) < 8 or int(w) < 8:
        raise ValueError(f'img_size must be at least 8 pixels, got {img_size!r}')
    return int(h), int(w)


@lru_cache(maxsize=16)
def pixel_grid(h: int, w: int, supersample: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in pixel units, of shape (h*s, w*s), read-only.

    With ``supersample`` s > 1 each pixel holds s x s sub-pixel centres, so that
    averaging s x s blocks of a mask drawn on this grid antialiases it.
    """
    s = supersample
    ys = (np.arange(h * s, dtype=np.float32) + 0.5) / s
    xs = (np.arange(w * s, dtype=np.float32) + 0.5) / s
    y, x = np.meshgrid(ys, xs, indexing='ij')
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


@lru_cache(maxsize=64)
def _interp_weights(n_in: int, n_out: int):
    """Indices and smoothstep weights to interpolate n_in nodes onto n_out pixels."""
    t = (np.arange(n_out, dtype=np.float32) + 0.5) / n_out * (n_in - 1)
    i0 = np.clip(np.floor(t).astype(np.int64), 0, max(n_in - 2, 0))
    f = np.clip(t - i0, 0.0, 1.0)
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible grid creases
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, f


def upsample(grid: np.ndarray, size: Size) -> np.ndarray:
    """Smoothly interpolate a coarse (gh, gw[, c]) grid (gh, gw >= 2) to (h, w[, c])."""
    h, w = size
    y0, y1, fy = _interp_weights(grid.shape[0], h)
    x0, x1, fx = _interp_weights(grid.shape[1], w)
    extra = (None,) * (grid.ndim - 2)
    fy = fy[(slice(None), None) + extra]
    fx = fx[(None, slice(None)) + extra]
    rows = grid[y0] * (1 - fy) + grid[y1] * fy  # (h, gw[, c])
    return rows[:, x0] * (1 - fx) + rows[:, x1] * fx


def value_noise(rng: np.random.Generator, size: Size, cells: int, channels: int = 0) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random (cells+1)^2 grid smoothly upsampled."""
    shape = (cells + 1, cells + 1) + ((channels,) if channels else ())
    return upsample(rng.random(shape, dtype=np.float32), size)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random RGB colour, float32 in [0, 255]."""
    return rng.uniform(0, 255, size=3).astype(np.float32)


def hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] (hue wraps) to an RGB float32 colour in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
