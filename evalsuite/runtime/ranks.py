"""What the ranks of a `torchrun` job agree on: errors, decisions, and the loss of a rank.

One rule (STYLE.md, several processes): every rank computes its share, rank 0 alone decides,
writes and prints. An error that one rank sees before the heavy work (a missing file, a bad
configuration) is shared with all of them through `agreed`, so every rank stops with the same
message, printed once by rank 0. A rank that dies or hangs fails the others' next collective
within the collective timeout (`evalsuite.runtime.dist.collective_timeout`); `peer_lost` turns
that failure into one line instead of a backend traceback.

Without `torchrun` every function here is the trivial single-process version.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as torch_dist

from evalsuite.runtime import dist
from evalsuite.runtime.errors import EvalsuiteError

T = TypeVar("T")

# Messages of gloo/NCCL collectives that failed because another rank died, hung or timed out.
_COLLECTIVE_FAILURE = re.compile(
    r"gloo|nccl|timed out|timeout|connection (reset|closed|refused)|pair closure|broken pipe",
    re.IGNORECASE,
)


class AgreedError(EvalsuiteError):
    """An error every rank raises together; rank 0 prints it, the other ranks stay quiet."""

    printed_by_main = True


class PeerLost(EvalsuiteError):
    """A collective failed because another rank stopped; printed by every rank that sees it."""

    printed_by_main = False


def quiet_rank() -> bool:
    """True on the ranks > 0 of a torchrun job (they print only their own errors)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def agreed(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; if it raises `EvalsuiteError` on any rank, raise it on every rank.

    The message is the failing rank's (prefixed with its rank when rank 0 did not fail), so a
    file that only one node cannot read stops the whole job with one line and no rank is left
    waiting in a collective.
    """
    rank, size = dist.world()
    try:
        value, error = fn(), None
    except EvalsuiteError as raised:
        if size == 1:
            raise
        value, error = None, raised
    if size == 1:
        return value
    messages = collective(lambda: _all_gather(None if error is None else str(error)))
    failed = [(r, message) for r, message in enumerate(messages) if message is not None]
    if failed:
        if messages[0] is not None:
            raise AgreedError(messages[0]) from None
        first, message = failed[0]
        raise AgreedError(f"rank {first}: {message}") from None
    return value


def decided(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only (a decision), its result broadcast to every rank.

    An `EvalsuiteError` on rank 0 is raised on every rank.
    """
    rank, size = dist.world()
    if size == 1:
        return fn()
    outcome: tuple[str, Any]
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except EvalsuiteError as error:
            outcome = ("error", str(error))
    else:
        outcome = ("pending", None)
    outcome = collective(lambda: dist.broadcast_from_main(outcome))
    if outcome[0] == "error":
        raise AgreedError(outcome[1])
    return outcome[1]


def collective(fn: Callable[[], T]) -> T:
    """Run a collective; a failure caused by a lost rank becomes `PeerLost` (one line)."""
    try:
        return fn()
    except RuntimeError as error:
        lost = peer_lost(error)
        if lost is None:
            raise
        raise lost from None


def peer_lost(error: BaseException) -> PeerLost | None:
    """The one-line `PeerLost` for a collective failure caused by another rank, else None."""
    if dist.world()[1] == 1 or not isinstance(error, RuntimeError):
        return None
    if not _COLLECTIVE_FAILURE.search(str(error)):
        return None
    rank = dist.world()[0]
    seconds = dist.collective_timeout().total_seconds()
    return PeerLost(
        f"rank {rank} on {socket.gethostname()}: another rank of this torchrun job stopped "
        f"(crashed, was killed, or did not answer within {seconds:g} s, "
        f"${dist.TIMEOUT_ENV}); finished cells and sample parts are kept: "
        "rerun the same command, with any number of ranks, to continue"
    )


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out
