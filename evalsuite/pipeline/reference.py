"""The reference side of an evaluation: an ADM reference batch, a folder, or a ref-stats file.

A ref-stats file (written by `evalsuite ref-stats`) is an `.npz` in the ADM layout — `mu`, `sigma`
(pool_3, 2048-d) and `mu_s`, `sigma_s` (spatial, 2023-d) — plus `pool`, the pool features of the
first `PR_REFERENCE_SIZE` images (precision/recall and KID need them), and `evalsuite_meta`, a JSON
string with provenance (source sha256, Inception weights sha256, protocol version, N). For small
reference sets (N below the feature dimension) the file stores the features themselves, `pool`
and `spatial`, instead of the moments: smaller, and the moments follow exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite import PROTOCOL_VERSION, __version__
from evalsuite.metrics import GaussianStats, gaussian_stats
from evalsuite.pipeline.batches import ImageSource, NpzBatch, open_images
from evalsuite.runtime.cache import atomic_path
from evalsuite.runtime.errors import EvalsuiteError

# The ADM evaluator's reference set for precision/recall: the (up to) 10,000 images of arr_0.
PR_REFERENCE_SIZE = 10_000
POOL_DIM = 2048
SPATIAL_DIM = 2023
META_KEY = "evalsuite_meta"
REF_STATS_FORMAT = "evalsuite-ref-stats"


@dataclass
class Reference:
    """What is known about the reference side before any feature extraction."""

    path: Path
    images: ImageSource | None
    stored: dict[str, GaussianStats] = field(default_factory=dict)
    pool: np.ndarray | None = None
    meta: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        if self.meta is not None:
            return "ref-stats file"
        return (
            "image folder"
            if self.images is not None and not isinstance(self.images, NpzBatch)
            else "ADM batch"
        )

    def fingerprint(self) -> str:
        if self.images is not None:
            return self.images.fingerprint()
        from evalsuite.runtime.cache import sha256_file

        return sha256_file(self.path)


def load_reference(path: str | os.PathLike[str]) -> Reference:
    """Open REFERENCE: an ADM batch (with or without stored stats), a folder, or a ref-stats file."""
    source = open_images(path, role="reference")
    ref = Reference(path=Path(path), images=source)
    if not isinstance(source, NpzBatch):
        return ref
    if source.has(META_KEY):
        try:
            meta = json.loads(str(source.read(META_KEY)))
        except json.JSONDecodeError as error:
            raise EvalsuiteError(f"{path}: {META_KEY} is not valid JSON ({error})") from None
        if meta.get("format") != REF_STATS_FORMAT:
            raise EvalsuiteError(f"{path}: unknown statistics format {meta.get('format')!r}")
        ref.meta = meta
        if source.has("pool"):
            ref.pool = source.read("pool")
            _check_shape(ref.pool, (None, POOL_DIM), path, "pool")
    if ref.meta is not None and source.has("spatial") and not source.has("mu"):
        spatial = source.read("spatial")
        _check_shape(spatial, (None, SPATIAL_DIM), path, "spatial")
        if ref.pool is None or len(ref.pool) != len(spatial):
            raise EvalsuiteError(f"{path}: pool and spatial features must have the same length")
        ref.stored["pool"] = gaussian_stats(ref.pool.astype(np.float64))
        ref.stored["spatial"] = gaussian_stats(spatial.astype(np.float64))
    if not source.has("arr_0"):
        if ref.meta is None and not source.has("mu"):
            source.require_images()
        ref.images = None
    stats = source.stored_stats() or {}
    if "mu" in stats:
        if "sigma" not in stats:
            raise EvalsuiteError(f"{path}: has mu but no sigma; stored statistics need both")
        ref.stored["pool"] = _stats(stats["mu"], stats["sigma"], POOL_DIM, path, "mu/sigma")
    if "mu_s" in stats:
        if "sigma_s" not in stats:
            raise EvalsuiteError(f"{path}: has mu_s but no sigma_s; stored statistics need both")
        ref.stored["spatial"] = _stats(
            stats["mu_s"], stats["sigma_s"], SPATIAL_DIM, path, "mu_s/sigma_s"
        )
    return ref


def _stats(
    mu: np.ndarray, sigma: np.ndarray, dim: int, path: os.PathLike[str] | str, what: str
) -> GaussianStats:
    _check_shape(mu, (dim,), path, what.split("/")[0])
    _check_shape(sigma, (dim, dim), path, what.split("/")[1])
    if mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise EvalsuiteError(f"{path}: {what} must be floating point, got {mu.dtype}/{sigma.dtype}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise EvalsuiteError(f"{path}: {what} contain NaN or inf values; recompute the statistics")
    return GaussianStats(mu=mu.astype(np.float64), sigma=sigma.astype(np.float64), num=0)


def _check_shape(
    array: np.ndarray, shape: tuple[int | None, ...], path: os.PathLike[str] | str, key: str
) -> None:
    ok = array.ndim == len(shape) and all(
        s is None or s == a for s, a in zip(shape, array.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise EvalsuiteError(
            f"{path}: {key} has shape {tuple(array.shape)}, expected {want}; "
            "these are not Inception pool_3/mixed_6 statistics (rebuild with `evalsuite ref-stats`)"
        )


def write_ref_stats(
    out: str | os.PathLike[str],
    *,
    pool_stats: GaussianStats,
    spatial_stats: GaussianStats,
    pool: np.ndarray,
    meta: dict[str, Any],
    spatial: np.ndarray | None = None,
) -> None:
    """Write a ref-stats file atomically: ADM moments (or, given `spatial`, the features) + `pool`."""
    meta = {
        "format": REF_STATS_FORMAT,
        "protocol_version": PROTOCOL_VERSION,
        "evalsuite": __version__,
        "stored": "features" if spatial is not None else "moments",
        **meta,
    }
    arrays = {
        "pool": pool[:PR_REFERENCE_SIZE].astype(np.float32),
        META_KEY: np.array(json.dumps(meta, sort_keys=True)),
    }
    if spatial is not None:
        if len(pool) != len(spatial) or len(pool) > PR_REFERENCE_SIZE:
            raise EvalsuiteError(
                f"storing features needs <= {PR_REFERENCE_SIZE} rows of pool and spatial features"
            )
        arrays["spatial"] = spatial.astype(np.float32)
    else:
        arrays.update(
            mu=pool_stats.mu,
            sigma=pool_stats.sigma,
            mu_s=spatial_stats.mu,
            sigma_s=spatial_stats.sigma,
        )
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
