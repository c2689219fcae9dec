"""`sweep`: sample and score a grid of models x samplers x step counts x guidance scales.

Every cell of the grid is sampled with the same seed, so sample i has the same class and initial
noise at every guidance scale and only the scale changes (ADM protocol §5; `evalsuite.pipeline.sample`).
Each cell's samples are scored against one reference (ADM protocol §2) with bootstrap intervals
(`evalsuite.experiments.bootstrap`) and, given a judge, class agreement (`evalsuite.zoo.judge`).

A run directory is the results store:

    config.json      the resolved configuration, its identity (compared on every rerun),
                     versions and the sha256 of every checkpoint, the reference and the weights,
                     and the grid's cell names
    records/         <cell>.json: one flat JSON record per finished cell (configuration,
                     metrics, intervals, timings), each written once
    records.jsonl    every record in grid order (rebuilt after each cell)
    claims/          <cell>.json while a process runs the cell
    samples/         <cell>.npz while its cell runs (resumable parts; kept with keep_samples)
    thumbs/          <cell>.npz: the first samples of each class, for the sample grid
    report/          tables and figures (`evalsuite.experiments.report`)

Rerunning the same configuration into the same directory skips finished cells; an unfinished
cell resumes from its sample parts, and its features come from the feature cache. A different
configuration is refused. Under `torchrun` every rank works on every cell and rank 0 writes; with
--shard K/N several jobs share the directory (`evalsuite.experiments.runstore`,
`evalsuite.experiments.schedule`; docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evalsuite import __version__
from evalsuite.experiments import runstore
from evalsuite.experiments.bootstrap import (
    PreparedReference,
    SampleScorer,
    bootstrap_intervals,
    prepare_reference,
)
from evalsuite.experiments.grid import (
    KINDS,  # noqa: F401
    NAME_PATTERN,  # noqa: F401
    Cell,  # noqa: F401
    ModelRow,  # noqa: F401
    SweepConfig,  # noqa: F401
    grid_cells,  # noqa: F401
    parse_list,  # noqa: F401
    parse_scales,  # noqa: F401
)
from evalsuite.experiments.runstore import read_records
from evalsuite.experiments.schedule import run_grid
from evalsuite.models.checkpoint import LoadedModel, load_checkpoint
from evalsuite.models.config import config_to_dict
from evalsuite.models.diffusers_source import is_diffusers_spec
from evalsuite.models.source import load_diffusion_model
from evalsuite.pipeline.batches import open_images, write_npz
from evalsuite.pipeline.evaluate import (
    check_reference,
    load_inception,
    make_computer,
    provenance,
    resolve_reference,
    versions,
)
from evalsuite.pipeline.reference import Reference, load_reference
from evalsuite.pipeline.sample import (
    SCALE_CONVENTIONS,
    SamplingModels,
    check_guidance_choice,
    generate,
    sidecar_path,
)
from evalsuite.pipeline.sanity import noise_like_note
from evalsuite.runtime import dist, ranks
from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.runtime.errors import note as print_note
from evalsuite.runtime.threads import reproducible_scoring, single_thread
from evalsuite.zoo.judge import check_judge, class_agreement, judge_logits, load_judge

# Samples of each class kept per cell for the sample grid (and rows of unlabelled samples).
THUMBS_PER_CLASS = 4
THUMB_ROWS_UNLABELLED = 8


def load_row(row: ModelRow) -> SamplingModels:
    """Load a row's diffusion model and guiding classifier (files checked first)."""
    for path, what in ((row.model, "model"), (row.classifier, "classifier")):
        if path is not None and not is_diffusers_spec(path) and not Path(path).is_file():
            raise EvalsuiteError(f"{row.name}: {what} checkpoint {path} does not exist")
    if row.classifier is None and (row.classifier_flags or row.classifier_preset):
        raise EvalsuiteError(
            f"{row.name}: classifier flags/preset given without a classifier checkpoint"
        )
    model = load_diffusion_model(row.model, flags=row.model_flags, preset=row.preset)
    classifier = None
    if row.classifier is not None:
        classifier = load_checkpoint(
            row.classifier, "classifier", flags=row.classifier_flags, preset=row.classifier_preset
        )
    return SamplingModels(model=model, classifier=classifier)


