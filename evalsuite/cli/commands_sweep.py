"""`evalsuite sweep`, `evalsuite ablate` and `evalsuite report`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click

from evalsuite.cli import UserError, handle_errors, main
from evalsuite.cli.commands_eval import weights_option
from evalsuite.cli.dry_run import check_run_options, dry_run_options, show_plan

DEFAULT_SCALES = "0,1,4"
# Exit code of `evalsuite report` on a run whose grid still has cells without a record.
INCOMPLETE_EXIT = 3
# Scales of the zoo's classifier-free-guidance row (s = 1: its conditional model).
DEFAULT_CFG_SCALES = "1,3"


class FloatListType(click.ParamType):
    """A comma list of guidance scales, e.g. 0,0.5,1,2,4 (finite, >= 0, no repeats)."""

    name = "FLOAT,..."

    def __init__(self, allow_none: bool = False) -> None:
        self.allow_none = allow_none

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        if self.allow_none and str(value).strip().lower() == "none":
            return ()
        from evalsuite.experiments.sweep import parse_scales
        from evalsuite.runtime.errors import EvalsuiteError

        try:
            return parse_scales(str(value))
        except EvalsuiteError as error:
            raise UserError(str(error)) from None


class CommaListType(click.ParamType):
    """A comma list of strings, optionally restricted to `choices`."""

    name = "A,B,..."

    def __init__(self, option: str, choices: tuple[str, ...] | None = None) -> None:
        self.option = option
        self.choices = choices

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        from evalsuite.experiments.sweep import parse_list
        from evalsuite.runtime.errors import EvalsuiteError

        try:
            return parse_list(str(value), self.option, self.choices)
        except EvalsuiteError as error:
            raise UserError(str(error)) from None


class ShardType(click.ParamType):
    """K/N: this job runs the grid cells at positions K, K+N, K+2N, ... (0 <= K < N)."""

    name = "K/N"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        from evalsuite.experiments.runstore import parse_shard
        from evalsuite.runtime.errors import EvalsuiteError

        try:
            return parse_shard(str(value))
        except EvalsuiteError as error:
            raise UserError(str(error)) from None


def echo(message: str = "", err: bool = False) -> None:
    """click.echo on rank 0 only (torchrun ranks > 0 print nothing but their errors)."""
    from evalsuite.runtime.ranks import quiet_rank

    if not quiet_rank():
        click.echo(message, err=err)


def run_options(fn: Any) -> Any:
    """Options shared by `sweep` and `ablate`: where and how the run executes."""
    options = [
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Samples per forward pass (does not change the result).",
        ),
        click.option(
            "--keep-samples",
            is_flag=True,
            help="Keep each cell's sample batch in OUT/samples/ (deleted after scoring otherwise).",
        ),
        click.option(
            "--device",
            default="cpu",
            show_default=True,
            help="Torch device (cpu, cuda, cuda:1, …).",
        ),
        click.option("--quiet", is_flag=True, help="No progress bars (per-cell lines remain)."),
        click.option(
            "--shard",
            type=ShardType(),
            default=None,
            help="Run only shard K of N (grid cells K, K+N, ...) into a shared --out: one "
            "cluster array job per shard; the last one writes the report (docs/scaling.md).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _finish(run_dir: Path, absolute: bool = False) -> None:
    """Write the report of a run and print its main table (rank 0; once every cell is done)."""
    from evalsuite.experiments.report import to_markdown, write_report
    from evalsuite.experiments.runstore import missing_cells
    from evalsuite.runtime.ranks import quiet_rank

    if quiet_rank():
        return
    missing = missing_cells(run_dir)
    if missing:
        click.echo(
            f"{len(missing)} cell(s) of the grid have no record yet (other shards): "
            + ", ".join(m.cell for m in missing)
        )
        click.echo(f"`evalsuite report {run_dir}` writes the tables once they are finished.")
        return
    report = write_report(run_dir, absolute=absolute)

    click.echo("")
    click.echo(report.table.caption)
    click.echo(to_markdown(report.table))
    click.echo(f"report: {run_dir / 'report'} ({len(report.files)} files)")


def _zoo_rows(
    classifier: str | None,
    classifier_flags: str | None,
    classifier_preset: str | None,
    cfg_scales: tuple[float, ...] = (),
):
    """The zoo's Table-4 pair (unconditional and conditional, both classifier-guided), then the
    null-class model under classifier-free guidance at `cfg_scales` (none: no CFG row)."""
    from evalsuite import zoo
    from evalsuite.experiments.sweep import ModelRow

    guide = classifier or str(zoo.asset(zoo.CLASSIFIER))
    return (
        ModelRow(
            name="unconditional",
            model=str(zoo.asset(zoo.UNCOND_MODEL)),
            classifier=guide,
            classifier_flags=classifier_flags,
            classifier_preset=classifier_preset,
        ),
        ModelRow(
            name="conditional",
            model=str(zoo.asset(zoo.MODEL)),
            classifier=guide,
            classifier_flags=classifier_flags,
            classifier_preset=classifier_preset,
        ),
    ) + (
        (
            ModelRow(
                name="cfg",
                model=str(zoo.asset(zoo.CFG_MODEL)),
                guidance="cfg",
                scales=cfg_scales,
            ),
        )
        if cfg_scales
        else ()
    )


def _default_samplers(rows) -> tuple[str, ...]:
    """ddim, or the folders' own schedulers when every row is a diffusers: folder."""
    from evalsuite.models.diffusers_source import is_diffusers_spec

    return ("scheduler",) if all(is_diffusers_spec(row.model) for row in rows) else ("ddim",)


