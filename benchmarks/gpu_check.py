"""GPU readiness check: one script that measures what a paper-scale run on a GPU depends on.

Run from the repository root on a machine with one GPU (about 4-6 minutes; sections are skipped,
and say so, once --budget seconds have passed, and the results file is rewritten after every
section, so a killed run still leaves what it measured):

    timeout 540 python benchmarks/gpu_check.py --device cuda

It writes benchmarks/RESULTS_gpu.md (--out to change) with:

1. Inception features: evalsuite's extractor vs torch-fidelity's FeatureExtractorInceptionV3 on
   the device, images/s and the largest pool_3 difference (must be <= 1e-4), both in fp32 with
   TF32 off; plus what TF32 would change, and the device's features against the CPU's.
2. Sampling throughput of the released 256x256 ADM architecture (preset 256x256_diffusion, and
   256x256_classifier for the gradient; random weights) in image-steps/s at fp32/fp16/bf16,
   several batch sizes, with and without the classifier gradient.
3. Precision/recall of 10k reference x 50k sample features (random, 2048-d) on the device, and
   its agreement with the CPU on a smaller set.
4. A 1-process torchrun sweep of the zoo on the device, against the same sweep without torchrun.
5. The reproducibility claims of the README that one GPU can check: the batch size changes
   samples only in the last bits (and FID by ~1e-3); feature extraction runs in fp32 with TF32
   disabled (features equal whatever the global TF32 flags say, and do not depend on the batch).
6. `evalsuite sweep --dry-run --calibrate` for a Table-4 row (50k samples, 250 steps, guided and
   not) of the 256x256 architecture: the device-hours it estimates on this GPU.

`--device cpu --quick` runs every section at toy sizes (a zoo-sized stand-in for the 256x256
UNet, hundreds of features instead of 60k) in under a minute: the CI smoke test of this script.
With --device cuda on a machine without CUDA it stops with one line (exit 2).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

GPU_COMMAND = "timeout 540 python benchmarks/gpu_check.py --device cuda"
QUICK_COMMAND = "python benchmarks/gpu_check.py --device cpu --quick"
T = TypeVar("T")
# The README's claim for features: equal to torch-fidelity's extractor within this (§1).
FEATURE_TOLERANCE = 1e-4


@dataclass
class Sizes:
    """How big each section's work is (full GPU run or --quick)."""

    inception_images: int
    inception_size: int
    inception_batches: tuple[int, ...]
    inception_cpu_images: int
    sampling_preset: bool
    sampling_batches: tuple[int, ...]
    sampling_steps: int
    pr_reference: int
    pr_samples: int
    pr_cpu: tuple[int, int]
    sweep_scales: str
    sweep_samples: int
    sweep_steps: str
    sweep_metrics: str
    repro_samples: int
    repro_batches: tuple[int, ...]
    repro_steps: str
    fid_samples: int
    fid_batches: tuple[int, int]
    # FID over the first fid_dims pool_3 dimensions (2048 = the real FID; fewer for --quick,
    # where two 2048-d Fréchet distances would take half a minute on a small CPU).
    fid_dims: int
    plan_steps: str
    plan_samples: int
    plan_batch: int


FULL = Sizes(
    inception_images=2048,
    inception_size=256,
    inception_batches=(64, 256),
    inception_cpu_images=32,
    sampling_preset=True,
    sampling_batches=(8, 32),
    sampling_steps=3,
    pr_reference=10_000,
    pr_samples=50_000,
    pr_cpu=(2000, 5000),
    sweep_scales="0,1",
    sweep_samples=64,
    sweep_steps="ddim25",
    sweep_metrics="fid,pr",
    repro_samples=256,
    repro_batches=(1, 16, 256),
    repro_steps="ddim25",
    fid_samples=10_000,
    fid_batches=(250, 500),
    fid_dims=2048,
    plan_steps="250",
    plan_samples=50_000,
    plan_batch=64,
)
QUICK = Sizes(
    inception_images=2,
    inception_size=64,
    inception_batches=(2,),
    inception_cpu_images=2,
    sampling_preset=False,
    sampling_batches=(1, 4),
    sampling_steps=2,
    pr_reference=300,
    pr_samples=600,
    pr_cpu=(100, 200),
    sweep_scales="1",
    sweep_samples=4,
    sweep_steps="ddim2",
    sweep_metrics="pr",
    repro_samples=4,
    repro_batches=(1, 4),
    repro_steps="ddim3",
    fid_samples=4,
    fid_batches=(2, 4),
    fid_dims=64,
    plan_steps="ddim2",
    plan_samples=2,
    plan_batch=2,
)


