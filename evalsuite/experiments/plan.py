"""Sizing a sweep or ablation before launching it: the grid, its network evaluations, and time.

`plan_grid` reads what a run would read to validate itself (the checkpoints' configs, with the
weights memory-mapped and never read; the reference's header and stored statistics) and counts,
for every cell, what the real run performs. Nothing is sampled, Inception is not loaded, and
nothing is written. `calibrate` then times a few real sampling steps and Inception batches on a
device with networks of the same architectures (random weights: the arithmetic, and so the time,
does not depend on the values) and turns the counts into estimated hours.

Units (the same in the table, the JSON and the tests):

- network evaluations per image: how often one sample goes through the diffusion UNet, i.e. the
  length of the respaced chain ("ddim25" = 25, "250" = 250, "" = all T steps). Under guidance
  (scale > 0) the classifier is evaluated as often, each time one forward and one backward
  pass (the gradient of log p(y | x_t)); at scale 0 it is never called. Classifier-free
  guidance doubles the UNet's evaluations ([x; x] with labels [y; ∅]) except at s = 0 and
  s = 1, which need one half only.
- network evaluations per cell: evaluations per image x samples (image-steps).
- batched forward passes: calls of the network module. On CUDA a batch of --batch-size samples
  goes through whole, ceil(N / batch size) passes per step; on CPU every sample runs alone
  (`evalsuite.pipeline.sample.BatchSampler`, for bits independent of batch size), N passes per
  step whatever the batch size (2N under classifier-free guidance). Under torchrun the same passes are shared among the ranks.
- Inception: images, and extractor calls (batches of 64 inside cached chunks of 1000 images).
  The reference's images go through Inception once per run when its statistics are recomputed
  or precision/recall/KID need its features. Counts assume an empty feature cache.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from evalsuite.experiments.sweep import (
    Cell,
    SweepConfig,
    check_grid,
    grid_cells,
    read_records,
)
from evalsuite.experiments.timing import (
    CALIBRATION_STEPS,  # noqa: F401
    Calibration,
    _device_name,
    _random_network,
    random_inception,  # noqa: F401
    time_inception,
    time_sampling_step,
)
from evalsuite.models.checkpoint import LoadedModel, read_configs
from evalsuite.models.config import config_to_dict
from evalsuite.models.diffusers_source import is_diffusers_spec
from evalsuite.pipeline.evaluate import check_reference
from evalsuite.pipeline.featureset import CHUNK_SIZE
from evalsuite.pipeline.reference import PR_REFERENCE_SIZE, load_reference
from evalsuite.pipeline.sample import SamplingModels
from evalsuite.runtime.errors import EvalsuiteError

# Batch size of the Inception extractor in `run_sweep` (its FeatureComputer).
FEATURE_BATCH_SIZE = 64


@dataclass(frozen=True)
class CellPlan:
    """What one grid cell costs; see the module docstring for the units."""

    cell: str
    model: str
    sampler: str
    steps: str
    guidance_scale: float
    num_samples: int
    chain_steps: int
    guided: bool
    sampling_batches: int
    unet_evaluations: int
    classifier_forwards: int
    classifier_backwards: int
    unet_passes: int
    classifier_passes: int
    inception_images: int
    inception_passes: int
    judge_images: int
    finished: bool = False
    estimated_seconds: float | None = None

    @property
    def unet_per_image(self) -> int:
        return self.unet_evaluations // self.num_samples

    @property
    def classifier_per_image(self) -> int:
        return self.chain_steps if self.guided else 0


@dataclass
class GridPlan:
    """The plan of a whole run: every cell's counts, the reference side, optional estimates."""

    kind: str
    device: str
    batch_size: int
    per_sample: bool
    image_size: int
    axes: dict[str, int]
    cells: list[CellPlan]
    reference_images: int
    reference_passes: int
    run_dir: str | None = None
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)

    def totals(self, remaining_only: bool = False) -> dict[str, Any]:
        """Sums over the cells (only the unfinished ones with remaining_only)."""
        cells = [c for c in self.cells if not (remaining_only and c.finished)]
        keys = (
            "num_samples",
            "unet_evaluations",
            "classifier_forwards",
            "classifier_backwards",
            "unet_passes",
            "classifier_passes",
            "inception_images",
            "inception_passes",
            "judge_images",
        )
        totals: dict[str, Any] = {"cells": len(cells)}
        totals.update({key: sum(getattr(c, key) for c in cells) for key in keys})
        reference = self.reference_images
        if remaining_only and (not cells or any(c.finished for c in self.cells)):
            # Extracted with the first cell of a run, then read from the feature cache.
            reference = 0
        totals["inception_images"] += reference
        totals["inception_passes"] += self.reference_passes if reference else 0
        if self.calibration is not None:
            seconds = sum(c.estimated_seconds or 0.0 for c in cells)
            seconds += reference * self.calibration.inception_seconds_per_image
            totals["estimated_seconds"] = seconds
            totals["device_hours"] = seconds / 3600
        return totals

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready data (the `--dry-run --json` output)."""
        cells = []
        for cell in self.cells:
            entry = asdict(cell)
            entry["unet_evaluations_per_image"] = cell.unet_per_image
            entry["classifier_evaluations_per_image"] = cell.classifier_per_image
            cells.append(entry)
        return {
            "dry_run": True,
            "kind": self.kind,
            "device": self.device,
            "batch_size": self.batch_size,
            "per_sample_passes": self.per_sample,
            "image_size": self.image_size,
            "axes": self.axes,
            "run_dir": self.run_dir,
            "cells": cells,
            "reference": {
                "inception_images": self.reference_images,
                "inception_passes": self.reference_passes,
            },
            "totals": self.totals(),
            "remaining": self.totals(remaining_only=True),
            "calibration": None if self.calibration is None else asdict(self.calibration),
            "notes": self.notes,
        }


def uses_per_sample_passes(device: str) -> bool:
    """Whether sampling on `device` runs each sample alone (BatchSampler does so on CPU)."""
    return torch.device(device).type == "cpu"


def feature_passes(num_images: int, batch_size: int = FEATURE_BATCH_SIZE) -> int:
    """Extractor calls for images [0, num_images): batches inside the cache's fixed chunks."""
    chunk = int(os.environ.get("EVALSUITE_FEATURE_CHUNK", CHUNK_SIZE))
    return sum(
        math.ceil((min(lo + chunk, num_images) - lo) / batch_size)
        for lo in range(0, num_images, chunk)
    )


