"""Guidance by the zoo's own ideal classifier: where a better guide would take the zoo.

A class-conditional and an unconditional UNet trained on the same data imply a noise-aware
classifier: grad log p(y | x_t) = grad log p(x_t | y) - grad log p(x_t)
= -(eps_cond(x_t, y) - eps_uncond(x_t)) / sqrt(1 - alpha_bar_t). Guiding the unconditional model
with it at scale s is DDIM's classifier guidance (ADM Algorithm 2) with that gradient:
eps' = eps_uncond - sqrt(1 - alpha_bar_t) * s * g = eps_uncond + s * (eps_cond - eps_uncond),
so scale 1 samples the conditional model exactly. It is the most accurate classifier the two
models allow: the better a trained classifier guides, the closer its trade-off comes to this one.

`sample` writes one ADM batch per scale (DDIM-25, or `--sampler ddpm --steps 100` for Algorithm
1's mean shift), with per-sample seeds and i.i.d. uniform classes as `evalsuite sample --seed 0`,
so sample i of every batch starts from the same noise and asks for the same class; score them
with `diag_zoo_pr.py --paired`. The networks run in batches of 100, so the bits can differ
slightly from `evalsuite sample`'s per-sample passes. `sample --classifier C` guides with the
trained classifier C instead (evalsuite's own guidance; the conditional UNet is not used): the
same batches as `evalsuite sample --classifier C`, about four times faster on CPU, for a look at
a candidate zoo before its sweep.

`align` compares a trained classifier's gradient with the ideal one on held-out images noised
to several t: their cosine, and the ratio of their norms (median over images), for the images'
own class and for a random class (what guidance of an unconditional sample mostly asks for).

    Z=evalsuite/zoo/assets
    .venv/bin/python zoo/diag_zoo_ideal_guide.py sample --scales 0,1,3,8 --out runs/ideal
    .venv/bin/python zoo/diag_zoo_pr.py runs/ideal/s0.npz runs/ideal/s1.npz \
        runs/ideal/s3.npz runs/ideal/s8.npz --paired 200
    .venv/bin/python zoo/diag_zoo_ideal_guide.py align --classifier $Z/classifier.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from evalsuite import zoo
from evalsuite.diffusion import (
    ClassifierGuidance,
    PerSampleNoise,
    make_denoiser,
    make_schedule,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.models import load_checkpoint
from evalsuite.pipeline.sample import sample_classes, sample_seed, to_uint8
from evalsuite.zoo.shapes import make_split, write_adm_batch

BATCH = 100
TIMESTEPS = (50, 150, 300, 450, 600, 750, 900)


def ideal_denoiser(uncond, cond, schedule, labels: torch.Tensor, scale: float, sampler: str):
    """Denoiser of the unconditional model guided by the pair's implied classifier.

    The gradient is taken from the eps each model's denoiser implies (after clipping x_0), so
    that DDIM at scale 1 is the conditional model's DDIM exactly. "ddim": Algorithm 2's eps';
    "ddpm": Algorithm 1's mean + variance * s * g.
    """
    diffusion = uncond.diffusion_config
    common = {"learn_sigma": diffusion.learn_sigma, "predict_xstart": diffusion.predict_xstart}
    denoise_uncond = make_denoiser(uncond.model, schedule, **common)
    denoise_cond = make_denoiser(cond.model, schedule, model_kwargs={"y": labels}, **common)

    def denoise(x_t: torch.Tensor, t_index: torch.Tensor) -> dict[str, torch.Tensor]:
        out = denoise_uncond(x_t, t_index)
        if scale == 0:
            return out
        difference = denoise_cond(x_t, t_index)["eps"] - out["eps"]
        if sampler == "ddpm":
            # g = -(eps_c - eps_u) / sqrt(1 - alpha_bar); mean' = mean + variance * s * g.
            root = schedule.gather(schedule.sqrt_one_minus_alpha_bar, t_index, x_t)
            return {**out, "mean": out["mean"] - out["variance"] * scale * difference / root}
        # eps' = eps_u - sqrt(1 - alpha_bar) * s * g = eps_u + s * (eps_c - eps_u).
        eps = out["eps"] + scale * difference
        return {**out, "eps": eps, "pred_x0": schedule.predict_x0_from_eps(x_t, t_index, eps)}

    return denoise


def run_sample(args: argparse.Namespace) -> None:
    uncond = load_checkpoint(args.uncond, "unet")
    if args.classifier:
        classifier = load_checkpoint(args.classifier, "classifier")
        num_classes = classifier.model_config.num_classes
    else:
        cond = load_checkpoint(args.cond, "unet")
        num_classes = cond.model_config.num_classes
    config, diffusion = uncond.model_config, uncond.diffusion_config
    steps = args.steps or ("100" if args.sampler == "ddpm" else "ddim25")
    schedule = make_schedule(diffusion.noise_schedule, diffusion.diffusion_steps, steps)
    if args.classifier:
        # The unconditional model's own denoiser; the classifier's gradient comes as guidance.
        denoise_uncond = make_denoiser(
            uncond.model,
            schedule,
            learn_sigma=diffusion.learn_sigma,
            predict_xstart=diffusion.predict_xstart,
            rescale_timesteps=diffusion.rescale_timesteps,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for scale in args.scales:
        images, labels = [], []
        for lo in range(0, args.num_samples, BATCH):
            indices = list(range(lo, min(args.num_samples, lo + BATCH)))
            y = sample_classes("uniform", num_classes, args.seed, indices)
            noise = PerSampleNoise.from_seeds([sample_seed(args.seed, i) for i in indices])
            x_T = noise((len(indices), config.in_channels, config.image_size, config.image_size))
            guidance = None
            if args.classifier:
                denoise = denoise_uncond
                if scale:
                    guidance = ClassifierGuidance(
                        classifier.model,
                        schedule,
                        torch.from_numpy(y),
                        scale,
                        rescale_timesteps=diffusion.rescale_timesteps,
                    )
            else:
                denoise = ideal_denoiser(
                    uncond, cond, schedule, torch.from_numpy(y), scale, args.sampler
                )
            if args.sampler == "ddpm":
                x_0 = sample_ddpm(denoise, schedule, x_T, noise=noise, guidance=guidance)
            else:
                x_0 = sample_ddim(denoise, schedule, x_T, guidance=guidance)
            images.append(to_uint8(x_0))
            labels.append(y)
        path = out / f"s{scale:g}.npz"
        write_adm_batch(path, np.concatenate(images), np.concatenate(labels))
        print(f"scale {scale:g}: wrote {path}", flush=True)


def run_align(args: argparse.Namespace) -> None:
    uncond, cond = load_checkpoint(args.uncond, "unet"), load_checkpoint(args.cond, "unet")
    classifier = load_checkpoint(args.classifier, "classifier")
    diffusion = uncond.diffusion_config
    schedule = make_schedule(diffusion.noise_schedule, diffusion.diffusion_steps)
    images, own = make_split("heldout", args.num_images)
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    own = torch.from_numpy(own)
    generator = torch.Generator().manual_seed(0)
    print(f"classifier {args.classifier}, {args.num_images} held-out images")
    print(
        "| t | cosine, own class | norm ratio, own class | cosine, random class "
        "| norm ratio, random class |"
    )
    print("|---|---|---|---|---|")
    for t in TIMESTEPS:
        t_index = torch.full((len(own),), t, dtype=torch.int64)
        x_t = schedule.q_sample(x0, t_index, torch.randn(x0.shape, generator=generator))
        other = torch.randint(0, cond.model_config.num_classes, own.shape, generator=generator)
        row = []
        for y in (own, other):
            with torch.no_grad():
                eps_u = uncond.model(x_t, t_index)[:, :3]
                eps_c = cond.model(x_t, t_index, y=y)[:, :3]
            ideal = -(eps_c - eps_u) / float(np.sqrt(1.0 - schedule.alpha_bar[t]))
            x_in = x_t.clone().requires_grad_(True)
            log_p = torch.log_softmax(classifier.model(x_in, t_index), dim=-1)
            (trained,) = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), x_in)
            a, b = trained.flatten(1), ideal.flatten(1)
            cosine = torch.nn.functional.cosine_similarity(a, b).mean().item()
            ratio = (a.norm(dim=1) / b.norm(dim=1)).median().item()
            row += [f"{cosine:+.3f}", f"{ratio:.3f}"]
        print(f"| {t} | " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uncond", help="unconditional UNet (default: the zoo's)")
    parser.add_argument("--cond", help="class-conditional UNet (default: the zoo's)")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser(
        "sample", help="guided batches (DDIM or DDPM), one per scale: ideal guide or --classifier"
    )
    sample.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")], required=True)
    sample.add_argument("--num-samples", type=int, default=1000)
    sample.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    sample.add_argument("--steps", help='respacing (default: "ddim25" for DDIM, "100" for DDPM)')
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--classifier", help="guide with this trained classifier instead")
    sample.add_argument("--out", required=True)
    align = commands.add_parser("align", help="a classifier's gradient against the ideal one")
    align.add_argument("--classifier", help="noise-aware classifier (default: the zoo's)")
    align.add_argument("--num-images", type=int, default=200)
    args = parser.parse_args()
    # The zoo's files are only looked up (and checked) when no path replaces them.
    args.uncond = args.uncond or str(zoo.asset("uncond_unet.pt"))
    if not (args.command == "sample" and args.classifier):
        args.cond = args.cond or str(zoo.asset("cond_unet.pt"))
    if args.command == "align":
        args.classifier = args.classifier or str(zoo.asset("classifier.pt"))
    torch.set_num_threads(1)
    if args.command == "sample":
        run_sample(args)
    else:
        run_align(args)


if __name__ == "__main__":
    main()
