"""Checks on output paths made before any work: an output must never replace an input."""

from __future__ import annotations

import os
from pathlib import Path

from evalsuite.runtime.errors import EvalsuiteError


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when `a` and `b` name the same file: `os.path.samefile` when both exist (hard and
    symbolic links included), else equal resolved paths."""
    first, second = Path(a).expanduser(), Path(b).expanduser()
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def refuse_output_over_input(
    output: str | os.PathLike[str] | None,
    option: str,
    inputs: dict[str, str | os.PathLike[str] | None],
) -> None:
    """Raise `EvalsuiteError` when the output of `option` would replace one of `inputs`.

    `inputs` maps a description ("SAMPLES", "the baseline") to its path (None = not given).
    """
    if output is None:
        return
    for name, path in inputs.items():
        if path is not None and same_file(output, path):
            raise EvalsuiteError(
                f"{option} {output} is {name} ({path}); writing there would destroy it: "
                "choose another output path"
            )