def _architecture(path: str | None, kind: str, flags: str | None, preset: str | None, what: str):
    if path is None:
        return None
    if is_diffusers_spec(path):
        raise EvalsuiteError(
            f"{what} {path}: the dry run plans ADM checkpoints only; run the sweep of a "
            "diffusers: model without --dry-run"
        )
    if not Path(path).is_file():
        raise EvalsuiteError(f"{what} checkpoint {path} does not exist")
    model_config, diffusion_config = read_configs(path, kind, flags=flags, preset=preset)
    # A LoadedModel without a network: enough for every check a run makes before sampling.
    return LoadedModel(
        model=None,  # type: ignore[arg-type]
        model_config=model_config,
        diffusion_config=diffusion_config,
        sha256="",
        source="config only",
        path=Path(path),
    )


def read_architectures(config: SweepConfig) -> dict[str, SamplingModels]:
    """Every row's model and classifier configs (no weights loaded), checked like `load_row`."""
    architectures = {}
    for row in config.rows:
        if row.classifier is None and (row.classifier_flags or row.classifier_preset):
            raise EvalsuiteError(
                f"{row.name}: classifier flags/preset given without a classifier checkpoint"
            )
        try:
            model = _architecture(row.model, "unet", row.model_flags, row.preset, "model")
            classifier = _architecture(
                row.classifier,
                "classifier",
                row.classifier_flags,
                row.classifier_preset,
                "classifier",
            )
        except EvalsuiteError as error:
            raise EvalsuiteError(f"{row.name}: {error}") from None
        architectures[row.name] = SamplingModels(model=model, classifier=classifier)
    return architectures


