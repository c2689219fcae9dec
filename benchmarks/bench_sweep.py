"""Benchmark: wall time of the default `evalsuite sweep` (the zoo), split into sampling, Inception
features and metrics.

Run: .venv/bin/python benchmarks/bench_sweep.py [--out DIR] [-- extra sweep options]

The sweep runs as a subprocess exactly as a user types it (`evalsuite sweep --out DIR`, plus any
options after `--`), with a fresh feature cache so nothing is reused from earlier runs (the
Inception weights are converted into that cache before the clock starts). The split comes from
the timings every record of OUT/records.jsonl carries: sampling (the diffusion sampler),
features (Inception on samples; the first cell also pays for the reference features) and
metrics (scores, bootstrap, judge; the first cell also pays for the reference k-NN radii). The
rest of the wall time ("setup and report") is loading models and Inception, the run directory
and the report (tables, figures, sample grid).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("sampling_seconds", "features_seconds", "metrics_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("sweep_options", nargs="*", help="options passed to `evalsuite sweep`")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "run"
        if out.exists() and any(out.iterdir()):
            sys.exit(f"{out} is not empty; give a new --out")
        env = {**os.environ, "EVALSUITE_CACHE": str(Path(scratch) / "cache")}
        # Convert the offline Inception weights into the fresh cache outside the timed run.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from evalsuite.features import resolve_inception_weights as r; r()",
            ],
            env=env,
            check=True,
        )
        command = [sys.executable, "-m", "evalsuite", "sweep", "--out", str(out), "--quiet"]
        command += args.sweep_options
        load = os.getloadavg()[0]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]

    totals = {stage: sum(r[stage] for r in records) for stage in STAGES}
    other = wall - sum(totals.values())
    first = records[0]
    print(f"\n`evalsuite sweep --out DIR --quiet {' '.join(args.sweep_options)}`".rstrip())
    print(
        f"{len(records)} cells x {first['num_samples']} samples, {first['sampler']} "
        f"{first['steps']}, bootstrap {first['bootstrap']}, load average at start {load:.2f}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| part | seconds | share |")
    print("|---|---:|---:|")
    for stage in STAGES:
        print(f"| {stage.split('_')[0]} | {totals[stage]:.1f} | {totals[stage] / wall:.0%} |")
    print(f"| setup and report | {other:.1f} | {other / wall:.0%} |")
    print(f"| **total (wall)** | **{wall:.1f}** | 100% |\n")
    print("| cell | sampling s | features s | metrics s | FID | precision | recall | agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for record in records:
        values = [
            "–" if record.get(key) is None else f"{record[key]:.{digits}f}"
            for key, digits in (("fid", 2), ("precision", 3), ("recall", 3), ("class_agreement", 3))
        ]
        timings = " | ".join(f"{record[stage]:.1f}" for stage in STAGES)
        print(f"| {record['cell']} | {timings} | {' | '.join(values)} |")


if __name__ == "__main__":
    main()
