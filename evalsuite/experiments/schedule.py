"""Which grid cells a process runs, and in what order, when many processes share a run directory.

Every rank of a `torchrun` job runs every cell together (samples and features are sharded
over the ranks; rank 0 scores and writes the record). Which cell comes next is decided by
rank 0 alone and broadcast, so all ranks always agree: the next cell of this job's shard
without a record that rank 0 could claim (`evalsuite.experiments.runstore.claim`). Cells that
other live processes (another shard started twice, a second sweep) are running are waited for,
and taken over when their claim goes stale, so a job ends only when every cell of its shard
has a record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalsuite.experiments import runstore
from evalsuite.runtime import dist, ranks

# Seconds between two looks at cells that another process is running.
POLL_SECONDS = 2.0


def run_grid(
    run_dir: Path,
    cells: list[str],
    run_cell: Callable[[int], Any],
    *,
    shard: tuple[int, int] | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Run the cells of `shard` (all cells: None) that have no record, on every rank.

    `cells` are the grid's cell names in grid order; `run_cell(position)` runs one cell on
    every rank (rank 0 writes its record). `log` is called on rank 0 only.
    """
    positions = runstore.shard_positions(len(cells), shard)
    is_main = dist.is_main()
    claims: dict[int, runstore.Claim] = {}
    announced: set[str] = set()

    def finished() -> int:
        return sum(runstore.has_record(run_dir, cells[p]) for p in positions)

    def next_action() -> tuple[str, Any]:
        pending = [p for p in positions if not runstore.has_record(run_dir, cells[p])]
        if not pending:
            return "done", None
        for position in pending:
            claim = runstore.claim(run_dir, cells[position])
            if claim is None:
                continue
            if runstore.has_record(run_dir, cells[position]):
                claim.release()
                continue
            claims[position] = claim
            return "run", position
        return "wait", [cells[p] for p in pending]

    done = ranks.decided(finished)
    what = "cells" if shard is None else f"cells of shard {shard[0]}/{shard[1]}"
    if done and is_main:
        log(f"{run_dir}: {done} of {len(positions)} {what} already finished")
    while True:
        action, value = ranks.decided(next_action)
        if action == "done":
            return
        if action == "wait":
            if is_main:
                for name in value:
                    if name not in announced:
                        announced.add(name)
                        holder = runstore.claim_holder(run_dir, name)
                        who = "another process" if holder is None else holder.describe()
                        log(f"{name}: running in {who}; waiting for its record")
            time.sleep(poll_seconds)
            continue
        try:
            run_cell(value)
        except RuntimeError as error:
            lost = ranks.peer_lost(error)
            if lost is None:
                raise
            raise lost from None
        finally:
            if value in claims:
                claims.pop(value).release()