def check_grid(config: SweepConfig, models: dict[str, SamplingModels]) -> None:
    """Check every cell against its models (classifier present when guided, respacing valid)."""
    image_sizes = {name: m.model.model_config.image_size for name, m in models.items()}
    if len(set(image_sizes.values())) > 1:
        listed = ", ".join(f"{name} {size}x{size}" for name, size in image_sizes.items())
        raise EvalsuiteError(
            f"the models generate different resolutions ({listed}); one sweep scores every "
            "model against one reference, so sweep each resolution separately"
        )
    for row in config.rows:
        try:
            check_guidance_choice(row.guidance, models[row.name].classifier is not None)
        except EvalsuiteError as error:
            raise EvalsuiteError(f"model {row.name}: {error}") from None
    for cell in grid_cells(config):
        row_models = models[cell.row.name]
        guided_by_classifier = cell.row.guidance_kind == "classifier"
        if guided_by_classifier and cell.guidance_scale > 0 and row_models.classifier is None:
            raise EvalsuiteError(
                f"model {cell.row.name} has no classifier, but the scales include "
                f"{cell.guidance_scale:g}; give --classifier PATH or use --scales 0"
            )
        try:
            row_models.check(config.settings(cell))
        except EvalsuiteError as error:
            raise EvalsuiteError(f"model {cell.row.name}: {error}") from None


def _sha256_entry(loaded: LoadedModel | None) -> dict[str, Any] | None:
    if loaded is None:
        return None
    return {
        "sha256": loaded.sha256,
        "config": config_to_dict(loaded.model_config),
        "diffusion": config_to_dict(loaded.diffusion_config),
    }


def _row_identity(row: ModelRow, models: SamplingModels) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": row.name,
        "variant": row.variant,
        "training_point": row.training_point,
        "model": _sha256_entry(models.model),
        "classifier": _sha256_entry(models.classifier),
    }
    # Only rows that use them record guidance and own scales (older runs keep their identity).
    if row.guidance is not None:
        entry["guidance"] = row.guidance
    if row.scales is not None:
        entry["scales"] = list(row.scales)
    return entry


def run_identity(
    config: SweepConfig,
    models: dict[str, SamplingModels],
    judge: LoadedModel | None,
    reference: Reference,
    weights_sha256: str,
    device: str,
) -> dict[str, Any]:
    """What identifies a run: the grid, the settings, and the content of every input file.

    Paths are not part of it (moving a checkpoint does not change results); sha256s are.
    """
    identity = {
        "kind": config.kind,
        "grid": {
            "scales": list(config.scales),
            "samplers": list(config.samplers),
            "steps": list(config.steps),
        },
        "sampling": {
            "num_samples": config.num_samples,
            "seed": config.seed,
            "classes": config.classes,
            "eta": config.eta,
            "precision": config.precision,
        },
        "evaluation": {
            "metrics": list(config.metrics),
            "ref_stats": config.ref_stats,
            "bootstrap": config.bootstrap,
            "bootstrap_seed": config.bootstrap_seed,
            "options": dataclasses.asdict(config.metric_options),
        },
        "models": [_row_identity(row, models[row.name]) for row in config.rows],
        "judge_sha256": None if judge is None else judge.sha256,
        "reference_sha256": reference.fingerprint(),
        "inception_sha256": weights_sha256,
        "device_type": torch.device(device).type,
    }
    return json.loads(json.dumps(identity))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ, with both values shortened for one line."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        if all(isinstance(item, dict) for item in old + new):
            return [
                d
                for i, pair in enumerate(zip(old, new, strict=True))
                for d in _differences(*pair, f"{prefix}{i}.")
            ]
    if old == new:
        return []

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{prefix.rstrip('.')}: {short(old)} -> {short(new)}"]


