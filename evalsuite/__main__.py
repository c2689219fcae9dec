"""`python -m evalsuite …` (also what `torchrun -m evalsuite …` runs)."""

import sys

import click

from evalsuite.cli import main
from evalsuite.runtime.ranks import quiet_rank


def run() -> None:
    """Run the CLI; on torchrun ranks > 0 print only errors that rank alone saw.

    Every rank parses the same command line and agrees on input errors, so rank 0's line is
    the job's one message; another rank adds its own only when it lost contact with the job.
    """
    if not quiet_rank():
        main()
        return
    try:
        # Without standalone mode click returns the code of `ctx.exit(code)` instead of raising.
        code = main(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as error:
        if getattr(error, "rank_local", False):
            error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    run()
