"""Metrics of one sample set and of its bootstrap resamples, as a sweep needs them (ADM protocol §2).

A sweep scores many sample sets against one reference, and a bootstrap scores each set hundreds
of times. Calling `evaluate.score_features` per resample would redo the reference-side work every
time (on 2 CPU cores: ~20 s per 2048-d Fréchet distance, ~9 s of reference k-NN radii for
precision/recall at 10k reference images). Here the work is split once per quantity instead:

- `PreparedReference` (once per sweep): the reference side plus the k-NN radii of the reference
  pool features (cached on disk), so precision/recall never recompute them.
- `SampleScorer` (once per sample set of n images): n x n matrices from which every metric of any
  resample (an index vector with repeats) follows in O(n^2) — FID/sFID through the Gram route
  below, precision/recall through the stored reference x sample and sample x sample distances,
  KID through per-subset kernel sums (`KIDResampler`).

The numbers equal those of `score_features` on the same features (tests check FID/sFID to ~1e-9
relative and P/R, IS, KID exactly; KID of a resample to ~1e-9 relative). Bootstrap confidence intervals resample the *sample* rows
with replacement (the reference is fixed), with one seeded `np.random.default_rng`, so the same
resample indices are used in every cell of a sweep; `paired_changes` bootstraps the change between
two cells drawn with the same seed (e.g. guidance scale 0 against 10) with paired resamples.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evalsuite import PROTOCOL_VERSION
from evalsuite.metrics import (
    GaussianStats,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from evalsuite.pipeline.evaluate import METRIC_KEYS, MetricOptions, ReferenceSide, check_pr_size
from evalsuite.pipeline.featureset import FeatureSet
from evalsuite.runtime.cache import atomic_path, cache_dir, cache_key
from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.zoo.judge import judge_score

# Metrics a bootstrap gives intervals for (the `*_std` companions of IS/KID are not resampled).
BOOTSTRAP_KEYS = (
    "fid",
    "sfid",
    "inception_score",
    "precision",
    "recall",
    "kid",
    "class_agreement",
    "judge_score",
)
# Central coverage of the percentile intervals.
CONFIDENCE_LEVEL = 0.95
# Above this many samples the n x n precision/recall matrices (4 n^2 bytes) are not built: the
# point estimate comes from `metrics.precision_recall` and P/R get no bootstrap interval.
PR_MATRIX_LIMIT = 5000
# Reference rows per block when computing the reference k-NN radii.
RADII_BLOCK_ROWS = 1024


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor) -> np.ndarray:
    """(R, C) float32 |u|^2 - 2 u.v + |v|^2, unclamped (ADM protocol §2; clamping is monotone,
    so it is applied to the radii instead, as `metrics.precision_recall` does).

    Same formula and precision as `metrics.precision_recall`; GEMM rounding may differ in the
    last bit, which can only flip a comparison that sits exactly on a k-NN radius.
    """
    row_norms = torch.einsum("nd,nd->n", rows, rows)
    col_norms = torch.einsum("nd,nd->n", cols, cols)
    distances = (rows * -2.0) @ cols.T
    return distances.add_(col_norms.unsqueeze(0)).add_(row_norms.unsqueeze(1)).cpu().numpy()


def kth_neighbour_radii(
    points: np.ndarray, k: int, device: str | torch.device = "cpu"
) -> np.ndarray:
    """(N,) float32 squared distance of each row of `points` (N, D) to its k-th nearest neighbour,
    the point itself being the 0th (ADM protocol §2), clamped at 0. Computed in row blocks."""
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32)).to(device)
        radii = []
        for start in range(0, len(tensor), RADII_BLOCK_ROWS):
            block = _squared_distances(tensor[start : start + RADII_BLOCK_ROWS], tensor)
            radii.append(np.partition(block, k, axis=1)[:, k])
    return np.maximum(np.concatenate(radii), 0.0).astype(np.float32)


def reference_radii(pool: np.ndarray, k: int, device: str | torch.device = "cpu") -> np.ndarray:
    """`kth_neighbour_radii` of the reference pool features, cached in the user cache by content."""
    pool = np.ascontiguousarray(pool, dtype=np.float32)
    key = cache_key(
        kind="pr-reference-radii",
        pool=hashlib.sha256(pool.tobytes()).hexdigest(),
        shape=list(pool.shape),
        k=k,
        dtype="float32",
        protocol=PROTOCOL_VERSION,
    )
    path = cache_dir() / "pr_radii" / f"{key}.npy"
    if path.exists():
        try:
            radii = np.load(path)
            if radii.shape == (len(pool),):
                return radii
        except (OSError, ValueError):
            pass
    radii = kth_neighbour_radii(pool, k, device)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, radii)
    return radii


@dataclass
class PreparedReference:
    """The reference side of a sweep with what every cell reuses.

    side: the resolved reference (moments, pool features); radii: (Nr,) float32 k-NN radii of
    `side.pool` when precision/recall are asked for; seconds: time spent preparing them.
    """

    side: ReferenceSide
    metrics: tuple[str, ...]
    options: MetricOptions
    radii: np.ndarray | None
    seconds: float


def prepare_reference(
    side: ReferenceSide,
    metrics: tuple[str, ...],
    options: MetricOptions = MetricOptions(),
    device: str | torch.device = "cpu",
) -> PreparedReference:
    """Compute (or load from the cache) the reference k-NN radii needed for precision/recall."""
    started = time.perf_counter()
    radii = None
    if "pr" in metrics:
        radii = reference_radii(side.pool, options.pr_k, device)
    return PreparedReference(side, metrics, options, radii, time.perf_counter() - started)


# FID through n x n Gram matrices, exact for n <= D (ADM protocol §2).
class FrechetGram:
    """Fréchet distance of the Gaussian fit of (resamples of) n features to reference moments.

    With X_c the centred sample features (m rows), S_s = X_c^T X_c / (m-1). The nonzero
    eigenvalues of S_s S_r equal those of X_c S_r X_c^T / (m-1) (eig(AB) = eig(BA)), a symmetric
    PSD matrix of the sample count's size, so tr(sqrtm(S_s S_r)) = sum of the square roots of
    its eigenvalues — the same number as the eigh route of `metrics.frechet_distance`, at
    O(n D^2) once plus O(n^3) per resample instead of O(D^3) per call. A resample with repeats
    is handled as its distinct rows with counts w, and the structural null direction of the
    centring (sqrt(w)) is projected out: square roots of rounding-level eigenvalues would
    otherwise add errors of order sqrt(machine epsilon).
    """

    def __init__(self, features: np.ndarray, reference: GaussianStats) -> None:
        matrix = np.asarray(features, dtype=np.float64)
        offsets = matrix - reference.mu
        # offset_gram[i, j] = (x_i - mu_r).(x_j - mu_r); cross[i, j] = x_i S_r x_j^T.
        self.offset_gram = offsets @ offsets.T
        self.cross = (matrix @ reference.sigma) @ matrix.T
        self.trace_reference = float(np.trace(reference.sigma))

    def distance(self, index: np.ndarray) -> float:
        """FID of the resample `index` (m,) int: |mu_s - mu_r|^2 + tr S_s + tr S_r - 2 tr sqrt."""
        unique, counts = np.unique(index, return_counts=True)
        weights = counts.astype(np.float64)
        m = float(weights.sum())
        offsets = self.offset_gram[np.ix_(unique, unique)]
        mean_term = weights @ offsets @ weights / m**2
        trace_sample = (weights @ np.diag(offsets) - m * mean_term) / (m - 1)
        # Rows x_u - mean = (I - 1 w^T / m) X_u; weighted by sqrt(w) they give S_s (m-1).
        centring = np.eye(len(unique)) - np.outer(np.ones(len(unique)), weights) / m
        centred = centring @ self.cross[np.ix_(unique, unique)] @ centring.T
        root = np.sqrt(weights)
        product = root[:, None] * centred * root[None, :] / (m - 1)
        basis = _orthogonal_complement(root)
        reduced = basis.T @ product @ basis
        eigenvalues = np.linalg.eigvalsh(0.5 * (reduced + reduced.T))
        trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
        return float(mean_term + trace_sample + self.trace_reference - 2.0 * trace_sqrt)


def _orthogonal_complement(vector: np.ndarray) -> np.ndarray:
    """(u, u-1) orthonormal basis of the vectors orthogonal to `vector` (u,) > 0 (Householder)."""
    unit = vector / np.linalg.norm(vector)
    # The reflector I - 2 h h^T / h.h with h = v + e_1 maps v to -e_1 (no cancellation: v_1 > 0),
    # so its other columns span the complement of v.
    h = unit.copy()
    h[0] += 1.0
    reflector = np.eye(len(unit)) - 2.0 * np.outer(h, h) / (h @ h)
    return reflector[:, 1:]


class PrecisionRecallMatrices:
    """Improved precision/recall of resamples from stored distances (ADM protocol §2).

    Keeps the (Nr, n) reference x sample distances and the (n, n) sample self-distances, both
    float32 and computed as in `metrics.precision_recall`. Which samples lie in the reference
    manifold does not depend on the resample; recall needs the sample radii of the resample,
    i.e. the k-th smallest entry of its rows of the self-distance matrix (repeats included).
    """

    def __init__(
        self,
        sample: np.ndarray,
        reference: np.ndarray,
        reference_radii: np.ndarray,
        k: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.k = k
        with torch.no_grad():
            sample_t = torch.as_tensor(np.ascontiguousarray(sample, dtype=np.float32)).to(device)
            reference_t = torch.as_tensor(np.ascontiguousarray(reference, dtype=np.float32)).to(
                device
            )
            self.cross = _squared_distances(reference_t, sample_t)
            self.self_distances = _squared_distances(sample_t, sample_t)
        # Precision: sample j is inside if D(ref_i, s_j) <= radius_ref_i for some i.
        self.sample_in_reference = (self.cross <= reference_radii[:, None]).any(axis=0)

    def scores(self, index: np.ndarray) -> tuple[float, float]:
        """(precision, recall) of the resample `index` (m,) int."""
        precision = float(self.sample_in_reference[index].mean())
        return precision, float(self.reference_covered(index).mean())

    def reference_covered(self, index: np.ndarray) -> np.ndarray:
        """(Nr,) bool: which reference points lie in the manifold of the resample `index`."""
        rows = self.self_distances[np.ix_(index, index)]
        radii = np.maximum(np.partition(rows, self.k, axis=1)[:, self.k], 0.0)
        # Copies of one sample have identical rows, hence identical radii: test each once.
        unique, first = np.unique(index, return_index=True)
        # Recall: reference i is inside if D(ref_i, s_j) <= radius_s_j for some j.
        return (self.cross[:, unique] <= radii[first][None, :]).any(axis=1)


class KIDResampler:
    """KID of row-resampled sample features, equal to `kernel_inception_distance` on them.

    The subsets are drawn exactly as `kernel_inception_distance` draws them (per subset: m
    reference indices, then m sample positions, from `default_rng(kid_seed)`); they do not depend
    on the features, only on the set sizes, which resampling keeps. Per subset the reference term
    and each sample's kernel sum against the subset's reference points are computed once; a
    replicate then needs only counts of the resampled rows: with w the counts of subset rows,
    sum_{p != q} k(y_p, y_q) = w^T K w - w . diag(K) (Bińkowski et al. 2018, eq. 2).
    """

    def __init__(self, reference: np.ndarray, sample: np.ndarray, options: MetricOptions) -> None:
        """reference: (R, D), sample: (N, D) float pool features; options: the KID settings."""
        self.reference = np.asarray(reference, dtype=np.float64)
        self.sample = np.asarray(sample, dtype=np.float64)
        num_reference, num_samples = len(self.reference), len(self.sample)
        self.gamma = 1.0 / self.sample.shape[1]
        self.size = min(options.kid_subset_size, num_reference, num_samples)
        rng = np.random.default_rng(options.kid_seed)
        self.positions = np.empty((options.kid_subsets, self.size), dtype=np.int64)
        self.within_reference = np.empty(options.kid_subsets)
        self.cross_sums = np.empty((options.kid_subsets, num_samples))
        pair_count = self.size * (self.size - 1)
        for index in range(options.kid_subsets):
            subset = self.reference[rng.choice(num_reference, self.size, replace=False)]
            self.positions[index] = rng.choice(num_samples, self.size, replace=False)
            kernel = self._kernel(subset, subset)
            self.within_reference[index] = (kernel.sum() - np.trace(kernel)) / pair_count
            self.cross_sums[index] = self._kernel(self.sample, subset).sum(axis=1)
        self.sample_kernel = self._kernel(self.sample, self.sample)

    def _kernel(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # kernel_inception_distance's default polynomial kernel: (x.y / D + 1)^3.
        return (self.gamma * (x @ y.T) + 1.0) ** 3

    def __call__(self, rows: np.ndarray) -> float:
        """KID of sample[rows]; rows: (N,) int indices with repeats (a bootstrap resample)."""
        num_samples = len(self.sample)
        counts = np.zeros((len(self.positions), num_samples))
        for index, positions in enumerate(self.positions):
            counts[index] = np.bincount(rows[positions], minlength=num_samples)
        pair_count = self.size * (self.size - 1)
        all_pairs = np.einsum("sn,nm,sm->s", counts, self.sample_kernel, counts)
        within_sample = (all_pairs - counts @ np.diag(self.sample_kernel)) / pair_count
        cross = (counts * self.cross_sums).sum(axis=1) / (self.size * self.size)
        return float(np.mean(self.within_reference + within_sample - 2.0 * cross))


class SampleScorer:
    """Every requested metric of one sample set, for the whole set or any resample of it.

    features: the samples' Inception features; agreement: (n,) bool, whether the judge assigned
    each sample to its requested class (None without a judge or without labels); judge_logits:
    (n, K) the judge's logits, for the judge score (None without a judge).
    """

    def __init__(
        self,
        features: FeatureSet,
        reference: PreparedReference,
        agreement: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        judge_logits: np.ndarray | None = None,
    ) -> None:
        side, metrics, options = reference.side, reference.metrics, reference.options
        self.features = features
        self.side = side
        self.metrics = metrics
        self.options = options
        self.device = device
        self.agreement = agreement
        self.judge_logits = judge_logits
        self.num_samples = len(features)
        if self.num_samples < 2:
            raise EvalsuiteError(
                f"{self.num_samples} sample(s); metrics need at least 2 (raise --num-samples)"
            )
        if "pr" in metrics:
            check_pr_size("samples", self.num_samples, options)
        gram_ok = options.fid_method == "eigh"
        self.frechet: dict[str, FrechetGram | None] = {}
        for metric, matrix, stats in (
            ("fid", features.pool, side.pool_stats),
            ("sfid", features.spatial, side.spatial_stats),
        ):
            if metric in metrics:
                small = gram_ok and self.num_samples <= matrix.shape[1]
                self.frechet[metric] = FrechetGram(matrix, stats) if small else None
        # Built on the first resample (a bootstrap of KID); the whole set needs no shortcut.
        self.kid: KIDResampler | None = None
        self.pr: PrecisionRecallMatrices | None = None
        if "pr" in metrics and self.num_samples <= PR_MATRIX_LIMIT:
            self.pr = PrecisionRecallMatrices(
                features.pool, side.pool, reference.radii, options.pr_k, device
            )

    def _frechet(self, metric: str, index: np.ndarray) -> float:
        route = self.frechet[metric]
        if route is not None:
            return route.distance(index)
        matrix = self.features.pool if metric == "fid" else self.features.spatial
        stats = self.side.pool_stats if metric == "fid" else self.side.spatial_stats
        return frechet_distance(
            sample=gaussian_stats(matrix[index]), reference=stats, method=self.options.fid_method
        )

    def scores(self, index: np.ndarray | None = None) -> dict[str, float | None]:
        """Metric values of the resample `index` ((n,) int; None = the sample set itself).

        Keys: fid, sfid, inception_score, inception_score_std, precision, recall, kid, kid_std,
        class_agreement, judge_score; None where a metric was not asked for or is unavailable
        (IS without the Inception head, class agreement and judge score without a judge, kid_std
        of a resample).
        """
        whole = index is None
        index = np.arange(self.num_samples) if index is None else np.asarray(index)
        result: dict[str, float | None] = dict.fromkeys(
            (*METRIC_KEYS, "class_agreement", "judge_score")
        )
        for metric in ("fid", "sfid"):
            if metric in self.metrics:
                result[metric] = self._frechet(metric, index)
        if "is" in self.metrics and self.features.logits is not None:
            mean, std = inception_score(
                self.features.logits[index], split_size=self.options.is_split_size
            )
            result["inception_score"], result["inception_score_std"] = mean, std
        if "pr" in self.metrics:
            if self.pr is not None:
                result["precision"], result["recall"] = self.pr.scores(index)
            elif whole:
                pr = precision_recall(
                    reference=self.side.pool,
                    sample=self.features.pool,
                    k=self.options.pr_k,
                    device=self.device,
                )
                result["precision"], result["recall"] = pr.precision, pr.recall
        if "kid" in self.metrics and whole:
            result["kid"], result["kid_std"] = kernel_inception_distance(
                reference=self.side.pool,
                sample=self.features.pool,
                num_subsets=self.options.kid_subsets,
                subset_size=self.options.kid_subset_size,
                seed=self.options.kid_seed,
            )
        elif "kid" in self.metrics:
            if self.kid is None:
                self.kid = KIDResampler(self.side.pool, self.features.pool, self.options)
            result["kid"] = self.kid(index)
        if self.agreement is not None:
            result["class_agreement"] = float(self.agreement[index].mean())
        if self.judge_logits is not None:
            result["judge_score"] = judge_score(self.judge_logits[index])
        return result


def resample_rows(num_samples: int, num_resamples: int, seed: int = 0) -> np.ndarray:
    """(num_resamples, num_samples) int64 sample indices drawn with replacement.

    Row r is the r-th resample that `bootstrap_intervals` draws with the same seed.
    """
    return np.random.default_rng(seed).integers(0, num_samples, size=(num_resamples, num_samples))


def replicates(scorer: SampleScorer, rows: np.ndarray, keys: tuple[str, ...]) -> dict[str, Any]:
    """Each metric of `keys` (scores() keys) on each resample `rows` (B, n): (B,) float64 arrays.

    Raises `EvalsuiteError` for a metric without resampled values (precision/recall above
    `PR_MATRIX_LIMIT` samples).
    """
    values = {key: np.empty(len(rows)) for key in keys}
    for index, resample in enumerate(rows):
        scores = scorer.scores(resample)
        for key in keys:
            if scores[key] is None:
                raise EvalsuiteError(
                    f"no bootstrap replicates of {key} at N={scorer.num_samples}; use an abs or "
                    "rel tolerance for it"
                )
            values[key][index] = scores[key]
    return values


def one_sided_bound(
    value: float, replicates: np.ndarray, confidence: float, lower_is_better: bool
) -> float:
    """The one-sided bound on the worse side of `value` at `confidence`.

    Centred percentile bootstrap, like the intervals of `bootstrap_intervals`: value + the
    `confidence` quantile (lower-is-better metrics; the 1 - confidence quantile otherwise) of
    replicates - mean(replicates). Centring removes the resampling bias (duplicated rows shrink
    the sample's spread, which inflates FID replicates) and keeps the spread. Never tighter than
    `value` itself, so a sample set passes against its own bound.
    """
    centred = replicates - replicates.mean()
    if lower_is_better:
        return max(value, value + float(np.quantile(centred, confidence)))
    return min(value, value + float(np.quantile(centred, 1.0 - confidence)))


def bootstrap_intervals(scorer: SampleScorer, num_resamples: int, seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap intervals of every available metric over resamples of the samples.

    Each resample draws n sample indices uniformly with replacement from
    `np.random.default_rng(seed)`; the resample indices depend only on (seed, n), so cells of a
    sweep are resampled in the same way. Returns, for each metric key in BOOTSTRAP_KEYS that has
    a value, `<key>_ci_low` / `<key>_ci_high` (the 2.5% and 97.5% quantiles, shifted so that the
    resamples' mean sits on the full-sample value) and `<key>_se` (the standard deviation of the
    resampled values); empty when `num_resamples` is 0.
    """
    if num_resamples <= 0:
        return {}
    if num_resamples < 2:
        raise EvalsuiteError(f"--bootstrap must be 0 (off) or >= 2 resamples, got {num_resamples}")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {key: [] for key in BOOTSTRAP_KEYS}
    for _ in range(num_resamples):
        index = rng.integers(0, scorer.num_samples, scorer.num_samples)
        for key, value in scorer.scores(index).items():
            if key in values and value is not None:
                values[key].append(value)
    tail = (1.0 - CONFIDENCE_LEVEL) / 2
    whole = scorer.scores()
    intervals: dict[str, Any] = {}
    for key, samples in values.items():
        if len(samples) == num_resamples:
            array = np.asarray(samples)
            # Resampling with replacement duplicates samples, which biases FID-type metrics
            # upwards; re-centre the percentile interval on the full-sample value.
            shift = whole[key] - float(array.mean())
            intervals[f"{key}_ci_low"] = float(np.quantile(array, tail)) + shift
            intervals[f"{key}_ci_high"] = float(np.quantile(array, 1.0 - tail)) + shift
            intervals[f"{key}_se"] = float(array.std(ddof=1))
    return intervals


def paired_changes(
    first: SampleScorer, second: SampleScorer, num_resamples: int, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap of the change of every metric from sample set `first` to `second`.

    For two sets drawn with the same seed (two guidance scales of one sweep: sample i of both
    starts from the same noise and asks for the same class) the resamples must keep the pairs
    together: both sets are resampled with the same indices, so the spread of the change is
    that of the change itself, not of the two sets independently (which overstates it when the
    sets are correlated). Returns, per metric key of BOOTSTRAP_KEYS that both sets have,
    `change` (second - first on the whole sets), `se` (standard deviation of the resampled
    changes), `z` (change / se; inf when se is 0 and the change is not, 0 when both are) and
    the percentile interval `ci_low` / `ci_high`, re-centred like `bootstrap_intervals`.
    """
    if first.num_samples != second.num_samples:
        raise EvalsuiteError(
            f"a paired comparison needs sample sets of the same size, got {first.num_samples} "
            f"and {second.num_samples}: draw both with the same --num-samples and --seed"
        )
    if num_resamples < 2:
        raise EvalsuiteError(f"a paired bootstrap needs >= 2 resamples, got {num_resamples}")
    whole_first, whole_second = first.scores(), second.scores()
    keys = [
        key
        for key in BOOTSTRAP_KEYS
        if whole_first[key] is not None and whole_second[key] is not None
    ]
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(num_resamples):
        index = rng.integers(0, first.num_samples, first.num_samples)
        before, after = first.scores(index), second.scores(index)
        for key in keys:
            deltas[key].append(after[key] - before[key])
    tail = (1.0 - CONFIDENCE_LEVEL) / 2
    changes: dict[str, dict[str, float]] = {}
    for key in keys:
        array = np.asarray(deltas[key])
        change = whole_second[key] - whole_first[key]
        se = float(array.std(ddof=1))
        shift = change - float(array.mean())
        if se > 0:
            z = change / se
        else:
            z = 0.0 if change == 0 else float(np.copysign(np.inf, change))
        changes[key] = {
            "change": change,
            "se": se,
            "z": z,
            "ci_low": float(np.quantile(array, tail)) + shift,
            "ci_high": float(np.quantile(array, 1.0 - tail)) + shift,
        }
    return changes
