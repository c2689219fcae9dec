"""`--dry-run`, `--calibrate` and `--json` of `sweep` and `ablate`: size a run before launching it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from evalsuite.cli.commands_eval import check_device


def dry_run_options(fn: Any) -> Any:
    """Options shared by `sweep` and `ablate` for sizing a run (see evalsuite.experiments.plan)."""
    options = [
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print the grid and the network evaluations of every cell, then stop: nothing "
            "is sampled, Inception is not loaded, nothing is written.",
        ),
        click.option(
            "--calibrate",
            is_flag=True,
            help="With --dry-run: time a few sampling steps and Inception batches on --device "
            "and estimate the time per cell and for the grid (device-hours).",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            help="With --dry-run: print the plan as JSON (other lines go to stderr).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def check_run_options(device: str, dry_run: bool, calibrate: bool, as_json: bool) -> None:
    """Validate the device and the dry-run flags.

    A plain dry run only counts, so it accepts a CUDA device on a machine without one (sizing
    a GPU job from a login node); --calibrate runs on the device and needs it.
    """
    from evalsuite.runtime.errors import EvalsuiteError

    if (calibrate or as_json) and not dry_run:
        flag = "--calibrate" if calibrate else "--json"
        raise EvalsuiteError(f"{flag} goes with --dry-run; add --dry-run (or drop {flag})")
    if dry_run and not calibrate:
        import torch

        try:
            torch.device(device)
        except RuntimeError:
            raise EvalsuiteError(
                f"--device {device!r} is not a torch device; use cpu or cuda[:N]"
            ) from None
        return
    check_device(device)


def show_plan(
    config: Any, out: str | Path, *, batch_size: int, device: str, calibrate: bool, as_json: bool
) -> None:
    """Plan (and optionally calibrate) a run of `config` into `out` and print it."""
    from evalsuite.experiments.plan import calibrate as run_calibration
    from evalsuite.experiments.plan import format_plan, plan_grid

    plan, architectures = plan_grid(config, batch_size=batch_size, device=device, run_dir=out)
    if calibrate:
        run_calibration(plan, config, architectures, log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(plan.to_dict(), indent=2))
    else:
        click.echo(format_plan(plan))
