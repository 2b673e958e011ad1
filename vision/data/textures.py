"""Backgrounds and fill textures for the synthetic detection set: photos, terrain, fractal noise, stripes.

Everything draws from a caller-owned ``numpy.random.Generator`` so one seed gives identical pixels. The only
natural images used are those matplotlib ships (no downloads): ``grace_hopper.jpg``, a photo of a present, and
two elevation maps rendered as hill-shaded terrain.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

_COLORMAPS = ("terrain", "gist_earth", "copper", "ocean", "pink", "bone", "YlGn", "viridis", "cividis",
              "BrBG", "PuOr", "summer", "autumn", "twilight")


def _sample_data_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "sample_data")


def _terrain(name: str, key: str, cmap: str) -> np.ndarray:
    from matplotlib import colormaps
    from matplotlib.colors import LightSource

    with np.load(os.path.join(_sample_data_dir(), name)) as data:
        elevation = np.asarray(data[key], dtype=np.float64)
    shaded = LightSource(azdeg=315, altdeg=45).shade(elevation, cmap=colormaps[cmap], blend_mode="soft",
                                                     vert_exag=0.05)
    return (np.asarray(shaded)[..., :3] * 255).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """RGB uint8 natural-looking images from matplotlib's sample data (loaded once per process)."""
    base = _sample_data_dir()
    photos = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
        with Image.open(os.path.join(base, name)) as img:
            photos.append(np.asarray(img.convert("RGB")))
    photos.append(_terrain("topobathy.npz", "topo", "gist_earth"))
    photos.append(_terrain("jacksboro_fault_dem.npz", "elevation", "terrain"))
    return tuple(photos)


def _resize(array: np.ndarray, w: int, h: int, resample: int = Image.Resampling.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((max(w, 1), max(h, 1)), resample))


def photo_crop(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random crop of a natural image, flipped, colour-jittered and resized to ``h x w`` (float32 0..255)."""
    photos = natural_images()
    src = photos[int(rng.integers(len(photos)))]
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.25, 1.0)
    ch = max(8, int(sh * frac))
    cw = max(8, min(sw, int(ch * w / max(h, 1) * rng.uniform(0.8, 1.25))))
    ch = min(ch, sh)
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    crop = src[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.3:
        crop = crop[::-1]
    out = _resize(np.ascontiguousarray(crop), w, h, Image.Resampling.BICUBIC).astype(np.float32)
    return colour_jitter(rng, out)


def colour_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random channel mixing (hue/saturation-like), brightness and contrast on a float image."""
    mix = np.eye(3) * rng.uniform(0.6, 1.0) + rng.uniform(-0.25, 0.35, size=(3, 3))
    mix /= mix.sum(axis=1, keepdims=True).clip(0.3, None)
    out = image @ mix.T.astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.6, 1.3) + mean + rng.uniform(-40, 40)
    return np.clip(out, 0, 255).astype(np.float32)


def fractal_noise(rng: np.random.Generator, w: int, h: int, octaves: int = 5) -> np.ndarray:
    """Smooth multi-octave value noise in [0, 1], ``h x w``."""
    total = np.zeros((h, w), np.float32)
    amplitude, weight = 1.0, 0.0
    persistence = rng.uniform(0.35, 0.65)
    cells = int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = (rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8)
        total += _resize(grid, w, h, Image.Resampling.BICUBIC).astype(np.float32) / 255.0 * amplitude
        weight += amplitude
        amplitude *= persistence
        cells *= 2
    total /= weight
    lo, hi = np.percentile(total, (1, 99))
    return np.clip((total - lo) / max(hi - lo, 1e-6), 0, 1)


def colormapped(rng: np.random.Generator, field: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    cmap = colormaps[_COLORMAPS[int(rng.integers(len(_COLORMAPS)))]]
    return (cmap(field)[..., :3] * 255).astype(np.float32)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def linear_gradient(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = random_colour(rng), random_colour(rng)
    return a + t[..., None] * (b - a)


def stripes(rng: np.random.Generator, w: int, h: int, period_range: tuple[float, float] = (6, 40)) -> np.ndarray:
    """Sine stripes or a checkerboard between two colours."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(*period_range)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    if rng.random() < 0.3:
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    else:
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    a, b = random_colour(rng), random_colour(rng)
    return a + t[..., None] * (b - a)


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A ``h x w x 3`` float32 background: photo, terrain/noise, gradient or stripes, often blended."""

    def one() -> np.ndarray:
        kind = rng.choice(4, p=[0.4, 0.3, 0.15, 0.15])
        if kind == 0:
            return photo_crop(rng, w, h)
        if kind == 1:
            return colormapped(rng, fractal_noise(rng, w, h))
        if kind == 2:
            return linear_gradient(rng, w, h)
        return stripes(rng, w, h, (12, 120))

    base = one()
    if rng.random() < 0.35:
        weight = rng.uniform(0.2, 0.5)
        base = base * (1 - weight) + one() * weight
    return base.astype(np.float32)


def fill_texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """How an object's inside looks: solid, gradient, stripes, noise or a piece of photo."""
    kind = rng.choice(5, p=[0.35, 0.2, 0.15, 0.15, 0.15])
    if kind == 0:
        colour = random_colour(rng)
        return np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if kind == 1:
        return linear_gradient(rng, w, h)
    if kind == 2:
        return stripes(rng, w, h)
    if kind == 3:
        return colormapped(rng, fractal_noise(rng, w, h, octaves=3))
    return photo_crop(rng, w, h)