def open_run_dir(
    run_dir: Path, identity: dict[str, Any], details: dict[str, Any]
) -> dict[str, Any]:
    """Create the run directory, or check that it holds the same configuration.

    Writes config.json (identity + details) for a new run, exclusively, so concurrent shards
    starting on one directory agree; for an existing run refuses a different identity and
    refreshes the details (annotations such as the ablation baseline). The records of a run
    written before records/ existed are imported into it.
    """
    config = runstore.open_config(Path(run_dir), identity, details, _differences)
    runstore.import_legacy(Path(run_dir))
    return config


@dataclass
class _Runtime:
    """What a run loads once: models, judge, Inception, and the lazily prepared reference."""

    config: SweepConfig
    run_dir: Path
    models: dict[str, SamplingModels]
    judge: LoadedModel | None
    reference: Reference
    ref_mode: str
    computer: Any
    device: str
    batch_size: int
    progress: bool
    prepared: PreparedReference | None = None
    resolved: bool = False


def _prepare(runtime: _Runtime) -> tuple[PreparedReference | None, float, float]:
    """The prepared reference, and the (features, metrics) seconds spent on it in this call.

    Every rank extracts its share of the reference features (once); rank 0 alone prepares the
    metrics (None on the other ranks).
    """
    if runtime.resolved:
        return runtime.prepared, 0.0, 0.0
    started = time.perf_counter()
    side = resolve_reference(
        runtime.reference, runtime.config.metrics, runtime.ref_mode, runtime.computer
    )
    feature_seconds = time.perf_counter() - started
    runtime.resolved = True
    if not dist.is_main():
        return None, feature_seconds, 0.0
    with reproducible_scoring():
        runtime.prepared = prepare_reference(
            side, runtime.config.metrics, runtime.config.metric_options, runtime.device
        )
    return runtime.prepared, feature_seconds, runtime.prepared.seconds


