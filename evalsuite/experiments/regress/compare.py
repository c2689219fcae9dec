"""Comparing a run with a baseline: tolerances, bootstrap bounds and the verdict of each metric.

"Worse" follows each metric's direction (lower is better for FID, sFID and KID; higher for the
Inception Score, precision and recall). A metric FAILs when it is worse than its tolerance allows
(`allowed_value`), is BETTER when it improved by more than the tolerance (it passes, and the
report suggests --update), and PASSes otherwise.

The `ci` tolerance's bound is the one-sided centred percentile bootstrap bound of the baseline's
own run (`evalsuite.experiments.bootstrap`, the resampling that sweeps use for their intervals):
the sample rows are resampled with replacement from a seeded numpy Generator and every metric is
recomputed on each resample through the exact shortcuts of `bootstrap.SampleScorer`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from evalsuite.experiments.regress.baseline import (
    LOWER_IS_BETTER,
    METRIC_GROUPS,
    TOLERANCE_KINDS,
    Baseline,
    Expectation,
    Tolerance,
    baseline_to_dict,
)
from evalsuite.experiments.regress.measure import Measurement
from evalsuite.runtime.errors import EvalsuiteError

STATUS_PASS, STATUS_FAIL, STATUS_BETTER = "PASS", "FAIL", "BETTER"
# Status of every metric in the report of --update/--init: the run's values became the baseline.
STATUS_RECORDED = "RECORDED"


@dataclass(frozen=True)
class Comparison:
    """One metric's verdict: PASS, FAIL (worse than `allowed`) or BETTER (improved by more than
    the tolerance; passes, and suggests --update)."""

    metric: str
    expected: float | None
    got: float
    tolerance: Tolerance
    allowed: float | None
    status: str

    @property
    def delta(self) -> float | None:
        return None if self.expected is None else self.got - self.expected

    @property
    def direction(self) -> str:
        return "lower" if self.metric in LOWER_IS_BETTER else "higher"


def allowed_value(metric: str, expectation: Expectation) -> float:
    """The worst value that still passes (lower-is-better metrics: the largest)."""
    expected, tolerance = expectation.expected, expectation.tolerance
    if tolerance.kind == "ci":
        return expectation.bound
    margin = tolerance.amount if tolerance.kind == "abs" else tolerance.amount * abs(expected)
    return expected + margin if metric in LOWER_IS_BETTER else expected - margin


def compare(metric: str, expectation: Expectation, got: float) -> Comparison:
    """Compare a measured value with the baseline's expectation for `metric`.

    Without an expected value (or a ci bound), as in a baseline that --update is about to fill,
    there is nothing to compare: the status is PASS and `allowed` is None.
    """
    unfilled = expectation.tolerance.kind == "ci" and expectation.bound is None
    if expectation.expected is None or unfilled:
        return Comparison(metric, None, got, expectation.tolerance, None, STATUS_PASS)
    allowed = allowed_value(metric, expectation)
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    worse_by = sign * (got - expectation.expected)
    margin = sign * (allowed - expectation.expected)
    if not math.isfinite(got) or worse_by > margin:
        status = STATUS_FAIL
    elif -worse_by > margin:
        status = STATUS_BETTER
    else:
        status = STATUS_PASS
    return Comparison(metric, expectation.expected, got, expectation.tolerance, allowed, status)


@dataclass
class RegressResult:
    """The outcome of a check (or of an update/init: comparisons against the old values)."""

    baseline: Baseline
    comparisons: list[Comparison]
    samples_sha256: str
    environment: dict[str, Any]
    seconds: dict[str, float]
    action: str = "check"
    # The sample batch scored instead of regenerated samples (`regress --samples`).
    samples_batch: str | None = None

    @property
    def passed(self) -> bool:
        return all(c.status != STATUS_FAIL for c in self.comparisons)

    @property
    def samples_identical(self) -> bool | None:
        """Whether the samples are bitwise those of the baseline's run (None: not recorded)."""
        recorded = self.baseline.provenance.get("samples_sha256")
        return None if recorded is None else recorded == self.samples_sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": str(self.baseline.path),
            "action": self.action,
            "passed": self.passed,
            "metrics": {
                c.metric: {
                    "expected": c.expected,
                    "got": c.got,
                    "delta": c.delta,
                    "tolerance": {"kind": c.tolerance.kind, "amount": c.tolerance.amount},
                    "allowed": c.allowed,
                    "direction": c.direction,
                    "status": c.status,
                }
                for c in self.comparisons
            },
            "samples_sha256": self.samples_sha256,
            "samples_identical_to_baseline": self.samples_identical,
            "protocol": baseline_to_dict(self.baseline),
            "environment": self.environment,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            **({} if self.samples_batch is None else {"samples_batch": self.samples_batch}),
        }


DEFAULT_TOLERANCES = {
    "fid": Tolerance("rel", 0.05),
    "sfid": Tolerance("rel", 0.05),
    "inception_score": Tolerance("rel", 0.05),
    "precision": Tolerance("abs", 0.05),
    "recall": Tolerance("abs", 0.05),
    "kid": Tolerance("ci", 0.95),
}


def parse_tolerances(specs: list[str] | tuple[str, ...]) -> dict[str, Tolerance]:
    """'fid=rel:0.05', 'kid=ci:0.95,precision=abs:0.03' -> {metric: Tolerance} ('is' = IS)."""
    tolerances: dict[str, Tolerance] = {}
    for spec in specs:
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            try:
                name, rest = item.split("=", 1)
                kind, amount_text = rest.split(":", 1)
                amount = float(amount_text)
            except ValueError:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: expected METRIC=KIND:AMOUNT, e.g. fid=rel:0.05, "
                    "precision=abs:0.03 or kid=ci:0.95"
                ) from None
            name = "inception_score" if name.strip() == "is" else name.strip()
            if name not in METRIC_GROUPS:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: unknown metric {name!r}; expected one of "
                    f"{', '.join(METRIC_GROUPS)}"
                )
            if kind not in TOLERANCE_KINDS:
                raise EvalsuiteError(
                    f"--tolerance {item!r}: unknown kind {kind!r}; expected abs, rel or ci"
                )
            tolerances[name] = Tolerance(kind, amount)
    return tolerances


def bootstrap_bounds(
    baseline: Baseline, measurement: Measurement, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Bounds of the baseline's ci-tolerance metrics from `bootstrap_resamples` resamples."""
    from evalsuite.experiments.bootstrap import (
        SampleScorer,
        one_sided_bound,
        prepare_reference,
        replicates,
        resample_rows,
    )

    wanted = tuple(name for name, e in baseline.metrics.items() if e.tolerance.kind == "ci")
    if not wanted:
        return {}
    evaluation = baseline.evaluation
    options = evaluation.metric_options()
    groups = tuple(dict.fromkeys(METRIC_GROUPS[name] for name in wanted))
    prepared = prepare_reference(measurement.reference_side, groups, options, device)
    scorer = SampleScorer(measurement.sample_features, prepared, device=device)
    rows = resample_rows(
        len(measurement.sample_features),
        evaluation.bootstrap_resamples,
        evaluation.bootstrap_seed,
    )
    values = replicates(scorer, rows, wanted)
    return {
        name: one_sided_bound(
            measurement.values[name],
            values[name],
            baseline.metrics[name].tolerance.amount,
            lower_is_better=name in LOWER_IS_BETTER,
        )
        for name in wanted
    }
