"""Loading and saving ADM checkpoints: guided-diffusion's bare state dicts (architecture from
flags or a preset) and evalsuite's own self-describing checkpoints (ADM protocol §6).

On a key/shape mismatch the error lists the first differing keys and names the flag(s) that most
likely differ, found by reading architecture signatures (base width, class embedding, output
channels, AdaGN width, up/down style, blocks per level, channel multipliers, attention
placement, classifier head) off both the expected and the found state dict.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from evalsuite.models import build_model
from evalsuite.models.config import (
    MODEL_KINDS,
    PRESETS,
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    build_configs,
    config_from_dict,
    config_to_dict,
    preset_configs,
    preset_kind,
)
from evalsuite.runtime.cache import atomic_path, sha256_file
from evalsuite.runtime.errors import EvalsuiteError

CHECKPOINT_FORMAT = "evalsuite-checkpoint"
CHECKPOINT_VERSION = 1
# How many keys of each kind of mismatch the error message lists.
_LISTED_KEYS = 4


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference and where it came from.

    `source` is "flags", "preset" (bare state dict, architecture given by the caller) or
    "embedded" (evalsuite checkpoint). `weights` names the state dict that was loaded
    ("state_dict", "ema_state_dict"; bare files: "state_dict"). `sha256` is the file's digest.
    """

    model: nn.Module
    model_config: UNetConfig | ClassifierConfig
    diffusion_config: DiffusionConfig
    sha256: str
    source: str
    path: Path
    weights: str = "state_dict"
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise EvalsuiteError(
            f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}"
        )


def _read(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise EvalsuiteError(f"checkpoint {path} does not exist or is not a file")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if archive.namelist() and all(n.endswith(".npy") for n in archive.namelist()):
                raise EvalsuiteError(
                    f"{path} is a NumPy .npz archive (a sample or reference batch?), not a "
                    f"PyTorch checkpoint; expected a guided-diffusion state dict (.pt) or an "
                    f"evalsuite checkpoint"
                )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types for non-checkpoint files
        # Not PyTorch's own message: it suggests weights_only=False, which would run arbitrary
        # code from a file of unknown origin.
        if "weights only load failed" in str(error).lower():
            what = "it holds pickled Python objects besides tensors (a whole pickled model?)"
        else:
            what = "it is not a PyTorch file, or it is truncated or damaged"
        raise EvalsuiteError(
            f"{path} is not a guided-diffusion state dict (.pt) nor an evalsuite checkpoint: "
            f"{what} ({type(error).__name__}); check the path, or download or save it again "
            "as a state dict (torch.save(model.state_dict()))"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(key, str) and isinstance(value, Tensor) for key, value in obj.items())
    )


def _configs_from_caller(
    kind: str, flags: str | None, preset: str | None
) -> tuple[UNetConfig | ClassifierConfig, DiffusionConfig, str] | None:
    if flags is not None and preset is not None:
        raise EvalsuiteError("give either flags or preset, not both")
    if preset is not None:
        if preset_kind(preset) != kind:
            raise EvalsuiteError(
                f"preset {preset!r} describes a {preset_kind(preset)}, but kind={kind!r} was asked"
            )
        model_config, diffusion_config = preset_configs(preset)
        return model_config, diffusion_config, "preset"
    if flags is not None:
        model_config, diffusion_config = build_configs(flags, kind=kind)
        return model_config, diffusion_config, "flags"
    return None


def _config_differences(embedded: object, given: object, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{f.name} (file: {getattr(embedded, f.name)!r}, given: {getattr(given, f.name)!r})"
        for f in fields(embedded)
        if f.name not in skip and getattr(embedded, f.name) != getattr(given, f.name)
    ]


def _embedded_configs(
    obj: Mapping[str, Any],
    path: Path,
    kind: str,
    given: tuple[UNetConfig | ClassifierConfig, DiffusionConfig, str] | None,
) -> tuple[UNetConfig | ClassifierConfig, DiffusionConfig]:
    """The configs an evalsuite checkpoint embeds, checked against flags/preset if given."""
    if obj.get("version") != CHECKPOINT_VERSION:
        raise EvalsuiteError(
            f"{path} is an evalsuite checkpoint of version {obj.get('version')!r}; this "
            f"evalsuite reads version {CHECKPOINT_VERSION}"
        )
    if obj.get("kind") != kind:
        raise EvalsuiteError(f"{path} holds a {obj.get('kind')!r} model, but kind={kind!r}")
    config_type = UNetConfig if kind == "unet" else ClassifierConfig
    model_config = config_from_dict(obj["model_config"], config_type)
    diffusion_config = config_from_dict(obj["diffusion_config"], DiffusionConfig)
    if given is not None:
        differences = _config_differences(model_config, given[0]) + _config_differences(
            diffusion_config, given[1], skip=("timestep_respacing",)
        )
        if differences:
            raise EvalsuiteError(
                f"the {given[2]} given disagree with the configs embedded in {path}: "
                f"{'; '.join(differences)}; drop the {given[2]} or fix them"
            )
    return model_config, diffusion_config


