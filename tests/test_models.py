"""ADM UNet, super-resolution UNet and noise-aware classifier (ADM protocol §6) on tiny sizes.

References in this file are written independently from the protocol text (explicit per-head
loops, functional GroupNorm, float64 where it matters), not taken from the code under test.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from evalsuite.models import (
    ADMUNet,
    ClassifierConfig,
    NoiseAwareClassifier,
    SuperResUNet,
    UNetConfig,
    build_model,
)
from evalsuite.models.nn import AttentionBlock, ResBlock, qkv_attention, timestep_embedding

TINY = dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8, 4),
    num_head_channels=16,
)


@pytest.fixture(autouse=True)
def _seeded_init():
    # Module initialisation draws from the global RNG: seed it per test and restore it after.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def _randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    # Fresh ADM models output zeros (zero-init output layers); perturb every weight.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def _inputs(batch: int = 4, size: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    t = torch.tensor([0, 17, 500, 999][:batch])
    return x, t


def test_timestep_embedding_is_cos_first():
    t = torch.tensor([0, 1, 37, 999])
    dim = 10
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, 10) and emb.dtype == torch.float32
    half = dim // 2
    for row, step in enumerate(t.tolist()):
        for i in range(half):
            arg = step * math.exp(-math.log(10000) * i / half)
            assert emb[row, i].item() == pytest.approx(math.cos(arg), abs=2e-5)
            assert emb[row, half + i].item() == pytest.approx(math.sin(arg), abs=2e-5)
    assert torch.all(emb[0, :half] == 1) and torch.all(emb[0, half:] == 0)
    odd = timestep_embedding(t, 11)
    assert odd.shape == (4, 11) and torch.all(odd[:, -1] == 0)


def test_fresh_unet_outputs_exact_zeros():
    model = build_model(UNetConfig(**TINY, learn_sigma=True)).eval()
    x, t = _inputs()
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == (4, 6, 16, 16)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("updown", [False, True])
@pytest.mark.parametrize("scale_shift", [False, True])
def test_unet_forward_shapes_and_finite(updown: bool, scale_shift: bool):
    config = UNetConfig(
        **TINY,
        class_cond=True,
        num_classes=10,
        resblock_updown=updown,
        use_scale_shift_norm=scale_shift,
    )
    model = build_model(config).eval()
    assert isinstance(model, ADMUNet)
    _randomise(model)
    x, t = _inputs()
    y = torch.tensor([0, 3, 9, 1])
    with torch.no_grad():
        out = model(x, t, y)
        other_labels = model(x, t, torch.tensor([1, 4, 0, 2]))
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out, other_labels)  # the class embedding reaches the output
    assert model.label_emb.num_embeddings == 10
    with pytest.raises(ValueError, match="class labels y are required"):
        model(x, t)


def test_super_res_unet_conditions_on_the_upsampled_low_res_image():
    config = UNetConfig(**TINY, small_size=8, learn_sigma=True)
    model = build_model(config).eval()
    assert isinstance(model, SuperResUNet)
    assert model.input_blocks[0][0].weight.shape[1] == 6
    _randomise(model)
    x, t = _inputs()
    low_res = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x, t, low_res)
        # The same network on the explicit concatenation (bilinear, align_corners=False).
        upsampled = F.interpolate(low_res, size=(16, 16), mode="bilinear", align_corners=False)
        direct = ADMUNet.forward(model, torch.cat([x, upsampled], dim=1), t)
    assert out.shape == (4, 6, 16, 16) and torch.isfinite(out).all()
    torch.testing.assert_close(out, direct, rtol=0, atol=0)


@pytest.mark.parametrize("pool", ["attention", "adaptive", "spatial", "spatial_v2"])
def test_classifier_heads(pool: str):
    config = ClassifierConfig(
        image_size=16,
        classifier_width=32,
        classifier_depth=1,
        classifier_attention_resolutions=(8, 4),
        classifier_pool=pool,
        num_classes=10,
        num_head_channels=16,
        channel_mult=(1, 2),
    )
    model = build_model(config).eval()
    assert isinstance(model, NoiseAwareClassifier)
    x, t = _inputs()
    if pool == "adaptive":
        with torch.no_grad():
            assert torch.count_nonzero(model(x, t)) == 0  # zero-initialised 1x1 conv head
    _randomise(model)
    with torch.no_grad():
        logits = model(x, t)
        later = model(x, t + 1)
    assert logits.shape == (4, 10) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits, later)  # the timestep reaches the logits
    with pytest.raises(ValueError, match="16x16"):
        model(x[:, :, :8, :8], t)


def test_classifier_attention_pool_layout():
    config = ClassifierConfig(
        image_size=32,
        classifier_width=32,
        classifier_depth=1,
        classifier_attention_resolutions=(16,),
        num_classes=7,
        num_head_channels=16,
        channel_mult=(1, 2),
    )
    shapes = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    # Final map 16x16 with 64 channels: [C, HW + 1] positional embedding, C / 16 = 4 heads.
    assert shapes["out.2.positional_embedding"] == (64, 16 * 16 + 1)
    assert shapes["out.2.qkv_proj.weight"] == (192, 64, 1)
    assert shapes["out.2.c_proj.weight"] == (7, 64, 1)


def _reference_attention(x: torch.Tensor, block: AttentionBlock, order: str) -> torch.Tensor:
    # Straightforward float64 version of ADM protocol §6, one head at a time.
    batch, channels, height, width = x.shape
    heads = block.num_heads
    ch = channels // heads
    x64 = x.double().reshape(batch, channels, -1)
    normed = F.group_norm(x64, 32, block.norm.weight.double(), block.norm.bias.double(), 1e-5)
    qkv = torch.einsum("oc,bct->bot", block.qkv.weight[:, :, 0].double(), normed)
    qkv = qkv + block.qkv.bias.double()[None, :, None]
    out = torch.zeros_like(x64)
    for head in range(heads):
        if order == "legacy":
            base = head * 3 * ch
            q, k, v = (qkv[:, base + i * ch : base + (i + 1) * ch] for i in range(3))
        else:
            q, k, v = (
                qkv[:, i * channels + head * ch : i * channels + (head + 1) * ch] for i in range(3)
            )
        logits = torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch)
        weights = torch.softmax(logits, dim=-1)
        out[:, head * ch : (head + 1) * ch] = torch.einsum("bts,bcs->bct", weights, v)
    projected = torch.einsum("oc,bct->bot", block.proj_out.weight[:, :, 0].double(), out)
    projected = projected + block.proj_out.bias.double()[None, :, None]
    return (x64 + projected).reshape(batch, channels, height, width)


def test_legacy_and_new_attention_orders():
    legacy = AttentionBlock(64, num_heads=4, order="legacy")
    _randomise(legacy, scale=0.3)
    new = AttentionBlock(64, num_heads=4, order="new")
    new.load_state_dict(legacy.state_dict())
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out_legacy, out_new = legacy(x), new(x)
        ref_legacy = _reference_attention(x, legacy, "legacy")
        ref_new = _reference_attention(x, new, "new")
    # Same weights, different channel orders: not interchangeable (ADM protocol §6).
    assert (out_legacy - out_new).abs().max() > 1e-2
    torch.testing.assert_close(out_legacy.double(), ref_legacy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_new.double(), ref_new, rtol=1e-4, atol=1e-4)


def _reference_resblock(block: ResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    # ADM protocol §6 ResBlock, functional form, no up/down.
    def gn(h, layer):
        return F.group_norm(h, 32, layer.weight, layer.bias, 1e-5)

    conv_in, norm_out, conv_out = block.in_layers[2], block.out_layers[0], block.out_layers[3]
    h = F.conv2d(F.silu(gn(x, block.in_layers[0])), conv_in.weight, conv_in.bias, padding=1)
    emb_out = F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)
    emb_out = emb_out[:, :, None, None]
    if block.use_scale_shift_norm:
        scale, shift = emb_out.chunk(2, dim=1)
        h = gn(h, norm_out) * (1 + scale) + shift
    else:
        h = gn(h + emb_out, norm_out)
    h = F.conv2d(F.silu(h), conv_out.weight, conv_out.bias, padding=1)
    if isinstance(block.skip_connection, torch.nn.Identity):
        skip = x
    else:
        skip = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias)
    return skip + h


@pytest.mark.parametrize("scale_shift", [True, False])
def test_resblock_adagn_and_addition(scale_shift: bool):
    block = ResBlock(32, 128, 64, dropout=0.0, use_scale_shift_norm=scale_shift)
    # AdaGN produces a scale and a shift per channel, addition one value per channel.
    assert block.emb_layers[1].out_features == (128 if scale_shift else 64)
    assert block.skip_connection.weight.shape == (64, 32, 1, 1)
    _randomise(block, scale=0.2)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            block(x, emb), _reference_resblock(block, x, emb), rtol=1e-5, atol=1e-5
        )


def test_rescale_residual_divides_by_sqrt2():
    plain = ResBlock(32, 64, 32, dropout=0.0, use_scale_shift_norm=True)
    _randomise(plain, scale=0.2)
    rescaled = ResBlock(32, 64, 32, dropout=0.0, use_scale_shift_norm=True, rescale_residual=True)
    rescaled.load_state_dict(plain.state_dict())
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(rescaled(x, emb), plain(x, emb) / math.sqrt(2))
    # Through a whole UNet the flag changes the output.
    config = UNetConfig(**TINY)
    base, scaled = build_model(config), build_model(UNetConfig(**TINY, rescale_residual=True))
    _randomise(base)
    scaled.load_state_dict(base.state_dict())
    x, t = _inputs(2)
    with torch.no_grad():
        assert (base(x, t) - scaled(x, t)).abs().max() > 1e-3


@pytest.mark.parametrize("resample", ["down", "up"])
def test_biggan_resblock_skip_path(resample: str):
    # Freshly built, the residual branch ends in a zero conv: output = resampled input.
    block = ResBlock(32, 64, 32, dropout=0.0, use_scale_shift_norm=True, resample=resample)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 64)
    with torch.no_grad():
        out = block(x, emb)
    if resample == "down":
        expected = (
            x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]
        ) / 4
    else:
        expected = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out, expected)


def test_batch_size_independence():
    config = UNetConfig(**TINY, class_cond=True, num_classes=10, resblock_updown=True)
    model = build_model(config).eval()
    _randomise(model)
    x, t = _inputs()
    y = torch.tensor([2, 5, 7, 1])
    with torch.no_grad():
        together = model(x, t, y)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(4)])
    # Not bit-identical on CPU: oneDNN convolutions and the Linear GEMM change their blocking
    # with the batch size (measured max difference ~3e-6 on outputs of magnitude ~3).
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_fp16_conversion_keeps_linear_norm_and_out_in_float32():
    config = UNetConfig(**TINY, class_cond=True, num_classes=10, learn_sigma=True)
    model = build_model(config).eval()
    _randomise(model)
    half = copy.deepcopy(model)
    half.convert_to_fp16()
    assert half.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert half.middle_block[1].qkv.weight.dtype == torch.float16
    assert half.output_blocks[0][0].skip_connection.weight.dtype == torch.float16
    assert half.input_blocks[1][0].emb_layers[1].weight.dtype == torch.float32
    assert half.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32
    assert half.time_embed[0].weight.dtype == torch.float32
    assert half.label_emb.weight.dtype == torch.float32
    assert half.out[2].weight.dtype == torch.float32
    x, t = _inputs()
    y = torch.tensor([2, 5, 7, 1])
    with torch.no_grad():
        full, reduced = model(x, t, y), half(x, t, y)
    assert reduced.dtype == torch.float32
    assert (full - reduced).abs().max() < 0.05 * full.abs().max()
    half.convert_to_fp32()
    with torch.no_grad():
        torch.testing.assert_close(half(x, t, y), full, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("order", ["legacy", "new"])
def test_sdpa_attention_equals_the_plain_float32_formula(order: str):
    # qkv_attention runs on scaled_dot_product_attention; check it against the einsum form of
    # ADM protocol §6 in float32 (bit-identical on CPU when measured; asserted to 1e-6 here).
    heads, ch, length = 4, 16, 65
    qkv = 2 * torch.randn(2, 3 * heads * ch, length)
    if order == "legacy":
        q, k, v = qkv.reshape(2 * heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(2 * heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = ch**-0.25
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    expected = torch.einsum("bts,bcs->bct", weights, v).reshape(2, heads * ch, length)
    torch.testing.assert_close(qkv_attention(qkv, heads, order), expected, rtol=1e-6, atol=1e-6)


def test_norm_groups_sets_every_groupnorm():
    default, grouped = (
        build_model(UNetConfig(**TINY)),
        build_model(UNetConfig(**TINY, norm_groups=8)),
    )
    norms = [m for m in default.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and {m.num_groups for m in norms} == {32}  # ADM: 32 groups everywhere
    grouped_norms = [m for m in grouped.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(grouped_norms) == len(norms) and {m.num_groups for m in grouped_norms} == {8}
    # Same parameters (GroupNorm's affine weights are per channel), so state dicts interchange.
    assert {k: v.shape for k, v in default.state_dict().items()} == {
        k: v.shape for k, v in grouped.state_dict().items()
    }


def test_one_channel_per_group_hides_channel_means():
    # With 32 groups at width 32 each channel is normalised alone: a ResBlock's residual branch
    # cannot see a shift of any channel's mean (an image's mean colour). 4 channels per group can.
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 64)
    shift = torch.randn(1, 32, 1, 1)
    for groups, blind in ((32, True), (8, False)):
        block = ResBlock(32, 64, 32, dropout=0.0, use_scale_shift_norm=True, norm_groups=groups)
        _randomise(block, scale=0.2)
        with torch.no_grad():
            branch = block(x + shift, emb) - (x + shift)  # identity skip: the residual branch
            unshifted = block(x, emb) - x
        assert torch.allclose(branch, unshifted, atol=1e-4) is blind
