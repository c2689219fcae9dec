"""Sampling with a diffusers scheduler object driven by evalsuite's loop.

The scheduler is duck-typed (``set_timesteps``, ``timesteps``, ``init_noise_sigma``,
``scale_model_input``, ``step``), so nothing here imports diffusers. The loop is the one every
diffusers pipeline runs; what evalsuite adds is the randomness: the starting noise comes from the
caller and every stochastic step draws row b from ``generators[b]`` alone (diffusers'
``randn_tensor`` with a list of generators), so a sample depends only on its own seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from evalsuite.runtime.errors import EvalsuiteError

# The learned-variance types with which diffusers' DDPMScheduler.step reads 2C output channels.
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def _step_parameters(scheduler: Any) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


def check_scheduler_options(scheduler: Any, *, eta: float) -> None:
    """Reject options the scheduler cannot honour (e.g. eta > 0 without a DDIM-style step)."""
    if eta > 0 and "eta" not in _step_parameters(scheduler):
        raise EvalsuiteError(
            f"--eta {eta} needs a scheduler with a DDIM eta; the folder's "
            f"{type(scheduler).__name__} has none (use --eta 0 or --sampler ddim)"
        )


def sample_with_scheduler(
    model_fn: Callable[[Tensor, Tensor], Tensor],
    scheduler: Any,
    x_T: Tensor,
    *,
    num_inference_steps: int,
    generators: Sequence[torch.Generator],
    eta: float = 0.0,
) -> Tensor:
    """Run ``scheduler`` from x_T down to x_0 with ``num_inference_steps`` model calls.

    Args:
        model_fn: ``model_fn(x_in, timesteps) -> output`` with x_in (B, C, H, W) the scheduler's
            scaled input and timesteps (B,) the scheduler's timestep for every row; output in
            the scheduler's ``prediction_type``, (B, C, H, W) or (B, 2C, H, W) with a learned
            variance (kept only for a scheduler whose ``variance_type`` reads it).
        scheduler: a fresh diffusers scheduler (multistep schedulers keep state across steps).
        x_T: (B, C, H, W) standard normal starting noise (scaled by ``init_noise_sigma`` here).
        num_inference_steps: number of denoising steps (``set_timesteps``).
        generators: one generator per row, continuing the streams x_T was drawn from.
        eta: DDIM eta, passed to schedulers whose ``step`` takes one.

    Returns:
        x_0, (B, C, H, W), dtype of x_T.
    """
    if len(generators) != x_T.shape[0]:
        raise EvalsuiteError(f"{len(generators)} generators for a batch of {x_T.shape[0]} samples")
    check_scheduler_options(scheduler, eta=eta)
    parameters = _step_parameters(scheduler)
    step_kwargs: dict[str, Any] = {}
    if "eta" in parameters:
        step_kwargs["eta"] = eta
    if "generator" in parameters:
        # randn_tensor treats a one-element list as a plain generator: the same draws.
        step_kwargs["generator"] = list(generators)
    channels = x_T.shape[1]
    keeps_variance = getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES
    scheduler.set_timesteps(num_inference_steps)
    x = x_T * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            timesteps = t.reshape(1).to(x.device).expand(x.shape[0])
            output = model_fn(x_in, timesteps)
            if output.shape[1] == 2 * channels and not keeps_variance:
                output = output[:, :channels]
            x = scheduler.step(output, t, x, **step_kwargs).prev_sample
    return x
