"""Inception Score over consecutive splits of the samples (ADM protocol §2)."""

from __future__ import annotations

import numpy as np
import scipy.special

from evalsuite.metrics.fid import as_feature_matrix
from evalsuite.runtime.errors import EvalsuiteError

# Samples per split in the ADM evaluator (ADM protocol §2): 50k samples -> 10 splits.
IS_SPLIT_SIZE = 5000


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """Inception Score of a sample set from its classifier logits.

    Args:
        logits: (N, C) float array, N >= 1. For the ADM protocol C = 1008: pool_3 features times
            the Inception graph's ``softmax/weights``, no bias (ADM protocol §1).
        split_size: samples per split. Splits are consecutive blocks in the given order; the
            last, partial block is a split of its own (ADM protocol §2).

    Returns:
        ``(mean, std)`` of the per-split scores ``exp(mean_i KL(p_i || p_split))``; ``std`` is the
        population standard deviation (ddof=0, as the original IS code); the ADM evaluator
        reports only the mean.

    The class probabilities are computed in float64 from a log-softmax (the evaluator uses the
    float32 softmax of the graph); the log-domain form keeps ``p log p`` finite where a
    probability underflows, with the convention 0 log 0 = 0. Expect ~1e-6 relative differences
    from the float32 evaluator.
    """
    matrix = as_feature_matrix(logits, name="logits", min_rows=1, why="to compute IS")
    if isinstance(split_size, bool) or not isinstance(split_size, (int, np.integer)):
        raise EvalsuiteError(f"split_size is {split_size!r}; expected an integer >= 1.")
    if split_size < 1:
        raise EvalsuiteError(f"split_size is {split_size}; expected an integer >= 1.")
    log_probabilities = scipy.special.log_softmax(matrix.astype(np.float64), axis=1)
    split_scores = []
    for start in range(0, matrix.shape[0], split_size):
        log_p = log_probabilities[start : start + split_size]
        # log of the split's marginal class distribution, log mean_j p_jc.
        log_marginal = scipy.special.logsumexp(log_p, axis=0) - np.log(log_p.shape[0])
        # Per split: exp(mean_i sum_c p_ic (log p_ic - log mean_j p_jc)) (ADM protocol §2).
        kl_divergences = (np.exp(log_p) * (log_p - log_marginal)).sum(axis=1)
        split_scores.append(np.exp(kl_divergences.mean()))
    return float(np.mean(split_scores)), float(np.std(split_scores))
