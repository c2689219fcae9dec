"""The run directory as a store that many independent writers share safely.

A sweep or ablation may be written by one process, by the rank 0 of a `torchrun` job, or by
several cluster jobs at once (`--shard K/N`, SLURM arrays), each possibly started twice, on a
shared file system. They coordinate only through files that appear atomically (STYLE.md):

    config.json         created once with O_EXCL semantics (a temporary file hard-linked into
                        place); every later writer compares its identity with it
    records/<cell>.json one file per finished cell, linked into place: it appears complete or
                        not at all, and a second writer of the same cell is refused, so a cell
                        never has two records
    records.jsonl       every record in grid order, one JSON object a line: an export rebuilt
                        (temp file + os.replace) from records/ after each finished cell
    claims/<cell>.json  who is running a cell (pid, host, start time; the file's mtime is a
                        heartbeat). Created with O_EXCL; a claim whose process is gone (same host)
                        or whose heartbeat is older than $EVALSUITE_CLAIM_STALE seconds (default
                        600) is stale and taken over by exactly one writer

records/ is the source of truth; records.jsonl is for people and tools (jq, pandas). Run
directories written before records/ existed hold only records.jsonl: they are read as they are
and imported into records/ when a sweep continues them. A torn last line there (a crash in the
middle of an append) is dropped with a one-line note.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.runtime.cache import atomic_path, plain_file_mode
from evalsuite.runtime.errors import EvalsuiteError

RUN_FORMAT = "evalsuite-run"
RUN_VERSION = 1
CONFIG_NAME = "config.json"
RECORDS_NAME = "records.jsonl"
RECORDS_DIR = "records"
CLAIMS_DIR = "claims"
# Seconds without a heartbeat after which another host's claim is stale; env override.
STALE_ENV = "EVALSUITE_CLAIM_STALE"
DEFAULT_STALE_SECONDS = 600.0


def note(message: str) -> None:
    """A one-line note on stderr (recoveries the user should know about)."""
    print(f"note: {message}", file=sys.stderr)


def _link_into_place(path: Path, text: str) -> bool:
    """Write `text` to `path` only if `path` does not exist; True if this call created it.

    The content is written to a temporary file first and hard-linked to `path` (atomic and
    exclusive, also on NFS), so readers see the whole file or none. File systems without hard
    links fall back to an O_EXCL create.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp_name, plain_file_mode(path))  # a plain open()'s mode, not mkstemp's 0600
        try:
            os.link(tmp_name, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass
    finally:
        os.unlink(tmp_name)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return True


def _is_scratch(name: str) -> bool:
    """Temporary files of atomic writes (`.name.xxxx.tmp`) and the export lock."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".lock"))


# --- config.json -----------------------------------------------------------------------------


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json; a directory without one is not a run directory."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise EvalsuiteError(
            f"{run_dir} is not an evalsuite run directory (no {CONFIG_NAME}); "
            "give a directory written by `evalsuite sweep` or `evalsuite ablate`"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EvalsuiteError(f"{path}: unreadable run configuration ({error})") from None
    if not isinstance(config, dict) or config.get("format") != RUN_FORMAT:
        raise EvalsuiteError(
            f"{path} is not an evalsuite run configuration (format {RUN_FORMAT!r} expected)"
        )
    return config


def open_config(
    run_dir: Path,
    identity: dict[str, Any],
    details: dict[str, Any],
    differences: Callable[[Any, Any], list[str]],
) -> dict[str, Any]:
    """Create config.json exclusively, or check that the existing one has the same identity.

    Two writers starting on an empty directory at once: one creates it, the other compares
    against it. A different identity is refused; details that changed (annotations, paths on
    this machine) are refreshed with an atomic replace.
    """
    path = run_dir / CONFIG_NAME
    if not path.exists():
        if run_dir.exists() and any(not _is_scratch(p.name) for p in run_dir.iterdir()):
            raise EvalsuiteError(
                f"--out {run_dir} is not empty and not an evalsuite run directory; "
                "choose a new or empty directory"
            )
        created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        config = {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "created": created,
            "identity": identity,
            **details,
        }
        if _link_into_place(path, json.dumps(config, indent=2) + "\n"):
            return config
    existing = read_config(run_dir)
    diffs = differences(existing.get("identity"), identity)
    if diffs:
        raise EvalsuiteError(
            f"{run_dir} holds a run with a different configuration ({'; '.join(diffs[:3])}); "
            "use another --out, or delete the directory to start over"
        )
    config = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "created": existing.get("created"),
        "identity": existing["identity"],
        **details,
    }
    if config != existing:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
    return config


# --- records ---------------------------------------------------------------------------------


def _cell_order(run_dir: Path) -> list[str]:
    """The grid's cell names in run order, as config.json lists them (empty if it does not)."""
    try:
        cells = json.loads((run_dir / CONFIG_NAME).read_text()).get("cells")
    except (OSError, json.JSONDecodeError, AttributeError):
        return []
    return [str(name) for name in cells] if isinstance(cells, list) else []


def _sorted(records: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    position = {name: i for i, name in enumerate(order)}
    return sorted(records, key=lambda r: (position.get(r.get("cell"), len(position)), r["cell"]))


def _read_legacy(path: Path) -> list[dict[str, Any]]:
    """records.jsonl of a run written before records/; a torn last line is dropped."""
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                # The last line has no newline: a crash while it was being appended.
                note(f"{path}:{number} is an unfinished record (torn write); it is dropped")
                continue
            raise EvalsuiteError(
                f"{path}:{number} is not a JSON record; the file was edited or damaged"
            ) from None
    return records


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of the finished cells in grid order (one per cell)."""
    run_dir = Path(run_dir)
    folder = run_dir / RECORDS_DIR
    if folder.is_dir():
        records = []
        for path in folder.glob("*.json"):
            if _is_scratch(path.name):
                continue
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                raise EvalsuiteError(
                    f"{path} is not a JSON record; the file was edited or damaged "
                    "(delete it to run its cell again)"
                ) from None
        return _sorted(records, _cell_order(run_dir))
    legacy = run_dir / RECORDS_NAME
    if not legacy.exists():
        return []
    return _read_legacy(legacy)


def has_record(run_dir: Path, cell: str) -> bool:
    return (run_dir / RECORDS_DIR / f"{cell}.json").exists()


def write_record(run_dir: Path, record: dict[str, Any]) -> bool:
    """Store a finished cell's record unless the cell has one already; True if stored."""
    text = json.dumps(record) + "\n"
    stored = _link_into_place(run_dir / RECORDS_DIR / f"{record['cell']}.json", text)
    export_records(run_dir)
    return stored


def import_legacy(run_dir: Path) -> None:
    """Move the records of a records.jsonl-only run into records/ (a run being continued)."""
    if (run_dir / RECORDS_DIR).is_dir() or not (run_dir / RECORDS_NAME).exists():
        return
    for record in _read_legacy(run_dir / RECORDS_NAME):
        _link_into_place(run_dir / RECORDS_DIR / f"{record['cell']}.json", json.dumps(record))
    (run_dir / RECORDS_DIR).mkdir(exist_ok=True)
    export_records(run_dir)


@contextlib.contextmanager
def _export_lock(run_dir: Path) -> Iterator[None]:
    """An advisory lock around the rebuild of records.jsonl, where the file system has one.

    Without it the export stays correct file by file (os.replace); a concurrent rebuild could
    only leave out a record that the next rebuild (each finished cell, `evalsuite report`)
    puts back. records/ is not affected.
    """
    try:
        import fcntl

        fh = open(run_dir / ".records.lock", "a")  # noqa: SIM115 - held for the block
    except (ImportError, OSError):
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def export_records(run_dir: Path) -> None:
    """Rebuild records.jsonl from records/ (grid order), atomically."""
    if not (run_dir / RECORDS_DIR).is_dir():
        return
    with _export_lock(run_dir):
        lines = [json.dumps(record) for record in read_records(run_dir)]
        with atomic_path(run_dir / RECORDS_NAME) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))


