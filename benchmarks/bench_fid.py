"""Benchmark: Fréchet distance at D=2048, eigh route vs the evaluator's scipy.linalg.sqrtm route.

Run: .venv/bin/python benchmarks/bench_fid.py [--num 4096] [--dim 2048]

Features are synthetic but shaped like Inception pool_3 activations (non-negative, correlated,
decaying spectrum). Both routes get the same GaussianStats; the table gives the time of each
route, the FID values and their relative difference, and the speed-up of eigh over sqrtm.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from evalsuite.metrics import frechet_distance, gaussian_stats


def synthetic_pool_features(
    rng: np.random.Generator, num: int, dim: int, mixing: np.ndarray, shift: float
) -> np.ndarray:
    """(num, dim) float32 ReLU features of correlated Gaussians with a decaying spectrum."""
    latent = rng.standard_normal((num, mixing.shape[0]), dtype=np.float32)
    return np.maximum(latent @ mixing + shift, 0.0).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=4096, help="feature vectors per side")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    spectrum = (1.0 + np.arange(args.dim)) ** -0.5
    mixing = (rng.standard_normal((args.dim, args.dim)) * spectrum[:, None] / 4).astype(np.float32)
    perturbed = mixing + (rng.standard_normal(mixing.shape) * 0.02).astype(np.float32)
    reference = gaussian_stats(synthetic_pool_features(rng, args.num, args.dim, mixing, 0.2))
    sample = gaussian_stats(synthetic_pool_features(rng, args.num, args.dim, perturbed, 0.25))

    results = {}
    for method in ("eigh", "sqrtm"):
        start = time.perf_counter()
        value = frechet_distance(sample=sample, reference=reference, method=method)
        results[method] = (time.perf_counter() - start, value)

    print(f"FID, {args.num} x {args.dim} features per side, load average {os.getloadavg()[0]:.2f}")
    print(f"{'route':<8} {'seconds':>9} {'FID':>22}")
    for method, (seconds, value) in results.items():
        print(f"{method:<8} {seconds:>9.2f} {value:>22.15f}")
    (eigh_seconds, eigh_value), (sqrtm_seconds, sqrtm_value) = results["eigh"], results["sqrtm"]
    print(f"speed-up eigh vs sqrtm: {sqrtm_seconds / eigh_seconds:.1f}x")
    print(f"relative |dFID|: {abs(eigh_value - sqrtm_value) / abs(sqrtm_value):.2e}")


if __name__ == "__main__":
    main()
