"""Classifier-free guidance as a wrapper around the network callable (Ho & Salimans, 2022).

One network trained with its label dropped to a null class ∅ part of the time predicts both
eps(x_t, y) and eps(x_t, ∅); sampling uses

    eps~ = eps(x_t, ∅) + s * (eps(x_t, y) - eps(x_t, ∅))

in the convention of diffusers' ``guidance_scale``: s = 1 is the plain conditional model, s = 0
the unconditional (null-class) one, s > 1 guides. The CFG paper writes the same thing with
w = s - 1: eps~ = (1 + w) eps(x_t, y) - w eps(x_t, ∅).

The wrapper sits below the denoiser (``make_denoiser``), so DDPM, DDIM and classifier guidance
(which wraps the denoiser) all see the guided network output unchanged in form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from evalsuite.runtime.errors import EvalsuiteError

# A network callable: model_fn(x_t, timesteps, y=labels) -> output (B, C_out, H, W).
ModelFn = Callable[..., Tensor]


def classifier_free(
    model_fn: ModelFn, *, scale: float, null_label: int, guided_channels: int
) -> ModelFn:
    """A network callable whose output carries classifier-free guidance at scale ``scale``.

    Args:
        model_fn: ``model_fn(x_t, timesteps, y=labels) -> output``; x_t (B, C, H, W), labels
            int64 (B,), output (B, C_out, H, W). With learned variance (learn_sigma) C_out = 2C:
            [eps (or x0) values, variance values].
        scale: guidance scale s >= 0 (diffusers' convention; the CFG paper's w = s - 1).
        null_label: the label of the null class ∅ (``UNetConfig.null_label``).
        guided_channels: how many leading output channels are guided (C: the eps or x0 part).
            The remaining channels (the learned variance) are taken from the conditional output.

    Returns:
        ``guided_fn(x_t, timesteps, y=labels)``. s = 1 calls ``model_fn`` once with the labels and
        s = 0 once with the null label (bit-identical to the conditional / null-class model);
        any other s makes ONE call on the concatenated batch [x_t; x_t] with labels [y; ∅] and
        combines the halves in the output's dtype.
    """
    if not math.isfinite(scale) or scale < 0:
        raise EvalsuiteError(f"classifier-free guidance scale must be finite and >= 0, got {scale}")
    if guided_channels < 1:
        raise EvalsuiteError(f"guided_channels must be >= 1, got {guided_channels}")

    def guided_fn(x_t: Tensor, timesteps: Tensor, *, y: Tensor, **kwargs: Tensor) -> Tensor:
        if y.ndim != 1 or y.shape[0] != x_t.shape[0]:
            raise EvalsuiteError(
                f"classifier-free guidance needs one label per sample, got labels of shape "
                f"{tuple(y.shape)} for a batch of {x_t.shape[0]}"
            )
        null = torch.full_like(y, null_label)
        if scale == 1:
            return model_fn(x_t, timesteps, y=y, **kwargs)
        if scale == 0:
            return model_fn(x_t, timesteps, y=null, **kwargs)
        # 1. Both halves in one pass: conditional rows first, then the same rows with ∅.
        doubled = {key: torch.cat([value, value]) for key, value in kwargs.items()}
        output = model_fn(
            torch.cat([x_t, x_t]),
            torch.cat([timesteps, timesteps]),
            y=torch.cat([y, null]),
            **doubled,
        )
        conditional, unconditional = output.chunk(2)
        # 2. eps~ = eps(x, ∅) + s (eps(x, y) - eps(x, ∅)) on the guided channels.
        guided = unconditional[:, :guided_channels] + scale * (
            conditional[:, :guided_channels] - unconditional[:, :guided_channels]
        )
        # 3. The variance channels (learn_sigma) come from the conditional output.
        return torch.cat([guided, conditional[:, guided_channels:]], dim=1)

    return guided_fn
