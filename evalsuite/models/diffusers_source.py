"""Diffusers folders as evalsuite models: `--model diffusers:PATH`.

A folder written by diffusers' `save_pretrained` (a pipeline with `model_index.json`, or a model
folder with its scheduler) is loaded offline (`local_files_only`, `HF_HUB_OFFLINE=1`) and
presented to the sampler like an ADM checkpoint: a network `model(x_t, timesteps, y=labels)`
returning the raw model output, a model config (image size, channels, classes, null class) and a
diffusion config (the scheduler's training chain and prediction type), plus the folder's sha256.

Supported networks: `UNet2DModel` (unconditional, or class-conditional through `num_class_embeds`
whose last class is the null class ∅ of classifier-free guidance) and `DiTTransformer2DModel`
(null class = `num_embeds_ada_norm`, as in DiT), in pixel space or in the latent space of the
pipeline's `AutoencoderKL` (`vae/`), which then decodes the samples. diffusers is an optional
extra, imported only here and only when a `diffusers:` model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from evalsuite.runtime.errors import EvalsuiteError

PREFIX = "diffusers:"
INSTALL_HINT = 'pip install "evalsuite[diffusers]"'
SUPPORTED_MODELS = ("UNet2DModel", "DiTTransformer2DModel")
# Component folders a pipeline keeps its denoising network in.
MODEL_COMPONENTS = ("unet", "transformer")
# diffusers beta schedules evalsuite can compute in float64 (evalsuite's own DDPM/DDIM).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def is_diffusers_spec(spec: str | os.PathLike | None) -> bool:
    """True for a `--model` value of the form `diffusers:PATH`."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def import_diffusers() -> Any:
    """The diffusers module, or a one-line EvalsuiteError naming the extra to install."""
    try:
        import diffusers
    except ImportError:
        raise EvalsuiteError(
            f"--model diffusers:PATH needs the diffusers package, which is not installed; "
            f"install the extra: {INSTALL_HINT}"
        ) from None
    return diffusers


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    # Nothing is ever downloaded: the hub client is told it is offline while loading.
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files: (relative POSIX path, content digest) in sorted path order.

    Hidden entries (names starting with ".") are skipped.
    """
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    for path in files:
        content = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                content.update(chunk)
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(content.digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class DiffusersModelConfig:
    """What the sampler needs to know about a diffusers network.

    `image_size` is the side of the decoded RGB image; `sample_size` and `in_channels` are the
    network's input (latent, with a VAE). `num_classes` excludes the null class; `null_class`
    says whether there is one (classifier-free guidance) and `null_label` is its label index.
    """

    model_class: str
    image_size: int
    sample_size: int
    in_channels: int
    out_channels: int
    class_cond: bool
    num_classes: int | None
    null_class: bool
    null_label: int | None
    latent: bool = False
    vae_scaling_factor: float | None = None


@dataclass(frozen=True)
class DiffusersDiffusionConfig:
    """The folder's scheduler: its class, training chain and prediction type.

    `diffusion_steps`, `learn_sigma`, `predict_xstart` and `rescale_timesteps` have the meaning of
    evalsuite's `DiffusionConfig`; `scheduler_config` is the folder's scheduler config as saved.
    """

    scheduler: str
    diffusion_steps: int
    noise_schedule: str
    prediction_type: str
    learn_sigma: bool
    predict_xstart: bool
    rescale_timesteps: bool = False
    scheduler_config: dict[str, Any] = field(default_factory=dict)


class DiffusersNetwork(nn.Module):
    """A diffusers denoising network with ADM's call signature.

    `forward(x_t, timesteps, y=None)`: x_t (B, C, H, W) float, timesteps (B,) as the network was
    trained (int64 original timesteps for DDPM/DDIM), y int64 (B,) class labels (the null class
    included) for class-conditional networks; returns the raw network output (B, C or 2C, H, W)
    in the scheduler's prediction type (diffusers' `.sample`).
    """

    def __init__(self, network: nn.Module, class_cond: bool) -> None:
        super().__init__()
        self.network = network
        self.class_cond = class_cond

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        if self.class_cond and y is None:
            raise EvalsuiteError("this diffusers model is class-conditional: labels y are needed")
        labels = y if self.class_cond else None
        return self.network(x, timesteps, class_labels=labels, return_dict=False)[0]


@dataclass(frozen=True)
class DiffusersModel:
    """A loaded diffusers folder, shaped like `LoadedModel` for the sampler.

    `model` is the `DiffusersNetwork`; `vae` the pipeline's autoencoder (latent models) or None.
    `betas` are the training betas in float64 (None when evalsuite cannot compute them exactly,
    `betas_problem` then says why): evalsuite's own DDPM/DDIM need them.
    """

    model: DiffusersNetwork
    model_config: DiffusersModelConfig
    diffusion_config: DiffusersDiffusionConfig
    sha256: str
    path: Path
    vae: nn.Module | None
    betas: np.ndarray | None
    betas_problem: str | None
    source: str = "diffusers"
    weights: str = "diffusers"
    step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def make_scheduler(self) -> Any:
        """A fresh instance of the folder's scheduler (multistep schedulers carry state)."""
        diffusers = import_diffusers()
        cls = getattr(diffusers, self.diffusion_config.scheduler)
        return cls.from_config(dict(self.diffusion_config.scheduler_config))

    def eps_from_output(self, output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """The network output with its prediction part turned into ε (variance channels kept).

        Args:
            output: (B, C or 2C, H, W) raw network output at integer training timesteps.
            x_t: (B, C, H, W) the network's input; timesteps: int64 (B,) training timesteps.
        """
        kind = self.diffusion_config.prediction_type
        if kind in ("epsilon", "sample") or self.betas is None:
            return output
        channels = x_t.shape[1]
        prediction, rest = output[:, :channels], output[:, channels:]
        alphas_cumprod = np.cumprod(1.0 - self.betas)
        alpha_bar = torch.from_numpy(alphas_cumprod[timesteps.detach().cpu().numpy()])
        alpha_bar = alpha_bar.to(device=x_t.device, dtype=x_t.dtype).reshape(-1, 1, 1, 1)
        # v = sqrt(ab) eps - sqrt(1 - ab) x0  =>  eps = sqrt(ab) v + sqrt(1 - ab) x_t.
        eps = alpha_bar.sqrt() * prediction + (1 - alpha_bar).sqrt() * x_t
        return torch.cat([eps, rest], dim=1)

    def decode(self, x: Tensor) -> Tensor:
        """Model-space samples (B, C, h, w) -> RGB in [-1, 1] (B, 3, H, W): the VAE decodes latents.

        Latents are unscaled as diffusers' pipelines do: x / scaling_factor (+ shift_factor).
        """
        if self.vae is None:
            return x
        latents = 1 / self.model_config.vae_scaling_factor * x
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents + shift
        with torch.no_grad():
            return self.vae.decode(latents, return_dict=False)[0]


def parse_spec(spec: str) -> Path:
    """`diffusers:PATH` -> the folder, checked to exist."""
    path = Path(spec[len(PREFIX) :] if is_diffusers_spec(spec) else spec).expanduser()
    if not str(path) or not path.is_dir():
        raise EvalsuiteError(
            f"--model {spec}: {path} is not a folder; expected diffusers:PATH with PATH a folder "
            f"written by save_pretrained (model_index.json or config.json inside)"
        )
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EvalsuiteError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(data, dict):
        raise EvalsuiteError(f"{path}: expected a JSON object")
    return data


def _not_diffusers(folder: Path, why: str) -> EvalsuiteError:
    return EvalsuiteError(
        f"{folder} is not a diffusers model folder ({why}); expected a folder written by "
        f"save_pretrained: a pipeline (model_index.json with unet/ or transformer/ and "
        f"scheduler/) or a model (config.json) with its scheduler_config.json"
    )


def _locate(folder: Path) -> tuple[Path, Path, Path | None]:
    """(model folder, scheduler config file, VAE folder or None) of a diffusers folder."""
    if (folder / "model_index.json").is_file():
        index = _read_json(folder / "model_index.json")
        names = [name for name in MODEL_COMPONENTS if name in index]
        if not names:
            listed = ", ".join(k for k in index if not k.startswith("_")) or "none"
            raise _not_diffusers(folder, f"model_index.json names no unet or transformer: {listed}")
        model_dir = folder / names[0]
        vae_dir = folder / "vae" if "vae" in index and index["vae"][1] is not None else None
    else:
        model_dir = next(
            (
                d
                for d in (folder, *(folder / n for n in MODEL_COMPONENTS))
                if (d / "config.json").is_file()
            ),
            None,
        )
        if model_dir is None:
            raise _not_diffusers(folder, "no model_index.json or config.json")
        vae_dir = folder / "vae" if (folder / "vae" / "config.json").is_file() else None
    if not (model_dir / "config.json").is_file():
        raise _not_diffusers(folder, f"{model_dir.name}/config.json is missing")
    schedulers = [
        folder / "scheduler" / "scheduler_config.json",
        model_dir / "scheduler_config.json",
        folder / "scheduler_config.json",
    ]
    scheduler_file = next((p for p in schedulers if p.is_file()), None)
    if scheduler_file is None:
        raise _not_diffusers(folder, "no scheduler/scheduler_config.json")
    return model_dir, scheduler_file, vae_dir


def _model_class(model_dir: Path) -> tuple[str, dict[str, Any]]:
    config = _read_json(model_dir / "config.json")
    name = config.get("_class_name")
    if name is None:
        raise _not_diffusers(model_dir, "config.json has no _class_name")
    # DiT folders saved by older diffusers name the class Transformer2DModel.
    if name == "Transformer2DModel" and config.get("norm_type") == "ada_norm_zero":
        name = "DiTTransformer2DModel"
    if name not in SUPPORTED_MODELS:
        raise EvalsuiteError(
            f"{model_dir}: unsupported diffusers model class {name}; evalsuite samples "
            f"{' and '.join(SUPPORTED_MODELS)} (class-conditional or unconditional images)"
        )
    return name, config


def _square(value: Any, what: str, folder: Path) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise EvalsuiteError(
                f"{folder}: {what} {value} is not square; evalsuite needs square images"
            )
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise EvalsuiteError(f"{folder}: {what} {value!r} is not a positive integer")
    return value


def training_betas(config: dict[str, Any]) -> tuple[np.ndarray | None, str | None]:
    """float64 training betas of a diffusers scheduler config, or (None, why not).

    Formulas as diffusers' schedulers define them (computed here in float64): "linear"
    linspace(beta_start, beta_end, T); "scaled_linear" linspace(sqrt start, sqrt end, T)^2;
    "squaredcos_cap_v2" the cosine schedule min(1 - ab((i+1)/T) / ab(i/T), 0.999) (ADM's
    cosine); `trained_betas` as given. Zero-terminal-SNR rescaling is not expressible.
    """
    steps = int(config.get("num_train_timesteps", 1000))
    if config.get("rescale_betas_zero_snr"):
        return None, "rescale_betas_zero_snr makes the last alpha_bar 0"
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    else:
        schedule = config.get("beta_schedule", "linear")
        start = float(config.get("beta_start", 0.0001))
        end = float(config.get("beta_end", 0.02))
        if schedule == "linear":
            betas = np.linspace(start, end, steps, dtype=np.float64)
        elif schedule == "scaled_linear":
            betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
        elif schedule == "squaredcos_cap_v2" and config.get("alpha_transform_type", "cosine") in (
            "cosine",
            None,
        ):

            def alpha_bar(t: float) -> float:
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array(
                [
                    min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                    for i in range(steps)
                ],
                dtype=np.float64,
            )
        else:
            return (
                None,
                f"beta_schedule {schedule!r} (evalsuite computes {', '.join(BETA_SCHEDULES)})",
            )
    if betas.ndim != 1 or len(betas) < 2 or not np.all((betas > 0) & (betas < 1)):
        return None, "the betas are not a chain of values in (0, 1)"
    return betas, None


def _load_scheduler(diffusers: Any, scheduler_file: Path) -> tuple[str, dict[str, Any]]:
    config = _read_json(scheduler_file)
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None) if name else None
    if cls is None or not all(hasattr(cls, a) for a in ("set_timesteps", "step", "from_config")):
        raise EvalsuiteError(
            f"{scheduler_file}: {name!r} is not a diffusers scheduler this diffusers "
            f"{diffusers.__version__} knows (e.g. DDPMScheduler, DDIMScheduler)"
        )
    try:
        cls.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise EvalsuiteError(f"{scheduler_file}: {name} rejects its config ({error})") from None
    return str(name), config


