"""`evalsuite sample`: an ADM sample batch from a checkpoint (DDPM/DDIM, classifier guidance)."""

from __future__ import annotations

from typing import Any

import click

from evalsuite.cli import handle_errors, main
from evalsuite.cli.commands_eval import check_device


def model_options(fn: Any) -> Any:
    """--model/--model-flags/--preset and --classifier/--classifier-flags/--classifier-preset."""
    options = [
        click.option(
            "--model",
            "model_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Diffusion checkpoint (.pt): guided-diffusion state dict or evalsuite checkpoint, "
            "or diffusers:FOLDER (a diffusers save_pretrained folder; needs the diffusers extra). "
            "Default: the zoo's class-conditional model.",
        ),
        click.option(
            "--model-flags",
            default=None,
            help='Architecture as guided-diffusion flags, e.g. "--image_size 64 --num_channels 192 …".',
        ),
        click.option(
            "--preset",
            default=None,
            help="Architecture named after a released checkpoint, e.g. 256x256_diffusion.",
        ),
        click.option(
            "--classifier",
            "classifier_path",
            type=click.Path(dir_okay=False),
            default=None,
            help="Noise-aware classifier checkpoint for guidance.",
        ),
        click.option(
            "--classifier-flags",
            default=None,
            help="Classifier architecture as guided-diffusion flags.",
        ),
        click.option(
            "--classifier-preset",
            default=None,
            help="Classifier architecture preset, e.g. 256x256_classifier.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_models(
    model_path: str | None,
    model_flags: str | None,
    preset: str | None,
    classifier_path: str | None,
    classifier_flags: str | None,
    classifier_preset: str | None,
    guidance_scale: float = 0.0,
    guidance: str = "classifier",
):
    """Load the diffusion model and optional classifier named on the command line.

    Without --model the zoo's class-conditional model is used (and its classifier when guiding);
    with `guidance` "cfg" the zoo's null-class model.
    """
    from evalsuite.models.checkpoint import load_checkpoint
    from evalsuite.models.source import load_diffusion_model
    from evalsuite.pipeline.sample import SamplingModels
    from evalsuite.runtime.errors import EvalsuiteError

    if model_path is None:
        from evalsuite import zoo

        if model_flags or preset:
            raise EvalsuiteError("--model-flags/--preset given without --model PATH")
        if guidance == "cfg":
            model_path = str(zoo.asset(zoo.CFG_MODEL))
            click.echo(f"no --model given: using the zoo's null-class (CFG) model ({model_path})")
        else:
            model_path = str(zoo.asset(zoo.MODEL))
            click.echo(f"no --model given: using the zoo's class-conditional model ({model_path})")
        if classifier_path is None and guidance_scale > 0:
            classifier_path = str(zoo.asset(zoo.CLASSIFIER))
            click.echo(f"no --classifier given: using the zoo's classifier ({classifier_path})")
    if classifier_path is None and (classifier_flags or classifier_preset):
        raise EvalsuiteError(
            "--classifier-flags/--classifier-preset given without --classifier PATH"
        )
    if classifier_path is not None:
        from pathlib import Path

        if not Path(classifier_path).is_file():
            raise EvalsuiteError(f"{classifier_path}: no such checkpoint file")
    model = load_diffusion_model(model_path, flags=model_flags, preset=preset)
    classifier = None
    if classifier_path is not None:
        classifier = load_checkpoint(
            classifier_path, "classifier", flags=classifier_flags, preset=classifier_preset
        )
    return SamplingModels(model=model, classifier=classifier)


def resolve_steps(steps: str, model_flags: str | None) -> str:
    """--steps, or the --timestep_respacing of --model-flags when --steps was not given.

    Both given and different is a contradiction and refused (`EvalsuiteError`).
    """
    from evalsuite.models.config import parse_flags
    from evalsuite.runtime.errors import EvalsuiteError

    respacing = parse_flags(model_flags).get("timestep_respacing") if model_flags else None
    if not respacing:
        return steps
    ctx = click.get_current_context(silent=True)
    steps_given = ctx is not None and ctx.get_parameter_source("steps") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    )
    if not steps_given:
        return str(respacing)
    if str(respacing) != steps:
        raise EvalsuiteError(
            f"--steps {steps} contradicts --timestep_respacing {respacing} in --model-flags; "
            "give the respacing once (--steps is enough)"
        )
    return steps


