"""`evalsuite sample`: per-sample seeding, batch-size/process invariance, resume, refusals, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from evalsuite.cli import main
from tests.helpers import tiny_classifier, tiny_unet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        "model": tiny_unet(folder / "unet.pt"),
        "uncond": tiny_unet(folder / "uncond.pt", class_cond=False, seed=3),
        "classifier": tiny_classifier(folder / "classifier.pt"),
        "classifier16": tiny_classifier(folder / "classifier16.pt", image_size=16),
        "classifier7": tiny_classifier(folder / "classifier7.pt", num_classes=7),
    }


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sample", "--quiet", *args])
    return result.exit_code, result.output


def load(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path) as data:
        return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)


def test_batch_size_does_not_change_samples(checkpoints, tmp_path):
    outs = []
    for batch_size in (1, 3, 8):
        out = tmp_path / f"b{batch_size}.npz"
        code, output = run(
            [
                "--model",
                str(checkpoints["model"]),
                "--num-samples",
                "7",
                "--steps",
                "8",
                "--batch-size",
                str(batch_size),
                "--out",
                str(out),
            ]
        )
        assert code == 0, output
        outs.append(load(out))
    images, labels = outs[0]
    assert images.shape == (7, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.shape == (7,)
    assert len(np.unique(images.reshape(7, -1), axis=0)) == 7
    for other_images, other_labels in outs[1:]:
        np.testing.assert_array_equal(other_images, images)
        np.testing.assert_array_equal(other_labels, labels)


def test_sample_prefix_is_stable_and_seed_matters(checkpoints, tmp_path):
    base = [
        "--model",
        str(checkpoints["model"]),
        "--steps",
        "8",
        "--sampler",
        "ddim",
        "--steps",
        "ddim5",
    ]
    assert run([*base, "--num-samples", "3", "--out", str(tmp_path / "a.npz")])[0] == 0
    assert run([*base, "--num-samples", "5", "--out", str(tmp_path / "b.npz")])[0] == 0
    assert (
        run([*base, "--num-samples", "3", "--seed", "1", "--out", str(tmp_path / "c.npz")])[0] == 0
    )
    a, b, c = (load(tmp_path / f"{n}.npz")[0] for n in "abc")
    np.testing.assert_array_equal(a, b[:3])
    assert not np.array_equal(a, c)


def test_sidecar_records_config_and_hashes(checkpoints, tmp_path):
    out = tmp_path / "s.npz"
    assert (
        run(
            [
                "--model",
                str(checkpoints["model"]),
                "--num-samples",
                "2",
                "--steps",
                "4",
                "--seed",
                "5",
                "--out",
                str(out),
            ]
        )[0]
        == 0
    )
    record = json.loads((tmp_path / "s.json").read_text())
    from evalsuite.runtime.cache import sha256_file

    assert record["identity"]["model"]["sha256"] == sha256_file(checkpoints["model"])
    assert record["identity"]["settings"]["seed"] == 5
    assert record["identity"]["model"]["config"]["num_channels"] == 32
    assert "torch" in record["versions"]
    assert not (tmp_path / "s.npz.parts").exists()


def test_guidance_scale_zero_equals_unguided_and_positive_changes(checkpoints, tmp_path):
    common = [
        "--model",
        str(checkpoints["uncond"]),
        "--num-samples",
        "4",
        "--steps",
        "6",
        "--classes",
        "balanced",
    ]
    assert (
        run(
            [
                *common,
                "--classifier",
                str(checkpoints["classifier"]),
                "--out",
                str(tmp_path / "g0.npz"),
            ]
        )[0]
        == 0
    )
    assert (
        run(
            [
                *common,
                "--classifier",
                str(checkpoints["classifier"]),
                "--guidance-scale",
                "20",
                "--out",
                str(tmp_path / "g20.npz"),
            ]
        )[0]
        == 0
    )
    assert run([*common[:-2], "--out", str(tmp_path / "plain.npz")])[0] == 0
    g0, labels0 = load(tmp_path / "g0.npz")
    g20, _ = load(tmp_path / "g20.npz")
    plain, plain_labels = load(tmp_path / "plain.npz")
    np.testing.assert_array_equal(g0, plain)
    np.testing.assert_array_equal(labels0, [0, 1, 2, 3])
    assert plain_labels is None
    assert not np.array_equal(g0, g20)


def test_rerun_with_other_settings_is_refused(checkpoints, tmp_path):
    out = tmp_path / "s.npz"
    args = [
        "--model",
        str(checkpoints["model"]),
        "--num-samples",
        "2",
        "--steps",
        "4",
        "--out",
        str(out),
    ]
    assert run(args)[0] == 0
    before = out.read_bytes()
    code, output = run([*args[:-2], "--seed", "9", "--out", str(out)])
    assert code == 2 and "different settings" in output and "seed" in output
    assert out.read_bytes() == before
    code, output = run(args)
    assert code == 0


def _parts(out: Path) -> list[Path]:
    return sorted((out.parent / (out.name + ".parts")).glob("part_*.npz"))


def test_resume_after_sigkill_matches_uninterrupted(checkpoints, tmp_path):
    args = [
        "sample",
        "--quiet",
        "--model",
        str(checkpoints["model"]),
        "--num-samples",
        "12",
        "--steps",
        "60",
        "--batch-size",
        "2",
    ]
    reference = tmp_path / "full.npz"
    assert run([*args[2:], "--out", str(reference)])[0] == 0
    out = tmp_path / "killed.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalsuite", *args, "--out", str(out)], env=env, cwd=REPO
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(_parts(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed; make it longer"
    kept = len(_parts(out))
    assert kept >= 2
    code, output = run([*args[2:], "--out", str(out)])
    assert code == 0, output
    np.testing.assert_array_equal(load(out)[0], load(reference)[0])
    np.testing.assert_array_equal(load(out)[1], load(reference)[1])


def test_two_processes_and_thread_counts_equal_one(checkpoints, tmp_path):
    # One process with 2 threads vs torchrun's 2 processes with 1 thread each: the same bits.
    args = [
        "sample",
        "--quiet",
        "--model",
        str(checkpoints["model"]),
        "--num-samples",
        "5",
        "--steps",
        "6",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single.npz", tmp_path / "double.npz"
    one = subprocess.run(
        [sys.executable, "-m", "evalsuite", *args, "--out", str(single)],
        env={**env, "OMP_NUM_THREADS": "2"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    proc = subprocess.run(
        [*launcher, "-m", "evalsuite", *args, "--out", str(double)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(load(double)[0], load(single)[0])
    np.testing.assert_array_equal(load(double)[1], load(single)[1])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-samples", "0"], "--num-samples must be positive"),
        (["--steps", "ddim7x"], "respacing"),
        (["--guidance-scale", "1"], "needs a classifier"),
        (["--classes", "0,99"], "out of range"),
        (["--preset", "nope_diffusion"], "preset"),
        (["--model-flags", "--image_size 8 --num_chanels 16"], "num_channels"),
        (["--precision", "fp16"], "CUDA"),
    ],
)
def test_bad_input_one_line_exit_2(checkpoints, tmp_path, extra, message):
    out = tmp_path / "x.npz"
    code, output = run(
        ["--model", str(checkpoints["model"]), "--steps", "4", *extra, "--out", str(out)]
    )
    assert code == 2, output
    assert message.lower() in output.lower()
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "x.npz.parts").exists()


def test_checkpoint_architecture_mismatch_names_flag(tmp_path):
    import torch

    from evalsuite.models import UNetConfig, build_model
    from tests.helpers import TINY_UNET

    bare = tmp_path / "bare.pt"
    torch.save(build_model(UNetConfig(**TINY_UNET)).state_dict(), bare)
    flags = "--image_size 8 --num_channels 64 --num_res_blocks 1 --attention_resolutions 4 --channel_mult 1,2 --num_head_channels 16 --resblock_updown True --learn_sigma True"
    code, output = run(
        ["--model", str(bare), "--model-flags", flags, "--out", str(tmp_path / "x.npz")]
    )
    assert code == 2 and "num_channels" in output
    ok_flags = flags.replace("num_channels 64", "num_channels 32")
    code, output = run(
        [
            "--model",
            str(bare),
            "--model-flags",
            ok_flags,
            "--steps",
            "3",
            "--num-samples",
            "1",
            "--out",
            str(tmp_path / "y.npz"),
        ]
    )
    assert code == 0, output


@pytest.mark.parametrize(
    ("which", "message"),
    [("classifier16", "image size"), ("classifier7", "classes")],
)
def test_incompatible_classifier(checkpoints, tmp_path, which, message):
    code, output = run(
        [
            "--model",
            str(checkpoints["model"]),
            "--classifier",
            str(checkpoints[which]),
            "--guidance-scale",
            "1",
            "--out",
            str(tmp_path / "x.npz"),
        ]
    )
    assert code == 2 and message in output


def test_unreadable_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    code, output = run(["--model", str(junk), "--out", str(tmp_path / "x.npz")])
    assert code == 2 and "junk.pt" in output
    code, output = run(["--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.npz")])
    assert code == 2 and "missing.pt" in output