def _named_rows(
    models: tuple[str, ...],
    model_flags: str | None,
    preset: str | None,
    classifier: str | None,
    classifier_flags: str | None,
    classifier_preset: str | None,
    guidance: str | None = None,
):
    """One row per --model, named after the file (made unique with -2, -3, …)."""
    import re

    from evalsuite.experiments.sweep import ModelRow

    rows, used = [], set()
    for path in models:
        base = re.sub(r"[^A-Za-z0-9._+@-]+", "-", Path(path).stem).strip("-.") or "model"
        name, count = base, 1
        while name in used:
            count += 1
            name = f"{base}-{count}"
        used.add(name)
        rows.append(
            ModelRow(
                name=name,
                model=path,
                model_flags=model_flags,
                preset=preset,
                classifier=classifier,
                classifier_flags=classifier_flags,
                classifier_preset=classifier_preset,
                guidance=guidance,
            )
        )
    return tuple(rows)


@main.command()
@click.option(
    "--model",
    "models",
    type=click.Path(dir_okay=False),
    multiple=True,
    help="Diffusion checkpoint; repeat for several rows. Default: the zoo's unconditional and "
    "conditional models.",
)
@click.option(
    "--model-flags",
    default=None,
    help="Architecture of bare state dicts as guided-diffusion flags.",
)
@click.option(
    "--preset",
    default=None,
    help="Architecture preset of bare state dicts, e.g. 256x256_diffusion.",
)
@click.option(
    "--classifier",
    type=click.Path(dir_okay=False),
    default=None,
    help="Noise-aware classifier guiding every model (needed for scales > 0). Default with the zoo: its classifier.",
)
@click.option(
    "--classifier-flags", default=None, help="Classifier architecture as guided-diffusion flags."
)
@click.option("--classifier-preset", default=None, help="Classifier architecture preset.")
@click.option(
    "--reference",
    type=click.Path(),
    default=None,
    help="Reference batch or ref-stats file. Default with the zoo: its reference statistics.",
)
@click.option(
    "--scales",
    type=FloatListType(),
    default=DEFAULT_SCALES,
    show_default=True,
    help="Guidance scales, comma separated: classifier-guidance scales, or with --guidance cfg "
    "CFG scales s (1 = conditional, 0 = unconditional; the CFG paper's w = s - 1).",
)
@click.option(
    "--guidance",
    type=click.Choice(["classifier", "cfg"]),
    default=None,
    help="What --scales scale for every --model: the classifier gradient (default; needs "
    "--classifier) or classifier-free guidance (models with a null class).",
)
@click.option(
    "--cfg-scales",
    type=FloatListType(allow_none=True),
    default=DEFAULT_CFG_SCALES,
    show_default=True,
    help="Without --model: the CFG scales s of the zoo's null-class model (row 'cfg'); "
    "'none' leaves that row out.",
)
@click.option(
    "--sampler",
    "samplers",
    type=CommaListType("--sampler", ("ddpm", "ddim", "scheduler")),
    default=None,
    help="Sampler(s), comma separated: ddpm, ddim, scheduler (a diffusers folder's own). "
    "Default: ddim; scheduler when every --model is diffusers:FOLDER.",
)
@click.option(
    "--steps",
    type=CommaListType("--steps"),
    default="ddim25",
    show_default=True,
    help='Respacing(s), comma separated, e.g. "250,ddim25" (with the scheduler sampler: '
    'inference steps, "25" or "ddim25").',
)
@click.option(
    "--num-samples",
    type=click.IntRange(min=2),
    default=100,
    show_default=True,
    help="Samples per cell (more give tighter intervals; sampling dominates the time on CPU).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Sample i has the same class and noise at every scale.",
)
@click.option(
    "--classes",
    default="uniform",
    show_default=True,
    help="uniform (i.i.d., as published), balanced, or a list like 0,3,7.",
)
@click.option(
    "--eta", type=click.FloatRange(min=0), default=0.0, show_default=True, help="DDIM eta."
)
@click.option(
    "--metrics",
    default="fid,sfid,is,pr",
    show_default=True,
    help="Comma list from fid,sfid,is,pr,kid.",
)
@click.option(
    "--judge",
    type=click.Path(dir_okay=False),
    default=None,
    help="Clean-image classifier measuring class agreement. Default with the zoo: its judge.",
)
@click.option("--no-judge", is_flag=True, help="No class agreement, even with the zoo.")
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Bootstrap resamples for confidence intervals (0 = off).",
)
@click.option(
    "--bootstrap-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the resamples.",
)
@click.option(
    "--ref-stats",
    type=click.Choice(["auto", "stored", "recompute"]),
    default="auto",
    show_default=True,
    help="Reference moments: stored in REFERENCE, or recomputed from its images.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/sweep",
    show_default=True,
    help="Run directory (rerun the same command to resume; a different config is refused).",
)
@run_options
@dry_run_options
@weights_option
@handle_errors
def sweep(
    models: tuple[str, ...],
    model_flags: str | None,
    preset: str | None,
    classifier: str | None,
    classifier_flags: str | None,
    classifier_preset: str | None,
    reference: str | None,
    scales: tuple[float, ...],
    guidance: str | None,
    cfg_scales: tuple[float, ...],
    samplers: tuple[str, ...],
    steps: tuple[str, ...],
    num_samples: int,
    seed: int,
    classes: str,
    eta: float,
    metrics: str,
    judge: str | None,
    no_judge: bool,
    bootstrap: int,
    bootstrap_seed: int,
    ref_stats: str,
    out: str,
    batch_size: int,
    keep_samples: bool,
    device: str,
    quiet: bool,
    dry_run: bool,
    calibrate: bool,
    as_json: bool,
    shard: tuple[int, int] | None,
    inception_weights: str | None,
) -> None:
    """Sweep the classifier-guidance scale (and optionally samplers and step counts).

    Every cell uses the same seed, so sample i has the same class and initial noise at every
    scale. Each cell is sampled, scored against the reference (FID, sFID, IS, precision,
    recall; bootstrap intervals; class agreement and judge score with --judge) and recorded in
    OUT/records.jsonl; tables and figures are written to OUT/report/. With no --model it runs
    the zoo: its unconditional and conditional models, both guided by its classifier, and its
    null-class model under classifier-free guidance at --cfg-scales.

    \b
    Examples:
      evalsuite sweep                                   # the zoo, scales 0,1,4
      evalsuite sweep --scales 0,0.5,1,2,4 --out runs/zoo-scales
      evalsuite sweep --steps 50,ddim25 --sampler ddpm,ddim --scales 0,2
      evalsuite sweep --model diffusers:./dit --guidance cfg --scales 1,1.5,2,4 \\
          --reference ref.npz --out runs/dit-cfg
      evalsuite sweep --model cfg.pt --guidance cfg --scales 0,1,2,4,8 \\
          --reference ref.npz --out runs/cfg-scales
      evalsuite sweep --model 256x256_diffusion.pt --preset 256x256_diffusion \\
          --classifier 256x256_classifier.pt --classifier-preset 256x256_classifier \\
          --reference VIRTUAL_imagenet256_labeled.npz --scales 0,1,10 \\
          --num-samples 10000 --device cuda --out runs/adm256
    """
    from evalsuite import zoo
    from evalsuite.experiments.sweep import SweepConfig, run_sweep
    from evalsuite.pipeline.evaluate import MetricOptions, parse_metrics
    from evalsuite.runtime.errors import EvalsuiteError

    chosen = parse_metrics(metrics)
    check_run_options(device, dry_run, calibrate, as_json)
    annotations: dict[str, Any] = {}
    if models:
        if reference is None:
            raise EvalsuiteError(
                "--reference is required with --model (the zoo's reference only fits the zoo); "
                "give a reference batch or ref-stats file"
            )
        rows = _named_rows(
            models, model_flags, preset, classifier, classifier_flags, classifier_preset, guidance
        )
    else:
        if model_flags or preset:
            raise EvalsuiteError("--model-flags/--preset given without --model")
        from evalsuite.zoo.shapes import CLASS_NAMES

        if guidance is not None:
            raise EvalsuiteError(
                "--guidance applies to --model rows; the zoo's rows have their own (its CFG "
                "row's scales are --cfg-scales)"
            )
        rows = _zoo_rows(classifier, classifier_flags, classifier_preset, cfg_scales)
        if reference is None:
            reference = str(zoo.reference())
        if judge is None and not no_judge:
            judge = str(zoo.asset(zoo.JUDGE))
        annotations["class_names"] = list(CLASS_NAMES)
        echo(
            f"no --model: sweeping the zoo ({zoo.ZOO_DIR}): unconditional = "
            f"{Path(rows[0].model).name}, conditional = {Path(rows[1].model).name}, both guided "
            f"by {Path(rows[0].classifier).name}"
            + (
                f", and {Path(rows[2].model).name} under classifier-free guidance "
                f"(CFG scales {','.join(f'{s:g}' for s in cfg_scales)})"
                if len(rows) > 2
                else ""
            )
            + f"; judge {Path(judge).name if judge else 'none'}; "
            f"reference {reference}",
            err=as_json,
        )
    config = SweepConfig(
        rows=rows,
        reference=reference,
        scales=scales,
        samplers=samplers or _default_samplers(rows),
        steps=steps,
        num_samples=num_samples,
        seed=seed,
        classes=classes,
        eta=eta,
        metrics=chosen,
        ref_stats=ref_stats,
        judge=None if no_judge else judge,
        bootstrap=bootstrap,
        bootstrap_seed=bootstrap_seed,
        inception_weights=inception_weights,
        metric_options=MetricOptions(),
    )
    if dry_run:
        # One plan per job: under torchrun only rank 0 prints it.
        from evalsuite.runtime.ranks import quiet_rank

        if not quiet_rank():
            show_plan(
                config,
                out,
                batch_size=batch_size,
                device=device,
                calibrate=calibrate,
                as_json=as_json,
            )
        return
    run_sweep(
        config,
        out,
        batch_size=batch_size,
        device=device,
        keep_samples=keep_samples,
        progress=not quiet,
        annotations=annotations,
        log=click.echo,
        shard=shard,
    )
    _finish(Path(out))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory. Default: runs/ablate-<spec name>.",
)
@click.option(
    "--absolute", is_flag=True, help="Show every row's FID, not differences from the baseline."
)
@run_options
@dry_run_options
@handle_errors
def ablate(
    spec: str | None,
    out: str | None,
    absolute: bool,
    batch_size: int,
    keep_samples: bool,
    device: str,
    quiet: bool,
    dry_run: bool,
    calibrate: bool,
    as_json: bool,
    shard: tuple[int, int] | None,
) -> None:
    """Compare architecture variants at several training points (the paper's Table 1).

    SPEC is a TOML file listing the variants (checkpoints per training point, architecture)
    and the shared sampling and evaluation settings; it is validated completely before any
    work. Default: the zoo's ablation spec (evalsuite/zoo/assets/ablation.toml). The table
    shows the architecture columns that differ, FID at each training point, the baseline in
    absolute numbers and the other rows as differences (--absolute: every row absolute).

    \b
    Examples:
      evalsuite ablate                                   # the zoo's variants
      evalsuite ablate my_ablation.toml --out runs/ablation --device cuda
      evalsuite report runs/ablation --absolute
    """
    from evalsuite import zoo
    from evalsuite.experiments.ablate import load_spec, run_ablation

    check_run_options(device, dry_run, calibrate, as_json)
    if spec is None:
        spec = str(zoo.asset(zoo.ABLATION_SPEC))
        echo(f"no SPEC: using the zoo's ablation spec {spec}", err=as_json)
    loaded = load_spec(spec)
    run_dir = Path(out) if out else Path("runs") / f"ablate-{Path(spec).stem}"
    echo(
        f"{len(loaded.variants)} variants x {len(loaded.points)} training points "
        f"({', '.join(loaded.points)}); baseline {loaded.baseline}; run directory {run_dir}",
        err=as_json,
    )
    if dry_run:
        from evalsuite.runtime.ranks import quiet_rank

        if not quiet_rank():
            show_plan(
                loaded.sweep_config(),
                run_dir,
                batch_size=batch_size,
                device=device,
                calibrate=calibrate,
                as_json=as_json,
            )
        return
    run_ablation(
        loaded,
        run_dir,
        batch_size=batch_size,
        device=device,
        keep_samples=keep_samples,
        progress=not quiet,
        log=click.echo,
        shard=shard,
    )
    _finish(run_dir, absolute=absolute)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write tables and figures. Default: RUN_DIR/report.",
)
@click.option("--absolute", is_flag=True, help="Ablations: absolute FID in every row.")
@click.option(
    "--partial",
    is_flag=True,
    help="Write the tables of the finished cells even if some cells have no record yet.",
)
@handle_errors
def report(run_dir: str, out: str | None, absolute: bool, partial: bool) -> None:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG, PDF) of a sweep or ablation run.

    Sweeps: the Table-4 layout (model x guidance scale; FID, sFID, IS, precision, recall, class
    agreement), trade-off curves and metrics vs scale. Ablations: the Table-1 layout and FID
    per training point. Both: a grid of samples per class and scale (grid.png).

    A run whose grid is not finished (shards still running, an interrupted sweep) gets no
    report: the missing cells are listed one a line (with the process running each, if any)
    and the exit code is 3; --partial writes the tables of the finished cells anyway.

    \b
    Examples:
      evalsuite report runs/sweep
      evalsuite report runs/ablate-ablation --absolute --out paper/tables
    """
    from evalsuite.experiments import runstore
    from evalsuite.experiments.report import to_markdown, write_report

    if Path(run_dir).is_dir() and (Path(run_dir) / runstore.CONFIG_NAME).is_file():
        missing = runstore.missing_cells(run_dir)
        if missing and not partial:
            total = len(runstore.read_config(run_dir).get("cells", []))
            click.echo(f"{run_dir}: {len(missing)} of {total} cells have no record yet:", err=True)
            for cell in missing:
                click.echo(f"  missing {cell.describe()}", err=True)
            click.echo(
                "rerun the sweep (or the shards that own them) to finish them, or give "
                "--partial for the tables of the finished cells",
                err=True,
            )
            sys.exit(INCOMPLETE_EXIT)
        with contextlib.suppress(OSError):
            runstore.export_records(Path(run_dir))
    result = write_report(run_dir, out, absolute=absolute)
    click.echo(result.table.caption)
    click.echo(to_markdown(result.table))
    for path in result.files:
        click.echo(f"wrote {path}")
