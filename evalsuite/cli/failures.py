"""How the CLI fails: one line per error, the full traceback of a bug in a file (or with --debug).

- Usage errors (unknown option, bad value): one line, `Error: … (see 'evalsuite CMD --help')`,
  exit 2, instead of click's usage block.
- A full disk or quota anywhere (OSError ENOSPC/EDQUOT): one line naming the file, exit 2.
- Any other unexpected exception is a bug: one line naming the command, where it happened and
  the file holding the full traceback (under the cache folder, else the temp folder), exit 70;
  with `evalsuite --debug` (or EVALSUITE_DEBUG=1) the traceback is printed instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

# Exit code of an internal error (a bug): neither bad input (2) nor a regression found (1).
INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE; 3 means an unfinished grid (`report`)
DEBUG_ENV = "EVALSUITE_DEBUG"


class EvalsuiteGroup(click.Group):
    """The command group; in standalone mode it prints usage errors as one line."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":
                error.show()
                sys.exit(error.exit_code)
            hint = ""
            if error.ctx is not None:
                hint = f" (see '{error.ctx.command_path} --help')"
            click.echo(f"Error: {error.format_message()}{hint}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def debug_enabled() -> bool:
    """True with `evalsuite --debug …` or EVALSUITE_DEBUG=1."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def _command_path() -> str:
    ctx = click.get_current_context(silent=True)
    return ctx.command_path if ctx is not None else "evalsuite"


def _innermost_frame(error: BaseException) -> str:
    """`file:line in function` of the deepest evalsuite frame of the traceback (else the last)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown place"
    package = str(Path(__file__).resolve().parents[1])
    ours = [f for f in frames if str(Path(f.filename).resolve()).startswith(package)]
    frame = (ours or frames)[-1]
    name = frame.filename
    if name.startswith(package):
        name = "evalsuite" + name[len(package) :]
    return f"{name}:{frame.lineno} in {frame.name}"


def _write_traceback(error: BaseException, command: str) -> Path | None:
    """Write the full traceback to a new file; None when no folder is writable."""
    text = (
        f"command: {' '.join(sys.argv)}\ncwd: {os.getcwd()}\n"
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n"
        + "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    name = f"{command.split()[-1]}-{stamp}-{os.getpid()}.txt"
    folders = []
    try:
        from evalsuite.runtime.cache import cache_dir

        folders.append(cache_dir() / "errors")
    except OSError:
        pass
    folders.append(Path(tempfile.gettempdir()) / "evalsuite-errors")
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def report_internal_error(error: Exception) -> NoReturn:
    """One line about an unexpected exception and where its traceback went; exit 70."""
    command = _command_path()
    message = str(error).strip().splitlines()
    summary = f"{type(error).__name__}: {message[0][:200]}" if message else type(error).__name__
    where = _innermost_frame(error)
    path = _write_traceback(error, command)
    if path is None:
        traceback.print_exception(type(error), error, error.__traceback__)
        saved = "the traceback is above (no folder was writable)"
    else:
        saved = f"full traceback in {path}"
    click.echo(
        f"Error: internal error while running `{command}` ({summary}, at {where}); {saved}; "
        "rerun with `evalsuite --debug …` to print it, and please report it",
        err=True,
    )
    sys.exit(INTERNAL_ERROR_EXIT)


def disk_full_message(error: OSError) -> str:
    """One line for a full disk or quota hit outside `atomic_path` (appends, library writes)."""
    from evalsuite.runtime.cache import disk_full_error

    if error.filename:
        return str(disk_full_error(Path(os.fsdecode(error.filename)), error))
    return (
        f"{os.strerror(error.errno or 0).lower()} while running `{_command_path()}`; "
        "free some space (or point --out / EVALSUITE_CACHE elsewhere) and rerun"
    )