def _reference_images(config: SweepConfig) -> int:
    """Reference images that go through Inception once per run (0 when stats are stored)."""
    reference = load_reference(config.reference)
    mode = check_reference(reference, config.metrics, config.ref_stats, config.metric_options)
    if mode == "recompute":
        return reference.images.num_images
    if any(m in config.metrics for m in ("pr", "kid")) and reference.pool is None:
        return min(reference.images.num_images, PR_REFERENCE_SIZE)
    return 0


def _cell_plan(
    config: SweepConfig,
    cell: Cell,
    models: SamplingModels,
    batch_size: int,
    per_sample: bool,
    finished: bool,
) -> CellPlan:
    from evalsuite.diffusion import space_timesteps

    chain_steps = len(space_timesteps(models.model.diffusion_config.diffusion_steps, cell.steps))
    settings = config.settings(cell)
    guided = settings.classifier_gradient_scale > 0 and models.classifier is not None
    # Classifier-free guidance evaluates the UNet on [x; x] with labels [y; ∅] (one batched
    # pass; on CPU every row runs alone) except at s = 1 and s = 0, which need one half only.
    halves = 2 if settings.guidance == "cfg" and cell.guidance_scale not in (0.0, 1.0) else 1
    n = config.num_samples
    batches = math.ceil(n / batch_size)
    passes = chain_steps * (n if per_sample else batches)
    evaluations = chain_steps * n
    unet_passes = chain_steps * n * halves if per_sample else passes
    return CellPlan(
        cell=cell.name,
        model=cell.row.name,
        sampler=cell.sampler,
        steps=cell.steps,
        guidance_scale=cell.guidance_scale,
        num_samples=n,
        chain_steps=chain_steps,
        guided=guided,
        sampling_batches=batches,
        unet_evaluations=evaluations * halves,
        classifier_forwards=evaluations if guided else 0,
        classifier_backwards=evaluations if guided else 0,
        unet_passes=unet_passes,
        classifier_passes=passes if guided else 0,
        inception_images=n,
        inception_passes=feature_passes(n),
        judge_images=n if config.judge is not None else 0,
        finished=finished,
    )


def plan_grid(
    config: SweepConfig,
    *,
    batch_size: int = 16,
    device: str = "cpu",
    run_dir: str | Path | None = None,
) -> tuple[GridPlan, dict[str, SamplingModels]]:
    """Validate `config` as a run would (without weights or sampling) and count every cell.

    Returns the plan and the rows' architectures (for `calibrate`). Cells already recorded in
    an existing `run_dir` are marked finished; nothing is created or written.
    """
    config.validate()
    if batch_size < 1:
        raise EvalsuiteError(f"--batch-size must be >= 1, got {batch_size}")
    try:
        torch.device(device)
    except RuntimeError:
        raise EvalsuiteError(
            f"--device {device!r} is not a torch device; use cpu or cuda[:N]"
        ) from None
    for path, what in ((config.judge, "judge"), (config.inception_weights, "Inception weights")):
        if path is not None and not Path(path).is_file():
            raise EvalsuiteError(f"{what} file {path} does not exist")
    reference_images = _reference_images(config)
    architectures = read_architectures(config)
    check_grid(config, architectures)
    done: set[str] = set()
    if run_dir is not None and Path(run_dir).is_dir():
        done = {record.get("cell") for record in read_records(Path(run_dir))}
    per_sample = uses_per_sample_passes(device)
    cells = [
        _cell_plan(
            config, cell, architectures[cell.row.name], batch_size, per_sample, cell.name in done
        )
        for cell in grid_cells(config)
    ]
    image_size = next(iter(architectures.values())).model.model_config.image_size
    notes = ["counts assume an empty feature cache (cached features are not recomputed)"]
    plan = GridPlan(
        kind=config.kind,
        device=device,
        batch_size=batch_size,
        per_sample=per_sample,
        image_size=image_size,
        axes={
            "models": len(config.rows),
            "samplers": len(config.samplers),
            "steps": len(config.steps),
            "scales": len(config.scales),
        },
        cells=cells,
        reference_images=reference_images,
        reference_passes=feature_passes(reference_images) if reference_images else 0,
        run_dir=None if run_dir is None else str(run_dir),
        notes=notes,
    )
    return plan, architectures


