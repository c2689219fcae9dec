"""`--model` values: an ADM checkpoint file or a `diffusers:PATH` folder, loaded alike."""

from __future__ import annotations

from pathlib import Path

from evalsuite.models.checkpoint import LoadedModel, load_checkpoint
from evalsuite.models.diffusers_source import DiffusersModel, is_diffusers_spec, load_diffusers
from evalsuite.runtime.errors import EvalsuiteError


def load_diffusion_model(
    spec: str, *, flags: str | None = None, preset: str | None = None
) -> LoadedModel | DiffusersModel:
    """The diffusion model a `--model` value names.

    Args:
        spec: a checkpoint file (guided-diffusion state dict or evalsuite checkpoint) or
            `diffusers:PATH`, a folder written by diffusers' `save_pretrained`.
        flags, preset: the architecture of a bare state dict (not allowed with `diffusers:`).
    """
    if is_diffusers_spec(spec):
        if flags or preset:
            raise EvalsuiteError(
                f"--model-flags/--preset describe ADM state dicts; {spec} describes itself "
                "(drop them)"
            )
        return load_diffusers(spec)
    if not Path(spec).is_file():
        raise EvalsuiteError(
            f"{spec}: no such checkpoint file (a diffusers folder is given as diffusers:PATH)"
        )
    return load_checkpoint(spec, "unet", flags=flags, preset=preset)
