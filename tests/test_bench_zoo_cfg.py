"""`benchmarks/bench_zoo_cfg.py`: the paired change of every CFG scale from s = 1, on kept samples.

Two made-up cells (random 16x16 images, as a sweep with --keep-samples leaves them) are scored by
the script; its FID change must equal the difference of the two sets' FIDs computed by
`evalsuite.evaluate` against the same reference.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from evalsuite import zoo
from evalsuite.pipeline.evaluate import evaluate
from tests.helpers import random_batch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_zoo_cfg.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_zoo_cfg", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(scale: float) -> dict:
    return {
        "cell": f"cfg_unet_ddim-ddim25_s{scale:g}",
        "sampler": "ddim",
        "steps": "ddim25",
        "guidance_scale": scale,
        "num_samples": 24,
        "bootstrap": 20,
        "bootstrap_seed": 0,
        "class_agreement": 0.5,
        "fid": 300.0,
        "precision": 0.5,
        "recall": 0.5,
        "judge_score": 2.0,
    }


def test_the_fid_change_from_s1_is_the_difference_of_the_two_fids(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    rows = [_row(1.0), _row(2.0)]
    for seed, row in enumerate(rows):
        random_batch(run / "samples" / f"{row['cell']}.npz", 24, seed=seed)
    (run / "records.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    monkeypatch.setattr(sys, "argv", ["bench_zoo_cfg.py", str(run)])
    assert _load_bench().main() == 0
    out = capsys.readouterr().out

    line = next(line for line in out.splitlines() if line.startswith("| 2 |"))
    fid_cell = line.split("|")[3]
    change = float(re.search(r"\(([+-][\d.]+), z ", fid_cell).group(1))
    fids = [
        evaluate(
            str(zoo.reference()),
            str(run / "samples" / f"{row['cell']}.npz"),
            metrics=("fid",),
            progress=False,
        )["fid"]
        for row in rows
    ]
    assert abs(change - (fids[1] - fids[0])) <= 0.005 + 1e-9, (change, fids)
    # s = 1 is the base: its row has values but no change.
    base = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    assert "z " not in base
