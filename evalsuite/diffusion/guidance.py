"""Classifier guidance as a wrapper around a denoiser (ADM protocol §5).

The samplers know nothing about classifiers: ``guided(denoise_fn, guidance, mode)`` returns a new
denoiser whose output already carries the guided mean (ancestral sampling, Algorithm 1) or the
guided eps / x0 / mean (DDIM, Algorithm 2). A guidance scale of 0 returns the denoiser itself,
so scale 0 is bit-identical to unguided sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from evalsuite.diffusion.schedule import DenoiseFn, DiffusionSchedule
from evalsuite.runtime.errors import EvalsuiteError

GUIDANCE_MODES = ("ddpm", "ddim")


class ClassifierGuidance:
    """The scaled classifier gradient s * grad_{x_t} log p(y | x_t, t) (ADM protocol §5).

    Args:
        classifier_fn: noise-aware classifier ``classifier_fn(x_t, timesteps) -> logits (B, K)``;
            it receives the original timesteps of the chain indices (int64, or t * 1000 / T as
            float32 with ``rescale_timesteps``), like the denoising network.
        schedule: the chain being sampled.
        labels: int64 (B,) target classes y, one per sample of the batch being sampled.
        scale: guidance scale s (finite; 0 disables guidance).
        rescale_timesteps: pass t * 1000 / T instead of the integer timestep (improved-diffusion).
    """

    def __init__(
        self,
        classifier_fn: Callable[[Tensor, Tensor], Tensor],
        schedule: DiffusionSchedule,
        labels: Tensor,
        scale: float,
        rescale_timesteps: bool = False,
    ) -> None:
        if not math.isfinite(scale):
            raise EvalsuiteError(f"guidance scale must be a finite number, got {scale}")
        if labels.ndim != 1 or labels.dtype != torch.int64:
            raise EvalsuiteError(
                f"guidance labels must be an int64 tensor of shape (B,), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        self.classifier_fn = classifier_fn
        self.schedule = schedule
        self.labels = labels
        self.scale = float(scale)
        self.rescale_timesteps = rescale_timesteps

    def gradient(self, x_t: Tensor, t_index: Tensor) -> Tensor:
        """scale * grad_{x_t} log softmax(classifier(x_t, t))[y] (ADM protocol §5).

        Args:
            x_t: (B, C, H, W) noisy samples; t_index: int64 (B,) chain indices.

        Returns:
            Tensor like x_t in float32 (float64 if x_t is float64), computed on a detached copy
            of x_t with gradients enabled (works inside ``torch.no_grad``).
        """
        if x_t.shape[0] != self.labels.shape[0]:
            raise EvalsuiteError(
                f"guidance has {self.labels.shape[0]} labels for a batch of {x_t.shape[0]} samples"
            )
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        timesteps = self.schedule.network_timesteps(
            t_index, rescale_timesteps=self.rescale_timesteps
        )
        with torch.enable_grad():
            x_in = x_t.detach().to(dtype).requires_grad_(True)
            logits = self.classifier_fn(x_in, timesteps)
            log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
            selected = log_probs.gather(1, self.labels.to(logits.device)[:, None])
            (grad,) = torch.autograd.grad(selected.sum(), x_in)
        return grad * self.scale


def guided(denoise_fn: DenoiseFn, guidance: ClassifierGuidance, mode: str) -> DenoiseFn:
    """A denoiser whose outputs carry classifier guidance (ADM protocol §5).

    Args:
        denoise_fn: the unguided denoiser (see ``DenoiseFn``).
        guidance: the classifier gradient; its schedule must be the chain being sampled.
        mode: "ddpm" (Algorithm 1): mean' = mean + variance * g, other outputs unchanged;
            "ddim" (Algorithm 2): eps' = eps - sqrt(1 - alpha_bar_t) g, pred_x0' recomputed
            from eps' (not re-clipped) and mean' = posterior mean of pred_x0'.

    Returns:
        ``denoise_fn`` itself when ``guidance.scale == 0`` (bit-identical to unguided), else a
        new denoiser. Guided outputs are cast back to the dtype of x_t.
    """
    if mode not in GUIDANCE_MODES:
        raise EvalsuiteError(f"unknown guidance mode {mode!r}; expected one of {GUIDANCE_MODES}")
    if guidance.scale == 0:
        return denoise_fn
    schedule = guidance.schedule

    # Algorithm 1: shift the mean by the variance (not the std) times the gradient.
    def denoise_ddpm(x_t: Tensor, t_index: Tensor) -> dict[str, Tensor]:
        out = denoise_fn(x_t, t_index)
        gradient = guidance.gradient(x_t, t_index)
        mean = out["mean"].to(gradient.dtype) + out["variance"].to(gradient.dtype) * gradient
        return {**out, "mean": mean.to(x_t.dtype)}

    # Algorithm 2: shift eps by sqrt(1 - alpha_bar_t) times the gradient, then recompute x0 and mean.
    def denoise_ddim(x_t: Tensor, t_index: Tensor) -> dict[str, Tensor]:
        out = denoise_fn(x_t, t_index)
        gradient = guidance.gradient(x_t, t_index)
        sqrt_one_minus_alpha_bar = schedule.gather(
            schedule.sqrt_one_minus_alpha_bar, t_index, gradient
        )
        eps = (out["eps"].to(gradient.dtype) - sqrt_one_minus_alpha_bar * gradient).to(x_t.dtype)
        pred_x0 = schedule.predict_x0_from_eps(x_t, t_index, eps)
        mean, _, _ = schedule.q_posterior_mean_variance(pred_x0, x_t, t_index)
        return {**out, "mean": mean, "pred_x0": pred_x0, "eps": eps}

    return denoise_ddpm if mode == "ddpm" else denoise_ddim
