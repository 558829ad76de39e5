"""Object-free OOD images of other families than the backgrounds: regular textures
(stripes, checkerboards, dots, multi-octave value noise) and pixel noise."""
import numpy as np

from .canvas import Size, pixel_grid, random_colour, value_noise


def _two_colour(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] (h, w) to a blend of two random colours."""
    c0, c1 = random_colour(rng), random_colour(rng)
    return c0 + t[..., None] * (c1 - c0)


def _rotated(rng: np.random.Generator, size: Size):
    """Pixel coordinates rotated by a random angle."""
    y, x = pixel_grid(*size)
    th = rng.uniform(0, np.pi)
    c, s = np.cos(th), np.sin(th)
    return c * x + s * y, c * y - s * x


def stripes(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Parallel stripes, hard or sinusoidal, at a random angle and period."""
    u, _ = _rotated(rng, size)
    wave = np.sin(2 * np.pi * u / rng.uniform(4, 16) + rng.uniform(0, 2 * np.pi))
    t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    return _two_colour(rng, t)


def checkerboard(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A checkerboard with random cell size and rotation."""
    u, v = _rotated(rng, size)
    cell = rng.uniform(3, 12)
    t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return _two_colour(rng, t)


def dots(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A regular lattice of round dots (polka dots)."""
    u, v = _rotated(rng, size)
    period = rng.uniform(5, 14)
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    t = (np.hypot(du, dv) <= rng.uniform(0.2, 0.42) * period).astype(np.float32)
    return _two_colour(rng, t)


def fractal_noise(rng: np.random.Generator, size: Size) -> np.ndarray:
    """Perlin-like fractal value noise (4 octaves from ~8 px features down), optionally
    turbulent (folded at mid-grey), mapped between two colours."""
    cells = max(size) // 8
    t = np.zeros(size, dtype=np.float32)
    for octave in range(4):
        t += value_noise(rng, size, cells=cells * 2 ** octave) * 0.6 ** octave
    if rng.random() < 0.5:
        t = np.abs(t - np.median(t))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _two_colour(rng, t)


TEXTURE_KINDS = (stripes, checkerboard, dots, fractal_noise)


def random_texture(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A float32 (h, w, 3) texture image, one of ``TEXTURE_KINDS``."""
    return TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))](rng, size).astype(np.float32)


def random_noise(rng: np.random.Generator, size: Size) -> np.ndarray:
    """A float32 (h, w, 3) noise image: Gaussian (colour or grey), uniform, or salt and pepper."""
    shape = size + (3,)
    kind = int(rng.integers(3))
    if kind == 0:
        per_pixel = shape if rng.random() < 0.5 else size + (1,)
        img = random_colour(rng) + rng.normal(0, rng.uniform(20, 80), size=per_pixel)
    elif kind == 1:
        img = rng.uniform(0, 255, size=shape)
    else:
        img = np.broadcast_to(random_colour(rng), shape).copy()
        hit = rng.random(size) < rng.uniform(0.05, 0.3)
        img[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)[:, None]
    return np.clip(img, 0, 255).astype(np.float32)
