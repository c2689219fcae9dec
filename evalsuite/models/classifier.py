"""The noise-aware classifier, state-dict compatible with guided-diffusion's `EncoderUNetModel`
(ADM protocol §6): the UNet's input half + middle block, then a pooling head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evalsuite.models.config import ClassifierConfig
from evalsuite.models.nn import (
    AttentionPool2d,
    convert_convs,
    normalization,
    timestep_embedding,
    zero_module,
)
from evalsuite.models.unet import EncoderSpec, build_encoder, time_embed

# Hidden width of the "spatial" heads (guided-diffusion's EncoderUNetModel).
SPATIAL_HIDDEN = 2048


class NoiseAwareClassifier(nn.Module):
    """p(y | x_t, t) for classifier guidance (ADM protocol §5-6).

    Heads (`classifier_pool`): "attention" (GN, SiLU, AttentionPool2d; the released one),
    "adaptive" (GN, SiLU, global average pool, zero-init 1x1 conv), "spatial" (mean of every
    input block's and the middle block's output, concatenated, then Linear-ReLU-Linear) and
    "spatial_v2" (the same with Linear-GN-SiLU-Linear). Trunk attention uses the legacy qkv
    order. `convert_to_fp16()` switches the trunk (input and middle blocks) to half precision.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk_dtype = torch.float32
        spec = EncoderSpec(
            in_channels=config.in_channels,
            model_channels=config.classifier_width,
            channel_mult=config.channel_mult,
            num_res_blocks=config.classifier_depth,
            attention_ds=config.attention_ds,
            num_heads=config.num_heads,
            num_head_channels=config.num_head_channels,
            attention_order="legacy",
            dropout=0.0,
            use_scale_shift_norm=config.classifier_use_scale_shift_norm,
            resblock_updown=config.classifier_resblock_updown,
            rescale_residual=False,
        )
        self.time_embed = time_embed(config.classifier_width)
        self.input_blocks, self.middle_block, block_channels = build_encoder(spec)
        ch = block_channels[-1]
        pool = config.classifier_pool
        if pool == "attention":
            final_size = config.image_size // 2 ** (len(config.channel_mult) - 1)
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(final_size, ch, config.num_head_channels, config.num_classes),
            )
        elif pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, config.num_classes, 1)),
                nn.Flatten(),
            )
        elif pool == "spatial":
            # Features: every input block's output and the middle block's, spatially averaged.
            feature_size = sum(block_channels) + ch
            self.out = nn.Sequential(
                nn.Linear(feature_size, SPATIAL_HIDDEN),
                nn.ReLU(),
                nn.Linear(SPATIAL_HIDDEN, config.num_classes),
            )
        else:
            feature_size = sum(block_channels) + ch
            self.out = nn.Sequential(
                nn.Linear(feature_size, SPATIAL_HIDDEN),
                normalization(SPATIAL_HIDDEN),
                nn.SiLU(),
                nn.Linear(SPATIAL_HIDDEN, config.num_classes),
            )

    def convert_to_fp16(self) -> None:
        """Half-precision trunk: conv weights of the input and middle blocks (ADM protocol §6)."""
        convert_convs([self.input_blocks, self.middle_block], torch.float16)
        self.trunk_dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo `convert_to_fp16`."""
        convert_convs([self.input_blocks, self.middle_block], torch.float32)
        self.trunk_dtype = torch.float32

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """Class logits of noisy images.

        Args:
            x: float (B, in_channels, image_size, image_size), the noisy x_t.
            timesteps: (B,) original integer timesteps (ADM protocol §4), or a scalar.

        Returns:
            (B, num_classes) logits in x's dtype.
        """
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"the classifier takes {size}x{size} images, got {tuple(x.shape)}")
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.classifier_width))
        spatial = self.config.classifier_pool.startswith("spatial")
        features = []
        h = x.to(self.trunk_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                features.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            features.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(features, dim=-1))
        return self.out(h.to(x.dtype))
