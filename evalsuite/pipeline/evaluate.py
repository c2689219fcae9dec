"""`evaluate`: score a sample batch against a reference with the ADM protocol (§1–3).

The I/O-aware layer above `evalsuite.metrics`: resolves the Inception weights, extracts (cached)
features of both sides, takes stored or recomputed reference statistics, and returns one flat
result dictionary with provenance.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evalsuite import PROTOCOL_VERSION, __version__
from evalsuite.metrics import (
    GaussianStats,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from evalsuite.pipeline import sanity
from evalsuite.pipeline.batches import open_images
from evalsuite.pipeline.featureset import FeatureComputer, FeatureSet
from evalsuite.pipeline.reference import POOL_DIM, PR_REFERENCE_SIZE, Reference, load_reference
from evalsuite.runtime import dist
from evalsuite.runtime.errors import EvalsuiteError

METRICS = ("fid", "sfid", "is", "pr", "kid")
REF_STATS_CHOICES = ("auto", "stored", "recompute")


@dataclass(frozen=True)
class MetricOptions:
    """Options that change metric values (recorded with every result)."""

    pr_k: int = 3
    is_split_size: int = 5000
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 0
    fid_method: str = "eigh"


def parse_metrics(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'fid,sfid' -> ('fid', 'sfid'); unknown names raise `EvalsuiteError`."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise EvalsuiteError(
            f"unknown metric {', '.join(unknown) or '(none given)'}; choose from {','.join(METRICS)}"
        )
    return tuple(dict.fromkeys(names))


def versions() -> dict[str, str]:
    """Versions of evalsuite and the libraries that can change a number."""
    import scipy
    import torch_fidelity

    return {
        "evalsuite": __version__,
        "protocol": PROTOCOL_VERSION,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch_fidelity": getattr(torch_fidelity, "__version__", "unknown"),
    }


def load_inception(path: str | None, device: str | torch.device):
    """Resolve the Inception weights and build the extractor on `device`."""
    from evalsuite.features import InceptionFeatureExtractor, resolve_inception_weights

    weights = resolve_inception_weights(path)
    extractor = InceptionFeatureExtractor(weights).to(device).eval()
    return weights, extractor


def reference_features_needed(metrics: tuple[str, ...], ref: Reference, mode: str) -> str:
    """Resolve the ref-stats choice ('stored' or 'recompute') and check it is possible."""
    wants_moments = [m for m in metrics if m in ("fid", "sfid")]
    has_stored = bool(ref.stored)
    if mode == "auto":
        mode = "stored" if has_stored else "recompute"
    if mode == "stored":
        if not has_stored:
            raise EvalsuiteError(
                f"{ref.path}: --ref-stats stored, but it has no stored statistics (mu/sigma); "
                "use --ref-stats recompute"
            )
        for metric, key in (("fid", "pool"), ("sfid", "spatial")):
            if metric in wants_moments and key not in ref.stored:
                raise EvalsuiteError(
                    f"{ref.path}: no stored {'mu_s/sigma_s' if key == 'spatial' else 'mu/sigma'} for "
                    f"{metric}; use --ref-stats recompute or drop {metric} from --metrics"
                )
    elif ref.images is None:
        raise EvalsuiteError(
            f"{ref.path}: --ref-stats recompute needs the reference images (arr_0), "
            "but this file only holds statistics"
        )
    return mode


@dataclass
class ReferenceSide:
    """The reference quantities the metrics need, resolved once per evaluation or sweep.

    pool_stats/spatial_stats: FID and sFID moments (stored or recomputed); pool: pool features of
    up to `PR_REFERENCE_SIZE` reference images for precision/recall and KID.
    """

    reference: Reference
    mode: str
    pool_stats: GaussianStats | None
    spatial_stats: GaussianStats | None
    pool: np.ndarray | None
    num_reference: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference.path),
            "reference_kind": self.reference.kind,
            "ref_stats": self.mode,
            "num_reference": self.num_reference,
            "num_reference_pr": None if self.pool is None else len(self.pool),
        }


def check_reference(
    ref: Reference, metrics: tuple[str, ...], ref_stats: str, options: MetricOptions
) -> str:
    """Validate that `metrics` can be computed against `ref`; returns the ref-stats mode."""
    if ref_stats not in REF_STATS_CHOICES:
        raise EvalsuiteError(
            f"--ref-stats must be one of {', '.join(REF_STATS_CHOICES)}, got {ref_stats!r}"
        )
    mode = reference_features_needed(metrics, ref, ref_stats)
    need_ref_pool = any(m in metrics for m in ("pr", "kid"))
    if need_ref_pool and ref.pool is None and ref.images is None:
        raise EvalsuiteError(
            f"{ref.path}: precision/recall and KID need reference images or pool features"
        )
    if "pr" in metrics:
        num_ref_pr = (
            len(ref.pool) if ref.pool is not None else min(ref.images.num_images, PR_REFERENCE_SIZE)
        )
        check_pr_size("reference", num_ref_pr, options)
    return mode


def check_moment_sizes(
    metrics: tuple[str, ...], num_samples: int, ref: Reference, mode: str
) -> None:
    """FID, sFID and KID need at least 2 images on each side they are computed from."""
    needing = [m for m in metrics if m in ("fid", "sfid", "kid")]
    if not needing:
        return
    sides = [("SAMPLES", num_samples, "pass more samples")]
    if mode == "recompute" and ref.images is not None:
        sides.append(("REFERENCE", ref.images.num_images, "pass a larger reference"))
    for role, count, fix in sides:
        if count < 2:
            raise EvalsuiteError(
                f"{'/'.join(needing)} need at least 2 images on each side; {role} has {count}: "
                f"{fix}, or drop {'/'.join(needing)} from --metrics"
            )


def check_pr_size(role: str, count: int, options: MetricOptions) -> None:
    if count < options.pr_k + 1:
        raise EvalsuiteError(
            f"precision/recall needs at least k+1 = {options.pr_k + 1} images on the {role} side, "
            f"got {count}; "
            "add images or drop pr from --metrics"
        )


def resolve_reference(
    ref: Reference, metrics: tuple[str, ...], mode: str, computer: FeatureComputer
) -> ReferenceSide:
    """Extract (cached) reference features as needed and build the reference side."""
    need_ref_pool = any(m in metrics for m in ("pr", "kid"))
    features: FeatureSet | None = None
    if mode == "recompute":
        features = computer.compute(ref.images, desc="reference features")
    elif need_ref_pool and ref.pool is None:
        features = computer.compute(ref.images, stop=PR_REFERENCE_SIZE, desc="reference features")
    if mode == "stored":
        pool_stats, spatial_stats = ref.stored.get("pool"), ref.stored.get("spatial")
        num_reference = ref.meta.get("num_images") if ref.meta else None
    else:
        pool_stats = gaussian_stats(features.pool) if "fid" in metrics else None
        spatial_stats = gaussian_stats(features.spatial) if "sfid" in metrics else None
        num_reference = len(features)
    if ref.pool is not None and mode == "stored":
        pool = ref.pool
    else:
        pool = None if features is None else features.pool[:PR_REFERENCE_SIZE]
    return ReferenceSide(ref, mode, pool_stats, spatial_stats, pool, num_reference)


METRIC_KEYS = (
    "fid",
    "sfid",
    "inception_score",
    "inception_score_std",
    "precision",
    "recall",
    "kid",
    "kid_std",
)


def score_features(
    sample: FeatureSet,
    reference: ReferenceSide,
    metrics: tuple[str, ...],
    options: MetricOptions = MetricOptions(),
    device: str | torch.device = "cpu",
) -> dict[str, float | None]:
    """All requested metrics of sample features against the reference side (None = not computed)."""
    result: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    if "fid" in metrics:
        result["fid"] = frechet_distance(
            sample=gaussian_stats(sample.pool),
            reference=reference.pool_stats,
            method=options.fid_method,
        )
    if "sfid" in metrics:
        result["sfid"] = frechet_distance(
            sample=gaussian_stats(sample.spatial),
            reference=reference.spatial_stats,
            method=options.fid_method,
        )
    if "is" in metrics and sample.logits is not None:
        mean, std = inception_score(sample.logits, split_size=options.is_split_size)
        result["inception_score"], result["inception_score_std"] = mean, std
    if "pr" in metrics:
        pr = precision_recall(
            reference=reference.pool, sample=sample.pool, k=options.pr_k, device=device
        )
        result["precision"], result["recall"] = pr.precision, pr.recall
    if "kid" in metrics:
        result["kid"], result["kid_std"] = kernel_inception_distance(
            reference=reference.pool,
            sample=sample.pool,
            num_subsets=options.kid_subsets,
            subset_size=options.kid_subset_size,
            seed=options.kid_seed,
        )
    return result


def make_computer(
    weights: Any, extractor: Any, *, device: str, batch_size: int, progress: bool
) -> FeatureComputer:
    return FeatureComputer(
        extractor,
        weights.sha256,
        weights.has_logits,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )


def provenance(weights: Any, reference: Reference) -> tuple[dict[str, Any], list[str]]:
    """Weights and versions of a result, plus notes (IS availability, weights mismatch)."""
    notes: list[str] = []
    if reference.meta is not None and reference.meta.get("weights_sha256") not in (
        None,
        weights.sha256,
    ):
        notes.append(
            f"reference statistics were computed with Inception weights "
            f"{reference.meta['weights_sha256'][:12]}, evaluating with {weights.sha256[:12]} "
            f"({weights.source})"
        )
    if not weights.has_logits:
        from evalsuite.features import IS_UNAVAILABLE

        notes.append(IS_UNAVAILABLE)
    info = {
        "weights_source": weights.source,
        "weights_path": str(weights.path),
        "weights_sha256": weights.sha256,
        "versions": versions(),
    }
    return info, notes


def evaluate(
    reference: str,
    samples: str,
    *,
    metrics: tuple[str, ...] = METRICS,
    ref_stats: str = "auto",
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    options: MetricOptions = MetricOptions(),
    progress: bool = True,
) -> dict[str, Any]:
    """Score SAMPLES against REFERENCE; returns metrics, sizes and provenance as a flat dict.

    Inputs are validated before any feature extraction.
    """
    ref = load_reference(reference)
    sample_source = open_images(samples, role="samples")
    sample_source.require_images()
    mode = check_reference(ref, metrics, ref_stats, options)
    if "pr" in metrics:
        check_pr_size("samples", sample_source.num_images, options)
    check_moment_sizes(metrics, sample_source.num_images, ref, mode)

    weights, extractor = load_inception(inception_weights, device)
    computer = make_computer(
        weights, extractor, device=device, batch_size=batch_size, progress=progress
    )
    sample_features = computer.compute(sample_source, desc="sample features")
    reference_side = resolve_reference(ref, metrics, mode, computer)
    fid_of_noise = None
    if (
        "fid" in metrics
        and "pr" not in metrics
        and not sanity.few_samples(metrics, len(sample_features))
    ):
        fid_of_noise = sanity.noise_fid(
            computer,
            reference_side.pool_stats,
            sample_source.image_shape,
            sample_source.num_images,
        )
    if not dist.is_main():
        # Under torchrun every rank extracted a share of the features; rank 0 scores them.
        return {}
    result: dict[str, Any] = score_features(
        sample_features, reference_side, metrics, options, device
    )
    info, notes = provenance(weights, ref)
    if "is" not in metrics:
        notes = [n for n in notes if not n.startswith("Inception Score")]
    reference_shape = ref.images.image_shape if ref.images is not None else None
    if reference_shape is None and ref.meta is not None:
        reference_shape = ref.meta.get("image_shape")
    checks = (
        sanity.few_samples_note(metrics, sample_source.num_images),
        sanity.resolution_note(sample_source.image_shape, reference_shape),
        sanity.noise_like_note(
            precision=result["precision"], fid=result["fid"], fid_of_noise=fid_of_noise
        ),
    )
    notes += [note for note in checks if note is not None]
    result.update(
        num_samples=sample_source.num_images,
        metrics=list(metrics),
        **reference_side.describe(),
        samples=str(samples),
        samples_sha256=sample_source.fingerprint(),
        **info,
        options=options.__dict__,
        notes=notes,
    )
    return result


def build_ref_stats(
    reference: str,
    out: str,
    *,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Compute reference statistics of an image batch or folder and write them to `out`."""
    from evalsuite.pipeline.reference import write_ref_stats

    source = open_images(reference, role="reference")
    source.require_images()
    if source.num_images < 2:
        raise EvalsuiteError(
            f"{reference}: {source.num_images} image(s); statistics need at least 2"
        )
    weights, extractor = load_inception(inception_weights, device)
    computer = FeatureComputer(
        extractor,
        weights.sha256,
        weights.has_logits,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    features = computer.compute(source, desc="reference features")
    meta = {
        "source": str(reference),
        "source_sha256": source.fingerprint(),
        "num_images": len(features),
        "num_pool_features": min(len(features), PR_REFERENCE_SIZE),
        "image_shape": list(source.image_shape),
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "protocol_version": PROTOCOL_VERSION,
        "versions": versions(),
    }
    # Small sets store their features (smaller than two 2k x 2k covariances, and exact).
    small = len(features) <= min(POOL_DIM, PR_REFERENCE_SIZE)
    write_ref_stats(
        out,
        pool_stats=gaussian_stats(features.pool),
        spatial_stats=gaussian_stats(features.spatial),
        pool=features.pool,
        spatial=features.spatial if small else None,
        meta=meta,
    )
    return meta
