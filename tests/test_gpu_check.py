"""benchmarks/gpu_check.py: its CPU smoke mode writes real measurements, and asking for CUDA
where there is none stops with one line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT
    )


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def numbers(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"(?<![\w.])\d+\.\d+(?:e[+-]\d+)?", line)]


@pytest.mark.slow
def test_quick_cpu_mode_writes_measurements(tmp_path):
    out = tmp_path / "RESULTS_gpu.md"
    result = run("--device", "cpu", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    text = out.read_text()
    assert "**This check has not run on a GPU yet.**" in text
    assert "timeout 540 python benchmarks/gpu_check.py --device cuda" in text
    assert f"python benchmarks/gpu_check.py --device cpu --quick --out {out}" in text
    assert "- [ ]" not in text and "failed" not in text.lower()
    summary = re.search(r"Summary: (\d+) of (\d+) checks hold\.", text)
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(2)) >= 16

    features = section(text, "1. Inception features vs torch-fidelity")
    row = next(line for line in features.splitlines() if line.startswith("| 2 |"))
    ours, theirs, diff = numbers(row)
    assert ours > 0 and theirs > 0 and 0 < diff <= 1e-4

    sampling = section(text, "2. ADM sampling throughput")
    rows = [line for line in sampling.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 2
    for line in rows:
        unguided, guided, ratio = numbers(line)
        assert unguided > 0 and guided > 0
        assert ratio == pytest.approx(guided / unguided, abs=0.01)

    pr = section(text, "3. Precision/recall on the device")
    assert re.search(r"300 reference x 600 sample features .* on cpu: \d+\.\d s", pr)

    sweep = section(text, "4. 1-process torchrun sweep")
    assert "`torchrun --standalone --nproc_per_node 1 -m evalsuite sweep" in sweep
    assert sweep.count("exit 0, 2 records") == 2

    claims = section(text, "5. Reproducibility claims")
    assert "| 4 | 0.00e+00 | 0 |" in claims
    assert "- [x] CPU: samples bit-identical for every batch size" in claims

    sizing = section(text, "6. Sizing a Table-4 row: sweep --dry-run --calibrate")
    estimate = re.search(r"Estimated: (\d+\.\d+) device-hours for the two cells on cpu", sizing)
    assert estimate and "zoo_ddpm-ddim2_s1" in sizing and "calibration: zoo ddpm guided" in sizing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    out = tmp_path / "RESULTS_gpu.md"
    result = run("--device", "cuda", "--out", str(out))
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "CUDA is not available" in result.stderr and "--device cpu --quick" in result.stderr
    assert not out.exists()
