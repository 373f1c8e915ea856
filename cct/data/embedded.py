"""The embedded default dataset: procedural scenes of textured objects, generated from a seed, no download.

Each 64x64 RGB scene holds 1-3 objects on a background of gradients and noise. An object's class is
decided by its surface texture (stripes, checks, dots, ...), drawn in two random colours at a random
period and phase, on a random outline (disk, square, triangle, hexagon, ellipse) of random size and
rotation: no pixel colour and no outline identifies a class, a neighbourhood of a few pixels does.
Textures are symmetric under horizontal flips, so flip augmentation keeps labels valid. Two visual
domains share part of their label space:

- domain ``a`` ("daylight"): light backgrounds, 8 classes;
- domain ``b`` ("night"): dark noisy backgrounds, objects with a contrasting rim, 8 classes of which
  4 (hstripes, vstripes, checker, dots) are shared with ``a``;
- domain ``p`` ("pretraining"): either look, 8 textures of which none is a class of ``a`` (4 are
  ``b``'s own): the data of the encoder the workflow pretrains once, the embedded benchmark's stand-in
  for the paper's ImageNet (another image collection, other classes).

Class 0 is background in both. Image-level labels (which classes occur) come with every image.
Rasterisation is written by hand (PIL polygons): no library generates labelled scenes like these.

Generating a domain's 1,200 scenes takes about 12 s, a large share of a short run. The workflow
therefore writes them once (``cct embedded --domain a --out DIR``, :func:`write`) and every run reads
them (``data.root: DIR``, :func:`read`): the same bytes as generating them in the run.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURES_A = ("solid", "hstripes", "vstripes", "checker", "dots", "grid", "rings", "crosshatch")
TEXTURES_B = ("hstripes", "vstripes", "checker", "dots", "zigzag", "bricks", "speckle", "diamonds")
# the pretraining domain: 8 textures none of which is a class of domain a (see the module docstring)
TEXTURES_P = ("zigzag", "bricks", "speckle", "diamonds", "dstripes", "waves", "triangles", "plaid")
DOMAINS = {"a": TEXTURES_A, "b": TEXTURES_B, "p": TEXTURES_P}
OUTLINES = ("disk", "square", "triangle", "hexagon", "ellipse")
SPLIT_SIZES = {"train": 1000, "val": 200}
IMAGE_SIZE = 64
_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}
_DOMAIN_OFFSET = {"a": 0, "b": 7_919, "p": 15_881}
FORMAT = 1
"""Version of the scenes: bump it when the generator changes, so that files written before are refused."""


@dataclass(frozen=True)
class EmbeddedData:
    """A generated split: ``images`` uint8 (N, H, W, 3), ``masks`` uint8 (N, H, W), ``ids`` (N,)."""

    images: np.ndarray
    masks: np.ndarray
    ids: tuple[str, ...]
    class_names: tuple[str, ...]

    def image_labels(self) -> np.ndarray:
        """Multi-hot image-level labels over the foreground classes, bool (N, C-1)."""
        n_fg = len(self.class_names) - 1
        present = np.zeros((len(self.ids), n_fg), dtype=bool)
        for i, mask in enumerate(self.masks):
            values = np.unique(mask)
            values = values[(values > 0) & (values <= n_fg)]
            present[i, values - 1] = True
        return present


def class_names(domain: str) -> tuple[str, ...]:
    if domain not in DOMAINS:
        raise ValueError(f"embedded dataset: unknown domain {domain!r} (choose from {sorted(DOMAINS)})")
    return ("background",) + DOMAINS[domain]


def _polygon(n: int, radius: float, angle: float) -> np.ndarray:
    """Vertices (n, 2) of a regular n-gon of circumradius ``radius``, rotated by ``angle``."""
    t = angle + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1)


def _draw_outline(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Fill one of OUTLINES (circumradius ``r`` px, centred on (cx, cy)) with 255 in a mode 'L' image."""
    if shape == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        return
    if shape == "ellipse":
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        c, s = math.cos(angle), math.sin(angle)
        x, y = np.cos(t) * r, np.sin(t) * r * 0.6
        points = np.stack([x * c - y * s, x * s + y * c], axis=1)
    else:
        points = _polygon({"triangle": 3, "square": 4, "hexagon": 6}[shape], r, angle)
    draw.polygon([(cx + x, cy + y) for x, y in points], fill=255)


