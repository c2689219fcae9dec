"""Benchmark: does the zoo show the paper's effects, measured with evalsuite itself?

Run: .venv/bin/python benchmarks/bench_zoo_quality.py [RUN_DIR ...]   (default runs/sweep)

RUN_DIR is a finished sweep of the zoo's unconditional and conditional models (the default
`evalsuite sweep`, or one with more samples and larger scales), scored against the zoo reference
with class agreement from the zoo's judge; several run directories are read as one (e.g. a sweep
of the unconditional model and one of the conditional model). The script adds the FID of
uniform-noise images (same N, same reference) and checks the zoo's claim (docs/zoo.md):

1. unconditional model + classifier guidance, scale 0 -> the largest scale: class agreement
   rises strongly (by >= 0.3) and recall falls by at least two standard errors. When both cells
   kept their samples (--keep-samples) and share N, seed and classes, the standard error is that
   of a paired bootstrap of the change (`evalsuite.experiments.bootstrap.paired_changes`: sample i
   of both cells comes from the same noise, so both are resampled with the same indices; features
   from evalsuite's cache); otherwise the cells are treated as independent,
   z = change / sqrt(se_0^2 + se_s^2) (conservative). Without bootstrap errors the sign decides;
2. at scale 0 the class-conditional model's FID is clearly below the unconditional model's (by
   at least two standard errors of the difference when the cells carry bootstrap errors), and
   both are far below the FID of pure noise (less than half of it) — checked when the runs hold a
   conditional scale-0 cell with the unconditional one's sampler, steps, N and seed (SKIP
   printed otherwise).

Precision is printed with its change and z, but not claimed: at 16x16 guidance does not raise it
(docs/zoo.md says why). Prints a table and exits 1 if a claim does not hold.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def records(run_dir: Path) -> list[dict]:
    with open(run_dir / "records.jsonl") as fh:
        return [{**json.loads(line), "run_dir": str(run_dir)} for line in fh if line.strip()]


def cell(rows: list[dict], class_cond: bool, scale: float) -> dict:
    (row,) = [r for r in rows if r["class_cond"] == class_cond and r["guidance_scale"] == scale]
    return row


def change(first: dict, second: dict, metric: str) -> tuple[float, float | None]:
    """second - first for `metric`, and its z score from the cells' bootstrap standard errors."""
    delta = second[metric] - first[metric]
    errors = (first.get(f"{metric}_se"), second.get(f"{metric}_se"))
    if None in errors:
        return delta, None
    return delta, delta / float(np.hypot(*errors))


def moved(delta: float, z: float | None, sign: int) -> bool:
    """The change has the given sign, and (with bootstrap errors) is >= 2 standard errors."""
    return sign * delta > 0 and (z is None or sign * z >= 2.0)


def samples_path(row: dict) -> Path:
    return Path(row["run_dir"]) / "samples" / f"{row['cell']}.npz"


def reference_path(row: dict) -> str:
    """The reference statistics the row's sweep scored against (the zoo's if that file moved)."""
    from evalsuite import zoo
    from evalsuite.runtime.cache import sha256_file

    with open(Path(row["run_dir"]) / "config.json") as fh:
        entry = json.load(fh)["files"]["reference"]
    if Path(entry["path"]).exists() and sha256_file(entry["path"]) == entry["sha256"]:
        return entry["path"]
    if sha256_file(zoo.reference()) == entry["sha256"]:
        return str(zoo.reference())
    raise SystemExit(f"{row['run_dir']}: its reference statistics {entry['path']} are gone")


@functools.cache
def pr_scorer(samples: str, reference: str, pr_k: int):
    """The precision/recall scorer of one kept sample batch (scale 0 is shared by every pair).

    Features come from evalsuite's CPU feature computer (and its cache); the reference side is
    the one the sweep used: stored features when present, else computed from its images.
    """
    from evalsuite.experiments.bootstrap import SampleScorer, prepare_reference
    from evalsuite.pipeline.batches import open_images
    from evalsuite.pipeline.evaluate import (
        MetricOptions,
        check_reference,
        load_inception,
        make_computer,
        resolve_reference,
    )
    from evalsuite.pipeline.reference import load_reference

    options, metrics = MetricOptions(pr_k=pr_k), ("pr",)
    loaded = load_reference(reference)
    mode = check_reference(loaded, metrics, "auto", options)
    weights, extractor = load_inception(None, "cpu")
    computer = make_computer(weights, extractor, device="cpu", batch_size=64, progress=False)
    prepared = prepare_reference(
        resolve_reference(loaded, metrics, mode, computer), metrics, options
    )
    return SampleScorer(computer.compute(open_images(samples, role="samples")), prepared)


