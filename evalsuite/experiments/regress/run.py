"""The three actions of `evalsuite regress`: check a baseline, update it, init a new one.

`check` runs the baseline's protocol and compares with its expected values; a protocol that no
longer matches (a checkpoint, reference or Inception weights with another hash) raises
`EvalsuiteError` instead of comparing different things. `update` rewrites the expected values,
bounds and hashes after an intended change, keeping the tolerances; `init` writes a new baseline
from the current model.

Under `torchrun` every rank calls the action: the ranks share sampling and feature extraction,
rank 0 scores, compares and writes the baseline file, and every rank returns the same
`RegressResult` (an error is raised on every rank; see `ranks`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from evalsuite.experiments.regress import ranks
from evalsuite.experiments.regress.baseline import (
    EMBEDDED,
    METRIC_GROUPS,
    Baseline,
    CheckpointEntry,
    EvaluationEntry,
    Expectation,
    ReferenceEntry,
    Tolerance,
    check_evaluation,
    check_tolerance,
    load_baseline,
    path_entry,
    write_baseline,
)
from evalsuite.experiments.regress.compare import (
    DEFAULT_TOLERANCES,
    STATUS_RECORDED,
    Comparison,
    RegressResult,
    allowed_value,
    bootstrap_bounds,
    compare,
)
from evalsuite.experiments.regress.measure import Measurement, environment, measure, prepare
from evalsuite.pipeline.sample import SamplingSettings
from evalsuite.runtime.errors import EvalsuiteError


def _compare_all(baseline: Baseline, measurement: Measurement) -> list[Comparison]:
    return [
        compare(name, expectation, measurement.values[name])
        for name, expectation in baseline.metrics.items()
    ]


def check(
    baseline_path: str | os.PathLike[str],
    *,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
    samples: str | os.PathLike[str] | None = None,
) -> RegressResult:
    """Run the baseline's protocol and compare with its expected values (raises on bad input).

    samples: score this batch, made by `evalsuite sample` from the baseline's protocol (its
    sidecar is checked), instead of regenerating the samples.
    """

    def load() -> Baseline:
        if samples is not None and keep_samples is not None:
            raise EvalsuiteError("--keep-samples keeps regenerated samples; --samples has none")
        return load_baseline(baseline_path)

    baseline = ranks.on_main(load)
    protocol = prepare(
        baseline,
        inception_weights=inception_weights,
        device=device,
        samples=samples,
        keep_samples=keep_samples,
    )
    measurement = measure(
        protocol,
        device=device,
        batch_size=batch_size,
        progress=progress,
        keep_samples=keep_samples,
        samples=samples,
    )

    def result() -> RegressResult:
        return RegressResult(
            baseline,
            _compare_all(baseline, measurement),
            measurement.samples_sha256,
            environment(device),
            measurement.seconds,
            samples_batch=None if samples is None else str(samples),
        )

    return ranks.on_main(result)


def _refill(
    baseline: Baseline,
    *,
    inception_weights: str | None,
    device: str,
    batch_size: int,
    progress: bool,
    keep_samples: str | os.PathLike[str] | None,
    action: str,
) -> tuple[Baseline, RegressResult]:
    """Measure, bootstrap and write `baseline` with new hashes, values and bounds."""
    resamples = baseline.evaluation.bootstrap_resamples
    if resamples < 2 and any(e.tolerance.kind == "ci" for e in baseline.metrics.values()):
        raise ranks.SharedError(
            f"{baseline.path}: ci tolerances need `evaluation.bootstrap_resamples` >= 2 "
            f"(got {resamples}); 200 is a good value"
        )
    protocol = prepare(
        baseline,
        verify=False,
        inception_weights=inception_weights,
        device=device,
        keep_samples=keep_samples,
    )
    measurement = measure(
        protocol, device=device, batch_size=batch_size, progress=progress, keep_samples=keep_samples
    )
    return ranks.on_main(lambda: _record(baseline, protocol.hashes, measurement, device, action))


def _record(
    baseline: Baseline,
    hashes: dict[str, str],
    measurement: Measurement,
    device: str,
    action: str,
) -> tuple[Baseline, RegressResult]:
    started = time.perf_counter()
    bounds = bootstrap_bounds(baseline, measurement, device)
    measurement.seconds["bootstrap"] = time.perf_counter() - started
    env = environment(device)
    updated = dataclasses.replace(
        baseline,
        model=dataclasses.replace(baseline.model, sha256=hashes["model"]),
        classifier=None
        if baseline.classifier is None
        else dataclasses.replace(baseline.classifier, sha256=hashes["classifier"]),
        reference=dataclasses.replace(baseline.reference, sha256=hashes["reference"]),
        evaluation=dataclasses.replace(
            baseline.evaluation, inception_weights_sha256=hashes["inception_weights"]
        ),
        metrics={
            name: dataclasses.replace(
                expectation, expected=measurement.values[name], bound=bounds.get(name)
            )
            for name, expectation in baseline.metrics.items()
        },
        provenance={
            "samples_sha256": measurement.samples_sha256,
            "device": env["device"],
            "torch_threads": env["torch_threads"],
            "machine": env["machine"],
            "versions": env["versions"],
        },
    )
    write_baseline(updated)
    # Old expected values against the new run, with the new tolerance bounds.
    comparisons = [
        dataclasses.replace(
            comparison,
            allowed=allowed_value(comparison.metric, updated.metrics[comparison.metric]),
            status=STATUS_RECORDED,
        )
        for comparison in _compare_all(baseline, measurement)
    ]
    result = RegressResult(
        updated,
        comparisons,
        measurement.samples_sha256,
        env,
        measurement.seconds,
        action=action,
    )
    return updated, result


def update(
    baseline_path: str | os.PathLike[str],
    *,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> tuple[Baseline, RegressResult]:
    """Rewrite a baseline's expected values, ci bounds and hashes from a fresh run (atomically).

    Tolerances, notes and the protocol's settings are kept. Returns the new baseline and the
    comparison of the fresh run against the old expected values.
    """
    baseline = ranks.on_main(lambda: load_baseline(baseline_path, for_update=True))
    return _refill(
        baseline,
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        progress=progress,
        keep_samples=keep_samples,
        action="update",
    )


def init(
    baseline_path: str | os.PathLike[str],
    *,
    model: str,
    model_architecture: str = EMBEDDED,
    classifier: str | None = None,
    classifier_architecture: str = EMBEDDED,
    reference: str,
    ref_stats: str = "auto",
    sampling: SamplingSettings,
    metrics: tuple[str, ...],
    tolerances: dict[str, Tolerance] | None = None,
    evaluation: EvaluationEntry | None = None,
    description: str | None = None,
    inception_weights: str | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
    keep_samples: str | os.PathLike[str] | None = None,
) -> tuple[Baseline, RegressResult]:
    """Write a new baseline at `baseline_path` from a run of the given protocol.

    model/classifier/reference: "zoo:NAME" or paths (recorded relative to the baseline's folder).
    metrics: evaluate metric names (fid, sfid, is, pr, kid); tolerances override
    `DEFAULT_TOLERANCES` per baseline metric name.
    """

    def draft() -> Baseline:
        path = Path(baseline_path)
        if path.exists():
            raise EvalsuiteError(
                f"{path} exists; refresh it with `evalsuite regress --update {path}` or choose "
                "another file name"
            )
        if path.suffix != ".toml":
            raise EvalsuiteError(f"{path}: a baseline is a TOML file; use a name ending in .toml")
        names = [name for name, group in METRIC_GROUPS.items() if group in metrics]
        given = tolerances or {}
        extra = [name for name in given if name not in names]
        if extra:
            raise EvalsuiteError(
                f"--tolerance {extra[0]} is given but {METRIC_GROUPS[extra[0]]} is not in --metrics"
            )
        baseline = Baseline(
            path=path,
            model=CheckpointEntry(path_entry(model, path), None, model_architecture),
            classifier=None
            if classifier is None
            else CheckpointEntry(path_entry(classifier, path), None, classifier_architecture),
            sampling=sampling,
            reference=ReferenceEntry(path_entry(reference, path), None, ref_stats),
            evaluation=evaluation or EvaluationEntry(inception_weights_sha256=None),
            metrics={
                name: Expectation(None, given.get(name, DEFAULT_TOLERANCES[name])) for name in names
            },
            description=description,
        )
        # Validate the draft like a file before running anything (tolerance ranges, options).
        for name, expectation in baseline.metrics.items():
            check_tolerance(path, name, expectation.tolerance)
        check_evaluation(path, baseline.evaluation)
        sampling.validate()
        return baseline

    return _refill(
        ranks.on_main(draft),
        inception_weights=inception_weights,
        device=device,
        batch_size=batch_size,
        progress=progress,
        keep_samples=keep_samples,
        action="init",
    )
