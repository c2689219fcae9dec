"""The evalsuite command line: a thin click layer over the library.

Each command lives in its own module and registers itself on `main`; every command validates its
inputs before expensive work and turns `EvalsuiteError` into one line on stderr with exit code 2.
How everything else fails (usage errors, a full disk, bugs) is in `evalsuite.cli.failures`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from evalsuite import __version__
from evalsuite.cli.failures import (
    EvalsuiteGroup,
    debug_enabled,
    disk_full_message,
    report_internal_error,
)
from evalsuite.runtime.errors import EvalsuiteError


class UserError(click.ClickException):
    """A user-input error: printed as one line, exit code 2.

    rank_local: seen by this torchrun rank alone, so ranks > 0 print it too (see __main__).
    """

    exit_code = 2
    rank_local = False

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for command callbacks: `EvalsuiteError` becomes `UserError` (exit 2, no traceback).

    A full disk is reported in one line (exit 2); any other unexpected exception as an internal
    error with its traceback saved to a file (exit 70), or raised as is under --debug.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EvalsuiteError as error:
            user_error = UserError(str(error))
            user_error.rank_local = getattr(error, "printed_by_main", True) is False
            raise user_error from None
        except KeyboardInterrupt:
            click.echo(
                "Interrupted; rerun the same command to continue where it stopped.", err=True
            )
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            from evalsuite.runtime.cache import DISK_FULL_ERRNOS

            if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
                raise UserError(disk_full_message(error)) from None
            if debug_enabled():
                raise
            report_internal_error(error)

    return wrapper


@click.group(
    cls=EvalsuiteGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(__version__, prog_name="evalsuite")
@click.option(
    "--debug",
    is_flag=True,
    help="Print the full traceback of an internal error instead of saving it to a file.",
)
def main(debug: bool) -> None:
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
