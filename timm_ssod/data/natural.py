"""Backgrounds with natural image statistics: varied, label-free scenes.

Photographs have a power spectrum close to 1/f^2 (amplitude ~ 1/f), occluding surfaces of
all sizes, and colours that vary together in brightness more than in hue. These generators
reproduce those statistics without any data set (so the benchmark stays offline and
deterministic), and give the sampler the diverse background patches that the paper's A.5
says SSOD needs (the smooth generators of ``backgrounds.py`` are its failure case):

- ``dead_leaves``: occluding discs and rectangles with power-law sizes, p(r) ~ r^-3 (the
  dead-leaves model of Matheron / Lee, Mumford & Huang 2001: scale-invariant, ~1/f^2);
- ``pink_noise``: a random field with amplitude spectrum 1/f^(beta/2), beta in [1.6, 2.4],
  coloured through a random palette (luminance and two weaker chroma fields);
- ``terrain``: fractal (fBm) height field through a landscape colour map, with shading;
- ``clouds``: fBm sky, from blue to white, optionally with a horizon;
- ``grating``: oriented band-pass 1/f noise (wood grain, bark, water ripples).

Every function is ``fn(rng, size) -> float32 (h, w, 3) in [0, 255]``, like the smooth ones.
"""
from functools import lru_cache

import numpy as np

from .canvas import Size, hsv_colour, pixel_grid, random_colour


@lru_cache(maxsize=16)
def _frequency_radius(h: int, w: int):
    """|f| and the orientation of every rfft2 frequency of an (h, w) image (|f| of DC set to 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    theta = np.arctan2(fy, fx)
    f.flags.writeable = False
    theta.flags.writeable = False
    return f, theta


def spectral_field(rng: np.random.Generator, size: Size, beta: float, orientation=None,
                   spread: float = 0.35) -> np.ndarray:
    """A zero-mean, unit-std (h, w) Gaussian field with power spectrum 1/|f|^beta.

    ``orientation`` (radians) keeps the frequencies near that direction (a von Mises-like
    window of width ``spread``): oriented structure with the same radial falloff.
    """
    h, w = size
    f, theta = _frequency_radius(h, w)
    amplitude = f ** (-beta / 2.0)
    if orientation is not None:
        amplitude = amplitude * np.exp((np.cos(2 * (theta - orientation)) - 1.0) / spread ** 2)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape))
    field = np.fft.irfft2(spectrum, s=(h, w))
    return ((field - field.mean()) / max(float(field.std()), 1e-8)).astype(np.float32)


def _palette(rng: np.random.Generator, t: np.ndarray, stops: int = 3) -> np.ndarray:
    """Map t (h, w), roughly in [0, 1], through a random colour ramp of ``stops`` colours
    whose brightness increases with t (luminance-led, as in photographs)."""
    hue = rng.random()
    values = np.sort(rng.uniform(0.1, 1.0, stops))
    colours = np.stack([hsv_colour(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.1, 0.8), v) for v in values])
    x = np.clip(t, 0, 1) * (stops - 1)
    i0 = np.minimum(np.floor(x).astype(np.int64), stops - 2)
    frac = (x - i0)[..., None]
    return colours[i0] * (1 - frac) + colours[i0 + 1] * frac


def _to_unit(field: np.ndarray, contrast: float = 0.22) -> np.ndarray:
    """A unit-std field mapped around 0.5 (about 95% of values inside [0, 1])."""
    return 0.5 + contrast * field


def power_law_radii(rng: np.random.Generator, n: int, rmin: float, rmax: float) -> np.ndarray:
    """``n`` radii with density p(r) ~ r^-3 on [rmin, rmax] (inverse CDF), so P(R > r) ~ (rmin / r)^2."""
    u = rng.random(n)
    return 1.0 / np.sqrt(1.0 / rmin ** 2 - u * (1.0 / rmin ** 2 - 1.0 / rmax ** 2))


def dead_leaves(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Occluding discs and rectangles (the dead-leaves model), radii ~ r^-3 between 1/32 and
    0.6 of the image size, stacked until the canvas is covered 2-4 times over; each leaf a
    flat colour (mostly near one hue, as in a scene) with faint shading."""
    h, w = size
    y, x = pixel_grid(h, w)
    rmin, rmax = max(h, w) / 32.0, 0.6 * max(h, w)
    # p(r) ~ r^-3 puts equal area in every octave (scale invariance); its mean area is
    # 2 pi rmin^2 ln(rmax / rmin) / (1 - (rmin / rmax)^2)
    mean_area = 2 * np.pi * rmin ** 2 * np.log(rmax / rmin) / (1 - (rmin / rmax) ** 2)
    n = int(rng.uniform(2, 4) * h * w / mean_area)
    f32 = np.float32
    r = power_law_radii(rng, n, rmin, rmax).astype(f32)[:, None, None]
    cy = rng.uniform(-0.2 * h, 1.2 * h, n).astype(f32)[:, None, None]
    cx = rng.uniform(-0.2 * w, 1.2 * w, n).astype(f32)[:, None, None]
    angle = rng.uniform(0, np.pi, n).astype(f32)[:, None, None]
    aspect = rng.uniform(0.3, 1.0, n).astype(f32)[:, None, None]
    disc = (rng.random(n) < 0.6)[:, None, None]
    dy, dx = y[None] - cy, x[None] - cx
    c, s = np.cos(angle), np.sin(angle)
    rect = (np.abs(c * dx + s * dy) <= r) & (np.abs(c * dy - s * dx) <= r * aspect)
    inside = np.where(disc, dy * dy + dx * dx <= r * r, rect)  # (n, h, w); later leaves lie on top
    top = n - 1 - np.argmax(inside[::-1], axis=0)  # index of the topmost leaf at each pixel
    covered = inside.any(axis=0)
    base_hue = rng.random()
    hues = np.where(rng.random(n) < 0.7, base_hue + rng.normal(0, 0.15, n), rng.random(n))
    colours = np.stack([hsv_colour(hh, ss, vv) for hh, ss, vv in
                        zip(hues, rng.uniform(0.05, 0.75, n), rng.uniform(0.08, 1.0, n))])
    slope = rng.uniform(-0.2, 0.2, n)
    shade = 1.0 + slope[top] * np.take_along_axis(dy, top[None], 0)[0] / r[top, 0, 0]
    img = colours[top] * shade[..., None]
    return np.where(covered[..., None], img, random_colour(rng)).astype(np.float32)


