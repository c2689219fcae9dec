"""Sampling a `diffusers:` model: the folder's scheduler or evalsuite's DDPM/DDIM (§3–5).

`DiffusersBatchSampler` is `BatchSampler` for a `DiffusersModel`: the same per-sample seeds,
classes and CPU execution (every network pass one sample at a time, single-threaded), so the
samples depend on neither batch size nor process count. With `--sampler scheduler` (the default
for these models) the folder's own diffusers scheduler runs `--steps N` inference steps; with
`--sampler ddpm|ddim` evalsuite's samplers run over the model's ε-prediction on the respaced
training chain. Latent models are decoded by the folder's VAE, one sample at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from evalsuite.diffusion import (
    PerSampleNoise,
    classifier_free,
    make_denoiser,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.diffusion.respace import space_timesteps
from evalsuite.diffusion.schedule import DiffusionSchedule, respace_betas
from evalsuite.diffusion.scheduler_loop import check_scheduler_options, sample_with_scheduler
from evalsuite.models.diffusers_source import DiffusersModel
from evalsuite.pipeline.sample import (
    BatchSampler,
    SamplingModels,
    SamplingSettings,
    resolve_class_spec,
    sample_classes,
    sample_seed,
    to_uint8,
)
from evalsuite.runtime.errors import EvalsuiteError

# A network with the labels bound: model_fn(x_t, timesteps) -> raw output (B, C or 2C, H, W).
ModelFn = Callable[[Tensor, Tensor], Tensor]


def inference_steps(steps: str, train_steps: int) -> int:
    """`--steps` for the folder's scheduler: "N" or "ddimN" inference steps, 1 <= N <= T."""
    text = steps.strip()
    digits = text[4:] if text.startswith("ddim") else text
    if not digits.isdigit() or not 1 <= int(digits) <= train_steps:
        raise EvalsuiteError(
            f"--steps {steps!r}: the folder's scheduler takes a number of inference steps "
            f"between 1 and {train_steps} (e.g. --steps 50); respacing strings like '10,20' need "
            "--sampler ddpm or ddim"
        )
    return int(digits)


def check_settings(models: SamplingModels, settings: SamplingSettings) -> None:
    """Reject settings a diffusers model cannot sample with, before any work (one line each)."""
    model = models.model
    assert isinstance(model, DiffusersModel)
    config, diffusion = model.model_config, model.diffusion_config
    name = f"diffusers:{model.path}"
    if models.classifier is not None:
        raise EvalsuiteError(
            f"{name}: classifier guidance (--classifier) is not available for diffusers models; "
            "use --guidance cfg"
        )
    if settings.classifier_scale > 0:
        raise EvalsuiteError(
            f"--classifier-scale {settings.classifier_scale}: classifier guidance is not "
            f"available for diffusers models ({name}); use --guidance cfg alone"
        )
    if settings.guidance == "cfg" and not config.null_class:
        raise EvalsuiteError(
            f"--guidance cfg needs a model with a null class; {name} is a {config.model_class} "
            "without class labels (unconditional): sample it without guidance"
        )
    if settings.guidance != "cfg" and settings.guidance_scale > 0:
        raise EvalsuiteError(
            f"--guidance-scale {settings.guidance_scale} with a diffusers model needs "
            "--guidance cfg (classifier-free guidance; classifier guidance is not available)"
        )
    resolve_class_spec(settings.classes, config.num_classes if config.class_cond else None)
    if settings.sampler == "scheduler":
        inference_steps(settings.steps, diffusion.diffusion_steps)
        check_scheduler_options(model.make_scheduler(), eta=settings.eta)
    else:
        if model.betas is None:
            raise EvalsuiteError(
                f"--sampler {settings.sampler}: evalsuite cannot compute the training chain of "
                f"{name} ({model.betas_problem}); sample with its own scheduler "
                "(--sampler scheduler)"
            )
        space_timesteps(len(model.betas), settings.steps)


class DiffusersBatchSampler(BatchSampler):
    """`BatchSampler` for a `DiffusersModel` (see the module docstring)."""

    def __init__(
        self, models: SamplingModels, settings: SamplingSettings, device: str | torch.device
    ) -> None:
        super().__init__(models, settings, device)
        vae = models.model.vae
        self.vae = None if vae is None else vae.to(self.device).eval()

    def _schedule(self) -> DiffusionSchedule | None:
        model = self.models.model
        if self.settings.sampler == "scheduler":
            return None
        return respace_betas(model.betas, self.settings.steps)

    def _model_fn(self, labels: Tensor | None) -> ModelFn:
        config = self.models.model.model_config
        network = self._network(self.model)
        if labels is None:
            return lambda x, t: network(x, t)
        if self.settings.guidance == "cfg":
            # Diffusers' guidance_scale convention; the variance channels from the cond. half.
            network = classifier_free(
                network,
                scale=self.settings.guidance_scale,
                null_label=config.null_label,
                guided_channels=config.in_channels,
            )
        return lambda x, t: network(x, t, y=labels)

    def _decode(self, x: Tensor) -> Tensor:
        model = self.models.model
        if self.vae is None:
            return x
        if not self.per_sample:
            with self._autocast():
                return model.decode(x).float()
        return torch.cat(
            self._workers.map(lambda i: model.decode(x[i : i + 1]).float(), range(x.shape[0]))
        )

    def _generate(self, indices: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        images, labels = self.decoded_samples(indices)
        return to_uint8(images), labels

    def decoded_samples(self, indices: list[int]) -> tuple[Tensor, np.ndarray | None]:
        """Float RGB samples (B, 3, H, W), [-1, 1] before clamping, and int64 (B,) labels."""
        settings, model = self.settings, self.models.model
        config, diffusion = model.model_config, model.diffusion_config
        labels_np = sample_classes(
            settings.classes, self.models.num_classes, settings.seed, indices
        )
        labels = None if labels_np is None else torch.from_numpy(labels_np).to(self.device)
        noise = PerSampleNoise.from_seeds(
            [sample_seed(settings.seed, i) for i in indices], self.device
        )
        x_T = noise((len(indices), config.in_channels, config.sample_size, config.sample_size))
        model_fn = self._model_fn(labels)
        if settings.sampler == "scheduler":
            x_0 = sample_with_scheduler(
                model_fn,
                model.make_scheduler(),
                x_T,
                num_inference_steps=inference_steps(settings.steps, diffusion.diffusion_steps),
                generators=noise.generators,
                eta=settings.eta,
            )
        else:
            denoise_fn = make_denoiser(
                lambda x, t: model.eps_from_output(model_fn(x, t), x, t),
                self.schedule,
                learn_sigma=diffusion.learn_sigma,
                predict_xstart=diffusion.predict_xstart,
                clip_denoised=settings.clip_denoised and not config.latent,
            )
            if settings.sampler == "ddpm":
                x_0 = sample_ddpm(denoise_fn, self.schedule, x_T, noise=noise)
            else:
                x_0 = sample_ddim(denoise_fn, self.schedule, x_T, noise=noise, eta=settings.eta)
        return self._decode(x_0), labels_np
