"""Benchmark: classifier-free guidance on the zoo, each scale against s = 1 by a paired bootstrap.

Run: .venv/bin/python benchmarks/bench_zoo_cfg.py RUN_DIR [RUN_DIR ...]

RUN_DIR is a finished (or partly finished) `evalsuite sweep --guidance cfg --keep-samples` of the
zoo's null-class model, with the zoo's judge; e.g.

    evalsuite sweep --model evalsuite/zoo/assets/cfg_unet.pt --guidance cfg --scales 1,4,8,0,2 \\
        --reference reference_stats/shapes16_reference.npz --judge evalsuite/zoo/assets/judge.pt \\
        --metrics fid,pr --num-samples 1000 --sampler ddim --steps ddim25 --keep-samples \\
        --out runs/zoo-cfg-ddim25

For every sampler/steps group and every finished scale s != 1 the script rebuilds both cells'
scorers (Inception features from evalsuite's cache, the judge's logits) and bootstraps the change
s - (s = 1) with the same resample indices for both cells (sample i of every cell starts from the
same noise and asks for the same class: `evalsuite.experiments.bootstrap.paired_changes`). It
prints a Markdown table: each metric's value at s, its change from s = 1, and z = change / se,
with "*" where |z| >= 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# zoo/zoo_scoring.py (shared with the zoo diagnostics) builds the CPU scorers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "zoo"))
from zoo_scoring import scoring_setup  # noqa: E402

METRICS = (
    ("class_agreement", "agreement", 3),
    ("fid", "FID", 2),
    ("precision", "precision", 3),
    ("recall", "recall", 3),
    ("judge_score", "judge score", 2),
)


def records(run_dir: Path) -> list[dict]:
    with open(run_dir / "records.jsonl") as fh:
        return [{**json.loads(line), "run_dir": str(run_dir)} for line in fh if line.strip()]


def scorer(row: dict):
    """The SampleScorer of a kept cell: FID and P/R features, class agreement, judge logits."""
    from evalsuite import zoo
    from evalsuite.experiments.bootstrap import SampleScorer
    from evalsuite.pipeline.batches import open_images
    from evalsuite.zoo.judge import class_agreement, judge_logits, load_judge

    path = Path(row["run_dir"]) / "samples" / f"{row['cell']}.npz"
    computer, _, prepared = scoring_setup(str(zoo.reference()), ("fid", "pr"), 3)
    source = open_images(path, role="samples")
    images = np.concatenate(list(source.iter_batches(256)))
    logits = judge_logits(load_judge(zoo.asset(zoo.JUDGE)), images)
    agreement = class_agreement(logits.argmax(axis=1), source.labels())
    return SampleScorer(computer.compute(source), prepared, agreement, judge_logits=logits)


def main() -> int:
    from evalsuite.experiments.bootstrap import paired_changes

    rows = [row for run_dir in sys.argv[1:] or ["runs/zoo-cfg"] for row in records(Path(run_dir))]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["sampler"], row["steps"]), []).append(row)
    for (sampler, steps), group in groups.items():
        group.sort(key=lambda row: row["guidance_scale"])
        base = [row for row in group if row["guidance_scale"] == 1.0]
        print(f"\n### {sampler} {steps}, {group[0]['num_samples']} samples per cell\n")
        header = " | ".join(f"{label} (change, z)" for _, label, _ in METRICS)
        print(f"| CFG scale s | {header} |")
        print("|---:|" + "---:|" * len(METRICS))
        base_scorer = scorer(base[0]) if base else None
        for row in group:
            cells = []
            changes = None
            if base_scorer is not None and row["guidance_scale"] != 1.0:
                changes = paired_changes(
                    base_scorer, scorer(row), row["bootstrap"], row["bootstrap_seed"]
                )
            for key, _, digits in METRICS:
                text = f"{row[key]:.{digits}f}"
                if changes is not None and key in changes:
                    c = changes[key]
                    star = "*" if abs(c["z"]) >= 2 else ""
                    text += f" ({c['change']:+.{digits}f}, z {c['z']:+.1f}{star})"
                cells.append(text)
            print(f"| {row['guidance_scale']:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
