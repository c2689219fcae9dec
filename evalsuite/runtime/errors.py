"""User-facing errors and notes.

`EvalsuiteError`: the CLI prints its message as one line and exits with code 2. `note`: one line
on stderr about something evalsuite recovered from (a damaged cache entry recomputed, say).
"""

from __future__ import annotations

import sys


class EvalsuiteError(Exception):
    """Bad input or an unusable file. The message says what was wrong and how to fix it."""


def note(message: str) -> None:
    """Print `note: message` as one line on stderr (results on stdout stay clean)."""
    print(f"note: {message}", file=sys.stderr, flush=True)
