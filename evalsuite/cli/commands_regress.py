"""`evalsuite regress`: check (or --update, --init) a regression baseline of sample quality."""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from evalsuite.cli import handle_errors, main
from evalsuite.cli.commands_eval import check_device, device_option, weights_option
from evalsuite.cli.commands_sample import (
    guidance_options,
    model_options,
    resolve_steps,
    sampling_options,
)

# Options that describe a new protocol; only --init takes them (a baseline fixes its protocol).
INIT_ONLY = (
    "model_path",
    "model_flags",
    "preset",
    "classifier_path",
    "classifier_flags",
    "classifier_preset",
    "sampler",
    "steps",
    "eta",
    "guidance_scale",
    "guidance",
    "classifier_scale",
    "classes",
    "seed",
    "precision",
    "num_samples",
    "reference",
    "ref_stats",
    "metrics",
    "tolerances",
    "bootstrap_resamples",
    "bootstrap_seed",
    "pr_k",
    "kid_subsets",
    "kid_subset_size",
    "description",
)


def _architecture(flags: str | None, preset: str | None, names: str) -> str:
    from evalsuite.experiments.regress import EMBEDDED, FLAGS_PREFIX, PRESET_PREFIX
    from evalsuite.runtime.errors import EvalsuiteError

    if flags is not None and preset is not None:
        raise EvalsuiteError(f"give either {names}, not both")
    if preset is not None:
        return PRESET_PREFIX + preset
    if flags is not None:
        return FLAGS_PREFIX + flags
    return EMBEDDED


