"""The user cache: where it lives, how its keys are built, how files are written into it.

Every cache key is built by `cache_key`, every cache write goes through `atomic_path`, and the
cache lives in one user directory (env EVALSUITE_CACHE, default ~/.cache/evalsuite), never in
site-packages or the working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Environment variable that overrides the cache directory.
CACHE_ENV = "EVALSUITE_CACHE"


def cache_dir() -> Path:
    """The cache root: $EVALSUITE_CACHE if set, else ~/.cache/evalsuite; created on demand."""
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "evalsuite")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path` (os.replace).

    If the body raises, the temporary file is removed and `path` is left untouched, so readers
    never see a half-written file. The parent directory is created if needed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], Any]) -> Path:
    """Call `write_fn(tmp_path)` and move the result onto `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        write_fn(tmp)
    return Path(path)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks of `chunk` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """The one cache-key builder: sha256 of the canonical JSON of `parts`, first 32 hex chars.

    Parts must be JSON-serialisable (str, numbers, bools, None, lists, dicts); key order does
    not matter. Pass every input that changes the cached value (content hash, weights hash,
    protocol version, options).
    """
    try:
        canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cache_key parts must be plain JSON values: {exc}") from exc
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
