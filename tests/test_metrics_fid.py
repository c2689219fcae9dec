"""FID statistics and the Fréchet distance: analytic values, np.cov parity, eigh vs sqrtm routes."""

import numpy as np
import pytest
import scipy.linalg

from evalsuite.metrics import GaussianAccumulator, GaussianStats, frechet_distance, gaussian_stats
from evalsuite.runtime.errors import EvalsuiteError

METHODS = ("eigh", "sqrtm")


def correlated_features(rng: np.random.Generator, num: int, dim: int, offset: float = 0.0):
    """(num, dim) features with a random full covariance and mean ``offset``."""
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return rng.standard_normal((num, dim)) @ mixing + offset


def test_accumulator_matches_np_cov_for_any_batching():
    rng = np.random.default_rng(0)
    # A large mean relative to the spread: naive sum-of-squares covariances lose digits here.
    features = correlated_features(rng, 500, 24, offset=50.0)
    expected_sigma = np.cov(features, rowvar=False)
    for batch_sizes in ([500], [1, 2, 3, 494], [100] * 5, [7] * 71 + [3]):
        accumulator = GaussianAccumulator(24)
        start = 0
        for size in batch_sizes:
            accumulator.update(features[start : start + size])
            start += size
        stats = accumulator.finalize()
        assert stats.num == 500
        np.testing.assert_allclose(stats.mu, features.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats.sigma, expected_sigma, rtol=1e-10, atol=1e-12)


def test_accumulator_accepts_float32_and_empty_batches():
    rng = np.random.default_rng(1)
    features = correlated_features(rng, 300, 16).astype(np.float32)
    accumulator = GaussianAccumulator(16)
    accumulator.update(features[:0])
    accumulator.update(features[:120])
    accumulator.update(features[120:])
    stats = accumulator.finalize()
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
    np.testing.assert_allclose(
        stats.sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12
    )


def test_accumulator_rejects_bad_input():
    accumulator = GaussianAccumulator(8)
    with pytest.raises(EvalsuiteError, match="dimension 9"):
        accumulator.update(np.zeros((4, 9)))
    with pytest.raises(EvalsuiteError, match="NaN"):
        accumulator.update(np.full((4, 8), np.nan))
    accumulator.update(np.zeros((1, 8)))
    with pytest.raises(EvalsuiteError, match="at least 2"):
        accumulator.finalize()


def test_gaussian_stats_is_np_cov():
    rng = np.random.default_rng(2)
    features = correlated_features(rng, 200, 12, offset=1.0).astype(np.float32)
    stats = gaussian_stats(features)
    assert stats.num == 200
    assert stats.mu.dtype == np.float64
    np.testing.assert_allclose(stats.mu, features.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(stats.sigma, np.cov(features, rowvar=False))
    with pytest.raises(EvalsuiteError, match="at least 2"):
        gaussian_stats(features[:1])
    with pytest.raises(EvalsuiteError, match="2-D"):
        gaussian_stats(features[0])


@pytest.mark.parametrize("method", METHODS)
def test_identical_statistics_give_zero(method):
    rng = np.random.default_rng(3)
    stats = gaussian_stats(correlated_features(rng, 400, 32, offset=2.0))
    assert abs(frechet_distance(sample=stats, reference=stats, method=method)) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_gaussians_closed_form(method):
    rng = np.random.default_rng(4)
    mu_sample, mu_reference = rng.standard_normal(16), rng.standard_normal(16)
    variances_sample, variances_reference = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    sample = GaussianStats(mu=mu_sample, sigma=np.diag(variances_sample), num=100)
    reference = GaussianStats(mu=mu_reference, sigma=np.diag(variances_reference), num=100)
    # Fréchet distance of diagonal Gaussians: |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    expected = np.sum((mu_sample - mu_reference) ** 2) + np.sum(
        (np.sqrt(variances_sample) - np.sqrt(variances_reference)) ** 2
    )
    result = frechet_distance(sample=sample, reference=reference, method=method)
    assert result == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("num_sample", "num_reference", "dim"),
    [(300, 250, 32), (20, 25, 32), (10, 40, 64), (50, 12, 48)],
)
def test_eigh_route_agrees_with_sqrtm_route(num_sample, num_reference, dim):
    # Includes rank-deficient covariances (N < D) on one or both sides.
    rng = np.random.default_rng(num_sample * 1000 + dim)
    sample = gaussian_stats(correlated_features(rng, num_sample, dim, offset=0.3))
    reference = gaussian_stats(correlated_features(rng, num_reference, dim))
    fid_eigh = frechet_distance(sample=sample, reference=reference, method="eigh")
    fid_sqrtm = frechet_distance(sample=sample, reference=reference, method="sqrtm")
    assert fid_eigh == pytest.approx(fid_sqrtm, rel=1e-6)
    assert fid_eigh > 0


