"""The ADM UNet and its super-resolution variant, state-dict compatible with guided-diffusion's
`UNetModel` / `SuperResModel` (ADM protocol §6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evalsuite.models.config import UNetConfig
from evalsuite.models.nn import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    Upsample,
    attention_heads,
    convert_convs,
    normalization,
    timestep_embedding,
    zero_module,
)
from evalsuite.runtime.errors import EvalsuiteError


@dataclass(frozen=True)
class EncoderSpec:
    """What the UNet's input half and the classifier trunk share (ADM protocol §6)."""

    in_channels: int
    model_channels: int
    channel_mult: tuple[float, ...]
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    num_heads: int
    num_head_channels: int
    attention_order: str
    dropout: float
    use_scale_shift_norm: bool
    resblock_updown: bool
    rescale_residual: bool
    norm_groups: int = 32

    @property
    def emb_channels(self) -> int:
        """Width of the time embedding: 4 * model_channels."""
        return 4 * self.model_channels

    def res_block(self, channels: int, out_channels: int, resample: str | None = None) -> ResBlock:
        """A ResBlock with this spec's embedding width and options."""
        return ResBlock(
            channels,
            self.emb_channels,
            out_channels,
            dropout=self.dropout,
            use_scale_shift_norm=self.use_scale_shift_norm,
            resample=resample,
            rescale_residual=self.rescale_residual,
            norm_groups=self.norm_groups,
        )

    def attention(self, channels: int, num_heads: int | None = None) -> AttentionBlock:
        """An attention block; `num_heads` overrides the spec's (the UNet's upsampling side)."""
        heads = self.num_heads if num_heads is None else num_heads
        return AttentionBlock(
            channels,
            attention_heads(channels, heads, self.num_head_channels),
            self.attention_order,
            self.norm_groups,
        )


def time_embed(model_channels: int) -> nn.Sequential:
    """`time_embed` = Linear(mc, 4mc), SiLU, Linear(4mc, 4mc) (ADM protocol §6)."""
    return nn.Sequential(
        nn.Linear(model_channels, 4 * model_channels),
        nn.SiLU(),
        nn.Linear(4 * model_channels, 4 * model_channels),
    )


def build_encoder(spec: EncoderSpec) -> tuple[nn.ModuleList, EmbedSequential, list[int]]:
    """Input blocks and middle block (ADM protocol §6).

    Input conv; per level `num_res_blocks` ResBlocks (+ attention if ds is an attention ds), then
    a down block (BigGAN ResBlock or stride-2 conv) except at the last level; middle = Res, Attn,
    Res. Returns (input_blocks, middle_block, channels of every input block's output).
    """
    ch = int(spec.channel_mult[0] * spec.model_channels)
    input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(spec.in_channels, ch, 3, padding=1))])
    block_channels = [ch]
    ds = 1
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            out_ch = int(mult * spec.model_channels)
            layers: list[nn.Module] = [spec.res_block(ch, out_ch)]
            ch = out_ch
            if ds in spec.attention_ds:
                layers.append(spec.attention(ch))
            input_blocks.append(EmbedSequential(*layers))
            block_channels.append(ch)
        if level != len(spec.channel_mult) - 1:
            down = spec.res_block(ch, ch, "down") if spec.resblock_updown else Downsample(ch)
            input_blocks.append(EmbedSequential(down))
            block_channels.append(ch)
            ds *= 2
    middle_block = EmbedSequential(
        spec.res_block(ch, ch), spec.attention(ch), spec.res_block(ch, ch)
    )
    return input_blocks, middle_block, block_channels


