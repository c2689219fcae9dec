"""The user cache: where it lives, how its keys are built, how files are written into it.

Every cache key is built by `cache_key`, every cache write goes through `atomic_path`, and the
cache lives in one user directory (env EVALSUITE_CACHE, default ~/.cache/evalsuite), never in
site-packages or the working directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evalsuite.runtime.errors import EvalsuiteError

# Environment variable that overrides the cache directory.
CACHE_ENV = "EVALSUITE_CACHE"


def cache_dir() -> Path:
    """The cache root: $EVALSUITE_CACHE if set, else ~/.cache/evalsuite; created on demand."""
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "evalsuite")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# errno values of a full file system or an exhausted quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode(target: Path) -> int:
    """The mode `open(target, "w")` would leave: the existing file's, else 0o666 minus the umask."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def disk_full_error(target: Path, error: OSError) -> EvalsuiteError:
    """One line naming the file that could not be written and the free space left."""
    try:
        free = shutil.disk_usage(target.parent).free
        left = f"{free / 2**20:.1f} MiB free"
    except OSError:
        left = "free space unknown"
    reason = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
    return EvalsuiteError(
        f"{target}: {reason} while writing it ({left} in {target.parent}); nothing was "
        "written there: free some space (or point --out / EVALSUITE_CACHE elsewhere) and rerun"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path` (os.replace).

    If the body raises, the temporary file is removed and `path` is left untouched, so readers
    never see a half-written file. The parent directory is created if needed. The file gets the
    permissions a plain `open()` would give it (an existing file's mode, else 0o666 minus the
    umask), not mkstemp's 0600. A full disk or quota (ENOSPC, EDQUOT) becomes an
    `EvalsuiteError` naming `path` and the free space.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        os.chmod(tmp, plain_file_mode(target))
        os.replace(tmp, target)
    except OSError as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if error.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(target, error) from None
        raise
    except BaseException:
        if tmp is not None:
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
