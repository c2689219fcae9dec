"""The parser of guided-diffusion style flag strings and the flags of the released checkpoints
(ADM protocol §6).

Flag names and defaults follow guided-diffusion's `script_util` so that the flag strings
published with the released checkpoints build exactly their state-dict layout (checked against
`shared/reference/adm_state_dicts/*.txt` in the tests). The typed configs they build live in
`evalsuite.models.config_types` and are importable from here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from evalsuite.models.config_types import (
    CLASSIFIER_POOLS,  # noqa: F401
    DEFAULT_CHANNEL_MULT,  # noqa: F401
    MODEL_KINDS,  # noqa: F401
    NOISE_SCHEDULES,  # noqa: F401
    UPSAMPLER_CHANNEL_MULT,  # noqa: F401
    ClassifierConfig,  # noqa: F401
    ConfigT,  # noqa: F401
    DiffusionConfig,  # noqa: F401
    UNetConfig,  # noqa: F401
    config_from_dict,  # noqa: F401
    config_to_dict,  # noqa: F401
    default_channel_mult,  # noqa: F401
)
from evalsuite.runtime.errors import EvalsuiteError

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
