"""Improved precision/recall: brute-force parity, hand-computed values and the role convention."""

import importlib
import warnings

import numpy as np
import pytest
import torch

from evalsuite.metrics import PrecisionRecall, precision_recall
from evalsuite.runtime.errors import EvalsuiteError


def brute_force_precision_recall(reference: np.ndarray, sample: np.ndarray, k: int):
    """Full float64 distance matrices, radius = index k of each sorted row (self included)."""
    reference = reference.astype(np.float64)
    sample = sample.astype(np.float64)

    def squared_distances(rows, cols):
        return ((rows[:, None, :] - cols[None, :, :]) ** 2).sum(axis=2)

    reference_radii = np.sort(squared_distances(reference, reference), axis=1)[:, k]
    sample_radii = np.sort(squared_distances(sample, sample), axis=1)[:, k]
    cross = squared_distances(reference, sample)
    precision = np.mean([np.any(cross[:, j] <= reference_radii) for j in range(len(sample))])
    recall = np.mean([np.any(cross[i, :] <= sample_radii) for i in range(len(reference))])
    return precision, recall


@pytest.mark.parametrize(("k", "onednn"), [(1, True), (3, True), (5, True), (3, False)], ids=str)
def test_matches_brute_force_for_any_block_size(k, onednn, monkeypatch):
    if not onednn:
        # The CPU float32 path prefers oneDNN's GEMM when present; check the `@` fallback too.
        module = importlib.import_module("evalsuite.metrics.precision_recall")
        monkeypatch.setattr(module, "_onednn_linear_available", lambda: False)
    rng = np.random.default_rng(k)
    reference = rng.standard_normal((97, 16)).astype(np.float32)
    # Partly overlapping distributions so that precision and recall are strictly inside (0, 1).
    sample = (rng.standard_normal((131, 16)) + 0.7).astype(np.float32)
    expected_precision, expected_recall = brute_force_precision_recall(reference, sample, k)
    assert 0.05 < expected_precision < 0.95 and 0.05 < expected_recall < 0.95
    for block_size in (16, 97, 10000):
        for dtype in (torch.float32, torch.float64):
            result = precision_recall(
                reference=reference, sample=sample, k=k, block_size=block_size, dtype=dtype
            )
            assert result == PrecisionRecall(expected_precision, expected_recall), (
                block_size,
                dtype,
            )


def test_hand_computed_one_dimensional_example():
    # k=1: radius = squared distance to the nearest other point.
    # Reference 0, 1, 3, 20, 21 -> radii 1, 1, 4, 1, 1.
    # Samples: 0.5 (0.25 from 0: inside), 5 (exactly 4 from 3, radius 4: inside because <=),
    # 12 (81 from 3, 64 from 20: outside), -2 (4 from 0 > 1: outside) -> precision 2/4.
    # Sample radii: 0.5 -> 6.25, 5 -> 20.25, 12 -> 49, -2 -> 6.25. Reference 0 and 1 lie within
    # 0.25 of 0.5, 3 within 4 of 5; 20 and 21 are 64 and 81 from 12 (radius 49) -> recall 3/5.
    reference = np.array([[0.0], [1.0], [3.0], [20.0], [21.0]], dtype=np.float32)
    sample = np.array([[0.5], [5.0], [12.0], [-2.0]], dtype=np.float32)
    for block_size in (1, 2, 10000):
        result = precision_recall(reference=reference, sample=sample, k=1, block_size=block_size)
        assert result == PrecisionRecall(precision=0.5, recall=0.6)
    # Moving 5 to 5.01 puts it just outside the ball of 3; recall is unchanged.
    sample[1, 0] = 5.01
    assert precision_recall(reference=reference, sample=sample, k=1) == PrecisionRecall(0.25, 0.6)


def test_roles_of_reference_and_sample():
    # Reference: a tight cluster. Sample: half near the cluster points, half far away and
    # spread out -> every sample near the cluster is in the reference manifold (precision 1/2)
    # and every reference point has a sample next to it (recall 1). Swapping the roles
    # swaps the numbers; a swapped implementation would fail here.
    rng = np.random.default_rng(0)
    cluster = rng.standard_normal((40, 8)) * 0.1
    near = cluster + rng.standard_normal((40, 8)) * 1e-4
    far = 100.0 + rng.standard_normal((40, 8)) * 3.0
    sample = np.concatenate([near, far]).astype(np.float32)
    reference = cluster.astype(np.float32)
    assert precision_recall(reference=reference, sample=sample) == PrecisionRecall(0.5, 1.0)
    assert precision_recall(reference=sample, sample=reference) == PrecisionRecall(1.0, 0.5)


def test_arguments_are_keyword_only():
    points = np.zeros((5, 2), dtype=np.float32)
    with pytest.raises(TypeError):
        precision_recall(points, points)


def test_rejects_too_few_points_and_bad_arguments():
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(EvalsuiteError, match="sample features has 3 rows; needs at least 4"):
        precision_recall(reference=reference, sample=reference[:3])
    with pytest.raises(EvalsuiteError, match="reference features has 5 rows; needs at least 6"):
        precision_recall(reference=reference[:5], sample=reference, k=5)
    with pytest.raises(EvalsuiteError, match="dimension"):
        precision_recall(reference=reference, sample=reference[:, :3])
    with pytest.raises(EvalsuiteError, match="k is 0"):
        precision_recall(reference=reference, sample=reference, k=0)
    with pytest.raises(EvalsuiteError, match="block_size"):
        precision_recall(reference=reference, sample=reference, block_size=0)
    with pytest.raises(EvalsuiteError, match="dtype"):
        precision_recall(reference=reference, sample=reference, dtype=torch.float16)


def test_read_only_float64_input_gives_same_result_without_warnings():
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((50, 8))
    sample = rng.standard_normal((60, 8)) + 0.5
    expected = precision_recall(reference=reference.astype(np.float32), sample=sample)
    reference.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision_recall(reference=reference, sample=sample) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((300, 32)).astype(np.float32)
    sample = (rng.standard_normal((400, 32)) + 0.7).astype(np.float32)
    expected = brute_force_precision_recall(reference, sample, 3)
    for block_size in (64, 10000):
        result = precision_recall(
            reference=reference, sample=sample, block_size=block_size, device="cuda"
        )
        assert (result.precision, result.recall) == expected


def test_restores_float32_matmul_precision_setting():
    points = np.random.default_rng(4).standard_normal((10, 4)).astype(np.float32)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        precision_recall(reference=points, sample=points)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
