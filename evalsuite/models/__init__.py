"""ADM models (ADM protocol §6): the UNet, its super-resolution variant and the noise-aware
classifier, their configs and checkpoint I/O, state-dict compatible with guided-diffusion."""

from __future__ import annotations

from torch import nn

from evalsuite.models.classifier import NoiseAwareClassifier
from evalsuite.models.config import (
    PRESETS,
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    build_configs,
    config_from_dict,
    config_to_dict,
    parse_flags,
    preset_configs,
    preset_kind,
)
from evalsuite.models.unet import ADMUNet, SuperResUNet
from evalsuite.runtime.errors import EvalsuiteError


def build_model(config: UNetConfig | ClassifierConfig) -> nn.Module:
    """The network a config describes, in float32 with fresh (zero-output) initialisation.

    UNetConfig -> ADMUNet, or SuperResUNet when `small_size` is set; ClassifierConfig ->
    NoiseAwareClassifier. Honours a surrounding `torch.device(...)` context (e.g. "meta").
    """
    if isinstance(config, UNetConfig):
        return SuperResUNet(config) if config.is_upsampler else ADMUNet(config)
    if isinstance(config, ClassifierConfig):
        return NoiseAwareClassifier(config)
    raise EvalsuiteError(
        f"build_model takes a UNetConfig or ClassifierConfig, got {type(config).__name__}"
    )


# Imported last: checkpoint loading builds its models through build_model above.
from evalsuite.models.checkpoint import LoadedModel, load_checkpoint, save_checkpoint  # noqa: E402

__all__ = [
    "LoadedModel",
    "load_checkpoint",
    "save_checkpoint",
    "PRESETS",
    "ADMUNet",
    "ClassifierConfig",
    "DiffusionConfig",
    "NoiseAwareClassifier",
    "SuperResUNet",
    "UNetConfig",
    "build_configs",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "parse_flags",
    "preset_configs",
    "preset_kind",
]
