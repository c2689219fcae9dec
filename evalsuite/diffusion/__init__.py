"""Gaussian diffusion for the ADM protocol (§4–5): schedules, respacing, samplers, guidance, losses.

Pure torch/numpy over model callables; nothing here knows a network architecture.
"""

from evalsuite.diffusion.cfg import classifier_free
from evalsuite.diffusion.guidance import ClassifierGuidance, guided
from evalsuite.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
    sample_timesteps,
    training_losses,
)
from evalsuite.diffusion.respace import space_timesteps
from evalsuite.diffusion.samplers import (
    NoiseFn,
    PerSampleNoise,
    make_denoiser,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.diffusion.schedule import (
    NOISE_SCHEDULES,
    DenoiseFn,
    DiffusionSchedule,
    beta_schedule,
    make_schedule,
)

__all__ = [
    "NOISE_SCHEDULES",
    "ClassifierGuidance",
    "DenoiseFn",
    "DiffusionSchedule",
    "NoiseFn",
    "PerSampleNoise",
    "approx_standard_normal_cdf",
    "beta_schedule",
    "classifier_free",
    "discretized_gaussian_log_likelihood",
    "guided",
    "make_denoiser",
    "make_schedule",
    "normal_kl",
    "sample_ddim",
    "sample_ddpm",
    "sample_timesteps",
    "space_timesteps",
    "training_losses",
]
