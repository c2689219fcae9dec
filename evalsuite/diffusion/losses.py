"""IDDPM hybrid training loss: eps MSE plus the variational bound with a frozen mean (ADM protocol §4).

Implemented loss type: guided-diffusion's default for ``learn_sigma=True, use_kl=False,
rescale_learned_sigmas=False`` ("MSE"): loss = mse + vb with the vb term NOT rescaled by
num_steps / 1000 (that rescaling belongs to the "RESCALED_MSE" loss type, not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from evalsuite.diffusion.schedule import DiffusionSchedule
from evalsuite.runtime.errors import EvalsuiteError


# KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.
def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL divergence between two diagonal Gaussians, in nats (broadcasting)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


# Tanh approximation of the standard normal CDF (Page 1977), as used by the IDDPM decoder.
def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of 8-bit data under a Gaussian discretised into bins (ADM protocol §4).

    Args:
        x: data rescaled to [-1, 1] from uint8 (bin centres, half-width 1/255).
        means, log_scales: the Gaussian's mean and log standard deviation, broadcastable to x.

    Returns:
        Elementwise log probability in nats, shape of x. The edge bins absorb the tails:
        x < -0.999 gets log Phi(upper edge), x > 0.999 gets log(1 - Phi(lower edge)).
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def sample_timesteps(
    batch: int, num_steps: int, generator: torch.Generator | None = None
) -> Tensor:
    """Training timesteps drawn i.i.d. uniform over the chain indices.

    Returns:
        int64 (batch,) in [0, num_steps), on the generator's device (CPU without one).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, num_steps, (batch,), generator=generator, device=device)


def _mean_over_non_batch(values: Tensor) -> Tensor:
    return values.flatten(1).mean(dim=1)


def training_losses(
    model_fn: Callable[..., Tensor],
    schedule: DiffusionSchedule,
    x0: Tensor,
    t_index: Tensor,
    *,
    noise: Tensor,
    learn_sigma: bool = True,
    predict_xstart: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    rescale_timesteps: bool = False,
) -> dict[str, Tensor]:
    """IDDPM hybrid loss per sample (ADM protocol §4).

    Args:
        model_fn: ``model_fn(x_t, timesteps, **model_kwargs)`` -> (B, 2C, ...) with
            ``learn_sigma`` else (B, C, ...); receives original timesteps (see ``make_denoiser``).
        schedule: the training chain.
        x0: (B, C, ...) data in [-1, 1].
        t_index: int64 (B,) chain indices (see ``sample_timesteps``).
        noise: standard normal like x0; x_t = q_sample(x0, t, noise).
        learn_sigma: the model outputs learned-range variance channels, trained by the vb term.
        predict_xstart: the mean channels predict x0 instead of eps (MSE target x0).
        model_kwargs: extra network inputs, e.g. ``{"y": labels}``.
        rescale_timesteps: pass t * 1000 / T to the network (improved-diffusion).

    Returns:
        dict of (B,) tensors: ``mse`` (mean over non-batch dims of the squared error on eps, or
        on x0 with ``predict_xstart``), ``vb`` (bits per dim: KL(q(x_{t-1}|x_t,x_0) || p) for
        t > 0, decoder NLL for t = 0, computed with the mean channels detached so it only trains
        the variance; zeros without ``learn_sigma``) and ``loss`` = mse + vb.
    """
    if noise.shape != x0.shape:
        raise EvalsuiteError(
            f"noise shape {tuple(noise.shape)} does not match x0 {tuple(x0.shape)}"
        )
    x_t = schedule.q_sample(x0, t_index, noise)
    timesteps = schedule.network_timesteps(t_index, rescale_timesteps=rescale_timesteps)
    model_output = model_fn(x_t, timesteps, **(model_kwargs or {}))
    channels = x0.shape[1]
    expected = 2 * channels if learn_sigma else channels
    if model_output.shape[1] != expected:
        raise EvalsuiteError(
            f"model output has {model_output.shape[1]} channels, expected {expected} for "
            f"{channels}-channel data with learn_sigma={learn_sigma}"
        )
    if learn_sigma:
        mean_output, variance_output = torch.split(model_output, channels, dim=1)
        # Frozen mean: the vb term trains only the variance channels (IDDPM hybrid loss).
        frozen_output = torch.cat([mean_output.detach(), variance_output], dim=1)
        vb = _vb_terms_bits(schedule, frozen_output, x0, x_t, t_index, predict_xstart)
    else:
        mean_output = model_output
        vb = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    target = x0 if predict_xstart else noise
    mse = _mean_over_non_batch((target - mean_output) ** 2)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


# L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, L_0 = -log p(x_0 | x_1), in bits.
def _vb_terms_bits(
    schedule: DiffusionSchedule,
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t_index: Tensor,
    predict_xstart: bool,
) -> Tensor:
    true_mean, _, true_log_variance = schedule.q_posterior_mean_variance(x0, x_t, t_index)
    out = schedule.p_mean_variance(
        model_output,
        x_t,
        t_index,
        learn_sigma=True,
        predict_xstart=predict_xstart,
        clip_denoised=False,
    )
    kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
    kl_bits = _mean_over_non_batch(kl) / math.log(2.0)
    decoder_nll = -discretized_gaussian_log_likelihood(
        x0, means=out["mean"], log_scales=0.5 * out["log_variance"]
    )
    decoder_nll_bits = _mean_over_non_batch(decoder_nll) / math.log(2.0)
    return torch.where(t_index == 0, decoder_nll_bits, kl_bits)