@main.command()
@click.argument("baseline", type=click.Path(dir_okay=False))
@click.option(
    "--update",
    is_flag=True,
    help="Rewrite the expected values, ci bounds and hashes from a fresh run (keeps tolerances).",
)
@click.option(
    "--init",
    "init_",
    is_flag=True,
    help="Create BASELINE from a run of the protocol given by the options below.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the machine-readable result here.",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append a Markdown table here, e.g. --markdown $GITHUB_STEP_SUMMARY.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Samples per sampling pass (does not change the samples).",
)
@device_option
@weights_option
@click.option(
    "--keep-samples",
    type=click.Path(dir_okay=False),
    default=None,
    help="Keep the regenerated sample batch at this new .npz path (default: a temporary file).",
)
@click.option(
    "--samples",
    type=click.Path(dir_okay=False),
    default=None,
    help="Score this batch made by `evalsuite sample` from the baseline's protocol instead of "
    "regenerating (its .json sidecar must match the baseline's checkpoints and settings).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@model_options
@sampling_options
@guidance_options
@click.option(
    "--num-samples",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="[--init] Number of samples N (FID is biased at small N: the baseline fixes N and seed).",
)
@click.option(
    "--reference",
    default=None,
    help="[--init] Reference batch or ref-stats file (default: the zoo's, zoo:shapes16_reference.npz).",
)
@click.option(
    "--ref-stats",
    type=click.Choice(["auto", "stored", "recompute"]),
    default="auto",
    show_default=True,
    help="[--init] Stored reference moments or recomputed from its images.",
)
@click.option(
    "--metrics",
    default="fid,kid,pr",
    show_default=True,
    help="[--init] Comma list from fid,sfid,is,pr,kid.",
)
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    help="[--init] METRIC=KIND:AMOUNT, repeatable or comma-separated, e.g. fid=rel:0.05, "
    "precision=abs:0.03, kid=ci:0.95. Defaults: fid/sfid/inception_score rel 0.05, "
    "precision/recall abs 0.05, kid ci 0.95.",
)
@click.option(
    "--bootstrap-resamples",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="[--init] Bootstrap resamples for ci tolerances.",
)
@click.option(
    "--bootstrap-seed", type=int, default=0, show_default=True, help="[--init] Bootstrap seed."
)
@click.option(
    "--pr-k",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="[--init] Neighbourhood size k of precision/recall.",
)
@click.option(
    "--kid-subsets",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="[--init] Number of KID subsets.",
)
@click.option(
    "--kid-subset-size",
    type=click.IntRange(min=2),
    default=1000,
    show_default=True,
    help="[--init] KID subset size (capped at the set sizes).",
)
@click.option("--description", default=None, help="[--init] A line describing the baseline.")
@click.pass_context
@handle_errors
def regress(ctx: click.Context, baseline: str, **options: Any) -> None:
    """Check sample quality against the regression BASELINE (a TOML file); exit 0 pass, 1 regression.

    Regenerates the baseline's samples (same checkpoints, settings, N and per-sample seeds: bitwise
    identical on the same CPU setup), scores them against its reference and compares every metric
    with its tolerance. Exit 2, without comparing, when the baseline is unusable or its protocol no
    longer matches (a checkpoint, the reference or the Inception weights changed hash).

    \b
    Examples:
      # CI: check, and put the table in the job summary
      evalsuite regress baselines/zoo.toml --markdown "$GITHUB_STEP_SUMMARY" --json regress.json
      # after an intended change of the model: record the new values and hashes
      evalsuite regress --update baselines/zoo.toml
      # a new baseline for the embedded zoo (256 guided DDIM-10 samples)
      evalsuite regress --init baselines/zoo.toml --model zoo:cond_unet.pt \\
          --classifier zoo:classifier.pt --guidance-scale 1.0 --sampler ddim --steps ddim10 \\
          --num-samples 256 --seed 0 --metrics fid,kid,pr --tolerance fid=rel:0.05,kid=ci:0.95
      # a bare guided-diffusion checkpoint against an ADM reference batch
      evalsuite regress --init my.toml --model 64x64_diffusion.pt --preset 64x64_diffusion \\
          --reference VIRTUAL_imagenet64_labeled.npz --steps ddim25 --sampler ddim --num-samples 500
      # score samples made elsewhere (e.g. on a GPU job) with the baseline's settings
      evalsuite sample --guidance-scale 1.0 --sampler ddim --steps ddim10 --num-samples 256 \\
          --seed 0 --out s.npz
      evalsuite regress baselines/zoo.toml --samples s.npz
      # every process of a node samples and extracts features; rank 0 scores and prints
      torchrun --nproc_per_node 4 -m evalsuite regress baselines/zoo.toml
    """
    from evalsuite.experiments.regress import ranks
    from evalsuite.runtime.errors import EvalsuiteError

    try:
        _regress(ctx, baseline, options)
    except (EvalsuiteError, click.UsageError) as error:
        # Under torchrun: one line from rank 0, other ranks only report their own failures.
        if not ranks.reported_here(error):
            ctx.exit(2)
        raise


def _regress(ctx: click.Context, baseline: str, options: dict[str, Any]) -> None:
    from evalsuite.experiments import regress as lib
    from evalsuite.experiments.regress import ranks

    if options["samples"] is not None and (options["update"] or options["init_"]):
        raise click.UsageError("--samples scores a batch for a check; not with --update or --init")
    if options["update"] and options["init_"]:
        raise click.UsageError("--update and --init exclude each other")
    if not options["init_"]:
        given = [
            name
            for name in INIT_ONLY
            if ctx.get_parameter_source(name)
            in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        ]
        if given:
            option = next(p.opts[0] for p in ctx.command.params if p.name == given[0])
            raise click.UsageError(
                f"{option} only applies with --init; the baseline file fixes the protocol "
                "(edit it, or --init a new one)"
            )
    _refuse_overwrites(baseline, options)
    check_device(options["device"])
    run = {
        "inception_weights": options["inception_weights"],
        "device": options["device"],
        "batch_size": options["batch_size"],
        "progress": not options["quiet"],
        "keep_samples": options["keep_samples"],
    }
    if options["init_"]:
        result = _init(baseline, options, run)
    elif options["update"]:
        _, result = lib.update(baseline, **run)
    else:
        result = lib.check(baseline, samples=options["samples"], **run)

    # Under torchrun every rank holds the result; rank 0 prints and writes the reports.
    def report() -> None:
        for line in lib.format_table(result):
            click.echo(line)
        if options["json_path"]:
            lib.write_json(options["json_path"], result)
        if options["markdown_path"]:
            lib.append_markdown(options["markdown_path"], result)

    ranks.on_main(report)
    if not result.passed and result.action == "check":
        ctx.exit(1)


