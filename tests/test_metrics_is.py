"""Inception Score: analytic values, split behaviour, parity with a direct loop."""

import math

import numpy as np
import pytest

from evalsuite.metrics import inception_score
from evalsuite.runtime.errors import EvalsuiteError

NUM_CLASSES = 1008
# Logit margin that makes softmax one-hot in float64 (exp(-1000) underflows to 0).
CONFIDENT = 1000.0


def one_hot_logits(classes) -> np.ndarray:
    """(N, 1008) logits whose softmax is one-hot on ``classes``."""
    logits = np.zeros((len(classes), NUM_CLASSES))
    logits[np.arange(len(classes)), classes] = CONFIDENT
    return logits


def loop_inception_score(logits: np.ndarray, split_size: int) -> tuple[float, float]:
    """Direct, loop-by-loop IS: softmax per row, consecutive splits, KL to the split marginal."""
    scores = []
    for start in range(0, len(logits), split_size):
        split = logits[start : start + split_size]
        probabilities = []
        for row in split:
            exponentials = [math.exp(value - max(row)) for value in row]
            total = sum(exponentials)
            probabilities.append([value / total for value in exponentials])
        num_classes = len(probabilities[0])
        marginal = [
            sum(p[c] for p in probabilities) / len(probabilities) for c in range(num_classes)
        ]
        kl_sum = 0.0
        for p in probabilities:
            kl_sum += sum(
                p[c] * (math.log(p[c]) - math.log(marginal[c]))
                for c in range(num_classes)
                if p[c] > 0
            )
        scores.append(math.exp(kl_sum / len(probabilities)))
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((score - mean) ** 2 for score in scores) / len(scores))
    return mean, std


def test_uniform_predictions_score_one():
    mean, std = inception_score(np.full((40, NUM_CLASSES), 3.5), split_size=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_used_classes", [1, 2, 10, 1000])
def test_perfect_predictions_over_k_classes_score_k(num_used_classes):
    classes = np.tile(np.arange(num_used_classes), 3)
    mean, std = inception_score(one_hot_logits(classes), split_size=len(classes))
    assert mean == pytest.approx(num_used_classes, rel=1e-12)
    assert std == 0.0


def test_consecutive_splits_with_partial_last_split():
    # 12 samples, split_size 5 -> splits of 5, 5 and 2 taken in order:
    # 5 distinct classes (IS 5), one class (IS 1), 2 distinct classes (IS 2).
    classes = [0, 1, 2, 3, 4] + [7] * 5 + [8, 9]
    mean, std = inception_score(one_hot_logits(classes), split_size=5)
    assert mean == pytest.approx(8.0 / 3.0, rel=1e-12)
    assert std == pytest.approx(np.std([5.0, 1.0, 2.0]), rel=1e-12)
    # One split over all 12: 7 samples of classes with marginal 1/12, 5 of class 7 with 5/12,
    # each contributing log(1 / marginal) to the mean KL.
    expected_single = math.exp((7 * math.log(12) + 5 * math.log(12 / 5)) / 12)
    assert inception_score(one_hot_logits(classes), split_size=12)[0] == pytest.approx(
        expected_single, rel=1e-12
    )


def test_matches_direct_loop_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((12, 30)) * 3.0
    for split_size in (5, 4, 12, 100):
        mean, std = inception_score(logits, split_size=split_size)
        expected_mean, expected_std = loop_inception_score(logits, split_size)
        assert mean == pytest.approx(expected_mean, rel=1e-12)
        assert std == pytest.approx(expected_std, rel=1e-9, abs=1e-12)


def test_invariant_to_per_row_logit_shift_and_float32():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((20, NUM_CLASSES)) * 4.0
    shifted = logits + rng.uniform(-50, 50, size=(20, 1))
    reference = inception_score(logits, split_size=7)
    assert inception_score(shifted, split_size=7) == pytest.approx(reference, rel=1e-10)
    assert inception_score(logits.astype(np.float32), split_size=7) == pytest.approx(
        reference, rel=1e-5
    )


def test_rejects_bad_input():
    with pytest.raises(EvalsuiteError, match="2-D"):
        inception_score(np.zeros(NUM_CLASSES))
    with pytest.raises(EvalsuiteError, match="split_size"):
        inception_score(np.zeros((4, NUM_CLASSES)), split_size=0)
    with pytest.raises(EvalsuiteError, match="NaN"):
        inception_score(np.full((4, NUM_CLASSES), np.nan))
    with pytest.raises(EvalsuiteError, match="at least 1"):
        inception_score(np.zeros((0, NUM_CLASSES)))
