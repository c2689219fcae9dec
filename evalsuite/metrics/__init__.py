"""Metrics: pure functions over feature arrays (no model code, no file I/O).

FID/sFID (``gaussian_stats``, ``GaussianAccumulator``, ``frechet_distance``), Inception Score,
improved precision/recall and KID, computed as the ADM evaluator does (ADM protocol §2).
"""

from evalsuite.metrics.fid import (
    GaussianAccumulator,
    GaussianStats,
    as_feature_matrix,
    frechet_distance,
    gaussian_stats,
    trace_sqrt_product,
)
from evalsuite.metrics.inception_score import IS_SPLIT_SIZE, inception_score
from evalsuite.metrics.kid import kernel_inception_distance, unbiased_mmd2
from evalsuite.metrics.precision_recall import (
    PR_BLOCK_SIZE,
    PR_NEIGHBOURHOOD_SIZE,
    PrecisionRecall,
    precision_recall,
)

__all__ = [
    "IS_SPLIT_SIZE",
    "PR_BLOCK_SIZE",
    "PR_NEIGHBOURHOOD_SIZE",
    "GaussianAccumulator",
    "GaussianStats",
    "PrecisionRecall",
    "as_feature_matrix",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "trace_sqrt_product",
    "unbiased_mmd2",
]