def texture(name: str, size: int, period: float, phase: tuple[float, float], centre: tuple[float, float],
            rng: np.random.Generator) -> np.ndarray:
    """Binary pattern (H, W) of texture ``name`` with the given period (px) and phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx + phase[0]) / period, (yy + phase[1]) / period
    frac = lambda t: t - np.floor(t)  # noqa: E731
    if name == "solid":
        return np.zeros((size, size), dtype=bool)
    if name == "hstripes":
        return frac(v) < 0.5
    if name == "vstripes":
        return frac(u) < 0.5
    if name == "checker":
        return (frac(u) < 0.5) ^ (frac(v) < 0.5)
    if name == "dots":
        return (frac(u) - 0.5) ** 2 + (frac(v) - 0.5) ** 2 < 0.09
    if name == "grid":
        return (frac(u) < 0.3) | (frac(v) < 0.3)
    if name == "rings":
        return frac(np.hypot(xx - centre[0], yy - centre[1]) / period) < 0.5
    if name == "crosshatch":
        return (frac((u + v) / 1.4) < 0.25) | (frac((u - v) / 1.4) < 0.25)
    if name == "zigzag":
        return frac(v + 0.5 * np.abs(frac(u) - 0.5) * 2) < 0.4
    if name == "bricks":
        row = np.floor(v * 2)
        return (frac(v * 2) < 0.3) | (frac(u + 0.5 * (row % 2)) < 0.15)
    if name == "speckle":
        cells = rng.random((size // 2 + 2, size // 2 + 2)) < 0.5
        return np.kron(cells, np.ones((2, 2), dtype=bool))[:size, :size]
    if name == "diamonds":
        return (frac((u + v) / 1.4) < 0.5) ^ (frac((u - v) / 1.4) < 0.5)
    if name == "dstripes":
        return frac((u + v) / 1.4) < 0.5
    if name == "waves":
        return frac(v + 0.25 * np.sin(2 * math.pi * u)) < 0.5
    if name == "triangles":
        return frac(v) < frac(u)
    if name == "plaid":
        return (frac(u) < 0.2) ^ (frac(v * 1.5) < 0.2)
    raise ValueError(name)


def _background(rng: np.random.Generator, domain: str, size: int) -> np.ndarray:
    """Textured background, float (H, W, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    if domain == "a":
        base = rng.uniform(0.45, 0.95, 3)
        tilt = rng.uniform(-0.25, 0.25, (2, 3))
        img = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
        if rng.random() < 0.6:  # stripes or checks of low contrast
            freq, theta = rng.uniform(4, 12), rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)))
            if rng.random() < 0.5:
                wave = wave * np.sin(2 * math.pi * freq * (xx * math.sin(theta) - yy * math.cos(theta)))
            img = img + wave[..., None] * rng.uniform(0.05, 0.15, 3)
        img = img + rng.normal(0, 0.03, (size, size, 3))
    else:
        base = rng.uniform(0.02, 0.3, 3)
        blobs = np.zeros((size, size))
        for _ in range(4):
            cx, cy, s = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.25)
            blobs += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        img = base + blobs[..., None] * rng.uniform(0.0, 0.2, 3)
        img = img + rng.normal(0, 0.07, (size, size, 3))
    return np.clip(img, 0, 1)


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A random colour that differs from the local background by a visible margin."""
    for _ in range(20):
        colour = rng.uniform(0, 1, 3)
        if np.abs(colour - background_mean).sum() > 0.45:
            return colour
    return 1.0 - background_mean


def render_scene(rng: np.random.Generator, domain: str, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 (H, W, 3) and mask uint8 (H, W) with values in [0, 8]."""
    textures = DOMAINS[domain]
    style = domain if domain != "p" else ("a" if rng.random() < 0.5 else "b")  # p: either domain's look
    img = _background(rng, style, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    n_objects = int(rng.choice([2, 3, 3, 4]))
    for _ in range(n_objects):
        cls = int(rng.integers(len(textures)))
        r = rng.uniform(0.15, 0.27) * size
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        layer = Image.new("L", (size, size), 0)
        outline = OUTLINES[int(rng.integers(len(OUTLINES)))]
        _draw_outline(ImageDraw.Draw(layer), outline, cx, cy, r, rng.uniform(0, 2 * math.pi))
        inside = np.asarray(layer) > 127
        if inside.sum() < 12:
            continue
        colour = _object_colour(rng, img[inside].mean(0))
        second = _object_colour(rng, colour)
        pattern = texture(textures[cls], size, rng.uniform(4.0, 7.0), tuple(rng.uniform(0, 8, 2)), (cx, cy), rng)
        fill = np.where(pattern[..., None], second, colour)
        fill = np.clip(fill + rng.normal(0, 0.02, (size, size, 3)), 0, 1)
        if style == "b":  # a contrasting rim: the style of the second domain
            eroded = np.asarray(layer.filter(ImageFilter.MinFilter(3))) > 127
            fill = np.where((inside & ~eroded)[..., None], 1.0 - colour, fill)
        img = np.where(inside[..., None], fill, img)
        mask[inside] = cls + 1
    return (img * 255).round().astype(np.uint8), mask


@lru_cache(maxsize=8)
def generate(split: str = "train", domain: str = "a", seed: int = 0, n: int | None = None) -> EmbeddedData:
    """Generate a split deterministically: the same (split, domain, seed, n) always gives the same bytes."""
    names = class_names(domain)
    if split not in SPLIT_SIZES:
        raise ValueError(f"embedded dataset: unknown split {split!r} (choose from {sorted(SPLIT_SIZES)})")
    n = SPLIT_SIZES[split] if n is None else n
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    masks = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLIT_OFFSET[split] + _DOMAIN_OFFSET[domain], i])
        images[i], masks[i] = render_scene(rng, domain)
    ids = tuple(f"{domain}_{split}_{i:05d}" for i in range(n))
    images.setflags(write=False)
    masks.setflags(write=False)
    return EmbeddedData(images, masks, ids, names)


