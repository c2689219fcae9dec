"""Building blocks shared by the ADM UNet and the noise-aware classifier (ADM protocol §6).

Attribute names reproduce guided-diffusion's state-dict keys (`in_layers.{0,2}`,
`emb_layers.1`, `out_layers.{0,3}`, `skip_connection`, `norm`, `qkv`, `proj_out`, `op`,
`conv`, `positional_embedding`, `qkv_proj`, `c_proj`). No module registers buffers, so the
state dict holds exactly the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Attention qkv channel orders (ADM protocol §6): "legacy" = per head [q|k|v];
# "new" = all q, then all k, then all v.
ATTENTION_ORDERS = ("legacy", "new")


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal timestep embedding, cos first (ADM protocol §6).

    half = dim // 2, freqs = exp(-ln(max_period) * arange(half) / half), args = t * freqs,
    emb = cat[cos(args), sin(args)] (a zero column is appended when dim is odd).

    Args:
        timesteps: (B,) integer or float timesteps.
        dim: embedding width (the model's base channel count).

    Returns:
        float32 (B, dim).
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (ADM protocol §6)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def normalization(channels: int, groups: int = 32) -> GroupNorm32:
    """The ADM normalisation layer: 32 groups, eps 1e-5 (ADM protocol §6).

    `groups` other than 32 is an evalsuite option for narrow models (UNetConfig.norm_groups).
    """
    return GroupNorm32(groups, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (zero-initialised output layers, ADM protocol §6)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def convert_convs(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Cast the weights and biases of every Conv1d/Conv2d under `modules` to `dtype` (fp16 mode)."""
    for root in modules:
        for module in root.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                module.weight.data = module.weight.data.to(dtype)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(dtype)


def qkv_attention(qkv: Tensor, num_heads: int, order: str) -> Tensor:
    """Multi-head self-attention over a packed qkv tensor (ADM protocol §6).

    q and k are each scaled by ch^(-1/4) before their product (so the logits are
    q.k / sqrt(ch)), softmax over keys, weighted sum of v. Computed with torch's
    scaled_dot_product_attention on the pre-scaled q and k with scale=1: on CPU in float32 this
    is bit-identical to the plain matmul/softmax formula (measured), and on GPU it avoids the
    T x T weight matrix. In half precision the softmax accumulates in float32 inside the kernel
    (the reference rounds the logits to half first, a difference at half-precision rounding
    level). Every (sample, head) pair is computed independently of the rest of the batch.

    Args:
        qkv: (B, 3 * H * ch, T), any float dtype.
        num_heads: H.
        order: "legacy" (reshape to (B * H, 3 * ch, T), then split q|k|v) or "new"
            (chunk into q, k, v of H * ch channels each, then split heads).

    Returns:
        (B, H * ch, T), same dtype as qkv.
    """
    batch, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if order == "legacy":
        q, k, v = qkv.reshape(batch * num_heads, 3 * ch, length).split(ch, dim=1)
    elif order == "new":
        q, k, v = (part.reshape(batch * num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    else:
        raise ValueError(f"unknown attention order {order!r}; expected one of {ATTENTION_ORDERS}")
    scale = 1 / math.sqrt(math.sqrt(ch))
    # (B*H, T, ch) layout for SDPA; out[b, t, c] = sum_s softmax_s(q_t . k_s) v[b, s, c].
    out = F.scaled_dot_product_attention(
        (q * scale).transpose(1, 2), (k * scale).transpose(1, 2), v.transpose(1, 2), scale=1.0
    )
    return out.transpose(1, 2).reshape(batch, num_heads * ch, length)


def attention_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads = C / num_head_channels if num_head_channels != -1, else num_heads (ADM §6)."""
    return num_heads if num_head_channels == -1 else channels // num_head_channels


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv (key `op`; ADM protocol §6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the resolution: nearest x2 then a 3x3 conv (key `conv`; ADM protocol §6)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _resample(x: Tensor, resample: str | None) -> Tensor:
    # Parameter-free BigGAN resampling: nearest x2 up or 2x2 average-pool down (ADM protocol §6).
    if resample == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if resample == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class ResBlock(nn.Module):
    """ADM residual block with timestep(+class) embedding injection (ADM protocol §6).

    in_layers = [GN, SiLU, conv3x3]; emb_layers = [SiLU, Linear(emb -> 2*out with AdaGN else
    out)]; out_layers = [GN, SiLU, Dropout, zero-init conv3x3]; skip = identity or 1x1 conv.
    AdaGN (`use_scale_shift_norm`): h = GN(h) * (1 + scale) + shift; otherwise h = h + emb_out
    before out_layers. `resample` "up"/"down" makes it a BigGAN up/down block (resampling after
    GN+SiLU, before the conv, and on the skip path). `rescale_residual` multiplies skip + h by
    1/sqrt(2) (the paper's Table 1 ablation; not in guided-diffusion). `norm_groups` is the
    GroupNorm group count (ADM: 32).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        dropout: float,
        use_scale_shift_norm: bool,
        resample: str | None = None,
        rescale_residual: bool = False,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.rescale_residual = rescale_residual
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W); emb: float32 (B, emb_channels) -> (B, C_out, H', W')."""
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](_resample(h, self.resample))
            x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        out = self.skip_connection(x) + h
        return out * (1 / math.sqrt(2)) if self.rescale_residual else out


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: GN -> qkv (Conv1d C->3C) -> attention ->
    proj_out (zero-init Conv1d) -> x + h (ADM protocol §6)."""

    def __init__(self, channels: int, num_heads: int, order: str, norm_groups: int = 32) -> None:
        super().__init__()
        if order not in ATTENTION_ORDERS:
            raise ValueError(
                f"unknown attention order {order!r}; expected one of {ATTENTION_ORDERS}"
            )
        self.num_heads = num_heads
        self.order = order
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        batch, channels, *spatial = x.shape
        x = x.reshape(batch, channels, -1)
        h = qkv_attention(self.qkv(self.norm(x)), self.num_heads, self.order)
        return (x + self.proj_out(h)).reshape(batch, channels, *spatial)


class EmbedSequential(nn.Sequential):
    """A sequence of layers; ResBlocks also receive the embedding (guided-diffusion's
    TimestepEmbedSequential, which gives the `input_blocks.i.j` key layout)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class AttentionPool2d(nn.Module):
    """The classifier's attention-pool head (ADM protocol §6, after CLIP).

    Prepends the spatial mean as a token, adds a learned positional embedding [C, HW+1], applies
    new-order attention with C / num_head_channels heads and c_proj, and returns token 0.
    """

    def __init__(
        self, spatial_size: int, channels: int, num_head_channels: int, out_channels: int
    ) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(channels, spatial_size**2 + 1) / channels**0.5
        )
        self.qkv_proj = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)
        self.num_heads = channels // num_head_channels

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, out_channels)."""
        batch, channels = x.shape[:2]
        x = x.reshape(batch, channels, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, "new")
        return self.c_proj(x)[:, :, 0]