def paired(first: dict, second: dict) -> dict[str, dict[str, float]] | None:
    """Paired-bootstrap changes first -> second, or None when the cells cannot be paired."""
    same = ("num_samples", "seed", "classes", "bootstrap_seed")
    if any(first[key] != second[key] for key in same) or not first.get("bootstrap"):
        return None
    if not (samples_path(first).exists() and samples_path(second).exists()):
        return None
    from evalsuite.experiments.bootstrap import paired_changes

    with open(Path(first["run_dir"]) / "config.json") as fh:
        pr_k = json.load(fh)["identity"]["evaluation"]["options"]["pr_k"]
    reference = reference_path(first)
    first_scorer, second_scorer = (
        pr_scorer(str(samples_path(row)), reference, pr_k) for row in (first, second)
    )
    return paired_changes(first_scorer, second_scorer, first["bootstrap"], first["bootstrap_seed"])


def guided_changes(first: dict, second: dict) -> dict[str, tuple[float, float | None, str]]:
    """(change, z, how z was made) of precision and recall from cell `first` to `second`."""
    pairs = paired(first, second)
    if pairs is None:
        return {key: (*change(first, second, key), "unpaired") for key in ("precision", "recall")}
    how = f"paired bootstrap, {first['bootstrap']} resamples"
    return {key: (pairs[key]["change"], pairs[key]["z"], how) for key in ("precision", "recall")}


def check_claims(
    uncond0: dict,
    uncond_top: dict,
    cond0: dict | None,
    recall: tuple[float, float | None],
    noise: float,
) -> dict[str, bool]:
    """The zoo's claim, check by check (name -> holds); precision is deliberately not in it.

    uncond0 / uncond_top: the unconditional model's records at scale 0 and the largest scale;
    cond0: the conditional model's scale-0 record (same sampler, steps, N, seed) or None;
    recall: (change, z) of the unconditional model's recall from scale 0 to the largest scale;
    noise: the FID of uniform-noise images at the same N.
    """
    top = uncond_top["guidance_scale"]
    checks = {
        f"guided agreement rises by >= 0.3 (scale 0 -> {top:g})": uncond_top["class_agreement"]
        - uncond0["class_agreement"]
        >= 0.3,
        "guided recall falls": moved(*recall, -1),
    }
    if cond0 is not None:
        gap, z = change(cond0, uncond0, "fid")
        checks["conditional FID clearly below unconditional FID at scale 0"] = moved(gap, z, +1)
        checks["both FIDs < half the FID of noise"] = max(cond0["fid"], uncond0["fid"]) < noise / 2
    return checks


def noise_fid(num: int) -> float:
    from evalsuite import zoo
    from evalsuite.pipeline.evaluate import evaluate

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "noise.npz"
        rng = np.random.default_rng(0)
        np.savez(path, arr_0=rng.integers(0, 256, (num, 16, 16, 3), dtype=np.uint8))
        result = evaluate(str(zoo.reference()), str(path), metrics=("fid",), progress=False)
    return float(result["fid"])


def main() -> int:
    run_dirs = [Path(arg) for arg in sys.argv[1:]] or [Path("runs/sweep")]
    rows = [row for run_dir in run_dirs for row in records(run_dir)]
    scales = sorted({r["guidance_scale"] for r in rows if not r["class_cond"]})
    top = scales[-1]
    uncond0, uncond_top = cell(rows, False, 0.0), cell(rows, False, top)
    # The conditional model is compared at the unconditional one's sampler, steps and N.
    protocol = ("sampler", "steps", "num_samples", "seed")
    conds = [
        r
        for r in rows
        if r["class_cond"]
        and r["guidance_scale"] == 0
        and all(r[key] == uncond0[key] for key in protocol)
    ]
    noise = noise_fid(int(uncond0["num_samples"]))

    names = " ".join(str(run_dir) for run_dir in run_dirs)
    print(f"run: {names}  ({uncond0['num_samples']} samples per cell, scales {scales})")
    print("| model | scale | FID | precision | recall | class agreement |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["model"], r["guidance_scale"])):
        print(
            f"| {row['model']} | {row['guidance_scale']:g} | {row['fid']:.2f} | "
            f"{row['precision']:.3f} | {row['recall']:.3f} | {row['class_agreement']:.3f} |"
        )
    print(f"| uniform noise | – | {noise:.2f} | | | |")

    changes = {scale: guided_changes(uncond0, cell(rows, False, scale)) for scale in scales[1:]}
    for scale, changed in changes.items():
        # Every guided scale of the unconditional model against scale 0; the checks use the top.
        for name, (delta, z, how) in changed.items():
            detail = "" if z is None else f" (z = {z:+.2f}, {how})"
            print(f"guided {name} change, scale 0 -> {scale:g}: {delta:+.3f}{detail}")
    recall = changes[top]["recall"][:2]
    checks = check_claims(uncond0, uncond_top, conds[0] if conds else None, recall, noise)
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if not conds:
        print(
            "SKIP  conditional vs unconditional FID: no conditional scale-0 cell with the "
            f"unconditional one's {', '.join(protocol)} among the runs"
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
