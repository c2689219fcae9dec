"""Warnings about results that are legitimate but almost always a mistake.

- FID/sFID of very few samples: the small-sample bias dominates the value.
- Samples and reference of different resolutions (a 16x16 reference against 32x32 samples).
- Samples about as far from the reference as pure noise: the most common silent mistake with a
  released checkpoint is a wrong diffusion flag (--noise_schedule, --diffusion_steps,
  --learn_sigma): the state dict loads, the samples come out noise-like. Judged by precision
  when it is computed (noise has none), else by FID against the FID of uniform noise images
  (extracted once per resolution and cached; skipped below `FEW_SAMPLES_FID` samples, where the
  few-samples note is given and the extra extraction would cost more than the evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from evalsuite.metrics import GaussianStats, frechet_distance, gaussian_stats

# Below this many samples an FID warns that its small-sample bias dominates (ADM uses 50,000).
FEW_SAMPLES_FID = 100
# Precision at or below this: (almost) no sample lies on the reference manifold, as with noise.
NOISE_LIKE_PRECISION = 0.02
# FID at or above this fraction of the FID of uniform noise (at the same N) counts as noise-like.
NOISE_LIKE_FID_FRACTION = 0.7
# Most uniform-noise images whose features are extracted for the noise FID (cached).
NOISE_IMAGES = 64
WRONG_FLAGS = "--noise_schedule, --diffusion_steps and --learn_sigma"


class NoiseImages:
    """`count` seeded uniform-noise uint8 images of shape (H, W, 3), as an image source."""

    def __init__(self, count: int, image_shape: tuple[int, ...], seed: int = 0) -> None:
        self.num_images = count
        self.image_shape = tuple(image_shape)
        self.seed = seed

    def require_images(self) -> None:
        return None

    def fingerprint(self) -> str:
        shape = "x".join(map(str, self.image_shape))
        return f"uniform-noise-v1-{shape}-{self.num_images}-seed{self.seed}"

    def iter_batches(
        self, batch_size: int, start: int = 0, stop: int | None = None
    ) -> Iterator[np.ndarray]:
        stop = self.num_images if stop is None else min(stop, self.num_images)
        for lo in range(start, stop, batch_size):
            yield np.stack(
                [
                    np.random.default_rng([self.seed, i]).integers(
                        0, 256, self.image_shape, dtype=np.uint8
                    )
                    for i in range(lo, min(lo + batch_size, stop))
                ]
            )


def noise_fid(
    computer: Any, reference: GaussianStats, image_shape: tuple[int, ...], num_samples: int
) -> float:
    """FID of min(num_samples, NOISE_IMAGES) uniform-noise images against `reference`."""
    count = max(2, min(num_samples, NOISE_IMAGES))
    features = computer.compute(NoiseImages(count, image_shape), desc="noise features")
    return frechet_distance(sample=gaussian_stats(features.pool), reference=reference)


def few_samples(metrics: tuple[str, ...] | list[str], num_samples: int) -> bool:
    """True when FID/sFID is asked for with fewer than `FEW_SAMPLES_FID` samples."""
    return any(m in ("fid", "sfid") for m in metrics) and num_samples < FEW_SAMPLES_FID


def few_samples_note(metrics: tuple[str, ...] | list[str], num_samples: int) -> str | None:
    if not few_samples(metrics, num_samples):
        return None
    names = [m.upper().replace("SFID", "sFID") for m in metrics if m in ("fid", "sfid")]
    return (
        f"{'/'.join(names)} of only {num_samples} samples is dominated by small-sample bias (it "
        "shrinks like 1/N; published values use 50,000): compare it only with values at the "
        "same N"
    )


def resolution_note(
    sample_shape: tuple[int, ...] | None, reference_shape: tuple[int, ...] | None
) -> str | None:
    if sample_shape is None or reference_shape is None:
        return None
    sample_hw, reference_hw = tuple(sample_shape[:2]), tuple(reference_shape[:2])
    if sample_hw == reference_hw:
        return None
    return (
        f"samples are {sample_hw[0]}x{sample_hw[1]} but the reference is "
        f"{reference_hw[0]}x{reference_hw[1]}: both are resized to 299x299, but a resolution "
        "mismatch is almost always the wrong reference for these samples"
    )


def noise_like_note(
    *, precision: float | None, fid: float | None, fid_of_noise: float | None
) -> str | None:
    """A note when the scores are about as bad as pure noise's (None otherwise)."""
    if precision is not None:
        if precision > NOISE_LIKE_PRECISION:
            return None
        evidence = f"precision {precision:.3f}: no sample lies near the reference images"
    elif fid is not None and fid_of_noise is not None:
        if fid < NOISE_LIKE_FID_FRACTION * fid_of_noise:
            return None
        evidence = f"FID {fid:.1f} against {fid_of_noise:.1f} for uniform noise at the same N"
    else:
        return None
    return (
        f"the samples score about as badly as pure noise ({evidence}); with a released "
        f"checkpoint this usually means a wrong diffusion flag: check {WRONG_FLAGS} in "
        "--model-flags (or the --preset) against the flags it was trained with"
    )
