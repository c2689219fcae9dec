"""Procedural class-conditional "shapes" images: the dataset of evalsuite's tiny model zoo.

Ten classes that differ only in SHAPE. Everything else is drawn at random per image and is
independent of the class: position, size, rotation (full turn; every class is still a different
shape under any rotation), foreground and background colour, the contrast between them (from
faint to vivid: how strongly an image shows its class), and mild pixel noise. Colour therefore
carries no class information, and a model that covers only a few poses, colours or contrasts of
a class has visibly low diversity (recall).

Reproducibility: image `index` of a seed is drawn from its own generator
`np.random.default_rng([seed, index])`, so any slice can be regenerated alone and the result does
not depend on how a set is chunked. Labels are round-robin, `label = index % 10`, so every run of
ten consecutive indices holds each class once.

Rendering: each image is drawn at `SUPERSAMPLING`x the target resolution as an exact 0/1 coverage
mask in the shape's own coordinate frame, then average-pooled (anti-aliasing by supersampling),
and composited as `background + coverage * (foreground - background)`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from evalsuite.runtime.cache import atomic_path
from evalsuite.runtime.errors import EvalsuiteError

# Class names, in label order.
CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "ring",
    "square",
    "triangle",
    "plus",
    "bar",
    "star",
    "half_disc",
    "l_shape",
    "two_dots",
)

# Named splits and their seeds: different seeds give independent images for every index.
SPLITS: dict[str, int] = {
    "train": 20210511,
    "reference": 20210512,
    "heldout": 20210513,
}

# Rendering resolution relative to the output (anti-aliasing by supersampling).
SUPERSAMPLING = 4
# Shape radius (circumscribed, before clipping) as a fraction of the image size.
RADIUS_RANGE = (0.28, 0.45)
# Colour contrast: the Euclidean RGB distance (colours in [0, 1]) between foreground and
# background. Each image draws a target contrast uniformly from this range and takes the
# candidate foreground colour nearest to it, so the strength of an image's class evidence varies:
# a faint shape is still its class, but a noise-aware classifier is less sure of it at high noise
# (as with small or cluttered objects on ImageNet). That is the within-class variation classifier
# guidance trades away: guided samples favour the clearest images of a class, so recall falls.
CONTRAST_RANGE = (0.15, 1.0)
# Standard deviation of the additive Gaussian pixel noise, in uint8 units.
NOISE_STD = 3.0
# Colour candidates drawn per image to meet the target contrast.
_COLOUR_CANDIDATES = 8


def _inside(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Coverage mask of class `label` in its unit frame: shape inscribed in the unit disc.

    u, v: float arrays of any (same) shape, coordinates in units of the shape radius.
    Returns a bool array of the same shape.
    """
    name = CLASS_NAMES[label]
    r2 = u * u + v * v
    if name == "disc":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "triangle":
        # Equilateral triangle with vertices on the unit circle: three edges at distance 0.5.
        inside = v >= -0.5
        for normal_angle in (np.pi / 6, 5 * np.pi / 6):
            inside &= u * np.cos(normal_angle) + v * np.sin(normal_angle) <= 0.5
        return inside
    if name == "plus":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | (
            (np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)
        )
    if name == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
    if name == "star":
        # Five-pointed star: radius interpolated between 1.0 at the tips and 0.42 between them.
        sector = 2 * np.pi / 5
        phase = np.mod(np.arctan2(v, u), sector) / sector
        boundary = 0.42 + (1.0 - 0.42) * np.abs(2 * phase - 1)
        return r2 <= boundary * boundary
    if name == "half_disc":
        # Shifted down so the half disc is centred on its bounding box.
        shifted_v = v + 0.45
        return (u * u + shifted_v * shifted_v <= 1.0) & (shifted_v >= 0.0)
    if name == "l_shape":
        vertical_arm = (u >= -0.8) & (u <= -0.25) & (np.abs(v) <= 0.8)
        horizontal_arm = (v >= -0.8) & (v <= -0.25) & (np.abs(u) <= 0.8)
        return vertical_arm | horizontal_arm
    if name == "two_dots":
        return ((u - 0.55) ** 2 + v * v <= 0.42**2) | ((u + 0.55) ** 2 + v * v <= 0.42**2)
    raise AssertionError(f"no renderer for class {name}")