class ADMUNet(nn.Module):
    """The ADM UNet (guided-diffusion `UNetModel`).

    Built in float32; `convert_to_fp16()` switches the trunk (conv weights of the input, middle
    and output blocks) to half precision as guided-diffusion does with `use_fp16` (the config's
    `use_fp16` records the released flag; the caller chooses the precision).
    """

    is_upsampler = False

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.is_upsampler != self.is_upsampler:
            kind = "SuperResUNet" if config.is_upsampler else "ADMUNet"
            raise EvalsuiteError(f"this config describes a {kind}; build it with build_model")
        self.config = config
        self.trunk_dtype = torch.float32
        mc = config.num_channels
        spec = EncoderSpec(
            in_channels=config.in_channels * (2 if self.is_upsampler else 1),
            model_channels=mc,
            channel_mult=config.channel_mult,
            num_res_blocks=config.num_res_blocks,
            attention_ds=config.attention_ds,
            num_heads=config.num_heads,
            num_head_channels=config.num_head_channels,
            attention_order="new" if config.use_new_attention_order else "legacy",
            dropout=config.dropout,
            use_scale_shift_norm=config.use_scale_shift_norm,
            resblock_updown=config.resblock_updown,
            rescale_residual=config.rescale_residual,
            norm_groups=config.norm_groups,
        )
        self.time_embed = time_embed(mc)
        if config.class_cond:
            self.label_emb = nn.Embedding(config.label_rows, spec.emb_channels)
        self.input_blocks, self.middle_block, block_channels = build_encoder(spec)

        # Output levels mirror the input: num_res_blocks + 1 ResBlocks on cat([h, skip]), and an
        # up block after the last ResBlock of every level but the first (ADM protocol §6).
        heads_up = (
            config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample
        )
        self.output_blocks = nn.ModuleList()
        ch = block_channels[-1]
        ds = 2 ** (len(config.channel_mult) - 1)
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for index in range(config.num_res_blocks + 1):
                out_ch = int(mult * mc)
                layers: list[nn.Module] = [spec.res_block(ch + block_channels.pop(), out_ch)]
                ch = out_ch
                if ds in spec.attention_ds:
                    layers.append(spec.attention(ch, heads_up))
                if level and index == config.num_res_blocks:
                    layers.append(
                        spec.res_block(ch, ch, "up") if config.resblock_updown else Upsample(ch)
                    )
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        input_ch = int(config.channel_mult[0] * mc)
        self.out = nn.Sequential(
            normalization(ch, config.norm_groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(input_ch, config.out_channels, 3, padding=1)),
        )

    def convert_to_fp16(self) -> None:
        """Half-precision trunk: conv weights of input/middle/output blocks (ADM protocol §6)."""
        convert_convs([self.input_blocks, self.middle_block, self.output_blocks], torch.float16)
        self.trunk_dtype = torch.float16

    def convert_to_fp32(self) -> None:
        """Undo `convert_to_fp16`."""
        convert_convs([self.input_blocks, self.middle_block, self.output_blocks], torch.float32)
        self.trunk_dtype = torch.float32

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict [eps (or x0), variance values] for a noisy batch.

        Args:
            x: float (B, in_channels, H, W), model space [-1, 1] plus noise.
            timesteps: (B,) original integer timesteps (ADM protocol §4), or a scalar.
            y: int64 (B,) class labels in 0..num_classes-1, required iff `class_cond`; with
                `null_class` the label num_classes is the null class ∅ (classifier-free guidance).

        Returns:
            (B, out_channels, H, W) in x's dtype.
        """
        if (y is not None) != self.config.class_cond:
            raise ValueError(
                "class labels y are required for a class-conditional model"
                if self.config.class_cond
                else "y was given but the model is not class-conditional"
            )
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        # Class conditioning is added after the time MLP (ADM protocol §6).
        emb = self.time_embed(timestep_embedding(timesteps, self.config.num_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x.to(self.trunk_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class SuperResUNet(ADMUNet):
    """Super-resolution ADM UNet (guided-diffusion `SuperResModel`): the input is x concatenated
    with the low-res image bilinearly upsampled to x's size (2 * in_channels planes)."""

    is_upsampler = True

    def forward(  # type: ignore[override]
        self, x: Tensor, timesteps: Tensor, low_res: Tensor, y: Tensor | None = None
    ) -> Tensor:
        """x: (B, C, H, W) noisy large image; low_res: (B, C, h, w) in [-1, 1]; y: (B,) labels.

        Returns (B, out_channels, H, W).
        """
        upsampled = F.interpolate(
            low_res, size=x.shape[-2:], mode="bilinear", align_corners=False
        ).to(x.dtype)
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, y)