# --- claims ----------------------------------------------------------------------------------


def stale_seconds() -> float:
    text = os.environ.get(STALE_ENV, "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_STALE_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise EvalsuiteError(f"{STALE_ENV}={text!r} is not a positive number of seconds")
    return seconds


def _claim_path(run_dir: Path, cell: str) -> Path:
    return run_dir / CLAIMS_DIR / f"{cell}.json"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, and since when."""

    token: str
    pid: int | None
    host: str
    started: str
    heartbeat_age: float

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started}"

    def stale(self) -> bool:
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return True
        return self.heartbeat_age > stale_seconds()


def claim_holder(run_dir: Path, cell: str) -> Holder | None:
    """The current holder of a cell's claim, or None when nobody claims it."""
    path = _claim_path(run_dir, cell)
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        data = {}
        age = time.time() - path.stat().st_mtime if path.exists() else 0.0
    return Holder(
        token=str(data.get("token", "")),
        pid=data.get("pid") if isinstance(data.get("pid"), int) else None,
        host=str(data.get("host", "?")),
        started=str(data.get("started", "?")),
        heartbeat_age=age,
    )


class Claim:
    """This process's claim on a cell; a daemon thread keeps its heartbeat (mtime) fresh."""

    def __init__(self, run_dir: Path, cell: str, token: str) -> None:
        self.path = _claim_path(run_dir, cell)
        self.cell = cell
        self.token = token
        self._stop = threading.Event()
        interval = max(0.5, stale_seconds() / 5)
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (if it is still ours) and takeover marks."""
        self._stop.set()
        holder = claim_holder(self.path.parent.parent, self.cell)
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)
        for mark in self.path.parent.glob(f"{self.cell}.*.takeover"):
            mark.unlink(missing_ok=True)


def _claim_text(token: str) -> str:
    return json.dumps(
        {
            "token": token,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        }
    )


def claim(run_dir: Path, cell: str) -> Claim | None:
    """Claim a cell for this process; None when a live process holds it.

    A stale claim is taken over by exactly one claimant: the one that creates the takeover
    mark named after the stale claim's token (O_EXCL).
    """
    token = uuid.uuid4().hex
    path = _claim_path(run_dir, cell)
    for _ in range(3):
        if _link_into_place(path, _claim_text(token)):
            return Claim(run_dir, cell, token)
        holder = claim_holder(run_dir, cell)
        if holder is None:
            continue
        if not holder.stale():
            return None
        mark = path.with_name(f"{cell}.{holder.token or 'unreadable'}.takeover")
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return None
        with atomic_path(path) as tmp:
            tmp.write_text(_claim_text(token))
        return Claim(run_dir, cell, token)
    return None


# --- shards and completeness -----------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N: this job runs the grid cells i with i % N == K."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise EvalsuiteError(
            f"--shard {text!r} is not K/N; e.g. --shard 0/4 (shards 0..3 of 4; "
            "with SLURM arrays --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)"
        ) from None
    if count < 1 or not 0 <= index < count:
        raise EvalsuiteError(f"--shard {text}: need 0 <= K < N, e.g. --shard 0/{max(count, 2)}")
    return index, count


def shard_positions(count: int, shard: tuple[int, int] | None) -> list[int]:
    """Positions (grid order) of the cells a shard runs: every N-th cell from the K-th."""
    if shard is None:
        return list(range(count))
    index, total = shard
    return list(range(index, count, total))


@dataclass(frozen=True)
class Missing:
    """A grid cell without a record, and who is running it (None: nobody)."""

    cell: str
    holder: Holder | None

    def describe(self) -> str:
        if self.holder is None:
            return f"{self.cell} (not started or stopped)"
        state = "stale claim of" if self.holder.stale() else "running:"
        return f"{self.cell} ({state} {self.holder.describe()})"


def missing_cells(run_dir: str | Path) -> list[Missing]:
    """The cells of the run's grid that have no record yet, in grid order.

    Runs whose config.json does not list its cells (written by older versions) have none.
    """
    run_dir = Path(run_dir)
    read_config(run_dir)
    finished = {record.get("cell") for record in read_records(run_dir)}
    return [
        Missing(name, claim_holder(run_dir, name))
        for name in _cell_order(run_dir)
        if name not in finished
    ]
