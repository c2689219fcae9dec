"""Small checkpoints and batches for tests, built at test time (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evalsuite.models import (
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    build_model,
    save_checkpoint,
)

TINY_UNET = dict(
    image_size=8,
    num_channels=32,
    num_res_blocks=1,
    attention_resolutions=(4,),
    channel_mult=(1, 2),
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
)
TINY_DIFFUSION = DiffusionConfig(diffusion_steps=100, noise_schedule="cosine", learn_sigma=True)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # Fresh ADM models output zeros (zero-initialised output convs); give every weight a value.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))


def tiny_unet(
    path: Path,
    *,
    class_cond: bool = True,
    num_classes: int = 4,
    seed: int = 0,
    null_class: bool = False,
) -> Path:
    config = UNetConfig(
        **TINY_UNET, class_cond=class_cond, num_classes=num_classes, null_class=null_class
    )
    model = build_model(config)
    _randomise(model, seed)
    save_checkpoint(path, model, config, TINY_DIFFUSION, kind="unet")
    return path


def tiny_classifier(
    path: Path, *, num_classes: int = 4, image_size: int = 8, seed: int = 1
) -> Path:
    config = ClassifierConfig(
        image_size=image_size,
        classifier_width=32,
        classifier_depth=1,
        classifier_attention_resolutions=(4,),
        num_classes=num_classes,
        num_head_channels=16,
        channel_mult=(1, 2),
    )
    model = build_model(config)
    _randomise(model, seed)
    save_checkpoint(path, model, config, TINY_DIFFUSION, kind="classifier")
    return path


def random_batch(path: Path, num: int, size: int = 16, seed: int = 0, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"arr_0": rng.integers(0, 256, (num, size, size, 3), dtype=np.uint8)}
    if labels:
        arrays["arr_1"] = rng.integers(0, 10, num).astype(np.int64)
    np.savez(path, **arrays)
    return path
