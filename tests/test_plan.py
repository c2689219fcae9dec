"""`sweep/ablate --dry-run`: the counts equal what a real run performs, and nothing is written.

The network evaluations of a dry run are checked against a real sweep of tiny 8x8 models whose
UNet, classifier and Inception network are instrumented with hooks that count every forward
call (and every backward through the classifier) and the images in it, per cell.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from evalsuite.cli import main
from evalsuite.experiments import plan as plan_module
from evalsuite.experiments import sweep as sweep_module
from evalsuite.experiments.sweep import ModelRow, SweepConfig, load_row, run_sweep
from evalsuite.models import checkpoint as checkpoint_module
from evalsuite.pipeline import evaluate as evaluate_module
from evalsuite.pipeline import sample as sample_module
from evalsuite.pipeline.evaluate import MetricOptions
from evalsuite.pipeline.sample import BatchSampler, generate
from tests.helpers import random_batch, tiny_classifier, tiny_unet

_load_inception_once = functools.cache(evaluate_module.load_inception)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plan-inputs")
    return {
        "model": tiny_unet(folder / "cond.pt"),
        "classifier": tiny_classifier(folder / "classifier.pt"),
        "reference": random_batch(folder / "reference.npz", 6, size=8),
    }


def small_config(files, **changes) -> SweepConfig:
    settings = dict(
        rows=(
            ModelRow(name="cond", model=str(files["model"]), classifier=str(files["classifier"])),
        ),
        reference=str(files["reference"]),
        scales=(0.0, 2.0),
        samplers=("ddpm", "ddim"),
        # T = 100: "ddim4" keeps range(0, 100, 25) (4 steps), "3" one step per third (3 steps).
        steps=("ddim4", "3"),
        num_samples=4,
        metrics=("pr",),
        bootstrap=0,
        metric_options=MetricOptions(),
    )
    settings.update(changes)
    return SweepConfig(**settings)


class NetworkCounter:
    """Counts forward calls (and images) of the UNet, the classifier (forward and backward) and
    Inception, attributed to the cell being run ("reference" while the reference is extracted)."""

    def __init__(self, monkeypatch) -> None:
        self.counts: dict[str, Counter] = {}
        self.current = "outside"
        self.lock = threading.Lock()
        self.monkeypatch = monkeypatch

    def add(self, what: str, images: int) -> None:
        with self.lock:
            counter = self.counts.setdefault(self.current, Counter())
            counter[f"{what}_calls"] += 1
            counter[f"{what}_images"] += images

    def hook(self, module, what: str, backward: bool = False) -> None:
        def forward_hook(_module, inputs, output):
            images = inputs[0].shape[0]
            self.add(what, images)
            if backward and output.requires_grad:
                output.register_hook(lambda grad: self.add(f"{what}_backward", grad.shape[0]))

        module.register_forward_hook(forward_hook)

    def instrument_sweep(self) -> None:
        def counted_load_row(row):
            models = load_row(row)
            self.hook(models.model.model, "unet")
            if models.classifier is not None:
                self.hook(models.classifier.model, "classifier", backward=True)
            return models

        def counted_load_inception(path, device):
            weights, extractor = _load_inception_once(path, device)
            if not getattr(extractor, "_plan_counted", False):
                extractor._plan_counted = True
                self.hook(extractor, "inception")
            return weights, extractor

        def in_cell(runtime, cell):
            self.current = cell.name
            try:
                return real_run_cell(runtime, cell)
            finally:
                self.current = "outside"

        def in_reference(*args, **kwargs):
            previous, self.current = self.current, "reference"
            try:
                return real_resolve(*args, **kwargs)
            finally:
                self.current = previous

        real_run_cell, real_resolve = sweep_module._run_cell, sweep_module.resolve_reference
        self.monkeypatch.setattr(sweep_module, "load_row", counted_load_row)
        self.monkeypatch.setattr(sweep_module, "load_inception", counted_load_inception)
        self.monkeypatch.setattr(sweep_module, "_run_cell", in_cell)
        self.monkeypatch.setattr(sweep_module, "resolve_reference", in_reference)


@pytest.fixture(scope="module")
def counted_run(files, tmp_path_factory):
    """A real CPU sweep of 8 cells (ddpm/ddim x ddim4/3 x scales 0/2) with counted networks."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALSUITE_CACHE", str(tmp_path_factory.mktemp("empty-cache")))
        counter = NetworkCounter(mp)
        counter.instrument_sweep()
        config = small_config(files)
        run_sweep(
            config,
            tmp_path_factory.mktemp("runs") / "counted",
            batch_size=3,
            device="cpu",
            progress=False,
            log=lambda line: None,
        )
        plan, _ = plan_module.plan_grid(config, batch_size=3, device="cpu")
    return counter.counts, plan