def _step_keys(
    config: SweepConfig, architectures: dict[str, SamplingModels], plans: list[CellPlan]
) -> dict[str, str]:
    """Cell name -> calibration key; cells whose sampling costs the same share a key.

    The key names the first row with the cell's architectures, the sampler and whether the
    classifier gradient is computed, e.g. "conditional ddim guided".
    """
    first_row: dict[str, str] = {}
    keys = {}
    for cell, cell_plan in zip(grid_cells(config), plans, strict=True):
        models = architectures[cell.row.name]
        classifier = models.classifier if cell_plan.guided else None
        signature = json.dumps(
            [
                config_to_dict(models.model.model_config),
                None if classifier is None else config_to_dict(classifier.model_config),
            ],
            sort_keys=True,
        )
        name = first_row.setdefault(signature, cell.row.name)
        key = f"{name} {cell.sampler} {'guided' if cell_plan.guided else 'unguided'}"
        if cell_plan.unet_per_image > cell_plan.chain_steps:
            key += " cfg"  # both halves of classifier-free guidance: twice the UNet's work
        keys[cell.name] = key
    return keys


def calibrate(
    plan: GridPlan,
    config: SweepConfig,
    architectures: dict[str, SamplingModels],
    *,
    log: Callable[[str], None] | None = None,
) -> GridPlan:
    """Time sampling steps and Inception batches on `plan.device`; fill in the estimates.

    One measurement per distinct (architectures, sampler, guided) among the unfinished cells, at
    the run's batch size (at most the cell's samples); Inception at its run batch of 64 images
    (at most the cell's samples). Estimated cell time = sampling batches x chain steps x step
    time + images x Inception time per image; metrics and bootstrap are not included.
    """
    started = time.perf_counter()
    batch = min(plan.batch_size, config.num_samples)
    networks: dict[str, SamplingModels] = {}
    step_seconds: dict[str, float] = {}
    cells = {cell.name: cell for cell in grid_cells(config)}
    keys = _step_keys(config, architectures, plan.cells)
    for cell_plan in plan.cells:
        cell, key = cells[cell_plan.cell], keys[cell_plan.cell]
        if key in step_seconds:
            continue
        models = architectures[cell.row.name]
        if cell.row.name not in networks:
            networks[cell.row.name] = SamplingModels(
                model=_random_network(models.model, 0, plan.device),
                classifier=None
                if models.classifier is None
                else _random_network(models.classifier, 1, plan.device),
            )
        if log is not None:
            log(f"calibrating: {key} ({cell.describe()}), batch {batch}")
        step_seconds[key] = time_sampling_step(
            networks[cell.row.name], config, cell, batch=batch, device=plan.device
        )
    inception_batch = min(FEATURE_BATCH_SIZE, config.num_samples)
    if log is not None:
        log(f"calibrating: Inception features, batch {inception_batch}")
    per_image = time_inception(
        image_size=plan.image_size, batch=inception_batch, device=plan.device
    )
    plan.calibration = Calibration(
        device=plan.device,
        device_name=_device_name(torch.device(plan.device)),
        sampling_batch=batch,
        step_seconds=step_seconds,
        inception_batch=inception_batch,
        inception_seconds_per_image=per_image,
        seconds=time.perf_counter() - started,
    )
    estimated = []
    for cell_plan in plan.cells:
        seconds = (
            cell_plan.sampling_batches * cell_plan.chain_steps * step_seconds[keys[cell_plan.cell]]
            + cell_plan.inception_images * per_image
        )
        estimated.append(replace(cell_plan, estimated_seconds=seconds))
    plan.cells = estimated
    plan.notes.append("estimates cover sampling and Inception features, not metrics/bootstrap")
    return plan


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def format_plan(plan: GridPlan) -> str:
    """The plan as a console table with a units legend and totals."""
    axes = plan.axes
    n = plan.cells[0].num_samples if plan.cells else 0
    mode = (
        "one sample per pass (cpu)"
        if plan.per_sample
        else f"batches of {plan.batch_size} per pass ({plan.device})"
    )
    lines = [
        f"dry run ({plan.kind}): nothing is written; "
        + (
            "timed on random-weight copies of the networks"
            if plan.calibration is not None
            else "no weights loaded, nothing sampled"
        ),
        f"grid: {_count(axes['models'], 'model')} x {_count(axes['samplers'], 'sampler')} x "
        f"{_count(axes['steps'], 'step count')} x "
        + (
            f"{_count(axes['scales'], 'scale')} = "
            if axes["models"] * axes["samplers"] * axes["steps"] * axes["scales"] == len(plan.cells)
            else "each model's scales = "
        )
        + f"{_count(len(plan.cells), 'cell')} of {n} samples "
        f"({plan.image_size}x{plan.image_size}); device {plan.device}, {mode}",
        "per image: network evaluations of one sample (chain length, twice under classifier-free "
        "guidance; the classifier adds one forward + one backward per step when guided); passes: "
        "batched forward calls",
    ]
    calibrated = plan.calibration is not None
    header = ["cell", "steps", "UNet/img", "clf/img", "UNet evals", "clf evals", "UNet passes"]
    header += ["clf passes", "Inception imgs"] + (["est. time"] if calibrated else [])
    rows = []
    for c in plan.cells:
        row = [
            c.cell + (" (done)" if c.finished else ""),
            c.steps or "all",
            c.unet_per_image,
            c.classifier_per_image,
            c.unet_evaluations,
            c.classifier_forwards,
            c.unet_passes,
            c.classifier_passes,
            c.inception_images,
        ]
        if calibrated:
            row.append(_duration(c.estimated_seconds or 0.0))
        rows.append([str(v) for v in row])
    totals = plan.totals()
    total_row = [
        f"total ({totals['cells']} cells)",
        "",
        "",
        "",
        totals["unet_evaluations"],
        totals["classifier_forwards"],
        totals["unet_passes"],
        totals["classifier_passes"],
        totals["inception_images"],
    ]
    if calibrated:
        total_row.append(_duration(totals["estimated_seconds"]))
    rows.append([str(v) for v in total_row])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    if plan.reference_images:
        lines.append(
            f"reference: {plan.reference_images} images through Inception once per run "
            "(in the total)"
        )
    remaining = plan.totals(remaining_only=True)
    if remaining["cells"] != totals["cells"]:
        lines.append(
            f"{totals['cells'] - remaining['cells']} cells already finished in "
            f"{plan.run_dir}; {remaining['cells']} remain"
        )
    if calibrated:
        cal = plan.calibration
        assert cal is not None
        for key, seconds in cal.step_seconds.items():
            lines.append(
                f"calibration: {key}: {seconds * 1000:.1f} ms per step of a "
                f"{cal.sampling_batch}-sample batch"
            )
        lines.append(
            f"calibration: Inception {cal.inception_seconds_per_image * 1000:.1f} ms per image "
            f"(batches of {cal.inception_batch}) on {cal.device_name}"
        )
        left = remaining["estimated_seconds"]
        lines.append(
            f"estimated: {_duration(left)} for the {remaining['cells']} remaining cells = "
            f"{remaining['device_hours']:.2f} device-hours on {plan.device} ({cal.device_name}); "
            "N ranks under torchrun take about 1/N of it"
        )
    lines.extend(f"note: {note}" for note in plan.notes)
    return "\n".join(lines)
