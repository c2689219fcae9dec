"""Ancestral (DDPM) and DDIM samplers over a denoiser callable (ADM protocol §5).

Samplers are plain functions of a denoiser, the chain and the randomness (k-diffusion / EDM
style): ``sample_ddpm(denoise_fn, schedule, x_T, noise=...)``. A denoiser maps (x_t, chain
indices) to the model's Gaussian (see ``DenoiseFn``); ``make_denoiser`` builds one from a
network. Randomness comes from a callable ``noise(shape) -> Tensor``; ``PerSampleNoise`` draws
row b from its own generator so a sample depends only on its own seed, never on the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evalsuite.diffusion.guidance import ClassifierGuidance, guided
from evalsuite.diffusion.schedule import DenoiseFn, DiffusionSchedule
from evalsuite.runtime.errors import EvalsuiteError

# A source of standard normal noise: noise(shape) -> Tensor of that shape (shape[0] = batch).
NoiseFn = Callable[[torch.Size], Tensor]
# A progress wrapper over the step indices, e.g. tqdm.tqdm.
ProgressFn = Callable[[Iterable[int]], Iterable[int]]


class PerSampleNoise:
    """Standard normal noise whose row b is drawn from ``generators[b]`` alone.

    Each call ``noise((B, ...))`` draws one (...)-shaped float32 block from every generator (on
    that generator's device) and stacks them, then moves the result to ``device`` / ``dtype``.
    Sample b's whole noise stream (x_T first, then one block per stochastic step) therefore
    depends only on its generator's seed: not on batch size, batch composition or process count.

    Args:
        generators: one torch.Generator per sample of the batch, in batch order.
        device: device of the returned noise.
        dtype: dtype of the returned noise (draws are float32 and cast).
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(generators) == 0:
            raise EvalsuiteError("PerSampleNoise needs at least one generator")
        self.generators = list(generators)
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_seeds(
        cls,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> PerSampleNoise:
        """One CPU generator per seed (``torch.Generator().manual_seed(seed)``)."""
        return cls([torch.Generator().manual_seed(int(seed)) for seed in seeds], device, dtype)

    def __call__(self, shape: Sequence[int]) -> Tensor:
        """Noise of ``shape`` = (B, ...) with B == len(generators); row b from generators[b]."""
        shape = tuple(shape)
        if len(shape) == 0 or shape[0] != len(self.generators):
            raise EvalsuiteError(
                f"PerSampleNoise has {len(self.generators)} generators but was asked for "
                f"shape {shape}"
            )
        rows = [
            torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32).to(
                self.device
            )
            for g in self.generators
        ]
        return torch.stack(rows).to(self.dtype)


def make_denoiser(
    model_fn: Callable[..., Tensor],
    schedule: DiffusionSchedule,
    *,
    learn_sigma: bool,
    predict_xstart: bool,
    clip_denoised: bool = True,
    rescale_timesteps: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> DenoiseFn:
    """Wrap a network into a denoiser for ``schedule`` (ADM protocol §4).

    Args:
        model_fn: ``model_fn(x_t, timesteps, **model_kwargs) -> output``; x_t (B, C, H, W),
            output (B, 2C, H, W) with ``learn_sigma`` else (B, C, H, W). It receives the ORIGINAL
            timesteps ``schedule.timesteps[t_index]`` as int64 (B,), or t * 1000 / T as float32
            with ``rescale_timesteps`` (improved-diffusion checkpoints).
        schedule: the (respaced) chain being sampled.
        learn_sigma, predict_xstart, clip_denoised: see ``DiffusionSchedule.p_mean_variance``.
        model_kwargs: extra network inputs, e.g. ``{"y": labels}`` for class-conditional models.

    Returns:
        ``denoise_fn(x_t, t_index) -> dict(mean, variance, log_variance, pred_x0, eps)``.
    """
    kwargs = dict(model_kwargs or {})

    def denoise_fn(x_t: Tensor, t_index: Tensor) -> dict[str, Tensor]:
        timesteps = schedule.network_timesteps(t_index, rescale_timesteps=rescale_timesteps)
        model_output = model_fn(x_t, timesteps, **kwargs)
        return schedule.p_mean_variance(
            model_output,
            x_t,
            t_index,
            learn_sigma=learn_sigma,
            predict_xstart=predict_xstart,
            clip_denoised=clip_denoised,
        )

    return denoise_fn


# The chain indices N-1, ..., 0 a sampler visits, optionally wrapped in a progress bar.
def _step_indices(schedule: DiffusionSchedule, progress: ProgressFn | None) -> Iterable[int]:
    indices = range(schedule.num_steps - 1, -1, -1)
    return indices if progress is None else progress(indices)


def sample_ddpm(
    denoise_fn: DenoiseFn,
    schedule: DiffusionSchedule,
    x_T: Tensor,
    *,
    noise: NoiseFn,
    guidance: ClassifierGuidance | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Ancestral sampling, Algorithm 1 of ADM (ADM protocol §5).

    Args:
        denoise_fn: the model's Gaussian at each step (see ``make_denoiser``).
        schedule: the chain; steps run from index N-1 down to 0.
        x_T: (B, C, H, W) starting noise.
        noise: standard normal source, called once per step with t != 0 (see ``PerSampleNoise``).
        guidance: classifier guidance; mean' = mean + variance * g.
        progress: optional wrapper over the step indices (e.g. tqdm.tqdm).

    Returns:
        x_0, (B, C, H, W), dtype of x_T.
    """
    if guidance is not None:
        denoise_fn = guided(denoise_fn, guidance, mode="ddpm")
    x = x_T
    with torch.no_grad():
        for i in _step_indices(schedule, progress):
            t_index = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
            out = denoise_fn(x, t_index)
            if i == 0:
                x = out["mean"]
            else:
                # x_{t-1} = mean' + exp(0.5 log var) z for t != 0 (Algorithm 1).
                x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise(x.shape)
    return x


def sample_ddim(
    denoise_fn: DenoiseFn,
    schedule: DiffusionSchedule,
    x_T: Tensor,
    *,
    noise: NoiseFn | None = None,
    eta: float = 0.0,
    guidance: ClassifierGuidance | None = None,
    progress: ProgressFn | None = None,
) -> Tensor:
    """DDIM sampling, Algorithm 2 of ADM (ADM protocol §5).

    x_{t-1} = sqrt(alpha_bar_prev) x0 + sqrt(1 - alpha_bar_prev - sigma^2) eps + [t != 0] sigma z,
    sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev),
    with x0 and eps the denoiser's ``pred_x0`` and ``eps`` (eps implied by the clipped x0).

    Args:
        denoise_fn: the model at each step (see ``make_denoiser``).
        schedule: the chain; steps run from index N-1 down to 0.
        x_T: (B, C, H, W) starting noise.
        noise: standard normal source, required when eta > 0; with eta = 0 the sampler is a
            deterministic function of x_T and draws nothing.
        eta: 0 = deterministic DDIM (the ADM scripts), 1 = DDPM-like posterior variance.
        guidance: classifier guidance; eps' = eps - sqrt(1 - alpha_bar_t) g.
        progress: optional wrapper over the step indices (e.g. tqdm.tqdm).

    Returns:
        x_0, (B, C, H, W), dtype of x_T.
    """
    if not 0 <= eta <= 1:
        raise EvalsuiteError(f"DDIM eta must lie in [0, 1], got {eta}")
    if eta > 0 and noise is None:
        raise EvalsuiteError(f"DDIM with eta={eta} > 0 needs a noise source (noise=...)")
    if guidance is not None:
        denoise_fn = guided(denoise_fn, guidance, mode="ddim")
    # Per-step coefficients of Algorithm 2 in float64 (max(., 0) absorbs roundoff at eta = 1).
    alpha_bar, alpha_bar_prev = schedule.alpha_bar, schedule.alpha_bar_prev
    sigma = (
        eta
        * np.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * np.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    eps_coef = np.sqrt(np.maximum(1 - alpha_bar_prev - sigma**2, 0.0))
    sqrt_alpha_bar_prev = np.sqrt(alpha_bar_prev)
    x = x_T
    with torch.no_grad():
        for i in _step_indices(schedule, progress):
            t_index = torch.full((x.shape[0],), i, dtype=torch.int64, device=x.device)
            out = denoise_fn(x, t_index)
            # 1. Deterministic part: point the predicted x0 back towards x_{t-1}.
            x = (
                schedule.gather(sqrt_alpha_bar_prev, t_index, x) * out["pred_x0"]
                + schedule.gather(eps_coef, t_index, x) * out["eps"]
            )
            # 2. Fresh noise with std sigma for t != 0 (skipped entirely when eta = 0).
            if i != 0 and eta > 0:
                x = x + schedule.gather(sigma, t_index, x) * noise(x.shape)
    return x
