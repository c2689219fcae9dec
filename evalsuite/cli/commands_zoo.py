"""`evalsuite data` and `evalsuite train`: the procedural dataset and the zoo's trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from evalsuite.cli import handle_errors, main


@main.command()
@click.argument("split")
@click.option(
    "--num",
    type=int,
    required=True,
    help="Number of images.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    required=True,
    help="Output ADM batch (.npz: arr_0 uint8 NHWC, arr_1 int64 labels).",
)
@click.option(
    "--image-size",
    type=int,
    default=16,
    show_default=True,
    help="Resolution in pixels (the zoo's models are 16x16).",
)
@click.option(
    "--start",
    type=int,
    default=0,
    show_default=True,
    help="First image index (image i depends only on the split and i).",
)
@handle_errors
def data(split: str, num: int, out: str, image_size: int, start: int) -> None:
    """Write images of the procedural shapes dataset as an ADM batch.

    SPLIT is train, reference or heldout (independent images). Ten classes that differ only in
    shape; pose and colours are random and independent of the class. Labels are round-robin
    (index % 10), so 10,000 images hold 1,000 per class.

    \b
    Examples:
      evalsuite data reference --num 10000 --out shapes16_reference.npz
      evalsuite data heldout --num 10000 --out shapes16_heldout.npz
      evalsuite data train --num 64 --image-size 32 --out preview32.npz
    """
    from evalsuite.runtime.errors import EvalsuiteError
    from evalsuite.zoo.shapes import SPLITS, make_split, write_adm_batch

    if split not in SPLITS:
        raise EvalsuiteError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if num < 1:
        raise EvalsuiteError(f"--num must be >= 1, got {num}")
    if image_size < 4:
        raise EvalsuiteError(f"--image-size must be >= 4, got {image_size}")
    if start < 0:
        raise EvalsuiteError(f"--start must be >= 0, got {start}")
    images, labels = make_split(split, num, image_size, start=start)
    path = write_adm_batch(out, images, labels)
    click.echo(
        f"wrote {num} {image_size}x{image_size} images of the {split} split "
        f"(indices {start}..{start + num - 1}) to {path}"
    )


@main.group()
def train() -> None:
    """Train the zoo's models on the shapes dataset (CPU-friendly, resumable).

    \b
    Commands:
      evalsuite train unet --flags "..." --out DIR          diffusion UNet (IDDPM hybrid loss)
      evalsuite train classifier --flags "..." --out DIR    noise-aware or clean classifier
    Rerunning a command with the same --out continues an interrupted run.
    """


def training_options(fn: Any) -> Any:
    """Options shared by `train unet` and `train classifier`."""
    options = [
        click.option(
            "--flags",
            required=True,
            help='Architecture and diffusion as guided-diffusion flags, e.g. "--image_size 16 '
            '--num_channels 32 --num_classes 10 --learn_sigma True".',
        ),
        click.option(
            "--out",
            type=click.Path(file_okay=False),
            required=True,
            help="Output folder: final checkpoint, step checkpoints, log.jsonl, resumable state.",
        ),
        click.option(
            "--steps",
            type=int,
            required=True,
            help="Total optimizer steps.",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=32,
            show_default=True,
            help="Images per step.",
        ),
        click.option(
            "--lr",
            type=float,
            default=3e-4,
            show_default=True,
            help="AdamW learning rate (constant).",
        ),
        click.option(
            "--weight-decay",
            type=float,
            default=0.0,
            show_default=True,
            help="AdamW weight decay.",
        ),
        click.option(
            "--ema-rate",
            type=float,
            default=0.995,
            show_default=True,
            help="EMA decay of the saved weights (warm-up min(rate, (1+n)/(10+n))).",
        ),
        click.option(
            "--lr-anneal-steps",
            type=int,
            default=0,
            show_default=True,
            help="Lower the learning rate linearly over the run's last N steps (0: constant).",
        ),
        click.option(
            "--seed",
            type=int,
            default=0,
            show_default=True,
            help="Initialisation and per-step randomness (step k depends only on seed and k).",
        ),
        click.option(
            "--save-at",
            default="",
            show_default=True,
            help="Extra checkpoints at these steps, e.g. 1000,2000 (KIND_step1000.pt).",
        ),
        click.option(
            "--log-every",
            type=int,
            default=50,
            show_default=True,
            help="Steps per line of log.jsonl.",
        ),
        click.option(
            "--state-every",
            type=int,
            default=100,
            show_default=True,
            help="Steps between resumable states (train_state.pt).",
        ),
        click.option(
            "--resume/--no-resume",
            default=True,
            show_default=True,
            help="Continue from the state in --out, or start over.",
        ),
        click.option(
            "--quiet",
            is_flag=True,
            help="No progress bar.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def parse_steps(text: str) -> tuple[int, ...]:
    """Parse a comma list of steps such as "1000,2000" ("" = none)."""
    from evalsuite.runtime.errors import EvalsuiteError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EvalsuiteError(
            f"--save-at must be a comma list of steps like 1000,2000, got {text!r}"
        ) from None


def _report(path: Path) -> None:
    """Print the checkpoint path and the last log line's metrics."""
    import json

    log = path.parent / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    summary = ", ".join(
        f"{key} {value:.4g}"
        for key, value in last.items()
        if key not in ("step", "seconds_per_step")
    )
    click.echo(f"wrote {path}" + (f" (step {last['step']}: {summary})" if last else ""))