def cache_file(root: str | Path, split: str, domain: str) -> Path:
    """The file of a generated split under ``root``."""
    return Path(root) / f"embedded-{domain}-{split}.npz"


def write(root: str | Path, domain: str) -> list[Path]:
    """Generate every split of ``domain`` and write each to :func:`cache_file` (atomically)."""
    from cct.io import atomic_write_bytes

    paths = []
    for split in SPLIT_SIZES:
        data = generate(split, domain)
        buffer = io.BytesIO()
        np.savez(buffer, images=data.images, masks=data.masks, format=FORMAT, domain=domain, split=split)
        atomic_write_bytes(cache_file(root, split, domain), buffer.getvalue())
        paths.append(cache_file(root, split, domain))
    return paths


def read(root: str | Path, split: str, domain: str) -> EmbeddedData:
    """A split written by :func:`write`; ConfigError naming the file when it is missing or was
    written by another version of the generator or for another split."""
    from cct.config import ConfigError

    path = cache_file(root, split, domain)
    how = (f"write it with `cct embedded --domain {domain} --out {root}`, or leave data.root unset to generate "
           "in the run")
    if not path.is_file():
        raise ConfigError(f"data.root: {path} not found ({how})")
    try:
        with np.load(path) as f:
            stamp = (int(f["format"]), str(f["domain"]), str(f["split"]))
            images, masks = f["images"], f["masks"]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"data.root: {path} is not an embedded-dataset file ({exc}); {how}") from exc
    n = SPLIT_SIZES[split]
    if (
        stamp != (FORMAT, domain, split)
        or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE, 3)
        or masks.shape != images.shape[:3]
    ):
        raise ConfigError(f"data.root: {path} holds format/domain/split {stamp}, not {(FORMAT, domain, split)}; {how}")
    images.setflags(write=False)
    masks.setflags(write=False)
    ids = tuple(f"{domain}_{split}_{i:05d}" for i in range(n))
    return EmbeddedData(images, masks, ids, class_names(domain))