def guidance_options(fn: Any) -> Any:
    """--guidance (what --guidance-scale scales) and --classifier-scale (a gradient on top of CFG)."""
    options = [
        click.option(
            "--guidance",
            type=click.Choice(["classifier", "cfg"]),
            default=None,
            help="What --guidance-scale scales: the classifier gradient (ADM; the default, and "
            "needs --classifier when given) or classifier-free guidance (cfg: needs a model "
            "with a null class, e.g. the zoo's cfg_unet.pt).",
        ),
        click.option(
            "--classifier-scale",
            type=float,
            default=0.0,
            show_default=True,
            help="With --guidance cfg and --classifier: also add the classifier gradient at "
            "this scale (ADM convention) on top of classifier-free guidance.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sampling_options(fn: Any) -> Any:
    options = [
        click.option(
            "--sampler",
            type=click.Choice(["ddpm", "ddim", "scheduler"]),
            default=None,
            help="Ancestral (DDPM) or DDIM sampling, or a diffusers folder's own scheduler. "
            "Default: ddpm; scheduler for --model diffusers:FOLDER.",
        ),
        click.option(
            "--steps",
            default="250",
            show_default=True,
            help='Respacing: "250", "ddim25", "10,20,30", or "" for all steps; with --sampler '
            "scheduler the number of inference steps. Default: --timestep_respacing of "
            "--model-flags if given, else 250.",
        ),
        click.option(
            "--eta",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="DDIM eta (0 = deterministic).",
        ),
        click.option(
            "--guidance-scale",
            type=float,
            default=0.0,
            show_default=True,
            help="Guidance scale s, >= 0. --guidance classifier: the classifier gradient's scale "
            "(0 = unguided). --guidance cfg: eps(x,∅) + s (eps(x,y) - eps(x,∅)), diffusers' "
            "convention: s = 1 is the conditional model, s = 0 the unconditional one; the CFG "
            "paper's w = s - 1.",
        ),
        click.option(
            "--classes",
            default="uniform",
            show_default=True,
            help="uniform (i.i.d., as published), balanced, or a list like 0,3,7.",
        ),
        click.option(
            "--seed",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Sample i depends only on (seed, i).",
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "fp16", "bf16"]),
            default="fp32",
            show_default=True,
            help="Network precision; fp16/bf16 on CUDA only.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@model_options
@sampling_options
@guidance_options
@click.option(
    "--num-samples", type=int, default=16, show_default=True, help="Number of samples to generate."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Samples per forward pass (does not change the result).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Output ADM sample batch (.npz); a sidecar .json records the config.",
)
@click.option(
    "--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1, …)."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def sample(
    model_path: str | None,
    model_flags: str | None,
    preset: str | None,
    classifier_path: str | None,
    classifier_flags: str | None,
    classifier_preset: str | None,
    sampler: str,
    steps: str,
    eta: float,
    guidance_scale: float,
    classes: str,
    seed: int,
    precision: str,
    guidance: str | None,
    classifier_scale: float,
    num_samples: int,
    batch_size: int,
    out: str,
    device: str,
    quiet: bool,
) -> None:
    """Generate an ADM sample batch (arr_0 uint8 N,H,W,3 and arr_1 labels) from a checkpoint.

    Samples are seeded per index, so the file is identical for any --batch-size and any number of
    processes. Finished batches are saved as they complete: rerun the same command after an
    interrupt (even SIGKILL) to continue.

    \b
    Examples:
      # ADM-G ImageNet 256, 250 DDPM steps, guidance scale 1.0 (the paper's Table 4 row)
      evalsuite sample --model 256x256_diffusion.pt --preset 256x256_diffusion \\
          --classifier 256x256_classifier.pt --classifier-preset 256x256_classifier \\
          --guidance-scale 1.0 --num-samples 50000 --batch-size 64 --device cuda --out adm_g.npz
      # 25 DDIM steps
      evalsuite sample --model m.pt --preset 128x128_diffusion --sampler ddim --steps ddim25 --out s.npz
      # Classifier-free guidance with the zoo's null-class model (s = 1: plain conditional)
      evalsuite sample --guidance cfg --guidance-scale 3 --sampler ddim --steps ddim25 \\
          --classes balanced --out cfg.npz
      # A diffusers folder (save_pretrained) with its own scheduler, 50 steps, CFG scale 4
      evalsuite sample --model diffusers:./dit --guidance cfg --guidance-scale 4 --steps 50 \\
          --out dit.npz
      # Several GPUs: indices are sharded, the file equals the single-process one
      torchrun --nproc_per_node 8 -m evalsuite sample --model m.pt --preset 64x64_diffusion --out s.npz
    """
    import dataclasses

    from evalsuite.models.diffusers_source import DiffusersModel
    from evalsuite.pipeline.sample import SamplingSettings, check_guidance_choice, generate

    settings = SamplingSettings(
        num_samples=num_samples,
        sampler=sampler or "ddpm",
        steps=resolve_steps(steps, model_flags),
        eta=eta,
        guidance_scale=guidance_scale,
        classes=classes,
        seed=seed,
        precision=precision,
        guidance=guidance or "classifier",
        classifier_scale=classifier_scale,
    )
    settings.validate()
    check_device(device)
    models = load_models(
        model_path,
        model_flags,
        preset,
        classifier_path,
        classifier_flags,
        classifier_preset,
        settings.classifier_gradient_scale,
        settings.guidance,
    )
    check_guidance_choice(guidance, models.classifier is not None)
    if sampler is None and isinstance(models.model, DiffusersModel):
        # A diffusers folder samples with its own scheduler unless --sampler says otherwise.
        settings = dataclasses.replace(settings, sampler="scheduler")
    record = generate(
        models, settings, out, batch_size=batch_size, device=device, progress=not quiet
    )
    from evalsuite.runtime import dist

    if dist.is_main():
        click.echo(
            f"wrote {out} ({record['num_samples']} samples) and {out.rsplit('.', 1)[0]}.json"
        )
