"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a polynomial kernel.

Not part of the ADM evaluator; computed over random subsets as in the KID paper and
torch-fidelity, with an explicit seed so that results are reproducible.
"""

from __future__ import annotations

import numpy as np

from evalsuite.metrics.fid import as_feature_matrix
from evalsuite.runtime.errors import EvalsuiteError


def kernel_inception_distance(
    *,
    reference: np.ndarray,
    sample: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID between ``reference`` and ``sample`` features: mean and std over random subsets.

    Args:
        reference: (Nr, D) float features of the dataset side, Nr >= 2.
        sample: (Ns, D) float features of the generated side, Ns >= 2.
        num_subsets: number of subset pairs averaged.
        subset_size: points per subset; ``min(subset_size, Nr, Ns)`` is used.
        degree, gamma, coef0: polynomial kernel ``k(x, y) = (gamma x.y + coef0) ** degree``;
            ``gamma`` defaults to 1 / D.
        seed: seed of the ``np.random.default_rng`` that draws the subsets (global RNG state is
            never used). For each subset, ``m`` reference indices then ``m`` sample indices are
            drawn without replacement.

    Returns:
        ``(mean, std)`` of the per-subset unbiased MMD^2 estimates (std with ddof=0). The
        estimator is unbiased, so for equal distributions single estimates can be negative.
    """
    for name, value, minimum in (
        ("num_subsets", num_subsets, 1),
        ("subset_size", subset_size, 2),
        ("degree", degree, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise EvalsuiteError(f"{name} is {value!r}; expected an integer >= {minimum}.")
    if gamma is not None and not (np.isfinite(gamma) and gamma > 0):
        raise EvalsuiteError(f"gamma is {gamma!r}; expected a positive number or None (1 / D).")
    if not np.isfinite(coef0):
        raise EvalsuiteError(f"coef0 is {coef0!r}; expected a finite number.")
    why = "for the unbiased MMD estimate"
    reference_matrix = as_feature_matrix(reference, name="reference features", min_rows=2, why=why)
    sample_matrix = as_feature_matrix(sample, name="sample features", min_rows=2, why=why)
    if reference_matrix.shape[1] != sample_matrix.shape[1]:
        raise EvalsuiteError(
            f"reference features have dimension {reference_matrix.shape[1]} but sample features "
            f"have {sample_matrix.shape[1]}; both must come from the same feature layer."
        )
    dimension = reference_matrix.shape[1]
    kernel_gamma = 1.0 / dimension if gamma is None else float(gamma)
    size = min(subset_size, reference_matrix.shape[0], sample_matrix.shape[0])
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets, dtype=np.float64)
    for index in range(num_subsets):
        reference_subset = reference_matrix[
            rng.choice(reference_matrix.shape[0], size, replace=False)
        ].astype(np.float64)
        sample_subset = sample_matrix[
            rng.choice(sample_matrix.shape[0], size, replace=False)
        ].astype(np.float64)
        estimates[index] = unbiased_mmd2(
            reference_subset,
            sample_subset,
            degree=degree,
            gamma=kernel_gamma,
            coef0=coef0,
        )
    return float(estimates.mean()), float(estimates.std())


def unbiased_mmd2(
    x: np.ndarray, y: np.ndarray, *, degree: int, gamma: float, coef0: float
) -> float:
    """Unbiased MMD^2 between ``x`` (m, D) and ``y`` (n, D) float64, m, n >= 2, polynomial kernel.

    ``sum_{i!=j} k(x_i,x_j) / (m(m-1)) + sum_{i!=j} k(y_i,y_j) / (n(n-1))
    - 2 sum_{i,j} k(x_i,y_j) / (mn)`` (Bińkowski et al. 2018, eq. 2 / Gretton et al. 2012).
    """
    m, n = x.shape[0], y.shape[0]
    kernel_xx = (gamma * (x @ x.T) + coef0) ** degree
    kernel_yy = (gamma * (y @ y.T) + coef0) ** degree
    kernel_xy = (gamma * (x @ y.T) + coef0) ** degree
    within_x = (kernel_xx.sum() - np.trace(kernel_xx)) / (m * (m - 1))
    within_y = (kernel_yy.sum() - np.trace(kernel_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kernel_xy.sum() / (m * n))