@dataclass
class Section:
    """One section of the results: a title, Markdown lines, and the checks it asserted."""

    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def check(self, claim: str, holds: bool) -> None:
        self.checks.append((claim, bool(holds)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], T], repeats: int = 1) -> tuple[float, T]:
    """Seconds per call of fn (after one warm-up call), device work included; the last result."""
    result = fn()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    synchronize(device)
    return (time.perf_counter() - started) / repeats, result


def tf32_flags() -> str:
    return (
        f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
        f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    )


def environment(device: torch.device) -> Section:
    section = Section("Environment")
    rows = [
        ("date (UTC)", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("device", str(device)),
    ]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        rows += [
            ("GPU", f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"),
            ("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"),
            ("TF32 defaults", tf32_flags()),
        ]
    else:
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
        rows.append(("CPU", f"{platform.machine()}, {torch.get_num_threads()} threads"))
        rows.append(("load average (1, 5, 15 min)", load))
    section.lines = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    return section


@functools.cache
def inception(device: torch.device):
    """The resolved Inception weights and evalsuite's extractor on `device` (built once)."""
    from evalsuite.features import InceptionFeatureExtractor, resolve_inception_weights

    weights = resolve_inception_weights()
    return weights, InceptionFeatureExtractor(weights).to(device).eval()


def random_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def inception_check(device: torch.device, sizes: Sizes) -> Section:
    """evalsuite's extractor vs torch-fidelity's: img/s and pool_3 agreement; TF32; CPU parity."""
    from evalsuite.features import InceptionFeatureExtractor
    from evalsuite.features.weights import torch_fidelity_network

    section = Section("1. Inception features vs torch-fidelity")
    weights, ours = inception(device)
    theirs = torch_fidelity_network(weights.state_dict).to(device)
    images = random_images(sizes.inception_images, sizes.inception_size).to(device)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def set_tf32(enabled: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled

    def ours_pool(batch: int) -> torch.Tensor:
        return torch.cat([ours(x)["pool"] for x in images.split(batch)])

    def theirs_pool(batch: int) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([theirs(x)[0] for x in images.split(batch)])

    section.lines += [
        f"weights: {weights.source} (sha256 {weights.sha256[:12]}); "
        f"{len(images)} random {sizes.inception_size}x{sizes.inception_size} uint8 images",
        "",
        "| batch | evalsuite img/s | torch-fidelity img/s | max abs pool_3 diff (fp32, TF32 off) |",
        "|---|---|---|---|",
    ]
    first = sizes.inception_batches[0]
    try:
        set_tf32(False)
        worst, fp32 = 0.0, {}
        for batch in sizes.inception_batches:
            a, ours_out = timed(device, lambda b=batch: ours_pool(b))
            b, theirs_out = timed(device, lambda b=batch: theirs_pool(b))
            fp32.setdefault("ours", ours_out)
            fp32.setdefault("theirs", theirs_out)
            diff = (ours_out - theirs_out).abs().max().item()
            worst = max(worst, diff)
            section.lines.append(
                f"| {batch} | {len(images) / a:.1f} | {len(images) / b:.1f} | {diff:.2e} |"
            )
        section.check(
            f"evalsuite = torch-fidelity within {FEATURE_TOLERANCE:g} ({worst:.1e})",
            worst <= FEATURE_TOLERANCE,
        )
        set_tf32(True)
        ours_tf32 = ours_pool(first)
        theirs_tf32 = theirs_pool(first) if device.type == "cuda" else None
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    unchanged = torch.equal(ours_tf32, fp32["ours"])
    section.lines.append("")
    if theirs_tf32 is not None:
        moved = (theirs_tf32 - fp32["theirs"]).abs().max().item()
        section.lines.append(
            f"With the global TF32 flags switched on, torch-fidelity's pool_3 moves by "
            f"{moved:.2e} (what TF32 would do to every metric)."
        )
    section.lines.append(
        f"evalsuite's features with the global TF32 flags on are "
        f"{'bit-identical to' if unchanged else 'DIFFERENT from'} those with them off (its "
        "extraction switches TF32 off itself)."
    )
    section.check("evalsuite features do not depend on the global TF32 flags", unchanged)
    if device.type == "cuda":
        cpu = InceptionFeatureExtractor(weights).eval()
        subset = images[: sizes.inception_cpu_images]
        on_cpu = cpu(subset.cpu())["pool"]
        on_device = ours(subset)["pool"].cpu()
        diff = (on_cpu - on_device).abs().max().item()
        section.lines.append(
            f"{len(subset)} images on {device} vs on the CPU: max abs pool_3 diff {diff:.2e}."
        )
        section.check(f"{device} features = CPU features within 1e-4 ({diff:.1e})", diff <= 1e-4)
    return section


def sampling_models(device: torch.device, preset: bool):
    """The released 256x256 UNet and classifier architectures with random weights (or a
    zoo-sized stand-in for --quick), built on the device."""
    from evalsuite.models import ClassifierConfig, DiffusionConfig, UNetConfig, build_model
    from evalsuite.models.checkpoint import LoadedModel
    from evalsuite.models.config import preset_configs
    from evalsuite.pipeline.sample import SamplingModels

    if preset:
        unet_config, diffusion = preset_configs("256x256_diffusion")
        classifier_config, _ = preset_configs("256x256_classifier")
        label = "256x256_diffusion + 256x256_classifier (released flags, random weights)"
    else:
        unet_config = UNetConfig(
            image_size=16,
            num_channels=32,
            num_res_blocks=1,
            channel_mult=(1, 1, 1),
            attention_resolutions=(8, 4),
            num_head_channels=16,
            resblock_updown=True,
            learn_sigma=True,
            class_cond=True,
            num_classes=10,
        )
        classifier_config = ClassifierConfig(
            image_size=16,
            classifier_width=32,
            classifier_depth=1,
            classifier_attention_resolutions=(8, 4),
            num_classes=10,
            num_head_channels=16,
            channel_mult=(1, 1, 1),
        )
        diffusion = DiffusionConfig(diffusion_steps=1000, learn_sigma=True)
        label = "zoo-sized stand-in (16x16, 32 channels; --quick)"
    generator = torch.Generator(device).manual_seed(0)

    def random(config) -> LoadedModel:
        with torch.device(device):
            network = build_model(config)
        with torch.no_grad():
            for param in network.parameters():
                noise = torch.randn(param.shape, generator=generator, device=device)
                param.add_(0.02 * noise)
        return LoadedModel(network.eval(), config, diffusion, "", "random", Path("random"))

    models = SamplingModels(random(unet_config), random(classifier_config))
    return models, label


def parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def sampling_check(device: torch.device, sizes: Sizes) -> Section:
    """img-steps/s of the real BatchSampler at each precision, batch size, with/without guidance."""
    from evalsuite.pipeline.sample import BatchSampler, SamplingSettings

    section = Section("2. ADM sampling throughput")
    models, label = sampling_models(device, sizes.sampling_preset)
    precisions = ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32",)
    section.lines += [
        f"architecture: {label}; UNet {parameters(models.model.model) / 1e6:.1f}M parameters, "
        f"classifier {parameters(models.classifier.model) / 1e6:.1f}M; DDIM, "
        f"a {sizes.sampling_steps}-step chain timed after one warm-up chain; TF32 flags: "
        f"{tf32_flags()}",
        "",
        "| precision | batch | unguided img-steps/s | guided img-steps/s | guided / unguided |",
        "|---|---|---|---|---|",
    ]
    for precision in precisions:
        for batch in sizes.sampling_batches:
            rates = []
            for scale in (0.0, 1.0):
                settings = SamplingSettings(
                    num_samples=batch,
                    sampler="ddim",
                    steps=str(sizes.sampling_steps),
                    guidance_scale=scale,
                    classes="uniform",
                    precision=precision,
                )
                sampler = BatchSampler(models, settings, device)
                indices = list(range(batch))
                seconds, _ = timed(device, lambda s=sampler, i=indices: s(i), repeats=1)
                rates.append(batch * sizes.sampling_steps / seconds)
            section.lines.append(
                f"| {precision} | {batch} | {rates[0]:.1f} | {rates[1]:.1f} | "
                f"{rates[1] / rates[0]:.2f} |"
            )
            section.check(f"{precision} batch {batch} sampled", all(r > 0 for r in rates))
    if device.type == "cuda":
        section.lines.append(
            f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        )
    return section


def precision_recall_check(device: torch.device, sizes: Sizes) -> Section:
    from evalsuite.metrics import precision_recall

    section = Section("3. Precision/recall on the device")
    generator = np.random.default_rng(0)
    reference = generator.standard_normal((sizes.pr_reference, 2048), dtype=np.float32)
    sample = generator.standard_normal((sizes.pr_samples, 2048), dtype=np.float32) * 1.05 + 0.05
    synchronize(device)
    started = time.perf_counter()
    result = precision_recall(reference=reference, sample=sample, device=device)
    synchronize(device)
    seconds = time.perf_counter() - started
    section.lines.append(
        f"{sizes.pr_reference} reference x {sizes.pr_samples} sample features (2048-d, "
        f"random) on {device}: {seconds:.1f} s (precision {result.precision:.4f}, recall "
        f"{result.recall:.4f}); float32 distances, TF32 flags: {tf32_flags()}"
    )
    section.check("precision and recall in [0, 1]", 0 <= result.precision <= 1)
    n_ref, n_sample = sizes.pr_cpu
    small = dict(reference=reference[:n_ref], sample=sample[:n_sample])
    on_device = precision_recall(**small, device=device)
    on_cpu = precision_recall(**small, device="cpu")
    gap = max(abs(on_device.precision - on_cpu.precision), abs(on_device.recall - on_cpu.recall))
    section.lines.append(
        f"{n_ref} x {n_sample} on {device} vs CPU: precision {on_device.precision:.4f} vs "
        f"{on_cpu.precision:.4f}, recall {on_device.recall:.4f} vs {on_cpu.recall:.4f}"
    )
    section.check(f"{device} P/R = CPU P/R within 1e-3 ({gap:.1e})", gap <= 1e-3)
    return section


def start_sweep(args: list[str], torchrun: bool, env: dict[str, str]) -> subprocess.Popen:
    prefix = [sys.executable, "-m"]
    if torchrun:
        prefix += ["torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m"]
    return subprocess.Popen(
        [*prefix, "evalsuite", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def torchrun_check(device: torch.device, sizes: Sizes) -> Section:
    """The zoo sweep under a 1-process torchrun on the device, against the plain command.

    Both commands run at the same time (their timings are therefore not throughputs).
    """
    section = Section("4. 1-process torchrun sweep")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    # The zoo's two models (unconditional and conditional) x the scales.
    expected_cells = 2 * len(sizes.sweep_scales.split(","))
    records: dict[str, list[dict]] = {}
    samples: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as folder:
        args = {
            name: [
                "sweep",
                "--scales",
                sizes.sweep_scales,
                "--cfg-scales",
                "none",
                "--num-samples",
                str(sizes.sweep_samples),
                "--steps",
                sizes.sweep_steps,
                "--metrics",
                sizes.sweep_metrics,
                "--bootstrap",
                "0",
                "--no-judge",
                "--device",
                str(device),
                "--quiet",
                "--keep-samples",
                "--out",
                str(Path(folder) / name),
            ]  # fmt: skip
            for name in ("torchrun", "plain")
        }
        started = time.perf_counter()
        running = {name: start_sweep(args[name], name == "torchrun", env) for name in args}
        for name, process in running.items():
            output, _ = process.communicate()
            seconds = time.perf_counter() - started
            out = Path(folder) / name
            code = process.returncode
            lines = (out / "records.jsonl").read_text().splitlines() if code == 0 else []
            records[name] = [json.loads(line) for line in lines]
            files = sorted((out / "samples").glob("*.npz")) if code == 0 else []
            samples[name] = [np.load(file)["arr_0"] for file in files]
            launcher = "torchrun --standalone --nproc_per_node 1 -m " if name == "torchrun" else ""
            section.lines.append(
                f"- `{launcher}evalsuite {' '.join(args[name][:-2])}`: exit {code}, "
                f"{len(lines)} records, done after {seconds:.0f} s"
            )
            if code != 0:
                tail = output.strip().splitlines()[-1] if output.strip() else ""
                section.lines.append(f"  - last output line: `{tail}`")
            section.check(f"{name} sweep exits 0", code == 0)
    ran = records["torchrun"]
    cells = {record["cell"] for record in ran}
    section.check(
        f"one record per cell ({expected_cells} cells)",
        len(ran) == expected_cells and len(cells) == expected_cells,
    )

    def values(record: dict) -> tuple:
        return tuple(record.get(key) for key in ("cell", "fid", "precision", "recall"))

    same = bool(ran) and [values(r) for r in ran] == [values(r) for r in records["plain"]]
    samples_same = len(samples["torchrun"]) == expected_cells and all(
        np.array_equal(a, b) for a, b in zip(samples["torchrun"], samples["plain"], strict=False)
    )
    for record in ran:
        shown = ", ".join(
            f"{label} {record[key]:.4f}"
            for label, key in (("FID", "fid"), ("P", "precision"), ("R", "recall"))
            if record.get(key) is not None
        )
        section.lines.append(f"  - {record['cell']}: {shown}")
    section.check("torchrun metrics = plain metrics", same)
    section.check("torchrun samples = plain samples (bytes)", samples_same)
    return section


def generate_images(models, settings, device, batch: int) -> tuple[np.ndarray, float]:
    from evalsuite.pipeline.sample import BatchSampler

    sampler = BatchSampler(models, settings, device)
    indices = list(range(settings.num_samples))
    started = time.perf_counter()
    images = np.concatenate(
        [sampler(indices[lo : lo + batch])[0] for lo in range(0, len(indices), batch)]
    )
    return images, time.perf_counter() - started


def reproducibility_check(device: torch.device, sizes: Sizes) -> Section:
    """Batch-size effects on samples and FID; feature extraction's batch independence."""
    from evalsuite import zoo
    from evalsuite.metrics import GaussianStats, frechet_distance, gaussian_stats
    from evalsuite.models.checkpoint import load_checkpoint
    from evalsuite.pipeline.reference import load_reference
    from evalsuite.pipeline.sample import SamplingModels, SamplingSettings

    section = Section("5. Reproducibility claims")
    models = SamplingModels(
        load_checkpoint(zoo.asset(zoo.MODEL), "unet"),
        load_checkpoint(zoo.asset(zoo.CLASSIFIER), "classifier"),
    )
    settings = SamplingSettings(
        num_samples=sizes.repro_samples, sampler="ddim", steps=sizes.repro_steps,
        guidance_scale=1.0, classes="uniform",
    )  # fmt: skip
    outputs = {
        batch: generate_images(models, settings, device, batch)[0] for batch in sizes.repro_batches
    }
    first = sizes.repro_batches[0]
    section.lines += [
        f"Zoo model (guided, scale 1, {sizes.repro_steps}), {sizes.repro_samples} samples "
        f"generated in batches of {', '.join(map(str, sizes.repro_batches))}; uint8 pixels "
        f"compared with batch {first}:",
        "",
        "| batch | pixels differing | max grey-level difference |",
        "|---|---|---|",
    ]
    for batch, images in outputs.items():
        differing = np.mean(images != outputs[first])
        largest = np.abs(images.astype(int) - outputs[first].astype(int)).max()
        section.lines.append(f"| {batch} | {differing:.2e} | {largest} |")
    if device.type == "cpu":
        same = all(np.array_equal(images, outputs[first]) for images in outputs.values())
        section.check("CPU: samples bit-identical for every batch size", same)

    _, extractor = inception(device)
    reference = load_reference(zoo.reference())
    fid_settings = SamplingSettings(**{**settings.__dict__, "num_samples": sizes.fid_samples})
    fids = []
    for batch in sizes.fid_batches:
        images, seconds = generate_images(models, fid_settings, device, batch)
        chunks = np.split(images, range(256, len(images), 256))
        pool = torch.cat(
            [extractor(torch.from_numpy(x).to(device))["pool"].cpu() for x in chunks]
        ).numpy()
        dims = sizes.fid_dims
        stored = reference.stored["pool"]
        fid = frechet_distance(
            sample=gaussian_stats(pool[:, :dims].astype(np.float64)),
            reference=GaussianStats(stored.mu[:dims], stored.sigma[:dims, :dims], stored.num),
        )
        fids.append(fid)
        what = "FID" if dims == 2048 else f"Fréchet distance on the first {dims} pool_3 dims"
        section.lines.append(
            f"- {sizes.fid_samples} samples in batches of {batch} ({seconds:.1f} s): {what} vs "
            f"the zoo reference {fid:.6f}"
        )
    section.lines.append(f"- FID change from the batch size: {abs(fids[0] - fids[1]):.2e}")
    section.check(
        f"batch size moves FID by <= 1e-2 ({abs(fids[0] - fids[1]):.1e})",
        abs(fids[0] - fids[1]) <= 1e-2,
    )

    images = random_images(sizes.inception_batches[0], sizes.inception_size, seed=1).to(device)
    whole = extractor(images)["pool"]
    pieces = torch.cat([extractor(x)["pool"] for x in images.split(1)])
    diff = (whole - pieces).abs().max().item()
    section.lines.append(
        f"- Inception on {device}: {len(images)} images at once vs one at a time: max abs "
        f"pool_3 diff {diff:.2e}"
    )
    section.check(f"features independent of the batch within 1e-4 ({diff:.1e})", diff <= 1e-4)
    if device.type == "cuda":
        section.lines.append(
            "- Not checkable on one GPU: equality across GPU generations and cuDNN versions "
            "(section 1 shows the features ignore TF32 and match the CPU in fp32)."
        )
    return section


def dry_run_check(device: torch.device, sizes: Sizes) -> Section:
    """`sweep --dry-run --calibrate` for a Table-4 row (the released 256x256 architecture; the
    zoo's models with --quick): its estimate of the hours on this device."""
    from evalsuite import zoo
    from evalsuite.experiments.plan import calibrate, format_plan, plan_grid
    from evalsuite.experiments.sweep import ModelRow, SweepConfig

    section = Section("6. Sizing a Table-4 row: sweep --dry-run --calibrate")
    with tempfile.TemporaryDirectory() as folder:
        if sizes.sampling_preset:
            # Bare files with the released presets: a dry run reads only their architecture.
            files = {name: Path(folder) / f"{name}.pt" for name in ("model", "classifier")}
            for file in files.values():
                torch.save({"placeholder": torch.zeros(1)}, file)
            row = ModelRow(
                name="adm256",
                model=str(files["model"]),
                preset="256x256_diffusion",
                classifier=str(files["classifier"]),
                classifier_preset="256x256_classifier",
            )
        else:
            row = ModelRow(
                name="zoo",
                model=str(zoo.asset(zoo.MODEL)),
                classifier=str(zoo.asset(zoo.CLASSIFIER)),
            )
        config = SweepConfig(
            rows=(row,),
            reference=str(zoo.reference()),
            scales=(0.0, 1.0),
            samplers=("ddpm",),
            steps=(sizes.plan_steps,),
            num_samples=sizes.plan_samples,
            metrics=("fid",),
            bootstrap=0,
        )
        plan, architectures = plan_grid(config, batch_size=sizes.plan_batch, device=str(device))
        calibrate(plan, config, architectures)
    totals = plan.totals()
    section.lines += [
        f"{sizes.plan_samples} samples, DDPM {sizes.plan_steps} steps, scales 0 and 1, batch "
        f"{sizes.plan_batch}, fp32 (as `evalsuite sweep` samples):",
        "",
        "```",
        format_plan(plan),
        "```",
        "",
        f"Estimated: {totals['device_hours']:.2f} device-hours for the two cells on {device}.",
    ]
    assert plan.calibration is not None
    steps = plan.calibration.step_seconds
    guided = next(v for k, v in steps.items() if k.endswith(" guided"))
    unguided = next(v for k, v in steps.items() if k.endswith(" unguided"))
    section.check(
        "every cell has a positive estimate", all(c.estimated_seconds for c in plan.cells)
    )
    section.check(
        f"a guided step costs more than an unguided one ({guided:.3f} vs {unguided:.3f} s)",
        guided > unguided,
    )
    return section


def write_results(path: Path, device: torch.device, quick: bool, sections: list[Section]) -> None:
    from evalsuite.runtime.cache import atomic_path

    command = " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])
    lines = [
        "# GPU readiness check",
        "",
        "Command for one GPU (from the repository root; about 4-6 minutes, at most 8):",
        "",
        f"    {GPU_COMMAND}",
        "",
    ]
    if device.type != "cuda":
        lines += [
            "**This check has not run on a GPU yet.** What follows is the output of the CPU "
            "smoke mode (toy sizes, a zoo-sized stand-in for the 256x256 UNet), produced by:",
            "",
            f"    {command}",
            "",
            "Its numbers are CPU measurements of the same code paths, not GPU results.",
        ]
    else:
        lines += [
            f"Produced by `{command}`" + (" (quick sizes)" if quick else "") + ".",
        ]
    checks = [(s.title, claim, holds) for s in sections for claim, holds in s.checks]
    failed = [c for c in checks if not c[2]]
    errors = [s for s in sections if s.error]
    lines += [
        "",
        f"Summary: {len(checks) - len(failed)} of {len(checks)} checks hold"
        + (f"; {len(errors)} sections failed or were skipped" if errors else "")
        + ".",
    ]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
        if section.error:
            lines.append(f"**{section.error}**")
        lines += section.lines
        if section.checks:
            lines.append("")
            lines += [f"- [{'x' if holds else ' '}] {claim}" for claim, holds in section.checks]
        if section.seconds:
            lines.append(f"\n({section.seconds:.1f} s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (the CPU smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_gpu.md"))
    parser.add_argument(
        "--budget", type=float, default=420.0, help="seconds after which sections are skipped"
    )
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"gpu_check: --device {args.device!r} is not a torch device", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: --device {args.device} asked, but CUDA is not available here (torch "
            f"{torch.__version__}); run on a GPU machine, or use --device cpu --quick",
            file=sys.stderr,
        )
        return 2
    sizes = QUICK if args.quick else FULL
    out = Path(args.out)
    started = time.perf_counter()
    sections = [environment(device)]
    checks = (
        ("1. Inception features vs torch-fidelity", inception_check),
        ("2. ADM sampling throughput", sampling_check),
        ("3. Precision/recall on the device", precision_recall_check),
        ("4. 1-process torchrun sweep", torchrun_check),
        ("5. Reproducibility claims", reproducibility_check),
        ("6. Sizing a Table-4 row: sweep --dry-run --calibrate", dry_run_check),
    )
    for title, check in checks:
        if time.perf_counter() - started > args.budget:
            sections.append(
                Section(title, error=f"skipped: the {args.budget:.0f} s budget ran out")
            )
        else:
            section_started = time.perf_counter()
            try:
                section = check(device, sizes)
            except Exception as error:  # one failing section must not lose the others
                line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                section = Section(title, error=f"failed: {type(error).__name__}: {line[:300]}")
            section.seconds = time.perf_counter() - section_started
            sections.append(section)
            status = section.error or ", ".join(
                f"{'ok' if holds else 'FAILED'}: {claim}" for claim, holds in section.checks
            )
            print(f"{title} ({section.seconds:.1f} s): {status}", flush=True)
        write_results(out, device, args.quick, sections)
    failed = [c for s in sections for c, holds in s.checks if not holds]
    broken = [s.title for s in sections if s.error]
    print(
        f"wrote {out} in {time.perf_counter() - started:.0f} s; "
        f"{len(failed)} checks failed, {len(broken)} sections failed or skipped"
    )
    return 1 if failed or broken else 0


if __name__ == "__main__":
    sys.exit(main())
