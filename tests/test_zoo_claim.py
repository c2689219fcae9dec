"""The zoo's decided claim, as `benchmarks/bench_zoo_quality.py` checks it on a sweep's records.

Claim (docs/zoo.md): guidance of the unconditional model raises class agreement strongly and
lowers recall; the class-conditional model's FID is clearly below the unconditional one's, both
far below noise. Precision is reported, never required to rise. The records are made up here
(the figures of zoo/RESULTS.md's 1,000-sample run); the bootstrap is unpaired because the made-up
cells kept no samples.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_zoo_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_zoo_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(model: str, scale: float, **metrics: float) -> dict:
    base = {
        "model": model,
        "class_cond": model == "cond_unet",
        "guidance_scale": scale,
        "cell": f"{model}_ddim_ddim25_s{scale:g}",
        "sampler": "ddim",
        "steps": "ddim25",
        "num_samples": 20,
        "seed": 0,
        "classes": "uniform",
        "bootstrap": 100,
        "bootstrap_seed": 0,
    }
    return {**base, **metrics}


# zoo/RESULTS.md, DDIM-25, 1,000 samples: precision flat (0.600 -> 0.591), recall falls.
UNCOND0 = _row(
    "uncond_unet",
    0.0,
    fid=59.46,
    fid_se=1.3,
    precision=0.600,
    precision_se=0.014,
    recall=0.584,
    recall_se=0.021,
    class_agreement=0.090,
)
UNCOND20 = _row(
    "uncond_unet",
    20.0,
    fid=49.58,
    fid_se=0.8,
    precision=0.591,
    precision_se=0.016,
    recall=0.500,
    recall_se=0.020,
    class_agreement=0.699,
)
COND0 = _row(
    "cond_unet",
    0.0,
    fid=49.18,
    fid_se=1.3,
    precision=0.663,
    precision_se=0.015,
    recall=0.759,
    recall_se=0.021,
    class_agreement=0.811,
)


def _checks(bench, uncond0=UNCOND0, top=UNCOND20, cond0=COND0, noise=279.0):
    recall = bench.change(uncond0, top, "recall")
    return bench.check_claims(uncond0, top, cond0, recall, noise)


def test_the_measured_zoo_holds_the_claim_without_a_precision_rise(bench):
    checks = _checks(bench)
    assert all(checks.values()), checks
    assert len(checks) == 4
    assert not any("precision" in name for name in checks)


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"class_agreement": 0.35}, "guided agreement rises"),
        ({"recall": 0.560}, "guided recall falls"),  # z = -1.0: within two standard errors
        ({"recall": 0.600}, "guided recall falls"),
    ],
)
def test_each_guided_part_of_the_claim_can_fail(bench, change, failing):
    checks = _checks(bench, top={**UNCOND20, **change})
    assert [name for name, ok in checks.items() if not ok] == [
        name for name in checks if name.startswith(failing)
    ]


def test_conditional_fid_must_be_clearly_lower_and_both_far_below_noise(bench):
    close = _checks(bench, cond0={**COND0, "fid": 57.0})  # 2.46 lower, 1.3 standard errors
    assert [name for name, ok in close.items() if not ok] == [
        "conditional FID clearly below unconditional FID at scale 0"
    ]
    noisy = _checks(bench, noise=100.0)
    assert [name for name, ok in noisy.items() if not ok] == ["both FIDs < half the FID of noise"]
    assert len(_checks(bench, cond0=None)) == 2


def test_script_reads_run_dirs_and_exits_by_the_claim(bench, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [UNCOND0, UNCOND20, COND0]
    (run / "records.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    monkeypatch.setattr(bench, "noise_fid", lambda num: 279.0)
    monkeypatch.setattr(sys, "argv", ["bench_zoo_quality.py", str(run)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "guided precision change, scale 0 -> 20: -0.009" in out  # reported
    assert "FAIL" not in out and out.count("PASS") == 4
    flat = {**UNCOND20, "recall": 0.58}
    (run / "records.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in (UNCOND0, flat, COND0))
    )
    assert bench.main() == 1
    assert "FAIL  guided recall falls" in capsys.readouterr().out
