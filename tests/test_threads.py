"""evalsuite.runtime.threads: single-threaded pieces of CPU work, one per core at a time."""

from __future__ import annotations

import threading

import torch

from evalsuite.runtime.threads import CoreWorkers, single_thread


def test_single_thread_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_single_thread_restores_after_an_error():
    before = torch.get_num_threads()
    try:
        with single_thread():
            raise ValueError("boom")
    except ValueError:
        pass
    assert torch.get_num_threads() == before


def test_core_workers_keep_order_and_run_single_threaded():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workers = CoreWorkers()
        assert workers.size == 2
        seen: list[tuple[int, int, str]] = []

        def work(i: int) -> int:
            seen.append((i, torch.get_num_threads(), threading.current_thread().name))
            return i * i

        assert workers.map(work, range(7)) == [i * i for i in range(7)]
        assert sorted(i for i, _, _ in seen) == list(range(7))
        assert all(threads == 1 for _, threads, _ in seen)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_one_core_runs_in_the_calling_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workers = CoreWorkers()
        names = workers.map(lambda _: threading.current_thread().name, range(3))
        assert names == [threading.current_thread().name] * 3
    finally:
        torch.set_num_threads(previous)