def load_diffusers(spec: str, map_location: Any = "cpu") -> DiffusersModel:
    """Load `diffusers:PATH` (or a bare folder path) into a float32 model in eval mode.

    Raises EvalsuiteError (one line) for a missing extra, a folder that is not a diffusers model,
    an unsupported network class or scheduler, non-square images or an unknown prediction type.
    """
    folder = parse_spec(spec)
    model_dir, scheduler_file, vae_dir = _locate(folder)
    name, config = _model_class(model_dir)
    diffusers = import_diffusers()
    scheduler_name, scheduler_config = _load_scheduler(diffusers, scheduler_file)
    with _offline():
        try:
            # low_cpu_mem_usage=False: the plain loader, without `accelerate` or its warning.
            network = getattr(diffusers, name).from_pretrained(
                model_dir, local_files_only=True, low_cpu_mem_usage=False
            )
            vae = (
                None
                if vae_dir is None
                else diffusers.AutoencoderKL.from_pretrained(
                    vae_dir, local_files_only=True, low_cpu_mem_usage=False
                )
            )
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            first = (str(error).strip().splitlines() or [""])[0][:200]
            raise EvalsuiteError(
                f"{model_dir}: diffusers could not load the model ({type(error).__name__}: {first})"
            ) from None
    network = network.to(map_location).float().eval()
    if vae is not None:
        vae = vae.to(map_location).float().eval()
    in_channels = int(config.get("in_channels", 3))
    out_channels = int(config.get("out_channels") or in_channels)
    sample_size = _square(config.get("sample_size"), "sample_size", model_dir)
    if name == "UNet2DModel":
        if config.get("class_embed_type") is not None:
            raise EvalsuiteError(
                f"{model_dir}: UNet2DModel with class_embed_type "
                f"{config['class_embed_type']!r} is not supported; evalsuite samples class labels "
                "through num_class_embeds (class_embed_type null)"
            )
        embeds = config.get("num_class_embeds")
        class_cond = embeds is not None
        num_classes = None if embeds is None else int(embeds) - 1
        null_label = None if embeds is None else int(embeds) - 1
        if class_cond and num_classes < 1:
            raise EvalsuiteError(
                f"{model_dir}: num_class_embeds {embeds} leaves no class besides the null class"
            )
    else:
        class_cond = True
        num_classes = int(config.get("num_embeds_ada_norm") or 0)
        # DiT's label table has a row for the null class (index num_classes).
        null_label = num_classes
    if out_channels not in (in_channels, 2 * in_channels):
        raise EvalsuiteError(
            f"{model_dir}: {out_channels} output channels for {in_channels} input channels; "
            "expected the same number, or twice as many with a learned variance"
        )
    image_size, scaling = sample_size, None
    if vae is not None:
        if int(vae.config.latent_channels) != in_channels:
            raise EvalsuiteError(
                f"{vae_dir}: the VAE has {vae.config.latent_channels} latent channels but the "
                f"network takes {in_channels}"
            )
        image_size = sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
        scaling = float(vae.config.scaling_factor)
    elif in_channels != 3:
        raise EvalsuiteError(
            f"{model_dir}: a pixel-space model needs 3 input channels (RGB), got {in_channels}; "
            "a latent model needs its VAE in vae/"
        )
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise EvalsuiteError(
            f"{scheduler_file}: prediction_type {prediction_type!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    betas, problem = training_betas(scheduler_config)
    model_config = DiffusersModelConfig(
        model_class=name,
        image_size=image_size,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        class_cond=class_cond,
        num_classes=num_classes,
        null_class=null_label is not None,
        null_label=null_label,
        latent=vae is not None,
        vae_scaling_factor=scaling,
    )
    diffusion_config = DiffusersDiffusionConfig(
        scheduler=scheduler_name,
        diffusion_steps=int(scheduler_config.get("num_train_timesteps", 1000)),
        noise_schedule=str(scheduler_config.get("beta_schedule", "linear")),
        prediction_type=prediction_type,
        learn_sigma=out_channels == 2 * in_channels,
        predict_xstart=prediction_type == "sample",
        scheduler_config=json.loads(json.dumps(scheduler_config)),
    )
    return DiffusersModel(
        model=DiffusersNetwork(network, class_cond),
        model_config=model_config,
        diffusion_config=diffusion_config,
        sha256=folder_sha256(folder),
        path=folder,
        vae=vae,
        betas=betas,
        betas_problem=problem,
    )