def _refuse_overwrites(baseline: str, options: dict[str, Any]) -> None:
    """No output (--json, --markdown, --keep-samples and its record, --init's BASELINE) may
    replace an input or another output."""
    from pathlib import Path

    from evalsuite.runtime.paths import refuse_output_over_input

    keep = options["keep_samples"]
    inputs = {
        "the model": options["model_path"],
        "the classifier": options["classifier_path"],
        "the reference": options["reference"],
    }
    outputs = {
        "--json": options["json_path"],
        "--markdown": options["markdown_path"],
        "--keep-samples": keep,
        "the record of --keep-samples": None if keep is None else Path(keep).with_suffix(".json"),
    }
    if options["init_"]:
        refuse_output_over_input(baseline, "--init", inputs)
    inputs["the baseline"] = baseline
    for option, path in outputs.items():
        refuse_output_over_input(path, option, inputs)
        inputs[f"the {option} output"] = path


def _init(baseline: str, options: dict[str, Any], run: dict[str, Any]) -> Any:
    from evalsuite import zoo
    from evalsuite.experiments import regress as lib
    from evalsuite.models.diffusers_source import is_diffusers_spec, parse_spec
    from evalsuite.pipeline.evaluate import parse_metrics
    from evalsuite.pipeline.sample import SamplingSettings, check_guidance_choice

    settings = SamplingSettings(
        num_samples=options["num_samples"],
        sampler=options["sampler"]
        or ("scheduler" if is_diffusers_spec(options["model_path"]) else "ddpm"),
        steps=resolve_steps(options["steps"], options["model_flags"]),
        eta=options["eta"],
        guidance_scale=options["guidance_scale"],
        classes=options["classes"],
        seed=options["seed"],
        precision=options["precision"],
        guidance=check_guidance_choice(options["guidance"], options["classifier_path"] is not None),
        classifier_scale=options["classifier_scale"],
    )
    evaluation = lib.EvaluationEntry(
        inception_weights_sha256=None,
        pr_k=options["pr_k"],
        kid_subsets=options["kid_subsets"],
        kid_subset_size=options["kid_subset_size"],
        bootstrap_resamples=options["bootstrap_resamples"],
        bootstrap_seed=options["bootstrap_seed"],
    )
    if options["classifier_path"] is None and (
        options["classifier_flags"] or options["classifier_preset"]
    ):
        raise click.UsageError(
            "--classifier-flags/--classifier-preset given without --classifier PATH"
        )
    model, model_architecture = (
        options["model_path"],
        _architecture(options["model_flags"], options["preset"], "--model-flags or --preset"),
    )
    if is_diffusers_spec(model):
        # A diffusers folder describes itself; the baseline records the folder.
        if model_architecture != lib.EMBEDDED:
            raise click.UsageError(f"--model-flags/--preset describe ADM state dicts, not {model}")
        model, model_architecture = str(parse_spec(model)), lib.DIFFUSERS
    _, result = lib.init(
        baseline,
        model=model or lib.ZOO_PREFIX + zoo.MODEL,
        model_architecture=model_architecture,
        classifier=options["classifier_path"],
        classifier_architecture=_architecture(
            options["classifier_flags"],
            options["classifier_preset"],
            "--classifier-flags or --classifier-preset",
        ),
        reference=options["reference"] or lib.ZOO_PREFIX + zoo.REFERENCE,
        ref_stats=options["ref_stats"],
        sampling=settings,
        metrics=parse_metrics(options["metrics"]),
        tolerances=lib.parse_tolerances(options["tolerances"]),
        evaluation=evaluation,
        description=options["description"],
        **run,
    )
    return result
