"""Benchmark: precision_recall vs a straightforward NumPy blockwise port of the same protocol.

Run: .venv/bin/python benchmarks/bench_precision_recall.py [--quick]

1. Speed and agreement at 10k reference x 10k sample features (D=2048, float32): our torch
   implementation vs ``numpy_precision_recall`` below, which follows the ADM evaluator's layout
   (10000 x 10000 distance blocks from one NumPy matmul each, ``np.partition`` for the k-th
   neighbour, separate passes for precision and recall).
2. Peak memory of ours at 10k reference x 50k sample, measured in a fresh subprocess
   (``resource.getrusage`` peak RSS of the whole process: torch's libraries, the 0.46 GB of
   features and the metric; the RSS before the call is printed too).

``--quick`` shrinks both runs (2k x 2k and 2k x 10k) for a smoke test.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

from evalsuite.metrics import precision_recall

DIM = 2048
LATENT_DIM = 64
K = 3
BLOCK_SIZE = 10000
# Samples: a slightly narrower, shifted latent distribution -> precision and recall both inside
# (0, 1), roughly like an ADM model's 0.8 / 0.5.
SAMPLE_SPREAD = 0.95
SAMPLE_SHIFT = 0.1


def synthetic_features(num: int, seed: int, spread: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """(num, 2048) float32 features on a noisy 64-d linear manifold shared by every seed."""
    basis = np.random.default_rng(12345).standard_normal((LATENT_DIM, DIM), dtype=np.float32)
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((num, LATENT_DIM), dtype=np.float32) * spread + shift
    features = latent @ basis
    # Noise added in chunks so that generating 50k features needs no second 0.4 GB array.
    for start in range(0, num, 5000):
        chunk = features[start : start + 5000]
        chunk += rng.standard_normal(chunk.shape, dtype=np.float32) * 2.0
    return features


def numpy_precision_recall(
    reference: np.ndarray, sample: np.ndarray, k: int, block_size: int
) -> tuple[float, float]:
    """Peer: the protocol written the obvious way in NumPy (float32, ADM protocol §2)."""

    def squared_distances(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        row_norms = np.sum(rows * rows, axis=1)
        col_norms = np.sum(cols * cols, axis=1)
        return np.maximum(row_norms[:, None] - 2.0 * (rows @ cols.T) + col_norms[None, :], 0.0)

    def radii(points: np.ndarray) -> np.ndarray:
        result = np.empty(len(points), dtype=np.float32)
        for start in range(0, len(points), block_size):
            rows = points[start : start + block_size]
            row_distances = np.concatenate(
                [
                    squared_distances(rows, points[col : col + block_size])
                    for col in range(0, len(points), block_size)
                ],
                axis=1,
            )
            result[start : start + block_size] = np.partition(row_distances, k, axis=1)[:, k]
        return result

    def fraction_inside(points: np.ndarray, manifold: np.ndarray, manifold_radii: np.ndarray):
        inside = np.zeros(len(points), dtype=bool)
        for start in range(0, len(points), block_size):
            rows = points[start : start + block_size]
            for col in range(0, len(manifold), block_size):
                distances = squared_distances(rows, manifold[col : col + block_size])
                within = distances <= manifold_radii[None, col : col + block_size]
                inside[start : start + block_size] |= within.any(axis=1)
        return float(inside.mean())

    precision = fraction_inside(sample, reference, radii(reference))
    recall = fraction_inside(reference, sample, radii(sample))
    return precision, recall


def resident_memory_gb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM = peak), in GB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024**2
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_run(num_reference: int, num_sample: int) -> None:
    """Child process: run ours once; print seconds, RSS before, peak RSS (GB), P and R."""
    reference = synthetic_features(num_reference, seed=1)
    sample = synthetic_features(num_sample, seed=2, spread=SAMPLE_SPREAD, shift=SAMPLE_SHIFT)
    rss_before = resident_memory_gb("VmRSS")
    start = time.perf_counter()
    result = precision_recall(reference=reference, sample=sample, k=K, block_size=BLOCK_SIZE)
    seconds = time.perf_counter() - start
    # Whole-process peak (torch libraries, features, generation and the metric itself).
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{seconds} {rss_before} {peak_gb} {result.precision} {result.recall}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    parser.add_argument("--memory-run", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        memory_run(*args.memory_run)
        return
    num = 2000 if args.quick else 10000
    num_sample_large = 10000 if args.quick else 50000

    reference = synthetic_features(num, seed=1)
    sample = synthetic_features(num, seed=2, spread=SAMPLE_SPREAD, shift=SAMPLE_SHIFT)
    print(f"precision/recall, D={DIM}, k={K}, block {BLOCK_SIZE}, torch vs NumPy peer")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")

    start = time.perf_counter()
    ours = precision_recall(reference=reference, sample=sample, k=K, block_size=BLOCK_SIZE)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    peer_precision, peer_recall = numpy_precision_recall(reference, sample, K, BLOCK_SIZE)
    peer_seconds = time.perf_counter() - start

    print(f"{'implementation':<16} {'Nr x Ns':>13} {'seconds':>8} {'precision':>10} {'recall':>8}")
    print(
        f"{'evalsuite':<16} {f'{num} x {num}':>13} {ours_seconds:>8.2f} "
        f"{ours.precision:>10.4f} {ours.recall:>8.4f}"
    )
    print(
        f"{'numpy peer':<16} {f'{num} x {num}':>13} {peer_seconds:>8.2f} "
        f"{peer_precision:>10.4f} {peer_recall:>8.4f}"
    )
    print(f"speed-up vs numpy peer: {peer_seconds / ours_seconds:.2f}x")
    identical = (ours.precision, ours.recall) == (peer_precision, peer_recall)
    print(f"identical results: {identical}")

    child = subprocess.run(
        [sys.executable, __file__, "--memory-run", str(num), str(num_sample_large)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, rss_before, peak_gb, precision, recall = map(float, child.stdout.split())
    print(
        f"{'evalsuite':<16} {f'{num} x {num_sample_large}':>13} {seconds:>8.2f} "
        f"{precision:>10.4f} {recall:>8.4f}"
    )
    print(
        f"peak RSS of that process: {peak_gb:.2f} GB (RSS before the call {rss_before:.2f} GB: "
        f"torch + {(num + num_sample_large) * DIM * 4 / 1024**3:.2f} GB of features)"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
