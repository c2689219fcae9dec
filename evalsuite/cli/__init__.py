"""The evalsuite command line: a thin click layer over the library.

Each command lives in its own module and registers itself on `main`; every command validates its
inputs before expensive work and turns `EvalsuiteError` into one line on stderr with exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from evalsuite import __version__
from evalsuite.runtime.errors import EvalsuiteError


class UserError(click.ClickException):
    """A user-input error: printed as one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for command callbacks: `EvalsuiteError` becomes `UserError` (exit 2, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EvalsuiteError as error:
            raise UserError(str(error)) from None
        except KeyboardInterrupt:
            click.echo(
                "Interrupted; rerun the same command to continue where it stopped.", err=True
            )
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="evalsuite")
def main() -> None:
    """evalsuite: sample ADM-style diffusion models and score them with the ADM protocol.

    \b
    Commands at a glance (with no model or reference they use the embedded zoo):
      evalsuite sweep --scales 0,1,4           guidance-scale sweep: sample, score, tables, curves
      evalsuite ablate [SPEC.toml]             architecture variants, the paper's Table 1
      evalsuite report RUN_DIR                 Markdown/LaTeX/CSV tables and figures of a run
      evalsuite evaluate [REFERENCE] SAMPLES   FID, sFID, IS, precision/recall, KID
      evalsuite ref-stats REFERENCE --out F    reference statistics for later evaluations
      evalsuite sample --out samples.npz       generate an ADM sample batch
      evalsuite regress BASELINE               CI regression check (exit 0 pass, 1 regression)
      evalsuite data / train                   the shapes dataset and the zoo's trainer
      evalsuite info                           Inception weights and environment
      evalsuite weights fetch                  download full Inception weights (for IS)
    Run `evalsuite COMMAND --help` for options and worked examples.
    """


def _register_commands() -> None:
    # Command modules import their heavy dependencies lazily inside the callbacks.
    from evalsuite.cli import (  # noqa: F401
        commands_eval,
        commands_regress,
        commands_sample,
        commands_sweep,
        commands_weights,
        commands_zoo,
    )


_register_commands()