@pytest.mark.slow
def test_eigh_route_agrees_with_sqrtm_route_at_2048():
    # Pool_3 dimension with N=300 < D (rank-deficient); sqrtm takes ~15-60 s here.
    rng = np.random.default_rng(5)
    sample = gaussian_stats(rng.standard_normal((300, 2048)).astype(np.float32))
    reference = gaussian_stats((rng.standard_normal((300, 2048)) + 0.05).astype(np.float32))
    fid_eigh = frechet_distance(sample=sample, reference=reference, method="eigh")
    fid_sqrtm = frechet_distance(sample=sample, reference=reference, method="sqrtm")
    assert fid_eigh == pytest.approx(fid_sqrtm, rel=1e-6)


def test_product_order_is_sample_times_reference():
    # The trace term is symmetric in exact arithmetic, so swapping roles keeps the value.
    rng = np.random.default_rng(6)
    first = gaussian_stats(correlated_features(rng, 100, 8))
    second = gaussian_stats(correlated_features(rng, 100, 8, offset=1.0))
    forward = frechet_distance(sample=first, reference=second)
    backward = frechet_distance(sample=second, reference=first)
    assert forward == pytest.approx(backward, rel=1e-10)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_sqrtm_route_retries_with_offset_when_sqrtm_is_not_finite():
    # S_s S_r = [[0, 1], [0, 0]] has no square root (sqrtm returns inf); the evaluator retries
    # with 1e-6 I added to both covariances. t makes the retried product have positive
    # eigenvalues, so its square root is real.
    t = 2e6
    sigma_sample = np.array([[1.0, 0.0], [0.0, 0.0]])
    sigma_reference = np.array([[0.0, 1.0], [1.0, t]])
    assert not np.isfinite(scipy.linalg.sqrtm(sigma_sample @ sigma_reference)).all()
    offset = 1e-6 * np.eye(2)
    retried_eigenvalues = np.linalg.eigvals((sigma_sample + offset) @ (sigma_reference + offset))
    assert np.all(retried_eigenvalues.real > 0)
    expected = 1.0 + t - 2.0 * np.sum(np.sqrt(retried_eigenvalues.real))
    sample = GaussianStats(mu=np.zeros(2), sigma=sigma_sample, num=10)
    reference = GaussianStats(mu=np.zeros(2), sigma=sigma_reference, num=10)
    result = frechet_distance(sample=sample, reference=reference, method="sqrtm")
    assert result == pytest.approx(expected, rel=1e-9)


def test_sqrtm_route_raises_on_complex_result():
    # A negative eigenvalue of the product gives sqrtm an imaginary diagonal of 1 (> 1e-3).
    sample = GaussianStats(mu=np.zeros(2), sigma=np.diag([-1.0, 1.0]), num=10)
    reference = GaussianStats(mu=np.zeros(2), sigma=np.eye(2), num=10)
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(sample=sample, reference=reference, method="sqrtm")


def test_frechet_distance_rejects_bad_statistics():
    good = GaussianStats(mu=np.zeros(4), sigma=np.eye(4), num=10)
    other_dim = GaussianStats(mu=np.zeros(5), sigma=np.eye(5), num=10)
    with pytest.raises(EvalsuiteError, match="dimension is 5; expected 4"):
        frechet_distance(sample=other_dim, reference=good)
    with pytest.raises(EvalsuiteError, match="sigma has shape"):
        frechet_distance(sample=GaussianStats(np.zeros(4), np.eye(3), 10), reference=good)
    with pytest.raises(EvalsuiteError, match="NaN"):
        frechet_distance(sample=GaussianStats(np.full(4, np.nan), np.eye(4), 10), reference=good)
    asymmetric = np.eye(4)
    asymmetric[0, 1] = 0.5
    with pytest.raises(EvalsuiteError, match="symmetric"):
        frechet_distance(sample=GaussianStats(np.zeros(4), asymmetric, 10), reference=good)
    with pytest.raises(EvalsuiteError, match="unknown Fréchet distance method"):
        frechet_distance(sample=good, reference=good, method="svd")
    with pytest.raises(TypeError):
        frechet_distance(good, good)  # keyword-only: roles must be named


def test_validate_checks_expected_dimension_and_converts_to_float64():
    stats = GaussianStats(
        mu=np.zeros(3, dtype=np.float32), sigma=np.eye(3, dtype=np.float32), num=0
    )
    assert stats.mu.dtype == np.float64 and stats.sigma.dtype == np.float64
    assert stats.validate(dim=3) is stats
    with pytest.raises(EvalsuiteError, match="reference: feature dimension is 3; expected 2048"):
        stats.validate(dim=2048, name="reference")
    with pytest.raises(EvalsuiteError, match="num"):
        GaussianStats(mu=np.zeros(3), sigma=np.eye(3), num=-1).validate()