def read_configs(
    path: str | os.PathLike,
    kind: str,
    *,
    flags: str | None = None,
    preset: str | None = None,
) -> tuple[UNetConfig | ClassifierConfig, DiffusionConfig]:
    """The architecture and diffusion configs of a checkpoint, without loading its weights.

    Same rules as `load_checkpoint`: a bare state dict takes them from flags/preset (the file is
    only checked to exist); an evalsuite checkpoint's embedded configs are read with its
    tensors memory-mapped (not read) and compared with flags/preset when given.
    """
    _check_kind(kind)
    path = Path(path)
    if not path.is_file():
        raise EvalsuiteError(f"checkpoint {path} does not exist or is not a file")
    given = _configs_from_caller(kind, flags, preset)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file (mmap needs one): read it the ordinary way
        obj = _read(path, "cpu")
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return _embedded_configs(obj, path, kind, given)
    if given is None:
        raise EvalsuiteError(
            f"{path} is a bare state dict without an architecture: pass flags= (the "
            f"guided-diffusion flags it was trained with) or preset= (one of "
            f"{', '.join(PRESETS)})"
        )
    return given[0], given[1]


def load_checkpoint(
    path: str | os.PathLike,
    kind: str,
    *,
    flags: str | None = None,
    preset: str | None = None,
    map_location: Any = "cpu",
) -> LoadedModel:
    """Load a UNet or classifier checkpoint into a float32 model in eval mode.

    Args:
        path: a guided-diffusion state dict (`torch.save(model.state_dict())`, e.g. the released
            256x256_diffusion.pt) or an evalsuite checkpoint written by `save_checkpoint`.
        kind: "unet" (ADM UNet or super-resolution UNet) or "classifier".
        flags: guided-diffusion flag string describing the architecture (bare files).
        preset: name of a released checkpoint in PRESETS (bare files).
        map_location: device the weights are loaded onto.

    A bare state dict needs exactly one of flags/preset. For an evalsuite checkpoint they are
    optional; when given they must agree with the embedded configs (timestep_respacing, a
    sampling-time choice, is not compared). EMA weights are preferred when present. Loading is
    strict; on a mismatch the EvalsuiteError names the flag that most likely differs.
    """
    _check_kind(kind)
    path = Path(path)
    obj = _read(path, map_location)
    given = _configs_from_caller(kind, flags, preset)
    weights = "state_dict"
    step = None
    extra: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        model_config, diffusion_config = _embedded_configs(obj, path, kind, given)
        weights = "ema_state_dict" if obj.get("ema_state_dict") is not None else "state_dict"
        state_dict = obj[weights]
        step = obj.get("step")
        extra = dict(obj.get("extra") or {})
        source = "embedded"
    elif _is_state_dict(obj):
        if given is None:
            options = ("--model-flags", "--preset")
            if kind == "classifier":
                options = ("--classifier-flags", "--classifier-preset")
            raise EvalsuiteError(
                f"{path} is a bare state dict without an architecture: pass {options[0]} (the "
                f"guided-diffusion flags it was trained with) or {options[1]} (one of "
                f"{', '.join(name for name in PRESETS if preset_kind(name) == kind)})"
            )
        model_config, diffusion_config, source = given
        state_dict = obj
    else:
        raise EvalsuiteError(
            f"{path} is neither a state dict (str -> tensor) nor an evalsuite checkpoint "
            f"(top-level keys: {', '.join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__})"
        )
    origin = {"flags": "flags", "preset": f"preset {preset!r}", "embedded": "embedded config"}
    model = _build_and_load(
        model_config, state_dict, kind, origin=f"{origin[source]} ({path.name})"
    )
    return LoadedModel(
        model=model,
        model_config=model_config,
        diffusion_config=diffusion_config,
        sha256=sha256_file(path),
        source=source,
        path=path,
        weights=weights,
        step=step,
        extra=extra,
    )