@train.command("unet")
@training_options
@click.option(
    "--label-dropout",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=None,
    help="Probability that a label is replaced by the null class (classifier-free guidance; "
    "needs --null_class True in --flags). Default: 0.1 with a null class, else 0.",
)
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Warm-start from this evalsuite UNet checkpoint (same architecture; one without a null "
    "class may start a --null_class True model: the null row starts as the mean class row).",
)
@handle_errors
def train_unet_command(
    flags: str,
    out: str,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    ema_rate: float,
    lr_anneal_steps: int,
    seed: int,
    save_at: str,
    log_every: int,
    state_every: int,
    resume: bool,
    quiet: bool,
    label_dropout: float | None,
    init: str | None,
) -> None:
    """Train an ADM UNet with the IDDPM hybrid loss (eps MSE + vb, learned-range variance).

    Writes OUT/unet.pt (EMA weights, architecture embedded; load it with --model OUT/unet.pt).

    \b
    Examples:
      evalsuite train unet --out runs/cond --steps 3000 --save-at 1000,2000 \\
        --flags "--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,1,1
                 --attention_resolutions 8,4 --num_head_channels 32 --resblock_updown True
                 --learn_sigma True --class_cond True --num_classes 10 --noise_schedule cosine"
      # same, interrupted and rerun: continues from the last state in runs/cond
      # classifier-free guidance: a null class learned with label dropout 0.1, warm-started
      evalsuite train unet --out runs/cfg --steps 3000 --init runs/cond/unet.pt \\
        --label-dropout 0.1 --flags "<the flags above> --null_class True"
    """
    from evalsuite.models import build_configs
    from evalsuite.zoo.train import train_unet

    model_config, diffusion_config = build_configs(flags, "unet")
    path = train_unet(
        model_config,
        diffusion_config,
        out=out,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ema_rate=ema_rate,
        lr_anneal_steps=lr_anneal_steps,
        seed=seed,
        save_at=parse_steps(save_at),
        log_every=log_every,
        state_every=state_every,
        resume=resume,
        progress=not quiet,
        label_dropout=label_dropout,
        init=init,
    )
    _report(path)


@train.command("classifier")
@training_options
@click.option(
    "--noised/--clean",
    default=True,
    show_default=True,
    help="Noise-aware classifier on x_t at uniform t (for guidance), or a clean-image judge.",
)
@handle_errors
def train_classifier_command(
    flags: str,
    out: str,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    ema_rate: float,
    lr_anneal_steps: int,
    seed: int,
    save_at: str,
    log_every: int,
    state_every: int,
    resume: bool,
    quiet: bool,
    noised: bool,
) -> None:
    """Train a classifier with cross-entropy: noise-aware (guidance) or clean (judge).

    Writes OUT/classifier.pt (EMA weights, architecture embedded).

    \b
    Examples:
      evalsuite train classifier --noised --out runs/classifier --steps 1500 \\
        --flags "--image_size 16 --classifier_width 32 --classifier_depth 1
                 --classifier_attention_resolutions 8,4 --num_classes 10 --noise_schedule cosine"
      evalsuite train classifier --clean --seed 7 --out runs/judge --steps 1000 \\
        --flags "--image_size 16 --classifier_width 64 --classifier_depth 2
                 --classifier_attention_resolutions 4 --classifier_pool adaptive --num_classes 10"
    """
    from evalsuite.models import build_configs
    from evalsuite.zoo.train import train_classifier

    classifier_config, diffusion_config = build_configs(flags, "classifier")
    path = train_classifier(
        classifier_config,
        diffusion_config,
        noised=noised,
        out=out,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ema_rate=ema_rate,
        lr_anneal_steps=lr_anneal_steps,
        seed=seed,
        save_at=parse_steps(save_at),
        log_every=log_every,
        state_every=state_every,
        resume=resume,
        progress=not quiet,
    )
    _report(path)