def _judge_and_thumbs(
    runtime: _Runtime, source: Any, labels: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
    """One pass over the samples: class agreement and the judge's logits (N, K), and the
    thumbnails of the sample grid."""
    if labels is not None:
        keep = np.concatenate(
            [np.flatnonzero(labels == c)[:THUMBS_PER_CLASS] for c in np.unique(labels)]
        )
    else:
        keep = np.arange(min(source.num_images, THUMBS_PER_CLASS * THUMB_ROWS_UNLABELLED))
    keep = np.sort(keep)
    logits, thumbs, start = [], [], 0
    for batch in source.iter_batches(256):
        if runtime.judge is not None:
            # One thread: the logits (and the judge score) do not depend on the thread count.
            with single_thread():
                logits.append(judge_logits(runtime.judge, batch, device=runtime.device))
        inside = keep[(keep >= start) & (keep < start + len(batch))]
        thumbs.append(np.array(batch[inside - start]))
        start += len(batch)
    thumbnails = {"images": np.concatenate(thumbs), "indices": keep}
    if labels is not None:
        thumbnails["labels"] = labels[keep]
    judged = np.concatenate(logits) if logits else None
    agreement = None
    if judged is not None and labels is not None:
        agreement = class_agreement(judged.argmax(axis=1), labels)
    return agreement, judged, thumbnails


def _run_cell(runtime: _Runtime, cell: Cell) -> dict[str, Any] | None:
    """Sample, extract and score one cell on every rank; rank 0 returns its record."""
    config, run_dir = runtime.config, runtime.run_dir
    models = runtime.models[cell.row.name]
    samples_path = run_dir / "samples" / f"{cell.name}.npz"
    parts = samples_path.with_name(samples_path.name + ".parts")
    resumed = samples_path.exists() or parts.exists()

    started = time.perf_counter()
    generate(
        models,
        config.settings(cell),
        samples_path,
        batch_size=runtime.batch_size,
        device=runtime.device,
        progress=runtime.progress,
        extra_record={"cell": cell.name},
    )
    sampling_seconds = time.perf_counter() - started

    prepared, reference_feature_seconds, reference_metric_seconds = _prepare(runtime)
    started = time.perf_counter()
    source = open_images(samples_path, role="samples")
    features = runtime.computer.compute(source, desc=f"features {cell.name}")
    features_seconds = time.perf_counter() - started + reference_feature_seconds
    if prepared is None:
        # Under torchrun the other ranks sampled and extracted their shares; rank 0 scores.
        return None

    started = time.perf_counter()
    labels = source.labels()
    agreement, judged, thumbnails = _judge_and_thumbs(runtime, source, labels)
    with reproducible_scoring():
        scorer = SampleScorer(features, prepared, agreement, runtime.device, judge_logits=judged)
        scores = scorer.scores()
        noise_like = noise_like_note(precision=scores.get("precision"), fid=None, fid_of_noise=None)
        if noise_like is not None:
            print_note(f"cell {cell.name}: {noise_like}")
        bootstrap_started = time.perf_counter()
        intervals = bootstrap_intervals(scorer, config.bootstrap, config.bootstrap_seed)
        bootstrap_seconds = time.perf_counter() - bootstrap_started
    metrics_seconds = time.perf_counter() - started + reference_metric_seconds

    write_npz(run_dir / "thumbs" / f"{cell.name}.npz", thumbnails)
    model, classifier = models.model, models.classifier
    record: dict[str, Any] = {
        "cell": cell.name,
        "kind": config.kind,
        "model": cell.row.name,
        "variant": cell.row.variant,
        "training_point": cell.row.training_point,
        "sampler": cell.sampler,
        "steps": cell.steps,
        "guidance": cell.row.guidance_kind,
        "guidance_scale": cell.guidance_scale,
        "scale_convention": SCALE_CONVENTIONS[cell.row.guidance_kind],
        "num_samples": config.num_samples,
        "seed": config.seed,
        "classes": config.classes,
        "eta": config.eta,
        "network_precision": config.precision,
        "class_cond": bool(getattr(model.model_config, "class_cond", False)),
        "model_path": str(model.path),
        "model_sha256": model.sha256,
        "model_step": model.step,
        "classifier_path": None if classifier is None else str(classifier.path),
        "classifier_sha256": None if classifier is None else classifier.sha256,
        "judge_sha256": None if runtime.judge is None else runtime.judge.sha256,
        "metrics": list(config.metrics),
        **scores,
        "bootstrap": config.bootstrap,
        "bootstrap_seed": config.bootstrap_seed,
        **intervals,
        "sampling_seconds": round(sampling_seconds, 3),
        "features_seconds": round(features_seconds, 3),
        "metrics_seconds": round(metrics_seconds, 3),
        "bootstrap_seconds": round(bootstrap_seconds, 3),
        "resumed": resumed,
        "notes": [] if noise_like is None else [noise_like],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record


def _summary(record: dict[str, Any]) -> str:
    shown = [
        ("FID", "fid", 2),
        ("sFID", "sfid", 2),
        ("IS", "inception_score", 2),
        ("P", "precision", 3),
        ("R", "recall", 3),
        ("KID", "kid", 4),
        ("agreement", "class_agreement", 3),
        ("judge score", "judge_score", 2),
    ]
    parts = [
        f"{label} {record[key]:.{digits}f}"
        for label, key, digits in shown
        if record.get(key) is not None
    ]
    seconds = record["sampling_seconds"] + record["features_seconds"] + record["metrics_seconds"]
    return f"{', '.join(parts)} ({seconds:.1f} s)"


@dataclass
class _Loaded:
    """Everything a run loads and checks before its first sample."""

    models: dict[str, SamplingModels]
    judge: LoadedModel | None
    reference: Reference
    ref_mode: str
    weights: Any
    extractor: Any
    identity: dict[str, Any]
    details: dict[str, Any]
    notes: list[str]


def _load(
    config: SweepConfig,
    run_dir: Path,
    batch_size: int,
    device: str,
    annotations: dict[str, Any] | None,
) -> _Loaded:
    """Validate the configuration and load every input file (run on every rank)."""
    config.validate()
    if batch_size < 1:
        raise EvalsuiteError(f"--batch-size must be >= 1, got {batch_size}")
    if run_dir.exists() and not run_dir.is_dir():
        raise EvalsuiteError(f"--out {run_dir} is a file; give a directory")
    reference = load_reference(config.reference)
    ref_mode = check_reference(reference, config.metrics, config.ref_stats, config.metric_options)
    models = {row.name: load_row(row) for row in config.rows}
    check_grid(config, models)
    judge = None
    if config.judge is not None:
        judge = load_judge(config.judge)
        guiding = tuple(m.classifier.sha256 for m in models.values() if m.classifier is not None)
        for name, row_models in models.items():
            try:
                check_judge(
                    judge,
                    image_size=row_models.model.model_config.image_size,
                    num_classes=row_models.num_classes,
                    guiding_sha256=guiding,
                )
            except EvalsuiteError as error:
                raise EvalsuiteError(f"model {name}: {error}") from None
    weights, extractor = load_inception(config.inception_weights, device)
    identity = run_identity(config, models, judge, reference, weights.sha256, device)
    info, notes = provenance(weights, reference)
    if "is" not in config.metrics:
        notes = [note for note in notes if not note.startswith("Inception Score")]
    details = {
        "evalsuite": __version__,
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
        "files": {
            "reference": {"path": str(reference.path), "sha256": identity["reference_sha256"]},
            "inception": {
                "path": info["weights_path"],
                "sha256": weights.sha256,
                "source": weights.source,
                "has_logits": weights.has_logits,
            },
            "judge": None if judge is None else {"path": str(judge.path), "sha256": judge.sha256},
            "models": {
                name: {
                    "model": {"path": str(m.model.path), "sha256": m.model.sha256},
                    "classifier": None
                    if m.classifier is None
                    else {"path": str(m.classifier.path), "sha256": m.classifier.sha256},
                }
                for name, m in models.items()
            },
        },
        "reference_mode": ref_mode,
        "versions": versions(),
        "notes": notes,
        "annotations": annotations or {},
    }
    return _Loaded(models, judge, reference, ref_mode, weights, extractor, identity, details, notes)


def run_sweep(
    config: SweepConfig,
    run_dir: str | Path,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    keep_samples: bool = False,
    progress: bool = True,
    annotations: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run (or finish) every cell of `config` into `run_dir`; returns the records in grid order.

    Everything is validated (configuration, files, models against the grid, judge, reference,
    Inception weights) before the first sample is drawn. `annotations` (e.g. the ablation
    baseline) are stored in config.json for the report but are not part of the identity.

    Under `torchrun` every rank validates (an error on any rank stops all of them with its
    message), samples and extracts its share of every cell; rank 0 writes config.json and the
    records and alone calls `log`. `shard=(K, N)` runs only the cells at grid positions
    K, K+N, K+2N, ... (cluster job arrays sharing one run directory).
    """
    is_main = dist.world()[0] == 0
    if not is_main:
        log = _silent
    run_dir = Path(run_dir)
    loaded = ranks.agreed(lambda: _load(config, run_dir, batch_size, device, annotations))
    cells = grid_cells(config)
    details = {**loaded.details, "cells": [cell.name for cell in cells]}
    ranks.decided(lambda: open_run_dir(run_dir, loaded.identity, details))
    for note in loaded.notes:
        log(f"note: {note}")
    computer = make_computer(
        loaded.weights, loaded.extractor, device=device, batch_size=64, progress=progress
    )
    runtime = _Runtime(
        config,
        run_dir,
        loaded.models,
        loaded.judge,
        loaded.reference,
        loaded.ref_mode,
        computer,
        device,
        batch_size,
        progress,
    )

    def run_one(position: int) -> None:
        cell = cells[position]
        log(f"[{position + 1}/{len(cells)}] {cell.describe()}")
        record = _run_cell(runtime, cell)
        if record is None:
            return
        if not runstore.write_record(run_dir, record):
            log(f"note: {cell.name} was recorded by another process meanwhile; its record stays")
        log(f"[{position + 1}/{len(cells)}] {cell.describe()}: {_summary(record)}")
        if not keep_samples:
            samples_path = run_dir / "samples" / f"{cell.name}.npz"
            samples_path.unlink(missing_ok=True)
            sidecar_path(samples_path).unlink(missing_ok=True)

    run_grid(run_dir, [cell.name for cell in cells], run_one, shard=shard, log=log)
    return read_records(run_dir)


def _silent(message: str) -> None:
    """The log of ranks > 0: rank 0 prints for the job."""
