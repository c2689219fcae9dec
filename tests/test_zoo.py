"""The shipped zoo: files match the manifest, classifiers are accurate, bad files are named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite import zoo
from evalsuite.cli import main
from evalsuite.diffusion import make_schedule
from evalsuite.models import load_checkpoint
from evalsuite.zoo.shapes import make_split


def test_every_manifest_file_is_present_and_intact():
    manifest = zoo._manifest(zoo.ZOO_DIR)["files"]
    for name in (zoo.MODEL, zoo.UNCOND_MODEL, zoo.CLASSIFIER, zoo.JUDGE):
        assert name in manifest
        assert zoo.asset(name).exists()
    assert zoo.reference().exists()
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.iterdir()) + zoo.reference().stat().st_size
    assert total <= 48 * 2**20, (
        f"zoo binary assets are {total / 2**20:.1f} MB, over the 48 MB budget"
    )


def _accuracy(name: str, max_t: int, num: int = 500) -> float:
    loaded = load_checkpoint(zoo.asset(name), "classifier")
    images, labels = make_split("heldout", num)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    generator = torch.Generator().manual_seed(0)
    t = torch.randint(0, max_t + 1, (num,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    diffusion = loaded.diffusion_config
    schedule = make_schedule(diffusion.noise_schedule, diffusion.diffusion_steps)
    x_t = schedule.q_sample(x0, t, noise)
    with torch.no_grad():
        predicted = loaded.model(x_t, t).argmax(1).numpy()
    return float((predicted == labels).mean())


def test_noise_aware_classifier_is_accurate_at_small_t():
    # Issue acceptance: >= 90% on held-out images noised at t <= 100 (of 1000).
    assert _accuracy(zoo.CLASSIFIER, max_t=100) >= 0.9


def test_judge_is_accurate_on_clean_heldout_images():
    assert _accuracy(zoo.JUDGE, max_t=0) >= 0.95


def test_missing_and_corrupt_zoo_files_name_the_file_and_the_fix(tmp_path, monkeypatch):
    copy = tmp_path / "zoo_assets"
    shutil.copytree(zoo.ZOO_DIR, copy)
    monkeypatch.setattr(zoo, "ZOO_DIR", copy)
    (copy / zoo.CLASSIFIER).unlink()
    with open(copy / zoo.MODEL, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    runner = CliRunner()
    result = runner.invoke(main, ["sample", "--num-samples", "2", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2
    assert zoo.MODEL in result.output and zoo.REBUILD_COMMAND in result.output
    with pytest.raises(Exception, match="classifier.pt is missing"):
        zoo.asset(zoo.CLASSIFIER)


def test_sample_without_model_uses_the_zoo_and_says_so(tmp_path):
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(
        main,
        [
            "sample",
            "--num-samples",
            "2",
            "--steps",
            "ddim5",
            "--sampler",
            "ddim",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "zoo" in result.output
    with np.load(out) as data:
        assert data["arr_0"].shape == (2, 16, 16, 3)
