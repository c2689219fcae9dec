"""The grid of a `sweep` run: its model rows, configuration and cells.

`SweepConfig` holds everything that determines a run's records (the run directory's identity);
`grid_cells` lists its cells in run order. `evalsuite.experiments.sweep` runs the grid.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

from evalsuite.pipeline.evaluate import (
    MetricOptions,
    check_pr_size,
    parse_metrics,
)
from evalsuite.pipeline.sample import (
    GUIDANCE_KINDS,
    SAMPLERS,
    SamplingSettings,
)
from evalsuite.runtime.errors import EvalsuiteError

# Characters allowed in model (row) names: they become part of file names.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]*$")
KINDS = ("sweep", "ablate")


def parse_scales(text: str) -> tuple[float, ...]:
    """'0,0.5,1' -> (0.0, 0.5, 1.0): finite, >= 0, no repeats; anything else raises."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise EvalsuiteError(
            f"--scales {text!r} is not a comma list of guidance scales; e.g. --scales 0,0.5,1,2,4"
        )
    scales = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise EvalsuiteError(
                f"--scales: {item!r} is not a number; give a comma list such as 0,0.5,1,2,4"
            ) from None
        if not math.isfinite(value) or value < 0:
            raise EvalsuiteError(f"--scales: {item} is not a finite scale >= 0; e.g. 0,1,4")
        scales.append(value)
    if len(set(scales)) != len(scales):
        raise EvalsuiteError(f"--scales {text!r} repeats a scale; list each scale once")
    return tuple(scales)


def parse_list(text: str, option: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """'ddpm,ddim' -> ('ddpm', 'ddim'), checked against `choices`; no empty items or repeats."""
    items = tuple(item.strip() for item in text.split(","))
    if not text.strip() or any(not item for item in items):
        raise EvalsuiteError(f"{option} {text!r} is not a comma list of values")
    if choices is not None:
        bad = [item for item in items if item not in choices]
        if bad:
            raise EvalsuiteError(
                f"{option}: {bad[0]!r} is not one of {', '.join(choices)}; e.g. {option} "
                + ",".join(choices)
            )
    if len(set(items)) != len(items):
        raise EvalsuiteError(f"{option} {text!r} repeats a value; list each once")
    return items


@dataclass(frozen=True)
class ModelRow:
    """One model of the grid: a diffusion checkpoint and the classifier that guides it (if any).

    name labels the row in tables and file names; variant/training_point are set for ablation
    rows (the variant's name and the label of the training point, e.g. "700K"). guidance is what
    the scales scale ("classifier" or "cfg"; None = classifier, the default); scales, when set,
    replace the grid's scales for this row (a CFG row's s = 1 is the conditional model).
    """

    name: str
    model: str
    model_flags: str | None = None
    preset: str | None = None
    classifier: str | None = None
    classifier_flags: str | None = None
    classifier_preset: str | None = None
    variant: str | None = None
    training_point: str | None = None
    guidance: str | None = None
    scales: tuple[float, ...] | None = None

    @property
    def guidance_kind(self) -> str:
        """What this row's scales scale: "classifier" (the default) or "cfg"."""
        return self.guidance or "classifier"


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines the records of a run (the run directory's identity)."""

    rows: tuple[ModelRow, ...]
    reference: str
    scales: tuple[float, ...] = (0.0,)
    samplers: tuple[str, ...] = ("ddim",)
    steps: tuple[str, ...] = ("ddim25",)
    num_samples: int = 100
    seed: int = 0
    classes: str = "uniform"
    eta: float = 0.0
    precision: str = "fp32"
    metrics: tuple[str, ...] = ("fid", "sfid", "is", "pr")
    ref_stats: str = "auto"
    judge: str | None = None
    bootstrap: int = 100
    bootstrap_seed: int = 0
    inception_weights: str | None = None
    metric_options: MetricOptions = field(default_factory=MetricOptions)
    kind: str = "sweep"

    def validate(self) -> None:
        """Reject a malformed configuration (no files are read)."""
        if self.kind not in KINDS:
            raise EvalsuiteError(f"run kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.rows:
            raise EvalsuiteError("no models to sweep; give --model (or none for the zoo)")
        names = [row.name for row in self.rows]
        for name in names:
            if not NAME_PATTERN.match(name):
                raise EvalsuiteError(
                    f"model name {name!r} may only hold letters, digits and . _ + @ -"
                )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise EvalsuiteError(f"model name {duplicates[0]!r} is used twice; names must differ")
        if not self.scales:
            raise EvalsuiteError("no guidance scales; e.g. --scales 0,1,4")
        for scale in self.scales:
            if not math.isfinite(scale) or scale < 0:
                raise EvalsuiteError(f"guidance scale {scale} is not a finite number >= 0")
        if len(set(self.scales)) != len(self.scales):
            raise EvalsuiteError("a guidance scale is listed twice")
        for row in self.rows:
            if row.guidance is not None and row.guidance not in GUIDANCE_KINDS:
                raise EvalsuiteError(
                    f"model {row.name}: guidance must be one of {', '.join(GUIDANCE_KINDS)}, "
                    f"got {row.guidance!r}"
                )
            if row.scales is not None:
                if not row.scales or len(set(row.scales)) != len(row.scales):
                    raise EvalsuiteError(f"model {row.name}: give each of its scales once")
                for scale in row.scales:
                    if not math.isfinite(scale) or scale < 0:
                        raise EvalsuiteError(
                            f"model {row.name}: guidance scale {scale} is not a finite number >= 0"
                        )
        for sampler in self.samplers:
            if sampler not in SAMPLERS:
                raise EvalsuiteError(f"--sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
        if not self.samplers or not self.steps:
            raise EvalsuiteError("give at least one sampler and one step count")
        if self.num_samples < 2:
            raise EvalsuiteError(
                f"--num-samples must be >= 2 (metrics need a covariance), got {self.num_samples}"
            )
        parse_metrics(list(self.metrics))
        if "pr" in self.metrics:
            check_pr_size("samples", self.num_samples, self.metric_options)
        if self.bootstrap < 0 or self.bootstrap == 1:
            raise EvalsuiteError(
                f"--bootstrap must be 0 (off) or >= 2 resamples, got {self.bootstrap}"
            )

    def settings(self, cell: Cell) -> SamplingSettings:
        """The sampling settings of one grid cell."""
        return SamplingSettings(
            num_samples=self.num_samples,
            sampler=cell.sampler,
            steps=cell.steps,
            eta=self.eta,
            guidance_scale=cell.guidance_scale,
            classes=self.classes,
            seed=self.seed,
            precision=self.precision,
            guidance=cell.row.guidance_kind,
        )


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model row, a sampler, a respacing and a guidance scale."""

    row: ModelRow
    sampler: str
    steps: str
    guidance_scale: float

    @property
    def name(self) -> str:
        """File-name-safe identifier, e.g. 'conditional_ddim-ddim25_s1.5'."""
        steps = re.sub(r"[^A-Za-z0-9]+", "-", self.steps) or "all"
        return f"{self.row.name}_{self.sampler}-{steps}_s{self.guidance_scale:g}"

    def describe(self) -> str:
        return (
            f"{self.row.name}, {self.sampler} {self.steps or 'all steps'}, "
            f"scale {self.guidance_scale:g}"
        )


def grid_cells(config: SweepConfig) -> list[Cell]:
    """The cells of the grid in run order: rows, then samplers, step counts, scales."""
    return [
        Cell(row, sampler, steps, scale)
        for row in config.rows
        for sampler, steps, scale in itertools.product(
            config.samplers, config.steps, row.scales or config.scales
        )
    ]
