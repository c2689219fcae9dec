"""Typed configs of the ADM UNet, the noise-aware classifier and the diffusion, and the parser of
guided-diffusion style flag strings (ADM protocol §6).

The configs are frozen dataclasses that reject unknown keys. Flag names and defaults follow
guided-diffusion's `script_util` so that the flag strings published with the released
checkpoints build exactly their state-dict layout (checked against
`shared/reference/adm_state_dicts/*.txt` in the tests).

Precision: `use_fp16` is the flag the checkpoint was released with. Models are always built in
float32; the caller (the sampler) chooses the precision by calling `model.convert_to_fp16()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
from collections.abc import Callable, Mapping
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
# guided-diffusion flag strings


def _parse_bool(text: str) -> bool:
    # guided-diffusion's str2bool vocabulary, case-insensitive.
    lowered = text.lower()
    if lowered in ("true", "t", "yes", "y", "1"):
        return True
    if lowered in ("false", "f", "no", "n", "0"):
        return False
    raise ValueError("expected True/False (or true/false/1/0)")


def _parse_int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _parse_float_list(text: str) -> tuple[float, ...]:
    # channel_mult: "" means the default by image size; integers stay ints (0.5 is allowed).
    values = []
    for part in text.split(","):
        if part.strip():
            number = float(part)
            values.append(int(number) if number.is_integer() else number)
    return tuple(values)


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


# name -> (parser of the flag's text, guided-diffusion default). large_size/small_size have no
# default here: giving either one selects the super-resolution UNet (defaults 256 and 64).
FLAGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    # UNet (script_util.model_and_diffusion_defaults)
    "image_size": (int, 64),
    "num_channels": (int, 128),
    "num_res_blocks": (int, 2),
    "num_heads": (int, 4),
    "num_heads_upsample": (int, -1),
    "num_head_channels": (int, -1),
    "attention_resolutions": (_parse_int_list, (16, 8)),
    "channel_mult": (_parse_float_list, ()),
    "dropout": (float, 0.0),
    "class_cond": (_parse_bool, False),
    "use_checkpoint": (_parse_bool, False),
    "use_scale_shift_norm": (_parse_bool, True),
    "resblock_updown": (_parse_bool, False),
    "use_fp16": (_parse_bool, False),
    "use_new_attention_order": (_parse_bool, False),
    "learn_sigma": (_parse_bool, False),
    # evalsuite extras (not guided-diffusion flags)
    "num_classes": (int, 1000),
    "rescale_residual": (_parse_bool, False),
    "norm_groups": (int, 32),
    "null_class": (_parse_bool, False),
    # super-resolution (script_util.sr_model_and_diffusion_defaults)
    "large_size": (int, None),
    "small_size": (int, None),
    # diffusion
    "diffusion_steps": (int, 1000),
    "noise_schedule": (_parse_choice(NOISE_SCHEDULES), "linear"),
    "timestep_respacing": (str, ""),
    "use_kl": (_parse_bool, False),
    "predict_xstart": (_parse_bool, False),
    "rescale_timesteps": (_parse_bool, False),
    "rescale_learned_sigmas": (_parse_bool, False),
    # classifier (script_util.classifier_defaults)
    "classifier_use_fp16": (_parse_bool, False),
    "classifier_width": (int, 128),
    "classifier_depth": (int, 2),
    "classifier_attention_resolutions": (_parse_int_list, (32, 16, 8)),
    "classifier_use_scale_shift_norm": (_parse_bool, True),
    "classifier_resblock_updown": (_parse_bool, True),
    "classifier_pool": (_parse_choice(CLASSIFIER_POOLS), "attention"),
}

# Options of guided-diffusion's sampling/training scripts that users paste along with the model
# flags; they do not describe the architecture.
_SCRIPT_FLAGS = frozenset(
    {
        "clip_denoised",
        "num_samples",
        "batch_size",
        "microbatch",
        "use_ddim",
        "model_path",
        "classifier_path",
        "classifier_scale",
        "base_samples",
        "lr",
        "weight_decay",
        "lr_anneal_steps",
        "iterations",
        "anneal_lr",
        "ema_rate",
        "log_interval",
        "save_interval",
        "resume_checkpoint",
        "fp16_scale_growth",
        "schedule_sampler",
        "data_dir",
        "val_data_dir",
        "noised",
        "eval_interval",
    }
)


def _unknown_flag(name: str) -> EvalsuiteError:
    if name in _SCRIPT_FLAGS:
        return EvalsuiteError(
            f"--{name} is an option of guided-diffusion's scripts, not an architecture flag; "
            f"remove it from the model flags (pass sampling options to the sampler)"
        )
    close = difflib.get_close_matches(name, list(FLAGS), n=3, cutoff=0.6)
    if close:
        return EvalsuiteError(
            f"unknown model flag --{name}; did you mean {', '.join('--' + c for c in close)}?"
        )
    return EvalsuiteError(f"unknown model flag --{name}; known flags: {', '.join(FLAGS)}")


def _parse_value(name: str, value: Any) -> Any:
    if name not in FLAGS:
        raise _unknown_flag(name)
    parser = FLAGS[name][0]
    if not isinstance(value, str):
        # Already typed (dict input): normalise lists to tuples, leave the rest to the configs.
        return tuple(value) if isinstance(value, list) else value
    try:
        return parser(value.strip())
    except ValueError as error:
        raise EvalsuiteError(f"bad value {value!r} for --{name}: {error}") from None


def parse_flags(text: str) -> dict[str, Any]:
    """Parse a guided-diffusion flag string ("--image_size 64 --class_cond True ...").

    Accepts `--name value` and `--name=value`; booleans as True/False/true/false/1/0;
    attention resolutions and channel_mult as comma lists ("" = default). Returns only the flags
    given, typed (ints, floats, bools, tuples, strings); `build_configs` fills the defaults.
    Raises EvalsuiteError on an unknown flag (naming close matches), a missing or bad value, or
    a repeated flag.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as error:
        raise EvalsuiteError(f"cannot split the flag string: {error}") from None
    flags: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise EvalsuiteError(f"expected a flag like --image_size, got {token!r}")
        if "=" in token:
            name, value = token[2:].split("=", 1)
            index += 1
        else:
            name = token[2:]
            if index + 1 >= len(tokens) or tokens[index + 1].startswith("--"):
                raise EvalsuiteError(f"flag --{name} has no value; write --{name} VALUE")
            value = tokens[index + 1]
            index += 2
        if name in flags:
            raise EvalsuiteError(f"flag --{name} is given twice")
        flags[name] = _parse_value(name, value)
    return flags


