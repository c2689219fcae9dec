"""Configs, flag parsing and presets of the ADM models (ADM protocol §6).

The key/shape lists in shared/reference/adm_state_dicts were produced by guided-diffusion's own
model code for the released flags (see ADM_PROTOCOL.md §6); they are the golden reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from evalsuite.models import (
    PRESETS,
    ClassifierConfig,
    DiffusionConfig,
    NoiseAwareClassifier,
    SuperResUNet,
    UNetConfig,
    build_configs,
    build_model,
    config_from_dict,
    config_to_dict,
    parse_flags,
    preset_configs,
)
from evalsuite.runtime.errors import EvalsuiteError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "adm_state_dicts"
REFERENCE_FILES = sorted(REFERENCE.glob("*.txt"))


def _read_reference(path: Path) -> tuple[int, int, list[tuple[str, list[int]]]]:
    lines = path.read_text().splitlines()
    header = re.search(r"(\d+) tensors, (\d+) params", lines[0])
    assert header is not None, lines[0]
    entries = []
    for line in lines[1:]:
        if line.strip():
            key, shape = line.split("\t")
            entries.append((key, [int(d) for d in shape.strip("[]").split(",") if d.strip()]))
    return int(header.group(1)), int(header.group(2)), entries


def test_all_eleven_reference_lists_are_present():
    assert len(REFERENCE_FILES) == 11


@pytest.mark.parametrize("path", REFERENCE_FILES, ids=lambda p: p.stem)
def test_preset_state_dict_matches_released_layout(path: Path):
    num_tensors, num_params, entries = _read_reference(path)
    model_config, _ = preset_configs(path.stem)
    with torch.device("meta"):
        model = build_model(model_config)
    state = model.state_dict()
    got = [(key, list(value.shape)) for key, value in state.items()]
    assert got == entries  # same keys, same order, same shapes
    assert len(state) == num_tensors == len(entries)
    assert sum(value.numel() for value in state.values()) == num_params


def test_lsun_presets_are_the_unconditional_256_layout_with_dropout():
    uncond, _ = preset_configs("256x256_diffusion_uncond")
    for name, dropout in [("lsun_bedroom", 0.1), ("lsun_cat", 0.1), ("lsun_horse", 0.1)]:
        config, diffusion = preset_configs(name)
        assert config.dropout == dropout
        assert not config.class_cond
        assert diffusion.noise_schedule == "linear"
        assert {**config_to_dict(config), "dropout": 0.0} == config_to_dict(uncond)
    assert preset_configs("lsun_horse_nodropout")[0].dropout == 0.0


def test_released_flags_are_the_protocol_table():
    # ADM protocol §6 table.
    m64, d64 = preset_configs("64x64_diffusion")
    assert (m64.num_channels, m64.num_res_blocks, m64.num_head_channels) == (192, 3, 64)
    assert m64.use_new_attention_order and m64.class_cond and m64.dropout == 0.1
    assert d64.noise_schedule == "cosine" and d64.learn_sigma
    m128, _ = preset_configs("128x128_diffusion")
    assert (m128.num_heads, m128.num_head_channels) == (4, -1)
    m512, _ = preset_configs("512x512_diffusion")
    assert m512.channel_mult == (0.5, 1, 1, 2, 2, 4, 4) and not m512.use_fp16
    up, _ = preset_configs("128_512_upsampler")
    assert isinstance(up, UNetConfig) and up.is_upsampler
    assert (up.image_size, up.small_size, up.channel_mult) == (512, 128, (1, 1, 2, 2, 4, 4))
    c64, _ = preset_configs("64x64_classifier")
    assert isinstance(c64, ClassifierConfig) and c64.classifier_depth == 4
    assert preset_configs("256x256_classifier")[0].classifier_depth == 2


def test_build_model_dispatches_on_config():
    with torch.device("meta"):
        assert isinstance(build_model(preset_configs("64_256_upsampler")[0]), SuperResUNet)
        assert isinstance(build_model(preset_configs("64x64_classifier")[0]), NoiseAwareClassifier)
    with pytest.raises(EvalsuiteError, match="UNetConfig or ClassifierConfig"):
        build_model(DiffusionConfig())


def test_parse_flags_types_and_spellings():
    flags = parse_flags(
        "--image_size 64 --num_channels=192 --attention_resolutions 32,16,8 "
        "--class_cond True --learn_sigma true --use_fp16 1 --resblock_updown 0 "
        "--channel_mult 1,2,3,4 --dropout 0.1 --noise_schedule cosine --timestep_respacing ddim25"
    )
    assert flags == {
        "image_size": 64,
        "num_channels": 192,
        "attention_resolutions": (32, 16, 8),
        "class_cond": True,
        "learn_sigma": True,
        "use_fp16": True,
        "resblock_updown": False,
        "channel_mult": (1, 2, 3, 4),
        "dropout": 0.1,
        "noise_schedule": "cosine",
        "timestep_respacing": "ddim25",
    }
    assert parse_flags("--channel_mult ''") == {"channel_mult": ()}
    assert parse_flags("--channel_mult 0.5,1") == {"channel_mult": (0.5, 1)}
    assert parse_flags("  \n ") == {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("--num_channel 64", "did you mean --num_channels"),
        ("--atention_resolutions 16", "did you mean --attention_resolutions"),
        ("--classifier_scale 1.0", "sampling"),
        ("--class_cond maybe", "bad value 'maybe' for --class_cond"),
        ("--image_size", "has no value"),
        ("--image_size --num_channels 3", "has no value"),
        ("--image_size 64 --image_size 32", "given twice"),
        ("image_size 64", "expected a flag"),
        ("--noise_schedule quadratic", "linear, cosine"),
        ("--classifier_pool max", "attention, adaptive"),
    ],
)
def test_parse_flags_errors(text: str, message: str):
    with pytest.raises(EvalsuiteError, match=message):
        parse_flags(text)


def test_build_configs_uses_guided_diffusion_defaults():
    unet, diffusion = build_configs("")
    assert (unet.image_size, unet.num_channels, unet.num_res_blocks) == (64, 128, 2)
    assert unet.attention_resolutions == (16, 8) and unet.channel_mult == (1, 2, 3, 4)
    assert (unet.num_heads, unet.num_head_channels, unet.num_heads_upsample) == (4, -1, -1)
    assert unet.use_scale_shift_norm and not unet.resblock_updown and not unet.class_cond
    assert not (unet.learn_sigma or unet.use_fp16 or unet.use_new_attention_order)
    assert unet.dropout == 0.0 and unet.out_channels == 3 and not unet.is_upsampler
    assert diffusion == DiffusionConfig()
    assert (diffusion.diffusion_steps, diffusion.noise_schedule) == (1000, "linear")
    classifier, _ = build_configs("", kind="classifier")
    assert classifier == ClassifierConfig(image_size=64)
    assert (classifier.classifier_width, classifier.classifier_depth) == (128, 2)
    assert classifier.classifier_attention_resolutions == (32, 16, 8)
    assert classifier.classifier_pool == "attention" and classifier.classifier_resblock_updown


def test_build_configs_shared_namespace_and_dict_input():
    # guided-diffusion's classifier scripts take model and classifier flags together.
    text = "--image_size 128 --num_channels 256 --classifier_depth 3 --learn_sigma True"
    classifier, diffusion = build_configs(text, kind="classifier")
    assert classifier.image_size == 128 and classifier.classifier_depth == 3
    assert diffusion.learn_sigma
    unet, _ = build_configs(text, kind="unet")
    assert unet.num_channels == 256 and unet.learn_sigma and unet.out_channels == 6
    # --channel_mult is the UNet's: guided-diffusion's classifier uses the size default.
    assert build_configs("--image_size 32 --channel_mult 1,2", kind="classifier")[
        0
    ].channel_mult == (
        1,
        2,
        2,
        2,
    )
    from_dict, _ = build_configs({"image_size": "128", "num_channels": 256, "learn_sigma": True})
    assert from_dict == unet
    with pytest.raises(EvalsuiteError, match="did you mean --num_channels"):
        build_configs({"num_chanels": 3})
    with pytest.raises(EvalsuiteError, match="unknown model kind"):
        build_configs("", kind="vae")


def test_upsampler_flags():
    unet, _ = build_configs("--large_size 256 --small_size 64")
    assert (unet.image_size, unet.small_size, unet.is_upsampler) == (256, 64, True)
    assert unet.channel_mult == (1, 1, 2, 2, 4, 4)
    with pytest.raises(EvalsuiteError, match="contradicts --large_size"):
        build_configs("--large_size 256 --image_size 64")


def test_default_channel_mult_by_size():
    expected = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        32: (1, 2, 2, 2),
        16: (1, 2, 2),
    }
    for size, mult in expected.items():
        config = UNetConfig(image_size=size, num_channels=64, num_res_blocks=1)
        assert config.channel_mult == mult
    with pytest.raises(EvalsuiteError, match="no default channel_mult for image_size 48"):
        UNetConfig(image_size=48, num_channels=64, num_res_blocks=1, attention_resolutions=())


def test_config_validation_errors():
    with pytest.raises(TypeError):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, colour=True)
    with pytest.raises(EvalsuiteError, match="multiple of 32"):
        UNetConfig(image_size=32, num_channels=48, num_res_blocks=1)
    assert (
        UNetConfig(image_size=32, num_channels=48, num_res_blocks=1, norm_groups=8).norm_groups == 8
    )
    with pytest.raises(EvalsuiteError, match=r"multiple of 3, which GroupNorm\(3\)"):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, norm_groups=3)
    with pytest.raises(EvalsuiteError, match="norm_groups must be >= 1"):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, norm_groups=0)
    with pytest.raises(EvalsuiteError, match="power of 2"):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions=(12,))
    with pytest.raises(EvalsuiteError, match="num_head_channels=48"):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, num_head_channels=48)
    with pytest.raises(EvalsuiteError, match="num_heads=3"):
        UNetConfig(image_size=32, num_channels=32, num_res_blocks=1, num_heads=3)
    with pytest.raises(EvalsuiteError, match="must be a number"):
        UNetConfig(image_size=32, num_channels=True, num_res_blocks=1)
    with pytest.raises(EvalsuiteError, match="classifier_pool"):
        ClassifierConfig(image_size=32, classifier_pool="max")
    with pytest.raises(EvalsuiteError, match="noise_schedule"):
        DiffusionConfig(noise_schedule="sigmoid")
    # Resolutions below the deepest level are ignored, as in guided-diffusion.
    config = UNetConfig(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(16, 8),
    )
    assert config.attention_ds == (2, 4)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(EvalsuiteError, match="unknown preset 'imagenet64'.*64x64_diffusion"):
        preset_configs("imagenet64")
    assert len(PRESETS) == 15


@pytest.mark.parametrize("name", ["64x64_diffusion", "128_512_upsampler", "64x64_classifier"])
def test_config_dict_round_trip(name: str):
    model_config, diffusion_config = preset_configs(name)
    for config in (model_config, diffusion_config):
        data = config_to_dict(config)
        assert all(not isinstance(value, tuple) for value in data.values())
        assert config_from_dict(data, type(config)) == config


def test_config_from_dict_rejects_unknown_and_missing_keys():
    data = config_to_dict(preset_configs("64x64_diffusion")[0])
    with pytest.raises(EvalsuiteError, match="unknown UNetConfig key"):
        config_from_dict({**data, "num_layers": 3}, UNetConfig)
    del data["image_size"]
    with pytest.raises(EvalsuiteError, match="missing key.*image_size"):
        config_from_dict(data, UNetConfig)
