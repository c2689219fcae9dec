"""Classifier-free guidance: the null class, label dropout, the guided network and `sample`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.diffusion import (
    PerSampleNoise,
    classifier_free,
    make_denoiser,
    make_schedule,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.models import UNetConfig, build_configs, build_model, save_checkpoint
from evalsuite.models.checkpoint import load_checkpoint
from evalsuite.runtime.errors import EvalsuiteError
from tests.helpers import TINY_DIFFUSION, TINY_UNET, _randomise, tiny_classifier, tiny_unet

NUM_CLASSES = 4
NULL_CONFIG = UNetConfig(**TINY_UNET, class_cond=True, num_classes=NUM_CLASSES, null_class=True)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def null_class_unet(path: Path, seed: int = 5) -> Path:
    model = build_model(NULL_CONFIG)
    _randomise(model, seed)
    save_checkpoint(path, model, NULL_CONFIG, TINY_DIFFUSION, kind="unet")
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cfg")
    return {
        "cfg": null_class_unet(folder / "cfg.pt"),
        "plain": tiny_unet(folder / "plain.pt", num_classes=NUM_CLASSES),
        "classifier": tiny_classifier(folder / "classifier.pt", num_classes=NUM_CLASSES),
    }


class CountingNet:
    """A network callable, counting its calls and the batch sizes it saw."""

    def __init__(self, net) -> None:
        self.net = net
        self.batches: list[int] = []

    def __call__(self, x, timesteps, y):
        self.batches.append(x.shape[0])
        return self.net(x, timesteps, y)


def test_null_class_adds_one_label_row_and_a_flag():
    model = build_model(NULL_CONFIG)
    assert model.label_emb.weight.shape[0] == NUM_CLASSES + 1
    assert NULL_CONFIG.null_label == NUM_CLASSES
    config, _ = build_configs(
        "--image_size 8 --num_channels 32 --class_cond True --num_classes 4 --null_class True "
        "--attention_resolutions 4 --channel_mult 1,2 --num_head_channels 16"
    )
    assert config.null_class and config.label_rows == 5
    with pytest.raises(EvalsuiteError, match="class-conditional"):
        UNetConfig(**TINY_UNET, class_cond=False, null_class=True)


def test_bare_state_dict_with_a_null_row_names_the_flag(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model(NULL_CONFIG).state_dict(), bare)
    flags = (
        "--image_size 8 --num_channels 32 --num_res_blocks 1 --attention_resolutions 4 "
        "--channel_mult 1,2 --num_head_channels 16 --resblock_updown True --learn_sigma True "
        "--class_cond True --num_classes 4"
    )
    with pytest.raises(EvalsuiteError, match="--null_class True"):
        load_checkpoint(bare, "unet", flags=flags)
    loaded = load_checkpoint(bare, "unet", flags=flags + " --null_class True")
    assert loaded.model_config.null_label == NUM_CLASSES


@pytest.mark.parametrize("scale", [0.5, 2.5, 7.0])
def test_one_cfg_step_equals_the_formula_from_two_network_calls(scale):
    # The network runs row by row (as evalsuite's CPU sampler does), so the batched pass and the
    # separate calls share their float32 arithmetic; the formula, not blocking roundoff, is tested.
    net = build_model(NULL_CONFIG).eval()
    _randomise(net, 11)

    def rowwise(x, timesteps, y):
        return torch.cat(
            [net(x[i : i + 1], timesteps[i : i + 1], y[i : i + 1]) for i in range(len(x))]
        )

    counting = CountingNet(rowwise)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([5, 50, 99])
    y = torch.tensor([0, 3, 1])
    guided = classifier_free(counting, scale=scale, null_label=NUM_CLASSES, guided_channels=3)
    with torch.no_grad():
        out = guided(x, timesteps, y=y)
        conditional = rowwise(x, timesteps, y)
        unconditional = rowwise(x, timesteps, torch.full_like(y, NUM_CLASSES))
    # By hand: eps~ = eps(x, ∅) + s (eps(x, y) - eps(x, ∅)); variance from the conditional half.
    expected_eps = unconditional[:, :3] + scale * (conditional[:, :3] - unconditional[:, :3])
    assert (out[:, :3] - expected_eps).abs().max() <= 1e-6
    assert torch.equal(out[:, 3:], conditional[:, 3:])
    assert not torch.allclose(out[:, :3], conditional[:, :3])
    assert counting.batches == [6]  # both halves in one batched pass


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_one_and_zero_reproduce_conditional_and_null_class_samples(sampler):
    net = build_model(NULL_CONFIG).eval()
    _randomise(net, 12)
    schedule = make_schedule("cosine", 100, "10")
    y = torch.tensor([0, 1, 2, 3, 1])
    seeds = [7, 8, 9, 10, 11]

    def draw(model_fn, labels):
        denoise = make_denoiser(
            model_fn, schedule, learn_sigma=True, predict_xstart=False, model_kwargs={"y": labels}
        )
        noise = PerSampleNoise.from_seeds(seeds)
        x_T = noise((5, 3, 8, 8))
        if sampler == "ddpm":
            return sample_ddpm(denoise, schedule, x_T, noise=noise)
        return sample_ddim(denoise, schedule, x_T, noise=noise, eta=0.5)

    null = torch.full_like(y, NUM_CLASSES)
    counting = CountingNet(net)
    cfg1 = draw(classifier_free(counting, scale=1, null_label=NUM_CLASSES, guided_channels=3), y)
    assert set(counting.batches) == {5}  # one half only
    cfg0 = draw(classifier_free(net, scale=0, null_label=NUM_CLASSES, guided_channels=3), y)
    assert torch.equal(cfg1, draw(net, y))
    assert torch.equal(cfg0, draw(net, null))
    cfg3 = draw(classifier_free(net, scale=3, null_label=NUM_CLASSES, guided_channels=3), y)
    assert not torch.equal(cfg3, cfg1)


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sample", "--quiet", *args])
    return result.exit_code, result.output


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def test_sample_cfg_scale_one_is_the_conditional_model_bit_for_bit(checkpoints, tmp_path):
    common = ["--model", str(checkpoints["cfg"]), "--steps", "6", "--num-samples", "5"]
    code, output = run([*common, "--out", str(tmp_path / "plain.npz")])
    assert code == 0, output
    code, output = run(
        [*common, "--guidance", "cfg", "--guidance-scale", "1", "--out", str(tmp_path / "s1.npz")]
    )
    assert code == 0, output
    np.testing.assert_array_equal(load(tmp_path / "s1.npz")[0], load(tmp_path / "plain.npz")[0])
    sidecar = json.loads((tmp_path / "s1.json").read_text())
    assert sidecar["guidance"]["kind"] == "cfg" and sidecar["guidance"]["scale"] == 1.0
    assert sidecar["identity"]["settings"]["guidance"] == "cfg"
    # Unguided batches keep the identity they had before CFG existed.
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert "guidance" not in plain["identity"]["settings"]
    assert plain["guidance"]["kind"] == "classifier"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_cfg_samples_do_not_depend_on_batch_size(checkpoints, tmp_path, sampler):
    outs = []
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}.npz"
        code, output = run(
            [
                "--model",
                str(checkpoints["cfg"]),
                "--guidance",
                "cfg",
                "--guidance-scale",
                "2.5",
                "--sampler",
                sampler,
                "--steps",
                "ddim5" if sampler == "ddim" else "5",
                "--num-samples",
                "5",
                "--batch-size",
                str(batch_size),
                "--out",
                str(out),
            ]
        )
        assert code == 0, output
        outs.append(load(out))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_cfg_with_a_classifier_gradient_on_top(checkpoints, tmp_path):
    common = [
        "--model",
        str(checkpoints["cfg"]),
        "--guidance",
        "cfg",
        "--guidance-scale",
        "2",
        "--steps",
        "5",
        "--num-samples",
        "3",
    ]
    code, output = run([*common, "--out", str(tmp_path / "cfg.npz")])
    assert code == 0, output
    code, output = run(
        [
            *common,
            "--classifier",
            str(checkpoints["classifier"]),
            "--classifier-scale",
            "5",
            "--out",
            str(tmp_path / "both.npz"),
        ]
    )
    assert code == 0, output
    assert not np.array_equal(load(tmp_path / "cfg.npz")[0], load(tmp_path / "both.npz")[0])
    sidecar = json.loads((tmp_path / "both.json").read_text())
    assert sidecar["guidance"]["classifier_scale"] == 5.0


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("plain", ["--guidance", "cfg", "--guidance-scale", "2"], "null class"),
        ("cfg", ["--guidance", "classifier"], "needs a classifier"),
        ("cfg", ["--guidance", "cfg", "--guidance-scale", "-1"], ">= 0"),
        ("cfg", ["--guidance", "cfg", "--classifier-scale", "1"], "needs a classifier"),
        ("cfg", ["--classifier-scale", "1"], "--guidance cfg"),
    ],
)
def test_bad_guidance_input_one_line_exit_2(checkpoints, tmp_path, model, extra, message):
    out = tmp_path / "x.npz"
    code, output = run(
        ["--model", str(checkpoints[model]), "--steps", "4", *extra, "--out", str(out)]
    )
    assert code == 2, output
    assert message.lower() in output.lower()
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
    assert not out.exists()


# --- training ---------------------------------------------------------------------------------

TRAIN_UNET = UNetConfig(
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
TRAIN_DIFFUSION = dataclasses.replace(TINY_DIFFUSION, diffusion_steps=50)
TRAINING = {"batch_size": 8, "lr": 1e-3, "seed": 3, "progress": False, "log_every": 1}


def _labels_seen(monkeypatch, **kwargs) -> list[torch.Tensor]:
    import evalsuite.zoo.train as train

    seen: list[torch.Tensor] = []
    original = train.training_losses

    def spy(*args, model_kwargs=None, **rest):
        seen.append(model_kwargs["y"].clone())
        return original(*args, model_kwargs=model_kwargs, **rest)

    monkeypatch.setattr(train, "training_losses", spy)
    train.train_unet(steps=4, **TRAINING, **kwargs)
    return seen


def test_label_dropout_replaces_labels_by_the_null_class(monkeypatch, tmp_path):
    null_config = dataclasses.replace(TRAIN_UNET, null_class=True)
    seen = torch.cat(
        _labels_seen(
            monkeypatch,
            model_config=null_config,
            diffusion_config=TRAIN_DIFFUSION,
            out=tmp_path / "half",
            label_dropout=0.5,
        )
    )
    dropped = (seen == 10).float().mean().item()
    assert 0.2 < dropped < 0.8 and seen[seen != 10].max() < 10
    plain = torch.cat(
        _labels_seen(
            monkeypatch,
            model_config=null_config,
            diffusion_config=TRAIN_DIFFUSION,
            out=tmp_path / "none",
            label_dropout=0.0,
        )
    )
    assert (plain < 10).all()
    # Same step draws: the kept labels are the images' labels in both runs.
    kept = seen != 10
    assert torch.equal(seen[kept], plain[kept])
    # Default with a null class: 0.1, recorded with the run.
    from evalsuite.zoo.train import train_unet

    train_unet(null_config, TRAIN_DIFFUSION, out=tmp_path / "default", steps=1, **TRAINING)
    training = json.loads((tmp_path / "default" / "config.json").read_text())["training"]
    assert training["label_dropout"] == 0.1


def test_label_dropout_needs_a_null_class(tmp_path):
    from evalsuite.zoo.train import train_unet

    with pytest.raises(EvalsuiteError, match="null class"):
        train_unet(
            TRAIN_UNET, TRAIN_DIFFUSION, out=tmp_path, steps=1, label_dropout=0.1, **TRAINING
        )


def test_warm_start_adds_the_null_row_as_the_mean_class_row(tmp_path):
    from evalsuite.zoo.train import _initial_weights, train_unet

    source = train_unet(TRAIN_UNET, TRAIN_DIFFUSION, out=tmp_path / "cond", steps=2, **TRAINING)
    null_config = dataclasses.replace(TRAIN_UNET, null_class=True)
    state, sha = _initial_weights(source, null_config)
    rows = load_checkpoint(source, "unet").model.label_emb.weight
    assert torch.equal(state["label_emb.weight"][:10], rows)
    assert torch.allclose(state["label_emb.weight"][10], rows.mean(0))
    tuned = train_unet(
        null_config, TRAIN_DIFFUSION, out=tmp_path / "cfg", steps=2, init=source, **TRAINING
    )
    assert load_checkpoint(tuned, "unet").model_config.null_class
    training = json.loads((tmp_path / "cfg" / "config.json").read_text())["training"]
    assert training["init_sha256"] == sha
    with pytest.raises(EvalsuiteError, match="another architecture"):
        _initial_weights(
            source, dataclasses.replace(null_config, num_channels=64, num_head_channels=64)
        )


# --- judge score, sweep and report -------------------------------------------------------------


def test_judge_score_is_the_inception_score_formula_over_the_judge_classes():
    from evalsuite.zoo.judge import judge_score

    # Identical predictions for every sample: p(y|x) = p(y), KL = 0, score 1.
    assert judge_score(np.tile([[2.0, 0.5, -1.0]], (6, 1))) == pytest.approx(1.0)
    # Confident and class-balanced over K = 3 classes: KL = log 3, score 3.
    confident = np.repeat(np.eye(3) * 60.0, 2, axis=0)
    assert judge_score(confident) == pytest.approx(3.0, rel=1e-9)


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory) -> dict[str, Path]:
    from tests.helpers import random_batch

    folder = tmp_path_factory.mktemp("cfg-sweep")
    return {
        "cfg": null_class_unet(folder / "cfg.pt"),
        "plain": tiny_unet(folder / "plain.pt", num_classes=NUM_CLASSES),
        "classifier": tiny_classifier(folder / "classifier.pt", num_classes=NUM_CLASSES),
        "judge": tiny_classifier(folder / "judge.pt", num_classes=NUM_CLASSES, seed=7),
        "reference": random_batch(folder / "reference.npz", 6, size=8),
    }


def test_sweep_puts_classifier_and_cfg_rows_side_by_side(sweep_files, tmp_path):
    from evalsuite.experiments.report import to_markdown, write_report
    from evalsuite.experiments.sweep import ModelRow, SweepConfig, read_records, run_sweep

    rows = (
        ModelRow(
            name="guided",
            model=str(sweep_files["plain"]),
            classifier=str(sweep_files["classifier"]),
        ),
        ModelRow(name="cfg", model=str(sweep_files["cfg"]), guidance="cfg", scales=(0.0, 1.0, 3.0)),
    )
    config = SweepConfig(
        rows=rows,
        reference=str(sweep_files["reference"]),
        scales=(0.0, 2.0),
        steps=("ddim3",),
        num_samples=5,
        metrics=("fid",),
        judge=str(sweep_files["judge"]),
        bootstrap=10,
    )
    run_sweep(config, tmp_path / "run", log=lambda _: None, progress=False)
    records = read_records(tmp_path / "run")
    assert [(r["model"], r["guidance"], r["guidance_scale"]) for r in records] == [
        ("guided", "classifier", 0.0),
        ("guided", "classifier", 2.0),
        ("cfg", "cfg", 0.0),
        ("cfg", "cfg", 1.0),
        ("cfg", "cfg", 3.0),
    ]
    assert all(1.0 <= r["judge_score"] <= NUM_CLASSES for r in records)
    assert all("judge_score_se" in r for r in records)
    assert "w = s - 1" in records[-1]["scale_convention"]
    table = to_markdown(write_report(tmp_path / "run").table)
    lines = table.splitlines()
    assert "Guidance" in lines[0] and "Judge score" in lines[0] and "IS" not in lines[0]
    # Classifier scale 0 reads "none" (unguided); CFG scale 0 is the unconditional model, "0".
    assert lines[2].startswith("| guided | classifier | none |")
    assert lines[4].startswith("| cfg | CFG | 0 |")


def test_sweep_cfg_on_a_model_without_null_class_is_one_line_exit_2(sweep_files, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            "--model",
            str(sweep_files["plain"]),
            "--guidance",
            "cfg",
            "--scales",
            "1,2",
            "--reference",
            str(sweep_files["reference"]),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "null class" in result.output and len(result.output.strip().splitlines()) == 1


def test_ablation_spec_takes_the_guidance_kind(tmp_path):
    from evalsuite.experiments.ablate import load_spec
    from tests.helpers import random_batch

    null_class_unet(tmp_path / "cfg.pt")
    random_batch(tmp_path / "reference.npz", 6, size=8)
    spec = tmp_path / "spec.toml"
    body = (
        "[evaluation]\nreference = 'reference.npz'\nmetrics = ['fid']\n"
        "[[variant]]\nname = 'cfg'\ncheckpoint = 'cfg.pt'\n"
    )
    spec.write_text("[sampling]\nguidance = 'cfg'\nguidance_scale = 3.0\n" + body)
    rows = load_spec(spec).sweep_config().rows
    assert [row.guidance for row in rows] == ["cfg"]
    spec.write_text("[sampling]\nguidance = 'free'\n" + body)
    with pytest.raises(EvalsuiteError, match="sampling.guidance"):
        load_spec(spec)
    spec.write_text("[sampling]\nguidance = 'classifier'\n" + body)
    with pytest.raises(EvalsuiteError, match="no classifier"):
        load_spec(spec)


def test_sample_without_model_uses_the_zoo_cfg_model(tmp_path):
    out = tmp_path / "cfg.npz"
    code, output = run(
        ["--guidance", "cfg", "--guidance-scale", "2", "--sampler", "ddim", "--steps", "ddim2"]
        + ["--num-samples", "2", "--out", str(out)]
    )
    assert code == 0, output
    assert "null-class (CFG) model" in output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model_path"].endswith("cfg_unet.pt")
    assert sidecar["identity"]["model"]["config"]["null_class"] is True