def test_dry_run_counts_equal_the_networks_a_real_cpu_run_calls(counted_run):
    counts, plan = counted_run
    assert len(plan.cells) == 8
    for cell in plan.cells:
        real = counts[cell.cell]
        # CPU: every sample runs alone, so passes = evaluations = samples x chain steps.
        assert cell.unet_passes == real["unet_calls"]
        assert cell.unet_evaluations == real["unet_images"]
        assert cell.classifier_forwards == real["classifier_images"]
        assert cell.classifier_passes == real["classifier_calls"]
        assert cell.classifier_backwards == real["classifier_backward_images"]
        assert cell.inception_images == real["inception_images"]
        assert cell.inception_passes == real["inception_calls"]
    assert plan.reference_images == counts["reference"]["inception_images"] == 6
    assert plan.reference_passes == counts["reference"]["inception_calls"]
    assert "outside" not in counts


def test_counts_follow_respacing_sampler_and_scale(counted_run):
    counts, plan = counted_run
    by_name = {cell.cell: cell for cell in plan.cells}
    # Hand-derived: 4 samples; "ddim4" is 4 steps and "3" is 3 steps of the 100-step chain.
    assert by_name["cond_ddpm-ddim4_s0"].unet_evaluations == 16
    assert by_name["cond_ddim-3_s2"].unet_evaluations == 12
    for name, cell in by_name.items():
        if name.endswith("_s0"):
            # Scale 0: the classifier is loaded but never called.
            assert cell.classifier_forwards == 0 and "classifier_calls" not in counts[name]
        else:
            assert cell.classifier_forwards == cell.classifier_backwards == cell.unet_evaluations
            assert cell.classifier_per_image == cell.unet_per_image
    totals = plan.totals()
    assert totals["unet_evaluations"] == 2 * 2 * (16 + 12)
    assert totals["classifier_backwards"] == 2 * (16 + 12)
    assert totals["inception_images"] == 8 * 4 + 6


def test_batched_passes_on_an_accelerator_are_per_batch(files, monkeypatch, tmp_path):
    # On CUDA a whole batch goes through each pass. Run the sampler's batched path on the CPU
    # (the per-sample mode switched off) and compare with the plan made for --device cuda.
    real_init = BatchSampler.__init__

    def batched_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.per_sample = False

    monkeypatch.setattr(sample_module.BatchSampler, "__init__", batched_init)
    config = small_config(files, num_samples=5, samplers=("ddpm",), steps=("3",))
    plan, _ = plan_module.plan_grid(config, batch_size=2, device="cuda")
    counter = NetworkCounter(monkeypatch)
    row = config.rows[0]
    for cell, cell_plan in zip(sweep_module.grid_cells(config), plan.cells, strict=True):
        models = load_row(row)
        counter.current = cell.name
        counter.hook(models.model.model, "unet")
        counter.hook(models.classifier.model, "classifier", backward=True)
        generate(
            models,
            config.settings(cell),
            tmp_path / f"{cell.name}.npz",
            batch_size=2,
            device="cpu",
            progress=False,
        )
        real = counter.counts[cell.name]
        # 5 samples in batches of 2 -> 3 batches x 3 steps = 9 passes; 15 image-steps.
        assert cell_plan.unet_passes == real["unet_calls"] == 9
        assert cell_plan.unet_evaluations == real["unet_images"] == 15
        guided = cell.guidance_scale > 0
        assert cell_plan.classifier_passes == real["classifier_calls"] == (9 if guided else 0)
        assert cell_plan.classifier_backwards == real["classifier_backward_images"]
        assert cell_plan.classifier_backwards == (15 if guided else 0)


def invoke(args: list[str]):
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def sweep_args(files, out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        "--model",
        str(files["model"]),
        "--classifier",
        str(files["classifier"]),
        "--reference",
        str(files["reference"]),
        "--scales",
        "0,2",
        "--steps",
        "ddim4,3",
        "--sampler",
        "ddpm,ddim",
        "--num-samples",
        "5",
        "--batch-size",
        "2",
        "--metrics",
        "pr",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def forbid_work(monkeypatch, tmp_path):
    """Fail on any weights loading, Inception, sampling or cache write; an empty cache folder."""

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"a dry run must not {what}")

        return fail

    cache = tmp_path / "cache"
    monkeypatch.setenv("EVALSUITE_CACHE", str(cache))
    monkeypatch.setattr(sweep_module, "load_inception", refuse("load Inception"))
    monkeypatch.setattr(evaluate_module, "load_inception", refuse("load Inception"))
    monkeypatch.setattr(sample_module.BatchSampler, "__call__", refuse("sample"))
    monkeypatch.setattr(checkpoint_module, "_build_and_load", refuse("load weights"))
    return cache


