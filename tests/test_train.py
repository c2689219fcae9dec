"""The zoo trainer and the `data`/`train` commands, on tiny models (8x8, width 32, a few steps)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.models import (
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    load_checkpoint,
)
from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.zoo.shapes import SPLITS, make_split, render_shapes
from evalsuite.zoo.train import (
    STATE_NAME,
    LRSchedule,
    _batch,
    _step_generator,
    train_classifier,
    train_unet,
)

# Tiny class-conditional UNet: 8x8, two levels of width 32, attention at 4x4.
TINY_UNET = UNetConfig(
    image_size=8,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 1),
    attention_resolutions=(4,),
    num_head_channels=32,
    resblock_updown=True,
    learn_sigma=True,
    class_cond=True,
    num_classes=10,
)
TINY_DIFFUSION = DiffusionConfig(diffusion_steps=50, noise_schedule="cosine", learn_sigma=True)
TINY_CLASSIFIER = ClassifierConfig(
    image_size=8,
    classifier_width=32,
    classifier_depth=1,
    classifier_attention_resolutions=(4,),
    channel_mult=(1, 1),
    num_head_channels=32,
    num_classes=10,
)
TRAINING = {"batch_size": 4, "lr": 1e-3, "seed": 3, "progress": False, "log_every": 1}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run faster on one thread, and a shared machine cannot oversubscribe it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def _assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_unet_trains_and_checkpoints_load(tmp_path) -> None:
    path = train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=3, save_at=(2,), **TRAINING)
    log = _log(tmp_path)
    assert [record["step"] for record in log] == [1, 2, 3]
    for record in log:
        assert all(np.isfinite(record[key]) for key in ("loss", "mse", "vb"))
        assert record["loss"] == pytest.approx(record["mse"] + record["vb"])
    loaded = load_checkpoint(path, "unet")
    assert loaded.model_config == TINY_UNET and loaded.diffusion_config == TINY_DIFFUSION
    assert loaded.step == 3 and loaded.extra["weights"] == "ema"
    early = load_checkpoint(tmp_path / "unet_step2.pt", "unet")
    assert early.step == 2
    # The checkpoint holds the EMA weights: they differ from the raw weights after training.
    state = torch.load(tmp_path / STATE_NAME, weights_only=True)
    _assert_same_tensors(loaded.model.state_dict(), state["ema"])
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    with torch.no_grad():
        out = loaded.model(torch.zeros(2, 3, 8, 8), torch.tensor([0, 49]), torch.tensor([1, 2]))
    assert out.shape == (2, 6, 8, 8) and torch.isfinite(out).all()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_unet(TINY_UNET, TINY_DIFFUSION, out=straight, steps=4, **TRAINING)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=resumed, steps=2, **TRAINING)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=resumed, steps=4, **TRAINING)
    first = torch.load(straight / STATE_NAME, weights_only=True)
    second = torch.load(resumed / STATE_NAME, weights_only=True)
    assert first["step"] == second["step"] == 4
    _assert_same_tensors(first["model"], second["model"])
    _assert_same_tensors(first["ema"], second["ema"])
    # The log of the resumed run has each step once, with the same losses.
    assert _log(straight) == [
        {**record, "seconds_per_step": straight_record["seconds_per_step"]}
        for record, straight_record in zip(_log(resumed), _log(straight), strict=True)
    ]


def test_resume_refuses_other_settings_and_global_rng_is_untouched(tmp_path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=2, **TRAINING)
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(EvalsuiteError, match="lr"):
        train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=3, **{**TRAINING, "lr": 2e-3})
    with pytest.raises(EvalsuiteError, match="past the requested"):
        train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=1, **TRAINING)
    with pytest.raises(EvalsuiteError, match="cannot write"):
        train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=3, save_at=(1,), **TRAINING)
    # Without resuming, the run starts over from step 0 and forgets the earlier one.
    train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=1, resume=False, **TRAINING)
    assert torch.load(tmp_path / STATE_NAME, weights_only=True)["step"] == 1
    assert [record["step"] for record in _log(tmp_path)] == [1]


def test_lr_schedule_anneals_linearly_over_the_last_steps() -> None:
    assert [LRSchedule(5).factor(step) for step in range(1, 6)] == [1.0] * 5
    assert [LRSchedule(5, 2).factor(step) for step in range(1, 6)] == [1, 1, 1, 1.0, 0.5]
    assert [LRSchedule(4, 4).factor(step) for step in range(1, 5)] == [1.0, 0.75, 0.5, 0.25]
    # Two schedules agree up to a step when neither has started annealing by then.
    assert LRSchedule(20).agrees_until(LRSchedule(30, 10), 20)
    assert not LRSchedule(20).agrees_until(LRSchedule(30, 11), 20)
    assert not LRSchedule(30, 10).agrees_until(LRSchedule(40, 10), 25)


def test_annealed_run_resumes_from_a_constant_rate_state(tmp_path) -> None:
    # Constant rate up to step 2, then annealing over steps 3..4: the same weights whether the
    # run is made at once or continued from a constant-rate run stopped at step 2.
    straight, continued, constant = tmp_path / "straight", tmp_path / "continued", tmp_path / "c"
    annealed = {**TRAINING, "lr_anneal_steps": 2}
    train_unet(TINY_UNET, TINY_DIFFUSION, out=straight, steps=4, save_at=(2, 3), **annealed)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=continued, steps=2, **TRAINING)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=continued, steps=4, **annealed)
    train_unet(TINY_UNET, TINY_DIFFUSION, out=constant, steps=4, **TRAINING)
    first = torch.load(straight / STATE_NAME, weights_only=True)
    second = torch.load(continued / STATE_NAME, weights_only=True)
    _assert_same_tensors(first["model"], second["model"])
    _assert_same_tensors(first["ema"], second["ema"])
    # Annealing changed the last step (half the rate) but not the ones before it.
    third = torch.load(constant / STATE_NAME, weights_only=True)
    assert any(not torch.equal(first["model"][k], third["model"][k]) for k in third["model"])
    assert _log(straight)[:3] == [
        {**record, "seconds_per_step": straight_record["seconds_per_step"]}
        for record, straight_record in zip(_log(constant)[:3], _log(straight)[:3], strict=True)
    ]
    assert load_checkpoint(straight / "unet.pt", "unet").extra["training"]["lr_anneal_steps"] == 2
    # Snapshots: step 2 is a constant-rate run of 2 steps; step 3 a point of the annealed run.
    before = load_checkpoint(straight / "unet_step2.pt", "unet").extra["training"]
    assert (before["steps"], before["lr_anneal_steps"], "run_steps" in before) == (2, 0, False)
    during = load_checkpoint(straight / "unet_step3.pt", "unet").extra["training"]
    assert (during["steps"], during["lr_anneal_steps"], during["run_steps"]) == (3, 2, 4)
    # A state already annealed under one schedule cannot continue under another.
    with pytest.raises(EvalsuiteError, match="learning-rate schedule"):
        train_unet(TINY_UNET, TINY_DIFFUSION, out=straight, steps=6, **annealed)
    with pytest.raises(EvalsuiteError, match="lr_anneal_steps"):
        train_unet(
            TINY_UNET,
            TINY_DIFFUSION,
            out=tmp_path / "bad",
            steps=2,
            **{**TRAINING, "lr_anneal_steps": 3},
        )


def test_batches_depend_only_on_seed_and_step() -> None:
    from evalsuite.zoo.train import TrainOptions

    options = TrainOptions(
        task="unet",
        batch_size=5,
        lr=1e-3,
        weight_decay=0.0,
        ema_rate=0.9,
        seed=9,
        dataset="shapes",
        image_size=8,
    )
    x0, labels = _batch(options, _step_generator(9, 17))
    again, _ = _batch(options, _step_generator(9, 17))
    other, _ = _batch(options, _step_generator(9, 18))
    assert x0.shape == (5, 3, 8, 8) and x0.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(x0, again) and not torch.equal(x0, other)
    assert -1.0 <= x0.min() and x0.max() <= 1.0
    # The batch is the train split's images at the drawn indices, scaled to [-1, 1].
    indices = torch.randint(0, options.train_set_size, (5,), generator=_step_generator(9, 17))
    images, expected_labels = render_shapes(indices.numpy(), seed=SPLITS["train"], image_size=8)
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(x0, expected) and torch.equal(labels, torch.from_numpy(expected_labels))


@pytest.mark.parametrize("noised", [True, False])
def test_classifier_trains_and_loads(tmp_path, noised: bool) -> None:
    path = train_classifier(
        TINY_CLASSIFIER, TINY_DIFFUSION, noised=noised, out=tmp_path, steps=3, **TRAINING
    )
    log = _log(tmp_path)
    assert len(log) == 3
    assert all(np.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0 for r in log)
    loaded = load_checkpoint(path, "classifier")
    assert loaded.model_config == TINY_CLASSIFIER
    assert loaded.extra["training"]["task"] == (
        "classifier_noised" if noised else "classifier_clean"
    )


def test_noised_and_clean_classifiers_see_different_inputs(tmp_path) -> None:
    # Same seed, same batches: only the noising differs, so the first-step losses differ.
    options = {**TRAINING, "steps": 1}
    train_classifier(TINY_CLASSIFIER, TINY_DIFFUSION, noised=True, out=tmp_path / "n", **options)
    train_classifier(TINY_CLASSIFIER, TINY_DIFFUSION, noised=False, out=tmp_path / "c", **options)
    assert _log(tmp_path / "n")[0]["loss"] != _log(tmp_path / "c")[0]["loss"]


def test_trainer_rejects_bad_settings(tmp_path) -> None:
    with pytest.raises(EvalsuiteError, match="num_classes"):
        train_classifier(
            dataclasses.replace(TINY_CLASSIFIER, num_classes=1000),
            TINY_DIFFUSION,
            noised=True,
            out=tmp_path,
            steps=1,
            **TRAINING,
        )
    with pytest.raises(EvalsuiteError, match="save_at"):
        train_unet(TINY_UNET, TINY_DIFFUSION, out=tmp_path, steps=2, save_at=(5,), **TRAINING)
    with pytest.raises(EvalsuiteError, match="learn_sigma"):
        train_unet(
            TINY_UNET, DiffusionConfig(diffusion_steps=50), out=tmp_path, steps=1, **TRAINING
        )


def test_data_command_writes_a_valid_batch(tmp_path) -> None:
    out = tmp_path / "reference.npz"
    result = CliRunner().invoke(main, ["data", "reference", "--num", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as batch:
        images, labels = make_split("reference", 12)
        np.testing.assert_array_equal(batch["arr_0"], images)
        np.testing.assert_array_equal(batch["arr_1"], labels)
        assert batch["arr_0"].dtype == np.uint8 and batch["arr_1"].dtype == np.int64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "validation", "--num", "4"], "unknown split"),
        (["data", "train", "--num", "0"], "--num must be >= 1"),
        (["data", "train", "--num", "-3"], "--num must be >= 1"),
    ],
)
def test_data_command_bad_input(tmp_path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x.npz").exists()


def test_train_command_end_to_end(tmp_path) -> None:
    flags = (
        "--image_size 16 --classifier_width 32 --classifier_depth 1 "
        "--classifier_attention_resolutions 4 --num_classes 10 --diffusion_steps 50"
    )
    args = ["train", "classifier", "--clean", "--flags", flags, "--out", str(tmp_path)]
    args += ["--lr-anneal-steps", "1", "--steps", "2", "--batch-size", "2", "--save-at", "1"]
    args += ["--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "classifier.pt" in result.output
    loaded = load_checkpoint(tmp_path / "classifier_step1.pt", "classifier")
    assert loaded.step == 1 and loaded.model_config.classifier_width == 32
    # Step 1 comes before the one annealed step: a constant-rate snapshot.
    assert loaded.extra["training"]["lr_anneal_steps"] == 0
    bad = CliRunner().invoke(main, [*args[:-5], "--steps", "2", "--save-at", "one"])
    assert bad.exit_code == 2 and "--save-at" in bad.output
