"""A regression check under `torchrun`: every rank samples and extracts its share, rank 0 decides.

Rank 0 alone reads the baseline, checks hashes and files, scores, compares, writes and prints;
every other rank learns the outcome from it. An error therefore has to reach every rank, or the
others would wait in a collective for a rank that has given up:

- `on_main(fn)`: fn runs on rank 0; its result (or its error) is broadcast to every rank.
- `on_every_rank(fn)`: fn runs on every rank; if any rank fails, every rank raises the failure of
  the lowest failing rank (named when it is not rank 0).
- `collective(what)`: around work whose collectives live elsewhere (sampling, feature
  extraction). A rank that fails there raises its own error; the others see the lost connection
  (gloo reports a peer that exited within a fraction of a second; torchrun also stops the
  remaining workers) and raise `PeerLost`.

Errors raised identically on every rank (`SharedError`, and bad options that every rank meets
alike) are printed by rank 0 alone, so a failure reads as one line; a `RankError` is printed by
the rank that met it. With one process every helper simply calls fn.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from evalsuite.runtime import dist
from evalsuite.runtime.errors import EvalsuiteError

T = TypeVar("T")


class SharedError(EvalsuiteError):
    """An error every rank raises with the same message; rank 0 reports it."""


class RankError(EvalsuiteError):
    """An error of this rank alone, met where the other ranks cannot learn it; it reports it."""


class PeerLost(EvalsuiteError):
    """This rank lost contact with a rank that stopped (and reported its own error, if it could)."""


def _attempt(fn: Callable[[], T], rank: int) -> tuple[bool, Any]:
    """(True, fn()) or (False, (rank, message)); unexpected errors also print their traceback."""
    try:
        return True, fn()
    except PeerLost:
        raise
    except EvalsuiteError as error:
        return False, (rank, str(error))
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        return False, (rank, f"{type(error).__name__}: {error}")


def _failure(rank: int, message: str) -> SharedError:
    return SharedError(message if rank == 0 else f"rank {rank}: {message}")


def on_main(fn: Callable[[], T], *, share: bool = True) -> T | None:
    """fn() on rank 0. share=True: its value on every rank; False: on rank 0 (None elsewhere).

    An error of fn is raised on every rank as a `SharedError` (unchanged with one process).
    """
    rank, size = dist.world()
    if size == 1:
        return fn()
    outcome: tuple[bool, Any] | None = None
    if rank == 0:
        outcome = _attempt(fn, rank)
    own = outcome
    with collective("the exchange with rank 0"):
        if not share and outcome is not None and outcome[0]:
            outcome = (True, None)
        outcome = dist.broadcast_from_main(outcome)
    ok, payload = outcome
    if not ok:
        raise _failure(*payload)
    return own[1] if rank == 0 else payload


def on_every_rank(fn: Callable[[], T]) -> T:
    """fn() on every rank; when one fails, every rank raises the lowest failing rank's error."""
    rank, size = dist.world()
    if size == 1:
        return fn()
    ok, payload = _attempt(fn, rank)
    import torch.distributed as torch_dist

    outcomes: list[Any] = [None] * size
    with collective("the exchange of outcomes"):
        torch_dist.all_gather_object(outcomes, None if ok else payload)
    failures = [failure for failure in outcomes if failure is not None]
    if failures:
        raise _failure(*failures[0])
    return payload


def _is_lost_peer(error: BaseException) -> bool:
    import torch.distributed as torch_dist

    text = str(error)
    return isinstance(error, getattr(torch_dist, "DistError", ())) or any(
        phrase in text
        for phrase in ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    )


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Around work with collectives inside: a lost rank becomes `PeerLost`, and with several
    processes an error of this rank is named with its rank (the others cannot report it)."""
    rank, size = dist.world()
    if size == 1:
        yield
        return
    try:
        yield
    except (SharedError, PeerLost, RankError):
        raise
    except EvalsuiteError as error:
        raise RankError(f"rank {rank}: {error}") from None
    except RuntimeError as error:
        if not _is_lost_peer(error):
            traceback.print_exc(file=sys.stderr)
            raise RankError(f"rank {rank}: {type(error).__name__}: {error}") from None
        raise PeerLost(
            f"another rank stopped during {what} (its error, if it could report one, is above); "
            "no result"
        ) from None
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        raise RankError(f"rank {rank}: {type(error).__name__}: {error}") from None


def reported_here(error: Exception) -> bool:
    """Whether this rank prints `error`: rank 0 prints everything; another rank only an error
    of its own that rank 0 cannot know (`RankError`). Errors that every rank meets alike, such
    as bad options, are printed once, by rank 0. Reads the rank from the environment (torchrun's
    RANK), so that it also holds before the process group exists."""
    if int(os.environ.get("RANK", "0")) == 0:
        return True
    return isinstance(error, RankError)
