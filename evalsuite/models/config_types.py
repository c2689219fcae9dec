"""Typed configs of the ADM UNet, the noise-aware classifier and the diffusion (ADM protocol §6).

The configs are frozen dataclasses that reject unknown keys; `config_to_dict`/`config_from_dict`
round-trip them through plain dicts (embedded in checkpoints, written next to outputs).
`evalsuite.models.config` builds them from guided-diffusion style flag strings and presets.

Precision: `use_fp16` is the flag the checkpoint was released with. Models are always built in
float32; the caller (the sampler) chooses the precision by calling `model.convert_to_fp16()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from evalsuite.runtime.errors import EvalsuiteError

NOISE_SCHEDULES = ("linear", "cosine")
CLASSIFIER_POOLS = ("attention", "adaptive", "spatial", "spatial_v2")
MODEL_KINDS = ("unet", "classifier")

# Default channel multipliers by image size (ADM protocol §6). 32 and 16 are evalsuite's
# small-size defaults (not in guided-diffusion) for tiny test and toy models.
DEFAULT_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    16: (1, 2, 2),
}

# Super-resolution UNets use their own table in guided-diffusion (`sr_create_model`): 512 and 256
# both (1, 1, 2, 2, 4, 4); other sizes fall back to DEFAULT_CHANNEL_MULT.
UPSAMPLER_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    64: (1, 2, 3, 4),
}


def default_channel_mult(image_size: int, *, upsampler: bool = False) -> tuple[float, ...]:
    """Channel multipliers guided-diffusion uses when `--channel_mult` is empty (ADM protocol §6)."""
    if upsampler and image_size in UPSAMPLER_CHANNEL_MULT:
        return UPSAMPLER_CHANNEL_MULT[image_size]
    if image_size in DEFAULT_CHANNEL_MULT:
        return DEFAULT_CHANNEL_MULT[image_size]
    raise EvalsuiteError(
        f"no default channel_mult for image_size {image_size}; pass channel_mult explicitly "
        f"(defaults exist for {', '.join(str(s) for s in sorted(DEFAULT_CHANNEL_MULT))})"
    )


def _check_type(owner: str, name: str, value: Any, expected: type | tuple[type, ...]) -> None:
    # bool is a subclass of int: never accept it where a number is expected, and vice versa.
    if isinstance(value, bool) and expected is not bool:
        raise EvalsuiteError(f"{owner}.{name} must be a number, got the boolean {value!r}")
    if not isinstance(value, expected):
        raise EvalsuiteError(f"{owner}.{name} has the wrong type: got {value!r}")


def _as_tuple(owner: str, name: str, value: Any, item_type: type | tuple[type, ...]) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise EvalsuiteError(f"{owner}.{name} must be a tuple, got {value!r}")
    for item in value:
        _check_type(owner, name, item, item_type)
    return tuple(value)


def _level_channels(
    owner: str, model_channels: int, channel_mult: tuple[float, ...], groups: int = 32
) -> list[int]:
    # ch = int(mult * model_channels) per level (ADM protocol §6); GroupNorm needs groups | ch.
    channels = [int(mult * model_channels) for mult in channel_mult]
    for ch in channels:
        if ch <= 0 or ch % groups:
            raise EvalsuiteError(
                f"{owner}: level width {ch} (= int(channel_mult x {model_channels})) is not a "
                f"positive multiple of {groups}, which GroupNorm({groups}) needs; "
                f"change channel_mult or the width"
            )
    return channels


def _check_resolutions(
    owner: str, image_size: int, resolutions: tuple[int, ...], flag: str
) -> None:
    # The network stores ds = image_size // resolution (ADM protocol §6), so a resolution must be
    # image_size / 2**k. Resolutions below the deepest level match no block and are ignored, as in
    # guided-diffusion (the state dict is the same without them).
    for res in resolutions:
        ratio = image_size // res if res > 0 else 0
        if res <= 0 or image_size % res or ratio & (ratio - 1):
            raise EvalsuiteError(
                f"{owner}: {flag} contains {res}, which is not image_size {image_size} divided by "
                f"a power of 2; use resolutions such as {image_size // 2},{image_size // 4}"
            )


def _heads_divide(
    owner: str, channels: int, num_heads: int, num_head_channels: int, what: str
) -> None:
    # Heads = C / num_head_channels if num_head_channels != -1, else num_heads (ADM protocol §6).
    if num_head_channels != -1:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise EvalsuiteError(
                f"{owner}: {what} has {channels} channels, not divisible by "
                f"num_head_channels={num_head_channels}"
            )
    elif num_heads <= 0 or channels % num_heads:
        raise EvalsuiteError(
            f"{owner}: {what} has {channels} channels, not divisible by num_heads={num_heads}"
        )


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Architecture of an ADM UNet (guided-diffusion `UNetModel` / `SuperResModel`).

    `attention_resolutions` are resolutions (e.g. (32, 16, 8)), not downsample factors.
    `channel_mult=()` means the default for `image_size` (see DEFAULT_CHANNEL_MULT); it is
    resolved at construction, so the stored config always holds the actual multipliers.
    `small_size` set (an int) makes this a super-resolution UNet (guided-diffusion's
    `--large_size`/`--small_size`): the input is x concatenated with the bilinearly upsampled
    low-res image, 2 * in_channels planes. `rescale_residual` (not in guided-diffusion) multiplies
    every ResBlock's skip + h by 1/sqrt(2), the paper's Table 1 ablation. `norm_groups` (not in
    guided-diffusion, which always uses 32) is the GroupNorm group count; narrow models may want
    fewer, so that each group spans several channels as in ADM's 128+-wide models. `null_class`
    (not in guided-diffusion; needs `class_cond`) adds the null class of classifier-free guidance:
    the label embedding holds `num_classes + 1` rows and label `num_classes` (the last row) is the
    empty label ∅. `use_checkpoint` (gradient checkpointing) is accepted for flag compatibility and
    ignored.
    """

    image_size: int
    num_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...] = (16, 8)
    in_channels: int = 3
    channel_mult: tuple[float, ...] = ()
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    dropout: float = 0.0
    learn_sigma: bool = False
    class_cond: bool = False
    num_classes: int = 1000
    use_fp16: bool = False
    rescale_residual: bool = False
    use_checkpoint: bool = False
    small_size: int | None = None
    norm_groups: int = 32
    null_class: bool = False

    def __post_init__(self) -> None:
        owner = "UNetConfig"
        for name in (
            "image_size",
            "num_channels",
            "num_res_blocks",
            "in_channels",
            "num_classes",
            "norm_groups",
        ):
            _check_type(owner, name, getattr(self, name), int)
            if getattr(self, name) < 1:
                raise EvalsuiteError(f"{owner}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_heads", "num_head_channels", "num_heads_upsample"):
            _check_type(owner, name, getattr(self, name), int)
        for name in (
            "use_scale_shift_norm",
            "resblock_updown",
            "use_new_attention_order",
            "learn_sigma",
            "class_cond",
            "use_fp16",
            "rescale_residual",
            "use_checkpoint",
            "null_class",
        ):
            _check_type(owner, name, getattr(self, name), bool)
        if self.null_class and not self.class_cond:
            raise EvalsuiteError(
                f"{owner}.null_class needs a class-conditional model (class_cond=True): the null "
                f"class is the extra label of classifier-free guidance"
            )
        _check_type(owner, "dropout", self.dropout, (int, float))
        if not 0.0 <= self.dropout < 1.0:
            raise EvalsuiteError(f"{owner}.dropout must be in [0, 1), got {self.dropout}")
        resolutions = _as_tuple(owner, "attention_resolutions", self.attention_resolutions, int)
        object.__setattr__(self, "attention_resolutions", resolutions)
        mult = _as_tuple(owner, "channel_mult", self.channel_mult, (int, float))
        if self.small_size is not None:
            _check_type(owner, "small_size", self.small_size, int)
            if not 1 <= self.small_size < self.image_size:
                raise EvalsuiteError(
                    f"{owner}.small_size must be in [1, image_size={self.image_size}), "
                    f"got {self.small_size}"
                )
        if not mult:
            mult = default_channel_mult(self.image_size, upsampler=self.small_size is not None)
        object.__setattr__(self, "channel_mult", mult)
        if self.image_size % 2 ** (len(mult) - 1):
            raise EvalsuiteError(
                f"{owner}: image_size {self.image_size} is not divisible by 2**{len(mult) - 1} "
                f"(one halving per channel_mult level after the first)"
            )
        channels = _level_channels(owner, self.num_channels, mult, self.norm_groups)
        _check_resolutions(owner, self.image_size, resolutions, "attention_resolutions")
        heads_up = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
        for level, ch in enumerate(channels):
            if self.image_size // 2**level in resolutions:
                what = f"the attention at resolution {self.image_size // 2**level}"
                _heads_divide(owner, ch, self.num_heads, self.num_head_channels, what)
                _heads_divide(owner, ch, heads_up, self.num_head_channels, what)
        _heads_divide(owner, channels[-1], self.num_heads, self.num_head_channels, "the middle")

    @property
    def out_channels(self) -> int:
        """in_channels, doubled with learn_sigma ([mean part, variance part], ADM protocol §4)."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def label_rows(self) -> int:
        """Rows of the label embedding: num_classes, plus the null class ∅ with `null_class`."""
        return self.num_classes + (1 if self.null_class else 0)

    @property
    def null_label(self) -> int | None:
        """The label of the null class ∅ (classifier-free guidance), None without one."""
        return self.num_classes if self.null_class else None

    @property
    def is_upsampler(self) -> bool:
        """True for a super-resolution UNet (input: x and the upsampled low-res image)."""
        return self.small_size is not None

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors ds = image_size // resolution where attention is used."""
        return tuple(self.image_size // res for res in self.attention_resolutions)


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """Architecture of the noise-aware classifier (guided-diffusion `EncoderUNetModel`).

    Field names follow the `--classifier_*` flags. Attention blocks of the trunk use the legacy
    qkv order; the attention pool uses the new order (ADM protocol §6). `num_heads` is only
    used when `num_head_channels` is -1. `channel_mult=()` means the default for `image_size`.
    """

    image_size: int
    in_channels: int = 3
    classifier_width: int = 128
    classifier_depth: int = 2
    classifier_attention_resolutions: tuple[int, ...] = (32, 16, 8)
    classifier_use_scale_shift_norm: bool = True
    classifier_resblock_updown: bool = True
    classifier_pool: str = "attention"
    num_classes: int = 1000
    num_head_channels: int = 64
    num_heads: int = 1
    use_fp16: bool = False
    channel_mult: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        owner = "ClassifierConfig"
        for name in ("image_size", "in_channels", "classifier_width", "classifier_depth"):
            _check_type(owner, name, getattr(self, name), int)
            if getattr(self, name) < 1:
                raise EvalsuiteError(f"{owner}.{name} must be >= 1, got {getattr(self, name)}")
        _check_type(owner, "num_classes", self.num_classes, int)
        if self.num_classes < 1:
            raise EvalsuiteError(f"{owner}.num_classes must be >= 1, got {self.num_classes}")
        _check_type(owner, "num_head_channels", self.num_head_channels, int)
        _check_type(owner, "num_heads", self.num_heads, int)
        for name in ("classifier_use_scale_shift_norm", "classifier_resblock_updown", "use_fp16"):
            _check_type(owner, name, getattr(self, name), bool)
        if self.classifier_pool not in CLASSIFIER_POOLS:
            raise EvalsuiteError(
                f"{owner}.classifier_pool must be one of {', '.join(CLASSIFIER_POOLS)}, "
                f"got {self.classifier_pool!r}"
            )
        resolutions = _as_tuple(
            owner, "classifier_attention_resolutions", self.classifier_attention_resolutions, int
        )
        object.__setattr__(self, "classifier_attention_resolutions", resolutions)
        mult = _as_tuple(owner, "channel_mult", self.channel_mult, (int, float))
        mult = mult or default_channel_mult(self.image_size)
        object.__setattr__(self, "channel_mult", mult)
        if self.image_size % 2 ** (len(mult) - 1):
            raise EvalsuiteError(
                f"{owner}: image_size {self.image_size} is not divisible by 2**{len(mult) - 1}"
            )
        channels = _level_channels(owner, self.classifier_width, mult)
        _check_resolutions(owner, self.image_size, resolutions, "classifier_attention_resolutions")
        for level, ch in enumerate(channels):
            if self.image_size // 2**level in resolutions:
                what = f"the attention at resolution {self.image_size // 2**level}"
                _heads_divide(owner, ch, self.num_heads, self.num_head_channels, what)
        _heads_divide(owner, channels[-1], self.num_heads, self.num_head_channels, "the middle")
        if self.classifier_pool == "attention":
            # The attention pool always uses C / num_head_channels heads.
            _heads_divide(owner, channels[-1], -1, self.num_head_channels, "the attention pool")

    @property
    def attention_ds(self) -> tuple[int, ...]:
        """Downsample factors ds = image_size // resolution where attention is used."""
        return tuple(self.image_size // res for res in self.classifier_attention_resolutions)


@dataclass(frozen=True, kw_only=True)
class DiffusionConfig:
    """The diffusion process a model was trained with (ADM protocol §4).

    `timestep_respacing` is a sampling-time choice kept for flag compatibility; samplers usually
    override it. `rescale_learned_sigmas` and `use_kl` only change the training loss.
    """

    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = False
    predict_xstart: bool = False
    rescale_timesteps: bool = False
    timestep_respacing: str = ""
    use_kl: bool = False
    rescale_learned_sigmas: bool = False

    def __post_init__(self) -> None:
        owner = "DiffusionConfig"
        _check_type(owner, "diffusion_steps", self.diffusion_steps, int)
        if self.diffusion_steps < 1:
            raise EvalsuiteError(
                f"{owner}.diffusion_steps must be >= 1, got {self.diffusion_steps}"
            )
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise EvalsuiteError(
                f"{owner}.noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, "
                f"got {self.noise_schedule!r}"
            )
        _check_type(owner, "timestep_respacing", self.timestep_respacing, str)
        for name in (
            "learn_sigma",
            "predict_xstart",
            "rescale_timesteps",
            "use_kl",
            "rescale_learned_sigmas",
        ):
            _check_type(owner, name, getattr(self, name), bool)


ConfigT = TypeVar("ConfigT", UNetConfig, ClassifierConfig, DiffusionConfig)


# ---------------------------------------------------------------------------------------------
# dict round trip (embedded in checkpoints and written next to outputs)


def config_to_dict(config: UNetConfig | ClassifierConfig | DiffusionConfig) -> dict[str, Any]:
    """Plain dict of a config's fields (tuples as lists), JSON- and weights_only-safe."""
    return {
        field.name: list(value) if isinstance(value, tuple) else value
        for field in dataclasses.fields(config)
        for value in [getattr(config, field.name)]
    }


def config_from_dict(data: Mapping[str, Any], config_type: type[ConfigT]) -> ConfigT:
    """Rebuild a config of `config_type` from `config_to_dict` output; rejects unknown keys."""
    if not isinstance(data, Mapping):
        raise EvalsuiteError(f"a {config_type.__name__} must be a dict, got {type(data).__name__}")
    names = [field.name for field in dataclasses.fields(config_type)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise EvalsuiteError(
            f"unknown {config_type.__name__} key(s) {', '.join(map(str, unknown))}; "
            f"known keys: {', '.join(names)}"
        )
    required = [
        field.name
        for field in dataclasses.fields(config_type)
        if field.default is dataclasses.MISSING and field.name not in data
    ]
    if required:
        raise EvalsuiteError(f"{config_type.__name__} is missing key(s) {', '.join(required)}")
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in data.items()}
    return config_type(**values)
