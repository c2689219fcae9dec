"""Benchmark: sampling throughput (image-steps/s) of a small ADM configuration, with and without
classifier guidance, at several batch sizes.

Run: .venv/bin/python benchmarks/bench_sampling.py [--device cpu|cuda] [--steps 10]

Peer, in the same run: the same sampler with the network called on the whole batch at once, the
way guided-diffusion's scripts call it. evalsuite's CPU default runs each sample's pass alone on
one thread (bit-identical output for every batch size, thread count and process count), several
samples at a time on a thread per core; the ratio says what that reproducibility costs (or saves).
On CUDA both sides run the whole batch, so the script reports fp32/fp16/bf16 and channels_last.
The models are the zoo's architecture (16x16, 32 channels) with random weights.
"""

from __future__ import annotations

import argparse
import time

import torch

from evalsuite.models import ClassifierConfig, DiffusionConfig, UNetConfig, build_model
from evalsuite.models.checkpoint import LoadedModel
from evalsuite.pipeline.sample import BatchSampler, SamplingModels, SamplingSettings

UNET = UNetConfig(
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
CLASSIFIER = ClassifierConfig(
    image_size=16,
    classifier_width=32,
    classifier_depth=2,
    classifier_attention_resolutions=(8, 4),
    num_classes=10,
    num_head_channels=16,
    channel_mult=(1, 1, 1),
)
DIFFUSION = DiffusionConfig(diffusion_steps=1000, noise_schedule="cosine", learn_sigma=True)


def loaded(config, kind: str) -> LoadedModel:
    model = build_model(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return LoadedModel(model, config, DIFFUSION, sha256="bench", source="embedded", path=kind)


def throughput(sampler: BatchSampler, batch_size: int, steps: int, rounds: int = 2) -> float:
    indices = list(range(batch_size))
    sampler(indices[:1])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        sampler(indices)
        best = min(best, time.perf_counter() - start)
    return batch_size * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,4,16")
    args = parser.parse_args()
    models = SamplingModels(loaded(UNET, "unet"), loaded(CLASSIFIER, "classifier"))
    precisions = ["fp32"] if args.device == "cpu" else ["fp32", "fp16", "bf16"]
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"DDIM {args.steps} steps, image-steps/s (higher is better)"
    )
    print("| guidance | precision | batch | evalsuite | whole-batch peer | ratio |")
    print("|---|---|---|---|---|---|")
    for scale in (0.0, 1.0):
        for precision in precisions:
            settings = SamplingSettings(
                num_samples=1,
                sampler="ddim",
                steps=f"ddim{args.steps}",
                guidance_scale=scale,
                classes="balanced",
                precision=precision,
            )
            ours = BatchSampler(models, settings, args.device)
            peer = BatchSampler(models, settings, args.device)
            peer.per_sample = False
            if args.device != "cpu":
                for sampler in (ours, peer):
                    sampler.model = sampler.model.to(memory_format=torch.channels_last)
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                a = throughput(ours, batch_size, args.steps)
                b = throughput(peer, batch_size, args.steps)
                print(
                    f"| {scale:g} | {precision} | {batch_size} | {a:.0f} | {b:.0f} | {a / b:.2f} |"
                )


if __name__ == "__main__":
    main()