def _draw_parameters(seed: int, index: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pose, colours and pixel noise of image `index`, from its own generator.

    Returns (params float64 (10,): centre x, centre y, radius [pixels], angle [radians],
    foreground RGB, background RGB [0, 1]; noise float64 (image_size, image_size, 3) in uint8 units).
    """
    rng = np.random.default_rng([seed, index])
    # One draw of uniforms: radius, centre (2), angle, background (3), target contrast,
    # foreground candidates.
    uniform = rng.random(8 + 3 * _COLOUR_CANDIDATES)
    low, high = RADIUS_RANGE
    radius = image_size * (low + (high - low) * uniform[0])
    # Centre anywhere that keeps at least 80% of the radius inside the image.
    margin = 0.8 * radius
    centre = margin + (image_size - 2 * margin) * uniform[1:3]
    angle = 2 * np.pi * uniform[3]
    background = uniform[4:7]
    low, high = CONTRAST_RANGE
    target = low + (high - low) * uniform[7]
    candidates = uniform[8:].reshape(_COLOUR_CANDIDATES, 3)
    contrast = np.sqrt(((candidates - background) ** 2).sum(axis=1))
    good = np.flatnonzero(contrast >= low)
    if good.size:
        foreground = candidates[good[np.argmin(np.abs(contrast[good] - target))]]
    else:
        # Rare fallback: black or white, whichever is farther from the background.
        foreground = np.full(3, 0.0 if background.mean() > 0.5 else 1.0)
    noise = rng.standard_normal((image_size, image_size, 3)) * NOISE_STD
    params = np.concatenate([centre, [radius, angle], foreground, background])
    return params, noise


def make_shapes(
    num: int, *, seed: int, image_size: int = 16, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render images `start … start+num-1` of the shapes dataset for `seed`.

    Image i depends only on (seed, start+i); labels are round-robin: (start+i) % 10.
    Returns (images uint8 (num, image_size, image_size, 3) RGB in [0, 255],
    labels int64 (num,) in [0, 10)).
    """
    if num < 0:
        raise EvalsuiteError(f"number of images must be >= 0, got {num}")
    if start < 0:
        raise EvalsuiteError(f"start index must be >= 0, got {start}")
    return render_shapes(np.arange(start, start + num), seed=seed, image_size=image_size)


def render_shapes(
    indices: np.ndarray, *, seed: int, image_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Render the images at arbitrary dataset `indices` (int, any order, repeats allowed).

    Returns (images uint8 (len(indices), image_size, image_size, 3), labels int64 = indices % 10);
    image k is exactly image indices[k] of `make_shapes(..., seed=seed)`.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if image_size < 4:
        raise EvalsuiteError(f"image size must be >= 4 pixels, got {image_size}")
    if indices.size and indices.min() < 0:
        raise EvalsuiteError(f"dataset indices must be >= 0, got {indices.min()}")
    num = indices.size
    labels = indices % len(CLASS_NAMES)
    params = np.empty((num, 10), dtype=np.float64)
    noise = np.empty((num, image_size, image_size, 3), dtype=np.float64)
    for i, index in enumerate(indices.tolist()):
        params[i], noise[i] = _draw_parameters(seed, index, image_size)

    # Supersampled pixel centres, in output-pixel units.
    fine = image_size * SUPERSAMPLING
    grid = ((np.arange(fine) + 0.5) / SUPERSAMPLING).astype(np.float32)
    coverage = np.empty((num, image_size, image_size), dtype=np.float32)
    for label in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == label)
        if members.size == 0:
            continue
        centre_x, centre_y, radius, angle = (
            params[members, k, None, None].astype(np.float32) for k in range(4)
        )
        dx = grid[None, None, :] - centre_x
        dy = grid[None, :, None] - centre_y
        # Rotate the pixel offsets by -angle into the shape frame, in units of the radius.
        cos, sin = np.cos(angle), np.sin(angle)
        u = (cos * dx + sin * dy) / radius
        v = (-sin * dx + cos * dy) / radius
        mask = _inside(label, u, v)
        hits = mask.reshape(members.size, image_size, SUPERSAMPLING, image_size, SUPERSAMPLING)
        coverage[members] = hits.sum(axis=(2, 4), dtype=np.float32) / SUPERSAMPLING**2

    foreground = params[:, None, None, 4:7]
    background = params[:, None, None, 7:10]
    colour = background + coverage[..., None] * (foreground - background)
    images = np.clip(np.rint(colour * 255.0 + noise), 0, 255).astype(np.uint8)
    return images, labels


def make_split(
    split: str, num: int, image_size: int = 16, *, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images `start … start+num-1` of a named split ("train", "reference", "heldout").

    Returns (images uint8 (num, image_size, image_size, 3), labels int64 (num,)).
    """
    if split not in SPLITS:
        raise EvalsuiteError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return make_shapes(num, seed=SPLITS[split], image_size=image_size, start=start)


def write_adm_batch(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray) -> Path:
    """Write an ADM batch npz (protocol §3): arr_0 uint8 (N,H,W,3), arr_1 int64 (N,); atomic.

    The file is written to a temporary name in the same directory and moved into place with
    os.replace (`evalsuite.runtime.cache.atomic_path`), so readers never see a partial batch.
    Returns the path written.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise EvalsuiteError(
            f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}"
        )
    if labels.shape != (images.shape[0],):
        raise EvalsuiteError(
            f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
        )
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, arr_0=images, arr_1=labels.astype(np.int64))
    return Path(path)
