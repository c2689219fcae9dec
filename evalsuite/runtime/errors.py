"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class EvalsuiteError(Exception):
    """Bad input or an unusable file. The message says what was wrong and how to fix it."""