def _resolved_flags(flags: str | Mapping[str, Any]) -> dict[str, Any]:
    given = (
        parse_flags(flags)
        if isinstance(flags, str)
        else {name: _parse_value(name, value) for name, value in flags.items()}
    )
    resolved = {name: default for name, (_, default) in FLAGS.items()}
    resolved.update(given)
    if resolved["large_size"] is not None or resolved["small_size"] is not None:
        # Super-resolution flags: image_size is the large size (sr_model_and_diffusion_defaults).
        large = 256 if resolved["large_size"] is None else resolved["large_size"]
        if "image_size" in given and given["image_size"] != large:
            raise EvalsuiteError(
                f"--image_size {given['image_size']} contradicts --large_size {large}; "
                f"an upsampler's image size is its large size, drop --image_size"
            )
        resolved["image_size"] = large
        resolved["small_size"] = 64 if resolved["small_size"] is None else resolved["small_size"]
    return resolved


def build_configs(
    flags: str | Mapping[str, Any], kind: str = "unet"
) -> tuple[UNetConfig | ClassifierConfig, DiffusionConfig]:
    """Model and diffusion configs from guided-diffusion flags (string or name -> value dict).

    Flags not given take guided-diffusion's defaults. `kind` "unet" reads the UNet flags
    (`--large_size`/`--small_size` select the super-resolution UNet), "classifier" the
    `--classifier_*` flags (plus `--image_size`, `--num_classes`); flags of the other kind are
    accepted and ignored, as guided-diffusion's scripts share one namespace. In particular
    `--channel_mult` only applies to the UNet: guided-diffusion's classifier always uses the
    default multipliers of its image size (build a ClassifierConfig directly for others).
    """
    if kind not in MODEL_KINDS:
        raise EvalsuiteError(
            f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}"
        )
    values = _resolved_flags(flags)
    diffusion = DiffusionConfig(
        **{field.name: values[field.name] for field in dataclasses.fields(DiffusionConfig)}
    )
    model: UNetConfig | ClassifierConfig
    if kind == "unet":
        names = [f.name for f in dataclasses.fields(UNetConfig)]
        model = UNetConfig(**{name: values[name] for name in names if name in values})
    else:
        model = ClassifierConfig(
            image_size=values["image_size"],
            classifier_width=values["classifier_width"],
            classifier_depth=values["classifier_depth"],
            classifier_attention_resolutions=values["classifier_attention_resolutions"],
            classifier_use_scale_shift_norm=values["classifier_use_scale_shift_norm"],
            classifier_resblock_updown=values["classifier_resblock_updown"],
            classifier_pool=values["classifier_pool"],
            num_classes=values["num_classes"],
            use_fp16=values["classifier_use_fp16"],
        )
    return model, diffusion