def _build_and_load(
    config: UNetConfig | ClassifierConfig, state_dict: Mapping[str, Tensor], kind: str, origin: str
) -> nn.Module:
    # Build on the meta device (no initialisation cost), check keys and shapes, then adopt the
    # loaded tensors and cast them to float32 (released fp16 weights included).
    with torch.device("meta"):
        model = build_model(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    if expected != found:
        raise EvalsuiteError(describe_mismatch(expected, found, kind, config, origin))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.float().eval()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: UNetConfig | ClassifierConfig,
    diffusion_config: DiffusionConfig,
    *,
    kind: str,
    extra: Mapping[str, Any] | None = None,
    ema_state_dict: Mapping[str, Tensor] | None = None,
    step: int | None = None,
) -> Path:
    """Write an evalsuite checkpoint atomically (temp file in the same folder + os.replace).

    The file is a dict {"format": "evalsuite-checkpoint", "version": 1, "kind", "model_config",
    "diffusion_config", "state_dict", "ema_state_dict", "step", "extra"}, readable with
    torch.load(weights_only=True). Tensors are stored on the CPU in their current dtype;
    `extra` must be JSON-serialisable. Returns the path written.
    """
    _check_kind(kind)
    expected_type = UNetConfig if kind == "unet" else ClassifierConfig
    if not isinstance(model_config, expected_type):
        raise EvalsuiteError(
            f"kind={kind!r} needs a {expected_type.__name__}, got {type(model_config).__name__}"
        )
    extra = dict(extra or {})
    try:
        json.dumps(extra)
    except TypeError as error:
        raise EvalsuiteError(f"checkpoint extra must be JSON-serialisable: {error}") from None

    def to_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {key: value.detach().cpu() for key, value in tensors.items()}

    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "model_config": config_to_dict(model_config),
        "diffusion_config": config_to_dict(diffusion_config),
        "state_dict": to_cpu(model.state_dict()),
        "ema_state_dict": None if ema_state_dict is None else to_cpu(ema_state_dict),
        "step": step,
        "extra": extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


# ---------------------------------------------------------------------------------------------
# mismatch diagnosis

Shapes = Mapping[str, tuple[int, ...]]