def test_cli_dry_run_prints_the_grid_and_writes_nothing(files, tmp_path, forbid_work):
    out = tmp_path / "run"
    code, stdout, stderr = invoke(sweep_args(files, out, "--dry-run"))
    assert code == 0, stderr
    assert not out.exists() and not forbid_work.exists()
    assert "2 samplers x 2 step counts x 2 scales = 8 cells of 5 samples" in stdout
    lines = {line.split()[0]: line.split() for line in stdout.splitlines() if line}
    # cell, steps, UNet/img, clf/img, UNet evals, clf evals, UNet passes, clf passes, Inception.
    assert lines["cond_ddpm-ddim4_s2"][1:9] == ["ddim4", "4", "4", "20", "20", "20", "20", "5"]
    assert lines["cond_ddim-3_s0"][1:9] == ["3", "3", "0", "15", "0", "15", "0", "5"]
    assert "reference: 6 images through Inception once per run" in stdout


def test_cli_dry_run_json_for_a_gpu_job_sized_on_a_cpu_machine(files, tmp_path, forbid_work):
    # No CUDA here: a plain dry run only counts, so --device cuda is accepted.
    code, stdout, stderr = invoke(
        sweep_args(files, tmp_path / "run", "--dry-run", "--json", "--device", "cuda")
    )
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert plan["dry_run"] and plan["device"] == "cuda" and not plan["per_sample_passes"]
    cell = next(c for c in plan["cells"] if c["cell"] == "cond_ddpm-ddim4_s2")
    # 5 samples in batches of 2: 3 batched passes per step, 4 steps.
    assert (cell["unet_passes"], cell["classifier_passes"], cell["sampling_batches"]) == (12, 12, 3)
    assert cell["unet_evaluations_per_image"] == 4 and cell["unet_evaluations"] == 20
    assert plan["totals"]["cells"] == 8 and plan["totals"]["inception_images"] == 8 * 5 + 6
    assert plan["calibration"] is None and "estimated_seconds" not in plan["totals"]
    assert not (tmp_path / "run").exists() and not forbid_work.exists()


def test_dry_run_marks_cells_an_existing_run_finished(files, tmp_path, forbid_work):
    out = tmp_path / "run"
    out.mkdir()
    (out / "records.jsonl").write_text(json.dumps({"cell": "cond_ddpm-ddim4_s0"}) + "\n")
    code, stdout, stderr = invoke(sweep_args(files, out, "--dry-run", "--json"))
    assert code == 0, stderr
    plan = json.loads(stdout)
    finished = [c["cell"] for c in plan["cells"] if c["finished"]]
    assert finished == ["cond_ddpm-ddim4_s0"]
    assert plan["remaining"]["cells"] == 7 and plan["remaining"]["unet_evaluations"] == 140 - 20
    assert sorted(p.name for p in out.iterdir()) == ["records.jsonl"]


