"""Where a zoo UNet's noise prediction goes wrong: its image-mean (DC) part, by timestep.

For each checkpoint, real reference images are noised to x_t at several t and the UNet predicts
the noise. The error is split into its per-image, per-channel spatial mean (DC: what sets an
image's overall colour) and the rest. A network that did not predict the DC of the noise at all
would have a DC error equal to the variance of the true noise's DC, 1 / (H * W); the columns show
how far from that the model is, and how large the resulting error of the predicted x_0's mean
colour is (DC error times sqrt((1 - alpha_bar) / alpha_bar), before the sampler clips x_0 to
[-1, 1]).

With --tune STEPS the probe is repeated after fine-tuning a copy of each model for STEPS steps
on t >= --tune-min-t only (AdamW, the hybrid loss, EMA 0.995): whether the architecture can learn
the DC at the high-noise end at all, given the training signal there.

Optionally, for sample batches: the share of pixel values within 8 of 0 or 255 (saturated
colours), against the same share in the reference split.

    .venv/bin/python zoo/diag_zoo_dc.py evalsuite/zoo/assets/uncond_unet.pt \
        --samples runs/q28k/samples/*.npz
    .venv/bin/python zoo/diag_zoo_dc.py evalsuite/zoo/assets/uncond_unet.pt --tune 500
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from evalsuite.diffusion import make_schedule, training_losses
from evalsuite.models import load_checkpoint
from evalsuite.zoo.shapes import make_split
from evalsuite.zoo.train import TrainOptions, _batch, _update_ema

TIMESTEPS = (100, 300, 500, 700, 850, 950, 990)


def saturated_share(images: np.ndarray) -> float:
    """Share of uint8 pixel values within 8 of 0 or 255."""
    return float(((images <= 8) | (images >= 247)).mean())


def probe(model, schedule, x0: torch.Tensor, kwargs: dict) -> None:
    """Print the DC share of the noise-prediction error at each of TIMESTEPS."""
    size = x0.shape[-1]
    print("     t | eps MSE | its DC part | DC part / 1/(HW) | x0 mean-colour error (std)")
    generator = torch.Generator().manual_seed(0)
    for t in TIMESTEPS:
        index = torch.full((len(x0),), t)
        noise = torch.randn(x0.shape, generator=generator)
        with torch.no_grad():
            out = model(
                schedule.q_sample(x0, index, noise), schedule.network_timesteps(index), **kwargs
            )
        error = out[:, :3] - noise
        dc = error.mean(dim=(2, 3)).pow(2).mean().item()
        alpha_bar = float(schedule.alpha_bar[t])
        x0_error = (dc * (1 - alpha_bar) / alpha_bar) ** 0.5
        print(
            f"  {t:4d} | {error.pow(2).mean().item():.5f} | {dc:.5f} | "
            f"{dc * size**2:.2f} | {x0_error:.3f}"
        )


def tune_high_t(loaded, schedule, steps: int, min_t: int) -> torch.nn.Module:
    """A copy of the model fine-tuned on t >= min_t only; returns its EMA weights."""
    options = TrainOptions(
        task="unet",
        batch_size=32,
        lr=5e-4,
        weight_decay=0.0,
        ema_rate=0.995,
        seed=5,
        dataset="shapes",
        image_size=loaded.model_config.image_size,
    )
    model = copy.deepcopy(loaded.model).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr)
    diffusion = loaded.diffusion_config
    generator = torch.Generator().manual_seed(123)
    for _ in range(steps):
        x0, labels = _batch(options, generator)
        t = torch.randint(min_t, schedule.num_steps, (len(x0),), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        losses = training_losses(
            model,
            schedule,
            x0,
            t,
            noise=noise,
            learn_sigma=diffusion.learn_sigma,
            predict_xstart=diffusion.predict_xstart,
            model_kwargs={"y": labels} if loaded.model_config.class_cond else None,
            rescale_timesteps=diffusion.rescale_timesteps,
        )
        optimizer.zero_grad()
        losses["loss"].mean().backward()
        optimizer.step()
        _update_ema(ema, model, options.ema_rate)
    return ema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="zoo UNet checkpoints (.pt)")
    parser.add_argument("--num-images", type=int, default=256, help="reference images noised")
    parser.add_argument("--samples", nargs="*", default=[], help="sample batches (.npz)")
    parser.add_argument("--tune", type=int, default=0, help="fine-tuning steps on high t")
    parser.add_argument("--tune-min-t", type=int, default=850, help="lowest t of fine-tuning")
    args = parser.parse_args()

    torch.manual_seed(0)
    for path in args.checkpoints:
        loaded = load_checkpoint(path, "unet")
        size = loaded.model_config.image_size
        images, labels = make_split("reference", args.num_images, size)
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        diffusion = loaded.diffusion_config
        schedule = make_schedule(diffusion.noise_schedule, diffusion.diffusion_steps)
        kwargs = {"y": torch.from_numpy(labels)} if loaded.model_config.class_cond else {}
        print(f"{path} (sha256 {loaded.sha256[:12]}…), {args.num_images} reference images")
        print(f"  no-DC-prediction level: 1/(H*W) = {1 / size**2:.5f}")
        probe(loaded.model, schedule, x0, kwargs)
        if args.tune:
            print(f"  after {args.tune} fine-tuning steps on t >= {args.tune_min_t}:")
            probe(tune_high_t(loaded, schedule, args.tune, args.tune_min_t), schedule, x0, kwargs)
    if args.samples:
        print("saturated pixel values (within 8 of 0 or 255):")
        for path in args.samples:
            with np.load(path) as batch:
                samples = batch["arr_0"]
            reference, _ = make_split("reference", 1000, samples.shape[1])
            print(
                f"  {path}: {saturated_share(samples):.3f} "
                f"(reference split: {saturated_share(reference):.3f})"
            )


if __name__ == "__main__":
    main()