def _dim(shapes: Shapes, key: str, axis: int) -> int | None:
    shape = shapes.get(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


def _count_blocks(shapes: Shapes, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}\.(\d+)\.")
    indices = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _unet_levels(shapes: Shapes) -> tuple[int, int] | None:
    # (num_res_blocks, levels) from the output side: the first output block holding an up layer
    # (an Upsample `conv` or a BigGAN ResBlock after the main one) is block num_res_blocks.
    count = _count_blocks(shapes, "output_blocks")
    if count == 0:
        return None
    up = re.compile(r"^output_blocks\.(\d+)\.[12]\.(conv|in_layers)\.")
    firsts = sorted({int(m.group(1)) for key in shapes if (m := up.match(key))})
    per_level = firsts[0] + 1 if firsts else count
    return per_level - 1, count // per_level


def _signatures(shapes: Shapes, kind: str) -> dict[str, Any]:
    """Architecture facts readable from a state dict's keys and shapes, by the flag they reveal."""
    width = _dim(shapes, "time_embed.0.weight", 1)
    emb_rows = _dim(shapes, "input_blocks.1.0.emb_layers.1.weight", 0)
    res_out = _dim(shapes, "input_blocks.1.0.out_layers.3.weight", 0)
    has_op = any(key.endswith(".op.weight") for key in shapes)
    attention_blocks = tuple(
        sorted(
            int(m.group(1))
            for key in shapes
            if (m := re.match(r"^input_blocks\.(\d+)\.1\.qkv\.weight$", key))
        )
    )
    facts: dict[str, Any] = {
        "scale_shift_norm": None if not (emb_rows and res_out) else emb_rows == 2 * res_out,
    }
    if kind == "classifier":
        facts["width"] = width
        facts["up_down"] = "conv" if has_op else "resblock"
        facts["input_blocks"] = _count_blocks(shapes, "input_blocks")
        facts["attention_blocks"] = attention_blocks
        out_keys = {key for key in shapes if key.startswith("out.")}
        if "out.2.positional_embedding" in out_keys:
            facts["pool"] = "attention"
            tokens = _dim(shapes, "out.2.positional_embedding", 1)
            facts["final_size"] = None if tokens is None else math.isqrt(tokens - 1)
            facts["classes"] = _dim(shapes, "out.2.c_proj.weight", 0)
        elif "out.3.weight" in out_keys and len(shapes["out.3.weight"]) == 4:
            facts["pool"] = "adaptive"
            facts["classes"] = _dim(shapes, "out.3.weight", 0)
        elif "out.1.weight" in out_keys:
            facts["pool"] = "spatial_v2"
            facts["classes"] = _dim(shapes, "out.3.weight", 0)
        elif "out.2.weight" in out_keys:
            facts["pool"] = "spatial"
            facts["classes"] = _dim(shapes, "out.2.weight", 0)
        else:
            facts["pool"] = "unknown"
        return facts
    facts["width"] = width
    facts["class_cond"] = "label_emb.weight" in shapes
    facts["classes"] = _dim(shapes, "label_emb.weight", 0)
    facts["out_channels"] = _dim(shapes, "out.2.weight", 0)
    facts["in_channels"] = _dim(shapes, "input_blocks.0.0.weight", 1)
    levels = _unet_levels(shapes)
    facts["num_res_blocks"] = None if levels is None else levels[0]
    facts["up_down"] = (
        None if levels is None or levels[1] == 1 else ("conv" if has_op else "resblock")
    )
    if levels is not None and width:
        per_level = levels[0] + 1
        mults = []
        for level in range(levels[1]):
            channels = _dim(
                shapes, f"input_blocks.{1 + level * per_level}.0.out_layers.3.weight", 0
            )
            mults.append(None if channels is None else channels / width)
        facts["channel_mult"] = tuple(mults)
        # Downsample factors of the input levels that hold attention.
        facts["attention_ds"] = tuple(
            sorted({2 ** ((index - 1) // per_level) for index in attention_blocks})
        )
    return facts


# (signature, flag name, how to show a value) in the order a cause is most likely.
_UNET_FLAGS = (
    ("class_cond", "class_cond", str),
    ("classes", "num_classes", str),
    ("width", "num_channels", str),
    ("out_channels", "learn_sigma", lambda v: f"{v} output channels"),
    ("in_channels", "large_size/small_size (upsampler)", lambda v: f"{v} input channels"),
    ("scale_shift_norm", "use_scale_shift_norm", str),
    ("up_down", "resblock_updown", lambda v: f"{v} up/down blocks"),
    ("num_res_blocks", "num_res_blocks", str),
    ("channel_mult", "channel_mult (or image_size)", lambda v: ",".join(f"{m:g}" for m in v)),
    ("attention_ds", "attention_resolutions", None),
)
_CLASSIFIER_FLAGS = (
    ("width", "classifier_width", str),
    ("pool", "classifier_pool", str),
    ("classes", "num_classes", str),
    ("scale_shift_norm", "classifier_use_scale_shift_norm", str),
    ("up_down", "classifier_resblock_updown", lambda v: f"{v} down blocks"),
    (
        "input_blocks",
        "classifier_depth (or channel_mult/image_size)",
        lambda v: f"{v} input blocks",
    ),
    (
        "attention_blocks",
        "classifier_attention_resolutions",
        lambda v: f"attention in input blocks {list(v)}",
    ),
    ("final_size", "image_size (or channel_mult)", lambda v: f"final feature map {v}x{v}"),
)


def _as_resolutions(image_size: int, ds_values: tuple[int, ...]) -> str:
    # Attention placement shown as resolutions image_size // ds (the configured image size).
    return ",".join(str(image_size // ds) for ds in ds_values) or "none"


def _likely_flags(
    expected: Shapes, found: Shapes, kind: str, config: UNetConfig | ClassifierConfig
) -> list[str]:
    want, have = _signatures(expected, kind), _signatures(found, kind)
    table = _UNET_FLAGS if kind == "unet" else _CLASSIFIER_FLAGS
    culprits = []
    for signature, flag, show in table:
        a, b = want.get(signature), have.get(signature)
        if a is None or b is None or a == b:
            continue
        if signature == "classes" and kind == "unet" and abs(a - b) == 1:
            # One label row more or less: the null class of classifier-free guidance.
            null = isinstance(config, UNetConfig) and config.null_class
            culprits.append(
                f"null_class (given {null}, the file's label embedding has {b} rows for "
                f"{config.num_classes} classes{'' if null else ': add --null_class True'})"
            )
            continue
        render = show if show is not None else partial(_as_resolutions, config.image_size)
        culprits.append(f"{flag} (given {render(a)}, file has {render(b)})")
        if signature in ("num_res_blocks", "input_blocks"):
            # Attention placement is read relative to the block layout; skip it when that differs.
            break
    return culprits


def describe_mismatch(
    expected: Shapes,
    found: Shapes,
    kind: str,
    config: UNetConfig | ClassifierConfig,
    origin: str,
) -> str:
    """One-line explanation of why a state dict does not fit the model built from `config`."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key} {list(found[key])} vs model {list(expected[key])}"
        for key in expected
        if key in found and found[key] != expected[key]
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped)):
        if keys:
            listed = ", ".join(keys[:_LISTED_KEYS]) + (", ..." if len(keys) > _LISTED_KEYS else "")
            parts.append(f"{len(keys)} {label} ({listed})")
    culprits = _likely_flags(expected, found, kind, config)
    cause = (
        "most likely differing flag(s): " + "; ".join(culprits)
        if culprits
        else "no single flag identified; compare the flags with the ones the checkpoint was trained with"
    )
    return (
        f"state dict does not match the architecture from the {origin}: {'; '.join(parts)}. {cause}"
    )
