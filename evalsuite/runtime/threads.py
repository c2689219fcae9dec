"""CPU work split into independent pieces, one single-threaded piece per core at a time.

On a few CPU cores, running k independent pieces of work concurrently on one thread each beats
running them one after another on k threads: small kernels are dominated by thread
synchronisation, memory-bound ones by cache misses, and oneDNN picks its blockings (and so the
last bits of its results) by thread count. Sampling (per-sample passes) and Inception feature
extraction (chunks of a few images) both use this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Within the block torch runs its ops on one intra-op thread; the count is restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """NumPy's/SciPy's BLAS and LAPACK on one thread within the block.

    BLAS splits matrix products differently for different thread counts, which changes the
    last bits of covariances and of everything computed from them; torchrun gives each rank
    one thread while a plain process uses every core. On one thread the bits are the same for
    any thread or process count.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def reproducible_scoring() -> Iterator[None]:
    """One thread for torch and for BLAS: metrics and bootstrap intervals independent of the
    thread and process count."""
    with single_thread(), one_blas_thread():
        yield


class CoreWorkers:
    """A pool with one worker per intra-op thread (at creation) mapping work single-threaded.

    map(fn, items) returns [fn(item) ...] in order. Thread-local torch state (grad mode,
    inference mode) is not carried into the workers: `fn` sets what it needs.
    """

    def __init__(self) -> None:
        self.size = max(1, torch.get_num_threads())
        self._pool: ThreadPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        with single_thread():
            if self.size == 1:
                return [fn(item) for item in items]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.size)
            return list(self._pool.map(fn, items))
