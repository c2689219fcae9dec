"""KID: the unbiased MMD^2 estimator against a double loop, unbiasedness, seeding, subsets."""

import numpy as np
import pytest

from evalsuite.metrics import kernel_inception_distance, unbiased_mmd2
from evalsuite.runtime.errors import EvalsuiteError


def loop_unbiased_mmd2(x, y, degree, gamma, coef0):
    """Unbiased MMD^2 written out term by term (i != j within a set, all pairs across sets)."""

    def kernel(u, v):
        return (gamma * float(np.dot(u, v)) + coef0) ** degree

    m, n = len(x), len(y)
    within_x = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    within_y = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    across = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n))
    return within_x / (m * (m - 1)) + within_y / (n * (n - 1)) - 2 * across / (m * n)


@pytest.mark.parametrize(("degree", "gamma", "coef0"), [(3, 1 / 3, 1.0), (2, 0.7, -0.5)])
def test_unbiased_mmd2_matches_double_loop(degree, gamma, coef0):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    y = rng.standard_normal((5, 3)) + 0.5
    expected = loop_unbiased_mmd2(x, y, degree, gamma, coef0)
    assert unbiased_mmd2(x, y, degree=degree, gamma=gamma, coef0=coef0) == pytest.approx(
        expected, rel=1e-12
    )


def test_kid_with_whole_sets_as_subsets_is_the_full_estimate():
    # subset_size is clipped to min(Nr, Ns) = 7; a subset of all points is a permutation, and the
    # estimator does not depend on order, so every subset gives the same number (std 0).
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((7, 4))
    sample = rng.standard_normal((7, 4)) * 2.0
    mean, std = kernel_inception_distance(
        reference=reference, sample=sample, num_subsets=3, subset_size=1000
    )
    assert mean == pytest.approx(loop_unbiased_mmd2(reference, sample, 3, 1 / 4, 1.0), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_estimator_is_unbiased_for_equal_distributions():
    # Over many independent draws from one distribution the estimates average to ~0 and are
    # often negative; the biased (V-statistic) estimate would be positive every time.
    rng = np.random.default_rng(2)
    estimates = np.array(
        [
            unbiased_mmd2(
                rng.standard_normal((20, 8)),
                rng.standard_normal((20, 8)),
                degree=3,
                gamma=1 / 8,
                coef0=1.0,
            )
            for _ in range(400)
        ]
    )
    standard_error = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean()) < 4 * standard_error
    assert 0.3 < np.mean(estimates < 0) < 0.7


def test_same_distribution_is_near_zero_and_shift_is_clearly_positive():
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((400, 16))
    same = rng.standard_normal((400, 16))
    shifted = rng.standard_normal((400, 16)) + 0.5
    same_mean, same_std = kernel_inception_distance(
        reference=reference, sample=same, num_subsets=30, subset_size=100
    )
    shifted_mean, shifted_std = kernel_inception_distance(
        reference=reference, sample=shifted, num_subsets=30, subset_size=100
    )
    assert abs(same_mean) < same_std
    assert shifted_mean > 5 * shifted_std
    assert shifted_mean > 20 * abs(same_mean)


def test_deterministic_under_seed_and_never_touches_global_rng():
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((60, 8))
    sample = rng.standard_normal((50, 8)) + 0.2
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    first = kernel_inception_distance(
        reference=reference, sample=sample, num_subsets=5, subset_size=20, seed=7
    )
    assert np.array_equal(np.random.get_state()[1], global_state)
    second = kernel_inception_distance(
        reference=reference, sample=sample, num_subsets=5, subset_size=20, seed=7
    )
    other_seed = kernel_inception_distance(
        reference=reference, sample=sample, num_subsets=5, subset_size=20, seed=8
    )
    assert first == second
    assert first != other_seed


def test_rejects_bad_input():
    rng = np.random.default_rng(5)
    reference = rng.standard_normal((10, 4))
    with pytest.raises(EvalsuiteError, match="dimension"):
        kernel_inception_distance(reference=reference, sample=reference[:, :3])
    with pytest.raises(EvalsuiteError, match="needs at least 2"):
        kernel_inception_distance(reference=reference, sample=reference[:1])
    with pytest.raises(EvalsuiteError, match="gamma"):
        kernel_inception_distance(reference=reference, sample=reference, gamma=0.0)
    with pytest.raises(EvalsuiteError, match="subset_size"):
        kernel_inception_distance(reference=reference, sample=reference, subset_size=1)
    with pytest.raises(TypeError):
        kernel_inception_distance(reference, reference)
