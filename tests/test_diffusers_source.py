"""`--model diffusers:PATH`: parity with diffusers' own models, schedulers and pipelines, the
usual invariances (batch size, resume after SIGKILL, torchrun), a sweep, and bad input.

Tiny random models (`UNet2DModel`, `DiTTransformer2DModel`, `AutoencoderKL`; a few thousand
parameters) are built and saved with `save_pretrained` into temporary folders; nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evalsuite.cli import main
from tests.helpers import random_batch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

diffusers = pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[1]
TRAIN_STEPS = 100


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # diffusers zero-initialises some output layers; give every weight a value.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model.eval()


def tiny_unet(num_class_embeds: int | None = 5, seed: int = 0) -> torch.nn.Module:
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        num_class_embeds=num_class_embeds,
    )
    return _randomise(unet, seed)


def tiny_dit(in_channels: int = 3, num_classes: int = 4, seed: int = 1) -> torch.nn.Module:
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=in_channels,
        out_channels=2 * in_channels,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    return _randomise(dit, seed)


def tiny_vae(seed: int = 2) -> torch.nn.Module:
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    return _randomise(vae, seed)


def save_model(folder: Path, component: str, model: torch.nn.Module, scheduler) -> Path:
    """A model folder without a pipeline: <component>/ and scheduler/ (pixel-space DiT)."""
    model.save_pretrained(folder / component)
    scheduler.save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusers")
    ddim = diffusers.DDIMScheduler(num_train_timesteps=TRAIN_STEPS, clip_sample=True)
    cosine_v = diffusers.DDIMScheduler(
        num_train_timesteps=TRAIN_STEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=True,
    )
    ddpm_learned = diffusers.DDPMScheduler(
        num_train_timesteps=TRAIN_STEPS, variance_type="learned_range"
    )
    folders = {
        "unet": root / "unet",
        "uncond": root / "uncond",
        "unet_v": root / "unet_v",
        "dit": root / "dit",
        "dit_latent": root / "dit_latent",
    }
    diffusers.DDIMPipeline(unet=tiny_unet(), scheduler=ddim).save_pretrained(folders["unet"])
    diffusers.DDIMPipeline(unet=tiny_unet(None, seed=3), scheduler=ddim).save_pretrained(
        folders["uncond"]
    )
    diffusers.DDIMPipeline(unet=tiny_unet(seed=4), scheduler=cosine_v).save_pretrained(
        folders["unet_v"]
    )
    save_model(folders["dit"], "transformer", tiny_dit(), ddpm_learned)
    # DiTPipeline hard-codes ImageNet's null class 1000, so this DiT has 1000 classes.
    diffusers.DiTPipeline(
        transformer=tiny_dit(in_channels=4, num_classes=1000, seed=5),
        vae=tiny_vae(),
        scheduler=ddim,
        id2label={0: "zero"},
    ).save_pretrained(folders["dit_latent"])
    return folders


def spec(folder: Path) -> str:
    return f"diffusers:{folder}"


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sample", "--quiet", *args])
    return result.exit_code, result.output


def load(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path) as data:
        return data["arr_0"], (data["arr_1"] if "arr_1" in data.files else None)


def sampler_for(folder: Path, indices: list[int], **settings):
    from evalsuite.models.diffusers_source import load_diffusers
    from evalsuite.pipeline.sample import SamplingModels, SamplingSettings, make_batch_sampler

    models = SamplingModels(model=load_diffusers(spec(folder)))
    sampling = SamplingSettings(num_samples=len(indices), **settings)
    sampling.validate()
    models.check(sampling)
    return make_batch_sampler(models, sampling, "cpu").decoded_samples(indices)


def generators(indices: list[int], seed: int = 0) -> list[torch.Generator]:
    from evalsuite.pipeline.sample import sample_seed

    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


# ---------------------------------------------------------------------------------------------
# parity with diffusers


@pytest.mark.parametrize(
    ("name", "component", "labels"),
    [("unet", "unet", [0, 3, 4]), ("uncond", "unet", None), ("dit", "transformer", [1, 2, 4])],
)
def test_adapter_output_equals_the_diffusers_model(folders, name, component, labels):
    from evalsuite.models.diffusers_source import load_diffusers

    loaded = load_diffusers(spec(folders[name]))
    own = getattr(diffusers, loaded.model_config.model_class).from_pretrained(
        folders[name] / component
    )
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 50, 99])
    y = None if labels is None else torch.tensor(labels)
    with torch.no_grad():
        ours = loaded.model(x, t, y=y)
        theirs = own.eval()(x, t, class_labels=y).sample
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-6
    # The last label is the null class ∅ and a class of its own.
    if name == "unet":
        assert (loaded.model_config.num_classes, loaded.model_config.null_label) == (4, 4)


def test_ddim_scheduler_samples_equal_the_diffusers_pipeline(folders):
    # Unconditional: DDIMPipeline itself, seeded with evalsuite's per-sample generators.
    indices = [0, 1, 2]
    ours, _ = sampler_for(folders["uncond"], indices, sampler="scheduler", steps="10")
    pipe = diffusers.DDIMPipeline.from_pretrained(folders["uncond"])
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=3, generator=generators(indices), num_inference_steps=10, output_type="np"
    ).images
    ours_01 = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours_01 - theirs).max() <= 1e-5


def test_class_conditional_samples_equal_a_diffusers_scheduler_loop(folders):
    indices = [4, 5, 6, 7]
    ours, labels = sampler_for(
        folders["unet"], indices, sampler="scheduler", steps="8", classes="0,1,2,3", eta=0.5
    )
    assert labels.tolist() == [0, 1, 2, 3]
    pipe = diffusers.DDIMPipeline.from_pretrained(folders["unet"])
    unet, scheduler, gens = pipe.unet.eval(), pipe.scheduler, generators(indices)
    x = diffusers.utils.torch_utils.randn_tensor((4, 3, 8, 8), generator=gens)
    scheduler.set_timesteps(8)
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = unet(x, t, class_labels=torch.tensor(labels)).sample
            x = scheduler.step(output, t, x, eta=0.5, generator=gens).prev_sample
    assert (ours - x).abs().max().item() <= 1e-5


def test_evalsuite_ddim_over_v_prediction_equals_diffusers_ddim(folders):
    # --sampler ddim: evalsuite's DDIM on the cosine chain over the ε implied by the model's v.
    # diffusers' DDIM with the same timesteps (leading spacing = ddim10), clipped x0 and the ε
    # recomputed from it (use_clipped_model_output) is the same algorithm.
    indices = [0, 1]
    ours, labels = sampler_for(
        folders["unet_v"], indices, sampler="ddim", steps="ddim10", classes="2,3"
    )
    pipe = diffusers.DDIMPipeline.from_pretrained(folders["unet_v"])
    unet, scheduler = pipe.unet.eval(), pipe.scheduler
    x = diffusers.utils.torch_utils.randn_tensor((2, 3, 8, 8), generator=generators(indices))
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(90, -1, -10))
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = unet(x, t, class_labels=torch.tensor(labels)).sample
            x = scheduler.step(output, t, x, use_clipped_model_output=True).prev_sample
    assert (ours - x).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scale", [4.0, 1.0])
def test_latent_dit_with_cfg_equals_the_dit_pipeline(folders, scale):
    indices = [0, 1]
    ours, _ = sampler_for(
        folders["dit_latent"],
        indices,
        sampler="scheduler",
        steps="4",
        classes="7,999",
        guidance="cfg",
        guidance_scale=scale,
    )
    assert ours.shape == (2, 3, 16, 16)
    pipe = diffusers.DiTPipeline.from_pretrained(folders["dit_latent"])
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        class_labels=[7, 999],
        guidance_scale=scale,
        generator=generators(indices),
        num_inference_steps=4,
        output_type="np",
    ).images
    ours_01 = (ours / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours_01 - theirs).max() <= 1e-5


def test_cfg_scale_one_is_the_conditional_model_and_zero_the_null_class(folders, tmp_path):
    base = ["--model", spec(folders["dit"]), "--num-samples", "3", "--steps", "5"]
    base += ["--classes", "0,1,2"]
    outs = {}
    for name, extra in {
        "plain": [],
        "s1": ["--guidance", "cfg", "--guidance-scale", "1"],
        "s0": ["--guidance", "cfg", "--guidance-scale", "0"],
        "s3": ["--guidance", "cfg", "--guidance-scale", "3"],
    }.items():
        outs[name] = tmp_path / f"{name}.npz"
        code, output = run([*base, *extra, "--out", str(outs[name])])
        assert code == 0, output
    np.testing.assert_array_equal(load(outs["s1"])[0], load(outs["plain"])[0])
    assert not np.array_equal(load(outs["s0"])[0], load(outs["s1"])[0])
    assert not np.array_equal(load(outs["s3"])[0], load(outs["s1"])[0])
    record = json.loads((tmp_path / "s3.json").read_text())
    assert record["identity"]["settings"]["guidance"] == "cfg"
    assert record["identity"]["settings"]["sampler"] == "scheduler"


# ---------------------------------------------------------------------------------------------
# invariances and the sidecar


def test_batch_size_does_not_change_samples(folders, tmp_path):
    outs = []
    for batch_size in (1, 3):
        out = tmp_path / f"b{batch_size}.npz"
        code, output = run(
            ["--model", spec(folders["dit"]), "--guidance", "cfg", "--guidance-scale", "2"]
            + ["--sampler", "ddpm", "--steps", "6", "--num-samples", "5"]
            + ["--batch-size", str(batch_size), "--out", str(out)]
        )
        assert code == 0, output
        outs.append(load(out))
    assert outs[0][0].shape == (5, 8, 8, 3) and outs[0][0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def test_sidecar_records_the_folder_hash_and_scheduler(folders, tmp_path):
    out = tmp_path / "s.npz"
    code, output = run(
        ["--model", spec(folders["unet"]), "--num-samples", "2", "--steps", "3", "--out", str(out)]
    )
    assert code == 0, output
    record = json.loads((tmp_path / "s.json").read_text())
    model = record["identity"]["model"]
    assert model["sha256"] == _folder_digest(folders["unet"])
    assert model["config"]["model_class"] == "UNet2DModel"
    assert model["diffusion"]["scheduler"] == "DDIMScheduler"
    assert model["diffusion"]["diffusion_steps"] == TRAIN_STEPS


def _parts(out: Path) -> list[Path]:
    return sorted((out.parent / (out.name + ".parts")).glob("part_*.npz"))


def test_resume_after_sigkill_matches_uninterrupted(folders, tmp_path):
    args = ["sample", "--quiet", "--model", spec(folders["unet"]), "--num-samples", "10"]
    args += ["--steps", "100", "--batch-size", "2"]
    reference = tmp_path / "full.npz"
    assert run([*args[2:], "--out", str(reference)])[0] == 0
    out = tmp_path / "killed.npz"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalsuite", *args, "--out", str(out)], env=env, cwd=REPO
    )
    deadline = time.time() + 180
    while time.time() < deadline and len(_parts(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed; make it longer"
    assert len(_parts(out)) >= 2
    code, output = run([*args[2:], "--out", str(out)])
    assert code == 0, output
    np.testing.assert_array_equal(load(out)[0], load(reference)[0])
    np.testing.assert_array_equal(load(out)[1], load(reference)[1])


def test_two_processes_equal_one(folders, tmp_path):
    args = ["--model", spec(folders["dit"]), "--guidance", "cfg", "--guidance-scale", "2"]
    args += ["--num-samples", "5", "--steps", "4", "--batch-size", "2"]
    single, double = tmp_path / "single.npz", tmp_path / "double.npz"
    code, output = run([*args, "--out", str(single)])
    assert code == 0, output
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launcher, "--master_port", "29531", "-m", "evalsuite", "sample", "--quiet", *args]
        + ["--out", str(double)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(load(double)[0], load(single)[0])
    np.testing.assert_array_equal(load(double)[1], load(single)[1])


# ---------------------------------------------------------------------------------------------
# sweep


def test_sweep_over_a_diffusers_model_writes_the_report(folders, tmp_path):
    reference = random_batch(tmp_path / "reference.npz", 6, size=8)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["sweep", "--model", spec(folders["dit"]), "--guidance", "cfg", "--scales", "1,3"]
        + ["--reference", str(reference), "--num-samples", "4", "--steps", "3"]
        + ["--metrics", "fid", "--bootstrap", "0", "--out", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["sampler"], r["guidance_scale"]) for r in records] == [
        ("scheduler", 1.0),
        ("scheduler", 3.0),
    ]
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in records)
    assert {r["model_sha256"] for r in records} == {_folder_digest(folders["dit"])}
    assert (out / "report").is_dir() and any((out / "report").iterdir())


def test_sweep_dry_run_refuses_diffusers_models_in_one_line(folders, tmp_path):
    reference = random_batch(tmp_path / "reference.npz", 6, size=8)
    result = CliRunner().invoke(
        main,
        ["sweep", "--model", spec(folders["dit"]), "--reference", str(reference), "--dry-run"],
    )
    _one_line_exit_2(result.exit_code, result.output, "the dry run plans ADM checkpoints only")


# ---------------------------------------------------------------------------------------------
# bad input


def _one_line_exit_2(code: int, output: str, message: str) -> None:
    assert code == 2, output
    assert message.lower() in output.lower(), output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_not_a_diffusers_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = run(["--model", spec(empty), "--out", str(tmp_path / "x.npz")])
    _one_line_exit_2(code, output, "is not a diffusers model folder")
    code, output = run(["--model", spec(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")])
    _one_line_exit_2(code, output, "is not a folder")
    assert not (tmp_path / "x.npz").exists()


def test_unsupported_model_class(tmp_path):
    folder = tmp_path / "cond2d"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(
        json.dumps({"_class_name": "UNet2DConditionModel"})
    )
    diffusers.DDPMScheduler().save_pretrained(folder / "scheduler")
    code, output = run(["--model", spec(folder), "--out", str(tmp_path / "x.npz")])
    _one_line_exit_2(code, output, "unsupported diffusers model class UNet2DConditionModel")


def test_missing_extra_names_the_install_command(folders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    code, output = run(["--model", spec(folders["unet"]), "--out", str(tmp_path / "x.npz")])
    _one_line_exit_2(code, output, 'pip install "evalsuite[diffusers]"')


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("uncond", ["--guidance", "cfg", "--guidance-scale", "2"], "needs a model with a null"),
        ("unet", ["--guidance-scale", "2"], "needs --guidance cfg"),
        ("unet", ["--steps", "10,20"], "number of inference steps"),
        ("unet", ["--model-flags", "--image_size 8"], "describes itself"),
        ("dit", ["--eta", "0.5", "--steps", "5"], "--eta 0.5 needs a scheduler with a DDIM eta"),
    ],
)
def test_bad_settings_one_line_exit_2(folders, tmp_path, name, extra, message):
    out = tmp_path / "x.npz"
    code, output = run(["--model", spec(folders[name]), *extra, "--out", str(out)])
    _one_line_exit_2(code, output, message)
    assert not out.exists() and not (tmp_path / "x.npz.parts").exists()


def test_core_and_zoo_do_not_import_diffusers():
    code = (
        "import sys, evalsuite.cli, evalsuite.zoo, evalsuite.pipeline.sample, "
        "evalsuite.experiments.sweep, evalsuite.models.source; "
        "assert 'diffusers' not in sys.modules, 'diffusers was imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# regress


def test_regress_baseline_of_a_diffusers_model(folders, tmp_path):
    folder = shutil.copytree(folders["dit"], tmp_path / "dit")
    reference = random_batch(tmp_path / "reference.npz", 6, size=8)
    baseline = tmp_path / "dit.toml"
    init = ["regress", "--init", str(baseline), "--quiet", "--model", spec(folder)]
    init += ["--steps", "3", "--num-samples", "4"]
    init += ["--classes", "0,1", "--reference", str(reference), "--metrics", "fid"]
    result = CliRunner().invoke(main, init)
    assert result.exit_code == 0, result.output
    recorded = tomllib.loads(baseline.read_text())
    assert recorded["model"]["architecture"] == "diffusers"
    assert recorded["model"]["path"] == "dit"
    assert recorded["model"]["sha256"] == _folder_digest(folder)
    assert recorded["sampling"]["sampler"] == "scheduler"
    result = CliRunner().invoke(main, ["regress", str(baseline), "--quiet"])
    assert result.exit_code == 0, result.output
    # A changed folder is a changed protocol: refused before sampling.
    (folder / "notes.txt").write_text("retrained")
    result = CliRunner().invoke(main, ["regress", str(baseline), "--quiet"])
    assert result.exit_code == 2 and "sha256" in result.output.lower(), result.output
