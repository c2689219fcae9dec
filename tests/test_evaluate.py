"""`evalsuite evaluate` / `ref-stats` / `info` end to end on tiny batches, and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalsuite.cli import main
from tests.helpers import random_batch

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "--kid-subset-size", "4", "--kid-subsets", "5"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def structured_batch(path: Path, num: int, seed: int, size: int = 16) -> Path:
    # Smooth coloured blobs: features well away from degenerate.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(num):
        cx, cy, r = rng.uniform(0.2, 0.8, 3)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.1 + 0.3 * r) ** 2)[..., None]
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        images.append(np.where(mask, fg, bg).astype(np.uint8))
    np.savez(path, arr_0=np.stack(images), arr_1=np.arange(num, dtype=np.int64))
    return path


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("batches")
    return {
        "ref": structured_batch(folder / "ref.npz", 10, seed=0),
        "samples": structured_batch(folder / "samples.npz", 8, seed=1),
    }


@pytest.fixture(scope="module")
def result(batches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("json") / "result.json"
    run = invoke(
        "evaluate", str(batches["ref"]), str(batches["samples"]), "--json", str(out), *FAST
    )
    assert run.exit_code == 0, run.output
    assert "FID" in run.output and "statistics recompute" in run.output
    return json.loads(out.read_text())


def test_json_has_metrics_and_provenance(result):
    for key in (
        "fid",
        "sfid",
        "inception_score",
        "precision",
        "recall",
        "kid",
        "num_samples",
        "num_reference",
    ):
        assert key in result
    assert result["num_samples"] == 8 and result["num_reference"] == 10
    assert result["fid"] > 0 and result["sfid"] > 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["ref_stats"] == "recompute"
    assert len(result["weights_sha256"]) == 64 and result["weights_source"]
    assert result["versions"]["torch"]
    # The offline default weights have no classifier head: IS is unavailable, and says why.
    if result["inception_score"] is None:
        assert any("--inception-weights" in note for note in result["notes"])


def test_identical_sets_give_zero_fid(batches):
    run = invoke(
        "evaluate", str(batches["ref"]), str(batches["ref"]), "--metrics", "fid,sfid,pr", *FAST
    )
    assert run.exit_code == 0, run.output
    fid = float(run.output.split("FID")[1].split()[0])
    assert abs(fid) < 1e-3
    assert "Precision        1.0000" in run.output and "Recall           1.0000" in run.output


def test_stored_stats_equal_recomputed(batches, result, tmp_path):
    stats = tmp_path / "stats.npz"
    run = invoke("ref-stats", str(batches["ref"]), "--out", str(stats), "--quiet")
    assert run.exit_code == 0, run.output
    out = tmp_path / "stored.json"
    run = invoke("evaluate", str(stats), str(batches["samples"]), "--json", str(out), *FAST)
    assert run.exit_code == 0, run.output
    stored = json.loads(out.read_text())
    assert stored["ref_stats"] == "stored"
    for key in ("fid", "sfid", "precision", "recall"):
        assert stored[key] == pytest.approx(result[key], rel=1e-9, abs=1e-12)
    # An ADM-style reference batch with mu/sigma stored: used by default, recomputed on request.
    with np.load(batches["ref"]) as data:
        images = data["arr_0"]
    with np.load(stats) as data:
        pool, spatial = data["pool"].astype(np.float64), data["spatial"].astype(np.float64)
    adm = tmp_path / "adm_ref.npz"
    np.savez(
        adm,
        arr_0=images,
        mu=pool.mean(0).astype(np.float32),
        sigma=np.cov(pool, rowvar=False),
        mu_s=spatial.mean(0).astype(np.float32),
        sigma_s=np.cov(spatial, rowvar=False),
    )
    for mode in ("stored", "recompute"):
        out = tmp_path / f"{mode}.json"
        run = invoke(
            "evaluate",
            str(adm),
            str(batches["samples"]),
            "--ref-stats",
            mode,
            "--metrics",
            "fid,sfid",
            "--json",
            str(out),
            *FAST,
        )
        assert run.exit_code == 0, run.output
        assert f"statistics {mode}" in run.output
        assert json.loads(out.read_text())["fid"] == pytest.approx(result["fid"], rel=1e-5)


def test_batch_size_and_folder_input_do_not_change_metrics(batches, result, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    with np.load(batches["samples"]) as data:
        for i, image in enumerate(data["arr_0"]):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    out = tmp_path / "folder.json"
    run = invoke(
        "evaluate",
        str(batches["ref"]),
        str(folder),
        "--batch-size",
        "3",
        "--metrics",
        "fid,pr",
        "--json",
        str(out),
        *FAST,
    )
    assert run.exit_code == 0, run.output
    got = json.loads(out.read_text())
    assert got["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert got["precision"] == result["precision"] and got["recall"] == result["recall"]


def test_rerun_reuses_cached_features(batches, result, monkeypatch):
    from evalsuite.pipeline import featureset

    def fail(*args, **kwargs):
        raise AssertionError("features were extracted again instead of read from the cache")

    monkeypatch.setattr(featureset.FeatureComputer, "_extract", fail)
    run = invoke(
        "evaluate", str(batches["ref"]), str(batches["samples"]), "--metrics", "fid", *FAST
    )
    assert run.exit_code == 0, run.output


def test_interrupted_extraction_resumes_from_chunks(batches, tmp_path, monkeypatch):
    from evalsuite.pipeline import featureset

    monkeypatch.setenv("EVALSUITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EVALSUITE_FEATURE_CHUNK", "3")
    real = featureset.FeatureComputer._extract
    calls = []

    def interrupt_second(self, batches_iter, bar):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batches_iter, bar)

    monkeypatch.setattr(featureset.FeatureComputer, "_extract", interrupt_second)
    run = invoke(
        "evaluate", str(batches["ref"]), str(batches["samples"]), "--metrics", "fid", *FAST
    )
    assert run.exit_code == 130
    chunks = list((tmp_path / "cache" / "features").rglob("chunk_*.npz"))
    assert len(chunks) == 1 and not list((tmp_path / "cache").rglob("*.tmp"))
    calls.clear()
    monkeypatch.setattr(
        featureset.FeatureComputer,
        "_extract",
        lambda self, b, bar: (calls.append(1), real(self, b, bar))[1],
    )
    run = invoke(
        "evaluate", str(batches["ref"]), str(batches["samples"]), "--metrics", "fid", *FAST
    )
    assert run.exit_code == 0, run.output
    # 8 samples in chunks of 3 -> 3 chunks, 1 cached; 10 reference images -> 4 chunks.
    assert len(calls) == 2 + 4


def test_two_processes_equal_one(batches, result, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "EVALSUITE_CACHE": str(tmp_path / "cache"),
        "EVALSUITE_FEATURE_CHUNK": "3",
    }
    out = tmp_path / "dist.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29519",
        "-m",
        "evalsuite",
        "evaluate",
        str(batches["ref"]),
        str(batches["samples"]),
        "--metrics",
        "fid,sfid,pr",
        "--json",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["fid"] == pytest.approx(result["fid"], rel=1e-5)
    assert got["sfid"] == pytest.approx(result["sfid"], rel=1e-5)
    assert got["precision"] == result["precision"] and got["recall"] == result["recall"]


def test_info_reports_weights():
    run = invoke("info", "--json")
    assert run.exit_code == 0, run.output
    info = json.loads(run.output)
    assert len(info["weights_sha256"]) == 64
    assert set(info["supported_metrics"]) >= {"fid", "sfid", "pr", "kid"}
    assert ("is" in info["supported_metrics"]) == info["has_logits"]


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "nope.npz", "no such file")
    (tmp / "text.npz").write_text("hello")
    cases["not_npz"] = (tmp / "text.npz", "not a readable .npz")
    good = random_batch(tmp / "good.npz", 6)
    data = good.read_bytes()
    (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (tmp / "truncated.npz", "npz")
    np.savez(tmp / "no_arr0.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    cases["no_arr_0"] = (tmp / "no_arr0.npz", "no arr_0")
    np.savez(tmp / "rank3.npz", arr_0=np.zeros((4, 8, 8), np.uint8))
    cases["rank"] = (tmp / "rank3.npz", "rank 4")
    np.savez(tmp / "rgba.npz", arr_0=np.zeros((4, 8, 8, 4), np.uint8))
    cases["channels"] = (tmp / "rgba.npz", "4 channels")
    np.savez(tmp / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    cases["float"] = (tmp / "float.npz", "uint8")
    nan = np.zeros((4, 8, 8, 3), np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", arr_0=nan)
    cases["nan"] = (tmp / "nan.npz", "nan")
    random_batch(tmp / "three.npz", 3)
    cases["too_few_for_pr"] = (tmp / "three.npz", "k+1 = 4")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_npz",
        "truncated",
        "no_arr_0",
        "rank",
        "channels",
        "float",
        "nan",
        "too_few_for_pr",
    ],
)
def test_bad_samples_exit_2_one_line(batches, tmp_path, case):
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out.json"
    run = invoke("evaluate", str(batches["ref"]), str(path), "--json", str(out), *FAST)
    assert run.exit_code == 2, run.output
    assert message.lower() in run.output.lower()
    assert len(run.output.strip().splitlines()) == 1 and "Traceback" not in run.output
    assert not out.exists()
    cache = Path(os.environ["EVALSUITE_CACHE"])
    assert not list(cache.rglob("*.tmp"))


def test_stats_with_wrong_shapes(batches, tmp_path):
    bad = tmp_path / "bad_stats.npz"
    np.savez(bad, mu=np.zeros(100, np.float32), sigma=np.eye(100))
    run = invoke("evaluate", str(bad), str(batches["samples"]), "--metrics", "fid", *FAST)
    assert run.exit_code == 2 and "mu has shape (100,)" in run.output
    stats_only = tmp_path / "stats_only.npz"
    np.savez(stats_only, mu=np.zeros(2048, np.float32), sigma=np.eye(2048))
    run = invoke(
        "evaluate",
        str(stats_only),
        str(batches["samples"]),
        "--metrics",
        "fid",
        "--ref-stats",
        "recompute",
        *FAST,
    )
    assert run.exit_code == 2 and "recompute" in run.output


def test_weights_file_of_unknown_layout(batches, tmp_path):
    import torch

    weird = tmp_path / "weird.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, weird)
    run = invoke(
        "evaluate",
        str(batches["ref"]),
        str(batches["samples"]),
        "--inception-weights",
        str(weird),
        *FAST,
    )
    assert run.exit_code == 2 and "weird.pth" in run.output
    assert len(run.output.strip().splitlines()) == 1


def test_unknown_metric_exit_2(batches):
    run = invoke("evaluate", str(batches["ref"]), str(batches["samples"]), "--metrics", "fid,lpips")
    assert run.exit_code == 2 and "lpips" in run.output


def test_npz_stream_reads_slices(tmp_path):
    from evalsuite.pipeline.batches import NpzBatch

    path = random_batch(tmp_path / "b.npz", 11)
    batch = NpzBatch(path)
    with np.load(path) as data:
        full = data["arr_0"]
    got = np.concatenate(list(batch.iter_batches(4, start=2, stop=9)))
    np.testing.assert_array_equal(got, full[2:9])
    assert zipfile.is_zipfile(path)