# Flags of the released checkpoints (ADM protocol §6 table; upsamplers and LSUN from
# guided-diffusion's README). Every UNet/classifier preset is checked against the key/shape lists
# in shared/reference/adm_state_dicts. Classifier presets carry the diffusion flags of the UNet
# they guide; classifier_use_fp16 is left at its default (the README does not set it).
_IMAGENET_256 = (
    "--attention_resolutions 32,16,8 --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_CLASSIFIER = (
    "--classifier_attention_resolutions 32,16,8 --classifier_width 128 --classifier_pool attention "
    "--classifier_resblock_updown True --classifier_use_scale_shift_norm True "
    "--diffusion_steps 1000 --learn_sigma True"
)
PRESETS: dict[str, str] = {
    "64x64_diffusion": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
        "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
        "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
        "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
    ),
    "128x128_diffusion": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
        "--image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True"
    ),
    "256x256_diffusion": _IMAGENET_256 + " --class_cond True",
    "256x256_diffusion_uncond": _IMAGENET_256 + " --class_cond False",
    "512x512_diffusion": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
        "--image_size 512 --learn_sigma True --noise_schedule linear --num_channels 256 "
        "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 False "
        "--use_scale_shift_norm True"
    ),
    "lsun_bedroom": _IMAGENET_256 + " --class_cond False --dropout 0.1",
    "lsun_cat": _IMAGENET_256 + " --class_cond False --dropout 0.1",
    "lsun_horse": _IMAGENET_256 + " --class_cond False --dropout 0.1",
    "lsun_horse_nodropout": _IMAGENET_256 + " --class_cond False --dropout 0.0",
    "64x64_classifier": (
        _CLASSIFIER + " --image_size 64 --classifier_depth 4 --noise_schedule cosine"
    ),
    "128x128_classifier": (
        _CLASSIFIER + " --image_size 128 --classifier_depth 2 --noise_schedule linear"
    ),
    "256x256_classifier": (
        _CLASSIFIER + " --image_size 256 --classifier_depth 2 --noise_schedule linear"
    ),
    "512x512_classifier": (
        _CLASSIFIER + " --image_size 512 --classifier_depth 2 --noise_schedule linear"
    ),
    "64_256_upsampler": (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 "
        "--large_size 256 --small_size 64 --learn_sigma True --noise_schedule linear "
        "--num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True"
    ),
    "128_512_upsampler": (
        "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 "
        "--large_size 512 --small_size 128 --learn_sigma True --noise_schedule linear "
        "--num_channels 192 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True"
    ),
}


def preset_kind(name: str) -> str:
    """ "classifier" for the classifier presets, "unet" for the others."""
    _check_preset(name)
    return "classifier" if name.endswith("_classifier") else "unet"


def _check_preset(name: str) -> None:
    if name not in PRESETS:
        raise EvalsuiteError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")


def preset_configs(name: str) -> tuple[UNetConfig | ClassifierConfig, DiffusionConfig]:
    """Model and diffusion configs of a released checkpoint, by name (see PRESETS)."""
    kind = preset_kind(name)
    return build_configs(PRESETS[name], kind=kind)


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
