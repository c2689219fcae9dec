"""Process-group helpers for runs under `torchrun` (gloo on CPU, nccl on CUDA).

Without `torchrun` (no WORLD_SIZE in the environment) everything is a single process: rank 0 of 1.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any

import torch
import torch.distributed as torch_dist


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; initialises the process group under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not torch_dist.is_initialized():
        backend = (
            "nccl"
            if torch.cuda.is_available() and os.environ.get("EVALSUITE_DIST_BACKEND") != "gloo"
            else "gloo"
        )
        torch_dist.init_process_group(backend=backend, timeout=collective_timeout())
        # Tear the group down before the interpreter does: gloo's threads destroyed at exit
        # otherwise abort the process now and then ("terminate called without an active
        # exception"), failing a run that had finished.
        atexit.register(_destroy)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return torch_dist.get_rank(), torch_dist.get_world_size()


# Seconds a collective (barrier, broadcast) waits for every rank before failing; env override.
TIMEOUT_ENV = "EVALSUITE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for the slowest rank: $EVALSUITE_DIST_TIMEOUT s, default 30 min.

    It bounds how long the other ranks wait when one rank hangs or its node is lost; it must
    exceed the longest step one rank does alone (rank 0 scoring a cell while the others wait).
    """
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text.strip() else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        from evalsuite.runtime.errors import EvalsuiteError

        raise EvalsuiteError(f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


def _destroy() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        torch_dist.barrier()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Gather one picklable object per rank onto rank 0 (list in rank order); None on other ranks."""
    rank, size = world()
    if size == 1:
        return [obj]
    # gather_object needs a CPU-capable backend for pickled payloads; fall back to all_gather_object.
    out: list[Any] = [None] * size
    torch_dist.all_gather_object(out, obj)
    return out if rank == 0 else None


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(indices: list[int]) -> list[int]:
    """This rank's share of `indices` (round-robin, so shards differ in size by at most one)."""
    rank, size = world()
    return indices[rank::size]