def test_calibrate_times_the_cells_and_estimates_the_grid(files, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EVALSUITE_CACHE", str(cache))
    # Calibration times random-weight copies of the networks: no checkpoint's weights load.
    monkeypatch.setattr(checkpoint_module, "_build_and_load", lambda *a, **k: 1 / 0)
    args = sweep_args(files, tmp_path / "run", "--dry-run", "--calibrate", "--json")
    args[args.index("ddim4,3")] = "ddim4"
    code, stdout, stderr = invoke(args)
    assert code == 0, stderr
    plan = json.loads(stdout)
    calibration = plan["calibration"]
    assert set(calibration["step_seconds"]) == {
        "cond ddpm unguided",
        "cond ddpm guided",
        "cond ddim unguided",
        "cond ddim guided",
    }
    assert all(seconds > 0 for seconds in calibration["step_seconds"].values())
    per_image = calibration["inception_seconds_per_image"]
    assert per_image > 0 and calibration["sampling_batch"] == 2
    for cell in plan["cells"]:
        key = f"cond {cell['sampler']} {'guided' if cell['guided'] else 'unguided'}"
        sampling = cell["sampling_batches"] * cell["chain_steps"] * calibration["step_seconds"][key]
        assert cell["estimated_seconds"] == pytest.approx(sampling + 5 * per_image)
    total = sum(c["estimated_seconds"] for c in plan["cells"]) + 6 * per_image
    assert plan["totals"]["estimated_seconds"] == pytest.approx(total)
    assert plan["totals"]["device_hours"] == pytest.approx(total / 3600)
    assert "calibrating: cond ddim guided" in stderr
    assert not (tmp_path / "run").exists() and not cache.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calibrate"], "--calibrate goes with --dry-run"),
        (["--dry-run", "--calibrate", "--device", "cuda"], "CUDA is not available"),
        (["--dry-run", "--device", "tpu9"], "is not a torch device"),
        (["--dry-run", "--classifier", "missing.pt"], "missing.pt does not exist"),
    ],
)
def test_bad_dry_run_input_is_one_line_exit_2(files, tmp_path, extra, message, forbid_work):
    # A repeated option takes its last value: the extra options override sweep_args'.
    args = sweep_args(files, tmp_path / "run", *extra)
    code, _, stderr = invoke(args)
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_ablate_dry_run_on_the_zoo_spec(tmp_path, forbid_work):
    code, stdout, stderr = invoke(["ablate", "--dry-run", "--json", "--out", str(tmp_path / "a")])
    assert code == 0, stderr
    plan = json.loads(stdout)
    # The zoo's spec: 5 variants x 2 training points, 100 samples, ddim25, unguided.
    assert plan["kind"] == "ablate" and plan["totals"]["cells"] == 10
    for cell in plan["cells"]:
        assert cell["chain_steps"] == 25 and cell["unet_evaluations"] == 2500
        assert cell["classifier_forwards"] == 0 and cell["classifier_passes"] == 0
    assert "5 variants x 2 training points" in stderr
    assert not (tmp_path / "a").exists() and not forbid_work.exists()


def test_paper_scale_plan_from_released_presets(files, tmp_path, forbid_work):
    # A bare state dict with a preset: the architecture comes from the released flags, the
    # file is only opened memory-mapped (its tensors are not read, nor checked, in a dry run).
    import torch

    for name in ("256x256_diffusion.pt", "256x256_classifier.pt"):
        torch.save({"placeholder": torch.zeros(1)}, tmp_path / name)
    args = [
        "sweep",
        "--model", str(tmp_path / "256x256_diffusion.pt"),
        "--preset", "256x256_diffusion",
        "--classifier", str(tmp_path / "256x256_classifier.pt"),
        "--classifier-preset", "256x256_classifier",
        "--reference", str(files["reference"]),
        "--scales", "0,1,10",
        "--sampler", "ddpm",
        "--steps", "250",
        "--num-samples", "50000",
        "--batch-size", "64",
        "--device", "cuda",
        "--out", str(tmp_path / "adm256"),
        "--dry-run",
        "--json",
    ]  # fmt: skip
    code, stdout, stderr = invoke(args)
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert plan["image_size"] == 256 and [c["guidance_scale"] for c in plan["cells"]] == [0, 1, 10]
    for cell in plan["cells"]:
        # 250 steps x 50,000 samples; ceil(50000 / 64) = 782 batches per step.
        assert cell["unet_evaluations"] == 12_500_000 and cell["unet_passes"] == 195_500
        guided = cell["guidance_scale"] > 0
        assert cell["classifier_backwards"] == (12_500_000 if guided else 0)
        # 50 cached chunks of 1000 images, each ceil(1000 / 64) = 16 extractor calls.
        assert cell["inception_passes"] == 800
    assert plan["totals"]["unet_evaluations"] == 37_500_000
    assert plan["totals"]["classifier_forwards"] == 25_000_000
    assert not (tmp_path / "adm256").exists() and not forbid_work.exists()


def test_zoo_sweep_dry_run_as_documented(tmp_path, forbid_work):
    # The README's command: the zoo pair, 2 samplers x 2 respacings x 3 scales, 100 samples.
    code, stdout, stderr = invoke(
        ["sweep", "--scales", "0,1,4", "--steps", "ddim25,50", "--sampler", "ddpm,ddim",
         "--dry-run", "--json", "--out", str(tmp_path / "zoo")]
    )  # fmt: skip
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert plan["totals"]["cells"] == 2 * 2 * 2 * 3 and plan["per_sample_passes"]
    cell = next(c for c in plan["cells"] if c["cell"] == "conditional_ddpm-50_s4")
    assert (cell["unet_evaluations"], cell["classifier_backwards"]) == (5000, 5000)
    cell = next(c for c in plan["cells"] if c["cell"] == "unconditional_ddim-ddim25_s0")
    assert (cell["unet_passes"], cell["classifier_passes"]) == (2500, 0)
    assert "no --model: sweeping the zoo" in stderr
    assert not (tmp_path / "zoo").exists() and not forbid_work.exists()