def pink_noise(rng: np.random.Generator, size: Size) -> np.ndarray:
    """1/f^beta noise, beta in [1.6, 2.4] (photographs: about 2), through a random palette,
    plus two weaker independent chroma fields."""
    beta = rng.uniform(1.6, 2.4)
    img = _palette(rng, _to_unit(spectral_field(rng, size, beta)))
    chroma = np.stack([spectral_field(rng, size, beta) for _ in range(2)], -1) * rng.uniform(5, 20)
    img[..., 0] += chroma[..., 0]
    img[..., 2] += chroma[..., 1]
    img[..., 1] -= 0.5 * chroma.sum(-1)
    return img.astype(np.float32)


_TERRAIN = np.array([  # height -> colour: deep water, shallow water, sand, grass, forest, rock, snow
    [20, 40, 110], [40, 90, 160], [200, 190, 140], [80, 140, 60], [35, 85, 40], [120, 110, 100], [240, 240, 245],
], dtype=np.float32)


def terrain(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A fractal (beta ~ 2.6) height field seen from above, coloured like a landscape
    (water, sand, grass, forest, rock, snow) and lit from a random direction."""
    height = spectral_field(rng, size, rng.uniform(2.3, 3.0))
    t = np.clip(0.5 + 0.2 * height + rng.uniform(-0.15, 0.15), 0, 1) * (len(_TERRAIN) - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), len(_TERRAIN) - 2)
    frac = (t - i0)[..., None]
    img = _TERRAIN[i0] * (1 - frac) + _TERRAIN[i0 + 1] * frac
    gy, gx = np.gradient(height)
    a = rng.uniform(0, 2 * np.pi)
    light = np.clip(1.0 + 1.5 * (np.cos(a) * gx + np.sin(a) * gy), 0.5, 1.5)
    return (img * light[..., None] * rng.uniform(0.7, 1.1)).astype(np.float32)


def clouds(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Fractal clouds (beta ~ 2.2) over a sky gradient, sometimes above a darker horizon."""
    h, w = size
    y, _ = pixel_grid(h, w)
    sky_top = hsv_colour(rng.uniform(0.52, 0.66), rng.uniform(0.3, 0.8), rng.uniform(0.5, 1.0))
    sky_low = hsv_colour(rng.uniform(0.5, 0.7), rng.uniform(0.05, 0.4), rng.uniform(0.7, 1.0))
    t = (y / h)[..., None]
    img = sky_top + t * (sky_low - sky_top)
    cover = np.clip(_to_unit(spectral_field(rng, size, rng.uniform(1.8, 2.6)), 0.35) - rng.uniform(0.2, 0.6), 0, 1)
    cloud = np.array([245, 245, 250], dtype=np.float32) * rng.uniform(0.75, 1.0)
    img = img + np.sqrt(cover)[..., None] * (cloud - img)
    if rng.random() < 0.4:
        horizon = rng.uniform(0.55, 0.85) * h + 3.0 * spectral_field(rng, (1, w), 2.0)
        ground = _palette(rng, _to_unit(spectral_field(rng, size, 2.0))) * 0.6
        img = np.where((y >= horizon)[..., None], ground, img)
    return img.astype(np.float32)


def grating(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Oriented 1/f noise (wood grain, bark, ripples): the spectrum of ``pink_noise``
    concentrated around one orientation, through a palette."""
    field = spectral_field(rng, size, rng.uniform(1.4, 2.2), orientation=rng.uniform(0, np.pi),
                           spread=rng.uniform(0.15, 0.5))
    return _palette(rng, _to_unit(field, rng.uniform(0.15, 0.3)), stops=int(rng.integers(2, 4))).astype(np.float32)


NATURAL_KINDS = (dead_leaves, pink_noise, terrain, clouds, grating)


def random_natural_background(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A float32 (h, w, 3) background in [0, 255]: one of ``NATURAL_KINDS``, with mild sensor noise."""
    kind = NATURAL_KINDS[int(rng.integers(len(NATURAL_KINDS)))]
    img = kind(rng, size) + rng.uniform(0.5, 4) * rng.standard_normal(size + (3,), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.float32)
